//! Per-file replication factors.
//!
//! A client may ask for more copies of a file than the fleet default (`ddc-edge put
//! --replicas 3`); the factor rides in the file's manifest (`"replicas": 3`). A node that
//! stores such a manifest records the factor for the manifest and every chunk it lists;
//! notices carry each chunk's factor to its new holders (and the table is still served
//! to 0.1 peers by the FACTORS request); placement then uses each chunk's own factor. Factors are capped by
//! `replication.max_factor`. Only chunks above the default are recorded, in an
//! append-only file (`<data_dir>/replication/factors`) loaded at start.

use crate::store::{ChunkId, Manifest};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

pub struct Factors {
    default: u8,
    max: u8,
    inner: Mutex<(BTreeMap<ChunkId, u8>, File)>,
}

impl Factors {
    pub fn open(dir: &Path, default: u8, max: u8) -> io::Result<Factors> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("factors");
        // Factors are not derived state: losing one would let handoff trim a file below
        // the copies its owner asked for. A damaged file stops the start, naming it.
        let damaged = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {what}; the per-file factors file is damaged. Fix the line, or remove \
                     the file (files stored with --replicas then keep replication.factor copies \
                     until their factors are learned again from manifests and peers)",
                    path.display()
                ),
            )
        };
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8(b).map_err(|_| damaged("not UTF-8 text".into()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let mut map = BTreeMap::new();
        for (n, line) in complete.lines().enumerate() {
            let Some((id, f)) = line.strip_prefix("F ").and_then(|l| l.split_once(' ')) else {
                return Err(damaged(format!("line {}: unknown record {line:?}", n + 1)));
            };
            let (Ok(id), Ok(f)) = (id.parse::<ChunkId>(), f.parse::<u8>()) else {
                return Err(damaged(format!("line {}: bad record {line:?}", n + 1)));
            };
            let e = map.entry(id).or_insert(f);
            *e = (*e).max(f);
        }
        if complete.len() != text.len() {
            // A torn last line (a crash mid-append): drop it before appending again.
            crate::fsutil::write_atomic(&path, complete.as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Factors {
            default,
            max: max.max(default),
            inner: Mutex::new((map, file)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeMap<ChunkId, u8>, File)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies wanted for `id`.
    pub fn get(&self, id: &ChunkId) -> usize {
        self.lock().0.get(id).copied().unwrap_or(self.default) as usize
    }

    /// Records that `id` wants `factor` copies (capped; only ever raised). Returns true
    /// when that changed anything.
    pub fn record(&self, id: ChunkId, factor: u8) -> io::Result<bool> {
        let factor = factor.min(self.max);
        if factor <= self.default {
            return Ok(false);
        }
        let mut g = self.lock();
        let (map, file) = &mut *g;
        if map.get(&id).is_some_and(|f| *f >= factor) {
            return Ok(false);
        }
        writeln!(file, "F {id} {factor}")?;
        map.insert(id, factor);
        Ok(true)
    }

    /// A stored chunk that is a manifest asking for more copies: record them all.
    pub fn record_manifest(&self, id: ChunkId, data: &[u8]) -> io::Result<usize> {
        let Ok(m) = Manifest::decode(data) else {
            return Ok(0);
        };
        let Some(f) = m.replicas else { return Ok(0) };
        let mut n = usize::from(self.record(id, f)?);
        for c in &m.chunks {
            n += usize::from(self.record(*c, f)?);
        }
        Ok(n)
    }

    /// One page of the table, for the FACTORS request.
    pub fn page(&self, after: Option<ChunkId>, limit: usize) -> (Vec<(ChunkId, u8)>, bool) {
        let g = self.lock();
        let mut it = match after {
            Some(a) => {
                g.0.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => g.0.range(..),
        };
        let page: Vec<(ChunkId, u8)> = it.by_ref().take(limit).map(|(k, v)| (*k, *v)).collect();
        let more = it.next().is_some();
        (page, more)
    }

    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_are_capped_raised_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = ChunkId([1; 32]);
        {
            let f = Factors::open(d.path(), 2, 4).unwrap();
            assert_eq!(f.get(&a), 2);
            assert!(!f.record(a, 2).unwrap(), "the default is not recorded");
            assert!(f.record(a, 9).unwrap());
            assert_eq!(f.get(&a), 4, "capped at max_factor");
            assert!(!f.record(a, 3).unwrap(), "never lowered");
        }
        let f = Factors::open(d.path(), 2, 4).unwrap();
        assert_eq!(f.get(&a), 4);
        let m = Manifest {
            ddc_manifest: 1,
            size: 1,
            chunk_size: 1,
            chunks: vec![ChunkId([2; 32])],
            replicas: Some(3),
        };
        let bytes = m.encode();
        assert_eq!(f.record_manifest(ChunkId::of(&bytes), &bytes).unwrap(), 2);
        assert_eq!(f.get(&ChunkId([2; 32])), 3);
        let (page, more) = f.page(None, 2);
        assert_eq!(page.len(), 2);
        assert!(more);
        let (rest, more) = f.page(Some(page[1].0), 10);
        assert_eq!(rest.len(), 1);
        assert!(!more);
    }

    #[test]
    fn a_damaged_factors_file_stops_the_start_naming_it_and_a_torn_tail_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let a = ChunkId([1; 32]);
        std::fs::write(
            d.path().join("factors"),
            format!(
                "F {a} 3
F {a} x
"
            ),
        )
        .unwrap();
        let e = Factors::open(d.path(), 2, 4).err().unwrap().to_string();
        assert!(e.contains("factors: line 2"), "{e}");
        assert!(e.contains("remove"), "{e}");
        // A crash mid-append leaves a torn last line: dropped, and appends go on cleanly.
        std::fs::write(
            d.path().join("factors"),
            format!(
                "F {a} 3
F 12"
            ),
        )
        .unwrap();
        let f = Factors::open(d.path(), 2, 4).unwrap();
        assert_eq!(f.get(&a), 3);
        f.record(ChunkId([2; 32]), 4).unwrap();
        drop(f);
        let f = Factors::open(d.path(), 2, 4).unwrap();
        assert_eq!(f.get(&ChunkId([2; 32])), 4);
    }
}
