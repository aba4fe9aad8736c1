//! `ddc-edge simulate`: the replication planner ([`crate::replication::planner`]) of every
//! node of a simulated fleet, run against each other in memory on a simulated clock: no
//! sockets, no disk, no sleeping. Messages arrive after a fixed latency; a fetch costs
//! its bytes from the replication budget of both ends (as in the agent: the fetcher pays
//! for what it pulls, the holder for what it serves), so transfers queue behind each
//! other on busy nodes.
//!
//! It answers what an operator sizing a fleet asks: control traffic per node in steady
//! state, chunks moved by a failure, a join, a drain or a burst of writes against the
//! ideal (the replicas whose placement changed), how long until every chunk is back to
//! its factor, and the planner's memory.

use crate::replication::placement::{Member, Placement};
use crate::replication::planner::{self, Action, Planner};
use crate::store::ChunkId;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub chunks: usize,
    pub factor: usize,
    pub chunk_size: u64,
    /// Replication budget of each node, bytes per second.
    pub budget: u64,
    pub anti_entropy: Duration,
    /// One-way latency of a message or a request.
    pub latency: Duration,
    /// How long steady state is watched.
    pub steady: Duration,
    pub kill: usize,
    pub join: usize,
    pub drain: usize,
    pub store: usize,
    /// Seed for the chunk IDs and node names.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 100,
            chunks: 100_000,
            factor: 2,
            chunk_size: 1 << 20,
            budget: 1 << 20,
            anti_entropy: Duration::from_secs(900),
            latency: Duration::from_millis(50),
            steady: Duration::from_secs(3600),
            kill: 1,
            join: 1,
            drain: 0,
            store: 0,
            seed: 1,
        }
    }
}

/// Per event: what moved and how long repair took.
#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    pub event: String,
    pub count: usize,
    pub moved_chunks: u64,
    pub ideal_moved_chunks: u64,
    /// Chunk bytes copied, and the ideal (`--chunk-size` each: every chunk is that big).
    pub moved_bytes: u64,
    pub ideal_moved_bytes: u64,
    /// From the event until every chunk is back to its factor (null: not within a day).
    pub repair_seconds: Option<f64>,
    /// The bytes to copy over the fleet's aggregate replication budget.
    pub ideal_repair_seconds: f64,
    /// The most bytes one node must take in, over its own budget: no schedule beats it.
    pub node_bound_repair_seconds: f64,
    /// Bytes of the messages of this event's time (each counted once), by kind:
    /// notices, anti-entropy (digests, buckets, listings: the periodic passes go on
    /// meanwhile), hand-off checks (HAS and PROVE).
    pub notice_bytes: u64,
    pub anti_entropy_bytes: u64,
    pub handoff_bytes: u64,
    pub lost_chunks: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub chunks: usize,
    pub factor: usize,
    pub anti_entropy_seconds: f64,
    pub steady_control_bytes_per_node_per_hour: f64,
    pub steady_control_messages_per_node_per_hour: f64,
    pub steady_control_bytes_max_node_per_hour: f64,
    /// Bytes of notices, bucket digests and listings in steady state: zero when the
    /// digests agree, as they should when nothing changes.
    pub steady_listing_bytes: u64,
    /// Summed over the events.
    pub moved_chunks: u64,
    pub ideal_moved_chunks: u64,
    /// The longest repair of the events.
    pub repair_seconds: Option<f64>,
    pub planner_peak_bytes_per_node: u64,
    pub planner_peak_bytes_per_held_chunk: f64,
    pub events: Vec<EventReport>,
    pub wall_seconds: f64,
}

/// A message between planners, as it travels.
#[derive(Debug, Clone)]
enum Msg {
    Notice(Vec<(ChunkId, u8)>),
    Digest(planner::Digest),
    Buckets(Box<[planner::Digest]>),
    Listing {
        buckets: Vec<u8>,
        ids: Vec<ChunkId>,
        reply: bool,
    },
}

/// Bytes of a message on the wire: an MQTT publish to the peer's inbox with a signed
/// envelope (topic, sender, signature: about 160 bytes) and the body.
fn wire_bytes(m: &Msg) -> u64 {
    const ENVELOPE: u64 = 160;
    ENVELOPE
        + match m {
            Msg::Notice(ids) => 33 * ids.len() as u64,
            Msg::Digest(_) => 40,
            Msg::Buckets(b) => 40 * b.len() as u64,
            Msg::Listing { buckets, ids, .. } => buckets.len() as u64 + 32 * ids.len() as u64,
        }
}

