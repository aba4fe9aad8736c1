//! Quota accounting: the pure arithmetic of what the store holds and whether one more
//! chunk fits. Told the counters, the reservation of writes in flight and the filesystem's
//! free space; returns a decision. No I/O.

use serde::{Deserialize, Serialize};

/// What the store holds. Persisted in the snapshot and kept exact through the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub used_bytes: u64,
    pub chunks: u64,
}

/// The filesystem under the data dir, from statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub total: u64,
    pub free: u64,
}

/// Why a chunk does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "quota exceeded: storing {needed} more bytes would make {} of the {quota} offered \
         (used {used}, in flight {reserved})",
        used + reserved + needed
    )]
    Quota {
        needed: u64,
        used: u64,
        reserved: u64,
        quota: u64,
    },
    #[error(
        "disk reserve reached: storing {needed} bytes would leave less than the {reserve} \
         bytes always kept free on the filesystem ({free} free, {reserved} in flight)"
    )]
    Reserve {
        needed: u64,
        free: u64,
        reserved: u64,
        reserve: u64,
    },
}

/// Resolves `storage.reserve = "auto"`: the larger of 5 % of the filesystem and 1 GiB,
/// but never more than half of it, so that a small test filesystem is still usable.
pub fn auto_reserve(total: u64) -> u64 {
    (total / 20).max(1 << 30).min(total / 2)
}

/// Whether `needed` more bytes fit, given what is stored, what is being written, the
/// quota, and the free space with its reserve.
pub fn check(
    c: Counters,
    reserved: u64,
    needed: u64,
    quota: u64,
    fs: FsSpace,
    reserve: u64,
) -> Result<(), QuotaError> {
    if c.used_bytes.saturating_add(reserved).saturating_add(needed) > quota {
        return Err(QuotaError::Quota {
            needed,
            used: c.used_bytes,
            reserved,
            quota,
        });
    }
    // `reserved` bytes are already counted as written by statvfs only once they land, so
    // subtract them too: two writes racing for the last free gigabyte must not both pass.
    if fs.free.saturating_sub(reserved).saturating_sub(needed) < reserve {
        return Err(QuotaError::Reserve {
            needed,
            free: fs.free,
            reserved,
            reserve,
        });
    }
    Ok(())
}

/// Emits `quota_near_full` once when usage crosses `high` percent of the quota and re-arms
/// only after it falls below `high - 5` points, so a node hovering at the line does not
/// flood the event topic.
#[derive(Debug, Clone)]
pub struct NearFull {
    armed: bool,
    high_percent: u64,
}

impl NearFull {
    pub fn new(high_percent: u64) -> NearFull {
        NearFull {
            armed: true,
            high_percent,
        }
    }

    /// Returns true when the event should be emitted now.
    pub fn observe(&mut self, used: u64, quota: u64) -> bool {
        let pct = used.saturating_mul(100) / quota.max(1);
        if self.armed && pct >= self.high_percent {
            self.armed = false;
            return true;
        }
        if !self.armed && pct + 5 < self.high_percent {
            self.armed = true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const ROOMY: FsSpace = FsSpace {
        total: 100 * GIB,
        free: 50 * GIB,
    };

    #[test]
    fn quota_counts_in_flight_writes() {
        let c = Counters {
            used_bytes: 900,
            chunks: 9,
        };
        assert_eq!(check(c, 0, 100, 1000, ROOMY, GIB), Ok(()));
        assert!(matches!(
            check(c, 0, 101, 1000, ROOMY, GIB),
            Err(QuotaError::Quota { .. })
        ));
        assert!(matches!(
            check(c, 50, 100, 1000, ROOMY, GIB),
            Err(QuotaError::Quota { .. })
        ));
        let e = check(c, 50, 100, 1000, ROOMY, GIB).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "quota exceeded: storing 100 more bytes would make 1050 of the 1000 offered"
            ),
            "{e}"
        );
    }

    #[test]
    fn reserve_keeps_the_filesystem_from_filling() {
        let fs = FsSpace {
            total: 10 * GIB,
            free: GIB + 100,
        };
        let c = Counters::default();
        assert_eq!(check(c, 0, 100, u64::MAX, fs, GIB), Ok(()));
        assert!(matches!(
            check(c, 0, 101, u64::MAX, fs, GIB),
            Err(QuotaError::Reserve { .. })
        ));
        assert!(matches!(
            check(c, 1, 100, u64::MAX, fs, GIB),
            Err(QuotaError::Reserve { .. })
        ));
    }

    #[test]
    fn auto_reserve_is_the_larger_of_5_percent_and_1_gib() {
        assert_eq!(auto_reserve(100 * GIB), 5 * GIB);
        assert_eq!(auto_reserve(16 * GIB), GIB);
        assert_eq!(
            auto_reserve(GIB),
            GIB / 2,
            "never more than half a small filesystem"
        );
    }

    #[test]
    fn near_full_fires_once_and_rearms() {
        let mut n = NearFull::new(90);
        assert!(!n.observe(80, 100));
        assert!(n.observe(90, 100));
        assert!(!n.observe(95, 100));
        assert!(!n.observe(86, 100));
        assert!(!n.observe(91, 100), "not re-armed above 85 %");
        assert!(!n.observe(84, 100));
        assert!(n.observe(92, 100));
    }
}
