//! The replication messages nodes send each other (docs/protocol.md, "Replication
//! messages"): the planner's notices, digests and listings, as the `body` of a signed
//! signaling envelope of kind `repl`. Pure: text in, [`Message`]s out, and back.
//!
//! The body is line-based text, so it needs no escaping inside the envelope's JSON and
//! can be read in a log:
//!
//! ```text
//! ddc-repl/1 notice            ddc-repl/1 digest             ddc-repl/1 listing <reply 0|1> <buckets>
//! <chunk id> <factor>          <count> <s0> <s1> <s2> <s3>   <chunk id>
//! ...                                                        ...
//! ddc-repl/1 buckets
//! <bucket> <count> <s0> <s1> <s2> <s3>      (non-empty buckets only)
//! ```
//!
//! Sums are 16 lowercase hex digits, bucket numbers and counts decimal, `<buckets>` a
//! comma-separated list of bucket numbers. A message carries at most [`MAX_IDS`] chunk
//! IDs; longer notices and listings are split ([`encode`]) and only the first part of a
//! listing asks for a reply. Anything else (an unknown type or version, a bad line, too
//! many lines, a bucket twice) is refused whole, naming the line.

use super::planner::{BUCKETS, Digest};
use crate::store::ChunkId;

/// Chunk IDs per message: 256 x 67 bytes keeps a message under 18 KiB, well inside the
/// 32 KiB limit of a signal topic.
pub const MAX_IDS: usize = 256;

const MAGIC: &str = "ddc-repl/1";

/// One replication message, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Notice(Vec<(ChunkId, u8)>),
    Digest(Digest),
    Buckets(Box<[Digest]>),
    Listing {
        reply: bool,
        buckets: Vec<u8>,
        ids: Vec<ChunkId>,
    },
}

/// The bodies that carry `msg`: one, or several for a notice or listing of more than
/// [`MAX_IDS`] chunks (only the first part of a listing asks for a reply).
pub fn encode(msg: &Message) -> Vec<String> {
    match msg {
        Message::Notice(ids) => ids
            .chunks(MAX_IDS)
            .map(|part| {
                let mut s = format!("{MAGIC} notice");
                for (id, f) in part {
                    s.push_str(&format!("\n{id} {f}"));
                }
                s
            })
            .collect(),
        Message::Digest(digest) => vec![format!("{MAGIC} digest\n{}", digest_line(digest))],
        Message::Buckets(buckets) => {
            let mut s = format!("{MAGIC} buckets");
            for (b, d) in buckets.iter().enumerate().filter(|(_, d)| d.count > 0) {
                s.push_str(&format!("\n{b} {}", digest_line(d)));
            }
            vec![s]
        }
        Message::Listing {
            buckets,
            ids,
            reply,
        } => {
            let list: Vec<String> = buckets.iter().map(u8::to_string).collect();
            let list = list.join(",");
            let head = |reply: bool| format!("{MAGIC} listing {} {list}", u8::from(reply));
            if ids.is_empty() {
                return vec![head(*reply)];
            }
            ids.chunks(MAX_IDS)
                .enumerate()
                .map(|(i, part)| {
                    let mut s = head(*reply && i == 0);
                    for id in part {
                        s.push_str(&format!("\n{id}"));
                    }
                    s
                })
                .collect()
        }
    }
}

fn digest_line(d: &Digest) -> String {
    format!(
        "{} {:016x} {:016x} {:016x} {:016x}",
        d.count, d.sum[0], d.sum[1], d.sum[2], d.sum[3]
    )
}