#[derive(Debug)]
enum Ev {
    Deliver { to: usize, from: usize, msg: Msg },
    Fetched { node: usize, id: ChunkId, ok: bool },
    Wake { node: usize },
}

struct Sim {
    o: Options,
    ids: Vec<String>,
    index: HashMap<String, usize>,
    members: Vec<Member>,
    planners: Vec<Option<Planner>>,
    now: Duration,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: HashMap<usize, Ev>,
    seq: u64,
    wake_at: Vec<Duration>,
    /// Per node, the budget slots (chunk-times) taken by transfers.
    busy: Vec<std::collections::BTreeSet<u64>>,
    control_bytes: Vec<u64>,
    control_msgs: Vec<u64>,
    fetched_ok: u64,
    /// (chunk, node) replicas that must appear before the fleet is back to its factor.
    missing: HashSet<(ChunkId, usize)>,
    last_repair: Duration,
    /// Bytes sent by kind: notices, digests, buckets, listings (hand-off checks apart).
    by_kind: [u64; 5],
}

impl Sim {
    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        let k = self.seq as usize;
        self.events.insert(k, ev);
        self.queue.push(Reverse((at, self.seq, k)));
    }

    fn alive(&self, n: usize) -> bool {
        self.planners[n].is_some()
    }

    /// Drains a planner's actions at the current time and schedules its next wake.
    fn drive(&mut self, n: usize) {
        loop {
            let now = self.now;
            let Some(p) = self.planners[n].as_mut() else {
                return;
            };
            let Some(a) = p.poll_action(now) else {
                break;
            };
            self.act(n, a);
        }
        let Some(p) = self.planners[n].as_ref() else {
            return;
        };
        let t = p.poll_timeout().max(self.now);
        if t < self.wake_at[n] || self.wake_at[n] <= self.now {
            self.wake_at[n] = t;
            self.push(t, Ev::Wake { node: n });
        }
    }

    fn send(&mut self, from: usize, to: &str, msg: Msg) {
        let Some(&to) = self.index.get(to) else {
            return;
        };
        let b = wire_bytes(&msg);
        let kind = match &msg {
            Msg::Notice(_) => 0,
            Msg::Digest(_) => 1,
            Msg::Buckets(_) => 2,
            Msg::Listing { .. } => 3,
        };
        self.by_kind[kind] += b;
        self.control_bytes[from] += b;
        self.control_bytes[to] += b;
        self.control_msgs[from] += 1;
        self.control_msgs[to] += 1;
        if self.alive(to) {
            let at = self.now + self.o.latency;
            self.push(at, Ev::Deliver { to, from, msg });
        }
    }

    fn act(&mut self, n: usize, a: Action) {
        match a {
            Action::Notify { to, keys } => {
                let ids = keys.into_iter().map(|(k, f)| (sim_id(k), f)).collect();
                self.send(n, &to, Msg::Notice(ids))
            }
            Action::Digest { to, digest } => self.send(n, &to, Msg::Digest(digest)),
            Action::Buckets { to, buckets } => self.send(n, &to, Msg::Buckets(buckets)),
            Action::Listing {
                to,
                buckets,
                keys,
                reply,
            } => self.send(
                n,
                &to,
                Msg::Listing {
                    buckets,
                    ids: keys.into_iter().map(sim_id).collect(),
                    reply,
                },
            ),
            Action::Fetch { id, from } => {
                let src = self.index.get(&from).copied();
                let ok =
                    src.is_some_and(|s| self.planners[s].as_ref().is_some_and(|p| p.holds(&id)));
                // Request and answer: a round trip, then the bytes at the budget of
                // whichever end is busier.
                let mut done = self.now + 2 * self.o.latency;
                if let (true, Some(s)) = (ok, src) {
                    // The chunk's time at the budget is a slot that both ends must have
                    // free: each node moves one chunk per slot, pulled or served.
                    let took = self.o.chunk_size as f64 / self.o.budget as f64;
                    let mut slot = (self.now.as_secs_f64() / took).ceil() as u64;
                    while self.busy[n].contains(&slot) || self.busy[s].contains(&slot) {
                        slot += 1;
                    }
                    self.busy[n].insert(slot);
                    self.busy[s].insert(slot);
                    done = Duration::from_secs_f64((slot + 1) as f64 * took) + 2 * self.o.latency;
                }
                self.push(done, Ev::Fetched { node: n, id, ok });
            }
            Action::HandOff { key, targets } => {
                // HAS then PROVE per target: two round trips of small messages.
                let unproven: Vec<String> = targets
                    .iter()
                    .filter(|t| {
                        !self
                            .index
                            .get(*t)
                            .and_then(|&i| self.planners[i].as_ref())
                            .is_some_and(|p| p.holds_key(key))
                    })
                    .cloned()
                    .collect();
                let proved = unproven.is_empty();
                for t in &targets {
                    self.by_kind[4] += 4 * 100;
                    if let Some(&i) = self.index.get(t) {
                        self.control_bytes[n] += 2 * 200;
                        self.control_bytes[i] += 2 * 200;
                    }
                }
                let now = self.now;
                if let Some(p) = self.planners[n].as_mut() {
                    p.handed_off(now, key, proved, &unproven);
                }
            }
        }
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((at, _, k))) = self.queue.pop() else {
            return false;
        };
        self.now = at;
        let ev = self.events.remove(&k).expect("queued event");
        let now = self.now;
        match ev {
            Ev::Wake { node } => {
                if let Some(p) = self.planners[node].as_mut() {
                    p.handle_timeout(now);
                }
                self.drive(node);
            }
            Ev::Deliver { to, from, msg } => {
                let from_id = self.ids[from].clone();
                let Some(p) = self.planners[to].as_mut() else {
                    return true;
                };
                match msg {
                    Msg::Notice(ids) => p.on_notice(now, &from_id, &ids),
                    Msg::Digest(d) => p.on_digest(&from_id, d),
                    Msg::Buckets(b) => p.on_buckets(&from_id, &b),
                    Msg::Listing {
                        buckets,
                        ids,
                        reply,
                    } => p.on_listing(now, &from_id, &buckets, &ids, reply),
                }
                self.drive(to);
            }
            Ev::Fetched { node, id, ok } => {
                let factor = self.o.factor;
                if let Some(p) = self.planners[node].as_mut() {
                    p.fetched(now, &id, ok);
                    if ok {
                        p.stored_replica(id, factor);
                        self.fetched_ok += 1;
                        if self.missing.remove(&(id, node)) {
                            self.last_repair = now;
                        }
                    }
                }
                self.drive(node);
            }
        }
        true
    }

    /// Runs until `until`.
    fn run_until(&mut self, until: Duration) {
        while self
            .queue
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= until)
        {
            self.step();
        }
        self.now = until;
    }

    /// Runs until every missing replica has arrived (or a simulated day has passed);
    /// returns when the last one did.
    fn run_until_repaired(&mut self) -> Option<Duration> {
        let limit = self.now + Duration::from_secs(86_400);
        while !self.missing.is_empty() && self.now < limit {
            if !self.step() {
                break;
            }
        }
        self.missing.is_empty().then_some(self.last_repair)
    }

    fn placement(&self) -> Arc<Placement> {
        Arc::new(Placement::new(&self.members, 0))
    }

    /// Tells every live planner the new membership (in parallel: each planner is
    /// independent) and drives them.
    fn set_members(&mut self) {
        let placement = self.placement();
        let now = self.now;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = self.planners.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for part in self.planners.chunks_mut(per) {
                let placement = Arc::clone(&placement);
                s.spawn(move || {
                    for p in part.iter_mut().flatten() {
                        p.set_placement(now, Arc::clone(&placement));
                    }
                });
            }
        });
        for n in 0..self.planners.len() {
            self.drive(n);
        }
    }

    /// The placed nodes (indices) of every chunk in `ids`, in parallel.
    fn place_all(&self, ids: &[ChunkId], factor: usize) -> Vec<Vec<usize>> {
        let placement = self.placement();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = ids.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .chunks(per)
                .map(|part| {
                    let placement = &placement;
                    let index = &self.index;
                    s.spawn(move || {
                        part.iter()
                            .map(|c| {
                                placement
                                    .place(c, factor)
                                    .into_iter()
                                    .map(|id| index[id])
                                    .collect::<Vec<usize>>()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("placement thread"))
                .collect()
        })
    }

    /// The most memory one planner uses, and the most per chunk it holds (over nodes
    /// that hold any).
    fn peak_memory(&self) -> (u64, f64) {
        let mut peak = (0u64, 0f64);
        for p in self.planners.iter().flatten() {
            let m = p.memory_bytes() as u64;
            peak.0 = peak.0.max(m);
            if p.held() > 0 {
                peak.1 = peak.1.max(m as f64 / p.held() as f64);
            }
        }
        peak
    }

    fn holders(&self, id: &ChunkId, placed: &[usize]) -> Vec<usize> {
        placed
            .iter()
            .copied()
            .filter(|&n| self.planners[n].as_ref().is_some_and(|p| p.holds(id)))
            .collect()
    }
}

fn node_name(seed: u64, i: usize) -> String {
    let d = ChunkId::of(format!("sim-node-{seed}-{i}").as_bytes());
    d.to_hex()[..24].to_string()
}

fn chunk_id(seed: u64, i: usize) -> ChunkId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8..].copy_from_slice(&(i as u64).to_le_bytes());
    sim_id(ChunkId::of(&b).key())
}

