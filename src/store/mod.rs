//! The offered disk: a crash-safe, content-addressed chunk store with exact quota
//! accounting.
//!
//! Layout under `<data_dir>/store/` (docs/store.md):
//!
//! ```text
//! chunks/<00..ff>/<id>   chunk files, fanned out on the ID's first byte
//! tmp/                   writes in progress; emptied at start (a crash leaves them)
//! quarantine/<id>        chunks that failed verification, never served
//! state/counters.json    accounting snapshot; state/journal continues it (see journal.rs)
//! state/uploads          uploads no manifest has claimed yet, manifests held (uploads.rs)
//! lock                   flock: one process owns the store at a time
//! ```
//!
//! A put streams into a temp file on the same filesystem while hashing, fsyncs it, then
//! under the accounting lock journals the put and renames it into place, and fsyncs the
//! directory (fsyncs follow `storage.fsync`). A reader therefore sees a whole chunk or no
//! chunk. Every read verifies the hash before returning data; a chunk that fails is moved
//! to quarantine, accounted and reported as a [`StoreEvent::ChunkCorrupt`].
//!
//! The store is synchronous and thread-safe (`&self` everywhere); [`AsyncStore`] wraps it
//! for tokio with `spawn_blocking`.

pub mod id;
pub mod journal;
pub mod manifest;
pub mod quota;
pub mod retention;
pub mod uploads;

use crate::config::{Reserve, StorageSection};
pub use id::{ChunkId, Hasher, IdError};
use journal::{Op, Record};
pub use manifest::{Manifest, ManifestError};
use quota::{Counters, FsSpace, NearFull, QuotaError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tracing::{debug, error, info, warn};

/// The largest chunk the store accepts, whatever the config says.
pub const HARD_MAX_CHUNK: u64 = 4 << 20;
/// Journal records between automatic checkpoints: bounds start-up replay.
const CHECKPOINT_EVERY: u64 = 4096;

/// Everything that can go wrong, typed so callers (CLI, protocol) map it to exit codes
/// and status codes without parsing text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("empty chunk: chunks must hold at least one byte")]
    Empty,
    #[error("chunk of {size} bytes is over the {max}-byte limit (storage.chunk_size)")]
    TooLarge { size: u64, max: u64 },
    #[error(transparent)]
    Full(#[from] QuotaError),
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    #[error("chunk {id} is corrupt (its data hashes to {actual}); moved to quarantine")]
    Corrupt { id: ChunkId, actual: ChunkId },
    #[error("data hashes to {actual}, not the expected {expected}; nothing stored")]
    HashMismatch { expected: ChunkId, actual: ChunkId },
    #[error("declared {declared} bytes but the data was {got} bytes; nothing stored")]
    LengthMismatch { declared: u64, got: u64 },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path} is in use by another ddc-edge process (stop the agent, or go through it)")]
    Locked { path: PathBuf },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl StoreError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Things the MQTT layer reports as events.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreEvent {
    ChunkCorrupt {
        id: ChunkId,
        size: u64,
    },
    QuotaNearFull {
        used_bytes: u64,
        quota_bytes: u64,
    },
    /// The verification walk found the counters wrong: a bug, corrected and reported.
    CounterDrift {
        counted: Counters,
        actual: Counters,
    },
    /// A chunk new here: a client's upload, or (`replica`) another node's copy fetched
    /// by replication. The replicator tells the chunk's placed nodes about uploads.
    /// `manifest`: it looks like a file manifest (it may ask for more copies).
    Stored {
        id: ChunkId,
        replica: bool,
        manifest: bool,
    },
    /// A chunk left the store (handed off, garbage-collected). Quarantine is reported
    /// as [`StoreEvent::ChunkCorrupt`].
    Removed {
        id: ChunkId,
    },
}

/// Store settings, resolved from `[storage]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub quota: u64,
    pub reserve: Reserve,
    pub max_chunk: u64,
    pub fsync: bool,
    /// Seconds an upload no manifest claims is kept before GC may delete it.
    pub upload_grace_s: u64,
}

