//! The chunk protocol over a WebRTC data channel, version 1 (docs/protocol.md).
//!
//! Binary frames a browser can build with a `DataView`: every frame starts with a type
//! byte and a big-endian u32 request id, so several requests are in flight on one
//! channel. Requests go client to node; each gets one response of type `0x80 | request`
//! carrying a status byte; chunk bytes travel in `DATA` frames of at most the negotiated
//! message size. Decoding is total: any byte string yields a frame or a [`FrameError`]
//! naming what is wrong, never a panic (a cargo-fuzz target keeps it that way).
//!
//! [`server`] holds the node's per-channel state machine; it is pure and is fed decoded
//! frames and store results by the driver.

pub mod client;
pub mod server;

use crate::store::ChunkId;
use bytes::{BufMut, Bytes, BytesMut};

/// The newest version this side speaks: 2 adds PROVE. A node also serves version-1
/// clients (without PROVE).
pub const VERSION: u16 = 2;
/// The oldest version a node still serves.
pub const MIN_VERSION: u16 = 1;
/// Bytes of a PROVE nonce.
pub const NONCE_LEN: usize = 16;
/// The data-channel label (and subprotocol) the node accepts.
pub const LABEL: &str = "ddc-chunks/1";
/// Bytes before the payload of a DATA frame.
pub const DATA_HEADER: usize = 5;
/// Most IDs in one HAS request.
pub const MAX_HAS: usize = 1024;
/// Uploads a node buffers at once per channel; a client keeps at most this many PUTs
/// in flight (more are answered `busy`).
pub const MAX_PUTS: u16 = 2;
/// Most entries in one LIST page.
pub const MAX_LIST: usize = 1024;

pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const GET: u8 = 0x02;
    pub const PUT: u8 = 0x03;
    pub const HAS: u8 = 0x04;
    pub const DELETE: u8 = 0x05;
    pub const LIST: u8 = 0x06;
    pub const STAT: u8 = 0x07;
    /// Chunks wanting more copies than the default (replication).
    pub const FACTORS: u8 = 0x08;
    /// Proof of possession: a hash over a fresh nonce and a byte range (version 2).
    pub const PROVE: u8 = 0x09;
    /// The highest request type.
    pub const LAST_REQUEST: u8 = PROVE;
    pub const DATA: u8 = 0x10;
    /// A response is `RESPONSE | request type`.
    pub const RESPONSE: u8 = 0x80;
}

/// Status byte of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadRequest = 2,
    Unauthorized = 3,
    Full = 4,
    Corrupt = 5,
    HashMismatch = 6,
    Busy = 7,
    Internal = 8,
    Draining = 9,
    Version = 10,
    TooLarge = 11,
}

impl Status {
    pub fn from_u8(b: u8) -> Option<Status> {
        use Status::*;
        Some(match b {
            0 => Ok,
            1 => NotFound,
            2 => BadRequest,
            3 => Unauthorized,
            4 => Full,
            5 => Corrupt,
            6 => HashMismatch,
            7 => Busy,
            8 => Internal,
            9 => Draining,
            10 => Version,
            11 => TooLarge,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "ok",
            NotFound => "not_found",
            BadRequest => "bad_request",
            Unauthorized => "unauthorized",
            Full => "full",
            Corrupt => "corrupt",
            HashMismatch => "hash_mismatch",
            Busy => "busy",
            Internal => "internal",
            Draining => "draining",
            Version => "version",
            TooLarge => "too_large",
        }
    }
}

/// A request or data frame as a node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello {
        version: u16,
        max_message: u32,
    },
    Get {
        req: u32,
        id: ChunkId,
    },
    Put {
        req: u32,
        id: ChunkId,
        len: u32,
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
    Prove {
        req: u32,
        challenge: Challenge,
    },
    Data {
        req: u32,
        payload: Bytes,
    },
}

/// A proof-of-possession challenge: prove you hold chunk `id` by returning
/// SHA-256(`nonce` || bytes `offset..offset+len` of the chunk). A fresh random nonce
/// makes the answer impossible to precompute or replay; the challenger checks it against
/// its own copy (or the file it is uploading).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub id: ChunkId,
    pub nonce: [u8; NONCE_LEN],
    pub offset: u32,
    pub len: u32,
}

