//! The upload ledger (`state/uploads`): which chunks arrived in a client's upload that
//! no manifest has claimed yet, and which manifests the node holds. It is what makes GC
//! safe: only chunks listed here can ever be garbage ([`super::retention`]), so client
//! data, replicas and local files are protected by default.
//!
//! An append-only log, one record a line:
//!
//! ```text
//! U <id> <size> <unix-secs>   a client stored (or touched) chunk <id>: pending
//! C <id>                      <id> is claimed (a manifest references it, it became a
//!                             replica, or it was deleted): no longer pending
//! M <id>                      <id> is a manifest held here
//! X <id>                      manifest <id> is gone
//! ```
//!
//! Loading is strict: a torn last line (a crash mid-append) is dropped, anything else
//! that does not parse is an error naming the file and line, never an empty ledger.
//! Losing a `U` line only leaks a chunk (it stays protected); a `C` line is written
//! (and synced, with `storage.fsync`) before the claim is acted on.

use super::id::ChunkId;
use super::retention::Upload;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: line {line}: {what}; the upload ledger is damaged. Remove the file to start afresh \
     (pending uploads are then kept for good instead of expiring; nothing is deleted)"
)]
pub struct LedgerError {
    pub path: PathBuf,
    pub line: usize,
    pub what: String,
}

/// The parsed ledger: pending uploads and known manifests.
#[derive(Debug, Default, PartialEq)]
pub struct State {
    pub pending: HashMap<ChunkId, (u64, u64)>,
    pub manifests: HashSet<ChunkId>,
}

/// Parses a whole ledger. Pure: the file's bytes in, the state or the first bad line out.
pub fn parse(text: &str) -> Result<(State, usize), (usize, String)> {
    let mut s = State::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut lines = 0;
    for (n, line) in complete.lines().enumerate() {
        lines += 1;
        let f: Vec<&str> = line.split(' ').collect();
        let id = |s: &str| {
            s.parse::<ChunkId>()
                .map_err(|e| (n + 1, format!("bad chunk ID: {e}")))
        };
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| (n + 1, format!("expected a number, got {s:?}")))
        };
        match f.as_slice() {
            ["U", i, size, t] => {
                s.pending.insert(id(i)?, (num(size)?, num(t)?));
            }
            ["C", i] => {
                s.pending.remove(&id(i)?);
            }
            ["M", i] => {
                s.manifests.insert(id(i)?);
            }
            ["X", i] => {
                s.manifests.remove(&id(i)?);
            }
            _ => return Err((n + 1, format!("unknown record {line:?}"))),
        }
    }
    Ok((s, lines))
}

fn encode(state: &State) -> String {
    let mut out = String::new();
    for (id, (size, t)) in &state.pending {
        out.push_str(&format!("U {id} {size} {t}\n"));
    }
    for id in &state.manifests {
        out.push_str(&format!("M {id}\n"));
    }
    out
}

pub struct Ledger {
    path: PathBuf,
    file: File,
    fsync: bool,
    state: State,
}

impl Ledger {
    /// Opens `<state_dir>/uploads`, compacting it when most of its lines are history.
    pub fn open(state_dir: &Path, fsync: bool) -> Result<Ledger, io::Error> {
        let path = state_dir.join("uploads");
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8(b).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    LedgerError {
                        path: path.clone(),
                        line: 0,
                        what: "not UTF-8 text".into(),
                    },
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let (state, lines) = parse(&text).map_err(|(line, what)| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                LedgerError {
                    path: path.clone(),
                    line,
                    what,
                },
            )
        })?;
        let live = state.pending.len() + state.manifests.len();
        if lines > 2 * live + 1024 || !text.is_empty() && !text.ends_with('\n') {
            crate::fsutil::write_atomic(&path, encode(&state).as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Ledger {
            path,
            file,
            fsync,
            state,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, line: &str) -> io::Result<()> {
        self.file.write_all(line.as_bytes())?;
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// A client stored `id` (new here) or touched a pending one: pending from `now`.
    pub fn upload(&mut self, id: ChunkId, size: u64, now: u64) -> io::Result<()> {
        self.append(&format!("U {id} {size} {now}\n"))?;
        self.state.pending.insert(id, (size, now));
        Ok(())
    }

    pub fn is_pending(&self, id: &ChunkId) -> bool {
        self.state.pending.contains_key(id)
    }

    /// One pending upload, without copying the rest.
    pub fn pending(&self, id: &ChunkId) -> Option<Upload> {
        self.state.pending.get(id).map(|(size, touched)| Upload {
            id: *id,
            size: *size,
            touched: *touched,
        })
    }

    pub fn is_manifest(&self, id: &ChunkId) -> bool {
        self.state.manifests.contains(id)
    }

    /// `id` is no longer an upload in progress (claimed, replicated or deleted).
    pub fn claim(&mut self, id: &ChunkId) -> io::Result<()> {
        if self.state.pending.contains_key(id) {
            self.append(&format!("C {id}\n"))?;
            self.state.pending.remove(id);
        }
        Ok(())
    }

    pub fn add_manifest(&mut self, id: ChunkId) -> io::Result<()> {
        if !self.state.manifests.contains(&id) {
            self.append(&format!("M {id}\n"))?;
            self.state.manifests.insert(id);
        }
        Ok(())
    }

    pub fn remove_manifest(&mut self, id: &ChunkId) -> io::Result<()> {
        if self.state.manifests.contains(id) {
            self.append(&format!("X {id}\n"))?;
            self.state.manifests.remove(id);
        }
        Ok(())
    }

    pub fn manifests(&self) -> Vec<ChunkId> {
        self.state.manifests.iter().copied().collect()
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.state
            .pending
            .iter()
            .map(|(id, (size, touched))| Upload {
                id: *id,
                size: *size,
                touched: *touched,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn replays_records_and_drops_a_torn_last_line() {
        let text = format!(
            "U {} 10 5\nU {} 20 6\nC {}\nM {}\nU {} 3",
            id(1),
            id(2),
            id(1),
            id(9),
            id(3)
        );
        let (s, lines) = parse(&text).unwrap();
        assert_eq!(lines, 4);
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.pending[&id(2)], (20, 6));
        assert!(s.manifests.contains(&id(9)));
    }

    #[test]
    fn a_damaged_line_is_an_error_naming_it_not_an_empty_ledger() {
        let text = format!("U {} 10 5\ngarbage here\n", id(1));
        assert_eq!(parse(&text).unwrap_err().0, 2);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("uploads"), text).unwrap();
        let e = Ledger::open(d.path(), false).err().unwrap().to_string();
        assert!(e.contains("uploads: line 2"), "{e}");
        assert!(e.contains("Remove the file"), "{e}");
    }

    #[test]
    fn survives_reopen_and_compacts() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut l = Ledger::open(d.path(), true).unwrap();
            for n in 0..200u8 {
                l.upload(id(n), 1, 7).unwrap();
                l.claim(&id(n)).unwrap();
            }
            for _ in 0..3000 {
                l.add_manifest(id(250)).unwrap();
                l.remove_manifest(&id(250)).unwrap();
            }
            l.upload(id(201), 5, 9).unwrap();
            l.add_manifest(id(202)).unwrap();
        }
        let l = Ledger::open(d.path(), true).unwrap();
        assert_eq!(l.uploads().len(), 1);
        assert_eq!(l.manifests(), vec![id(202)]);
        let text = std::fs::read_to_string(d.path().join("uploads")).unwrap();
        assert_eq!(text.lines().count(), 2, "compacted: {text}");
    }
}
