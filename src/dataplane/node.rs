//! The serving side of the data plane: answers signed offers, then serves the chunk
//! protocol on each data channel against the store.
//!
//! Bounds: at most `webrtc.max_peers` connections (more get a `bye`), `max_inflight`
//! requests and two PUT buffers per channel (the protocol session enforces both), a
//! send-buffer limit per channel, and an idle timeout. Every byte served passes the egress
//! cap and every byte received the ingress cap; both follow `set_limits` at runtime.

use super::signal::Signal;
use super::{RtcSettings, new_peer_connection, verify_remote_fingerprint, wait_gathered};
use crate::bandwidth::Limiter;
use crate::config::Config;
use crate::protocol::server::{Action, Session, SessionConfig};
use crate::protocol::{self, Status, encode, kind};
use crate::signaling::{Envelope, Kind};
use crate::store::{AsyncStore, PutOutcome, StoreError};
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCPeerConnectionState, RTCSessionDescription,
};

/// Who may do what, from `[security]`.
#[derive(Debug, Clone)]
pub struct Access {
    open_writes: bool,
    writers: HashSet<String>,
    open_reads: bool,
    readers: HashSet<String>,
}

impl Access {
    pub fn from_config(cfg: &Config) -> Access {
        let s = &cfg.security;
        Access {
            open_writes: s.open_writes,
            writers: s
                .allowed_writers
                .iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
            open_reads: s.open_reads,
            readers: s
                .allowed_readers
                .iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn can_write(&self, public_key_hex: &str) -> bool {
        self.open_writes || self.writers.contains(&public_key_hex.to_ascii_lowercase())
    }

    pub fn can_read(&self, public_key_hex: &str) -> bool {
        self.open_reads
            || self.readers.contains(&public_key_hex.to_ascii_lowercase())
            || self.can_write(public_key_hex)
    }
}

/// Figures for the health message.
#[derive(Debug, Default)]
pub struct Counters {
    pub peers: AtomicUsize,
    pub egress_bytes: AtomicU64,
    pub ingress_bytes: AtomicU64,
    pub requests: AtomicU64,
    pub refused_peers: AtomicU64,
}

/// How a node serves other nodes' replication: it recognizes them (fleet members) and
/// paces what it sends them by its own replication budget, so a paused node stops feeding
/// the fleet too. Clients are served under the egress cap alone.
pub struct ReplicationServing {
    pub is_node: Box<dyn Fn(&str) -> bool + Send + Sync>,
    pub budget: Arc<Limiter>,
    pub stats: Arc<crate::replication::Stats>,
    /// Per-file factors: learned from manifests stored here, served to peers (FACTORS).
    pub factors: Arc<crate::replication::factors::Factors>,
}

pub struct NodeServer {
    pub settings: RtcSettings,
    signal: Arc<Signal>,
    store: AsyncStore,
    max_chunk: u32,
    max_peers: usize,
    max_inflight: u16,
    idle_timeout: Duration,
    access: Access,
    draining: watch::Receiver<bool>,
    egress: Arc<Limiter>,
    ingress: Arc<Limiter>,
    replication: Option<ReplicationServing>,
    pub counters: Arc<Counters>,
}

impl NodeServer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &Config,
        signal: Arc<Signal>,
        store: AsyncStore,
        draining: watch::Receiver<bool>,
        egress: Arc<Limiter>,
        ingress: Arc<Limiter>,
        replication: Option<ReplicationServing>,
    ) -> Arc<NodeServer> {
        let access = Access::from_config(cfg);
        if cfg.security.open_writes {
            warn!(
                "data plane is OPEN for writes: anyone who can reach the broker may store data here (security.open_writes)"
            );
        } else {
            info!(
                writers = cfg.security.allowed_writers.len(),
                "data plane writes restricted to security.allowed_writers"
            );
        }
        Arc::new(NodeServer {
            settings: RtcSettings::from_config(cfg),
            max_chunk: store.0.config().max_chunk as u32,
            signal,
            store,
            max_peers: cfg.webrtc.max_peers as usize,
            max_inflight: cfg.webrtc.max_inflight,
            idle_timeout: cfg.webrtc.idle_timeout.0,
            access,
            draining,
            egress,
            ingress,
            replication,
            counters: Arc::new(Counters::default()),
        })
    }

