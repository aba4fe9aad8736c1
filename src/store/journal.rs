//! Exact accounting across crashes without walking every chunk at start-up.
//!
//! The counters live in a snapshot (`state/counters.json`, with a generation number) plus
//! an append-only journal (`state/journal`, whose first line names the generation it
//! continues). Every change to the set of chunks is journaled *before* it becomes visible
//! (before the rename or unlink), under the store's accounting lock. At start-up the
//! journal is replayed: for each chunk it mentions, the first record says whether the
//! chunk existed at the snapshot (a put is only journaled for an absent chunk, a delete or
//! quarantine for a present one) and one `stat` says whether it exists now. So start-up
//! costs one stat per journaled operation since the last checkpoint, whatever the store's
//! size, and the result is exact wherever a crash fell.
//!
//! A checkpoint writes a new snapshot with generation g+1, then restarts the journal with
//! a `G g+1` header. A crash between the two leaves a journal of generation g, which the
//! next start ignores because the snapshot already contains it.

use super::id::ChunkId;
use super::quota::Counters;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A chunk that was absent is being stored.
    Put,
    /// A chunk that was present is being deleted.
    Delete,
    /// A chunk that was present is being moved to quarantine.
    Quarantine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub op: Op,
    pub id: ChunkId,
    pub size: u64,
}

impl Record {
    /// One line: `P <id> <size>\n` (D for delete, Q for quarantine).
    pub fn encode(&self) -> String {
        let c = match self.op {
            Op::Put => 'P',
            Op::Delete => 'D',
            Op::Quarantine => 'Q',
        };
        format!("{c} {} {}\n", self.id, self.size)
    }
}

/// A parsed journal: its generation and complete records. A torn last line (a crash in
/// the middle of an append) is dropped: its operation never became visible.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub generation: Option<u64>,
    pub records: Vec<Record>,
    /// Lines that could not be parsed (never expected; reported loudly by the store).
    pub bad_lines: usize,
}

pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (i, line) in complete.lines().enumerate() {
        let mut f = line.split(' ');
        let rec = match (f.next(), f.next(), f.next(), f.next()) {
            (Some("G"), Some(g), None, None) if i == 0 => {
                out.generation = g.parse().ok();
                continue;
            }
            (Some(op), Some(id), Some(size), None) => {
                let op = match op {
                    "P" => Some(Op::Put),
                    "D" => Some(Op::Delete),
                    "Q" => Some(Op::Quarantine),
                    _ => None,
                };
                op.zip(id.parse().ok())
                    .zip(size.parse().ok())
                    .map(|((op, id), size)| Record { op, id, size })
            }
            _ => None,
        };
        match rec {
            Some(r) => out.records.push(r),
            None => out.bad_lines += 1,
        }
    }
    out
}

/// Counters after the journaled operations, given the snapshot they continue and whether
/// each mentioned chunk exists now (with its size). Pure: the caller does the stats.
pub fn replay(
    snapshot: Counters,
    records: &[Record],
    mut present: impl FnMut(&ChunkId) -> Option<u64>,
) -> Counters {
    // First record per chunk tells whether it was there at the snapshot.
    let mut prior: HashMap<ChunkId, Option<u64>> = HashMap::new();
    for r in records {
        prior.entry(r.id).or_insert(match r.op {
            Op::Put => None,
            Op::Delete | Op::Quarantine => Some(r.size),
        });
    }
    let mut c = snapshot;
    for (id, before) in prior {
        if let Some(size) = before {
            c.used_bytes = c.used_bytes.saturating_sub(size);
            c.chunks = c.chunks.saturating_sub(1);
        }
        if let Some(size) = present(&id) {
            c.used_bytes += size;
            c.chunks += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let recs = [
            Record {
                op: Op::Put,
                id: id(1),
                size: 10,
            },
            Record {
                op: Op::Delete,
                id: id(2),
                size: 20,
            },
            Record {
                op: Op::Quarantine,
                id: id(3),
                size: 30,
            },
        ];
        let mut text = "G 7\n".to_string();
        for r in &recs {
            text.push_str(&r.encode());
        }
        text.push_str("P 0101"); // torn: no newline
        let p = parse(&text);
        assert_eq!(p.generation, Some(7));
        assert_eq!(p.records, recs);
        assert_eq!(p.bad_lines, 0);
        assert_eq!(parse("G 1\nX y z\n").bad_lines, 1);
    }

    #[test]
    fn replay_is_exact_wherever_the_crash_fell() {
        let snap = Counters {
            used_bytes: 1000,
            chunks: 10,
        };
        let put = |n, s| Record {
            op: Op::Put,
            id: id(n),
            size: s,
        };
        let del = |n, s| Record {
            op: Op::Delete,
            id: id(n),
            size: s,
        };
        // Put journaled, crash before the rename: not there, not counted.
        assert_eq!(replay(snap, &[put(1, 5)], |_| None), snap);
        // Put journaled and renamed, crash before the counters: counted.
        let c = replay(snap, &[put(1, 5)], |_| Some(5));
        assert_eq!(
            c,
            Counters {
                used_bytes: 1005,
                chunks: 11
            }
        );
        // Delete journaled, crash before the unlink: still there, still counted.
        assert_eq!(replay(snap, &[del(2, 100)], |_| Some(100)), snap);
        // Delete done.
        assert_eq!(
            replay(snap, &[del(2, 100)], |_| None),
            Counters {
                used_bytes: 900,
                chunks: 9
            }
        );
        // Put, delete, put again of the same chunk: only the final state matters.
        let c = replay(snap, &[put(1, 5), del(1, 5), put(1, 5)], |_| Some(5));
        assert_eq!(
            c,
            Counters {
                used_bytes: 1005,
                chunks: 11
            }
        );
        let c = replay(snap, &[put(1, 5), del(1, 5)], |_| None);
        assert_eq!(c, snap);
    }
}
