//! Where a chunk lives: rendezvous (highest-random-weight) hashing.
//!
//! Each eligible node gets a weight for each chunk, and the chunk's replicas are the
//! `factor` heaviest nodes. Every node that sees the same membership (from the retained
//! status and health topics) computes the same answer, with no coordinator, and when a
//! node joins or leaves only the chunks it wins or held move. Pure.
//!
//! The weight is `fmix64(seed(node) ^ fmix64(key(chunk)))`, where `seed` is the first 8
//! bytes of SHA-256("ddc-edge placement v2" || node id), computed once per member, `key`
//! the first 8 bytes of the chunk ID (already a SHA-256, so uniform) and `fmix64`
//! MurmurHash3's 64-bit finalizer (a bijection with full avalanche): about a nanosecond
//! per weight. Only the key enters, so the replication planner can place a chunk from
//! the 8 bytes it keeps per chunk (docs/replication.md, "Memory").
//!
//! This is placement **v2**. 0.1 ranked by SHA-256(node id || chunk id) (v1), two SHA-256
//! blocks per weight: ranking 1 M chunks over 1,000 nodes took minutes of CPU. Nodes
//! still advertise the version they compute (`replication.placement` in their member
//! record), but the fleet no longer follows the lowest one: 0.1 nodes publish no member
//! record, so no real member computes v1, and following a record that claims it would
//! let one member move every chunk of the fleet.

use crate::store::ChunkId;

/// The newest placement version this build computes (and advertises).
pub const VERSION: u8 = 2;

/// What placement needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub online: bool,
    /// Bytes it can still take (health `disk.free_bytes`); unknown counts as room.
    pub free_bytes: Option<u64>,
    pub draining: bool,
    /// The newest placement version it computes (health `replication.placement`).
    pub placement: u8,
}

impl Member {
    /// May be given new replicas: online, not draining, and room for at least one
    /// chunk of `min_free` bytes.
    pub fn eligible(&self, min_free: u64) -> bool {
        self.online && !self.draining && self.free_bytes.is_none_or(|f| f >= min_free)
    }
}

/// A node's v2 seed.
pub fn seed_v2(node: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"ddc-edge placement v2");
    ctx.update(node.as_bytes());
    first_u64(ctx.finish().as_ref())
}

/// A chunk's v2 key: its mixed first 8 bytes.
pub fn key_v2(chunk: &ChunkId) -> u64 {
    fmix64(chunk.key())
}

/// The v2 weight of the node with `seed` for the chunk with `key`.
pub fn weight_v2(seed: u64, key: u64) -> u64 {
    fmix64(seed ^ key)
}

fn first_u64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

/// MurmurHash3's finalizer.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The eligible members of one membership view, ready to rank chunks: build it once per
/// membership change, then [`Placement::place`] costs one weight per eligible node.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Eligible node ids with their v2 seeds, sorted by id.
    nodes: Vec<(String, u64)>,
    /// Index into `nodes` by seed.
    by_seed: std::collections::HashMap<u64, u32>,
}

impl Placement {
    pub fn new(members: &[Member], min_free: u64) -> Placement {
        let mut nodes: Vec<(String, u64)> = members
            .iter()
            .filter(|m| m.eligible(min_free))
            .map(|m| (m.id.clone(), seed_v2(&m.id)))
            .collect();
        nodes.sort();
        let by_seed = nodes
            .iter()
            .enumerate()
            .map(|(i, (_, seed))| (*seed, i as u32))
            .collect();
        Placement { nodes, by_seed }
    }

    /// Whether two views place every chunk alike (same eligible nodes).
    pub fn same_view(&self, other: &Placement) -> bool {
        self.nodes == other.nodes
    }

    /// Whether `node` may be given replicas in this view.
    pub fn contains(&self, node: &str) -> bool {
        self.seed_of(node).is_some()
    }

    /// The v2 seed of an eligible node (its short name in this view).
    pub fn seed_of(&self, node: &str) -> Option<u64> {
        self.nodes
            .binary_search_by(|(id, _)| id.as_str().cmp(node))
            .ok()
            .map(|i| self.nodes[i].1)
    }

    /// The eligible node with this seed.
    pub fn id_of_seed(&self, seed: u64) -> Option<&str> {
        self.by_seed
            .get(&seed)
            .map(|&i| self.nodes[i as usize].0.as_str())
    }

    /// As [`Placement::place`], as seeds.
    pub fn place_seeds(&self, chunk: &ChunkId, factor: usize) -> Vec<u64> {
        self.ranked(chunk, factor)
            .into_iter()
            .map(|i| self.nodes[i].1)
            .collect()
    }

