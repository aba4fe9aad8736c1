//! Files larger than a chunk: split into chunks plus a manifest chunk that lists them in
//! order. The manifest's ID is the file's ID. Shared by the CLI, the agent, the network
//! client and the tests, so every path splits and joins the same way.
//!
//! A manifest is canonical JSON, so the same file always gets the same ID and a browser
//! can read it with `JSON.parse`:
//! `{"ddc_manifest":1,"size":<bytes>,"chunk_size":<bytes>,"chunks":["<id>",...]}`, with
//! `,"replicas":<n>` at the end when a client asked for more copies than the default.
//! Every chunk but the last is exactly `chunk_size` bytes; an empty file has no chunks.

use super::id::ChunkId;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub ddc_manifest: u32,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: Vec<ChunkId>,
    /// Copies the client asked for, when more than the fleet default (capped by each
    /// node's `replication.max_factor`). Absent in most manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a file manifest: {0}")]
    NotAManifest(String),
    #[error(
        "manifest lists {listed} chunks, but a {size}-byte file in {chunk_size}-byte chunks has {expected}"
    )]
    Inconsistent {
        listed: usize,
        expected: u64,
        size: u64,
        chunk_size: u32,
    },
    #[error("chunk {index} ({id}) is {got} bytes, expected {want}")]
    ChunkSize {
        index: usize,
        id: ChunkId,
        got: usize,
        want: u64,
    },
    #[error("chunk {index} ({id}) does not match its ID")]
    ChunkHash { index: usize, id: ChunkId },
    #[error(
        "manifest would be {bytes} bytes, above the {max}-byte chunk limit: file too large for chunk size {chunk_size}"
    )]
    TooLarge {
        bytes: usize,
        max: u64,
        chunk_size: u32,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("fetching chunk {index} ({id}): {message}")]
    Fetch {
        index: usize,
        id: ChunkId,
        message: String,
    },
}

pub const VERSION: u32 = 1;

/// Whether a chunk is worth decoding as a manifest (cheap; [`Manifest::decode`] decides).
pub fn looks_like(data: &[u8]) -> bool {
    data.starts_with(b"{\"ddc_manifest\":")
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Parses and checks a manifest: version, and a chunk count consistent with the size.
    pub fn decode(data: &[u8]) -> Result<Manifest, ManifestError> {
        if !looks_like(data) {
            return Err(ManifestError::NotAManifest(
                "it does not start with {\"ddc_manifest\":".into(),
            ));
        }
        let m: Manifest =
            serde_json::from_slice(data).map_err(|e| ManifestError::NotAManifest(e.to_string()))?;
        if m.ddc_manifest != VERSION {
            return Err(ManifestError::NotAManifest(format!(
                "unsupported version {}",
                m.ddc_manifest
            )));
        }
        if m.chunk_size == 0 {
            return Err(ManifestError::NotAManifest("chunk_size is 0".into()));
        }
        let expected = m.size.div_ceil(m.chunk_size as u64);
        if m.chunks.len() as u64 != expected {
            return Err(ManifestError::Inconsistent {
                listed: m.chunks.len(),
                expected,
                size: m.size,
                chunk_size: m.chunk_size,
            });
        }
        Ok(m)
    }

    /// Expected length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let cs = self.chunk_size as u64;
        if index + 1 < self.chunks.len() {
            cs
        } else {
            self.size - cs * index as u64
        }
    }

    pub fn id(&self) -> ChunkId {
        ChunkId::of(&self.encode())
    }
}

/// Splits `reader` into chunks of `chunk_size`, hands each to `store` (which returns its
/// ID), and returns the manifest (not yet stored: the caller stores `encode()`).
/// `max_chunk` bounds the manifest's own size.
pub fn split<R: Read>(
    mut reader: R,
    chunk_size: u32,
    max_chunk: u64,
    mut store: impl FnMut(&[u8]) -> Result<ChunkId, ManifestError>,
) -> Result<Manifest, ManifestError> {
    let mut buf = vec![0u8; chunk_size as usize];
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        chunks.push(store(&buf[..n])?);
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    let m = Manifest {
        ddc_manifest: VERSION,
        size,
        chunk_size,
        chunks,
        replicas: None,
    };
    let bytes = m.encode().len();
    if bytes as u64 > max_chunk {
        return Err(ManifestError::TooLarge {
            bytes,
            max: max_chunk,
            chunk_size,
        });
    }
    Ok(m)
}

