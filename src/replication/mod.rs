//! Replication: every chunk lives on `replication.factor` nodes, chosen by rendezvous
//! hashing over the online nodes with room (docs/replication.md).
//!
//! **Push the notice, pull the data.** The [`planner`] (pure) decides; this module's
//! [`Replicator`] is its driver: it tells the planner what the store, the membership and
//! the peers say, and carries out what it returns. Notices, digests and listings travel
//! as signed `repl` messages on the nodes' signal topics ([`wire`], rate-limited per
//! sender by [`inbox`]); chunks travel over the data plane (GET), and a hand-off deletes
//! a local copy only once every placed node proved it holds one (HAS, then PROVE). A
//! paused or hot node simply stops fetching (its budget is zero) and answers other nodes'
//! replication GETs with `busy`, while clients are still served.
//!
//! Pure parts: [`placement`], [`membership`], [`planner`], [`wire`], [`inbox`]. Drivers:
//! the [`Replicator`] and the persistent [`queue`] of chunks waiting to be fetched.

pub mod factors;
pub mod inbox;
pub mod membership;
pub mod placement;
pub mod planner;
pub mod queue;
pub mod wire;

use crate::bandwidth::Limiter;
use crate::dataplane::RtcSettings;
use crate::dataplane::client::{ClientError, Conn};
use crate::dataplane::signal::{Signal, node_topic};
use crate::protocol::Status;
use crate::signaling::{Envelope, Kind};
use crate::store::{ChunkId, Store, StoreEvent};
use membership::Membership;
use placement::Placement;
use planner::{Action, Planner};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tracing::{debug, info, warn};

/// Figures for the health message.
#[derive(Debug, Default)]
pub struct Stats {
    pub pulled_chunks: AtomicU64,
    pub pulled_bytes: AtomicU64,
    /// Bytes this node served to other nodes' replication.
    pub served_bytes: AtomicU64,
    pub repaired: AtomicU64,
    pub handed_off: AtomicU64,
    /// HAS claims a proof then refuted: a lying or broken member.
    pub failed_proofs: AtomicU64,
    /// Replication messages (notices, digests, listings) sent and taken in.
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    /// Messages refused: from a non-member, over the sender's rate, malformed, or the
    /// inbox or outbox full.
    pub messages_dropped: AtomicU64,
    pub notices_sent: AtomicU64,
    /// Chunk listings (anti-entropy found a difference) sent and received.
    pub listings_sent: AtomicU64,
    pub listings_received: AtomicU64,
}

/// Replication messages waiting to be published, at most (the rest are dropped and
/// counted: anti-entropy finds what they said).
const OUTBOX: usize = 1024;
/// Incoming replication messages waiting for the planner, at most.
const INBOX: usize = 256;
/// Hand-offs (HAS + PROVE to each placed node, then the delete) in flight at once.
const HANDOFFS: usize = 4;

/// A message for another node, as the planner asked for it: notices and listings name
/// chunks by key, resolved to IDs from the store just before sending.
enum Outgoing {
    Ready(wire::Message),
    Notice(Vec<(u64, u8)>),
    Listing {
        buckets: Vec<u8>,
        keys: Vec<u64>,
        reply: bool,
    },
}

pub struct Replicator {
    my_id: String,
    target_factor: usize,
    factors: Arc<factors::Factors>,
    store: Arc<Store>,
    signal: Arc<Signal>,
    settings: RtcSettings,
    pub membership: Arc<Mutex<Membership>>,
    changed: Notify,
    budget: Arc<Limiter>,
    pub stats: Arc<Stats>,
    planner: Mutex<Planner>,
    /// The planner's clock starts here.
    epoch: Instant,
    /// Something finished (a fetch, a hand-off): poll the planner again.
    wake: Notify,
    /// Chunks wanted here, persisted so a restart resumes its fetches at once.
    queue: Mutex<queue::Queue>,
    handoffs: Semaphore,
    outbox: mpsc::Sender<(String, Outgoing)>,
    outbox_rx: Mutex<Option<mpsc::Receiver<(String, Outgoing)>>>,
    inbox_rx: Mutex<Option<mpsc::Receiver<Envelope>>>,
    limits: Mutex<inbox::Limits>,
    conns: tokio::sync::Mutex<HashMap<String, Arc<Conn>>>,
    /// Peers whose last connect failed: (failures in a row, no new try before).
    unreachable: Mutex<HashMap<String, (u32, Instant)>>,
    last_online: Mutex<HashSet<String>>,
}

