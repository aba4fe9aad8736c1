//! The client session against the real server session, in memory, with an injected
//! clock (quinn-proto's `Pair` style), and against a node that breaks every rule.

use super::*;
use crate::protocol::server::{self, Action};
use crate::protocol::{Challenge, encode, has_body, parse_has_body};
use std::collections::HashMap as Map;

const T: Duration = Duration::from_secs(30);

/// A node: the real server session over an in-memory store.
struct Node {
    session: server::Session,
    store: Map<ChunkId, Bytes>,
}

impl Node {
    fn new(max_message: u32) -> Node {
        Node {
            session: server::Session::new(server::SessionConfig {
                max_message,
                max_inflight: 8,
                max_puts: 2,
                max_chunk: 1 << 20,
                can_read: true,
                can_write: true,
                draining: false,
            }),
            store: Map::new(),
        }
    }

    /// Runs what the session asks, as the driver (dataplane::node) would.
    fn on_frame(&mut self, frame: Bytes) -> Vec<Bytes> {
        let mut out = Vec::new();
        let max_payload = self.session.max_payload();
        for action in self.session.on_frame(frame) {
            let (req, frames) = match action {
                Action::Send(f) => {
                    out.push(f);
                    continue;
                }
                Action::Close(_) => return out,
                Action::Get { req, id } => match self.store.get(&id) {
                    Some(d) => {
                        let mut f = vec![encode::result(
                            kind::GET,
                            req,
                            Status::Ok,
                            &(d.len() as u32).to_be_bytes(),
                        )];
                        f.extend(d.chunks(max_payload).map(|p| encode::data(req, p).freeze()));
                        (req, f)
                    }
                    None => (
                        req,
                        vec![encode::error(kind::GET, req, Status::NotFound, "no")],
                    ),
                },
                Action::Put { req, id, data } => {
                    let ok = ChunkId::of(&data) == id;
                    if ok {
                        self.store.insert(id, data);
                    }
                    let status = if ok { Status::Ok } else { Status::HashMismatch };
                    (req, vec![encode::result(kind::PUT, req, status, &[1])])
                }
                Action::Has { req, ids } => {
                    let bits: Vec<bool> = ids.iter().map(|i| self.store.contains_key(i)).collect();
                    (
                        req,
                        vec![encode::result(kind::HAS, req, Status::Ok, &has_body(&bits))],
                    )
                }
                Action::Prove { req, challenge } => match self.store.get(&challenge.id) {
                    Some(d) => {
                        let a = challenge.answer(d).unwrap();
                        (req, vec![encode::result(kind::PROVE, req, Status::Ok, &a)])
                    }
                    None => (
                        req,
                        vec![encode::error(kind::PROVE, req, Status::NotFound, "no")],
                    ),
                },
                Action::Stat { req } => (
                    req,
                    vec![encode::result(kind::STAT, req, Status::Ok, b"{}")],
                ),
                other => panic!("not used here: {other:?}"),
            };
            out.extend(frames);
            self.session.complete(req);
        }
        out
    }
}

/// A client session and a node, connected in memory.
struct Pair {
    client: Session,
    node: Node,
    now: Instant,
    next: u32,
}

impl Pair {
    fn new() -> Pair {
        let mut node = Node::new(16 << 10);
        let hello = node.on_frame(encode::hello(64 << 10));
        let negotiated = accept_hello(&hello[0], 64 << 10).unwrap();
        assert_eq!(negotiated.max_message, 16 << 10, "the smaller of the two");
        let now = Instant::now();
        Pair {
            client: Session::new(negotiated, T),
            node,
            now,
            next: 1,
        }
    }

