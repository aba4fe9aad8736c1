//! The requesting side of the data plane: one connection to one node, with the chunk
//! protocol's requests as async methods. Used by `ddc-edge put/get` and by replication.
//!
//! Many requests may be in flight (up to what the node's HELLO allows); a reader task
//! routes responses by request id. Every chunk fetched is verified against its ID before
//! it is returned.

use super::signal::{Signal, new_session_id, node_topic};
use super::{
    RtcSettings, new_peer_connection, verify_remote_fingerprint, wait_connected, wait_gathered,
};
use crate::bandwidth::Limiter;
use crate::protocol::client::{self as core, Event, Failure};
use crate::protocol::{self, Status, encode};
use crate::signaling::Kind;
use crate::store::ChunkId;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};
use tracing::debug;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status}: {message}", status = .0.name(), message = .1)]
    Status(Status, String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection closed")]
    Closed,
    #[error("no answer within {0} s")]
    Timeout(u64),
    #[error("{0}")]
    Connect(String),
    /// The node answered but ICE, DTLS or the data channel did not come up: on a lossy
    /// link worth one more try (a DTLS handshake gives up after 7 resent flights).
    #[error("{0}")]
    SetUp(String),
}

impl ClientError {
    fn from_failure(f: Failure, timeout: Duration) -> ClientError {
        match f {
            Failure::Status(s, m) => ClientError::Status(s, m),
            Failure::Protocol(m) => ClientError::Protocol(m),
            Failure::Timeout => ClientError::Timeout(timeout.as_secs()),
        }
    }
}

/// Who waits for what: the protocol state is the pure [`core::Session`]; this maps its
/// events to the callers' channels.
enum Waiter {
    Result(oneshot::Sender<Result<(Status, Bytes), ClientError>>),
    Chunk(oneshot::Sender<Result<Bytes, ClientError>>),
}

struct Shared {
    session: core::Session,
    waiters: HashMap<u32, Waiter>,
    timeout: Duration,
}

impl Shared {
    fn deliver(&mut self, events: Vec<Event>) -> bool {
        let mut open = true;
        for e in events {
            let (req, outcome) = match e {
                Event::Result { req, status, body } => (req, Ok(Ok((status, body)))),
                Event::Chunk { req, data } => (req, Ok(Err(data))),
                Event::Failed { req, failure } => {
                    (req, Err(ClientError::from_failure(failure, self.timeout)))
                }
                Event::Close(why) => {
                    debug!(reason = %why, "closing a data channel: the node broke the protocol");
                    open = false;
                    continue;
                }
            };
            match (self.waiters.remove(&req), outcome) {
                (Some(Waiter::Result(tx)), Ok(Ok(r))) => drop(tx.send(Ok(r))),
                (Some(Waiter::Chunk(tx)), Ok(Err(data))) => drop(tx.send(Ok(data))),
                (Some(Waiter::Result(tx)), Err(e)) => drop(tx.send(Err(e))),
                (Some(Waiter::Chunk(tx)), Err(e)) => drop(tx.send(Err(e))),
                _ => {}
            }
        }
        open
    }
}

type Pending = Arc<Mutex<Shared>>;

pub struct Conn {
    pub node_id: String,
    /// Signaling session and channel, to say `bye` when we close: the node frees our
    /// peer slot at once instead of waiting for ICE to time out.
    session: String,
    signal: Arc<Signal>,
    pc: Arc<dyn PeerConnection>,
    dc: Arc<dyn DataChannel>,
    pending: Pending,
    next_req: AtomicU32,
    slots: Arc<Semaphore>,
    /// The node buffers at most `protocol::MAX_PUTS` uploads per channel.
    put_slots: Arc<Semaphore>,
    max_payload: usize,
    pub max_chunk: u32,
    pub can_write: bool,
    /// The protocol version agreed in HELLO (PROVE needs 2).
    pub version: u16,
    reader: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Offers a connection to `node_id`, verifies the answer's signature (by the
    /// signaling layer) and the DTLS fingerprint, then says HELLO.
    pub async fn connect(
        signal: &Arc<Signal>,
        settings: &RtcSettings,
        node_id: &str,
    ) -> Result<Conn, ClientError> {
        Self::connect_paced(signal, settings, node_id, None).await
    }