/// Writes the file described by `m` to `out`, fetching each chunk with `fetch` and
/// checking its length and hash before a byte of it is written.
pub fn join<W: Write>(
    m: &Manifest,
    mut out: W,
    mut fetch: impl FnMut(usize, &ChunkId) -> Result<bytes::Bytes, ManifestError>,
) -> Result<u64, ManifestError> {
    let mut written = 0;
    for (index, id) in m.chunks.iter().enumerate() {
        let data = fetch(index, id)?;
        let want = m.chunk_len(index);
        if data.len() as u64 != want {
            return Err(ManifestError::ChunkSize {
                index,
                id: *id,
                got: data.len(),
                want,
            });
        }
        if ChunkId::of(&data) != *id {
            return Err(ManifestError::ChunkHash { index, id: *id });
        }
        out.write_all(&data)?;
        written += data.len() as u64;
    }
    out.flush()?;
    Ok(written)
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn roundtrip(len: usize, chunk: u32) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut stored: HashMap<ChunkId, Vec<u8>> = HashMap::new();
        let m = split(&data[..], chunk, 1 << 20, |c| {
            let id = ChunkId::of(c);
            stored.insert(id, c.to_vec());
            Ok(id)
        })
        .unwrap();
        assert_eq!(m.size, len as u64);
        assert_eq!(m.chunks.len() as u64, (len as u64).div_ceil(chunk as u64));
        let decoded = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(decoded, m);
        let mut out = Vec::new();
        join(&m, &mut out, |_, id| {
            Ok(bytes::Bytes::from(stored[id].clone()))
        })
        .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn split_and_join() {
        roundtrip(0, 16);
        roundtrip(1, 16);
        roundtrip(16, 16);
        roundtrip(17, 16);
        roundtrip(1000, 64);
    }

    #[test]
    fn same_file_same_id() {
        let a = split(&b"hello world"[..], 4, 1 << 20, |c| Ok(ChunkId::of(c))).unwrap();
        let b = split(&b"hello world"[..], 4, 1 << 20, |c| Ok(ChunkId::of(c))).unwrap();
        assert_eq!(a.id(), b.id());
        let c = split(&b"hello world"[..], 5, 1 << 20, |c| Ok(ChunkId::of(c))).unwrap();
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn bad_manifests_are_named() {
        assert!(matches!(
            Manifest::decode(b"just data"),
            Err(ManifestError::NotAManifest(_))
        ));
        let e = Manifest::decode(br#"{"ddc_manifest":1,"size":100,"chunk_size":10,"chunks":[]}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "manifest lists 0 chunks, but a 100-byte file in 10-byte chunks has 10"
        );
        let e = Manifest::decode(br#"{"ddc_manifest":2,"size":0,"chunk_size":10,"chunks":[]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unsupported version 2"));
        let e = Manifest::decode(br#"{"ddc_manifest":1,"size":1,"chunk_size":10,"chunks":["zz"]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("invalid chunk ID"), "{e}");
    }

    #[test]
    fn join_refuses_a_wrong_chunk_before_writing_it() {
        let m = split(&b"abcdefgh"[..], 4, 1 << 20, |c| Ok(ChunkId::of(c))).unwrap();
        let mut out = Vec::new();
        let e = join(&m, &mut out, |i, _| {
            Ok(bytes::Bytes::from(if i == 0 {
                &b"abcd"[..]
            } else {
                &b"XXXX"[..]
            }))
        })
        .unwrap_err();
        assert!(
            matches!(e, ManifestError::ChunkHash { index: 1, .. }),
            "{e}"
        );
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn oversize_manifest_is_refused() {
        let data = [0u8; 100];
        let e = split(&data[..], 1, 200, |c| Ok(ChunkId::of(c))).unwrap_err();
        assert!(matches!(e, ManifestError::TooLarge { .. }), "{e}");
    }
}
