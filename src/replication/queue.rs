//! The replication queue: chunks this node should fetch, with where to fetch them.
//!
//! Persistent and bounded: an append-only log in `<data_dir>/replication/queue`
//! (`A <id> <from> <size>` to add, `D <id>` when done), replayed at start and compacted
//! when it grows, so a restart resumes where it stopped; at most `max` entries, so memory
//! stays bounded however much the fleet holds (anti-entropy finds what did not fit).
//! Losing the tail to a power cut only delays work: anti-entropy rediscovers it.

use crate::store::ChunkId;
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tracing::error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: ChunkId,
    /// A node that had it when the item was queued.
    pub from: String,
    pub size: u64,
    pub attempts: u32,
}

pub struct Queue {
    path: PathBuf,
    log: File,
    items: VecDeque<Item>,
    ids: HashSet<ChunkId>,
    max: usize,
    log_lines: usize,
}

/// Attempts before an item is dropped (anti-entropy finds it again if still needed).
pub const MAX_ATTEMPTS: u32 = 5;

impl Queue {
    pub fn open(dir: &Path, max: usize) -> io::Result<Queue> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("queue");
        // The queue is derived state (anti-entropy finds what is missing again), so a
        // damaged file is rebuilt rather than trusted: loudly, never silently emptied.
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8(b).unwrap_or_else(|_| {
                error!(file = %path.display(), "replication queue is not UTF-8 text; starting empty, anti-entropy rebuilds it");
                String::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", path.display()),
                ));
            }
        };
        let mut items: VecDeque<Item> = VecDeque::new();
        let mut ids = HashSet::new();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let mut lines = 0;
        let mut bad = 0;
        for line in complete.lines() {
            lines += 1;
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["A", id, from, size] => match (id.parse::<ChunkId>(), size.parse()) {
                    (Ok(id), Ok(size)) => {
                        if items.len() < max && ids.insert(id) {
                            items.push_back(Item {
                                id,
                                from: from.to_string(),
                                size,
                                attempts: 0,
                            });
                        }
                    }
                    _ => bad += 1,
                },
                ["D", id] => match id.parse::<ChunkId>() {
                    Ok(id) => {
                        if ids.remove(&id) {
                            items.retain(|i| i.id != id);
                        }
                    }
                    Err(_) => bad += 1,
                },
                _ => bad += 1,
            }
        }
        if bad > 0 {
            error!(
                file = %path.display(),
                bad_lines = bad,
                "replication queue has damaged lines; starting empty, anti-entropy rebuilds it"
            );
            items.clear();
            ids.clear();
        }
        let log = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut q = Queue {
            path,
            log,
            items,
            ids,
            max,
            log_lines: lines,
        };
        q.compact()?;
        Ok(q)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.ids.contains(id)
    }

    /// Adds an item unless it is queued already or the queue is full.
    pub fn push(&mut self, id: ChunkId, from: &str, size: u64) -> io::Result<bool> {
        if self.ids.contains(&id) || self.items.len() >= self.max {
            return Ok(false);
        }
        writeln!(self.log, "A {id} {from} {size}")?;
        self.log_lines += 1;
        self.ids.insert(id);
        self.items.push_back(Item {
            id,
            from: from.to_string(),
            size,
            attempts: 0,
        });
        Ok(true)
    }

    /// Every item, oldest first.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.iter()
    }

    /// The next item, without removing it.
    pub fn front(&self) -> Option<&Item> {
        self.items.front()
    }

    /// The front item is done (or abandoned).
    pub fn done(&mut self, id: &ChunkId) -> io::Result<()> {
        if !self.ids.remove(id) {
            return Ok(());
        }
        self.items.retain(|i| i.id != *id);
        writeln!(self.log, "D {id}")?;
        self.log_lines += 1;
        if self.log_lines > 2 * self.items.len() + 1024 {
            self.compact()?;
        }
        Ok(())
    }

    /// The front item failed: it goes to the back, or is dropped after MAX_ATTEMPTS.
    /// Returns false when dropped.
    pub fn retry_later(&mut self, id: &ChunkId, from: Option<&str>) -> io::Result<bool> {
        let Some(pos) = self.items.iter().position(|i| i.id == *id) else {
            return Ok(false);
        };
        let mut item = self.items.remove(pos).expect("position is valid");
        item.attempts += 1;
        if item.attempts >= MAX_ATTEMPTS {
            self.ids.remove(id);
            writeln!(self.log, "D {id}")?;
            self.log_lines += 1;
            return Ok(false);
        }
        if let Some(f) = from {
            item.from = f.to_string();
        }
        // Persist the move to the back (and the new source).
        writeln!(
            self.log,
            "D {id}\nA {} {} {}",
            item.id, item.from, item.size
        )?;
        self.log_lines += 2;
        self.items.push_back(item);
        Ok(true)
    }

    fn compact(&mut self) -> io::Result<()> {
        let mut text = String::new();
        for i in &self.items {
            text.push_str(&format!("A {} {} {}\n", i.id, i.from, i.size));
        }
        crate::fsutil::write_atomic(&self.path, text.as_bytes())?;
        self.log = OpenOptions::new().append(true).open(&self.path)?;
        self.log_lines = self.items.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn survives_reopen_and_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut q = Queue::open(d.path(), 3).unwrap();
            assert!(q.push(id(1), "a", 10).unwrap());
            assert!(!q.push(id(1), "b", 10).unwrap(), "no duplicates");
            assert!(q.push(id(2), "a", 20).unwrap());
            assert!(q.push(id(3), "a", 30).unwrap());
            assert!(!q.push(id(4), "a", 40).unwrap(), "bounded");
            q.done(&id(2)).unwrap();
        }
        let mut q = Queue::open(d.path(), 3).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.front().unwrap().id, id(1));
        assert!(q.retry_later(&id(1), Some("c")).unwrap());
        assert_eq!(q.front().unwrap().id, id(3));
        for _ in 0..MAX_ATTEMPTS {
            q.retry_later(&id(3), None).unwrap();
        }
        assert!(!q.contains(&id(3)), "dropped after too many attempts");
        drop(q);
        let q = Queue::open(d.path(), 3).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.front().unwrap().from, "c");
    }

    #[test]
    fn torn_tail_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("queue"), format!("A {} a 5\nA 12", id(9))).unwrap();
        let q = Queue::open(d.path(), 10).unwrap();
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_damaged_queue_is_rebuilt_loudly_not_half_trusted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("queue"),
            format!(
                "A {} a 5
\u{1}garbage
A {} b 6
",
                id(1),
                id(2)
            ),
        )
        .unwrap();
        let q = Queue::open(d.path(), 10).unwrap();
        assert!(q.is_empty(), "anti-entropy finds what is missing again");
        std::fs::write(d.path().join("queue"), [0xff, 0xfe, b'\n']).unwrap();
        assert!(Queue::open(d.path(), 10).unwrap().is_empty());
    }
}