    /// Serves offers until the channel closes.
    pub async fn run(self: Arc<Self>, mut offers: mpsc::Receiver<Envelope>) {
        while let Some(offer) = offers.recv().await {
            if self.counters.peers.load(Ordering::SeqCst) >= self.max_peers {
                self.counters.refused_peers.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %offer.from, max = self.max_peers, "refusing a peer: at webrtc.max_peers");
                self.signal
                    .send(
                        &offer.from,
                        &offer.reply_to,
                        Kind::Bye,
                        &offer.session,
                        "busy: too many peers".into(),
                    )
                    .await;
                continue;
            }
            self.counters.peers.fetch_add(1, Ordering::SeqCst);
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let (peer, session) = (offer.from.clone(), offer.session.clone());
                if let Err(e) = Arc::clone(&me).answer(offer).await {
                    warn!(%peer, %session, error = %e, "peer session ended with an error");
                }
                me.signal.unregister(&session);
                me.counters.peers.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    async fn answer(self: Arc<Self>, offer: Envelope) -> anyhow::Result<()> {
        let mut inbox = self.signal.register(&offer.session, &offer.from);
        let (pc, mut ev) = new_peer_connection(&self.settings).await?;
        let result = self.drive(&pc, &mut ev, &mut inbox, &offer).await;
        let _ = pc.close().await;
        debug!(peer = %offer.from, session = %offer.session, "peer connection closed");
        result
    }

    async fn drive(
        self: &Arc<Self>,
        pc: &Arc<dyn PeerConnection>,
        ev: &mut super::PcEvents,
        inbox: &mut mpsc::Receiver<Envelope>,
        offer: &Envelope,
    ) -> anyhow::Result<()> {
        pc.set_remote_description(RTCSessionDescription::offer(offer.body.clone())?)
            .await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer).await?;
        // A complete answer serves peers that do not trickle; trickled candidates that
        // come later are forwarded too.
        wait_gathered(&mut ev.gathered, Duration::from_secs(2)).await;
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow::anyhow!("no local description"))?;
        self.signal
            .send(
                &offer.from,
                &offer.reply_to,
                Kind::Answer,
                &offer.session,
                local.sdp,
            )
            .await;

