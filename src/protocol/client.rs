//! The requesting side of one data channel, as a pure state machine: the twin of
//! [`super::server`]. Told the frames that arrive and the time, it returns what each
//! outstanding request came to. Everything the node sends is input like any other: the
//! HELLO is validated, every length is bounded by what was negotiated before anything is
//! allocated, and a violation fails the request it belongs to (or, when it cannot be
//! pinned on one, closes the channel). Nothing a node sends can panic the client or make
//! it hold more than `max_chunk` bytes per GET in flight.

use super::{DATA_HEADER, Response, Status, decode_response, kind};
use crate::store::ChunkId;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Requests a node may have in flight per channel, whatever its HELLO says.
pub const MAX_INFLIGHT: u16 = 64;

/// What HELLO settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u16,
    pub max_message: u32,
    pub max_inflight: u16,
    pub max_chunk: u32,
    pub can_write: bool,
}

impl Negotiated {
    /// Largest DATA payload.
    pub fn max_payload(&self) -> usize {
        self.max_message as usize - DATA_HEADER
    }
}

/// Why a request (or the channel) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The node answered with an error status; the text is its message, made printable.
    Status(Status, String),
    /// The node broke the protocol for this request.
    Protocol(String),
    /// No complete answer before the deadline.
    Timeout,
}

/// Validates a node's HELLO response to our offer of `offered` bytes per message.
pub fn accept_hello(frame: &Bytes, offered: u32) -> Result<Negotiated, Failure> {
    let r = decode_response(frame).map_err(|e| Failure::Protocol(e.to_string()))?;
    let Response::Hello {
        status,
        version,
        max_message,
        max_inflight,
        max_chunk,
        can_write,
    } = r
    else {
        return Err(Failure::Protocol("expected a HELLO response".into()));
    };
    if status != Status::Ok {
        return Err(Failure::Status(status, "HELLO refused".into()));
    }
    if !(super::MIN_VERSION..=super::VERSION).contains(&version) {
        return Err(Failure::Protocol(format!(
            "node agreed protocol version {version}; we speak {} to {}",
            super::MIN_VERSION,
            super::VERSION
        )));
    }
    if (max_message as usize) < DATA_HEADER + 1024 || max_message > offered {
        return Err(Failure::Protocol(format!(
            "node agreed a max message of {max_message} bytes; we offered {offered}"
        )));
    }
    if max_chunk == 0 {
        return Err(Failure::Protocol("node announced a max chunk of 0".into()));
    }
    Ok(Negotiated {
        version,
        max_message,
        max_inflight: max_inflight.clamp(1, MAX_INFLIGHT),
        max_chunk: max_chunk.min(crate::store::HARD_MAX_CHUNK as u32),
        can_write,
    })
}

/// What became of outstanding requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A non-GET request's answer.
    Result {
        req: u32,
        status: Status,
        body: Bytes,
    },
    /// A GET's chunk, complete and verified against its ID.
    Chunk {
        req: u32,
        data: Bytes,
    },
    Failed {
        req: u32,
        failure: Failure,
    },
    /// The channel is unusable (a frame that belongs to no request could not be
    /// decoded); every outstanding request has failed with it.
    Close(String),
}

#[derive(Debug)]
enum Expect {
    Result {
        kind: u8,
        deadline: Instant,
    },
    Get {
        id: ChunkId,
        len: Option<usize>,
        buf: BytesMut,
        deadline: Instant,
    },
}

impl Expect {
    fn deadline(&self) -> Instant {
        match self {
            Expect::Result { deadline, .. } | Expect::Get { deadline, .. } => *deadline,
        }
    }
}

#[derive(Debug)]
pub struct Session {
    pub negotiated: Negotiated,
    timeout: Duration,
    pending: HashMap<u32, Expect>,
    closed: bool,
}

impl Session {
    /// `timeout`: how long a request may wait for its complete answer.
    pub fn new(negotiated: Negotiated, timeout: Duration) -> Session {
        Session {
            negotiated,
            timeout,
            pending: HashMap::new(),
            closed: false,
        }
    }

    /// Request `req` of type `kind` (not GET) was sent at `now`.
    pub fn expect(&mut self, req: u32, kind: u8, now: Instant) {
        self.pending.insert(
            req,
            Expect::Result {
                kind,
                deadline: now + self.timeout,
            },
        );
    }

    /// A GET of `id` was sent at `now` as request `req`.
    pub fn expect_get(&mut self, req: u32, id: ChunkId, now: Instant) {
        self.pending.insert(
            req,
            Expect::Get {
                id,
                len: None,
                buf: BytesMut::new(),
                deadline: now + self.timeout,
            },
        );
    }

    /// The caller gave up on `req`; anything that still arrives for it is ignored.
    pub fn cancel(&mut self, req: u32) {
        self.pending.remove(&req);
    }

    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Bytes buffered for GETs in flight (bounded by `max_chunk` each).
    pub fn buffered(&self) -> usize {
        self.pending
            .values()
            .map(|e| match e {
                Expect::Get { buf, .. } => buf.capacity(),
                Expect::Result { .. } => 0,
            })
            .sum()
    }

