//! Replication: every chunk lives on `replication.factor` nodes, chosen by rendezvous
//! hashing over the online nodes with room (docs/replication.md).
//!
//! **Pull by the target.** Each node sweeps its peers' listings (LIST over the data
//! plane), and fetches (GET) the chunks placed on it that it lacks; a node holding a
//! chunk that is not placed on it deletes its copy once every placed node confirms (HAS)
//! that it has one ("handoff"), so a file ends with exactly `factor` copies. Pulling keeps
//! each node in charge of its own disk and budget: a hot or low-battery node simply stops
//! fetching, and answers other nodes' replication GETs with `busy`, while clients are
//! still served.
//!
//! Pure parts: [`placement`], [`membership`]. Drivers: this module's [`Replicator`] (sweeps
//! and the fetch worker) and the persistent [`queue`].

pub mod factors;
pub mod membership;
pub mod placement;
pub mod planner;
pub mod queue;

use crate::bandwidth::Limiter;
use crate::dataplane::RtcSettings;
use crate::dataplane::client::{ClientError, Conn};
use crate::dataplane::signal::Signal;
use crate::protocol::Status;
use crate::store::{ChunkId, Store, StoreEvent};
use membership::Membership;
use placement::Placement;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
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
    pub sweeps: AtomicU64,
}

pub struct Replicator {
    my_id: String,
    factor: usize,
    factors: Arc<factors::Factors>,
    sweep_interval: Duration,
    store: Arc<Store>,
    signal: Arc<Signal>,
    settings: RtcSettings,
    pub membership: Arc<Mutex<Membership>>,
    changed: Notify,
    budget: Arc<Limiter>,
    queue: Mutex<queue::Queue>,
    work: Notify,
    pub stats: Arc<Stats>,
    conns: tokio::sync::Mutex<HashMap<String, Arc<Conn>>>,
    /// Peers whose last connect failed: (failures in a row, no new try before).
    unreachable: Mutex<HashMap<String, (u32, Instant)>>,
    last_online: Mutex<std::collections::HashSet<String>>,
    last_sweep: Mutex<Option<Instant>>,
}

