//! The replication planner: what this node fetches, whom it tells, what it hands off, and
//! when. Pure (sans-I/O): it is told the membership (as a [`Placement`]), what it holds,
//! what peers say and the time, and it returns [`Action`]s; it never sleeps or reads a
//! clock. `ddc-edge simulate` runs a thousand of them against each other in memory.
//!
//! Cost follows change, not size:
//! - **Push the notice, pull the data.** When a chunk's placement changes (a node joins,
//!   leaves or drains, or the chunk is stored here), one holder tells each new target
//!   ([`Action::Notify`]); the target fetches ([`Action::Fetch`]) within its budget, with
//!   a retry and backoff per chunk. Of a chunk's previous holders that are still online,
//!   the heaviest one tells (so normally exactly one notice per new target and chunk); a
//!   holder the chunk is not placed on always tells, since it wants to hand off.
//! - **Anti-entropy by digests.** Every [`Config::anti_entropy`], a node sends each
//!   partner whose seed is greater than its own (so each pair once) a [`Digest`] of the
//!   chunks it holds that are placed on both. Equal digests (the steady state) end the exchange. Unequal ones are split into
//!   [`BUCKETS`] buckets by the first byte of the chunk ID; only the buckets that differ
//!   are listed, and each side fetches what it lacks. So lost notices, a source that died
//!   before a fetch, or a disk that lost chunks are found within one period, at a cost of one
//!   small message per partner when nothing changed.
//! - **Hand off** a chunk held here but not placed here once its placed nodes prove they
//!   hold it ([`Action::HandOff`]; the driver's HAS and PROVE decide, and
//!   `store::retention::redundant` is the rule).
//!
//! Digests are multiset sums of chunk IDs (4 lanes of wrapping u64 sums and a count):
//! order-free and updated in O(1). A member could in principle craft chunks whose IDs
//! collide in the sum, which would only hide a difference from one anti-entropy pass
//! (availability, never safety: deletes still need proofs).

use super::placement::Placement;
use crate::store::ChunkId;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Buckets of an unequal digest (by the first byte of the chunk ID).
pub const BUCKETS: usize = 256;

/// How long after a chunk stops being placed here its hand-off is first tried: its new
/// holders need a moment to fetch it (a failed try is cheap, and retried).
const HANDOFF_DELAY: Duration = Duration::from_secs(30);

/// How long a newly wanted chunk waits for more notices before its fetch starts: one
/// change makes every holder tell, and a holder staying in placement is a better source
/// than one leaving it (which has all of its chunks to hand out).
const GATHER: Duration = Duration::from_secs(1);

/// How soon a fetch refused `busy` is tried again (with the next source).
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// What the planner asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell `to` that this node holds `ids` (with their factors), placed on `to`: it
    /// should pull them.
    Notify { to: String, ids: Vec<(ChunkId, u8)> },
    /// GET `id` from `from`; report with [`Planner::fetched`].
    Fetch { id: ChunkId, from: String },
    /// `id` is held here and placed elsewhere: delete it once every one of `targets`
    /// proves it holds a copy; report with [`Planner::handed_off`].
    HandOff { id: ChunkId, targets: Vec<String> },
    /// Anti-entropy: our digest of the chunks placed on both us and `to`.
    Digest { to: String, digest: Digest },
    /// Anti-entropy, digests unequal: our per-bucket digests of the same set.
    Buckets { to: String, buckets: Box<[Digest]> },
    /// Anti-entropy: the IDs we hold, placed on both, in the buckets that differ;
    /// `reply` asks `to` for its own listing of the same buckets.
    Listing {
        to: String,
        buckets: Vec<u8>,
        ids: Vec<ChunkId>,
        reply: bool,
    },
}

/// A multiset digest of chunk IDs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub sum: [u64; 4],
}

impl Digest {
    pub fn add(&mut self, id: &ChunkId) {
        self.count += 1;
        for (lane, chunk) in self.sum.iter_mut().zip(id.0.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(chunk.try_into().unwrap()));
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Copies of a chunk unless its file asked for more.
    pub factor: usize,
    /// How often each pair of partners compares digests.
    pub anti_entropy: Duration,
    /// Fetches in flight at once.
    pub max_fetches: usize,
    /// Hand-offs (proof rounds with the placed nodes) in flight at once.
    pub max_handoffs: usize,
    /// Chunks waiting to be fetched, at most (anti-entropy finds the rest later).
    pub max_wanted: usize,
    /// The most copies a file may ask for (`replication.max_factor`).
    pub max_factor: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            factor: 2,
            anti_entropy: Duration::from_secs(900),
            max_fetches: 4,
            max_handoffs: 4,
            max_wanted: 100_000,
            max_factor: 4,
        }
    }
}

