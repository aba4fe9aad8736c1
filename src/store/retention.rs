//! The retention model, as pure decisions (docs/store.md, "Retention"):
//!
//! **A chunk leaves a node only when it is provably redundant (every node it is placed
//! on, at least its factor of them and none of them this node, has just proved by
//! challenge that it holds the chunk) or provably garbage (it came in an upload that
//! never completed: no manifest this node knows references it, and nobody has touched
//! it for the grace period). Everything else is kept; when nothing can be reclaimed,
//! writes are refused with `quota`.**
//!
//! Nothing here reads a clock, a disk or a socket: the store's GC and the replication
//! handoff gather the facts and are told what may go.

use super::id::ChunkId;

/// What the node knows about one chunk that an upload brought in and no manifest has
/// claimed yet (the store's upload ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    pub id: ChunkId,
    pub size: u64,
    /// When a client last stored or touched it (unix seconds).
    pub touched: u64,
}

/// Why a chunk may be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An upload that never completed, older than the grace period, referenced by no
    /// manifest this node knows.
    AbandonedUpload,
}

/// Whether an upload's chunk is garbage at `now`: untouched for `grace` seconds and not
/// referenced by a manifest the node holds. A clock that went backwards keeps it.
pub fn is_abandoned(u: &Upload, referenced: bool, now: u64, grace_s: u64) -> bool {
    !referenced && now.checked_sub(u.touched).is_some_and(|age| age >= grace_s)
}

/// The GC round: of the ledger's uploads, those that may go, with the reason.
/// `referenced(id)` answers from the manifests the node holds.
pub fn select_garbage(
    uploads: &[Upload],
    referenced: impl Fn(&ChunkId) -> bool,
    now: u64,
    grace_s: u64,
) -> Vec<(ChunkId, u64, Reason)> {
    uploads
        .iter()
        .filter(|u| is_abandoned(u, referenced(&u.id), now, grace_s))
        .map(|u| (u.id, u.size, Reason::AbandonedUpload))
        .collect()
}

/// Bytes a GC round could free now vs bytes that are protected, for `store stat` and
/// health. `used` is the store's total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Breakdown {
    /// Abandoned uploads past the grace period (not yet checked against manifests, so
    /// an upper bound).
    pub reclaimable_bytes: u64,
    /// Uploads still within their grace period.
    pub pending_upload_bytes: u64,
    /// Everything else: client data, replicas, local files. Never deleted by GC.
    pub protected_bytes: u64,
}

pub fn breakdown(uploads: &[Upload], used: u64, now: u64, grace_s: u64) -> Breakdown {
    let (mut reclaimable, mut pending) = (0u64, 0u64);
    for u in uploads {
        if is_abandoned(u, false, now, grace_s) {
            reclaimable += u.size;
        } else {
            pending += u.size;
        }
    }
    Breakdown {
        reclaimable_bytes: reclaimable,
        pending_upload_bytes: pending,
        protected_bytes: used.saturating_sub(reclaimable + pending),
    }
}

/// Handoff: may this node drop its copy of a chunk because it is redundant?
///
/// `placed` are the nodes placement puts the chunk on, `factor` the copies it wants, and
/// `proved(node)` whether that node has just passed a proof-of-possession challenge for
/// the chunk (a HAS answer is a claim, not a proof). Only when this node is not among the
/// placed ones, there are at least `factor` of them, and every one of them proved. Placed
/// nodes never hand off what is placed on them, so the proofs stay true after the delete.
pub fn redundant(me: &str, placed: &[&str], factor: usize, proved: impl Fn(&str) -> bool) -> bool {
    factor >= 1
        && placed.len() >= factor
        && !placed.contains(&me)
        && placed.iter().all(|p| proved(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn up(n: u8, touched: u64) -> Upload {
        Upload {
            id: id(n),
            size: 100 * n as u64,
            touched,
        }
    }

    const GRACE: u64 = 86_400;

    #[test]
    fn an_upload_within_its_grace_period_is_kept() {
        let uploads = [up(1, 1000)];
        assert!(select_garbage(&uploads, |_| false, 1000 + GRACE - 1, GRACE).is_empty());
        assert_eq!(
            select_garbage(&uploads, |_| false, 1000 + GRACE, GRACE),
            vec![(id(1), 100, Reason::AbandonedUpload)]
        );
    }

    #[test]
    fn an_upload_a_known_manifest_references_is_never_garbage() {
        let uploads = [up(1, 0), up(2, 0)];
        let got = select_garbage(&uploads, |i| *i == id(1), 10 * GRACE, GRACE);
        assert_eq!(got, vec![(id(2), 200, Reason::AbandonedUpload)]);
    }

    #[test]
    fn a_clock_that_went_backwards_keeps_everything() {
        assert!(select_garbage(&[up(1, 5000)], |_| false, 10, 0).is_empty());
    }

    #[test]
    fn only_the_ledger_can_be_garbage() {
        // Client data whose manifest arrived, replicas and local files are not in the
        // ledger at all: a full store with an empty ledger frees nothing, so writes are
        // refused instead ("factor 1" and "alone in the fleet" alike).
        assert!(select_garbage(&[], |_| false, u64::MAX, 0).is_empty());
        assert_eq!(
            breakdown(&[], 9_500_000, 1, GRACE),
            Breakdown {
                reclaimable_bytes: 0,
                pending_upload_bytes: 0,
                protected_bytes: 9_500_000
            }
        );
    }

    #[test]
    fn breakdown_splits_reclaimable_pending_and_protected() {
        let b = breakdown(&[up(1, 0), up(2, GRACE)], 1000, GRACE, GRACE);
        assert_eq!(
            b,
            Breakdown {
                reclaimable_bytes: 100,
                pending_upload_bytes: 200,
                protected_bytes: 700
            }
        );
    }

    #[test]
    fn handoff_needs_a_proof_from_every_placed_node() {
        let all = |_: &str| true;
        // Placed elsewhere, both proved: redundant.
        assert!(redundant("me", &["a", "b"], 2, all));
        // One placed node never answered or failed its proof (a liar): keep.
        assert!(!redundant("me", &["a", "b"], 2, |p| p == "a"));
        // Members that never answer: keep.
        assert!(!redundant("me", &["a", "b"], 2, |_| false));
        // Placed here: never a handoff.
        assert!(!redundant("me", &["me", "a"], 2, all));
    }

    #[test]
    fn handoff_never_drops_below_the_factor() {
        let all = |_: &str| true;
        // Alone in the fleet, or too few nodes with room: placement names fewer nodes
        // than the factor wants.
        assert!(!redundant("me", &[], 2, all));
        assert!(!redundant("me", &["a"], 2, all));
        // Factor 1 still needs its one placed node's proof.
        assert!(redundant("me", &["a"], 1, all));
        assert!(!redundant("me", &["a"], 1, |_| false));
        assert!(!redundant("me", &[], 0, all));
    }
}