/// How long to leave a peer alone after `failures` failed connects in a row: 30 s,
/// doubling, at most 15 min. Bounds what silent or fake members cost a sweep.
fn peer_backoff(failures: u32) -> Duration {
    let doublings = failures.clamp(1, 6) - 1;
    Duration::from_secs(30 << doublings).min(Duration::from_secs(900))
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
        Ok(Arc::new(Replicator {
            my_id: my_id.to_string(),
            factor: cfg.replication.factor as usize,
            factors,
            sweep_interval: cfg.replication.sweep_interval.0,
            store,
            signal,
            settings: RtcSettings::from_config(cfg),
            membership,
            changed: Notify::new(),
            budget,
            queue: Mutex::new(queue),
            work: Notify::new(),
            stats,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            unreachable: Mutex::new(HashMap::new()),
            last_online: Mutex::new(Default::default()),
            last_sweep: Mutex::new(None),
        }))
    }

    /// Tells the replicator the membership may have changed (a node came or went).
    pub fn membership_changed(&self) {
        // A peer that (re)appears online gets a fresh chance to connect at once.
        {
            let online: std::collections::HashSet<String> = self
                .members()
                .into_iter()
                .filter(|m| m.online)
                .map(|m| m.id)
                .collect();
            let mut last = self.last_online.lock().unwrap_or_else(|p| p.into_inner());
            let mut u = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
            for p in online.difference(&last) {
                u.remove(p);
            }
            *last = online;
        }
        // A sweep or fetch waiting on a node that just went offline would block repair
        // until the request timed out: fail its requests now. (A connection being set up
        // holds the lock; the sweep that follows skips offline nodes anyway.)
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

    pub fn health(&self) -> Value {
        let s = &self.stats;
        let last = self
            .last_sweep
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs());
        json!({
            "target_factor": self.factor,
            "files_with_more_copies": self.factors.len(),
            "queued": self.queue.lock().unwrap_or_else(|p| p.into_inner()).len(),
            "pulled_chunks": s.pulled_chunks.load(Ordering::Relaxed),
            "pulled_bytes": s.pulled_bytes.load(Ordering::Relaxed),
            "served_bytes": s.served_bytes.load(Ordering::Relaxed),
            "repaired": s.repaired.load(Ordering::Relaxed),
            "handed_off": s.handed_off.load(Ordering::Relaxed),
            "failed_proofs": s.failed_proofs.load(Ordering::Relaxed),
            "budget_bps": self.budget.current_rate(),
            "last_sweep_s_ago": last,
            "sweeps": s.sweeps.load(Ordering::Relaxed),
        })
    }

    /// Runs sweeps (on a timer, on membership changes, on corruption) and the fetch worker.
    pub async fn run(self: Arc<Self>) {
        tokio::spawn(Arc::clone(&self).worker());
        let mut events = self.store.subscribe();
        // Let the retained membership arrive before the first sweep.
        tokio::time::sleep(Duration::from_millis(500)).await;
        loop {
            if let Err(e) = self.sweep().await {
                warn!(error = %e, "replication sweep failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.sweep_interval) => {}
                _ = self.changed.notified() => {
                    // Let a burst of membership messages settle.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                ev = events.recv() => {
                    if let Ok(StoreEvent::ChunkCorrupt { id, .. }) = ev {
                        self.repair(id).await;
                    }
                }
            }
        }
    }

    fn members(&self) -> Vec<placement::Member> {
        self.membership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members()
    }

    /// A connection to `peer`: the open one, or a new one unless the peer failed to
    /// connect recently (then it is skipped at once until its backoff ends, so members
    /// that never answer cannot stall sweeps). Connects are not serialized: a sweep warms
    /// up all its peers at once.
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

    fn min_free(&self) -> u64 {
        self.store.config().max_chunk
    }

    /// One pass: queue what is placed here and missing; pin what is placed here; hand
    /// off what is not, once its placed holders confirm.
    async fn sweep(&self) -> anyhow::Result<()> {
        self.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        let members = self.members();
        let mut peers: Vec<String> = members
            .iter()
            .filter(|m| m.online && m.id != self.my_id)
            .map(|m| m.id.clone())
            .collect();
        // A chunk is queued with the first peer that lists it: list paused peers last so
        // that, where another holder exists, the queue fetches from it.
        peers.sort_by_cached_key(|p| self.is_paused(p));
        let min_free = self.min_free();
        let placement = Placement::new(&members, min_free);
        // Connect to every peer at once (at most 8 connects in flight): one slow or
        // silent peer costs the sweep one connect timeout, not one per peer.
        {
            use futures::StreamExt;
            let mut warm = futures::stream::FuturesUnordered::new();
            for p in &peers {
                warm.push(self.conn(p));
                if warm.len() >= 8 {
                    warm.next().await;
                }
            }
            while warm.next().await.is_some() {}
        }

        // Per-file factors first: a chunk may want more copies than the default.
        for peer in &peers {
            let Ok(conn) = self.conn(peer).await else {
                continue;
            };
            let mut after: Option<ChunkId> = None;
            while let Ok((page, more)) = conn.factors(after.as_ref(), 1024).await {
                for (id, f) in &page {
                    let _ = self.factors.record(*id, *f);
                }
                after = page.last().map(|(id, _)| *id);
                if !more || after.is_none() {
                    break;
                }
            }
        }

        // Pulls, from every peer's listing.
        let mut queued = 0usize;
        for peer in &peers {
            let conn = match self.conn(peer).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(%peer, error = %e, "cannot list a peer this sweep");
                    continue;
                }
            };
            let mut after: Option<ChunkId> = None;
            loop {
                let (page, more) = match conn.list(after.as_ref(), 1024).await {
                    Ok(p) => p,
                    Err(e) => {
                        debug!(%peer, error = %e, "listing failed");
                        self.drop_conn(peer).await;
                        break;
                    }
                };
                let ids: Vec<ChunkId> = page.iter().map(|(id, _)| *id).collect();
                let have = {
                    let store = Arc::clone(&self.store);
                    tokio::task::spawn_blocking(move || {
                        ids.iter().map(|id| store.has(id)).collect::<Vec<bool>>()
                    })
                    .await?
                };
                {
                    let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    for ((id, size), has) in page.iter().zip(have) {
                        if !has
                            && placement
                                .place(id, self.factors.get(id))
                                .contains(&self.my_id.as_str())
                            && q.push(*id, peer, *size)?
                        {
                            queued += 1;
                        }
                    }
                }
                after = page.last().map(|(id, _)| *id);
                if !more || after.is_none() {
                    break;
                }
            }
        }
        if queued > 0 {
            debug!(queued, "chunks queued for replication");
            self.work.notify_one();
        }

        // Local chunks: hand off what is not placed here, once its holders prove it.
        let store = Arc::clone(&self.store);
        let local: Vec<ChunkId> = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            let _ = store.for_each(|id, _| {
                v.push(id);
                true
            });
            v
        })
        .await?;
        let eligible = placement.eligible();
        let mut handoff: HashMap<String, Vec<ChunkId>> = HashMap::new();
        let mut candidates: Vec<(ChunkId, Vec<String>)> = Vec::new();
        for id in local {
            let factor = self.factors.get(&id);
            let targets: Vec<String> = placement
                .place(&id, factor)
                .into_iter()
                .map(String::from)
                .collect();
            if !targets.contains(&self.my_id) && eligible >= factor && targets.len() == factor {
                for t in &targets {
                    handoff.entry(t.clone()).or_default().push(id);
                }
                candidates.push((id, targets));
            }
        }
        if !candidates.is_empty() {
            self.hand_off(handoff, candidates).await?;
        }
        *self.last_sweep.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }

    /// Deletes the local copies whose placed holders all prove they hold theirs. HAS
    /// first (one round trip for a batch) to skip the hopeless, then one PROVE per
    /// (chunk, holder), checked against our own copy. A holder that claims a chunk and
    /// fails the proof is logged: it is lying or broken.
    async fn hand_off(
        &self,
        by_peer: HashMap<String, Vec<ChunkId>>,
        candidates: Vec<(ChunkId, Vec<String>)>,
    ) -> anyhow::Result<()> {
        let mut proved: std::collections::HashSet<(String, ChunkId)> = Default::default();
        for (peer, ids) in &by_peer {
            let Ok(conn) = self.conn(peer).await else {
                continue;
            };
            let Ok(bits) = conn.has(ids).await else {
                continue;
            };
            for (id, _) in ids.iter().zip(bits).filter(|(_, b)| *b) {
                let store = Arc::clone(&self.store);
                let id = *id;
                let Ok(Ok(data)) = tokio::task::spawn_blocking(move || store.get(&id)).await else {
                    continue;
                };
                match conn.proves(&id, &data).await {
                    Ok(true) => {
                        proved.insert((peer.clone(), id));
                    }
                    Ok(false) => {
                        self.stats.failed_proofs.fetch_add(1, Ordering::Relaxed);
                        warn!(%peer, chunk = %id, "a node claimed a chunk (HAS) but failed to prove it: keeping our copy");
                    }
                    Err(e) => debug!(%peer, chunk = %id, error = %e, "proof request failed"),
                }
            }
        }
        let mut n = 0;
        for (id, targets) in candidates {
            let placed: Vec<&str> = targets.iter().map(String::as_str).collect();
            let factor = placed.len();
            if crate::store::retention::redundant(&self.my_id, &placed, factor, |p| {
                proved.contains(&(p.to_string(), id))
            }) {
                let store = Arc::clone(&self.store);
                if tokio::task::spawn_blocking(move || store.delete(&id))
                    .await?
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        if n > 0 {
            self.stats.handed_off.fetch_add(n, Ordering::Relaxed);
            info!(
                chunks = n,
                "handed off chunks their placed nodes proved they hold"
            );
        }
        Ok(())
    }

    /// A chunk failed verification here: fetch it again from a node that has it.
    async fn repair(&self, id: ChunkId) {
        let size = self.min_free();
        for peer in self
            .membership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .online()
        {
            if peer != self.my_id {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.push(id, &peer, size).unwrap_or(false) {
                    info!(%id, from = %peer, "re-fetching a corrupt chunk from a replica");
                    self.stats.repaired.fetch_add(1, Ordering::Relaxed);
                    self.work.notify_one();
                }
                break;
            }
        }
    }

    /// Fetches queued chunks, spending the replication budget: at `paused` the budget is
    /// zero and this waits; at `reduced` it goes at a quarter of the rate.
    async fn worker(self: Arc<Self>) {
        loop {
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned();
            let Some(item) = next else {
                tokio::select! {
                    _ = self.work.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                continue;
            };
            if self.store.has(&item.id) {
                let _ = self
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .done(&item.id);
                continue;
            }
            // Wait while replication is paused; the bytes themselves are paid for as they
            // arrive (see Conn::connect_paced), so a transfer in flight waits too.
            self.budget.acquire(0).await;
            // Its holder paused since the item was queued: another holder answers sooner.
            let mut item = item;
            if self.is_paused(&item.from)
                && let Some(other) = self.other_holder(&item).await
            {
                item.from = other;
            }
            let outcome = match self.conn(&item.from).await {
                Ok(conn) => conn.get(&item.id).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(data) => {
                    let n = data.len() as u64;
                    let store = Arc::clone(&self.store);
                    let id = item.id;
                    let stored =
                        tokio::task::spawn_blocking(move || store.put_replica(&data, id)).await;
                    match stored {
                        Ok(Ok(_)) => {
                            self.stats.pulled_chunks.fetch_add(1, Ordering::Relaxed);
                            self.stats.pulled_bytes.fetch_add(n, Ordering::Relaxed);
                            let _ = self
                                .queue
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .done(&item.id);
                        }
                        other => {
                            warn!(id = %item.id, result = ?other.map(|r| r.map(|_| ())), "storing a replicated chunk failed");
                            let _ = self
                                .queue
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .retry_later(&item.id, None);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                Err(e) => {
                    // Busy (a paused holder), gone, or unreachable: try another holder later.
                    let busy = matches!(e, ClientError::Status(Status::Busy, _));
                    if !busy {
                        debug!(id = %item.id, from = %item.from, error = %e, "replication fetch failed");
                        if !matches!(e, ClientError::Status(..)) {
                            self.drop_conn(&item.from).await;
                        }
                    }
                    let other = self.other_holder(&item).await;
                    let _ = self
                        .queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retry_later(&item.id, other.as_deref());
                    // With another holder to ask, go on at once; otherwise give the
                    // fleet a moment (a paused holder answers `busy` immediately).
                    if other.is_none() {
                        tokio::time::sleep(Duration::from_millis(if busy { 500 } else { 200 }))
                            .await;
                    }
                }
            }
        }
    }

    fn is_paused(&self, peer: &str) -> bool {
        self.membership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_paused(peer)
    }

    /// Another online node, not paused, that reports having the chunk.
    async fn other_holder(&self, item: &queue::Item) -> Option<String> {
        let peers: Vec<String> = {
            let m = self.membership.lock().unwrap_or_else(|p| p.into_inner());
            m.online()
                .into_iter()
                .filter(|p| *p != self.my_id && *p != item.from && !m.is_paused(p))
                .collect()
        };
        for peer in peers {
            if let Ok(conn) = self.conn(&peer).await
                && conn.has(&[item.id]).await.is_ok_and(|h| h == [true])
            {
                return Some(peer);
            }
        }
        None
    }
}