/// A chunk held here: its factor and the seeds of its placed nodes (up to 2, the rest
/// recomputed when needed: a factor above 2 is rare and per file).
#[derive(Debug, Clone, Copy)]
struct Held {
    placed: [u64; 2],
    factor: u8,
}

/// A chunk placed here that this node lacks.
#[derive(Debug, Clone)]
struct Wanted {
    /// Who said they hold it, most recent last (at most 4).
    sources: Vec<String>,
    factor: u8,
    attempts: u32,
    not_before: Duration,
    in_flight: bool,
}

pub struct Planner {
    me: String,
    my_seed: u64,
    cfg: Config,
    placement: Arc<Placement>,
    held: HashMap<ChunkId, Held>,
    wanted: BTreeMap<ChunkId, Wanted>,
    in_flight: usize,
    /// Chunks to hand off, with when to try next (`Duration::MAX`: in flight).
    handing_off: HashMap<ChunkId, Duration>,
    handoffs_in_flight: usize,
    next_anti_entropy: Duration,
    out: VecDeque<Action>,
    /// Per partner seed, the digest of the chunks placed on both: built on first use
    /// after a change, so a partner's digest costs a lookup, not a pass.
    pairs: Option<HashMap<u64, Digest>>,
    passes: u64,
}

impl Planner {
    pub fn new(me: &str, cfg: Config, placement: Arc<Placement>, now: Duration) -> Planner {
        // Stagger the first pass by the node's seed so a fleet does not compare at once.
        let my_seed = super::placement::seed_v2(me);
        let period = cfg.anti_entropy.as_millis().max(1) as u64;
        Planner {
            me: me.to_string(),
            my_seed,
            next_anti_entropy: now + Duration::from_millis(my_seed % period),
            cfg,
            placement,
            held: HashMap::new(),
            wanted: BTreeMap::new(),
            in_flight: 0,
            handing_off: HashMap::new(),
            handoffs_in_flight: 0,
            out: VecDeque::new(),
            pairs: None,
            passes: 0,
        }
    }

    /// The chunks this node holds at start (no notices: anti-entropy and the first
    /// membership change take it from there).
    pub fn load(&mut self, id: ChunkId, factor: usize) {
        self.pairs = None;
        let placed = self.placed_seeds(&id, factor);
        self.held.insert(
            id,
            Held {
                placed,
                factor: factor.min(u8::MAX as usize) as u8,
            },
        );
    }