        let key = offer.public_key.clone();
        let peer_is_node = self
            .replication
            .as_ref()
            .is_some_and(|r| (r.is_node)(&offer.from));
        let can_read = self.access.can_read(&key);
        let can_write = self.access.can_write(&key);
        let activity = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut verified = false;
        let deadline = tokio::time::sleep(self.settings.connect_timeout);
        tokio::pin!(deadline);
        let mut idle = tokio::time::interval(Duration::from_secs(5));
        let mut last_seen = 0u64;
        let mut last_change = Instant::now();
        let mut state = ev.state.clone();
        loop {
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(e) if e.kind == Kind::Candidate => {
                        match serde_json::from_str::<RTCIceCandidateInit>(&e.body) {
                            Ok(c) => { let _ = pc.add_ice_candidate(c).await; }
                            Err(err) => debug!(error = %err, "bad trickled candidate ignored"),
                        }
                    }
                    Some(e) if e.kind == Kind::Bye => return Ok(()),
                    Some(_) => {}
                    None => return Ok(()),
                },
                Some(c) = ev.candidates.recv() => {
                    if let Ok(body) = serde_json::to_string(&c) {
                        self.signal.send(&offer.from, &offer.reply_to, Kind::Candidate, &offer.session, body).await;
                    }
                }
                changed = state.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let s = *state.borrow_and_update();
                    match s {
                        RTCPeerConnectionState::Connected if !verified => {
                            if let Err(why) = verify_remote_fingerprint(pc, &offer.body).await {
                                anyhow::bail!("DTLS fingerprint check failed, closing: {why}");
                            }
                            verified = true;
                            let path = super::selected_path(pc).await;
                            info!(peer = %offer.from, can_read, can_write, connect_ms = started.elapsed().as_millis() as u64, %path, "peer connected");
                        }
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected => return Ok(()),
                        _ => {}
                    }
                }
                Some(dc) = ev.data_channels.recv() => {
                    let me = Arc::clone(self);
                    let (activity, pc) = (Arc::clone(&activity), Arc::clone(pc));
                    tokio::spawn(async move {
                        me.serve(pc, dc, can_read, can_write, peer_is_node, activity).await;
                    });
                }
                _ = &mut deadline, if !verified => anyhow::bail!("no verified connection within {} s", self.settings.connect_timeout.as_secs()),
                _ = idle.tick() => {
                    let now = activity.load(Ordering::Relaxed);
                    if now != last_seen {
                        last_seen = now;
                        last_change = Instant::now();
                    } else if verified && last_change.elapsed() >= self.idle_timeout {
                        info!(peer = %offer.from, idle_s = self.idle_timeout.as_secs(), "closing an idle connection");
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn serve(
        self: Arc<Self>,
        pc: Arc<dyn PeerConnection>,
        dc: Arc<dyn DataChannel>,
        can_read: bool,
        can_write: bool,
        peer_is_node: bool,
        activity: Arc<AtomicU64>,
    ) {
        // Wait for the channel to open before asking for its label and limits.
        loop {
            match dc.poll().await {
                Some(DataChannelEvent::OnOpen) => break,
                Some(DataChannelEvent::OnClose) | None => return,
                _ => {}
            }
        }
        let label = dc.label().await.unwrap_or_default();
        if label != protocol::LABEL {
            warn!(label = %crate::logging::printable(&label), "closing a data channel with an unknown label");
            let _ = dc.close().await;
            return;
        }
        let negotiated = match pc.sctp().await {
            Some(s) => s.max_message_size().await.unwrap_or(65536),
            None => 65536,
        };
        let max_message = negotiated.min(self.settings.max_message).max(16 << 10);
        let mut session = Session::new(SessionConfig {
            max_message,
            max_inflight: self.max_inflight,
            max_puts: protocol::MAX_PUTS,
            max_chunk: self.max_chunk,
            can_read,
            can_write,
            draining: *self.draining.borrow(),
        });
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u32>();
        let mut draining = self.draining.clone();
        loop {
            tokio::select! {
                event = dc.poll() => match event {
                    Some(DataChannelEvent::OnMessage(msg)) => {
                        activity.fetch_add(1, Ordering::Relaxed);
                        let n = msg.data.len() as u64;
                        self.ingress.acquire(n).await;
                        self.counters.ingress_bytes.fetch_add(n, Ordering::Relaxed);
                        let mut answered = false;
                        for action in session.on_frame(msg.data.freeze()) {
                            answered |= matches!(action, Action::Send(_));
                            if !self.act(&dc, &session, action, peer_is_node, &done_tx).await {
                                // A last answer (HELLO's `version`, say) must reach the peer
                                // before the channel goes: closing at once discards what is
                                // still queued.
                                if answered {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                                let _ = dc.close().await;
                                return;
                            }
                        }
                    }
                    Some(DataChannelEvent::OnClose) | None => return,
                    _ => {}
                },
                Some(req) = done_rx.recv() => {
                    activity.fetch_add(1, Ordering::Relaxed);
                    session.complete(req);
                }
                Ok(()) = draining.changed() => session.set_draining(*draining.borrow()),
            }
        }
    }

    /// Runs one action; false means close the channel.
    async fn act(
        &self,
        dc: &Arc<dyn DataChannel>,
        session: &Session,
        action: Action,
        peer_is_node: bool,
        done: &mpsc::UnboundedSender<u32>,
    ) -> bool {
        let req = match &action {
            Action::Send(frame) => {
                return send(dc, frame.clone()).await;
            }
            Action::Close(why) => {
                warn!(reason = %why, "closing a data channel: protocol violation");
                return false;
            }
            Action::Get { req, .. }
            | Action::Put { req, .. }
            | Action::Has { req, .. }
            | Action::Delete { req, .. }
            | Action::List { req, .. }
            | Action::Factors { req, .. }
            | Action::Prove { req, .. }
            | Action::Stat { req } => *req,
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (dc, store, egress, counters, done) = (
            Arc::clone(dc),
            self.store.clone(),
            Arc::clone(&self.egress),
            Arc::clone(&self.counters),
            done.clone(),
        );
        let max_payload = session.max_payload();
        let draining = *self.draining.borrow();
        let replication = self
            .replication
            .as_ref()
            .filter(|_| peer_is_node)
            .map(|r| (Arc::clone(&r.budget), Arc::clone(&r.stats)));
        let factors = self.replication.as_ref().map(|r| Arc::clone(&r.factors));
        // Requests run concurrently; each answers on the shared channel and reports back.
        tokio::spawn(async move {
            let frames: Vec<Bytes> = match action {
                Action::Get { req, id } => {
                    if let Some((budget, _)) = &replication
                        && budget.current_rate() == 0
                    {
                        // Another node's replication while ours is paused: it will try
                        // another holder or come back later. Clients are still served.
                        vec![replication_paused(req)]
                    } else {
                        match store.get(id).await {
                            Ok(data) => {
                                let head = encode::result(
                                    kind::GET,
                                    req,
                                    Status::Ok,
                                    &(data.len() as u32).to_be_bytes(),
                                );
                                if !send(&dc, head).await {
                                    return;
                                }
                                for piece in data.chunks(max_payload) {
                                    let n = piece.len() as u64;
                                    if let Some((budget, _)) = &replication
                                        && !budget.acquire_unless_paused(n).await
                                    {
                                        // Replication traffic spends our budget too. Paused
                                        // mid-transfer: end the GET with `busy` (protocol
                                        // rule 2) rather than hold the other node's worker
                                        // for the whole pause; it fetches elsewhere.
                                        let _ = send(&dc, replication_paused(req)).await;
                                        let _ = done.send(req);
                                        return;
                                    }
                                    egress.acquire(n).await;
                                    if !send_mut(&dc, encode::data(req, piece)).await {
                                        return;
                                    }
                                    counters.egress_bytes.fetch_add(n, Ordering::Relaxed);
                                    if let Some((_, stats)) = &replication {
                                        stats.served_bytes.fetch_add(n, Ordering::Relaxed);
                                    }
                                }
                                Vec::new()
                            }
                            Err(e) => vec![error_frame(kind::GET, req, &e)],
                        }
                    }
                }
                Action::Put { req, id, data } => match store.put_upload(data.clone(), id).await {
                    Ok(PutOutcome::Stored(_)) => {
                        if let Some(f) = &factors
                            && crate::store::manifest::looks_like(&data)
                        {
                            let _ = f.record_manifest(id, &data);
                        }
                        vec![encode::result(kind::PUT, req, Status::Ok, &[1])]
                    }
                    Ok(PutOutcome::AlreadyPresent(_)) => {
                        vec![encode::result(kind::PUT, req, Status::Ok, &[0])]
                    }
                    Err(e) => vec![error_frame(kind::PUT, req, &e)],
                },
                Action::Has { req, ids } => match store.has(ids).await {
                    Ok(p) => vec![encode::result(
                        kind::HAS,
                        req,
                        Status::Ok,
                        &protocol::has_body(&p),
                    )],
                    Err(e) => vec![error_frame(kind::HAS, req, &e)],
                },
                // Every delete may be of the last copy: chunks leave a node only by its
                // retention rules (docs/store.md), never at a peer's word.
                Action::Delete { req, .. } => vec![encode::error(
                    kind::DELETE,
                    req,
                    Status::Unauthorized,
                    "chunks leave a node only by its retention rules (abandoned uploads, proven handoff)",
                )],
                Action::Prove { req, challenge } => match store
                    .prove(challenge, !peer_is_node)
                    .await
                {
                    Ok(Some(proof)) => vec![encode::result(kind::PROVE, req, Status::Ok, &proof)],
                    Ok(None) => vec![encode::error(
                        kind::PROVE,
                        req,
                        Status::BadRequest,
                        "the challenged range is outside the chunk",
                    )],
                    Err(e) => vec![error_frame(kind::PROVE, req, &e)],
                },
                Action::List { req, after, limit } => {
                    match store.list_page(after, limit as usize + 1).await {
                        Ok(mut page) => {
                            let more = page.len() > limit as usize;
                            page.truncate(limit as usize);
                            vec![encode::result(
                                kind::LIST,
                                req,
                                Status::Ok,
                                &protocol::list_body(&page, more),
                            )]
                        }
                        Err(e) => vec![error_frame(kind::LIST, req, &e)],
                    }
                }
                Action::Stat { req } => match store.stat().await {
                    Ok(s) => {
                        let body = serde_json::json!({
                            "used_bytes": s.used_bytes, "quota_bytes": s.quota_bytes, "chunks": s.chunks,
                            "free_bytes": crate::mqtt::health::free_offered(&s), "draining": draining,
                        });
                        vec![encode::result(
                            kind::STAT,
                            req,
                            Status::Ok,
                            body.to_string().as_bytes(),
                        )]
                    }
                    Err(e) => vec![error_frame(kind::STAT, req, &e)],
                },
                Action::Factors { req, after, limit } => {
                    let (page, more) = factors
                        .as_ref()
                        .map(|f| f.page(after, limit as usize))
                        .unwrap_or_default();
                    vec![encode::result(
                        kind::FACTORS,
                        req,
                        Status::Ok,
                        &protocol::factors_body(&page, more),
                    )]
                }
                Action::Send(_) | Action::Close(_) => unreachable!("handled above"),
            };
            for f in frames {
                if !send(&dc, f).await {
                    return;
                }
            }
            let _ = done.send(req);
        });
        true
    }
}

/// The `busy` answer to another node's replication GET while ours is paused, before or
/// in the middle of the transfer (protocol rule 2).
fn replication_paused(req: u32) -> Bytes {
    encode::error(
        kind::GET,
        req,
        Status::Busy,
        "replication is paused on this node",
    )
}

fn error_frame(t: u8, req: u32, e: &StoreError) -> Bytes {
    let status = match e {
        StoreError::NotFound(_) => Status::NotFound,
        StoreError::Corrupt { .. } => Status::Corrupt,
        StoreError::HashMismatch { .. } => Status::HashMismatch,
        StoreError::Full(_) => Status::Full,
        StoreError::Empty | StoreError::LengthMismatch { .. } | StoreError::InvalidId(_) => {
            Status::BadRequest
        }
        StoreError::TooLarge { .. } => Status::TooLarge,
        _ => Status::Internal,
    };
    if status == Status::Internal {
        warn!(error = %e, "store error while serving");
    }
    encode::error(t, req, status, &e.to_string())
}

async fn send(dc: &Arc<dyn DataChannel>, frame: Bytes) -> bool {
    send_mut(dc, BytesMut::from(&frame[..])).await
}

async fn send_mut(dc: &Arc<dyn DataChannel>, frame: BytesMut) -> bool {
    // `send` waits while the channel's send buffer is at its limit (back-pressure).
    match dc.send(frame).await {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "data channel send failed");
            false
        }
    }
}
