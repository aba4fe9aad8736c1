//! Chunk IDs: the SHA-256 of the chunk's bytes, written as 64 lowercase hex characters.
//!
//! Parsing is strict (length, alphabet, case) because an ID becomes a file name: anything
//! that is not exactly 64 of `0-9a-f` is refused before it reaches a path, which rules out
//! traversal (`../`), separators and look-alike names by construction.

use std::fmt;
use std::str::FromStr;

/// A SHA-256 digest identifying a chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

/// Why a string is not a chunk ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunk ID {shown:?}: {why}")]
pub struct IdError {
    /// The input, cut to a readable length.
    pub shown: String,
    pub why: &'static str,
}

impl ChunkId {
    /// The ID of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        ChunkId::from_digest(d.as_ref())
    }

    pub(crate) fn from_digest(d: &[u8]) -> ChunkId {
        let mut b = [0u8; 32];
        b.copy_from_slice(d);
        ChunkId(b)
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The first 8 bytes, big-endian: what placement ranks by and what the replication
    /// planner keeps per chunk (a chunk's "key"). Its top byte is `self.0[0]`, the
    /// fan-out directory and the anti-entropy bucket.
    pub fn key(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    /// The first byte as two hex digits: the fan-out directory.
    pub fn fanout(&self) -> String {
        format!("{:02x}", self.0[0])
    }
}

/// Streaming SHA-256 for writes that arrive in pieces.
pub struct Hasher(ring::digest::Context);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(ring::digest::Context::new(&ring::digest::SHA256))
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    pub fn finish(self) -> ChunkId {
        ChunkId::from_digest(self.0.finish().as_ref())
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

impl FromStr for ChunkId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<ChunkId, IdError> {
        let err = |why| IdError {
            shown: s.chars().take(80).collect(),
            why,
        };
        if s.len() != 64 {
            return Err(err("expected 64 hex characters (a SHA-256)"));
        }
        // Lowercase only: an ID is also a file name, and one chunk must have one name.
        if s.bytes().any(|c| matches!(c, b'A'..=b'F')) {
            return Err(err("hex must be lowercase"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| err("expected only the characters 0-9 and a-f"))?;
        Ok(ChunkId(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let id = ChunkId::of(b"abc");
        assert_eq!(
            id.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        let mut h = Hasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), id);
        assert_eq!(id.fanout(), "ba");
    }

    #[test]
    fn rejects_anything_but_64_lowercase_hex() {
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let cases = [
            ("", "expected 64 hex characters"),
            ("ba78", "expected 64 hex characters"),
            (&format!("{good}00"), "expected 64 hex characters"),
            (&good.to_uppercase(), "lowercase"),
            (
                &format!("../../../../etc/passwd{}", &good[22..]),
                "only the characters",
            ),
            (&format!("{}/x", &good[..62]), "only the characters"),
            (&format!("{}zz", &good[..62]), "only the characters"),
            (&format!("{}é", &good[..62]), "only the characters"),
        ];
        for (input, want) in cases {
            let e = input.parse::<ChunkId>().unwrap_err();
            assert!(e.to_string().contains(want), "{input:?}: {e}");
        }
    }
}