    pub fn holds(&self, id: &ChunkId) -> bool {
        self.held.contains_key(id)
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn wanted(&self) -> usize {
        self.wanted.len()
    }

    /// A client stored a chunk here: tell its placed nodes (we are its only holder), and
    /// hand it off later if it is not placed here.
    pub fn stored(&mut self, now: Duration, id: ChunkId, factor: usize) {
        let factor = factor.clamp(1, self.cfg.max_factor);
        self.forget_wanted(&id);
        self.load(id, factor);
        let targets = self.targets(&id, factor);
        let placed_here = targets.contains(&self.me);
        let others: Vec<String> = targets.iter().filter(|t| **t != self.me).cloned().collect();
        for t in others {
            self.notify(t, id, factor);
        }
        if !placed_here {
            self.set_handoff(id, Some(now + self.handoff_delay()));
        }
    }

    /// A fetched replica was stored here: nothing to tell (its holder told the others).
    pub fn stored_replica(&mut self, id: ChunkId, factor: usize) {
        self.forget_wanted(&id);
        self.load(id, factor.clamp(1, self.cfg.max_factor));
    }

    fn forget_wanted(&mut self, id: &ChunkId) {
        if self.wanted.remove(id).is_some_and(|w| w.in_flight) {
            self.in_flight -= 1;
        }
    }

    /// A chunk left the store (handed off, garbage-collected, quarantined).
    pub fn removed(&mut self, id: &ChunkId) {
        self.pairs = None;
        self.held.remove(id);
        self.set_handoff(*id, None);
        // A drained node gives its memory back too.
        if self.held.capacity() > 64 && self.held.len() < self.held.capacity() / 4 {
            self.held.shrink_to_fit();
        }
        if self.handing_off.capacity() > 64
            && self.handing_off.len() < self.handing_off.capacity() / 4
        {
            self.handing_off.shrink_to_fit();
        }
    }

    /// The membership changed: the chunks whose placement changed are told to their new
    /// targets, those no longer placed here are handed off, and nothing else is touched.
    pub fn set_placement(&mut self, now: Duration, placement: Arc<Placement>) {
        let old = std::mem::replace(&mut self.placement, placement);
        self.pairs = None;
        let ids: Vec<ChunkId> = self.held.keys().copied().collect();
        for id in ids {
            let h = self.held[&id];
            let factor = h.factor as usize;
            let new = self.placed_seeds(&id, factor);
            if new == h.placed && factor <= 2 {
                continue;
            }
            let before: Vec<String> = old
                .place(&id, factor)
                .into_iter()
                .map(String::from)
                .collect();
            let after = self.targets(&id, factor);
            self.held.get_mut(&id).unwrap().placed = new;
            let teller = if after.contains(&self.me) {
                // Still placed here: tell the new targets if we are the heaviest of the
                // previous holders still placed or online.
                before
                    .iter()
                    .find(|b| self.placement.contains(b) || **b == self.me)
                    .is_some_and(|b| *b == self.me)
            } else {
                true
            };
            if teller {
                let new: Vec<String> = after
                    .iter()
                    .filter(|t| !before.contains(t) && **t != self.me)
                    .cloned()
                    .collect();
                for t in new {
                    self.notify(t, id, factor);
                }
            }
            if !after.contains(&self.me) && self.placement.eligible() >= factor {
                self.set_handoff(id, Some(now + self.handoff_delay()));
            }
        }
        // What we wanted may no longer be placed here.
        let placement = Arc::clone(&self.placement);
        let me = self.me.clone();
        let mut dropped_in_flight = 0;
        self.wanted.retain(|id, w| {
            let keep = w.in_flight
                || placement
                    .place(id, w.factor as usize)
                    .iter()
                    .any(|t| *t == me);
            if !keep && w.in_flight {
                dropped_in_flight += 1;
            }
            keep
        });
        self.in_flight -= dropped_in_flight;
    }

    /// A peer told us it holds `ids`, placed on us. Only chunks really placed here are
    /// taken: a notice about anything else is ignored (it could only waste a fetch).
    pub fn on_notice(&mut self, now: Duration, from: &str, ids: &[(ChunkId, u8)]) {
        for (id, factor) in ids {
            self.want(now, *id, *factor as usize, from);
        }
    }

    /// A fetch ended: stored (`true`, and [`Planner::stored`] follows from the driver's
    /// store event) or failed (`false`: try another source, later).
    pub fn fetched(&mut self, now: Duration, id: &ChunkId, ok: bool) {
        let Some(w) = self.wanted.get_mut(id) else {
            return;
        };
        if w.in_flight {
            w.in_flight = false;
            self.in_flight -= 1;
        }
        if ok {
            self.wanted.remove(id);
            return;
        }
        w.attempts += 1;
        // 1 s doubling to 5 min, and the next source first.
        let backoff = Duration::from_secs(1 << w.attempts.min(8)).min(Duration::from_secs(300));
        w.not_before = now + backoff;
        if w.sources.len() > 1 {
            w.sources.rotate_left(1);
        }
    }

    /// A hand-off ended: deleted (its holders proved theirs) or kept (try again later).
    /// `unproven`: the targets that did not prove a copy; they are told again (their
    /// notice may have been lost, or their copy was bad), since no anti-entropy pass
    /// covers a chunk held by a node it is not placed on.
    pub fn handed_off(&mut self, now: Duration, id: &ChunkId, deleted: bool, unproven: &[String]) {
        if deleted {
            self.removed(id);
        } else if self.handing_off.contains_key(id) {
            self.set_handoff(*id, Some(now + self.cfg.anti_entropy));
            let factor = self
                .held
                .get(id)
                .map_or(self.cfg.factor, |h| h.factor as usize);
            for t in unproven {
                if *t != self.me {
                    self.notify(t.clone(), *id, factor);
                }
            }
        }
    }

    /// How long after a chunk stops being placed here its hand-off is first tried.
    fn handoff_delay(&self) -> Duration {
        HANDOFF_DELAY.min(self.cfg.anti_entropy)
    }

    /// A fetch was refused `busy` (the source paused its replication): not a failure of
    /// the chunk, so no backoff; the next source, in a few seconds.
    pub fn busy(&mut self, now: Duration, id: &ChunkId) {
        let Some(w) = self.wanted.get_mut(id) else {
            return;
        };
        if w.in_flight {
            w.in_flight = false;
            self.in_flight -= 1;
        }
        w.not_before = now + BUSY_RETRY;
        if w.sources.len() > 1 {
            w.sources.rotate_left(1);
        }
    }

    /// Our copy of `id` failed verification (and was quarantined): fetch it again from
    /// the other nodes it is placed on, which should hold it.
    pub fn corrupt(&mut self, now: Duration, id: &ChunkId, factor: usize) {
        self.removed(id);
        let factor = factor.clamp(1, self.cfg.max_factor);
        let targets = self.targets(id, factor);
        if targets.contains(&self.me) {
            for t in targets.iter().rev() {
                self.want(now, *id, factor, t);
            }
        }
    }

    /// The chunks the planner thinks are held here (to compare with the store).
    pub fn held_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.held.keys()
    }

