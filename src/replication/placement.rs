//! Where a chunk lives: rendezvous (highest-random-weight) hashing.
//!
//! Each eligible node gets a weight for each chunk, the first 8 bytes of
//! SHA-256(node id || chunk id); the chunk's replicas are the `factor` heaviest nodes. Every
//! node that sees the same membership (from the retained status and health topics)
//! computes the same answer, with no coordinator, and when a node joins or leaves only the
//! chunks it wins or held move. Pure.

use crate::store::ChunkId;

/// What placement needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub online: bool,
    /// Bytes it can still take (health `disk.free_bytes`); unknown counts as room.
    pub free_bytes: Option<u64>,
    pub draining: bool,
}

impl Member {
    /// May be given new replicas: online, not draining, and room for at least one
    /// chunk of `min_free` bytes.
    pub fn eligible(&self, min_free: u64) -> bool {
        self.online && !self.draining && self.free_bytes.is_none_or(|f| f >= min_free)
    }
}

/// The weight of `node` for `chunk`.
pub fn weight(node: &str, chunk: &ChunkId) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(node.as_bytes());
    ctx.update(&chunk.0);
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// The nodes that should hold `chunk`, heaviest first: up to `factor` of the eligible
/// members.
pub fn place<'a>(
    chunk: &ChunkId,
    members: &'a [Member],
    factor: usize,
    min_free: u64,
) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = members
        .iter()
        .filter(|m| m.eligible(min_free))
        .map(|m| (weight(&m.id, chunk), m.id.as_str()))
        .collect();
    // Ties (vanishingly rare) break on the id so every node agrees.
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.into_iter().take(factor).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str) -> Member {
        Member {
            id: id.into(),
            online: true,
            free_bytes: None,
            draining: false,
        }
    }

    fn chunks(n: u32) -> Vec<ChunkId> {
        (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn same_answer_whatever_the_order_of_members() {
        let a = vec![m("a"), m("b"), m("c"), m("d")];
        let mut b = a.clone();
        b.reverse();
        for c in chunks(100) {
            assert_eq!(place(&c, &a, 2, 0), place(&c, &b, 2, 0));
        }
    }

    #[test]
    fn spreads_evenly() {
        let members: Vec<Member> = ["a", "b", "c", "d"].iter().map(|i| m(i)).collect();
        let mut count = std::collections::HashMap::new();
        for c in chunks(4000) {
            for id in place(&c, &members, 2, 0) {
                *count.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        for (id, n) in count {
            // 8000 replicas over 4 nodes: 2000 each, give or take a few percent.
            assert!((1800..2200).contains(&n), "{id}: {n}");
        }
    }

    #[test]
    fn a_departure_moves_only_the_chunks_it_held() {
        let all: Vec<Member> = ["a", "b", "c"].iter().map(|i| m(i)).collect();
        let mut without_c = all.clone();
        without_c[2].online = false;
        for c in chunks(500) {
            let before = place(&c, &all, 2, 0);
            let after = place(&c, &without_c, 2, 0);
            assert_eq!(after.len(), 2);
            if !before.contains(&"c") {
                assert_eq!(before, after, "a chunk not on c moved");
            } else {
                let kept: Vec<_> = before.iter().filter(|n| **n != "c").collect();
                assert!(after.contains(kept[0]), "the surviving replica must stay");
            }
        }
    }

    #[test]
    fn draining_full_and_offline_nodes_get_nothing() {
        let mut members = vec![m("a"), m("b"), m("c"), m("d")];
        members[1].draining = true;
        members[2].free_bytes = Some(100);
        members[3].online = false;
        for c in chunks(50) {
            assert_eq!(place(&c, &members, 2, 1 << 20), vec!["a"]);
        }
    }
}