impl StoreConfig {
    pub fn from_section(s: &StorageSection) -> StoreConfig {
        StoreConfig {
            quota: s.quota.0,
            reserve: s.reserve,
            max_chunk: s.chunk_size.0.min(HARD_MAX_CHUNK),
            fsync: s.fsync,
            upload_grace_s: s.upload_grace.0.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored(ChunkId),
    /// The chunk was already there; nothing was written.
    AlreadyPresent(ChunkId),
}

impl PutOutcome {
    pub fn id(&self) -> ChunkId {
        match *self {
            PutOutcome::Stored(id) | PutOutcome::AlreadyPresent(id) => id,
        }
    }
}

/// The figures `store stat --json` and the health message report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    pub used_bytes: u64,
    pub quota_bytes: u64,
    pub chunks: u64,
    pub quarantined: u64,
    pub quarantined_bytes: u64,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    /// What GC could free (abandoned uploads) vs what it never touches.
    #[serde(flatten)]
    pub retention: retention::Breakdown,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubReport {
    pub checked: u64,
    pub bytes: u64,
    pub corrupt: Vec<ChunkId>,
}

struct Inner {
    counters: Counters,
    quarantined: u64,
    quarantined_bytes: u64,
    /// Bytes of puts that passed the quota check and are still being written.
    reserved: u64,
    quota: u64,
    journal: File,
    generation: u64,
    journaled: u64,
    /// Completed changes, so a verification walk can tell whether it raced with one.
    changes: u64,
    near_full: NearFull,
}

/// The chunk store. See the module docs.
pub struct Store {
    root: PathBuf,
    cfg: StoreConfig,
    inner: Mutex<Inner>,
    tmp_seq: AtomicU64,
    events: broadcast::Sender<StoreEvent>,
    /// Lock order: `ledger` before `inner`.
    ledger: Mutex<uploads::Ledger>,
    _lock: File,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    version: u32,
    generation: u64,
    #[serde(flatten)]
    counters: Counters,
}

impl Store {
    /// Opens (creating if needed) the store under `<data_dir>/store`, takes its lock,
    /// clears temp files left by a crash and restores the counters from the snapshot and
    /// journal without walking the chunks.
    pub fn open(data_dir: &Path, cfg: StoreConfig) -> Result<Store> {
        let root = data_dir.join("store");
        for d in ["chunks", "tmp", "quarantine", "state"] {
            fs::create_dir_all(root.join(d)).map_err(StoreError::io(format!(
                "creating {}",
                root.join(d).display()
            )))?;
        }
        let lock = lock_exclusive(&root.join("lock"))?;
        for i in 0..=255u8 {
            let p = root.join("chunks").join(format!("{i:02x}"));
            if !p.exists() {
                fs::create_dir(&p).map_err(StoreError::io(format!("creating {}", p.display())))?;
            }
        }
        let mut removed = 0;
        for e in fs::read_dir(root.join("tmp"))
            .map_err(StoreError::io("reading tmp/"))?
            .flatten()
        {
            if fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(removed, "removed temp files left by an interrupted write");
        }

        let snap_path = root.join("state/counters.json");
        let snapshot: Snapshot = match fs::read(&snap_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Io {
                context: format!("reading {}", snap_path.display()),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Snapshot {
                version: 1,
                generation: 0,
                counters: Counters::default(),
            },
            Err(e) => {
                return Err(StoreError::io(format!("reading {}", snap_path.display()))(
                    e,
                ));
            }
        };
        let journal_path = root.join("state/journal");
        // A journal that cannot be read, or has damaged lines, cannot be trusted for the
        // counters: rebuild them from the chunks (one walk), loudly, instead of reading
        // it as empty.
        let (parsed, damaged) = match fs::read(&journal_path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    let p = journal::parse(&text);
                    let bad = p.bad_lines;
                    (p, (bad > 0).then(|| format!("{bad} unreadable lines")))
                }
                Err(_) => (journal::Parsed::default(), Some("not UTF-8 text".into())),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (journal::Parsed::default(), None),
            Err(e) => (journal::Parsed::default(), Some(e.to_string())),
        };
        let counters = if damaged.is_some() {
            snapshot.counters
        } else if parsed.generation == Some(snapshot.generation) {
            let chunks = root.join("chunks");
            journal::replay(snapshot.counters, &parsed.records, |id| {
                fs::metadata(chunks.join(id.fanout()).join(id.to_string()))
                    .ok()
                    .map(|m| m.len())
            })
        } else {
            snapshot.counters
        };
        let (quarantined, quarantined_bytes) = fs::read_dir(root.join("quarantine"))
            .map_err(StoreError::io("reading quarantine/"))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()));

        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(StoreError::io(format!(
                "opening {}",
                journal_path.display()
            )))?;
        let ledger =
            uploads::Ledger::open(&root.join("state"), cfg.fsync).map_err(|e| StoreError::Io {
                context: format!("reading {}", root.join("state/uploads").display()),
                source: e,
            })?;
        // Deep enough for a burst of uploads between two wake-ups of the replicator; one that
        // falls behind re-reads the inventory (replication::Replicator).
        let (events, _) = broadcast::channel(1024);
        let store = Store {
            cfg: cfg.clone(),
            inner: Mutex::new(Inner {
                counters,
                quarantined,
                quarantined_bytes,
                reserved: 0,
                quota: cfg.quota,
                journal,
                generation: snapshot.generation,
                journaled: parsed.records.len() as u64,
                changes: 0,
                near_full: NearFull::new(90),
            }),
            root,
            tmp_seq: AtomicU64::new(0),
            events,
            ledger: Mutex::new(ledger),
            _lock: lock,
        };
        if let Some(why) = damaged {
            error!(
                journal = %journal_path.display(),
                problem = %why,
                "the accounting journal is damaged; rebuilding the counters from the chunks on disk"
            );
            let mut actual = Counters::default();
            store.for_each(|_, size| {
                actual.used_bytes += size;
                actual.chunks += 1;
                true
            })?;
            store.lock().counters = actual;
            info!(
                used_bytes = actual.used_bytes,
                chunks = actual.chunks,
                "counters rebuilt"
            );
        }
        // Fold the replayed journal into a fresh snapshot so the next start is instant.
        store.checkpoint()?;
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Events for the MQTT layer.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters half-updated (each
        // update is a few plain assignments), so carrying on is safe.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.root
            .join("chunks")
            .join(id.fanout())
            .join(id.to_string())
    }

    /// Changes the quota at runtime (`set_limits` over MQTT). Stored chunks are kept even
    /// if they are now over it; new puts are refused until usage falls below.
    pub fn set_quota(&self, quota: u64) {
        self.lock().quota = quota;
    }

    pub fn fs_space(&self) -> Result<FsSpace> {
        statvfs(&self.root)
    }

    fn reserve_bytes(&self, fs: FsSpace) -> u64 {
        match self.cfg.reserve {
            Reserve::Auto => quota::auto_reserve(fs.total),
            Reserve::Size(b) => b.0,
        }
    }

    pub fn stat(&self) -> Result<Stat> {
        let fs = self.fs_space()?;
        let uploads = self.ledger().uploads();
        let i = self.lock();
        Ok(Stat {
            retention: retention::breakdown(
                &uploads,
                i.counters.used_bytes,
                crate::control::unix_now(),
                self.cfg.upload_grace_s,
            ),
            used_bytes: i.counters.used_bytes,
            quota_bytes: i.quota,
            chunks: i.counters.chunks,
            quarantined: i.quarantined,
            quarantined_bytes: i.quarantined_bytes,
            free_bytes: fs.free,
            reserve_bytes: self.reserve_bytes(fs),
        })
    }

    pub fn has(&self, id: &ChunkId) -> bool {
        self.chunk_path(id).exists()
    }

    /// Size of a stored chunk without reading it.
    pub fn size_of(&self, id: &ChunkId) -> Result<u64> {
        match fs::metadata(self.chunk_path(id)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*id)),
            Err(e) => Err(StoreError::io(format!("stat {id}"))(e)),
        }
    }

    /// Stores `data`, returning its ID.
    pub fn put(&self, data: &[u8]) -> Result<PutOutcome> {
        self.put_verified(data, None)
    }

    /// Stores an in-memory chunk; with `expected`, it must hash to that ID. The hash is
    /// computed on a second thread while the data is written, so a put costs about
    /// max(hash, write) rather than their sum.
    pub fn put_verified(&self, data: &[u8], expected: Option<ChunkId>) -> Result<PutOutcome> {
        let outcome = self.write_verified(data, expected)?;
        if manifest::looks_like(data) {
            self.note_manifest(outcome.id(), data)?;
        }
        Ok(outcome)
    }

    /// A client's upload of one chunk. A chunk new here is pending in the upload ledger
    /// until a manifest claims it (GC may delete it once abandoned for
    /// `storage.upload_grace`); one already pending is touched. Anything else already
    /// here stays as protected as it was.
    pub fn put_upload(&self, data: &[u8], expected: ChunkId, now: u64) -> Result<PutOutcome> {
        loop {
            let outcome = self.put_verified(data, Some(expected))?;
            let mut ledger = self.ledger();
            // GC deletes under the ledger lock: with it held, a chunk that is here now
            // stays until we let go, so "already present" is still true when we say it.
            if !self.has(&expected) {
                continue;
            }
            let is_manifest = ledger.is_manifest(&expected);
            match outcome {
                PutOutcome::Stored(_) if !is_manifest => ledger
                    .upload(expected, data.len() as u64, now)
                    .map_err(StoreError::io("appending to the upload ledger"))?,
                PutOutcome::AlreadyPresent(_) if ledger.is_pending(&expected) => ledger
                    .upload(expected, data.len() as u64, now)
                    .map_err(StoreError::io("appending to the upload ledger"))?,
                _ => {}
            }
            if matches!(outcome, PutOutcome::Stored(_)) {
                let _ = self.events.send(StoreEvent::Stored {
                    id: expected,
                    replica: false,
                    manifest: manifest::looks_like(data),
                });
            }
            return Ok(outcome);
        }
    }

    /// Another node's copy, fetched by replication: a replica is protected, whatever the
    /// ledger said of the same chunk before.
    pub fn put_replica(&self, data: &[u8], expected: ChunkId) -> Result<PutOutcome> {
        let outcome = self.put_verified(data, Some(expected))?;
        self.ledger()
            .claim(&expected)
            .map_err(StoreError::io("appending to the upload ledger"))?;
        if matches!(outcome, PutOutcome::Stored(_)) {
            let _ = self.events.send(StoreEvent::Stored {
                id: expected,
                replica: true,
                manifest: manifest::looks_like(data),
            });
        }
        Ok(outcome)
    }

    /// A client relies on a pending upload being here (it proved it and skips sending
    /// it): restart its grace period. False if the chunk is not here.
    pub fn touch_upload(&self, id: &ChunkId, now: u64) -> Result<bool> {
        let mut ledger = self.ledger();
        if !self.has(id) {
            return Ok(false);
        }
        if let Some(size) = ledger.pending(id).map(|u| u.size) {
            ledger
                .upload(*id, size, now)
                .map_err(StoreError::io("appending to the upload ledger"))?;
        }
        Ok(true)
    }

    /// A manifest is stored here: it and every chunk it lists are claimed, and it joins
    /// the manifests GC checks references against.
    fn note_manifest(&self, id: ChunkId, data: &[u8]) -> Result<()> {
        let Ok(m) = Manifest::decode(data) else {
            return Ok(());
        };
        let mut ledger = self.ledger();
        let io = StoreError::io("appending to the upload ledger");
        (|| {
            ledger.add_manifest(id)?;
            ledger.claim(&id)?;
            for c in &m.chunks {
                ledger.claim(c)?;
            }
            Ok(())
        })()
        .map_err(io)
    }

    fn ledger(&self) -> MutexGuard<'_, uploads::Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `bytes` more would fit under the quota and the reserve now: a put whose
    /// size is known up front is refused before it writes anything.
    pub fn check_room(&self, bytes: u64) -> Result<()> {
        let fs = self.fs_space()?;
        let reserve = self.reserve_bytes(fs);
        let i = self.lock();
        quota::check(i.counters, i.reserved, bytes, i.quota, fs, reserve)?;
        Ok(())
    }

    fn write_verified(&self, data: &[u8], expected: Option<ChunkId>) -> Result<PutOutcome> {
        const PARALLEL_FROM: usize = 64 << 10;
        if data.len() < PARALLEL_FROM {
            return self.put_stream(data, data.len() as u64, expected);
        }
        let size = data.len() as u64;
        self.check_size(size)?;
        if let Some(id) = expected
            && self.has(&id)
        {
            return Ok(PutOutcome::AlreadyPresent(id));
        }
        let reservation = self.reserve(size)?;
        let tmp = self.temp_path();
        let (id, written) = std::thread::scope(|scope| {
            let hasher = scope.spawn(|| ChunkId::of(data));
            let written = (|| -> Result<()> {
                let mut f = File::create(&tmp).map_err(StoreError::io("creating a temp file"))?;
                f.write_all(data)
                    .map_err(StoreError::io("writing a temp file"))?;
                if self.cfg.fsync {
                    f.sync_all()
                        .map_err(StoreError::io("fsync of a temp file"))?;
                }
                Ok(())
            })();
            (hasher.join().expect("hashing does not panic"), written)
        });
        let checked = written.and_then(|()| match expected {
            Some(expected) if expected != id => Err(StoreError::HashMismatch {
                expected,
                actual: id,
            }),
            _ => Ok(()),
        });
        if let Err(e) = checked {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.commit(tmp, id, size, reservation)
    }

    fn check_size(&self, size: u64) -> Result<()> {
        if size == 0 {
            return Err(StoreError::Empty);
        }
        if size > self.cfg.max_chunk {
            return Err(StoreError::TooLarge {
                size,
                max: self.cfg.max_chunk,
            });
        }
        Ok(())
    }

    fn temp_path(&self) -> PathBuf {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}.{seq}", std::process::id()))
    }

    /// Stores exactly `size` bytes from `reader`. With `expected`, the data must hash to
    /// it (a peer's PUT), and an already-present chunk is not read at all.
    pub fn put_stream<R: Read>(
        &self,
        mut reader: R,
        size: u64,
        expected: Option<ChunkId>,
    ) -> Result<PutOutcome> {
        self.check_size(size)?;
        if let Some(id) = expected
            && self.has(&id)
        {
            return Ok(PutOutcome::AlreadyPresent(id));
        }
        let reservation = self.reserve(size)?;
        let tmp = self.temp_path();
        let written = (|| -> Result<ChunkId> {
            let mut f = File::create(&tmp).map_err(StoreError::io("creating a temp file"))?;
            let mut h = Hasher::new();
            let mut buf = vec![0u8; (size as usize).min(256 << 10)];
            let mut got = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StoreError::io("reading chunk data")(e)),
                };
                got += n as u64;
                if got > size {
                    return Err(StoreError::LengthMismatch {
                        declared: size,
                        got,
                    });
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n])
                    .map_err(StoreError::io("writing a temp file"))?;
            }
            if got != size {
                return Err(StoreError::LengthMismatch {
                    declared: size,
                    got,
                });
            }
            let id = h.finish();
            if let Some(expected) = expected
                && expected != id
            {
                return Err(StoreError::HashMismatch {
                    expected,
                    actual: id,
                });
            }
            if self.cfg.fsync {
                f.sync_all()
                    .map_err(StoreError::io("fsync of a temp file"))?;
            }
            Ok(id)
        })();
        let id = match written {
            Ok(id) => id,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.commit(tmp, id, size, reservation)
    }

    /// Makes a fully written, synced temp file visible as chunk `id`: journal, rename,
    /// count, fsync the directory. A chunk that is already there wins; the temp goes.
    fn commit(
        &self,
        tmp: PathBuf,
        id: ChunkId,
        size: u64,
        mut reservation: Reservation<'_>,
    ) -> Result<PutOutcome> {
        let dest = self.chunk_path(&id);
        let outcome = {
            let mut i = self.lock();
            // Settle the reservation in the same critical section that counts the bytes
            // as used: released afterwards, another writer could see this chunk twice
            // (used and in flight) and be refused with `quota` though it fits.
            i.reserved = i
                .reserved
                .saturating_sub(std::mem::take(&mut reservation.size));
            if dest.exists() {
                let _ = fs::remove_file(&tmp);
                PutOutcome::AlreadyPresent(id)
            } else {
                self.journal(&mut i, Op::Put, id, size)?;
                if let Err(e) = fs::rename(&tmp, &dest) {
                    let _ = fs::remove_file(&tmp);
                    return Err(StoreError::io(format!("renaming into {}", dest.display()))(
                        e,
                    ));
                }
                i.counters.used_bytes += size;
                i.counters.chunks += 1;
                i.changes += 1;
                let (used, quota) = (i.counters.used_bytes, i.quota);
                if i.near_full.observe(used, quota) {
                    let _ = self.events.send(StoreEvent::QuotaNearFull {
                        used_bytes: used,
                        quota_bytes: quota,
                    });
                }
                PutOutcome::Stored(id)
            }
        };
        drop(reservation);
        if self.cfg.fsync && matches!(outcome, PutOutcome::Stored(_)) {
            crate::fsutil::sync_dir(dest.parent().expect("chunk paths have a parent"))
                .map_err(StoreError::io("fsync of a chunk directory"))?;
        }
        self.maybe_checkpoint()?;
        Ok(outcome)
    }

    fn reserve(&self, size: u64) -> Result<Reservation<'_>> {
        let fs = self.fs_space()?;
        let reserve = self.reserve_bytes(fs);
        let mut i = self.lock();
        quota::check(i.counters, i.reserved, size, i.quota, fs, reserve)?;
        i.reserved += size;
        Ok(Reservation { store: self, size })
    }

    fn journal(&self, i: &mut Inner, op: Op, id: ChunkId, size: u64) -> Result<()> {
        let line = Record { op, id, size }.encode();
        i.journal
            .write_all(line.as_bytes())
            .map_err(StoreError::io("appending to the journal"))?;
        if self.cfg.fsync {
            i.journal
                .sync_data()
                .map_err(StoreError::io("fsync of the journal"))?;
        }
        i.journaled += 1;
        Ok(())
    }

    fn maybe_checkpoint(&self) -> Result<()> {
        if self.lock().journaled >= CHECKPOINT_EVERY {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes the counters to a new snapshot and restarts the journal. Called at open,
    /// every few thousand changes, and at clean shutdown.
    pub fn checkpoint(&self) -> Result<()> {
        let mut i = self.lock();
        let generation = i.generation + 1;
        let snap = Snapshot {
            version: 1,
            generation,
            counters: i.counters,
        };
        let bytes = serde_json::to_vec(&snap).expect("snapshot serializes");
        crate::fsutil::write_atomic(&self.root.join("state/counters.json"), &bytes)
            .map_err(StoreError::io("writing the accounting snapshot"))?;
        i.journal
            .set_len(0)
            .map_err(StoreError::io("truncating the journal"))?;
        i.journal
            .write_all(format!("G {generation}\n").as_bytes())
            .map_err(StoreError::io("writing the journal header"))?;
        if self.cfg.fsync {
            i.journal
                .sync_data()
                .map_err(StoreError::io("fsync of the journal"))?;
        }
        i.generation = generation;
        i.journaled = 0;
        Ok(())
    }

    /// Reads a chunk whole and verifies it before returning it. One allocation of the
    /// chunk's size; the returned `Bytes` is sliced, not copied, by the data plane.
    pub fn get(&self, id: &ChunkId) -> Result<bytes::Bytes> {
        let path = self.chunk_path(id);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(*id)),
            Err(e) => return Err(StoreError::io(format!("opening chunk {id}"))(e)),
        };
        let len = f
            .metadata()
            .map_err(StoreError::io(format!("stat chunk {id}")))?
            .len();
        if len > HARD_MAX_CHUNK {
            return Err(self.quarantine(id, len, ChunkId([0; 32])));
        }
        // Hash block by block as the data arrives, so the kernel's readahead fetches the
        // next block while this one is hashed.
        let mut buf = vec![0u8; len as usize];
        let mut h = Hasher::new();
        let mut n = 0;
        while n < buf.len() {
            let end = (n + (256 << 10)).min(buf.len());
            match f.read(&mut buf[n..end]) {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[n..n + k]);
                    n += k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io(format!("reading chunk {id}"))(e)),
            }
        }
        buf.truncate(n);
        let actual = h.finish();
        if actual != *id {
            return Err(self.quarantine(id, buf.len() as u64, actual));
        }
        Ok(bytes::Bytes::from(buf))
    }

    /// Moves a chunk that failed verification out of service and accounts for it.
    fn quarantine(&self, id: &ChunkId, size: u64, actual: ChunkId) -> StoreError {
        let from = self.chunk_path(id);
        let to = self.root.join("quarantine").join(id.to_string());
        let mut i = self.lock();
        let size = fs::metadata(&from).map(|m| m.len()).unwrap_or(size);
        if !from.exists() {
            return StoreError::NotFound(*id);
        }
        if let Err(e) = self.journal(&mut i, Op::Quarantine, *id, size) {
            return e;
        }
        if let Err(e) = fs::rename(&from, &to) {
            return StoreError::io(format!("moving chunk {id} to quarantine"))(e);
        }
        i.counters.used_bytes = i.counters.used_bytes.saturating_sub(size);
        i.counters.chunks = i.counters.chunks.saturating_sub(1);
        i.quarantined += 1;
        i.quarantined_bytes += size;
        i.changes += 1;
        drop(i);
        error!(%id, size, "corrupt chunk moved to quarantine");
        let _ = self.events.send(StoreEvent::ChunkCorrupt { id: *id, size });
        StoreError::Corrupt { id: *id, actual }
    }

    /// Deletes a chunk. Frees exactly its size. Callers decide that it may go (retention
    /// model, docs/store.md); the store only keeps the ledger true.
    pub fn delete(&self, id: &ChunkId) -> Result<u64> {
        let mut ledger = self.ledger();
        let io = StoreError::io("appending to the upload ledger");
        ledger
            .claim(id)
            .and_then(|()| ledger.remove_manifest(id))
            .map_err(io)?;
        self.delete_locked(id)
    }

    fn delete_locked(&self, id: &ChunkId) -> Result<u64> {
        let path = self.chunk_path(id);
        let size = {
            let mut i = self.lock();
            let size = match fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(*id));
                }
                Err(e) => return Err(StoreError::io(format!("stat chunk {id}"))(e)),
            };
            self.journal(&mut i, Op::Delete, *id, size)?;
            fs::remove_file(&path).map_err(StoreError::io(format!("deleting chunk {id}")))?;
            i.counters.used_bytes = i.counters.used_bytes.saturating_sub(size);
            i.counters.chunks = i.counters.chunks.saturating_sub(1);
            i.changes += 1;
            size
        };
        if self.cfg.fsync {
            crate::fsutil::sync_dir(path.parent().expect("chunk paths have a parent"))
                .map_err(StoreError::io("fsync of a chunk directory"))?;
        }
        let _ = self.events.send(StoreEvent::Removed { id: *id });
        self.maybe_checkpoint()?;
        Ok(size)
    }

    /// Calls `f` for every stored chunk with its size, in ID order. Stops early if `f`
    /// returns false.
    pub fn for_each(&self, f: impl FnMut(ChunkId, u64) -> bool) -> Result<()> {
        self.walk_from(None, f)
    }

    fn walk_from(
        &self,
        after: Option<ChunkId>,
        mut f: impl FnMut(ChunkId, u64) -> bool,
    ) -> Result<()> {
        let start = after.map(|a| a.0[0]).unwrap_or(0);
        for b in start..=255u8 {
            let dir = self.root.join("chunks").join(format!("{b:02x}"));
            let mut entries: Vec<(ChunkId, u64)> = fs::read_dir(&dir)
                .map_err(StoreError::io(format!("reading {}", dir.display())))?
                .flatten()
                .filter_map(|e| {
                    let id: ChunkId = e.file_name().to_str()?.parse().ok()?;
                    Some((id, e.metadata().ok()?.len()))
                })
                .filter(|(id, _)| after.is_none_or(|a| *id > a))
                .collect();
            entries.sort_unstable_by_key(|(id, _)| *id);
            for (id, size) in entries {
                if !f(id, size) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The stored chunks whose keys ([`ChunkId::key`]) are among `keys`, in ID order:
    /// how the replication planner, which keeps 8 bytes per chunk, gets full IDs back.
    /// Reads one fan-out directory per distinct first byte.
    pub fn ids_with_keys(&self, keys: &[u64]) -> Result<Vec<ChunkId>> {
        let wanted: std::collections::HashSet<u64> = keys.iter().copied().collect();
        let mut dirs: Vec<u8> = keys.iter().map(|k| (k >> 56) as u8).collect();
        dirs.sort_unstable();
        dirs.dedup();
        let mut out = Vec::new();
        for b in dirs {
            let dir = self.root.join("chunks").join(format!("{b:02x}"));
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("reading {}", dir.display()))(e)),
            };
            out.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<ChunkId>().ok())
                    .filter(|id| wanted.contains(&id.key())),
            );
        }
        out.sort_unstable();
        Ok(out)
    }

    /// One page of the listing: up to `limit` chunks with IDs above `after`.
    pub fn list_page(&self, after: Option<ChunkId>, limit: usize) -> Result<Vec<(ChunkId, u64)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.walk_from(after, |id, size| {
            out.push((id, size));
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Verifies every chunk, reading at most `rate` bytes per second (0: unlimited).
    /// Corrupt chunks are quarantined and listed in the report.
    pub fn scrub(&self, rate: u64) -> Result<ScrubReport> {
        let mut ids = Vec::new();
        self.for_each(|id, _| {
            ids.push(id);
            true
        })?;
        let mut report = ScrubReport::default();
        let started = Instant::now();
        for id in ids {
            match self.get(&id) {
                Ok(b) => report.bytes += b.len() as u64,
                Err(StoreError::Corrupt { id, .. }) => report.corrupt.push(id),
                Err(StoreError::NotFound(_)) => continue, // deleted meanwhile
                Err(e) => return Err(e),
            }
            report.checked += 1;
            if rate > 0 {
                let due = Duration::from_secs_f64(report.bytes as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok(report)
    }

    /// Walks the chunks and compares the total with the counters. Drift is a bug: it is
    /// logged loudly, reported as an event and corrected. Returns `None` when a change
    /// raced with the walk (the result would be meaningless; try again later).
    pub fn verify_counters(&self) -> Result<Option<Counters>> {
        let before = self.lock().changes;
        let mut actual = Counters::default();
        self.for_each(|_, size| {
            actual.used_bytes += size;
            actual.chunks += 1;
            true
        })?;
        let mut i = self.lock();
        if i.changes != before {
            return Ok(None);
        }
        if i.counters != actual {
            let counted = i.counters;
            error!(
                ?counted,
                ?actual,
                "STORE ACCOUNTING DRIFT: counters disagreed with the chunks on disk; corrected (this is a bug, please report it)"
            );
            i.counters = actual;
            drop(i);
            let _ = self
                .events
                .send(StoreEvent::CounterDrift { counted, actual });
            self.checkpoint()?;
        }
        Ok(Some(actual))
    }

    /// One GC round at `now` (unix seconds): deletes the uploads the retention model
    /// calls abandoned (docs/store.md) and nothing else. Returns (chunks, bytes) freed.
    pub fn gc(&self, now: u64) -> Result<(u64, u64)> {
        let grace = self.cfg.upload_grace_s;
        let uploads = self.ledger().uploads();
        if !uploads
            .iter()
            .any(|u| retention::is_abandoned(u, false, now, grace))
        {
            return Ok((0, 0));
        }
        // Candidates exist: learn what the manifests held here reference. A manifest
        // that cannot be read (gone, corrupt) references nothing we can check; the
        // candidates it might have named are deleted only if no readable one names them.
        let mut referenced = std::collections::HashSet::new();
        for m in self.ledger().manifests() {
            match self.get(&m) {
                Ok(bytes) => {
                    if let Ok(man) = Manifest::decode(&bytes) {
                        referenced.extend(man.chunks);
                    }
                }
                Err(StoreError::NotFound(_)) => {
                    let _ = self.ledger().remove_manifest(&m);
                }
                Err(e) => warn!(manifest = %m, error = %e, "manifest unreadable during GC"),
            }
        }
        let garbage = retention::select_garbage(&uploads, |id| referenced.contains(id), now, grace);
        let (mut n, mut freed) = (0, 0);
        for (id, _, why) in garbage {
            let mut ledger = self.ledger();
            // Still pending and untouched since we looked (a client may rely on it now).
            let same = ledger
                .pending(&id)
                .is_some_and(|u| retention::is_abandoned(&u, false, now, grace));
            if !same {
                continue;
            }
            ledger
                .claim(&id)
                .map_err(StoreError::io("appending to the upload ledger"))?;
            match self.delete_locked(&id) {
                Ok(size) => {
                    n += 1;
                    freed += size;
                    debug!(%id, reason = ?why, "garbage-collected");
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if n > 0 {
            info!(
                chunks = n,
                bytes = freed,
                grace_s = grace,
                "garbage-collected abandoned uploads (no manifest claimed them within the grace period)"
            );
        }
        Ok((n, freed))
    }

    /// Stores a file: its chunks, then its manifest. Returns the file ID. All or
    /// nothing: a put that fails (quota, disk, a read error) deletes the chunks it added,
    /// so the store is left as it was.
    pub fn put_file<R: Read>(&self, reader: R, chunk_size: u32) -> Result<ChunkId> {
        let added = Mutex::new(Vec::new());
        let mut failed = None;
        let result = (|| {
            let split = manifest::split(reader, chunk_size, self.cfg.max_chunk, |c| {
                self.put_tracked(c, &added).map_err(|e| {
                    let message = ManifestError::Io(io::Error::other(e.to_string()));
                    failed = Some(e);
                    message
                })
            });
            // The store's own error (say, `quota`) rather than its text.
            let m = match (split, failed.take()) {
                (Err(_), Some(e)) => return Err(e),
                (r, _) => r?,
            };
            self.put_tracked(&m.encode(), &added)
        })();
        self.roll_back_on_error(result, added)
    }

    /// A put that remembers what it added, for [`roll_back_on_error`](Self::roll_back_on_error).
    fn put_tracked(&self, data: &[u8], added: &Mutex<Vec<ChunkId>>) -> Result<ChunkId> {
        let o = self.put(data)?;
        if let PutOutcome::Stored(id) = o {
            added.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        }
        Ok(o.id())
    }

    fn roll_back_on_error(
        &self,
        result: Result<ChunkId>,
        added: Mutex<Vec<ChunkId>>,
    ) -> Result<ChunkId> {
        if result.is_err() {
            let added = added.into_inner().unwrap_or_else(|p| p.into_inner());
            let mut freed = 0;
            for id in &added {
                freed += self.delete(id).unwrap_or(0);
            }
            if !added.is_empty() {
                info!(
                    chunks = added.len(),
                    bytes = freed,
                    "put failed: removed the chunks it had added"
                );
            }
        }
        result
    }

    /// Like [`put_file`](Self::put_file) with `jobs` chunk writes in flight at once (a
    /// bulk import on a disk that likes parallel writes). Memory stays at about `2 x jobs`
    /// chunk buffers.
    pub fn put_file_jobs<R: Read>(
        &self,
        mut reader: R,
        chunk_size: u32,
        jobs: usize,
    ) -> Result<ChunkId> {
        let jobs = jobs.max(1);
        if jobs == 1 {
            return self.put_file(reader, chunk_size);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(jobs);
        let rx = Mutex::new(rx);
        let added = Mutex::new(Vec::new());
        let results: Mutex<Vec<(usize, Result<ChunkId>)>> = Mutex::new(Vec::new());
        let counted = std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| {
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((index, buf)) = next else { return };
                        let r = self.put_tracked(&buf, &added);
                        results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((index, r));
                    }
                });
            }
            let mut index = 0;
            let mut size = 0u64;
            let read = (|| -> io::Result<()> {
                loop {
                    let mut buf = vec![0u8; chunk_size as usize];
                    let mut n = 0;
                    while n < buf.len() {
                        match reader.read(&mut buf[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    size += n as u64;
                    if tx.send((index, buf)).is_err() {
                        return Ok(());
                    }
                    index += 1;
                    if n < chunk_size as usize {
                        return Ok(());
                    }
                }
            })();
            drop(tx);
            read.map(|()| (index, size))
        })
        .map_err(StoreError::io("reading the file"));
        let result = (|| {
            let (count, size) = counted?;
            let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
            results.sort_unstable_by_key(|(i, _)| *i);
            let mut chunks = Vec::with_capacity(count);
            for (_, r) in results {
                chunks.push(r?);
            }
            let m = Manifest {
                ddc_manifest: manifest::VERSION,
                size,
                chunk_size,
                chunks,
                replicas: None,
            };
            self.put_tracked(&m.encode(), &added)
        })();
        self.roll_back_on_error(result, added)
    }

    /// Reads a file back by its manifest ID, verifying every chunk.
    pub fn get_file<W: Write>(&self, file_id: &ChunkId, out: W) -> Result<u64> {
        let m = Manifest::decode(&self.get(file_id)?)?;
        Ok(manifest::join(&m, out, |index, id| {
            self.get(id).map_err(|e| ManifestError::Fetch {
                index,
                id: *id,
                message: e.to_string(),
            })
        })?)
    }
}

/// Releases a quota reservation however the put ends.
struct Reservation<'a> {
    store: &'a Store,
    size: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut i = self.store.lock();
        i.reserved = i.reserved.saturating_sub(self.size);
    }
}

fn lock_exclusive(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io(format!("opening {}", path.display())))?;
    // flock(2) underneath, like before: released when the process goes, however it goes.
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.parent().unwrap_or(path).to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::io(format!("locking {}", path.display()))(e))
        }
    }
}