    /// The membership view the planner places with.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Anti-entropy passes started so far.
    pub fn anti_entropy_passes(&self) -> u64 {
        self.passes
    }

    /// Whether `id` waits to be fetched.
    pub fn wants(&self, id: &ChunkId) -> bool {
        self.wanted.contains_key(id)
    }

    /// Anti-entropy: a partner's digest of the chunks placed on both of us.
    pub fn on_digest(&mut self, from: &str, digest: Digest) {
        let Some(seed) = self.placement.seed_of(from) else {
            return;
        };
        let mine = self.pair_digests().get(&seed).copied().unwrap_or_default();
        // While fetches run or are about to (a notice just came), digests differ for
        // reasons the notices already cover: compare again next period. A chunk whose
        // fetches failed (its source died, say) is exactly what the comparison is for,
        // and hand-offs are of chunks not placed here (not in the digest).
        let settling = self.wanted.values().any(|w| w.in_flight || w.attempts == 0);
        if mine != digest && !settling {
            self.out.push_back(Action::Buckets {
                to: from.to_string(),
                buckets: self.buckets_with(from).into_boxed_slice(),
            });
        }
    }

    fn pair_digests(&mut self) -> &HashMap<u64, Digest> {
        if self.pairs.is_none() {
            let mut pairs: HashMap<u64, Digest> = HashMap::new();
            for (id, h) in &self.held {
                if h.placed.contains(&self.my_seed) {
                    for s in h.placed.iter().filter(|s| **s != self.my_seed && **s != 0) {
                        pairs.entry(*s).or_default().add(id);
                    }
                }
            }
            self.pairs = Some(pairs);
        }
        self.pairs.as_ref().unwrap()
    }

    /// Anti-entropy: a partner's per-bucket digests; list ours where they differ and ask
    /// for theirs.
    pub fn on_buckets(&mut self, from: &str, theirs: &[Digest]) {
        if theirs.len() != BUCKETS {
            return;
        }
        let mine = self.buckets_with(from);
        let differ: Vec<u8> = (0..BUCKETS)
            .filter(|&b| mine[b] != theirs[b])
            .map(|b| b as u8)
            .collect();
        if !differ.is_empty() {
            let ids = self.listing_with(from, &differ);
            self.out.push_back(Action::Listing {
                to: from.to_string(),
                buckets: differ,
                ids,
                reply: true,
            });
        }
    }

    /// Anti-entropy: a partner's IDs in some buckets; fetch what we lack, and answer
    /// with ours if asked.
    pub fn on_listing(
        &mut self,
        now: Duration,
        from: &str,
        buckets: &[u8],
        ids: &[ChunkId],
        reply: bool,
    ) {
        for id in ids {
            if buckets.contains(&id.0[0]) {
                // Chunks placed on both of us: the pair's factor is at least 2.
                self.want(now, *id, 2, from);
            }
        }
        if reply {
            let ids = self.listing_with(from, buckets);
            self.out.push_back(Action::Listing {
                to: from.to_string(),
                buckets: buckets.to_vec(),
                ids,
                reply: false,
            });
        }
    }

    /// The next action, if any; call until `None` after every input and timeout.
    pub fn poll_action(&mut self, now: Duration) -> Option<Action> {
        if let Some(a) = self.out.pop_front() {
            return Some(a);
        }
        if self.in_flight < self.cfg.max_fetches {
            let next = self
                .wanted
                .iter_mut()
                .find(|(_, w)| !w.in_flight && w.not_before <= now && !w.sources.is_empty());
            if let Some((id, w)) = next {
                w.in_flight = true;
                self.in_flight += 1;
                // A holder still in placement before one that is leaving it (draining,
                // or full): the leaver has all of its chunks to hand out.
                let placement = &self.placement;
                let from = w
                    .sources
                    .iter()
                    .rev()
                    .find(|s| placement.contains(s))
                    .or(w.sources.last())
                    .unwrap()
                    .clone();
                return Some(Action::Fetch { id: *id, from });
            }
        }
        let due = (self.handoffs_in_flight < self.cfg.max_handoffs)
            .then(|| {
                self.handing_off
                    .iter()
                    .find(|(_, t)| **t <= now)
                    .map(|(id, _)| *id)
            })
            .flatten();
        if let Some(id) = due {
            // Asked again only when the driver reports how it went.
            self.set_handoff(id, Some(Duration::MAX));
            let factor = self
                .held
                .get(&id)
                .map_or(self.cfg.factor, |h| h.factor as usize);
            let targets = self.targets(&id, factor);
            if targets.contains(&self.me) {
                self.set_handoff(id, None);
            } else {
                return Some(Action::HandOff { id, targets });
            }
        }
        None
    }