impl Challenge {
    /// A challenge over a random range of a chunk of `size` bytes (at most 64 KiB of it,
    /// so a proof costs the prover one chunk read and little hashing).
    pub fn random(id: ChunkId, size: u64) -> Challenge {
        use ring::rand::SecureRandom;
        let mut r = [0u8; NONCE_LEN + 8];
        let _ = ring::rand::SystemRandom::new().fill(&mut r);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&r[..NONCE_LEN]);
        let size = size.clamp(1, u32::MAX as u64) as u32;
        let offset = u32::from_be_bytes([r[16], r[17], r[18], r[19]]) % size;
        let room = (size - offset).min(64 << 10);
        let len = 1 + u32::from_be_bytes([r[20], r[21], r[22], r[23]]) % room;
        Challenge {
            id,
            nonce,
            offset,
            len,
        }
    }

    /// The answer over `data` (the whole chunk), or `None` when the range does not fit
    /// in it (a bad challenge, or the wrong data).
    pub fn answer(&self, data: &[u8]) -> Option<[u8; 32]> {
        let start = self.offset as usize;
        let end = start.checked_add(self.len as usize)?;
        if self.len == 0 || end > data.len() {
            return None;
        }
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(&self.nonce);
        h.update(&data[start..end]);
        let mut out = [0u8; 32];
        out.copy_from_slice(h.finish().as_ref());
        Some(out)
    }
}

/// A response as a client receives it (or a DATA frame of a GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Hello {
        status: Status,
        version: u16,
        max_message: u32,
        max_inflight: u16,
        max_chunk: u32,
        can_write: bool,
    },
    /// `status` with the request's type; `body` is the type-specific rest (for errors, a
    /// UTF-8 message).
    Result {
        kind: u8,
        req: u32,
        status: Status,
        body: Bytes,
    },
    Data {
        req: u32,
        payload: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("frame type {0:#04x} is unknown")]
    UnknownType(u8),
    #[error("{what} frame is {got} bytes, expected {expected}")]
    Length {
        what: &'static str,
        got: usize,
        expected: String,
    },
    #[error("status byte {0} is unknown")]
    UnknownStatus(u8),
    #[error("{0}")]
    Invalid(&'static str),
}

fn len_err(what: &'static str, got: usize, expected: impl Into<String>) -> FrameError {
    FrameError::Length {
        what,
        got,
        expected: expected.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn id_at(b: &[u8], at: usize) -> ChunkId {
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[at..at + 32]);
    ChunkId(id)
}

/// The request id of a frame, if it is long enough to have one (to answer a bad frame).
pub fn request_id(b: &[u8]) -> Option<u32> {
    (b.len() >= 5).then(|| u32_at(b, 1))
}

/// Decodes a frame sent to a node.
pub fn decode_request(frame: &Bytes) -> Result<Request, FrameError> {
    let b = &frame[..];
    let t = *b.first().ok_or(FrameError::Empty)?;
    let exact = |what, n: usize| {
        if b.len() == n {
            Ok(())
        } else {
            Err(len_err(what, b.len(), n.to_string()))
        }
    };
    Ok(match t {
        kind::HELLO => {
            exact("HELLO", 11)?;
            Request::Hello {
                version: u16_at(b, 5),
                max_message: u32_at(b, 7),
            }
        }
        kind::GET => {
            exact("GET", 37)?;
            Request::Get {
                req: u32_at(b, 1),
                id: id_at(b, 5),
            }
        }
        kind::PUT => {
            exact("PUT", 41)?;
            Request::Put {
                req: u32_at(b, 1),
                id: id_at(b, 5),
                len: u32_at(b, 37),
            }
        }
        kind::HAS => {
            if b.len() < 7 {
                return Err(len_err("HAS", b.len(), "at least 7"));
            }
            let n = u16_at(b, 5) as usize;
            if n == 0 || n > MAX_HAS {
                return Err(FrameError::Invalid("HAS count must be 1 to 1024"));
            }
            exact("HAS", 7 + 32 * n)?;
            Request::Has {
                req: u32_at(b, 1),
                ids: (0..n).map(|i| id_at(b, 7 + 32 * i)).collect(),
            }
        }
        kind::DELETE => {
            exact("DELETE", 37)?;
            Request::Delete {
                req: u32_at(b, 1),
                id: id_at(b, 5),
            }
        }
        kind::LIST | kind::FACTORS => {
            let what = if t == kind::LIST { "LIST" } else { "FACTORS" };
            if b.len() < 8 {
                return Err(len_err(what, b.len(), "8 or 40"));
            }
            let limit = u16_at(b, 5);
            let after = match b[7] {
                0 => {
                    exact(what, 8)?;
                    None
                }
                1 => {
                    exact(what, 40)?;
                    Some(id_at(b, 8))
                }
                _ => return Err(FrameError::Invalid("has_after must be 0 or 1")),
            };
            let req = u32_at(b, 1);
            if t == kind::LIST {
                Request::List { req, after, limit }
            } else {
                Request::Factors { req, after, limit }
            }
        }
        kind::STAT => {
            exact("STAT", 5)?;
            Request::Stat { req: u32_at(b, 1) }
        }
        kind::PROVE => {
            exact("PROVE", 61)?;
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&b[37..53]);
            Request::Prove {
                req: u32_at(b, 1),
                challenge: Challenge {
                    id: id_at(b, 5),
                    nonce,
                    offset: u32_at(b, 53),
                    len: u32_at(b, 57),
                },
            }
        }
        kind::DATA => {
            if b.len() < DATA_HEADER + 1 {
                return Err(len_err("DATA", b.len(), "at least 6"));
            }
            Request::Data {
                req: u32_at(b, 1),
                payload: frame.slice(DATA_HEADER..),
            }
        }
        other => return Err(FrameError::UnknownType(other)),
    })
}