    /// Like [`connect`](Self::connect), with every received frame paid for from
    /// `pace` first: when it pauses, the channel stops being read and SCTP back-pressure
    /// stops the sender, so a transfer in flight waits rather than completes or fails.
    /// Replication uses this with its budget.
    pub async fn connect_paced(
        signal: &Arc<Signal>,
        settings: &RtcSettings,
        node_id: &str,
        pace: Option<Arc<Limiter>>,
    ) -> Result<Conn, ClientError> {
        match Self::connect_once(signal, settings, node_id, pace.clone()).await {
            Err(ClientError::SetUp(why)) => {
                tracing::info!(node = %node_id, %why, "connection set-up failed after the node answered; trying once more");
                Self::connect_once(signal, settings, node_id, pace).await
            }
            r => r,
        }
    }

    async fn connect_once(
        signal: &Arc<Signal>,
        settings: &RtcSettings,
        node_id: &str,
        pace: Option<Arc<Limiter>>,
    ) -> Result<Conn, ClientError> {
        let session = new_session_id();
        let mut inbox = signal.register(&session, node_id);
        let result =
            Self::connect_session(signal, settings, node_id, &session, &mut inbox, pace).await;
        if result.is_err() {
            signal.unregister(&session);
        } else {
            // Late trickled candidates from the node.
            let pc_signal = Arc::clone(signal);
            let session2 = session.clone();
            if let Ok(conn) = &result {
                let pc = Arc::clone(&conn.pc);
                tokio::spawn(async move {
                    while let Some(e) = inbox.recv().await {
                        match e.kind {
                            Kind::Candidate => {
                                if let Ok(c) = serde_json::from_str::<RTCIceCandidateInit>(&e.body)
                                {
                                    let _ = pc.add_ice_candidate(c).await;
                                }
                            }
                            Kind::Bye => break,
                            _ => {}
                        }
                    }
                    pc_signal.unregister(&session2);
                });
            }
        }
        result
    }