/// Parses a body. The error names the line (1 is the header) and what is wrong.
pub fn decode(body: &str) -> Result<Message, String> {
    let mut lines = body.split('\n');
    let head = lines.next().unwrap_or_default();
    let mut words = head.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(format!("line 1: expected {MAGIC:?} first, got {head:.40?}"));
    }
    let kind = words.next().unwrap_or_default();
    let rest: Vec<&str> = lines.collect();
    let at = |i: usize, what: String| format!("line {}: {what}", i + 2);
    let too_many =
        |n: usize| (n > MAX_IDS).then(|| format!("{n} entries: at most {MAX_IDS} in one message"));
    match kind {
        "notice" => {
            if let Some(e) = too_many(rest.len()) {
                return Err(e);
            }
            let mut ids = Vec::with_capacity(rest.len());
            for (i, l) in rest.iter().enumerate() {
                let (id, f) = l
                    .split_once(' ')
                    .ok_or_else(|| at(i, "expected \"<chunk id> <factor>\"".into()))?;
                let id = id
                    .parse::<ChunkId>()
                    .map_err(|e| at(i, format!("chunk id: {e}")))?;
                let f = f
                    .parse::<u8>()
                    .ok()
                    .filter(|f| *f >= 1)
                    .ok_or_else(|| at(i, format!("factor {f:.8?}: expected 1 to 255")))?;
                ids.push((id, f));
            }
            Ok(Message::Notice(ids))
        }
        "digest" => match rest.as_slice() {
            [l] => Ok(Message::Digest(
                parse_digest(&l.split(' ').collect::<Vec<_>>()).map_err(|e| at(0, e))?,
            )),
            _ => Err(format!("digest: expected one line, got {}", rest.len())),
        },
        "buckets" => {
            if rest.len() > BUCKETS {
                return Err(format!("{} buckets: at most {BUCKETS}", rest.len()));
            }
            let mut out = vec![Digest::default(); BUCKETS];
            let mut seen = [false; BUCKETS];
            for (i, l) in rest.iter().enumerate() {
                let w: Vec<&str> = l.split(' ').collect();
                let b = w
                    .first()
                    .and_then(|b| b.parse::<u8>().ok())
                    .ok_or_else(|| at(i, "expected a bucket number 0 to 255 first".into()))?;
                if std::mem::replace(&mut seen[b as usize], true) {
                    return Err(at(i, format!("bucket {b} twice")));
                }
                out[b as usize] = parse_digest(&w[1..]).map_err(|e| at(i, e))?;
            }
            Ok(Message::Buckets(out.into_boxed_slice()))
        }
        "listing" => {
            let reply = match words.next() {
                Some("0") => false,
                Some("1") => true,
                other => return Err(format!("line 1: reply: expected 0 or 1, got {other:?}")),
            };
            let list = words.next().unwrap_or_default();
            let mut buckets = Vec::new();
            for b in list.split(',').filter(|b| !b.is_empty()) {
                let b = b
                    .parse::<u8>()
                    .map_err(|_| format!("line 1: bucket {b:.8?}: expected 0 to 255"))?;
                if buckets.contains(&b) {
                    return Err(format!("line 1: bucket {b} twice"));
                }
                buckets.push(b);
            }
            if words.next().is_some() {
                return Err("line 1: unexpected words after the buckets".into());
            }
            if let Some(e) = too_many(rest.len()) {
                return Err(e);
            }
            let mut ids = Vec::with_capacity(rest.len());
            for (i, l) in rest.iter().enumerate() {
                ids.push(
                    l.parse::<ChunkId>()
                        .map_err(|e| at(i, format!("chunk id: {e}")))?,
                );
            }
            Ok(Message::Listing {
                reply,
                buckets,
                ids,
            })
        }
        other => Err(format!(
            "line 1: unknown message type {other:.16?} (this node speaks notice, digest, buckets, listing)"
        )),
    }
}