    /// The earliest deadline, for the driver's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(Expect::deadline).min()
    }

    /// Requests whose deadline passed by `now` fail with [`Failure::Timeout`].
    pub fn poll_timeout(&mut self, now: Instant) -> Vec<Event> {
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, e)| e.deadline() <= now)
            .map(|(r, _)| *r)
            .collect();
        expired
            .into_iter()
            .map(|req| {
                self.pending.remove(&req);
                Event::Failed {
                    req,
                    failure: Failure::Timeout,
                }
            })
            .collect()
    }

    fn fail(&mut self, req: u32, why: impl Into<String>) -> Vec<Event> {
        self.pending.remove(&req);
        vec![Event::Failed {
            req,
            failure: Failure::Protocol(why.into()),
        }]
    }

    fn close(&mut self, why: String) -> Vec<Event> {
        self.closed = true;
        let mut out: Vec<Event> = self
            .pending
            .drain()
            .map(|(req, _)| Event::Failed {
                req,
                failure: Failure::Protocol(why.clone()),
            })
            .collect();
        out.push(Event::Close(why));
        out
    }

    pub fn on_frame(&mut self, frame: Bytes) -> Vec<Event> {
        if self.closed {
            return Vec::new();
        }
        if frame.len() > self.negotiated.max_message as usize {
            return self.close(format!(
                "a {}-byte frame exceeds the {}-byte message size agreed",
                frame.len(),
                self.negotiated.max_message
            ));
        }
        let response = match decode_response(&frame) {
            Ok(r) => r,
            Err(e) => return self.close(format!("malformed frame from the node: {e}")),
        };
        match response {
            Response::Hello { .. } => self.close("HELLO response sent twice".into()),
            Response::Result {
                kind: t,
                req,
                status,
                body,
            } => self.on_result(t, req, status, body),
            Response::Data { req, payload } => self.on_data(req, payload),
        }
    }

    fn on_result(&mut self, t: u8, req: u32, status: Status, body: Bytes) -> Vec<Event> {
        let max_chunk = self.negotiated.max_chunk as usize;
        let Some(expect) = self.pending.get_mut(&req) else {
            // A late answer to a request we gave up on.
            return Vec::new();
        };
        match expect {
            Expect::Result { kind: k, .. } if *k == t => {
                self.pending.remove(&req);
                vec![Event::Result { req, status, body }]
            }
            Expect::Get {
                len: len @ None,
                buf,
                ..
            } if t == kind::GET => {
                if status != Status::Ok {
                    self.pending.remove(&req);
                    return vec![Event::Failed {
                        req,
                        failure: Failure::Status(status, message(&body)),
                    }];
                }
                let Ok(n) = <[u8; 4]>::try_from(&body[..]) else {
                    return self.fail(req, "GET response without a 4-byte length");
                };
                let n = u32::from_be_bytes(n) as usize;
                if n == 0 || n > max_chunk {
                    return self.fail(
                        req,
                        format!(
                            "node announced a {n}-byte chunk; chunks are 1 to {max_chunk} bytes"
                        ),
                    );
                }
                // Bounded: at most max_chunk (<= 4 MiB) per GET in flight.
                buf.reserve(n);
                *len = Some(n);
                Vec::new()
            }
            // A holder that pauses mid-transfer ends the GET with `busy` (rule 2).
            Expect::Get { len: Some(_), .. } if t == kind::GET && status != Status::Ok => {
                self.pending.remove(&req);
                vec![Event::Failed {
                    req,
                    failure: Failure::Status(status, message(&body)),
                }]
            }
            _ => self.fail(req, format!("unexpected response of type {t:#04x}")),
        }
    }

    fn on_data(&mut self, req: u32, payload: Bytes) -> Vec<Event> {
        let max_payload = self.negotiated.max_payload();
        match self.pending.get_mut(&req) {
            // Remnants of a GET we gave up on.
            None => Vec::new(),
            Some(Expect::Get {
                len: Some(n),
                buf,
                id,
                ..
            }) => {
                if payload.len() > max_payload {
                    return self.fail(req, "DATA frame larger than the agreed payload");
                }
                if buf.len() + payload.len() > *n {
                    return self.fail(req, "more data than announced");
                }
                buf.extend_from_slice(&payload);
                if buf.len() < *n {
                    return Vec::new();
                }
                let (id, data) = (*id, std::mem::take(buf).freeze());
                self.pending.remove(&req);
                if ChunkId::of(&data) != id {
                    return vec![Event::Failed {
                        req,
                        failure: Failure::Status(
                            Status::Corrupt,
                            format!("chunk {id} does not match its ID"),
                        ),
                    }];
                }
                vec![Event::Chunk { req, data }]
            }
            Some(_) => self.fail(req, "DATA for a request that carries none"),
        }
    }
}

/// An error message from the node, made safe to show and log.
fn message(body: &[u8]) -> String {
    crate::logging::printable(&String::from_utf8_lossy(body)).into_owned()
}

#[cfg(test)]
mod tests;