/// Decodes a frame sent to a client.
pub fn decode_response(frame: &Bytes) -> Result<Response, FrameError> {
    let b = &frame[..];
    let t = *b.first().ok_or(FrameError::Empty)?;
    if t == kind::DATA {
        if b.len() < DATA_HEADER + 1 {
            return Err(len_err("DATA", b.len(), "at least 6"));
        }
        return Ok(Response::Data {
            req: u32_at(b, 1),
            payload: frame.slice(DATA_HEADER..),
        });
    }
    if t & kind::RESPONSE == 0
        || !(kind::HELLO..=kind::LAST_REQUEST).contains(&(t & !kind::RESPONSE))
    {
        return Err(FrameError::UnknownType(t));
    }
    if b.len() < 6 {
        return Err(len_err("response", b.len(), "at least 6"));
    }
    let status = Status::from_u8(b[5]).ok_or(FrameError::UnknownStatus(b[5]))?;
    if t == kind::RESPONSE | kind::HELLO {
        if b.len() != 18 {
            return Err(len_err("HELLO response", b.len(), "18"));
        }
        return Ok(Response::Hello {
            status,
            version: u16_at(b, 6),
            max_message: u32_at(b, 8),
            max_inflight: u16_at(b, 12),
            max_chunk: u32_at(b, 14) & 0x7fff_ffff,
            can_write: u32_at(b, 14) & 0x8000_0000 != 0,
        });
    }
    Ok(Response::Result {
        kind: t & !kind::RESPONSE,
        req: u32_at(b, 1),
        status,
        body: frame.slice(6..),
    })
}

fn head(t: u8, req: u32, extra: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(5 + extra);
    b.put_u8(t);
    b.put_u32(req);
    b
}

/// Frame builders, used by the node, the client and the tests alike.
pub mod encode {
    use super::*;

    pub fn hello(max_message: u32) -> Bytes {
        hello_version(VERSION, max_message)
    }

    pub fn hello_version(version: u16, max_message: u32) -> Bytes {
        let mut b = head(kind::HELLO, 0, 6);
        b.put_u16(version);
        b.put_u32(max_message);
        b.freeze()
    }

    pub fn get(req: u32, id: &ChunkId) -> Bytes {
        let mut b = head(kind::GET, req, 32);
        b.put_slice(&id.0);
        b.freeze()
    }

    pub fn put(req: u32, id: &ChunkId, len: u32) -> Bytes {
        let mut b = head(kind::PUT, req, 36);
        b.put_slice(&id.0);
        b.put_u32(len);
        b.freeze()
    }

    pub fn has(req: u32, ids: &[ChunkId]) -> Bytes {
        let mut b = head(kind::HAS, req, 2 + 32 * ids.len());
        b.put_u16(ids.len() as u16);
        for id in ids {
            b.put_slice(&id.0);
        }
        b.freeze()
    }

    pub fn delete(req: u32, id: &ChunkId) -> Bytes {
        let mut b = head(kind::DELETE, req, 32);
        b.put_slice(&id.0);
        b.freeze()
    }