fn statvfs(path: &Path) -> Result<FsSpace> {
    let s = rustix::fs::statvfs(path)
        .map_err(|e| StoreError::io(format!("statvfs {}", path.display()))(e.into()))?;
    Ok(FsSpace {
        total: s.f_blocks.saturating_mul(s.f_frsize),
        free: s.f_bavail.saturating_mul(s.f_frsize),
    })
}

/// The store for async code: each call runs on tokio's blocking pool.
#[derive(Clone)]
pub struct AsyncStore(pub Arc<Store>);

impl AsyncStore {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let s = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Io {
                context: "store task".into(),
                source: io::Error::other(e.to_string()),
            })?
    }

    pub async fn put(&self, data: bytes::Bytes, expected: Option<ChunkId>) -> Result<PutOutcome> {
        self.run(move |s| s.put_verified(&data, expected)).await
    }

    /// A client's upload ([`Store::put_upload`]).
    pub async fn put_upload(&self, data: bytes::Bytes, expected: ChunkId) -> Result<PutOutcome> {
        let now = crate::control::unix_now();
        self.run(move |s| s.put_upload(&data, expected, now)).await
    }

    /// Answers a proof-of-possession challenge from the stored (and verified) chunk.
    /// `for_client`: a client that proves a pending upload will rely on it, so its grace
    /// period starts again. `Ok(None)`: the range does not fit the chunk.
    pub async fn prove(
        &self,
        challenge: crate::protocol::Challenge,
        for_client: bool,
    ) -> Result<Option<[u8; 32]>> {
        let now = crate::control::unix_now();
        self.run(move |s| {
            if for_client && !s.touch_upload(&challenge.id, now)? {
                return Err(StoreError::NotFound(challenge.id));
            }
            Ok(challenge.answer(&s.get(&challenge.id)?))
        })
        .await
    }

    pub async fn get(&self, id: ChunkId) -> Result<bytes::Bytes> {
        self.run(move |s| s.get(&id)).await
    }

    pub async fn has(&self, ids: Vec<ChunkId>) -> Result<Vec<bool>> {
        self.run(move |s| Ok(ids.iter().map(|id| s.has(id)).collect()))
            .await
    }

    pub async fn delete(&self, id: ChunkId) -> Result<u64> {
        self.run(move |s| s.delete(&id)).await
    }

    pub async fn list_page(
        &self,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, u64)>> {
        self.run(move |s| s.list_page(after, limit)).await
    }

    pub async fn stat(&self) -> Result<Stat> {
        self.run(|s| s.stat()).await
    }

    pub async fn scrub(&self, rate: u64) -> Result<ScrubReport> {
        self.run(move |s| s.scrub(rate)).await
    }
}

#[cfg(test)]
mod tests;
