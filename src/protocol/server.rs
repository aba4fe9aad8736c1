//! The node's side of one data channel, as a pure state machine: fed frames, it returns
//! actions (frames to send, store operations to run); the driver runs them and reports
//! completion. It enforces the protocol: HELLO first, one version, bounded requests in
//! flight, bounded PUT buffers, authorization, and frame sizes. A violation that can be
//! pinned on a request gets an error response; one that cannot closes the channel.

use super::{Challenge, FrameError, Request, Status, decode_request, encode, kind, request_id};
use crate::store::ChunkId;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest message this side accepts (the data channel's negotiated maximum).
    pub max_message: u32,
    pub max_inflight: u16,
    /// PUTs buffered at once per channel (each up to `max_chunk`).
    pub max_puts: u16,
    pub max_chunk: u32,
    pub can_read: bool,
    pub can_write: bool,
    /// A draining node refuses new data.
    pub draining: bool,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Bytes),
    /// Answer with the chunk: a GET result with its length, then DATA frames of at most
    /// [`Session::max_payload`] bytes. Call [`Session::complete`] when done.
    Get {
        req: u32,
        id: ChunkId,
    },
    /// Verify and store; answer with a PUT result. Then [`Session::complete`].
    Put {
        req: u32,
        id: ChunkId,
        data: Bytes,
    },
    Has {
        req: u32,
        ids: Vec<ChunkId>,
    },
    Delete {
        req: u32,
        id: ChunkId,
    },
    List {
        req: u32,
        after: Option<ChunkId>,
        limit: u16,
    },
    Stat {
        req: u32,
    },
    Factors {
        req: u32,
        after: Option<ChunkId>,
        limit: u16,
    },
    /// Answer a proof-of-possession challenge from the stored chunk.
    Prove {
        req: u32,
        challenge: Challenge,
    },
    /// Close the channel; the reason is for the log.
    Close(String),
}

#[derive(Debug)]
enum Pending {
    /// Waiting for the driver.
    Op,
    /// Receiving PUT data.
    Put {
        id: ChunkId,
        len: u32,
        buf: BytesMut,
    },
    /// A refused PUT whose data is still arriving and must be skipped.
    Discard { left: u32 },
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    Ready,
    Closed,
}