    /// How many nodes may be given replicas.
    pub fn eligible(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes that should hold `chunk`, heaviest first: up to `factor` of the
    /// eligible members.
    pub fn place(&self, chunk: &ChunkId, factor: usize) -> Vec<&str> {
        self.ranked(chunk, factor)
            .into_iter()
            .map(|i| self.nodes[i].0.as_str())
            .collect()
    }

    /// The `factor` heaviest nodes for the chunk whose ID starts with `key` (see
    /// [`ChunkId::key`]), as indices into this view, heaviest first.
    pub fn ranked_key(&self, key: u64, factor: usize) -> Vec<usize> {
        let key = fmix64(key);
        // (weight, index): `nodes` is sorted by id, so a lower index is a lower id.
        let mut top: Vec<(u64, usize)> = Vec::with_capacity(factor + 1);
        for (i, (_, seed)) in self.nodes.iter().enumerate() {
            let w = weight_v2(*seed, key);
            if top.len() == factor && top.last().is_none_or(|l| l.0 >= w) {
                continue;
            }
            // Keep the `factor` heaviest; ties break on the lower id (the earlier index,
            // already in place) so every node agrees.
            let pos = top.partition_point(|(tw, _)| *tw >= w);
            top.insert(pos, (w, i));
            top.truncate(factor);
        }
        top.into_iter().map(|(_, i)| i).collect()
    }

    /// The node at `index` of this view (from [`Placement::ranked_key`]).
    pub fn node_at(&self, index: usize) -> &str {
        &self.nodes[index].0
    }

    /// The seed of the node at `index` of this view.
    pub fn seed_at(&self, index: usize) -> u64 {
        self.nodes[index].1
    }

    /// The index of an eligible node in this view.
    pub fn index_of(&self, node: &str) -> Option<usize> {
        self.nodes
            .binary_search_by(|(id, _)| id.as_str().cmp(node))
            .ok()
    }

    fn ranked(&self, chunk: &ChunkId, factor: usize) -> Vec<usize> {
        self.ranked_key(chunk.key(), factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Placement::place`] for one chunk, as the older tests below call it.
    fn place<'a>(
        chunk: &ChunkId,
        members: &'a [Member],
        factor: usize,
        min_free: u64,
    ) -> Vec<&'a str> {
        let p = Placement::new(members, min_free);
        p.place(chunk, factor)
            .into_iter()
            .filter_map(|id| members.iter().find(|m| m.id == id).map(|m| m.id.as_str()))
            .collect()
    }

    fn m(id: &str) -> Member {
        Member {
            id: id.into(),
            online: true,
            free_bytes: None,
            draining: false,
            placement: VERSION,
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

    /// The reference: rank every eligible node, sort, take `factor`.
    fn ranked(c: &ChunkId, members: &[Member], factor: usize) -> Vec<String> {
        let mut r: Vec<(u64, &str)> = members
            .iter()
            .filter(|m| m.eligible(0))
            .map(|m| (weight_v2(seed_v2(&m.id), key_v2(c)), m.id.as_str()))
            .collect();
        r.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        r.into_iter()
            .take(factor)
            .map(|(_, id)| id.to_string())
            .collect()
    }

    #[test]
    fn placement_keeps_the_heaviest_nodes() {
        let members: Vec<Member> = (0..40).map(|i| m(&format!("node{i:02}"))).collect();
        let p = Placement::new(&members, 0);
        for c in chunks(300) {
            for factor in [1, 2, 3, 5] {
                assert_eq!(p.place(&c, factor), ranked(&c, &members, factor));
            }
        }
    }

    #[test]
    fn the_first_eight_bytes_of_a_chunk_id_decide_its_place() {
        let members: Vec<Member> = (0..20).map(|i| m(&format!("node{i:02}"))).collect();
        let p = Placement::new(&members, 0);
        for mut c in chunks(50) {
            let before = p.place(&c, 3);
            c.0[8..].fill(0xa5);
            assert_eq!(p.place(&c, 3), before);
            let by_key: Vec<&str> = p
                .ranked_key(c.key(), 3)
                .into_iter()
                .map(|i| p.node_at(i))
                .collect();
            assert_eq!(by_key, before);
        }
    }

    #[test]
    fn v2_spreads_evenly_and_pairs_nodes_at_random() {
        // 10 nodes, factor 2: each holds a fifth of 50,000 chunks, and each of the 45
        // pairs holds a 45th of them, within 5 standard deviations.
        let members: Vec<Member> = (0..10).map(|i| m(&format!("n{i}"))).collect();
        let p = Placement::new(&members, 0);
        let (mut per_node, mut per_pair) = (
            std::collections::HashMap::new(),
            std::collections::HashMap::new(),
        );
        let n = 50_000u32;
        for c in chunks(n) {
            let mut t = p.place(&c, 2);
            for id in &t {
                *per_node.entry(id.to_string()).or_insert(0u32) += 1;
            }
            t.sort();
            *per_pair.entry(t.join("+")).or_insert(0u32) += 1;
        }
        let check = |counts: &std::collections::HashMap<String, u32>, share: f64, what: &str| {
            let mean = n as f64 * share;
            let sd = (mean * (1.0 - share / 2.0)).sqrt();
            for (k, v) in counts {
                assert!(
                    (*v as f64 - mean).abs() < 5.0 * sd,
                    "{what} {k}: {v}, expected {mean:.0} +- {:.0}",
                    5.0 * sd
                );
            }
        };
        assert_eq!(per_node.len(), 10);
        assert_eq!(per_pair.len(), 45);
        check(&per_node, 0.2, "node");
        check(&per_pair, 1.0 / 45.0, "pair");
    }

    /// A member record claiming another placement version changes nothing: following
    /// the lowest version online (as 0.1's plan was) let one member move every chunk.
    #[test]
    fn a_member_claiming_an_old_placement_version_moves_nothing() {
        let mut members = vec![m("a"), m("b"), m("c")];
        let before = Placement::new(&members, 0);
        members[1].placement = 1;
        let after = Placement::new(&members, 0);
        assert!(before.same_view(&after));
        for c in chunks(100) {
            assert_eq!(before.place(&c, 2), after.place(&c, 2));
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