    async fn connect_session(
        signal: &Arc<Signal>,
        settings: &RtcSettings,
        node_id: &str,
        session: &str,
        inbox: &mut tokio::sync::mpsc::Receiver<crate::signaling::Envelope>,
        pace: Option<Arc<Limiter>>,
    ) -> Result<Conn, ClientError> {
        let err = |e: webrtc::error::Error| ClientError::Connect(e.to_string());
        let started = std::time::Instant::now();
        let (pc, mut ev) = new_peer_connection(settings)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let dc = pc
            .create_data_channel(
                protocol::LABEL,
                Some(RTCDataChannelInit {
                    ordered: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(err)?;
        let offer = pc.create_offer(None).await.map_err(err)?;
        pc.set_local_description(offer).await.map_err(err)?;
        wait_gathered(&mut ev.gathered, Duration::from_secs(2)).await;
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| ClientError::Connect("no local description".into()))?;
        let topic = node_topic(&signal.prefix, node_id);
        signal
            .send(node_id, &topic, Kind::Offer, session, local.sdp)
            .await;

        let timeout = settings.connect_timeout;
        let answer = tokio::time::timeout(timeout, async {
            while let Some(e) = inbox.recv().await {
                match e.kind {
                    Kind::Answer => return Ok(e),
                    Kind::Bye => {
                        return Err(ClientError::Connect(format!(
                            "node {node_id} refused: {}",
                            e.body
                        )));
                    }
                    _ => {}
                }
            }
            Err(ClientError::Closed)
        })
        .await
        .map_err(|_| {
            ClientError::Connect(format!(
                "node {node_id} did not answer within {} s (offline?)",
                timeout.as_secs()
            ))
        })??;
        let desc = RTCSessionDescription::answer(answer.body.clone()).map_err(err)?;
        pc.set_remote_description(desc).await.map_err(err)?;
        if let Err(e) = wait_connected(&mut ev.state, timeout).await {
            // Tell the node, so it frees the slot now rather than at its own timeout.
            signal
                .send(node_id, &topic, Kind::Bye, session, "set-up failed".into())
                .await;
            let _ = pc.close().await;
            return Err(ClientError::SetUp(format!("node {node_id}: {e}")));
        }
        verify_remote_fingerprint(&pc, &answer.body)
            .await
            .map_err(|e| ClientError::Connect(format!("node {node_id}: {e}")))?;
        let path = super::selected_path(&pc).await;
        tracing::info!(
            node = %node_id,
            connect_ms = started.elapsed().as_millis() as u64,
            %path,
            "connected"
        );

        // Open, then HELLO; the reader task owns the channel's events from here.
        let opened = tokio::time::timeout(timeout, async {
            loop {
                match dc.poll().await {
                    Some(DataChannelEvent::OnOpen) => return true,
                    Some(DataChannelEvent::OnClose) | None => return false,
                    _ => {}
                }
            }
        })
        .await;
        if opened != Ok(true) {
            let _ = pc.close().await;
            return Err(ClientError::SetUp(format!(
                "node {node_id}: data channel did not open"
            )));
        }
        let negotiated = match pc.sctp().await {
            Some(s) => s.max_message_size().await.unwrap_or(65536),
            None => 65536,
        };
        let max_message = negotiated.min(settings.max_message).max(16 << 10);
        dc.send(BytesMut::from(&encode::hello(max_message)[..]))
            .await
            .map_err(err)?;
        let hello = tokio::time::timeout(timeout, async {
            loop {
                match dc.poll().await {
                    Some(DataChannelEvent::OnMessage(m)) => return Ok(m.data.freeze()),
                    Some(DataChannelEvent::OnClose) | None => return Err(ClientError::Closed),
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(timeout.as_secs()))??;
        // The node's HELLO is input like any other: validated before anything is sized
        // by it (protocol::client).
        let n = core::accept_hello(&hello, max_message)
            .map_err(|f| ClientError::from_failure(f, timeout))?;
        let pending: Pending = Arc::new(Mutex::new(Shared {
            session: core::Session::new(n, settings.request_timeout),
            waiters: HashMap::new(),
            timeout: settings.request_timeout,
        }));
        let reader = tokio::spawn(read_loop(Arc::clone(&dc), Arc::clone(&pending), pace));
        Ok(Conn {
            node_id: node_id.to_string(),
            session: session.to_string(),
            signal: Arc::clone(signal),
            pc,
            dc,
            pending,
            next_req: AtomicU32::new(1),
            slots: Arc::new(Semaphore::new(n.max_inflight as usize)),
            put_slots: Arc::new(Semaphore::new(protocol::MAX_PUTS as usize)),
            max_payload: n.max_payload(),
            max_chunk: n.max_chunk,
            can_write: n.can_write,
            version: n.version,
            reader,
        })
    }

    fn req(&self) -> u32 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    async fn send(&self, frame: Bytes) -> Result<(), ClientError> {
        self.dc
            .send(BytesMut::from(&frame[..]))
            .await
            .map_err(|_| ClientError::Closed)
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a request and waits for its result (any request but GET). Its deadline is
    /// the session's: the reader task fails it when it passes.
    async fn call(&self, req: u32, frames: Vec<Bytes>) -> Result<(Status, Bytes), ClientError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut sh = self.shared();
            sh.session.expect(req, frames[0][0], Instant::now());
            sh.waiters.insert(req, Waiter::Result(tx));
        }
        for f in frames {
            if let Err(e) = self.send(f).await {
                self.forget(req);
                return Err(e);
            }
        }
        rx.await.map_err(|_| ClientError::Closed)?
    }

    fn forget(&self, req: u32) {
        let mut sh = self.shared();
        sh.session.cancel(req);
        sh.waiters.remove(&req);
    }

    fn check(status: Status, body: &Bytes) -> Result<(), ClientError> {
        if status == Status::Ok {
            Ok(())
        } else {
            Err(ClientError::Status(
                status,
                String::from_utf8_lossy(body).into_owned(),
            ))
        }
    }

    /// Fetches a chunk; the session verifies that it hashes to `id`.
    pub async fn get(&self, id: &ChunkId) -> Result<Bytes, ClientError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let req = self.req();
        let (tx, rx) = oneshot::channel();
        {
            let mut sh = self.shared();
            sh.session.expect_get(req, *id, Instant::now());
            sh.waiters.insert(req, Waiter::Chunk(tx));
        }
        if let Err(e) = self.send(encode::get(req, id)).await {
            self.forget(req);
            return Err(e);
        }
        rx.await
            .map_err(|_| ClientError::Closed)?
            .map_err(|e| match e {
                ClientError::Status(Status::Corrupt, m) => ClientError::Status(
                    Status::Corrupt,
                    format!("{m} (from node {})", self.node_id),
                ),
                other => other,
            })
    }

    /// Stores a chunk; true if the node did not have it.
    pub async fn put(&self, id: &ChunkId, data: &Bytes) -> Result<bool, ClientError> {
        let _put = self
            .put_slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let req = self.req();
        let mut frames = vec![encode::put(req, id, data.len() as u32)];
        for piece in data.chunks(self.max_payload) {
            frames.push(encode::data(req, piece).freeze());
        }
        let (status, body) = self.call(req, frames).await?;
        Self::check(status, &body)?;
        Ok(body.first() == Some(&1))
    }

    /// Which of `ids` the node holds.
    pub async fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, ClientError> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(protocol::MAX_HAS) {
            let req = self.req();
            let (status, body) = self.call(req, vec![encode::has(req, batch)]).await?;
            Self::check(status, &body)?;
            let bits = protocol::parse_has_body(&body)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if bits.len() != batch.len() {
                return Err(ClientError::Protocol(
                    "HAS answered for the wrong number of IDs".into(),
                ));
            }
            out.extend(bits);
        }
        Ok(out)
    }

    /// Challenges the node to prove it holds a chunk, checking its answer against
    /// `data` (our own copy). Ok(false): the node has no such copy (not found, a wrong
    /// answer, or a node too old to prove anything).
    pub async fn proves(&self, id: &ChunkId, data: &[u8]) -> Result<bool, ClientError> {
        if self.version < 2 {
            return Ok(false);
        }
        let challenge = protocol::Challenge::random(*id, data.len() as u64);
        let Some(want) = challenge.answer(data) else {
            return Ok(false);
        };
        let req = self.req();
        let (status, body) = self.call(req, vec![encode::prove(req, &challenge)]).await?;
        match status {
            Status::Ok => Ok(body[..] == want[..]),
            Status::NotFound | Status::Corrupt | Status::BadRequest => Ok(false),
            _ => Err(ClientError::Status(
                status,
                String::from_utf8_lossy(&body).into_owned(),
            )),
        }
    }

    pub async fn delete(&self, id: &ChunkId) -> Result<(), ClientError> {
        let req = self.req();
        let (status, body) = self.call(req, vec![encode::delete(req, id)]).await?;
        Self::check(status, &body)
    }

    pub async fn list(
        &self,
        after: Option<&ChunkId>,
        limit: u16,
    ) -> Result<(Vec<(ChunkId, u64)>, bool), ClientError> {
        let req = self.req();
        let (status, body) = self
            .call(req, vec![encode::list(req, after, limit)])
            .await?;
        Self::check(status, &body)?;
        protocol::parse_list_body(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// One page of the node's per-file factors (chunks wanting more than the default).
    pub async fn factors(
        &self,
        after: Option<&ChunkId>,
        limit: u16,
    ) -> Result<(Vec<(ChunkId, u8)>, bool), ClientError> {
        let req = self.req();
        let (status, body) = self
            .call(req, vec![encode::factors(req, after, limit)])
            .await?;
        Self::check(status, &body)?;
        protocol::parse_factors_body(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn stat(&self) -> Result<serde_json::Value, ClientError> {
        let req = self.req();
        let (status, body) = self.call(req, vec![encode::stat(req)]).await?;
        Self::check(status, &body)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends raw bytes on the channel (tests use it to misbehave).
    pub async fn send_raw(&self, frame: Bytes) -> Result<(), ClientError> {
        self.send(frame).await
    }

    pub fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }

    /// Fails every request in flight now and stops reading. For a peer known to be gone
    /// (its last will said offline): its dead connection would otherwise hold requests
    /// until their timeout, long after the fleet has moved on.
    pub fn abandon(&self) {
        self.reader.abort();
        self.shared().waiters.clear();
    }

    pub async fn close(self) {
        let topic = super::signal::node_topic(&self.signal.prefix, &self.node_id);
        self.signal
            .send(
                &self.node_id,
                &topic,
                Kind::Bye,
                &self.session,
                "closing".into(),
            )
            .await;
        let _ = self.dc.close().await;
        let _ = self.pc.close().await;
        self.reader.abort();
    }
}

async fn read_loop(dc: Arc<dyn DataChannel>, pending: Pending, pace: Option<Arc<Limiter>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let msg = tokio::select! {
            ev = dc.poll() => match ev {
                Some(DataChannelEvent::OnMessage(m)) => m.data.freeze(),
                Some(DataChannelEvent::OnClose) | None => break,
                _ => continue,
            },
            _ = tick.tick() => {
                let mut sh = pending.lock().unwrap_or_else(|p| p.into_inner());
                let events = sh.session.poll_timeout(Instant::now());
                sh.deliver(events);
                continue;
            }
        };
        if let Some(l) = &pace {
            l.acquire(msg.len() as u64).await;
        }
        let mut sh = pending.lock().unwrap_or_else(|p| p.into_inner());
        let events = sh.session.on_frame(msg);
        if !sh.deliver(events) {
            break;
        }
    }
    // Wake every waiter: the channel is gone.
    pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .waiters
        .clear();
}