#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    max_message: u32,
    /// The version agreed in HELLO: the lower of the client's and ours.
    version: u16,
    inflight: HashMap<u32, Pending>,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            max_message: cfg.max_message,
            cfg,
            state: State::AwaitHello,
            version: super::VERSION,
            inflight: HashMap::new(),
        }
    }

    /// Largest DATA payload: the negotiated message size minus the frame header.
    pub fn max_payload(&self) -> usize {
        self.max_message as usize - super::DATA_HEADER
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.cfg.draining = draining;
    }

    /// The driver finished request `req` (its response is sent).
    pub fn complete(&mut self, req: u32) {
        if matches!(self.inflight.get(&req), Some(Pending::Op)) {
            self.inflight.remove(&req);
        }
    }

    fn close(&mut self, why: impl Into<String>) -> Vec<Action> {
        self.state = State::Closed;
        self.inflight.clear();
        vec![Action::Close(why.into())]
    }

    pub fn on_frame(&mut self, frame: Bytes) -> Vec<Action> {
        if self.state == State::Closed {
            return Vec::new();
        }
        if frame.len() > self.cfg.max_message.max(self.max_message) as usize {
            return self.close(format!(
                "frame of {} bytes exceeds the {}-byte message limit",
                frame.len(),
                self.max_message
            ));
        }
        let request = match decode_request(&frame) {
            Ok(r) => r,
            Err(e) => return self.bad_frame(&frame, e),
        };
        if self.state == State::AwaitHello {
            return match request {
                Request::Hello {
                    version,
                    max_message,
                } => {
                    if version < super::MIN_VERSION {
                        let reply = encode::hello_ok(
                            Status::Version,
                            super::VERSION,
                            self.max_message,
                            0,
                            0,
                            false,
                        );
                        let mut a = vec![Action::Send(reply)];
                        a.extend(self.close(format!(
                            "client speaks version {version}, node speaks {} to {}",
                            super::MIN_VERSION,
                            super::VERSION
                        )));
                        return a;
                    }
                    self.version = version.min(super::VERSION);
                    if (max_message as usize) < super::DATA_HEADER + 1024 {
                        return self
                            .close(format!("client max message {max_message} is too small"));
                    }
                    self.max_message = self.max_message.min(max_message);
                    self.state = State::Ready;
                    vec![Action::Send(encode::hello_ok(
                        Status::Ok,
                        self.version,
                        self.max_message,
                        self.cfg.max_inflight,
                        self.cfg.max_chunk,
                        self.cfg.can_write && !self.cfg.draining,
                    ))]
                }
                _ => self.close("the first frame must be HELLO"),
            };
        }
        match request {
            Request::Hello { .. } => self.close("HELLO sent twice"),
            Request::Data { req, payload } => self.on_data(req, payload),
            other => self.on_request(other),
        }
    }

    fn bad_frame(&mut self, frame: &[u8], e: FrameError) -> Vec<Action> {
        let t = frame.first().copied().unwrap_or(0);
        match request_id(frame) {
            Some(req)
                if self.state == State::Ready
                    && (kind::GET..=kind::LAST_REQUEST).contains(&t)
                    && !self.inflight.contains_key(&req) =>
            {
                vec![Action::Send(encode::error(
                    t,
                    req,
                    Status::BadRequest,
                    &e.to_string(),
                ))]
            }
            _ => self.close(format!("malformed frame: {e}")),
        }
    }

    fn on_request(&mut self, r: Request) -> Vec<Action> {
        let (t, req) = match &r {
            Request::Get { req, .. } => (kind::GET, *req),
            Request::Put { req, .. } => (kind::PUT, *req),
            Request::Has { req, .. } => (kind::HAS, *req),
            Request::Delete { req, .. } => (kind::DELETE, *req),
            Request::List { req, .. } => (kind::LIST, *req),
            Request::Stat { req } => (kind::STAT, *req),
            Request::Factors { req, .. } => (kind::FACTORS, *req),
            Request::Prove { req, .. } => (kind::PROVE, *req),
            Request::Hello { .. } | Request::Data { .. } => unreachable!("handled by on_frame"),
        };
        let refuse = |status, msg: &str| vec![Action::Send(encode::error(t, req, status, msg))];
        if self.inflight.contains_key(&req) {
            // Answering would confuse the request already using this id; the client broke
            // the protocol.
            return self.close(format!("request id {req} reused while in flight"));
        }
        // A refused PUT still has data coming: remember to skip it.
        let refuse_put = |s: &mut Session, status, msg: &str| {
            if let Request::Put { len, .. } = r
                && len > 0
            {
                s.inflight.insert(req, Pending::Discard { left: len });
            }
            refuse(status, msg)
        };
        if self.inflight.len() >= self.cfg.max_inflight as usize {
            return refuse_put(self, Status::Busy, "too many requests in flight");
        }
        let action = match r {
            Request::Get { id, .. } => {
                if !self.cfg.can_read {
                    return refuse(Status::Unauthorized, "reads are not allowed for this key");
                }
                Action::Get { req, id }
            }
            Request::Put { id, len, .. } => {
                if !self.cfg.can_write {
                    return refuse_put(
                        self,
                        Status::Unauthorized,
                        "writes are not allowed for this key",
                    );
                }
                if self.cfg.draining {
                    return refuse_put(
                        self,
                        Status::Draining,
                        "node is draining: it accepts no new data",
                    );
                }
                if len == 0 {
                    return refuse(Status::BadRequest, "empty chunk");
                }
                if len > self.cfg.max_chunk {
                    return refuse_put(
                        self,
                        Status::TooLarge,
                        &format!(
                            "chunk of {len} bytes exceeds the {}-byte limit",
                            self.cfg.max_chunk
                        ),
                    );
                }
                let puts = self
                    .inflight
                    .values()
                    .filter(|p| matches!(p, Pending::Put { .. }))
                    .count();
                if puts >= self.cfg.max_puts as usize {
                    return refuse_put(self, Status::Busy, "too many uploads in flight");
                }
                self.inflight.insert(
                    req,
                    Pending::Put {
                        id,
                        len,
                        buf: BytesMut::with_capacity(len as usize),
                    },
                );
                return Vec::new();
            }
            Request::Has { ids, .. } => {
                if !self.cfg.can_read {
                    return refuse(Status::Unauthorized, "reads are not allowed for this key");
                }
                Action::Has { req, ids }
            }
            Request::Delete { id, .. } => {
                if !self.cfg.can_write {
                    return refuse(Status::Unauthorized, "deletes are not allowed for this key");
                }
                Action::Delete { req, id }
            }
            Request::List { after, limit, .. } => {
                if !self.cfg.can_read {
                    return refuse(Status::Unauthorized, "reads are not allowed for this key");
                }
                Action::List {
                    req,
                    after,
                    limit: limit.clamp(1, super::MAX_LIST as u16),
                }
            }
            Request::Stat { .. } => Action::Stat { req },
            Request::Factors { after, limit, .. } => Action::Factors {
                req,
                after,
                limit: limit.clamp(1, super::MAX_LIST as u16),
            },
            Request::Prove { challenge, .. } => {
                if self.version < 2 {
                    return refuse(Status::BadRequest, "PROVE needs protocol version 2");
                }
                if !self.cfg.can_read {
                    return refuse(Status::Unauthorized, "reads are not allowed for this key");
                }
                if challenge.len == 0 || challenge.len > self.cfg.max_chunk {
                    return refuse(Status::BadRequest, "PROVE length must be 1 to max_chunk");
                }
                Action::Prove { req, challenge }
            }
            Request::Hello { .. } | Request::Data { .. } => unreachable!(),
        };
        self.inflight.insert(req, Pending::Op);
        vec![action]
    }

    fn on_data(&mut self, req: u32, payload: Bytes) -> Vec<Action> {
        match self.inflight.get_mut(&req) {
            Some(Pending::Put { id, len, buf }) => {
                if buf.len() + payload.len() > *len as usize {
                    let len = *len;
                    return self.close(format!(
                        "PUT {req}: more data than the {len} bytes declared"
                    ));
                }
                buf.extend_from_slice(&payload);
                if buf.len() == *len as usize {
                    let id = *id;
                    let data = std::mem::take(buf).freeze();
                    self.inflight.insert(req, Pending::Op);
                    return vec![Action::Put { req, id, data }];
                }
                Vec::new()
            }
            Some(Pending::Discard { left }) => {
                if payload.len() > *left as usize {
                    return self.close(format!("PUT {req}: more data than declared"));
                }
                *left -= payload.len() as u32;
                if *left == 0 {
                    self.inflight.remove(&req);
                }
                Vec::new()
            }
            Some(Pending::Op) | None => self.close(format!(
                "DATA for request {req}, which is not receiving data"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Response, decode_response};

    fn cfg() -> SessionConfig {
        SessionConfig {
            max_message: 65536,
            max_inflight: 4,
            max_puts: 2,
            max_chunk: 1 << 20,
            can_read: true,
            can_write: true,
            draining: false,
        }
    }

    fn ready(c: SessionConfig) -> Session {
        let mut s = Session::new(c);
        let a = s.on_frame(encode::hello(16384));
        match &a[..] {
            [Action::Send(f)] => match decode_response(f).unwrap() {
                Response::Hello {
                    status: Status::Ok,
                    max_message,
                    ..
                } => assert_eq!(max_message, 16384),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert_eq!(s.max_payload(), 16384 - 5);
        s
    }

    fn status_of(a: &[Action]) -> Status {
        match a {
            [Action::Send(f)] => match decode_response(f).unwrap() {
                Response::Result { status, .. } => status,
                other => panic!("{other:?}"),
            },
            other => panic!("expected one response, got {other:?}"),
        }
    }

    fn is_close(a: &[Action]) -> bool {
        matches!(a.last(), Some(Action::Close(_)))
    }

    #[test]
    fn hello_first_and_version_checked() {
        let mut s = Session::new(cfg());
        assert!(is_close(&s.on_frame(encode::stat(1))));
        // Version 0 predates the protocol: refused with a `version` response, then closed.
        let mut s = Session::new(cfg());
        let a = s.on_frame(encode::hello_version(0, 65536));
        assert!(is_close(&a));
        assert!(matches!(&a[0], Action::Send(f) if matches!(
            decode_response(f).unwrap(),
            Response::Hello { status: Status::Version, version: crate::protocol::VERSION, .. }
        )));
        let mut s = ready(cfg());
        assert!(is_close(&s.on_frame(encode::hello(65536))), "HELLO twice");
    }

    fn agreed(client_version: u16) -> (Session, u16) {
        let mut s = Session::new(cfg());
        let a = s.on_frame(encode::hello_version(client_version, 65536));
        let [Action::Send(f)] = &a[..] else {
            panic!("{a:?}")
        };
        let Response::Hello {
            status: Status::Ok,
            version,
            ..
        } = decode_response(f).unwrap()
        else {
            panic!("{a:?}")
        };
        (s, version)
    }

    #[test]
    fn versions_are_negotiated_down_and_prove_needs_two() {
        let c = crate::protocol::Challenge {
            id: ChunkId([1; 32]),
            nonce: [0; 16],
            offset: 0,
            len: 10,
        };
        // A newer client talks to us at our version; PROVE works.
        let (mut s, v) = agreed(9);
        assert_eq!(v, 2);
        assert_eq!(
            s.on_frame(encode::prove(1, &c)),
            vec![Action::Prove {
                req: 1,
                challenge: c
            }]
        );
        // A version-1 client is served, without PROVE.
        let (mut s, v) = agreed(1);
        assert_eq!(v, 1);
        assert_eq!(
            status_of(&s.on_frame(encode::prove(1, &c))),
            Status::BadRequest
        );
        assert_eq!(s.inflight(), 0);
        // A zero-length or oversized range is a bad request, not a read.
        let (mut s, _) = agreed(2);
        let zero = crate::protocol::Challenge { len: 0, ..c };
        assert_eq!(
            status_of(&s.on_frame(encode::prove(2, &zero))),
            Status::BadRequest
        );
        let huge = crate::protocol::Challenge { len: u32::MAX, ..c };
        assert_eq!(
            status_of(&s.on_frame(encode::prove(3, &huge))),
            Status::BadRequest
        );
        // Without read access, no proofs either.
        let mut s = Session::new(SessionConfig {
            can_read: false,
            can_write: false,
            ..cfg()
        });
        s.on_frame(encode::hello(65536));
        assert_eq!(
            status_of(&s.on_frame(encode::prove(4, &c))),
            Status::Unauthorized
        );
    }

    #[test]
    fn put_is_assembled_from_data_frames() {
        let mut s = ready(cfg());
        let data = vec![7u8; 40_000];
        let id = ChunkId::of(&data);
        assert!(s.on_frame(encode::put(1, &id, 40_000)).is_empty());
        assert!(
            s.on_frame(encode::data(1, &data[..16_000]).freeze())
                .is_empty()
        );
        assert!(
            s.on_frame(encode::data(1, &data[16_000..32_000]).freeze())
                .is_empty()
        );
        let a = s.on_frame(encode::data(1, &data[32_000..]).freeze());
        assert_eq!(
            a,
            vec![Action::Put {
                req: 1,
                id,
                data: Bytes::from(data)
            }]
        );
        assert_eq!(s.inflight(), 1);
        s.complete(1);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn requests_map_to_actions() {
        let mut s = ready(cfg());
        let id = ChunkId([1; 32]);
        assert_eq!(
            s.on_frame(encode::get(1, &id)),
            vec![Action::Get { req: 1, id }]
        );
        assert_eq!(
            s.on_frame(encode::has(2, &[id])),
            vec![Action::Has {
                req: 2,
                ids: vec![id]
            }]
        );
        assert_eq!(
            s.on_frame(encode::list(3, None, 5000)),
            vec![Action::List {
                req: 3,
                after: None,
                limit: 1024
            }]
        );
        assert_eq!(s.on_frame(encode::stat(4)), vec![Action::Stat { req: 4 }]);
        // Four in flight: the fifth is refused, not queued.
        assert_eq!(status_of(&s.on_frame(encode::delete(5, &id))), Status::Busy);
        s.complete(1);
        assert_eq!(
            s.on_frame(encode::delete(5, &id)),
            vec![Action::Delete { req: 5, id }]
        );
    }

    #[test]
    fn authorization_and_limits() {
        let mut s = ready(SessionConfig {
            can_write: false,
            ..cfg()
        });
        let id = ChunkId([2; 32]);
        assert_eq!(
            status_of(&s.on_frame(encode::put(1, &id, 100))),
            Status::Unauthorized
        );
        // Its data is skipped, not an error.
        assert!(s.on_frame(encode::data(1, &[0; 100]).freeze()).is_empty());
        assert_eq!(s.inflight(), 0);
        assert_eq!(
            status_of(&s.on_frame(encode::delete(2, &id))),
            Status::Unauthorized
        );
        assert_eq!(
            s.on_frame(encode::get(3, &id)),
            vec![Action::Get { req: 3, id }]
        );

        let mut s = ready(cfg());
        assert_eq!(
            status_of(&s.on_frame(encode::put(1, &id, (1 << 20) + 1))),
            Status::TooLarge
        );
        assert_eq!(
            status_of(&s.on_frame(encode::put(2, &id, 0))),
            Status::BadRequest
        );
        assert!(s.on_frame(encode::put(3, &id, 10)).is_empty());
        assert!(s.on_frame(encode::put(4, &id, 10)).is_empty());
        assert_eq!(
            status_of(&s.on_frame(encode::put(5, &id, 10))),
            Status::Busy,
            "two uploads at most"
        );

        let mut s = ready(SessionConfig {
            draining: true,
            ..cfg()
        });
        assert_eq!(
            status_of(&s.on_frame(encode::put(1, &id, 10))),
            Status::Draining
        );
    }

    #[test]
    fn violations_close_or_answer() {
        let id = ChunkId([3; 32]);
        // Unknown type: closes.
        let mut s = ready(cfg());
        assert!(is_close(
            &s.on_frame(Bytes::from_static(&[0x42, 0, 0, 0, 1]))
        ));
        // Truncated GET: answered, channel kept.
        let mut s = ready(cfg());
        assert_eq!(
            status_of(&s.on_frame(Bytes::from_static(&[kind::GET, 0, 0, 0, 9, 1, 2]))),
            Status::BadRequest
        );
        assert_eq!(s.on_frame(encode::stat(10)), vec![Action::Stat { req: 10 }]);
        // DATA for nothing: closes.
        assert!(is_close(&s.on_frame(encode::data(77, b"x").freeze())));
        // Too much PUT data: closes.
        let mut s = ready(cfg());
        s.on_frame(encode::put(1, &id, 4));
        assert!(is_close(&s.on_frame(encode::data(1, b"12345").freeze())));
        // Oversize frame: closes.
        let mut s = ready(cfg());
        assert!(is_close(&s.on_frame(Bytes::from(vec![kind::DATA; 70_000]))));
        // Reused request id: closes.
        let mut s = ready(cfg());
        s.on_frame(encode::get(1, &id));
        assert!(is_close(&s.on_frame(encode::get(1, &id))));
        // After closing, nothing more happens.
        assert!(s.on_frame(encode::stat(2)).is_empty());
    }
}