    pub fn list(req: u32, after: Option<&ChunkId>, limit: u16) -> Bytes {
        let mut b = head(kind::LIST, req, 35);
        b.put_u16(limit);
        match after {
            Some(id) => {
                b.put_u8(1);
                b.put_slice(&id.0);
            }
            None => b.put_u8(0),
        }
        b.freeze()
    }

    pub fn stat(req: u32) -> Bytes {
        head(kind::STAT, req, 0).freeze()
    }

    pub fn prove(req: u32, c: &Challenge) -> Bytes {
        let mut b = head(kind::PROVE, req, 56);
        b.put_slice(&c.id.0);
        b.put_slice(&c.nonce);
        b.put_u32(c.offset);
        b.put_u32(c.len);
        b.freeze()
    }

    pub fn factors(req: u32, after: Option<&ChunkId>, limit: u16) -> Bytes {
        let mut b = BytesMut::from(&list(req, after, limit)[..]);
        b[0] = kind::FACTORS;
        b.freeze()
    }

    /// One DATA frame. The payload is copied once, into the message buffer.
    pub fn data(req: u32, payload: &[u8]) -> BytesMut {
        let mut b = head(kind::DATA, req, payload.len());
        b.put_slice(payload);
        b
    }

    pub fn hello_ok(
        status: Status,
        version: u16,
        max_message: u32,
        max_inflight: u16,
        max_chunk: u32,
        can_write: bool,
    ) -> Bytes {
        let mut b = head(kind::RESPONSE | kind::HELLO, 0, 13);
        b.put_u8(status as u8);
        b.put_u16(version);
        b.put_u32(max_message);
        b.put_u16(max_inflight);
        b.put_u32(max_chunk.min(0x7fff_ffff) | if can_write { 0x8000_0000 } else { 0 });
        b.freeze()
    }

    pub fn result(t: u8, req: u32, status: Status, body: &[u8]) -> Bytes {
        let mut b = head(kind::RESPONSE | t, req, 1 + body.len());
        b.put_u8(status as u8);
        b.put_slice(body);
        b.freeze()
    }

    pub fn error(t: u8, req: u32, status: Status, message: &str) -> Bytes {
        result(t, req, status, message.as_bytes())
    }
}

/// Body of a successful LIST: `count u16`, then `count x (id, size u32)`, then `more u8`.
pub fn list_body(entries: &[(ChunkId, u64)], more: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(3 + entries.len() * 36);
    b.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (id, size) in entries {
        b.extend_from_slice(&id.0);
        b.extend_from_slice(&(*size as u32).to_be_bytes());
    }
    b.push(more as u8);
    b
}

pub fn parse_list_body(b: &[u8]) -> Result<(Vec<(ChunkId, u64)>, bool), FrameError> {
    if b.len() < 3 {
        return Err(len_err("LIST response", b.len(), "at least 3"));
    }
    let n = u16_at(b, 0) as usize;
    if b.len() != 3 + 36 * n {
        return Err(len_err("LIST response", b.len(), (3 + 36 * n).to_string()));
    }
    let entries = (0..n)
        .map(|i| (id_at(b, 2 + 36 * i), u32_at(b, 34 + 36 * i) as u64))
        .collect();
    Ok((entries, b[2 + 36 * n] != 0))
}

/// Body of a successful FACTORS: `count u16`, `count x (id, factor u8)`, `more u8`.
pub fn factors_body(entries: &[(ChunkId, u8)], more: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(3 + entries.len() * 33);
    b.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (id, f) in entries {
        b.extend_from_slice(&id.0);
        b.push(*f);
    }
    b.push(more as u8);
    b
}

pub fn parse_factors_body(b: &[u8]) -> Result<(Vec<(ChunkId, u8)>, bool), FrameError> {
    if b.len() < 3 {
        return Err(len_err("FACTORS response", b.len(), "at least 3"));
    }
    let n = u16_at(b, 0) as usize;
    if b.len() != 3 + 33 * n {
        return Err(len_err(
            "FACTORS response",
            b.len(),
            (3 + 33 * n).to_string(),
        ));
    }
    let entries = (0..n)
        .map(|i| (id_at(b, 2 + 33 * i), b[34 + 33 * i]))
        .collect();
    Ok((entries, b[2 + 33 * n] != 0))
}

/// Body of a successful HAS: `count u16` and a bitmap, most significant bit first.
pub fn has_body(present: &[bool]) -> Vec<u8> {
    let mut b = (present.len() as u16).to_be_bytes().to_vec();
    b.resize(2 + present.len().div_ceil(8), 0);
    for (i, p) in present.iter().enumerate() {
        if *p {
            b[2 + i / 8] |= 0x80 >> (i % 8);
        }
    }
    b
}

