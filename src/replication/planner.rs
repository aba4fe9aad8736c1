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
//!   chunks it holds that are placed on both. Equal digests (the steady state) end the
//!   exchange. Unequal ones are split into [`BUCKETS`] buckets by the first byte of the
//!   chunk ID; only the buckets that differ are listed, and each side fetches what it
//!   lacks. So lost notices, a source that died before a fetch, or a disk that lost
//!   chunks are found within one period, at a cost of one small message per partner
//!   when nothing changed.
//! - **Hand off** a chunk held here but not placed here once its placed nodes prove they
//!   hold it ([`Action::HandOff`]; the driver's HAS and PROVE decide, and
//!   `store::retention::redundant` is the rule).
//!
//! Memory: per held chunk the planner keeps its **key** (the first 8 bytes of its ID,
//! [`ChunkId::key`], all that placement ranks by), the indices of its first two placed
//! nodes in the current view, its factor and when to try its hand-off: 24 bytes in a
//! hash table, under 64 bytes per chunk at any load of the table. Actions that go to
//! other nodes name chunks by key; the driver reads the full IDs from the store (whose
//! fan-out directory is the key's first byte). Two chunks whose IDs share 8 bytes (one
//! pair in 10^7 at a million chunks by chance; 2^32 hashes of work on purpose) share a
//! planner entry: the driver resolves a key to every chunk it names, so both are told
//! and handed off together, and the store keeps the entry while either remains.
//!
//! Digests are multiset sums over keys (4 lanes of wrapping u64 sums and a count):
//! order-free and updated in O(1). A member could in principle craft chunks whose keys
//! collide in the sum, which would only hide a difference from one anti-entropy pass
//! (availability, never safety: deletes still need proofs).

use super::placement::{Placement, fmix64};
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

/// Due hand-offs taken from the table per scan of it.
const READY_BATCH: usize = 64;

/// The anti-entropy bucket of a key: the first byte of the chunk ID.
pub fn bucket_of(key: u64) -> u8 {
    (key >> 56) as u8
}

/// What the planner asks of its driver. Chunks it holds are named by key
/// ([`ChunkId::key`]); the driver resolves keys to IDs from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell `to` that this node holds the chunks with `keys` (with their factors),
    /// placed on `to`: it should pull them.
    Notify { to: String, keys: Vec<(u64, u8)> },
    /// GET `id` from `from`; report with [`Planner::fetched`].
    Fetch { id: ChunkId, from: String },
    /// The chunk(s) with `key` are held here and placed elsewhere: delete each once
    /// every one of `targets` proves it holds a copy; report with [`Planner::handed_off`].
    HandOff { key: u64, targets: Vec<String> },
    /// Anti-entropy: our digest of the chunks placed on both us and `to`.
    Digest { to: String, digest: Digest },
    /// Anti-entropy, digests unequal: our per-bucket digests of the same set.
    Buckets { to: String, buckets: Box<[Digest]> },
    /// Anti-entropy: the chunks we hold, placed on both, in the buckets that differ;
    /// `reply` asks `to` for its own listing of the same buckets.
    Listing {
        to: String,
        buckets: Vec<u8>,
        keys: Vec<u64>,
        reply: bool,
    },
}

/// A multiset digest of chunk keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub sum: [u64; 4],
}

