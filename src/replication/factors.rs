//! Per-file replication factors.
//!
//! A client may ask for more copies of a file than the fleet default (`ddc-edge put
//! --replicas 3`); the factor rides in the file's manifest (`"replicas": 3`). A node that
//! stores such a manifest records the factor for the manifest and every chunk it lists,
//! and serves its table to peers (the FACTORS request), which merge it during their
//! sweeps; placement then uses each chunk's own factor. Factors are capped by
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
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut map = BTreeMap::new();
        for line in text.lines() {
            if let Some((id, n)) = line.strip_prefix("F ").and_then(|l| l.split_once(' '))
                && let (Ok(id), Ok(n)) = (id.parse::<ChunkId>(), n.parse::<u8>())
            {
                let e = map.entry(id).or_insert(n);
                *e = (*e).max(n);
            }
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
}