pub fn parse_has_body(b: &[u8]) -> Result<Vec<bool>, FrameError> {
    if b.len() < 2 {
        return Err(len_err("HAS response", b.len(), "at least 2"));
    }
    let n = u16_at(b, 0) as usize;
    if b.len() != 2 + n.div_ceil(8) {
        return Err(len_err(
            "HAS response",
            b.len(),
            (2 + n.div_ceil(8)).to_string(),
        ));
    }
    Ok((0..n)
        .map(|i| b[2 + i / 8] & (0x80 >> (i % 8)) != 0)
        .collect())
}

/// One fuzz case: `data` split into frames by a one-byte length prefix, fed to both
/// decoders, to a node session (starting with a valid HELLO half the time) and to a
/// client session with requests of every kind outstanding. Shared by the cargo-fuzz
/// target and the corpus replay test, so the corpus is checked on stable.
pub fn fuzz_one(data: &[u8]) {
    let now = std::time::Instant::now();
    let mut client_session = client::Session::new(
        client::Negotiated {
            version: VERSION,
            max_message: 65536,
            max_inflight: 4,
            max_chunk: 1 << 20,
            can_write: true,
        },
        std::time::Duration::from_secs(60),
    );
    for req in 0..4u32 {
        client_session.expect_get(req, ChunkId([req as u8; 32]), now);
    }
    for (req, t) in (4u32..).zip(kind::HELLO..=kind::LAST_REQUEST) {
        client_session.expect(req, t, now);
    }
    let mut session = server::Session::new(server::SessionConfig {
        max_message: 65536,
        max_inflight: 4,
        max_puts: MAX_PUTS,
        max_chunk: 1 << 20,
        can_read: true,
        can_write: data.first().is_some_and(|b| b & 1 == 0),
        draining: false,
    });
    if data.first().is_some_and(|b| b & 2 == 0) {
        session.on_frame(encode::hello(65536));
    }
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let frame = Bytes::copy_from_slice(&tail[..n]);
        let _ = decode_request(&frame);
        let _ = decode_response(&frame);
        let _ = client::accept_hello(&frame, 65536);
        client_session.on_frame(frame.clone());
        assert!(client_session.buffered() <= 4 << 20);
        for action in session.on_frame(frame) {
            // Complete whatever the driver would run, so request ids get reused.
            if let server::Action::Get { req, .. }
            | server::Action::Put { req, .. }
            | server::Action::Has { req, .. }
            | server::Action::Delete { req, .. }
            | server::Action::List { req, .. }
            | server::Action::Factors { req, .. }
            | server::Action::Prove { req, .. }
            | server::Action::Stat { req } = action
            {
                session.complete(req);
            }
        }
        rest = &tail[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the fuzz corpus (fuzz/corpus/frame_decoder) on every test run.
    #[test]
    fn fuzz_corpus_replays_without_panics() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame_decoder");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            fuzz_one(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
        assert!(
            n >= 10,
            "the corpus in {} has only {n} cases",
            dir.display()
        );
    }

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn requests_round_trip() {
        let cases = [
            (
                encode::hello(65536),
                Request::Hello {
                    version: 2,
                    max_message: 65536,
                },
            ),
            (encode::get(7, &id(1)), Request::Get { req: 7, id: id(1) }),
            (
                encode::put(8, &id(2), 1000),
                Request::Put {
                    req: 8,
                    id: id(2),
                    len: 1000,
                },
            ),
            (
                encode::has(9, &[id(1), id(2)]),
                Request::Has {
                    req: 9,
                    ids: vec![id(1), id(2)],
                },
            ),
            (
                encode::delete(10, &id(3)),
                Request::Delete { req: 10, id: id(3) },
            ),
            (
                encode::list(11, None, 50),
                Request::List {
                    req: 11,
                    after: None,
                    limit: 50,
                },
            ),
            (
                encode::list(12, Some(&id(4)), 5),
                Request::List {
                    req: 12,
                    after: Some(id(4)),
                    limit: 5,
                },
            ),
            (encode::stat(13), Request::Stat { req: 13 }),
            (
                encode::factors(15, Some(&id(5)), 9),
                Request::Factors {
                    req: 15,
                    after: Some(id(5)),
                    limit: 9,
                },
            ),
            (
                encode::prove(
                    16,
                    &Challenge {
                        id: id(6),
                        nonce: [7; NONCE_LEN],
                        offset: 3,
                        len: 9,
                    },
                ),
                Request::Prove {
                    req: 16,
                    challenge: Challenge {
                        id: id(6),
                        nonce: [7; NONCE_LEN],
                        offset: 3,
                        len: 9,
                    },
                },
            ),
            (
                encode::data(14, b"abc").freeze(),
                Request::Data {
                    req: 14,
                    payload: Bytes::from_static(b"abc"),
                },
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(decode_request(&frame).unwrap(), want);
        }
    }

    #[test]
    fn responses_round_trip() {
        let h = encode::hello_ok(Status::Ok, 2, 65536, 8, 4 << 20, true);
        assert_eq!(
            decode_response(&h).unwrap(),
            Response::Hello {
                status: Status::Ok,
                version: 2,
                max_message: 65536,
                max_inflight: 8,
                max_chunk: 4 << 20,
                can_write: true
            }
        );
        let r = encode::error(kind::GET, 5, Status::NotFound, "no such chunk");
        assert_eq!(
            decode_response(&r).unwrap(),
            Response::Result {
                kind: kind::GET,
                req: 5,
                status: Status::NotFound,
                body: Bytes::from_static(b"no such chunk")
            }
        );
        let bits = [true, false, true, true, false, false, false, false, true];
        assert_eq!(parse_has_body(&has_body(&bits)).unwrap(), bits);
        let entries = vec![(id(1), 10), (id(2), 20)];
        assert_eq!(
            parse_list_body(&list_body(&entries, true)).unwrap(),
            (entries, true)
        );
    }

    #[test]
    fn a_proof_needs_the_bytes_and_the_nonce() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let id = ChunkId::of(&data);
        for _ in 0..200 {
            let c = Challenge::random(id, data.len() as u64);
            assert!(c.len >= 1 && c.len <= 64 << 10);
            assert!(c.offset as usize + c.len as usize <= data.len());
            let good = c.answer(&data).unwrap();
            // Different bytes in the range, or a different nonce: a different answer.
            let mut other = data.clone();
            other[c.offset as usize] ^= 1;
            assert_ne!(c.answer(&other), Some(good));
            let mut c2 = c;
            c2.nonce[0] ^= 1;
            assert_ne!(c2.answer(&data), Some(good));
        }
        // A range past the end (a lying or truncated copy) has no answer at all.
        let c = Challenge {
            id,
            nonce: [0; NONCE_LEN],
            offset: 99_999,
            len: 2,
        };
        assert_eq!(c.answer(&data), None);
        let c = Challenge { len: 0, ..c };
        assert_eq!(c.answer(&data), None);
        let c = Challenge {
            offset: u32::MAX,
            len: u32::MAX,
            ..c
        };
        assert_eq!(c.answer(&data), None);
        // A one-byte chunk still gets a valid challenge.
        let c = Challenge::random(id, 1);
        assert_eq!((c.offset, c.len), (0, 1));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let bad: &[&[u8]] = &[
            b"",
            &[0x02],
            &[0x02, 0, 0, 0, 1],
            &[0x02; 38],
            &[0x99, 0, 0, 0, 1],
            &[0x04, 0, 0, 0, 1, 0, 0],
            &[0x04, 0, 0, 0, 1, 0xff, 0xff],
            &[0x04, 0, 0, 0, 1, 0, 2, 1, 2, 3],
            &[0x06, 0, 0, 0, 1, 0, 5, 2],
            &[0x06, 0, 0, 0, 1, 0, 5, 1],
            &[0x10, 0, 0, 0, 1],
            &[0x01, 0, 0, 0, 0, 0, 1],
        ];
        for b in bad {
            assert!(decode_request(&Bytes::copy_from_slice(b)).is_err(), "{b:?}");
        }
        assert!(decode_response(&Bytes::from_static(&[0x82, 0, 0, 0, 1, 99])).is_err());
        assert!(decode_response(&Bytes::from_static(&[0x81, 0, 0, 0, 0, 0])).is_err());
        assert!(decode_response(&Bytes::from_static(&[0x02, 0, 0, 0, 1, 0])).is_err());
        assert_eq!(request_id(&[0x02, 0, 0, 1, 0]), Some(256));
        assert_eq!(request_id(&[0x02, 0]), None);
    }
}