impl Digest {
    /// Lane `i` is the wrapping sum of `fmix64(key + i)` (docs/protocol.md).
    pub fn add(&mut self, key: u64) {
        self.count += 1;
        for (i, lane) in self.sum.iter_mut().enumerate() {
            *lane = lane.wrapping_add(fmix64(key.wrapping_add(i as u64)));
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

/// No placed node in this slot, or no hand-off due.
const NONE: u32 = u32::MAX;
/// A hand-off in flight (`Held::due`).
const IN_FLIGHT: u32 = u32::MAX - 1;
/// One tick of `Held::due`: hand-off times are kept to a tenth of a second.
const TICK_MS: u64 = 100;

/// A chunk held here (24 bytes with its key).
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Its first two placed nodes, as indices into the current view ([`NONE`]: fewer);
    /// the rest are recomputed when needed (a factor above 2 is rare and per file).
    placed: [u32; 2],
    /// When to try its hand-off, in ticks since the planner started, plus one; 0: not
    /// handing off; [`IN_FLIGHT`]: the driver is on it.
    due: u32,
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
    /// Our index in the current view (None: not eligible).
    my_index: Option<u32>,
    cfg: Config,
    placement: Arc<Placement>,
    /// When the planner started: `Held::due` counts ticks from here.
    epoch: Duration,
    held: HashMap<u64, Held>,
    wanted: BTreeMap<ChunkId, Wanted>,
    in_flight: usize,
    /// Held chunks with a hand-off due at some time (not in flight).
    handoffs_pending: usize,
    handoffs_in_flight: usize,
    /// No pending hand-off is due before this (a scan of `held` finds them).
    handoff_wake: Duration,
    /// Due hand-offs found by the last scan, not yet asked for.
    ready: Vec<u64>,
    next_anti_entropy: Duration,
    out: VecDeque<Action>,
    /// Per partner that sends us digests (its seed is lower than ours), a 64-bit
    /// fingerprint of our digest of the chunks placed on both: built on the first
    /// digest after a change, so the next ones cost a lookup, not a pass over `held`;
    /// 8 bytes per partner, not the 40 of the digest.
    theirs: Option<HashMap<u64, u64>>,
    passes: u64,
}

impl Digest {
    /// A 64-bit fingerprint of the whole digest (equal digests, equal fingerprints).
    fn fingerprint(&self) -> u64 {
        let mut h = fmix64(self.count);
        for lane in self.sum {
            h = fmix64(h ^ lane);
        }
        h
    }
}

impl Planner {
    pub fn new(me: &str, cfg: Config, placement: Arc<Placement>, now: Duration) -> Planner {
        // Stagger the first pass by the node's seed so a fleet does not compare at once.
        let my_seed = super::placement::seed_v2(me);
        let period = cfg.anti_entropy.as_millis().max(1) as u64;
        Planner {
            me: me.to_string(),
            my_seed,
            my_index: placement.index_of(me).map(|i| i as u32),
            next_anti_entropy: now + Duration::from_millis(my_seed % period),
            cfg,
            placement,
            epoch: now,
            held: HashMap::new(),
            wanted: BTreeMap::new(),
            in_flight: 0,
            handoffs_pending: 0,
            handoffs_in_flight: 0,
            handoff_wake: Duration::MAX,
            ready: Vec::new(),
            out: VecDeque::new(),
            theirs: None,
            passes: 0,
        }
    }

    /// The chunks this node holds at start (no notices: anti-entropy and the first
    /// membership change take it from there).
    pub fn load(&mut self, id: ChunkId, factor: usize) {
        self.load_key(id.key(), factor);
    }

    fn load_key(&mut self, key: u64, factor: usize) {
        self.theirs = None;
        let placed = self.placed(key, factor);
        let factor = factor.min(u8::MAX as usize) as u8;
        self.held
            .entry(key)
            .and_modify(|h| {
                h.placed = placed;
                h.factor = factor;
            })
            .or_insert(Held {
                placed,
                due: 0,
                factor,
            });
    }

    pub fn holds(&self, id: &ChunkId) -> bool {
        self.holds_key(id.key())
    }

    pub fn holds_key(&self, key: u64) -> bool {
        self.held.contains_key(&key)
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
        let key = id.key();
        self.load_key(key, factor);
        let targets = self.targets(key, factor);
        let placed_here = targets.contains(&self.me);
        let others: Vec<String> = targets.iter().filter(|t| **t != self.me).cloned().collect();
        for t in others {
            self.notify(t, key, factor);
        }
        if !placed_here {
            self.set_handoff(key, Some(now + self.handoff_delay()));
        }
    }

    /// A fetched replica was stored here: nothing to tell (its holder told the others).
    pub fn stored_replica(&mut self, id: ChunkId, factor: usize) {
        self.forget_wanted(&id);
        self.load_key(id.key(), factor.clamp(1, self.cfg.max_factor));
    }

    fn forget_wanted(&mut self, id: &ChunkId) {
        if self.wanted.remove(id).is_some_and(|w| w.in_flight) {
            self.in_flight -= 1;
        }
    }

    /// The last chunk with this key left the store (handed off, garbage-collected,
    /// quarantined). The driver calls it only when no other chunk has the same key.
    pub fn removed(&mut self, id: &ChunkId) {
        self.removed_key(id.key());
    }

    pub fn removed_key(&mut self, key: u64) {
        self.theirs = None;
        self.set_handoff(key, None);
        self.held.remove(&key);
        // A drained node gives its memory back too.
        if self.held.capacity() > 64 && self.held.len() < self.held.capacity() / 4 {
            self.held.shrink_to_fit();
        }
    }

    /// The membership changed: the chunks whose placement changed are told to their new
    /// targets, those no longer placed here are handed off, and nothing else is touched.
    pub fn set_placement(&mut self, now: Duration, placement: Arc<Placement>) {
        let old = std::mem::replace(&mut self.placement, placement);
        self.my_index = self.placement.index_of(&self.me).map(|i| i as u32);
        self.theirs = None;
        let keys: Vec<u64> = self.held.keys().copied().collect();
        for key in keys {
            let h = self.held[&key];
            let factor = h.factor as usize;
            let new = self.placed(key, factor);
            let seeds =
                |p: &Placement, s: [u32; 2]| s.map(|i| (i != NONE).then(|| p.seed_at(i as usize)));
            let unchanged = seeds(&old, h.placed) == seeds(&self.placement, new);
            self.held.get_mut(&key).unwrap().placed = new;
            if unchanged && factor <= 2 {
                continue;
            }
            let before: Vec<String> = old
                .ranked_key(key, factor)
                .into_iter()
                .map(|i| old.node_at(i).to_string())
                .collect();
            let after = self.targets(key, factor);
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
                    self.notify(t, key, factor);
                }
            }
            // (Re)started unless the driver is on it: the new targets need time to fetch.
            if !after.contains(&self.me)
                && self.placement.eligible() >= factor
                && self.held[&key].due != IN_FLIGHT
            {
                self.set_handoff(key, Some(now + self.handoff_delay()));
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
    pub fn handed_off(&mut self, now: Duration, key: u64, deleted: bool, unproven: &[String]) {
        if deleted {
            self.removed_key(key);
        } else if let Some(h) = self.held.get(&key).copied() {
            if h.due == 0 {
                return;
            }
            self.set_handoff(key, Some(now + self.cfg.anti_entropy));
            for t in unproven {
                if *t != self.me {
                    self.notify(t.clone(), key, h.factor as usize);
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
        let targets = self.targets(id.key(), factor);
        if targets.contains(&self.me) {
            for t in targets.iter().rev() {
                self.want(now, *id, factor, t);
            }
        }
    }

    /// The keys of the chunks the planner thinks are held here (to compare with the
    /// store).
    pub fn held_keys(&self) -> impl Iterator<Item = &u64> {
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
        // While fetches run or are about to (a notice just came), digests differ for
        // reasons the notices already cover: compare again next period. A chunk whose
        // fetches failed (its source died, say) is exactly what the comparison is for,
        // and hand-offs are of chunks not placed here (not in the digest).
        let settling = self.wanted.values().any(|w| w.in_flight || w.attempts == 0);
        if settling {
            return;
        }
        let Some(seed) = self.placement.seed_of(from) else {
            return;
        };
        let mine = if seed < self.my_seed {
            if self.theirs.is_none() {
                let my_seed = self.my_seed;
                let fps = self
                    .pair_digests()
                    .into_iter()
                    .filter(|(s, _)| *s < my_seed)
                    .map(|(s, d)| (s, d.fingerprint()))
                    .collect();
                self.theirs = Some(fps);
            }
            let fps = self.theirs.as_ref().unwrap();
            fps.get(&seed)
                .copied()
                .unwrap_or(Digest::default().fingerprint())
        } else {
            // Out of turn (it should wait for ours): one pass for this partner.
            let mut d = Digest::default();
            for key in self.shared_with(from) {
                d.add(*key);
            }
            d.fingerprint()
        };
        if mine != digest.fingerprint() {
            self.out.push_back(Action::Buckets {
                to: from.to_string(),
                buckets: self.buckets_with(from).into_boxed_slice(),
            });
        }
    }

    /// Per partner seed, the digest of the chunks placed on both: one pass over the
    /// table, kept only while a pass sends them (a thousand partners' digests would
    /// cost as much as the table itself).
    fn pair_digests(&self) -> HashMap<u64, Digest> {
        let mut pairs: HashMap<u64, Digest> = HashMap::new();
        if let Some(me) = self.my_index {
            for (key, h) in &self.held {
                if h.placed.contains(&me) {
                    for i in h.placed.iter().filter(|i| **i != me && **i != NONE) {
                        let seed = self.placement.seed_at(*i as usize);
                        pairs.entry(seed).or_default().add(*key);
                    }
                }
            }
        }
        pairs
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
            let keys = self.listing_with(from, &differ);
            self.out.push_back(Action::Listing {
                to: from.to_string(),
                buckets: differ,
                keys,
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
            let keys = self.listing_with(from, buckets);
            self.out.push_back(Action::Listing {
                to: from.to_string(),
                buckets: buckets.to_vec(),
                keys,
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
        while self.handoffs_in_flight < self.cfg.max_handoffs {
            let Some(key) = self.next_due_handoff(now) else {
                break;
            };
            // Asked again only when the driver reports how it went.
            self.set_handoff(key, Some(Duration::MAX));
            let factor = self.held[&key].factor as usize;
            let targets = self.targets(key, factor);
            if targets.contains(&self.me) {
                self.set_handoff(key, None);
            } else {
                return Some(Action::HandOff { key, targets });
            }
        }
        None
    }

    /// A held chunk whose hand-off is due: from the last scan's batch, or a new scan of
    /// the table once the earliest pending one is due (one scan per [`READY_BATCH`]
    /// hand-offs, so a draining node pays O(held) per batch, not per chunk).
    fn next_due_handoff(&mut self, now: Duration) -> Option<u64> {
        let now_t = self.ticks(now);
        while let Some(key) = self.ready.pop() {
            if self
                .held
                .get(&key)
                .is_some_and(|h| h.due != 0 && h.due != IN_FLIGHT && h.due <= now_t)
            {
                return Some(key);
            }
        }
        if self.handoffs_pending == 0 || now < self.handoff_wake {
            return None;
        }
        let mut next = NONE;
        for (key, h) in &self.held {
            if h.due == 0 || h.due == IN_FLIGHT {
                continue;
            }
            if h.due <= now_t && self.ready.len() < READY_BATCH {
                self.ready.push(*key);
            } else {
                next = next.min(h.due);
            }
        }
        self.handoff_wake = if !self.ready.is_empty() {
            now
        } else {
            self.time_of(next)
        };
        self.ready.pop()
    }

    /// When the planner next wants to be woken without an input.
    pub fn poll_timeout(&self) -> Duration {
        let mut t = self.next_anti_entropy;
        if self.in_flight < self.cfg.max_fetches {
            for w in self.wanted.values().filter(|w| !w.in_flight) {
                t = t.min(w.not_before);
            }
        }
        if self.handoffs_in_flight < self.cfg.max_handoffs && self.handoffs_pending > 0 {
            t = t.min(self.handoff_wake);
        }
        t
    }

    /// `now` in hand-off ticks, rounded down (a hand-off due at tick `d` is due when
    /// `d <= ticks(now)`).
    fn ticks(&self, now: Duration) -> u32 {
        let ms = now.saturating_sub(self.epoch).as_millis() as u64;
        (ms / TICK_MS + 1).min(IN_FLIGHT as u64 - 1) as u32
    }

    /// The time of tick `t` ([`Duration::MAX`] for [`NONE`]).
    fn time_of(&self, t: u32) -> Duration {
        if t >= IN_FLIGHT {
            return Duration::MAX;
        }
        self.epoch + Duration::from_millis((t as u64 - 1) * TICK_MS)
    }

    /// Sets (or with `None` clears) when the chunk with `key` is next handed off
    /// (`Duration::MAX`: in flight), keeping the counts true.
    fn set_handoff(&mut self, key: u64, next: Option<Duration>) {
        let due = match next {
            None => 0,
            Some(Duration::MAX) => IN_FLIGHT,
            Some(t) => {
                // Rounded up: never tried before it was asked for.
                let ms = t.saturating_sub(self.epoch).as_millis() as u64;
                (ms.div_ceil(TICK_MS) + 1).min(IN_FLIGHT as u64 - 1) as u32
            }
        };
        let Some(h) = self.held.get_mut(&key) else {
            return;
        };
        match h.due {
            0 => {}
            IN_FLIGHT => self.handoffs_in_flight -= 1,
            _ => self.handoffs_pending -= 1,
        }
        h.due = due;
        match due {
            0 => {}
            IN_FLIGHT => self.handoffs_in_flight += 1,
            _ => {
                self.handoffs_pending += 1;
                let at = self.time_of(due);
                self.handoff_wake = self.handoff_wake.min(at);
            }
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
            .into_iter()
            .filter(|(s, _)| *s > my_seed)
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
        let held = self.held.capacity() * (std::mem::size_of::<(u64, Held)>() + 1);
        let wanted = self.wanted.len() * (std::mem::size_of::<(ChunkId, Wanted)>() + 4 * (24 + 24));
        let theirs = self.theirs.as_ref().map_or(0, |t| t.capacity() * (16 + 1));
        held + wanted + theirs + self.ready.capacity() * 8 + std::mem::size_of::<Planner>()
    }

    fn want(&mut self, now: Duration, id: ChunkId, factor: usize, from: &str) {
        let factor = factor.clamp(1, self.cfg.max_factor);
        if self.holds(&id) || from == self.me {
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

    /// Held chunks placed on both us and `partner`, as (key, held).
    fn shared_with(&self, partner: &str) -> impl Iterator<Item = &u64> {
        let both = self
            .my_index
            .zip(self.placement.index_of(partner).map(|i| i as u32));
        self.held
            .iter()
            .filter(move |(_, h)| {
                both.is_some_and(|(me, p)| h.placed.contains(&me) && h.placed.contains(&p))
            })
            .map(|(k, _)| k)
    }

    fn buckets_with(&self, partner: &str) -> Vec<Digest> {
        let mut b = vec![Digest::default(); BUCKETS];
        for key in self.shared_with(partner) {
            b[bucket_of(*key) as usize].add(*key);
        }
        b
    }

    fn listing_with(&self, partner: &str, buckets: &[u8]) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .shared_with(partner)
            .filter(|k| buckets.contains(&bucket_of(**k)))
            .copied()
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The first two placed nodes of a chunk, as indices into the current view.
    fn placed(&self, key: u64, factor: usize) -> [u32; 2] {
        let mut s = [NONE; 2];
        for (slot, i) in s
            .iter_mut()
            .zip(self.placement.ranked_key(key, factor.min(2)))
        {
            *slot = i as u32;
        }
        s
    }

    fn targets(&self, key: u64, factor: usize) -> Vec<String> {
        self.placement
            .ranked_key(key, factor)
            .into_iter()
            .map(|i| self.placement.node_at(i).to_string())
            .collect()
    }

    fn notify(&mut self, to: String, key: u64, factor: usize) {
        let item = (key, factor as u8);
        match self.out.iter_mut().rev().find_map(|a| match a {
            Action::Notify { to: t, keys } if *t == to => Some(keys),
            _ => None,
        }) {
            Some(keys) => keys.push(item),
            None => self.out.push_back(Action::Notify {
                to,
                keys: vec![item],
            }),
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
        /// The full IDs of the chunks in play (the driver reads them from the store).
        known: HashMap<u64, ChunkId>,
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
            let mut known = HashMap::new();
            for c in 0..chunks {
                let id = ChunkId::of(&(c as u64).to_le_bytes());
                known.insert(id.key(), id);
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
                known,
            }
        }

        fn load(&mut self, i: usize, id: ChunkId) {
            self.known.insert(id.key(), id);
            self.planners[i].load(id, 2);
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
                            Action::Notify { to, keys } => {
                                self.sent[0] += 1;
                                let ids: Vec<(ChunkId, u8)> =
                                    keys.iter().map(|(k, f)| (self.known[k], *f)).collect();
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
                                keys,
                                reply,
                            } => {
                                self.sent[3] += 1;
                                let ids: Vec<ChunkId> =
                                    keys.iter().map(|k| self.known[k]).collect();
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
                            Action::HandOff { key, targets } => {
                                let proved = targets
                                    .iter()
                                    .all(|t| self.planners[Self::ix(t)].holds_key(key));
                                self.planners[i].handed_off(now, key, proved, &[]);
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
        let lost = f.known[&lost];
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
        pair.load(lo, id);
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
        let mut handing: Vec<u64> = Vec::new();
        while let Some(act) = a.poll_action(t) {
            if let Action::HandOff { key, .. } = act {
                handing.push(key);
            }
        }
        assert_eq!(handing.len(), 4);
        a.handed_off(t, handing[0], true, &[]);
        assert!(matches!(a.poll_action(t), Some(Action::HandOff { .. })));
        assert_eq!(a.poll_action(t), None);
        a.handed_off(t, handing[1], false, &[]);
        assert!(matches!(a.poll_action(t), Some(Action::HandOff { .. })));
        a.removed_key(handing[2]);
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
                key: other.key(),
                targets: targets.clone()
            })
        );
        b.handed_off(t, other.key(), false, &targets[1..]);
        assert_eq!(
            b.poll_action(t),
            Some(Action::Notify {
                to: targets[1].clone(),
                keys: vec![(other.key(), 2)]
            })
        );
    }

    /// Two IDs sharing their first 8 bytes (2^32 hashes of work for a hostile client)
    /// are one planner entry: placed alike, told and handed off by one key, which the
    /// driver resolves to both IDs. Memory stays one entry per key.
    #[test]
    fn ids_sharing_a_key_are_one_entry_placed_alike() {
        let p = Arc::new(Placement::new(&members(6), 0));
        let mut a = Planner::new("node0", Config::default(), Arc::clone(&p), Duration::ZERO);
        let x = (0..100u64)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .find(|c| !p.place(c, 2).contains(&"node0"))
            .unwrap();
        let mut y = x;
        y.0[31] ^= 1;
        assert_eq!(p.place(&x, 2), p.place(&y, 2));
        a.stored(Duration::ZERO, x, 2);
        a.stored(Duration::ZERO, y, 2);
        assert_eq!(a.held(), 1);
        assert!(a.holds(&y));
        let mut notices = Vec::new();
        let mut t = Duration::ZERO;
        loop {
            match a.poll_action(t) {
                Some(Action::Notify { keys, .. }) => notices.extend(keys),
                Some(Action::HandOff { key, .. }) => {
                    assert_eq!(key, x.key());
                    break;
                }
                Some(other) => panic!("{other:?}"),
                None => t = a.poll_timeout(),
            }
        }
        assert!(notices.iter().all(|(k, _)| *k == x.key()));
        assert!(a.memory_bytes() < 4096, "{}", a.memory_bytes());
    }
}