    fn req(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    /// Sends frames to the node and feeds everything it answers to the client.
    fn exchange(&mut self, frames: Vec<Bytes>) -> Vec<Event> {
        let mut events = Vec::new();
        for f in frames {
            for answer in self.node.on_frame(f) {
                events.extend(self.client.on_frame(answer));
            }
        }
        events
    }

    fn put(&mut self, data: &[u8]) -> Vec<Event> {
        let req = self.req();
        let id = ChunkId::of(data);
        self.client.expect(req, kind::PUT, self.now);
        let mut frames = vec![encode::put(req, &id, data.len() as u32)];
        let max = self.client.negotiated.max_payload();
        frames.extend(data.chunks(max).map(|p| encode::data(req, p).freeze()));
        self.exchange(frames)
    }

    fn get(&mut self, id: ChunkId) -> Vec<Event> {
        let req = self.req();
        self.client.expect_get(req, id, self.now);
        self.exchange(vec![encode::get(req, &id)])
    }
}

fn chunk(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

#[test]
fn put_get_has_and_prove_round_trip_through_both_sessions() {
    let mut p = Pair::new();
    let data = chunk(100_000, 1);
    let id = ChunkId::of(&data);
    let e = p.put(&data);
    assert!(
        matches!(
            &e[..],
            [Event::Result {
                status: Status::Ok,
                ..
            }]
        ),
        "{e:?}"
    );
    let e = p.get(id);
    assert_eq!(e.len(), 1);
    let Event::Chunk { data: got, .. } = &e[0] else {
        panic!("{e:?}")
    };
    assert_eq!(&got[..], &data[..]);
    // HAS
    let req = p.req();
    p.client.expect(req, kind::HAS, p.now);
    let e = p.exchange(vec![encode::has(req, &[id, ChunkId([9; 32])])]);
    let [Event::Result { body, .. }] = &e[..] else {
        panic!("{e:?}")
    };
    assert_eq!(parse_has_body(body).unwrap(), vec![true, false]);
    // PROVE, checked against our own copy.
    let c = Challenge::random(id, data.len() as u64);
    let req = p.req();
    p.client.expect(req, kind::PROVE, p.now);
    let e = p.exchange(vec![encode::prove(req, &c)]);
    let [Event::Result { body, .. }] = &e[..] else {
        panic!("{e:?}")
    };
    assert_eq!(&body[..], &c.answer(&data).unwrap()[..]);
    // A missing chunk: the node's status.
    let e = p.get(ChunkId([7; 32]));
    assert!(
        matches!(
            &e[..],
            [Event::Failed {
                failure: Failure::Status(Status::NotFound, _),
                ..
            }]
        ),
        "{e:?}"
    );
    assert_eq!(p.client.outstanding(), 0);
}

#[test]
fn requests_time_out_by_the_injected_clock_and_late_answers_are_ignored() {
    let mut p = Pair::new();
    let t0 = p.now;
    p.client.expect(5, kind::STAT, t0);
    p.client
        .expect_get(6, ChunkId([1; 32]), t0 + Duration::from_secs(10));
    assert_eq!(p.client.next_deadline(), Some(t0 + T));
    assert!(
        p.client
            .poll_timeout(t0 + T - Duration::from_millis(1))
            .is_empty()
    );
    let e = p.client.poll_timeout(t0 + T);
    assert_eq!(
        e,
        vec![Event::Failed {
            req: 5,
            failure: Failure::Timeout
        }]
    );
    // The answer arrives after all: nobody is waiting for it.
    assert!(
        p.client
            .on_frame(encode::result(kind::STAT, 5, Status::Ok, b"{}"))
            .is_empty()
    );
    p.client.cancel(6);
    assert!(
        p.client
            .on_frame(encode::data(6, b"late").freeze())
            .is_empty()
    );
    assert_eq!(p.client.outstanding(), 0);
}

fn session() -> Session {
    Session::new(
        Negotiated {
            version: 2,
            max_message: 16 << 10,
            max_inflight: 8,
            max_chunk: 1 << 20,
            can_write: true,
        },
        T,
    )
}

fn hello(status: Status, version: u16, max_message: u32, max_chunk: u32) -> Bytes {
    encode::hello_ok(status, version, max_message, 8, max_chunk, true)
}

#[test]
fn a_rogue_hello_is_refused_before_anything_is_sized_by_it() {
    let offered = 64 << 10;
    // max message 0 used to underflow `agreed - DATA_HEADER`, then `chunks(0)` panicked.
    for (frame, what) in [
        (hello(Status::Ok, 2, 0, 1 << 20), "max message 0"),
        (
            hello(Status::Ok, 2, 100, 1 << 20),
            "max message too small for data",
        ),
        (
            hello(Status::Ok, 2, offered + 1, 1 << 20),
            "more than we offered",
        ),
        (hello(Status::Ok, 0, offered, 1 << 20), "version 0"),
        (
            hello(Status::Ok, 9, offered, 1 << 20),
            "a version we never offered",
        ),
        (hello(Status::Ok, 2, offered, 0), "max chunk 0"),
        (hello(Status::Busy, 2, offered, 1 << 20), "refused"),
        (encode::stat(1), "not a response"),
        (Bytes::from_static(b"\x81"), "truncated"),
    ] {
        assert!(accept_hello(&frame, offered).is_err(), "{what}");
    }
    let n = accept_hello(&hello(Status::Ok, 1, offered, u32::MAX), offered).unwrap();
    assert_eq!(n.max_chunk, crate::store::HARD_MAX_CHUNK as u32, "capped");
    let mut h = hello(Status::Ok, 2, offered, 1 << 20).to_vec();
    h[12..14].copy_from_slice(&60000u16.to_be_bytes());
    assert_eq!(
        accept_hello(&Bytes::from(h), offered).unwrap().max_inflight,
        MAX_INFLIGHT
    );
}

#[test]
fn a_rogue_node_fails_the_request_not_the_client() {
    let id = ChunkId::of(b"x");
    // A 4 GiB length: refused without reserving anything (it used to reserve it: an
    // abort on a small board, a capacity overflow on armv7).
    let mut s = session();
    s.expect_get(1, id, Instant::now());
    let e = s.on_frame(encode::result(
        kind::GET,
        1,
        Status::Ok,
        &u32::MAX.to_be_bytes(),
    ));
    assert!(
        matches!(
            &e[..],
            [Event::Failed {
                failure: Failure::Protocol(_),
                ..
            }]
        ),
        "{e:?}"
    );
    assert_eq!(s.buffered(), 0);
    // Over max_chunk, zero length, or a malformed length.
    for body in [
        &(2u32 << 20).to_be_bytes()[..],
        &0u32.to_be_bytes(),
        &[1, 2],
    ] {
        s.expect_get(2, id, Instant::now());
        let e = s.on_frame(encode::result(kind::GET, 2, Status::Ok, body));
        assert!(matches!(&e[..], [Event::Failed { .. }]), "{body:?}: {e:?}");
    }
    // More data than announced.
    s.expect_get(3, id, Instant::now());
    assert!(
        s.on_frame(encode::result(
            kind::GET,
            3,
            Status::Ok,
            &4u32.to_be_bytes()
        ))
        .is_empty()
    );
    let e = s.on_frame(encode::data(3, b"12345").freeze());
    assert!(matches!(&e[..], [Event::Failed { req: 3, .. }]), "{e:?}");
    // Data before the length, data for a request without any, the wrong answer type.
    s.expect_get(4, id, Instant::now());
    assert!(matches!(
        &s.on_frame(encode::data(4, b"1").freeze())[..],
        [Event::Failed { req: 4, .. }]
    ));
    s.expect(5, kind::HAS, Instant::now());
    assert!(matches!(
        &s.on_frame(encode::data(5, b"1").freeze())[..],
        [Event::Failed { req: 5, .. }]
    ));
    s.expect(6, kind::HAS, Instant::now());
    let e = s.on_frame(encode::result(kind::LIST, 6, Status::Ok, &[]));
    assert!(matches!(&e[..], [Event::Failed { req: 6, .. }]), "{e:?}");
    // Bytes that do not hash to the ID asked for.
    s.expect_get(7, id, Instant::now());
    s.on_frame(encode::result(
        kind::GET,
        7,
        Status::Ok,
        &1u32.to_be_bytes(),
    ));
    let e = s.on_frame(encode::data(7, b"y").freeze());
    assert!(
        matches!(
            &e[..],
            [Event::Failed {
                failure: Failure::Status(Status::Corrupt, _),
                ..
            }]
        ),
        "{e:?}"
    );
    // A holder pausing mid-transfer ends the GET with busy (protocol rule 2).
    s.expect_get(8, id, Instant::now());
    s.on_frame(encode::result(
        kind::GET,
        8,
        Status::Ok,
        &10u32.to_be_bytes(),
    ));
    s.on_frame(encode::data(8, b"12345").freeze());
    let e = s.on_frame(encode::error(
        kind::GET,
        8,
        Status::Busy,
        "paused\0\x1b[31m",
    ));
    let [
        Event::Failed {
            failure: Failure::Status(Status::Busy, msg),
            ..
        },
    ] = &e[..]
    else {
        panic!("{e:?}")
    };
    assert!(
        !msg.chars().any(char::is_control),
        "the node's text is made printable: {msg:?}"
    );
    assert_eq!(s.outstanding(), 0);
    assert_eq!(s.buffered(), 0);
}

#[test]
fn frames_that_belong_to_no_request_close_the_channel_and_fail_everything() {
    let mut s = session();
    s.expect(1, kind::STAT, Instant::now());
    s.expect_get(2, ChunkId([1; 32]), Instant::now());
    let e = s.on_frame(Bytes::from_static(b"\x77garbage"));
    assert_eq!(
        e.iter()
            .filter(|e| matches!(e, Event::Failed { .. }))
            .count(),
        2
    );
    assert!(matches!(e.last(), Some(Event::Close(_))));
    assert!(s.on_frame(encode::stat(1)).is_empty(), "closed for good");
    // A frame over the agreed size.
    let mut s = session();
    let big = encode::data(1, &vec![0u8; 20 << 10]).freeze();
    assert!(matches!(s.on_frame(big).last(), Some(Event::Close(_))));
    // A second HELLO.
    let mut s = session();
    assert!(matches!(
        s.on_frame(hello(Status::Ok, 2, 16 << 10, 1)).last(),
        Some(Event::Close(_))
    ));
}

#[test]
fn any_bytes_leave_the_client_bounded_and_unpanicked() {
    use proptest::prelude::*;
    proptest!(|(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..64))| {
        let mut s = session();
        for r in 0..4u32 {
            s.expect_get(r, ChunkId([r as u8; 32]), Instant::now());
            s.expect(r + 10, kind::HAS, Instant::now());
        }
        for f in frames {
            s.on_frame(Bytes::from(f));
            prop_assert!(s.buffered() <= 4 * (1 << 20));
        }
    });
}

#[test]
fn has_answers_are_checked_by_the_driver_not_trusted_for_size() {
    // The session hands HAS bodies to the driver, which parses them strictly.
    assert!(parse_has_body(&has_body(&[true])[..1]).is_err());
}