    /// When the planner next wants to be woken without an input.
    pub fn poll_timeout(&self) -> Duration {
        let mut t = self.next_anti_entropy;
        if self.in_flight < self.cfg.max_fetches {
            for w in self.wanted.values().filter(|w| !w.in_flight) {
                t = t.min(w.not_before);
            }
        }
        if self.handoffs_in_flight < self.cfg.max_handoffs {
            for h in self.handing_off.values() {
                t = t.min(*h);
            }
        }
        t
    }

    /// Sets (or with `None` clears) when `id` is next handed off, keeping the count of
    /// hand-offs in flight (`Duration::MAX`) true.
    fn set_handoff(&mut self, id: ChunkId, next: Option<Duration>) {
        let old = match next {
            Some(t) => self.handing_off.insert(id, t),
            None => self.handing_off.remove(&id),
        };
        if old == Some(Duration::MAX) {
            self.handoffs_in_flight -= 1;
        }
        if next == Some(Duration::MAX) {
            self.handoffs_in_flight += 1;
        }
    }

    /// Time passed: start an anti-entropy pass if one is due.
    pub fn handle_timeout(&mut self, now: Duration) {
        if now < self.next_anti_entropy {
            return;
        }
        self.next_anti_entropy = now + self.cfg.anti_entropy;
        self.passes += 1;
        // One digest per partner, sent by the partner with the lower seed.
        let my_seed = self.my_seed;
        let digests: Vec<(u64, Digest)> = self
            .pair_digests()
            .iter()
            .filter(|(s, _)| **s > my_seed)
            .map(|(s, d)| (*s, *d))
            .collect();
        let mut out: Vec<(String, Digest)> = digests
            .into_iter()
            .filter_map(|(s, d)| self.placement.id_of_seed(s).map(|id| (id.to_string(), d)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        for (to, digest) in out {
            self.out.push_back(Action::Digest { to, digest });
        }
    }

    /// The planner's own memory: what it keeps per chunk and per wanted chunk.
    pub fn memory_bytes(&self) -> usize {
        let held = self.held.capacity() * (std::mem::size_of::<(ChunkId, Held)>() + 1);
        let wanted = self.wanted.len() * (std::mem::size_of::<(ChunkId, Wanted)>() + 4 * (24 + 24));
        let handing =
            self.handing_off.capacity() * (std::mem::size_of::<(ChunkId, Duration)>() + 1);
        held + wanted + handing + std::mem::size_of::<Planner>()
    }

    fn want(&mut self, now: Duration, id: ChunkId, factor: usize, from: &str) {
        let factor = factor.clamp(1, self.cfg.max_factor);
        if self.held.contains_key(&id) || from == self.me {
            return;
        }
        if !self
            .placement
            .place(&id, factor)
            .iter()
            .any(|t| *t == self.me)
        {
            return;
        }
        if let Some(w) = self.wanted.get_mut(&id) {
            if !w.sources.iter().any(|s| s == from) {
                if w.sources.len() >= 4 {
                    w.sources.remove(0);
                }
                w.sources.push(from.to_string());
                // A new holder is fresh news: try it soon, whatever the old ones cost.
                if !w.in_flight {
                    w.not_before = w.not_before.min(now + GATHER);
                }
            }
            return;
        }
        if self.wanted.len() >= self.cfg.max_wanted {
            return;
        }
        self.wanted.insert(
            id,
            Wanted {
                sources: vec![from.to_string()],
                factor: factor as u8,
                attempts: 0,
                // Let the other holders' notices of the same change arrive, to choose.
                not_before: now + GATHER,
                in_flight: false,
            },
        );
    }

    fn buckets_with(&self, partner: &str) -> Vec<Digest> {
        let mut b = vec![Digest::default(); BUCKETS];
        let Some(seed) = self.placement.seed_of(partner) else {
            return b;
        };
        for (id, h) in &self.held {
            if h.placed.contains(&self.my_seed) && h.placed.contains(&seed) {
                b[id.0[0] as usize].add(id);
            }
        }
        b
    }

    fn listing_with(&self, partner: &str, buckets: &[u8]) -> Vec<ChunkId> {
        let Some(seed) = self.placement.seed_of(partner) else {
            return Vec::new();
        };
        let mut ids: Vec<ChunkId> = self
            .held
            .iter()
            .filter(|(id, h)| {
                buckets.contains(&id.0[0])
                    && h.placed.contains(&self.my_seed)
                    && h.placed.contains(&seed)
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    fn placed_seeds(&self, id: &ChunkId, factor: usize) -> [u64; 2] {
        let mut s = [0u64; 2];
        for (slot, n) in s
            .iter_mut()
            .zip(self.placement.place_seeds(id, factor.min(2)))
        {
            *slot = n;
        }
        s
    }

    fn targets(&self, id: &ChunkId, factor: usize) -> Vec<String> {
        self.placement
            .place(id, factor)
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn notify(&mut self, to: String, id: ChunkId, factor: usize) {
        let id = (id, factor as u8);
        match self.out.iter_mut().rev().find_map(|a| match a {
            Action::Notify { to: t, ids } if *t == to => Some(ids),
            _ => None,
        }) {
            Some(ids) => ids.push(id),
            None => self.out.push_back(Action::Notify { to, ids: vec![id] }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::placement::{Member, VERSION};

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("node{i}"),
                online: true,
                free_bytes: None,
                draining: false,
                placement: VERSION,
            })
            .collect()
    }

    /// A chunk that `node` is one of the two placed nodes of.
    fn placed_on(p: &Placement, node: &str) -> ChunkId {
        (0..100u64)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .find(|c| p.place(c, 2).contains(&node))
            .unwrap()
    }

    /// Planners that pass each other's messages at once; fetches succeed when the
    /// source holds the chunk. Returns the fetches done.
    struct Pair {
        planners: Vec<Planner>,
        now: Duration,
        fetches: Vec<(String, ChunkId, String)>,
        /// Messages by kind: notices, digests, buckets, listings.
        sent: [usize; 4],
    }

    impl Pair {
        fn new(n: usize, chunks: usize) -> Pair {
            let p = Arc::new(Placement::new(&members(n), 0));
            let cfg = Config::default();
            let mut planners: Vec<Planner> = (0..n)
                .map(|i| {
                    Planner::new(
                        &format!("node{i}"),
                        cfg.clone(),
                        Arc::clone(&p),
                        Duration::ZERO,
                    )
                })
                .collect();
            for c in 0..chunks {
                let id = ChunkId::of(&(c as u64).to_le_bytes());
                for t in p.place(&id, 2) {
                    let i: usize = t[4..].parse().unwrap();
                    planners[i].load(id, 2);
                }
            }
            Pair {
                planners,
                now: Duration::ZERO,
                fetches: Vec::new(),
                sent: [0; 4],
            }
        }

        fn ix(id: &str) -> usize {
            id[4..].parse().unwrap()
        }

        /// Runs every planner's actions until none is left, then advances to the next
        /// timeout; stops at `until`.
        fn run(&mut self, until: Duration) {
            loop {
                let mut any = false;
                for i in 0..self.planners.len() {
                    while let Some(a) = self.planners[i].poll_action(self.now) {
                        any = true;
                        let me = format!("node{i}");
                        let now = self.now;
                        match a {
                            Action::Notify { to, ids } => {
                                self.sent[0] += 1;
                                self.planners[Self::ix(&to)].on_notice(now, &me, &ids)
                            }
                            Action::Digest { to, digest } => {
                                self.sent[1] += 1;
                                self.planners[Self::ix(&to)].on_digest(&me, digest)
                            }
                            Action::Buckets { to, buckets } => {
                                self.sent[2] += 1;
                                self.planners[Self::ix(&to)].on_buckets(&me, &buckets)
                            }
                            Action::Listing {
                                to,
                                buckets,
                                ids,
                                reply,
                            } => {
                                self.sent[3] += 1;
                                self.planners[Self::ix(&to)]
                                    .on_listing(now, &me, &buckets, &ids, reply)
                            }
                            Action::Fetch { id, from } => {
                                // A source outside the pair (a dead node) fails.
                                let ok = self
                                    .planners
                                    .get(Self::ix(&from))
                                    .is_some_and(|p| p.holds(&id));
                                self.planners[i].fetched(now, &id, ok);
                                if ok {
                                    self.planners[i].stored_replica(id, 2);
                                    self.fetches.push((me.clone(), id, from));
                                }
                            }
                            Action::HandOff { id, targets } => {
                                let proved = targets
                                    .iter()
                                    .all(|t| self.planners[Self::ix(t)].holds(&id));
                                self.planners[i].handed_off(now, &id, proved, &[]);
                            }
                        }
                    }
                }
                if any {
                    continue;
                }
                let next = self
                    .planners
                    .iter()
                    .map(|p| p.poll_timeout())
                    .min()
                    .unwrap();
                if next > until {
                    self.now = until;
                    return;
                }
                self.now = next.max(self.now);
                for p in &mut self.planners {
                    p.handle_timeout(self.now);
                }
            }
        }
    }

    #[test]
    fn an_idle_fleet_sends_digests_only_and_they_agree() {
        let mut f = Pair::new(5, 500);
        let period = Config::default().anti_entropy;
        f.run(period * 3);
        assert!(f.fetches.is_empty());
        // Each of the 10 pairs compared once a period (the first pass is staggered
        // within the first period), and nothing was listed or told.
        assert!((20..=30).contains(&f.sent[1]), "digests: {:?}", f.sent);
        assert_eq!(f.sent[0] + f.sent[2] + f.sent[3], 0, "{:?}", f.sent);
    }

    #[test]
    fn anti_entropy_restores_a_copy_lost_without_a_word() {
        let mut f = Pair::new(4, 300);
        // node1 loses a chunk it should hold (a disk error nobody was told about).
        let lost = *f.planners[1].held.keys().min().expect("node1 holds chunks");
        f.planners[1].removed(&lost);
        let period = Config::default().anti_entropy;
        f.run(period * 2);
        assert_eq!(f.fetches.len(), 1, "{:?}", f.fetches);
        assert_eq!((f.fetches[0].0.as_str(), f.fetches[0].1), ("node1", lost));
        assert!(f.planners[1].holds(&lost));
    }

    #[test]
    fn a_node_leaving_moves_exactly_its_chunks_and_the_leaver_hands_off() {
        let mut f = Pair::new(6, 600);
        let gone = f.planners[2].held();
        // node2 drains: it stays online but leaves placement.
        let mut m = members(6);
        m[2].draining = true;
        let p = Arc::new(Placement::new(&m, 0));
        let now = f.now;
        for q in &mut f.planners {
            q.set_placement(now, Arc::clone(&p));
        }
        f.run(Duration::from_secs(3600));
        assert_eq!(f.fetches.len(), gone, "one fetch per chunk node2 held");
        assert!(
            f.fetches
                .iter()
                .all(|(to, _, from)| to != "node2" && from != "node2"),
            "fetched from the holders staying in placement"
        );
        assert_eq!(f.planners[2].held(), 0, "node2 handed everything off");
    }

    #[test]
    fn a_notice_for_a_chunk_not_placed_here_is_ignored() {
        let p = Arc::new(Placement::new(&members(5), 0));
        let mut a = Planner::new("node0", Config::default(), Arc::clone(&p), Duration::ZERO);
        let elsewhere: Vec<(ChunkId, u8)> = (0..50u64)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .filter(|c| !p.place(c, 4).contains(&"node0"))
            .map(|c| (c, 4))
            .collect();
        assert!(!elsewhere.is_empty());
        a.on_notice(Duration::ZERO, "node3", &elsewhere);
        assert_eq!(a.wanted(), 0);
        assert_eq!(a.poll_action(Duration::from_secs(10)), None);
    }

    #[test]
    fn a_failed_fetch_backs_off_and_tries_the_next_holder() {
        let p = Arc::new(Placement::new(&members(5), 0));
        let mut a = Planner::new("node0", Config::default(), Arc::clone(&p), Duration::ZERO);
        let id = placed_on(&p, "node0");
        let t = Duration::ZERO;
        a.on_notice(t, "node1", &[(id, 2)]);
        a.on_notice(t, "node2", &[(id, 2)]);
        assert_eq!(a.poll_action(t), None, "waits a moment for more notices");
        let t = t + GATHER;
        let Some(Action::Fetch { from, .. }) = a.poll_action(t) else {
            panic!("expected a fetch");
        };
        a.fetched(t, &id, false);
        assert_eq!(a.poll_action(t), None, "backs off");
        assert!(a.poll_timeout() > t);
        let t = a.poll_timeout();
        let Some(Action::Fetch { from: again, .. }) = a.poll_action(t) else {
            panic!("expected a retry");
        };
        assert_ne!(from, again, "the other holder");
    }

    /// A wanted chunk whose only source died (a fetch failed, backing off) must not stop
    /// anti-entropy from finding its other holder: the node with the higher seed (the
    /// one that receives digests) used to skip every comparison while it wanted anything,
    /// and kept retrying the dead source. Found by the bridged-brokers test, where a
    /// holder was killed between its notice and the fetch.
    #[test]
    fn a_chunk_wanted_from_a_dead_source_is_found_by_anti_entropy() {
        let mut pair = Pair::new(2, 0);
        let seed = |i: usize| super::super::placement::seed_v2(&format!("node{i}"));
        let (hi, lo) = if seed(0) > seed(1) { (0, 1) } else { (1, 0) };
        let id = ChunkId::of(b"orphan");
        pair.planners[lo].load(id, 2);
        pair.planners[hi].on_notice(Duration::ZERO, "node9", &[(id, 2)]);
        pair.run(Duration::from_secs(3 * 900));
        assert!(pair.planners[hi].holds(&id), "never fetched from node{lo}");
        assert_eq!(
            pair.fetches,
            [(format!("node{hi}"), id, format!("node{lo}"))]
        );
    }

    /// A node that must hand off thousands of chunks (it drains, or a node joined)
    /// asks for at most `max_handoffs` proof rounds at once: the driver spawns one task
    /// per action, so an unbounded burst would hold memory per chunk.
    #[test]
    fn hand_offs_in_flight_are_bounded() {
        let p = Arc::new(Placement::new(&members(5), 0));
        let mut a = Planner::new("node4", Config::default(), Arc::clone(&p), Duration::ZERO);
        let ids: Vec<ChunkId> = (0..400u64)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .filter(|c| !p.place(c, 2).contains(&"node4"))
            .take(10)
            .collect();
        for id in &ids {
            a.stored(Duration::ZERO, *id, 2);
        }
        while a.poll_action(Duration::ZERO).is_some() {}
        let t = a.poll_timeout();
        let mut handing: Vec<ChunkId> = Vec::new();
        while let Some(act) = a.poll_action(t) {
            if let Action::HandOff { id, .. } = act {
                handing.push(id);
            }
        }
        assert_eq!(handing.len(), 4);
        a.handed_off(t, &handing[0], true, &[]);
        assert!(matches!(a.poll_action(t), Some(Action::HandOff { .. })));
        assert_eq!(a.poll_action(t), None);
        a.handed_off(t, &handing[1], false, &[]);
        assert!(matches!(a.poll_action(t), Some(Action::HandOff { .. })));
        a.removed(&handing[2]);
        assert!(matches!(a.poll_action(t), Some(Action::HandOff { .. })));
        assert_eq!(a.poll_action(t), None);
    }

    /// A chunk whose holders all failed (they held bad copies, found when we fetched)
    /// backs off for minutes; a notice from a new holder, or its copy going bad here,
    /// must not wait that out. `busy` is not a failure: no backoff.
    #[test]
    fn a_new_holder_ends_a_backoff_and_busy_is_not_a_failure() {
        let p = Arc::new(Placement::new(&members(5), 0));
        let mut a = Planner::new("node0", Config::default(), Arc::clone(&p), Duration::ZERO);
        let id = placed_on(&p, "node0");
        let mut t = Duration::ZERO;
        a.on_notice(t, "node1", &[(id, 2)]);
        for _ in 0..8 {
            t = a.poll_timeout();
            assert!(matches!(a.poll_action(t), Some(Action::Fetch { .. })));
            a.fetched(t, &id, false);
        }
        assert!(
            a.poll_timeout() >= t + Duration::from_secs(250),
            "backed off for minutes"
        );
        a.on_notice(t, "node3", &[(id, 2)]);
        assert_eq!(a.poll_timeout(), t + GATHER);
        let t = t + GATHER;
        assert_eq!(
            a.poll_action(t),
            Some(Action::Fetch {
                id,
                from: "node3".into()
            })
        );
        a.busy(t, &id);
        assert_eq!(a.poll_timeout(), t + BUSY_RETRY);
        // A hand-off that found a target without a proven copy tells it again.
        let mut b = Planner::new("node4", Config::default(), Arc::clone(&p), Duration::ZERO);
        let other = (0..100u64)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .find(|c| !p.place(c, 2).contains(&"node4"))
            .unwrap();
        b.stored(t, other, 2);
        while b.poll_action(t).is_some() {}
        let targets: Vec<String> = p.place(&other, 2).iter().map(|s| s.to_string()).collect();
        let t = b.poll_timeout();
        assert_eq!(
            b.poll_action(t),
            Some(Action::HandOff {
                id: other,
                targets: targets.clone()
            })
        );
        b.handed_off(t, &other, false, &targets[1..]);
        assert_eq!(
            b.poll_action(t),
            Some(Action::Notify {
                to: targets[1].clone(),
                ids: vec![(other, 2)]
            })
        );
    }
}