/// How long to leave a peer alone after `failures` failed connects in a row: 30 s,
/// doubling, at most 15 min. Bounds what silent or fake members cost.
fn peer_backoff(failures: u32) -> Duration {
    let doublings = failures.clamp(1, 6) - 1;
    Duration::from_secs(30 << doublings).min(Duration::from_secs(900))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replicator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &crate::config::Config,
        my_id: &str,
        store: Arc<Store>,
        signal: Arc<Signal>,
        membership: Arc<Mutex<Membership>>,
        budget: Arc<Limiter>,
        stats: Arc<Stats>,
        factors: Arc<factors::Factors>,
    ) -> anyhow::Result<Arc<Replicator>> {
        let queue = queue::Queue::open(
            &cfg.storage.data_dir.join("replication"),
            cfg.replication.queue_max as usize,
        )?;
        if !queue.is_empty() {
            info!(queued = queue.len(), "replication queue restored");
        }
        let r = &cfg.replication;
        let planner_cfg = planner::Config {
            factor: r.factor as usize,
            anti_entropy: r.anti_entropy_interval.0,
            max_wanted: r.queue_max as usize,
            max_factor: r.max_factor as usize,
            ..planner::Config::default()
        };
        let epoch = Instant::now();
        let empty = Arc::new(Placement::new(&[], 0));
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let inbox_rx = signal.replication_inbox(INBOX);
        Ok(Arc::new(Replicator {
            my_id: my_id.to_string(),
            target_factor: r.factor as usize,
            factors,
            store,
            signal,
            settings: RtcSettings::from_config(cfg),
            membership,
            changed: Notify::new(),
            budget,
            stats,
            planner: Mutex::new(Planner::new(my_id, planner_cfg, empty, Duration::ZERO)),
            epoch,
            wake: Notify::new(),
            queue: Mutex::new(queue),
            handoffs: Semaphore::new(HANDOFFS),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            inbox_rx: Mutex::new(Some(inbox_rx)),
            limits: Mutex::new(inbox::Limits::default()),
            conns: tokio::sync::Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            last_online: Mutex::new(Default::default()),
        }))
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Tells the replicator the membership may have changed (a node came or went).
    pub fn membership_changed(&self) {
        // A peer that (re)appears online gets a fresh chance to connect at once.
        {
            let online: HashSet<String> = self
                .members()
                .into_iter()
                .filter(|m| m.online)
                .map(|m| m.id)
                .collect();
            let mut last = lock(&self.last_online);
            let mut u = lock(&self.unreachable);
            for p in online.difference(&last) {
                u.remove(p);
            }
            *last = online;
        }
        // A fetch waiting on a node that just went offline would hold its slot until
        // the request timed out: fail its requests now.
        if let Ok(mut conns) = self.conns.try_lock() {
            let members = self.members();
            conns.retain(|peer, c| {
                let online = members.iter().any(|m| m.online && m.id == *peer);
                if !online {
                    c.abandon();
                }
                online
            });
        }
        self.changed.notify_one();
    }

    pub fn health(&self) -> crate::mqtt::health::ReplicationStats {
        let s = &self.stats;
        let (queued, held, passes, planner_bytes) = {
            let p = lock(&self.planner);
            (
                p.wanted(),
                p.held(),
                p.anti_entropy_passes(),
                p.memory_bytes(),
            )
        };
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::mqtt::health::ReplicationStats {
            target_factor: self.target_factor as u64,
            files_with_more_copies: self.factors.len() as u64,
            queued: queued as u64,
            held: held as u64,
            pulled_chunks: n(&s.pulled_chunks),
            pulled_bytes: n(&s.pulled_bytes),
            served_bytes: n(&s.served_bytes),
            repaired: n(&s.repaired),
            handed_off: n(&s.handed_off),
            failed_proofs: n(&s.failed_proofs),
            budget_bps: self.budget.current_rate(),
            anti_entropy_passes: passes,
            messages_sent: n(&s.messages_sent),
            messages_received: n(&s.messages_received),
            messages_dropped: n(&s.messages_dropped) + self.signal.replication_overflow(),
            notices_sent: n(&s.notices_sent),
            listings_sent: n(&s.listings_sent),
            listings_received: n(&s.listings_received),
            planner_bytes: planner_bytes as u64,
        }
    }

    /// Runs the planner: feeds it the store's events, the membership and the peers'
    /// messages, and carries out its actions, until the agent stops.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.store.subscribe();
        if let Some(rx) = lock(&self.outbox_rx).take() {
            tokio::spawn(Arc::clone(&self).publisher(rx));
        }
        let Some(mut inbox) = lock(&self.inbox_rx).take() else {
            return;
        };
        self.load_inventory().await;
        // Place once the retained membership is in (no change for a second, at most
        // ten): placing against a half-known fleet would make this node tell the nodes
        // that arrive later about every chunk it holds.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => break,
            }
        }
        self.apply_membership();
        self.restore_queue();
        loop {
            self.dispatch();
            let deadline = lock(&self.planner)
                .poll_timeout()
                .min(self.now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until((self.epoch + deadline).into()) => {
                    let now = self.now();
                    lock(&self.planner).handle_timeout(now);
                }
                _ = self.wake.notified() => {}
                _ = self.changed.notified() => {
                    // Let a burst of membership messages settle.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    self.apply_membership();
                }
                ev = events.recv() => self.on_store_event(ev).await,
                Some(e) = inbox.recv() => self.on_message(e),
            }
        }
    }

    fn members(&self) -> Vec<placement::Member> {
        lock(&self.membership).members()
    }

    fn min_free(&self) -> u64 {
        self.store.config().max_chunk
    }

    /// A new membership view for the planner, if it places anything differently.
    fn apply_membership(&self) {
        let view = Placement::new(&self.members(), self.min_free());
        let now = self.now();
        let mut p = lock(&self.planner);
        if !p.placement().same_view(&view) {
            debug!(eligible = view.eligible(), "membership view changed");
            p.set_placement(now, Arc::new(view));
        }
    }

    /// Every chunk ID in the store (read on a blocking thread).
    async fn inventory(&self) -> Vec<ChunkId> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            let _ = store.for_each(|id, _| {
                v.push(id);
                true
            });
            v
        })
        .await
        .unwrap_or_default()
    }

    /// The store's chunks, told to the planner at start.
    async fn load_inventory(&self) {
        let ids = self.inventory().await;
        let mut p = lock(&self.planner);
        for id in &ids {
            p.load(*id, self.factors.get(id));
        }
        info!(chunks = ids.len(), "replication inventory loaded");
    }

    /// The fetches a previous run had not finished: wanted again from the same source.
    fn restore_queue(&self) {
        let now = self.now();
        let mut q = lock(&self.queue);
        let items: Vec<queue::Item> = q.items().cloned().collect();
        let mut p = lock(&self.planner);
        for i in items {
            let f = self.factors.get(&i.id).min(u8::MAX as usize) as u8;
            p.on_notice(now, &i.from, &[(i.id, f)]);
            if !p.wants(&i.id) {
                let _ = q.done(&i.id);
            }
        }
    }

    /// The store missed us some events: compare its inventory with the planner's.
    async fn resync(&self) {
        let ids = self.inventory().await;
        let keys: HashSet<u64> = ids.iter().map(ChunkId::key).collect();
        let now = self.now();
        let mut p = lock(&self.planner);
        let gone: Vec<u64> = p
            .held_keys()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for key in &gone {
            p.removed_key(*key);
        }
        let new: Vec<ChunkId> = ids.into_iter().filter(|i| !p.holds(i)).collect();
        for id in &new {
            // Ours or a replica: telling its placed nodes again costs a notice at most.
            p.stored(now, *id, self.factors.get(id));
        }
        info!(
            gone = gone.len(),
            new = new.len(),
            "replication inventory re-read after missed store events"
        );
    }

    async fn on_store_event(&self, ev: Result<StoreEvent, broadcast::error::RecvError>) {
        let now = self.now();
        match ev {
            Ok(StoreEvent::Stored {
                id,
                replica,
                manifest,
            }) => {
                {
                    let mut p = lock(&self.planner);
                    if replica {
                        p.stored_replica(id, self.factors.get(&id));
                    } else {
                        p.stored(now, id, self.factors.get(&id));
                    }
                }
                if manifest {
                    self.raise_factors(id, replica).await;
                }
            }
            Ok(StoreEvent::Removed { id }) => {
                // The planner keeps one entry per key: keep it while another chunk
                // with the same first 8 bytes remains.
                let key = id.key();
                if self.ids_with_keys(vec![key]).await.is_empty() {
                    lock(&self.planner).removed_key(key);
                }
            }
            Ok(StoreEvent::ChunkCorrupt { id, .. }) => {
                let mut p = lock(&self.planner);
                p.corrupt(now, &id, self.factors.get(&id));
                if p.wants(&id) {
                    info!(%id, "re-fetching a corrupt chunk from its other placed nodes");
                    self.stats.repaired.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// A manifest asking for more copies than the default arrived: record its factor
    /// and place its chunks held here with it (an upload's are told to the new targets).
    async fn raise_factors(&self, manifest: ChunkId, replica: bool) {
        let store = Arc::clone(&self.store);
        let Ok(Ok(data)) = tokio::task::spawn_blocking(move || store.get(&manifest)).await else {
            return;
        };
        let Ok(m) = crate::store::Manifest::decode(&data) else {
            return;
        };
        if m.replicas.is_none() {
            return;
        }
        let _ = self.factors.record_manifest(manifest, &data);
        let now = self.now();
        let mut p = lock(&self.planner);
        for id in m.chunks.iter().chain([&manifest]) {
            let f = self.factors.get(id);
            if f > self.target_factor && p.holds(id) {
                if replica {
                    p.stored_replica(*id, f);
                } else {
                    p.stored(now, *id, f);
                }
            }
        }
    }

    /// A replication message from another node (its signature already checked).
    fn on_message(&self, e: Envelope) {
        let now = self.now();
        let drop = |why: &str| {
            self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
            debug!(from = %e.from, reason = why, "replication message dropped");
        };
        if !lock(&self.membership).is_member(&e.from) {
            return drop("not a member of this fleet");
        }
        if !lock(&self.limits).allow(&e.from, now) {
            return drop("over the sender's rate limit");
        }
        let msg = match wire::decode(&e.body) {
            Ok(m) => m,
            Err(why) => {
                self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                warn!(from = %e.from, reason = %crate::logging::printable(&why), "malformed replication message dropped");
                return;
            }
        };
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        let from = e.from.as_str();
        let mut p = lock(&self.planner);
        match msg {
            wire::Message::Notice(ids) => {
                for (id, f) in &ids {
                    let _ = self.factors.record(*id, *f);
                }
                p.on_notice(now, from, &ids);
                let mut q = lock(&self.queue);
                for (id, _) in &ids {
                    if p.wants(id) {
                        let _ = q.push(*id, from, 0);
                    }
                }
            }
            wire::Message::Digest(d) => p.on_digest(from, d),
            wire::Message::Buckets(b) => p.on_buckets(from, &b),
            wire::Message::Listing {
                reply,
                buckets,
                ids,
            } => {
                self.stats.listings_received.fetch_add(1, Ordering::Relaxed);
                p.on_listing(now, from, &buckets, &ids, reply);
                let mut q = lock(&self.queue);
                for id in &ids {
                    if p.wants(id) {
                        let _ = q.push(*id, from, 0);
                    }
                }
            }
        }
    }

    /// Carries out everything the planner wants done now.
    fn dispatch(self: &Arc<Self>) {
        loop {
            let now = self.now();
            let Some(a) = lock(&self.planner).poll_action(now) else {
                return;
            };
            let (to, out) = match a {
                Action::Fetch { id, from } => {
                    tokio::spawn(Arc::clone(self).fetch(id, from));
                    continue;
                }
                Action::HandOff { key, targets } => {
                    tokio::spawn(Arc::clone(self).hand_off(key, targets));
                    continue;
                }
                Action::Notify { to, keys } => (to, Outgoing::Notice(keys)),
                Action::Listing {
                    to,
                    buckets,
                    keys,
                    reply,
                } => (
                    to,
                    Outgoing::Listing {
                        buckets,
                        keys,
                        reply,
                    },
                ),
                Action::Digest { to, digest } => {
                    (to, Outgoing::Ready(wire::Message::Digest(digest)))
                }
                Action::Buckets { to, buckets } => {
                    (to, Outgoing::Ready(wire::Message::Buckets(buckets)))
                }
            };
            if self.outbox.try_send((to, out)).is_err() {
                self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                debug!("replication outbox full; message dropped (anti-entropy finds it)");
            }
        }
    }

    /// Publishes replication messages, one at a time, reading the IDs of the chunks
    /// they name from the store first.
    async fn publisher(self: Arc<Self>, mut rx: mpsc::Receiver<(String, Outgoing)>) {
        while let Some((to, out)) = rx.recv().await {
            let (msg, counter) = match out {
                Outgoing::Ready(m) => (m, None),
                Outgoing::Notice(keys) => {
                    let factors: HashMap<u64, u8> = keys.iter().copied().collect();
                    let ids = self
                        .ids_with_keys(keys.into_iter().map(|(k, _)| k).collect())
                        .await;
                    let ids: Vec<(ChunkId, u8)> =
                        ids.into_iter().map(|id| (id, factors[&id.key()])).collect();
                    if ids.is_empty() {
                        continue;
                    }
                    (wire::Message::Notice(ids), Some(&self.stats.notices_sent))
                }
                Outgoing::Listing {
                    buckets,
                    keys,
                    reply,
                } => {
                    let ids = self.ids_with_keys(keys).await;
                    let m = wire::Message::Listing {
                        reply,
                        buckets,
                        ids,
                    };
                    (m, Some(&self.stats.listings_sent))
                }
            };
            let topic = node_topic(&self.signal.prefix, &to);
            for body in wire::encode(&msg) {
                self.signal
                    .send(&to, &topic, Kind::Repl, "repl", body)
                    .await;
                self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = counter {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The stored chunks with these keys (empty if the store cannot be read: the
    /// message is then not sent, and anti-entropy covers it).
    async fn ids_with_keys(&self, keys: Vec<u64>) -> Vec<ChunkId> {
        let store = Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.ids_with_keys(&keys)).await {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                warn!(error = %e, "reading chunk IDs for a replication message failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// GETs one chunk within the replication budget and stores it as a replica.
    async fn fetch(self: Arc<Self>, id: ChunkId, from: String) {
        // Wait while replication is paused; the bytes themselves are paid for as they
        // arrive (see Conn::connect_paced), so a transfer in flight waits too.
        self.budget.acquire(0).await;
        let outcome = match self.conn(&from).await {
            Ok(conn) => conn.get(&id).await,
            Err(e) => Err(e),
        };
        let ok = match outcome {
            Ok(data) => {
                let n = data.len() as u64;
                let store = Arc::clone(&self.store);
                match tokio::task::spawn_blocking(move || store.put_replica(&data, id)).await {
                    Ok(Ok(_)) => {
                        self.stats.pulled_chunks.fetch_add(1, Ordering::Relaxed);
                        self.stats.pulled_bytes.fetch_add(n, Ordering::Relaxed);
                        lock(&self.planner).stored_replica(id, self.factors.get(&id));
                        true
                    }
                    other => {
                        warn!(%id, result = ?other.map(|r| r.map(|_| ())), "storing a replicated chunk failed");
                        false
                    }
                }
            }
            Err(ClientError::Status(Status::Busy, _)) => {
                let now = self.now();
                lock(&self.planner).busy(now, &id);
                self.wake.notify_one();
                return;
            }
            Err(e) => {
                debug!(%id, %from, error = %e, "replication fetch failed");
                if !matches!(e, ClientError::Status(..)) {
                    self.drop_conn(&from).await;
                }
                false
            }
        };
        if ok {
            let _ = lock(&self.queue).done(&id);
        }
        let now = self.now();
        lock(&self.planner).fetched(now, &id, ok);
        self.wake.notify_one();
    }

    /// Hands off the chunk(s) with `key` (one, unless two IDs share 8 bytes): each is
    /// deleted only if its placed nodes prove their copies ([`Self::hand_off_one`]).
    async fn hand_off(self: Arc<Self>, key: u64, targets: Vec<String>) {
        let Ok(_slot) = self.handoffs.acquire().await else {
            return;
        };
        let ids = self.ids_with_keys(vec![key]).await;
        let mut deleted = !ids.is_empty();
        let mut unproven: Vec<String> = Vec::new();
        for id in ids {
            let (gone, missing) = self.hand_off_one(id, &targets).await;
            deleted &= gone;
            for t in missing {
                if !unproven.contains(&t) {
                    unproven.push(t);
                }
            }
        }
        let now = self.now();
        lock(&self.planner).handed_off(now, key, deleted, &unproven);
        self.wake.notify_one();
    }

    /// Deletes the local copy of `id` if every one of `targets` (its placed nodes)
    /// proves it holds a copy: HAS first (to skip the hopeless), then PROVE, checked
    /// against our own copy. A holder that claims a chunk and fails the proof is logged:
    /// it is lying or broken. Returns whether it was deleted, and the targets that
    /// proved nothing.
    async fn hand_off_one(&self, id: ChunkId, targets: &[String]) -> (bool, Vec<String>) {
        let store = Arc::clone(&self.store);
        let data = match tokio::task::spawn_blocking(move || store.get(&id)).await {
            Ok(Ok(d)) => d,
            // Gone or corrupt: the store's event says which.
            _ => return (false, Vec::new()),
        };
        let mut proved: Vec<&str> = Vec::new();
        let mut unproven: Vec<String> = Vec::new();
        for peer in targets {
            let held = match self.conn(peer).await {
                Ok(conn) => match conn.has(&[id]).await {
                    Ok(b) if b == [true] => match conn.proves(&id, &data).await {
                        Ok(true) => true,
                        Ok(false) => {
                            self.stats.failed_proofs.fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, chunk = %id, "a node claimed a chunk (HAS) but failed to prove it: keeping our copy");
                            false
                        }
                        Err(e) => {
                            debug!(%peer, chunk = %id, error = %e, "proof request failed");
                            false
                        }
                    },
                    _ => false,
                },
                Err(_) => false,
            };
            if held {
                proved.push(peer);
            } else {
                unproven.push(peer.clone());
            }
        }
        let placed: Vec<&str> = targets.iter().map(String::as_str).collect();
        let factor = self.factors.get(&id);
        let mut deleted = false;
        if crate::store::retention::redundant(&self.my_id, &placed, factor, |p| proved.contains(&p))
        {
            let store = Arc::clone(&self.store);
            if let Ok(Ok(_)) = tokio::task::spawn_blocking(move || store.delete(&id)).await {
                deleted = true;
                self.stats.handed_off.fetch_add(1, Ordering::Relaxed);
                debug!(%id, "handed off: every placed node proved its copy");
            }
        }
        (deleted, unproven)
    }

    /// A connection to `peer`: the open one, or a new one unless the peer failed to
    /// connect recently (then it is skipped at once until its backoff ends, so members
    /// that never answer cannot stall replication).
    async fn conn(&self, peer: &str) -> Result<Arc<Conn>, ClientError> {
        {
            let mut conns = self.conns.lock().await;
            if let Some(c) = conns.get(peer) {
                if !c.is_closed() {
                    return Ok(Arc::clone(c));
                }
                conns.remove(peer);
            }
        }
        let now = Instant::now();
        if let Some(until) = self.unreachable_until(peer)
            && until > now
        {
            return Err(ClientError::Connect(format!(
                "unreachable at the last try; next try in {} s",
                (until - now).as_secs()
            )));
        }
        match Conn::connect_paced(
            &self.signal,
            &self.settings,
            peer,
            Some(Arc::clone(&self.budget)),
        )
        .await
        {
            Ok(c) => {
                let c = Arc::new(c);
                self.unreachable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(peer);
                self.conns
                    .lock()
                    .await
                    .insert(peer.to_string(), Arc::clone(&c));
                Ok(c)
            }
            Err(e) => {
                let mut u = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
                let failures = u.get(peer).map_or(0, |(n, _)| *n) + 1;
                let wait = peer_backoff(failures);
                debug!(%peer, failures, wait_s = wait.as_secs(), error = %e, "peer unreachable; backing off");
                u.insert(peer.to_string(), (failures, Instant::now() + wait));
                Err(e)
            }
        }
    }

    fn unreachable_until(&self, peer: &str) -> Option<Instant> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .map(|(_, t)| *t)
    }

    async fn drop_conn(&self, peer: &str) {
        self.conns.lock().await.remove(peer);
    }
}
