//! Per-sender rate limits on incoming replication messages. Pure: told the time.
//!
//! A member may send notices, digests and listings, but a broken or hostile one must not
//! make this node spend its CPU checking signatures and walking its inventory for it:
//! each sender gets a token bucket ([`Limits::BURST`] messages, refilled at
//! [`Limits::PER_SECOND`]). What is dropped costs nothing but time: the sender's next
//! anti-entropy pass finds whatever a dropped notice said. The table of senders is
//! bounded too; when full, the sender idle longest is forgotten (and starts full again,
//! which only helps someone who is already polite).

use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Limits {
    senders: HashMap<String, (f64, Duration)>,
}

impl Limits {
    /// A burst a real member reaches: a join or a failure hands a node a few hundred
    /// notices of 256 chunks each, plus its partners' digests.
    pub const BURST: f64 = 200.0;
    pub const PER_SECOND: f64 = 20.0;
    /// Senders remembered at once (a fleet is scoped to a cluster well below this).
    pub const MAX_SENDERS: usize = 4096;

    /// Whether a message from `from` at `now` is within its limit (and counts it).
    pub fn allow(&mut self, from: &str, now: Duration) -> bool {
        if !self.senders.contains_key(from) && self.senders.len() >= Self::MAX_SENDERS {
            let idle = self
                .senders
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = idle {
                self.senders.remove(&k);
            }
        }
        let (tokens, last) = self
            .senders
            .entry(from.to_string())
            .or_insert((Self::BURST, now));
        let elapsed = now.saturating_sub(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * Self::PER_SECOND).min(Self::BURST);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_cut_and_time_refills() {
        let mut l = Limits::default();
        let t0 = Duration::from_secs(100);
        let passed = (0..1000).filter(|_| l.allow("a", t0)).count();
        assert_eq!(passed, Limits::BURST as usize);
        // Another sender is not affected.
        assert!(l.allow("b", t0));
        // One second refills PER_SECOND messages, no more.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..1000).filter(|_| l.allow("a", t1)).count();
        assert_eq!(passed, Limits::PER_SECOND as usize);
        // A clock that goes back gives nothing.
        assert!(!l.allow("a", t0));
    }

    #[test]
    fn the_table_of_senders_stays_bounded() {
        let mut l = Limits::default();
        for n in 0..Limits::MAX_SENDERS + 10 {
            assert!(l.allow(&n.to_string(), Duration::from_millis(n as u64)));
        }
        assert_eq!(l.senders.len(), Limits::MAX_SENDERS);
        assert!(!l.senders.contains_key("0"), "the idlest sender went first");
    }
}
