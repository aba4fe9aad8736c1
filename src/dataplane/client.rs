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
use crate::protocol::{self, Response, Status, encode, kind};
use crate::signaling::Kind;
use crate::store::ChunkId;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
}

enum Waiting {
    Result(oneshot::Sender<Response>),
    /// A GET: the result header, then DATA until `len` bytes.
    Get {
        len: Option<usize>,
        buf: BytesMut,
        tx: Option<oneshot::Sender<Result<Bytes, ClientError>>>,
    },
}

type Pending = Arc<Mutex<HashMap<u32, Waiting>>>;

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
    request_timeout: Duration,
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
        wait_connected(&mut ev.state, timeout)
            .await
            .map_err(|e| ClientError::Connect(format!("node {node_id}: {e}")))?;
        verify_remote_fingerprint(&pc, &answer.body)
            .await
            .map_err(|e| ClientError::Connect(format!("node {node_id}: {e}")))?;

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
            return Err(ClientError::Connect(format!(
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
                    Some(DataChannelEvent::OnMessage(m)) => {
                        return protocol::decode_response(&m.data.freeze())
                            .map_err(|e| ClientError::Protocol(e.to_string()));
                    }
                    Some(DataChannelEvent::OnClose) | None => return Err(ClientError::Closed),
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(timeout.as_secs()))??;
        let Response::Hello {
            status,
            version,
            max_message: agreed,
            max_inflight,
            max_chunk,
            can_write,
        } = hello
        else {
            return Err(ClientError::Protocol("expected a HELLO response".into()));
        };
        if status != Status::Ok {
            return Err(ClientError::Status(status, "HELLO refused".into()));
        }
        // A node's HELLO is input like any other: a message size too small to carry a
        // DATA frame, or one above what we offered, ends the connection here.
        if (agreed as usize) < protocol::DATA_HEADER + 1024 || agreed > max_message {
            return Err(ClientError::Protocol(format!(
                "node agreed a max message of {agreed} bytes (we offered {max_message})"
            )));
        }
        let max_chunk = max_chunk.min(crate::store::HARD_MAX_CHUNK as u32);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let reader = tokio::spawn(read_loop(Arc::clone(&dc), Arc::clone(&pending), pace));
        Ok(Conn {
            node_id: node_id.to_string(),
            session: session.to_string(),
            signal: Arc::clone(signal),
            pc,
            dc,
            pending,
            next_req: AtomicU32::new(1),
            slots: Arc::new(Semaphore::new(max_inflight.max(1) as usize)),
            put_slots: Arc::new(Semaphore::new(protocol::MAX_PUTS as usize)),
            max_payload: agreed as usize - protocol::DATA_HEADER,
            max_chunk,
            can_write,
            version: version.min(protocol::VERSION),
            request_timeout: Duration::from_secs(60),
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

    /// Sends a request and waits for its result (any request but GET).
    async fn call(&self, req: u32, frames: Vec<Bytes>) -> Result<(Status, Bytes), ClientError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req, Waiting::Result(tx));
        for f in frames {
            self.send(f).await?;
        }
        let r = tokio::time::timeout(self.request_timeout, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req);
        match r {
            Ok(Ok(Response::Result { status, body, .. })) => Ok((status, body)),
            Ok(Ok(_)) => Err(ClientError::Protocol("unexpected response".into())),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.request_timeout.as_secs())),
        }
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

    /// Fetches a chunk and verifies it hashes to `id`.
    pub async fn get(&self, id: &ChunkId) -> Result<Bytes, ClientError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let req = self.req();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                req,
                Waiting::Get {
                    len: None,
                    buf: BytesMut::new(),
                    tx: Some(tx),
                },
            );
        self.send(encode::get(req, id)).await?;
        let r = tokio::time::timeout(self.request_timeout, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req);
        let data = match r {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => return Err(ClientError::Timeout(self.request_timeout.as_secs())),
        };
        if ChunkId::of(&data) != *id {
            return Err(ClientError::Status(
                Status::Corrupt,
                format!(
                    "chunk {id} from node {} does not match its ID",
                    self.node_id
                ),
            ));
        }
        Ok(data)
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
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
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
    loop {
        let msg = match dc.poll().await {
            Some(DataChannelEvent::OnMessage(m)) => m.data.freeze(),
            Some(DataChannelEvent::OnClose) | None => break,
            _ => continue,
        };
        if let Some(l) = &pace {
            l.acquire(msg.len() as u64).await;
        }
        let resp = match protocol::decode_response(&msg) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "bad frame from node; closing");
                break;
            }
        };
        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
        match resp {
            Response::Result {
                kind: t,
                req,
                status,
                body,
            } => match p.get_mut(&req) {
                Some(Waiting::Get { len, tx, .. }) if t == kind::GET => {
                    if status != Status::Ok {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Err(ClientError::Status(
                                status,
                                String::from_utf8_lossy(&body).into_owned(),
                            )));
                        }
                        p.remove(&req);
                    } else if body.len() == 4 {
                        let n = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                        // A length is the node's word: never reserve more than a chunk.
                        if n as u64 > crate::store::HARD_MAX_CHUNK {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(Err(ClientError::Protocol(format!(
                                    "node announced a {n}-byte chunk, over the {}-byte limit",
                                    crate::store::HARD_MAX_CHUNK
                                ))));
                            }
                            p.remove(&req);
                            continue;
                        }
                        *len = Some(n);
                        if n == 0
                            && let Some(tx) = tx.take()
                        {
                            let _ = tx.send(Ok(Bytes::new()));
                        }
                    }
                }
                Some(Waiting::Result(_)) => {
                    if let Some(Waiting::Result(tx)) = p.remove(&req) {
                        let _ = tx.send(Response::Result {
                            kind: t,
                            req,
                            status,
                            body,
                        });
                    }
                }
                _ => debug!(req, "response for an unknown request"),
            },
            Response::Data { req, payload } => {
                if let Some(Waiting::Get {
                    len: Some(n),
                    buf,
                    tx,
                }) = p.get_mut(&req)
                {
                    if buf.is_empty() {
                        buf.reserve(*n);
                    }
                    buf.extend_from_slice(&payload);
                    if buf.len() >= *n {
                        let data = std::mem::take(buf).freeze();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(if data.len() == *n {
                                Ok(data)
                            } else {
                                Err(ClientError::Protocol("more data than announced".into()))
                            });
                        }
                        p.remove(&req);
                    }
                }
            }
            Response::Hello { .. } => {}
        }
    }
    // Wake every waiter: the channel is gone.
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}