/// The simulated chunk with `key`: its other 24 bytes follow from the key, so the
/// simulator resolves the planner's keys to IDs without a store (as the agent's
/// driver does with its store).
fn sim_id(key: u64) -> ChunkId {
    let mut id = ChunkId::of(&key.to_be_bytes());
    id.0[..8].copy_from_slice(&key.to_be_bytes());
    id
}

pub fn run(o: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        o.nodes > o.factor + o.kill + o.drain,
        "--nodes must exceed --factor + --kill + --drain"
    );
    anyhow::ensure!(o.factor >= 1 && o.factor <= 2, "--factor must be 1 or 2");
    let started = std::time::Instant::now();
    let total = o.nodes + o.join;
    let ids: Vec<String> = (0..total).map(|i| node_name(o.seed, i)).collect();
    let index = ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i))
        .collect();
    let members: Vec<Member> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Member {
            id: id.clone(),
            online: i < o.nodes,
            free_bytes: None,
            draining: false,
            placement: crate::replication::placement::VERSION,
        })
        .collect();
    let cfg = planner::Config {
        factor: o.factor,
        anti_entropy: o.anti_entropy,
        ..planner::Config::default()
    };
    let mut sim = Sim {
        o: o.clone(),
        ids,
        index,
        members,
        planners: Vec::new(),
        now: Duration::ZERO,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        seq: 0,
        wake_at: vec![Duration::MAX; total],
        busy: vec![Default::default(); total],
        control_bytes: vec![0; total],
        control_msgs: vec![0; total],
        fetched_ok: 0,
        missing: HashSet::new(),
        last_repair: Duration::ZERO,
        by_kind: [0; 5],
    };
    let placement = sim.placement();
    sim.planners = (0..total)
        .map(|i| {
            (i < o.nodes)
                .then(|| Planner::new(&sim.ids[i], cfg.clone(), Arc::clone(&placement), sim.now))
        })
        .collect();

    // Steady state: every chunk on its placed nodes.
    let chunks: Vec<ChunkId> = (0..o.chunks).map(|i| chunk_id(o.seed, i)).collect();
    let mut placed = sim.place_all(&chunks, o.factor);
    {
        let mut per_node: Vec<Vec<ChunkId>> = vec![Vec::new(); total];
        for (c, p) in chunks.iter().zip(&placed) {
            for &n in p {
                per_node[n].push(*c);
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = total.div_ceil(threads).max(1);
        let factor = o.factor;
        std::thread::scope(|s| {
            for (part, held) in sim.planners.chunks_mut(per).zip(per_node.chunks(per)) {
                s.spawn(move || {
                    for (p, held) in part.iter_mut().zip(held) {
                        if let Some(p) = p {
                            for c in held {
                                p.load(*c, factor);
                            }
                        }
                    }
                });
            }
        });
    }
    for n in 0..total {
        sim.drive(n);
    }
    // One anti-entropy period to settle the first passes, then watch.
    sim.run_until(o.anti_entropy);
    let (b0, m0) = (
        sim.control_bytes.iter().sum::<u64>(),
        sim.control_msgs.iter().sum::<u64>(),
    );
    let before: Vec<u64> = sim.control_bytes.clone();
    let kinds_before = sim.by_kind;
    sim.run_until(o.anti_entropy + o.steady);
    let hours = o.steady.as_secs_f64() / 3600.0;
    let bytes = (sim.control_bytes.iter().sum::<u64>() - b0) as f64;
    let msgs = (sim.control_msgs.iter().sum::<u64>() - m0) as f64;
    let max_node = sim
        .control_bytes
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .max()
        .unwrap_or(0) as f64;
    let steady_listing_bytes = [0, 2, 3]
        .iter()
        .map(|&k| sim.by_kind[k] - kinds_before[k])
        .sum();
    let mut peak = sim.peak_memory();
    let mut events = Vec::new();

    // Each event on the fleet as the previous one left it; the ideal is the replicas
    // whose placement changed (and for a write, the copies it needs).
    let event = |sim: &mut Sim, name: &str, count: usize, placed: &mut Vec<Vec<usize>>| {
        let t0 = sim.now;
        let (k0, f0) = (sim.by_kind, sim.fetched_ok);
        let mut lost = 0u64;
        let mut new_chunks: Vec<(ChunkId, usize)> = Vec::new();
        match name {
            "kill" => {
                for n in 0..count {
                    sim.members[n].online = false;
                    if let Some(p) = sim.planners[n].take() {
                        lost += p.held() as u64;
                    }
                }
                sim.set_members();
            }
            "join" => {
                let placement = sim.placement();
                for n in o.nodes..o.nodes + count {
                    sim.members[n].online = true;
                    sim.planners[n] = Some(Planner::new(
                        &sim.ids[n],
                        cfg.clone(),
                        Arc::clone(&placement),
                        t0,
                    ));
                }
                sim.set_members();
            }
            "drain" => {
                for n in o.kill..o.kill + count {
                    sim.members[n].draining = true;
                }
                sim.set_members();
            }
            _ => {
                for i in 0..count {
                    let id = chunk_id(o.seed ^ 0x5eed, i);
                    // A client stores it on some live node.
                    let live: Vec<usize> =
                        (0..sim.planners.len()).filter(|&n| sim.alive(n)).collect();
                    let at =
                        live[(crate::replication::placement::key_v2(&id) as usize) % live.len()];
                    new_chunks.push((id, at));
                }
                for (id, at) in &new_chunks {
                    let now = sim.now;
                    sim.planners[*at]
                        .as_mut()
                        .unwrap()
                        .stored(now, *id, o.factor);
                    sim.drive(*at);
                }
            }
        }
        // What should now be where, and is not.
        let mut all: Vec<ChunkId> = chunks.clone();
        all.extend(new_chunks.iter().map(|(c, _)| *c));
        let now_placed = sim.place_all(&all, o.factor);
        sim.missing.clear();
        let mut ideal = 0u64;
        for (i, (c, p)) in all.iter().zip(&now_placed).enumerate() {
            let holders = sim.holders(c, p);
            // Held by someone: a placed node, its previous placed nodes, or (a write)
            // the node it was stored on.
            let anyone = !holders.is_empty()
                || i >= chunks.len()
                || placed
                    .get(i)
                    .is_some_and(|before| !sim.holders(c, before).is_empty());
            if !anyone {
                continue; // every copy was lost
            }
            for &n in p {
                if !holders.contains(&n) {
                    sim.missing.insert((*c, n));
                    ideal += 1;
                }
            }
        }
        let mut per_node: HashMap<usize, u64> = HashMap::new();
        for (_, n) in &sim.missing {
            *per_node.entry(*n).or_default() += 1;
        }
        let most = per_node.values().copied().max().unwrap_or(0);
        let repair = sim.run_until_repaired().map(|t| (t - t0).as_secs_f64());
        // Let hand-offs finish before the next event.
        let settle = sim.now + 2 * o.anti_entropy;
        sim.run_until(settle);
        *placed = now_placed;
        let live = sim.planners.iter().flatten().count() as f64;
        let bytes_to_copy = ideal as f64 * o.chunk_size as f64;
        EventReport {
            event: name.to_string(),
            count,
            moved_chunks: sim.fetched_ok - f0,
            ideal_moved_chunks: ideal,
            moved_bytes: (sim.fetched_ok - f0) * o.chunk_size,
            ideal_moved_bytes: ideal * o.chunk_size,
            repair_seconds: repair,
            ideal_repair_seconds: bytes_to_copy / (live * o.budget as f64),
            node_bound_repair_seconds: most as f64 * o.chunk_size as f64 / o.budget as f64,
            notice_bytes: sim.by_kind[0] - k0[0],
            anti_entropy_bytes: (1..4).map(|k| sim.by_kind[k] - k0[k]).sum(),
            handoff_bytes: sim.by_kind[4] - k0[4],
            lost_chunks: lost,
        }
    };
    for (name, count) in [
        ("kill", o.kill),
        ("join", o.join),
        ("drain", o.drain),
        ("store", o.store),
    ] {
        if count > 0 {
            let r = event(&mut sim, name, count, &mut placed);
            events.push(r);
            let p = sim.peak_memory();
            peak = (peak.0.max(p.0), peak.1.max(p.1));
        }
    }
    Ok(Report {
        nodes: o.nodes,
        chunks: o.chunks,
        factor: o.factor,
        anti_entropy_seconds: o.anti_entropy.as_secs_f64(),
        steady_control_bytes_per_node_per_hour: bytes / o.nodes as f64 / hours,
        steady_control_messages_per_node_per_hour: msgs / o.nodes as f64 / hours,
        steady_control_bytes_max_node_per_hour: max_node / hours,
        steady_listing_bytes,
        moved_chunks: events.iter().map(|e| e.moved_chunks).sum(),
        ideal_moved_chunks: events.iter().map(|e| e.ideal_moved_chunks).sum(),
        repair_seconds: events
            .iter()
            .filter_map(|e| e.repair_seconds)
            .reduce(f64::max),
        planner_peak_bytes_per_node: peak.0,
        planner_peak_bytes_per_held_chunk: peak.1,
        events,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The report for people.
pub fn print(r: &Report) {
    println!(
        "{} nodes, {} chunks, factor {}, anti-entropy every {} s ({:.1} s of wall time)",
        r.nodes, r.chunks, r.factor, r.anti_entropy_seconds, r.wall_seconds
    );
    println!(
        "steady state: {:.0} control bytes and {:.1} messages per node per hour (busiest node {:.0} bytes)",
        r.steady_control_bytes_per_node_per_hour,
        r.steady_control_messages_per_node_per_hour,
        r.steady_control_bytes_max_node_per_hour
    );
    for e in &r.events {
        println!(
            "{} {}: moved {} chunks ({} bytes), ideal {} ({:.3} x); back to factor in {} (ideal {:.1} s, one node's intake alone {:.1} s); bytes of notices {}, anti-entropy {}, hand-off checks {}; {} replicas lost with the nodes",
            e.event,
            e.count,
            e.moved_chunks,
            e.moved_bytes,
            e.ideal_moved_chunks,
            e.moved_chunks as f64 / e.ideal_moved_chunks.max(1) as f64,
            e.repair_seconds
                .map_or("never (within a day)".to_string(), |s| format!("{s:.1} s")),
            e.ideal_repair_seconds,
            e.node_bound_repair_seconds,
            e.notice_bytes,
            e.anti_entropy_bytes,
            e.handoff_bytes,
            e.lost_chunks
        );
    }
    println!(
        "planner memory: peak {} bytes on one node, {:.1} bytes per chunk it holds",
        r.planner_peak_bytes_per_node, r.planner_peak_bytes_per_held_chunk
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_moves_exactly_what_placement_changed_and_repairs() {
        let o = Options {
            nodes: 12,
            chunks: 3000,
            kill: 1,
            join: 1,
            drain: 1,
            store: 100,
            steady: Duration::from_secs(3600),
            ..Options::default()
        };
        let r = run(&o).unwrap();
        assert_eq!(r.steady_listing_bytes, 0, "an idle fleet lists nothing");
        assert!(r.steady_control_bytes_per_node_per_hour > 0.0);
        assert_eq!(r.events.len(), 4);
        for e in &r.events {
            assert!(e.ideal_moved_chunks > 0, "{e:?}");
            assert_eq!(e.moved_chunks, e.ideal_moved_chunks, "{e:?}");
            let took = e.repair_seconds.expect("repaired");
            assert!(took >= e.node_bound_repair_seconds, "{e:?}");
        }
        // A kill loses the dead node's copies, nothing else.
        assert_eq!(r.events[0].lost_chunks, r.events[0].ideal_moved_chunks);
    }

    #[test]
    fn options_that_cannot_place_are_refused() {
        let o = Options {
            nodes: 3,
            kill: 2,
            ..Options::default()
        };
        assert!(run(&o).is_err());
    }
}