fn parse_digest(w: &[&str]) -> Result<Digest, String> {
    let [count, s @ ..] = w else {
        return Err("expected \"<count> <sum> <sum> <sum> <sum>\"".into());
    };
    if s.len() != 4 {
        return Err(format!(
            "expected a count and 4 sums, got {} words",
            w.len()
        ));
    }
    let count = count
        .parse::<u64>()
        .map_err(|_| format!("count {count:.20?}: expected a whole number"))?;
    let mut sum = [0u64; 4];
    for (lane, h) in sum.iter_mut().zip(s) {
        if h.len() != 16 {
            return Err(format!("sum {h:.20?}: expected 16 hex digits"));
        }
        let mut b = [0u8; 8];
        hex::decode_to_slice(h, &mut b).map_err(|_| format!("sum {h:.20?}: not hex"))?;
        *lane = u64::from_be_bytes(b);
    }
    Ok(Digest { count, sum })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    fn digest(ids: &[ChunkId]) -> Digest {
        let mut d = Digest::default();
        for i in ids {
            d.add(i.key());
        }
        d
    }

    fn roundtrip(m: &Message) -> Vec<Message> {
        encode(m)
            .into_iter()
            .map(|body| decode(&body).unwrap_or_else(|e| panic!("{e}\n{body}")))
            .collect()
    }

    #[test]
    fn every_message_reads_back_as_sent() {
        let ids: Vec<(ChunkId, u8)> = (0..3).map(|n| (id(n), 2 + n as u8)).collect();
        let d = digest(&[id(1), id(2)]);
        let mut b = vec![Digest::default(); BUCKETS];
        b[0] = d;
        b[255] = digest(&[id(9)]);
        for m in [
            Message::Notice(ids),
            Message::Digest(d),
            Message::Buckets(b.into_boxed_slice()),
            Message::Listing {
                reply: true,
                buckets: vec![0, 7, 255],
                ids: vec![id(1), id(2)],
            },
            // An empty listing still carries the reply request.
            Message::Listing {
                reply: true,
                buckets: vec![3],
                ids: vec![],
            },
        ] {
            assert_eq!(roundtrip(&m), [m]);
        }
    }

    #[test]
    fn long_notices_and_listings_are_split_and_only_the_first_part_asks_a_reply() {
        let ids: Vec<ChunkId> = (0..(MAX_IDS as u32 * 2 + 1)).map(id).collect();
        let parts = roundtrip(&Message::Listing {
            buckets: vec![1, 2],
            ids: ids.clone(),
            reply: true,
        });
        assert_eq!(parts.len(), 3);
        let mut back = Vec::new();
        for (i, p) in parts.into_iter().enumerate() {
            let Message::Listing { reply, ids, .. } = p else {
                panic!()
            };
            assert_eq!(reply, i == 0);
            back.extend(ids);
        }
        assert_eq!(back, ids);
        let notice = encode(&Message::Notice(ids.iter().map(|i| (*i, 2)).collect()));
        assert_eq!(notice.len(), 3);
        for body in &notice {
            assert!(body.len() < 18 << 10, "{} bytes", body.len());
        }
    }

    #[test]
    fn bad_bodies_are_refused_naming_the_line() {
        let good = id(1).to_string();
        for (body, why) in [
            ("", "line 1"),
            ("ddc-repl/2 notice", "line 1"),
            ("ddc-repl/1 gossip", "unknown message type"),
            (&format!("ddc-repl/1 notice\n{good}"), "line 2"),
            (&format!("ddc-repl/1 notice\n{good} 0"), "factor"),
            (
                &format!("ddc-repl/1 notice\n{good} 2\n+{} 2", &good[1..]),
                "line 3",
            ),
            ("ddc-repl/1 digest", "one line"),
            ("ddc-repl/1 digest\n1 00 00 00 00", "16 hex"),
            (
                "ddc-repl/1 digest\n1 000000000000000g 0000000000000000 0000000000000000 0000000000000000",
                "not hex",
            ),
            (
                "ddc-repl/1 buckets\n256 1 0000000000000000 0000000000000000 0000000000000000 0000000000000000",
                "bucket number",
            ),
            (
                "ddc-repl/1 buckets\n3 1 0000000000000000 0000000000000000 0000000000000000 0000000000000000\n3 1 0000000000000000 0000000000000000 0000000000000000 0000000000000000",
                "twice",
            ),
            ("ddc-repl/1 listing 2 1", "reply"),
            ("ddc-repl/1 listing 1 1,1", "twice"),
            ("ddc-repl/1 listing 1 1 extra", "unexpected"),
            (&format!("ddc-repl/1 listing 0 1\n{good}x"), "line 2"),
        ] {
            let e = decode(body).unwrap_err();
            assert!(e.contains(why), "{body:?}: {e}");
        }
        let many = format!(
            "ddc-repl/1 notice{}",
            format!("\n{good} 2").repeat(MAX_IDS + 1)
        );
        assert!(decode(&many).unwrap_err().contains("at most 256"));
    }
}
