//! Signed WebRTC signaling messages carried over MQTT (docs/protocol.md).
//!
//! Every message is signed with the sender's Ed25519 key and carries a nonce and an
//! expiry. A receiver checks, in order: the version and kind, that `from` is the node ID
//! of `public_key` (so nobody can speak for another ID), that it is the addressee, that
//! the expiry is in the future and not too far, the signature, and that the nonce has not
//! been seen. Pure: the caller supplies the time and keeps the [`ReplayGuard`].
//!
//! The signed bytes are a fixed, line-based rendering (not the JSON), so a browser can
//! reproduce them without canonical JSON:
//! `ddc-signal/1\n<kind>\n<from>\n<to>\n<session>\n<reply_to>\n<nonce>\n<exp>\n<body>`.

use crate::identity::{Identity, node_id_of, verify};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Longest accepted lifetime of a message: bounds the replay cache.
pub const MAX_TTL_S: u64 = 300;
/// Lifetime we give our own messages.
pub const TTL_S: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// SDP offer (with or without gathered candidates).
    Offer,
    Answer,
    /// One trickled ICE candidate (`body` is the candidate init as JSON).
    Candidate,
    /// The sender is done with the session.
    Bye,
    /// A replication message between nodes (`body`: `replication::wire`); not part of
    /// any session.
    Repl,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Offer => "offer",
            Kind::Answer => "answer",
            Kind::Candidate => "candidate",
            Kind::Bye => "bye",
            Kind::Repl => "repl",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub v: u32,
    pub kind: Kind,
    pub from: String,
    /// Sender's Ed25519 public key, 64 hex characters.
    pub public_key: String,
    pub to: String,
    /// Chosen by the offerer; names the peer connection.
    pub session: String,
    /// Where to send replies (the sender's signal topic).
    pub reply_to: String,
    pub nonce: String,
    /// Unix seconds.
    pub exp: u64,
    pub body: String,
    /// Ed25519 signature over [`Envelope::signed_bytes`], 128 hex characters.
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("not a signaling message: {0}")]
    Malformed(String),
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("from {from} is not the node ID of its public key")]
    WrongId { from: String },
    #[error("addressed to {to}, not to this node")]
    NotForUs { to: String },
    #[error("expired {0} s ago")]
    Expired(u64),
    #[error("expiry {0} s ahead is beyond the {MAX_TTL_S} s limit")]
    TooFarAhead(u64),
    #[error("bad signature")]
    BadSignature,
    #[error("replayed nonce")]
    Replayed,
}

/// Only hex digits: the `hex` crate, not `u8::from_str_radix`, which also takes a sign
/// ("+a"), so one key or signature could be spelt several ways.
fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

impl Envelope {
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "ddc-signal/1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.kind.as_str(),
            self.from,
            self.to,
            self.session,
            self.reply_to,
            self.nonce,
            self.exp,
            self.body
        )
        .into_bytes()
    }

    /// Builds and signs a message from `id` to node `to`.
    pub fn sign(
        id: &Identity,
        kind: Kind,
        to: &str,
        session: &str,
        reply_to: &str,
        body: String,
        now_unix: u64,
    ) -> Envelope {
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; 16];
        let _ = ring::rand::SystemRandom::new().fill(&mut nonce);
        let mut e = Envelope {
            v: 1,
            kind,
            from: id.node_id().to_string(),
            public_key: id.public_key_hex(),
            to: to.to_string(),
            session: session.to_string(),
            reply_to: reply_to.to_string(),
            nonce: hex::encode(nonce),
            exp: now_unix + TTL_S,
            body,
            sig: String::new(),
        };
        e.sig = hex::encode(id.sign(&e.signed_bytes()));
        e
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes")
    }

    /// Parses and checks a message addressed to `me`. The nonce is recorded only when
    /// every other check passed, so garbage cannot fill the replay cache.
    pub fn open(
        payload: &[u8],
        me: &str,
        now_unix: u64,
        guard: &mut ReplayGuard,
    ) -> Result<Envelope, Rejected> {
        let e: Envelope =
            serde_json::from_slice(payload).map_err(|e| Rejected::Malformed(e.to_string()))?;
        if e.v != 1 {
            return Err(Rejected::Version(e.v));
        }
        let key = unhex(&e.public_key)
            .filter(|k| k.len() == 32)
            .ok_or_else(|| Rejected::Malformed("public_key: expected 64 hex characters".into()))?;
        if node_id_of(&key) != e.from {
            return Err(Rejected::WrongId { from: e.from });
        }
        if e.to != me {
            return Err(Rejected::NotForUs { to: e.to });
        }
        if e.exp <= now_unix {
            return Err(Rejected::Expired(now_unix - e.exp));
        }
        if e.exp > now_unix + MAX_TTL_S {
            return Err(Rejected::TooFarAhead(e.exp - now_unix));
        }
        if e.nonce.len() < 16 || e.nonce.len() > 64 {
            return Err(Rejected::Malformed(
                "nonce: expected 16 to 64 characters".into(),
            ));
        }
        let sig = unhex(&e.sig)
            .filter(|s| s.len() == 64)
            .ok_or(Rejected::BadSignature)?;
        if !verify(&key, &e.signed_bytes(), &sig) {
            return Err(Rejected::BadSignature);
        }
        if !guard.check_and_record(&e.from, &e.nonce, e.exp, now_unix) {
            return Err(Rejected::Replayed);
        }
        Ok(e)
    }

    /// Whether `reply_to` is the signaling topic of the signed sender itself (a node's or
    /// a client's, under `prefix`). Anything else would let a stranger make us publish
    /// an answer on a topic of their choosing (say, a victim's retained status): such
    /// messages are dropped.
    pub fn replies_to_sender(&self, prefix: &str) -> bool {
        self.reply_to == format!("{prefix}/nodes/{}/signal", self.from)
            || self.reply_to == format!("{prefix}/clients/{}/signal", self.from)
    }

    pub fn public_key_bytes(&self) -> Option<[u8; 32]> {
        unhex(&self.public_key)?.try_into().ok()
    }
}

/// Nonces seen until their message expires. Bounded: when full, the oldest entries go
/// first (they are the closest to expiring anyway).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<(String, String), u64>,
    order: VecDeque<(String, String)>,
}

const MAX_NONCES: usize = 16_384;

impl ReplayGuard {
    pub fn check_and_record(&mut self, from: &str, nonce: &str, exp: u64, now_unix: u64) -> bool {
        while let Some(k) = self.order.front() {
            let expired = self.seen.get(k).is_none_or(|e| *e <= now_unix);
            if expired || self.order.len() >= MAX_NONCES {
                let k = self.order.pop_front().expect("front exists");
                self.seen.remove(&k);
            } else {
                break;
            }
        }
        let key = (from.to_string(), nonce.to_string());
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key.clone(), exp);
        self.order.push_back(key);
        true
    }
}

/// The `a=fingerprint` values of an SDP (algorithm, value), as signed by its sender.
pub fn sdp_fingerprints(sdp: &str) -> Vec<(String, String)> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .filter_map(|f| f.split_once(' '))
        .map(|(alg, v)| (alg.to_ascii_lowercase(), v.trim().to_ascii_uppercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (tempfile::TempDir, Identity, Identity) {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(&d.path().join("a")).unwrap();
        let b = Identity::load_or_create(&d.path().join("b")).unwrap();
        (d, a, b)
    }

    #[test]
    fn signed_messages_open_once() {
        let (_d, a, b) = ids();
        let now = 1_800_000_000;
        let e = Envelope::sign(
            &a,
            Kind::Offer,
            b.node_id(),
            "s1",
            "ddc/nodes/a/signal",
            "v=0\r\n".into(),
            now,
        );
        let bytes = e.to_json();
        let mut g = ReplayGuard::default();
        let opened = Envelope::open(&bytes, b.node_id(), now + 1, &mut g).unwrap();
        // The test envelope names the sender's own client topic as reply_to; any other
        // topic (a victim's status) is a reflection and is refused by the driver.
        let mut reflected = opened.clone();
        assert_eq!(
            opened.replies_to_sender("ddc"),
            opened.reply_to == format!("ddc/clients/{}/signal", opened.from)
                || opened.reply_to == format!("ddc/nodes/{}/signal", opened.from)
        );
        reflected.reply_to = format!("ddc/nodes/{}/status", b.node_id());
        assert!(!reflected.replies_to_sender("ddc"));
        reflected.reply_to = format!("ddc/nodes/{}/signal", opened.from);
        assert!(reflected.replies_to_sender("ddc"));
        reflected.reply_to = format!("ddc/clients/{}/signal", opened.from);
        assert!(reflected.replies_to_sender("ddc"));
        reflected.reply_to = format!("ddc/clients/{}/signal", b.node_id());
        assert!(!reflected.replies_to_sender("ddc"));
        assert_eq!(opened, e);
        assert_eq!(
            Envelope::open(&bytes, b.node_id(), now + 2, &mut g),
            Err(Rejected::Replayed)
        );
    }

    #[test]
    fn tampering_and_timing_are_rejected() {
        let (_d, a, b) = ids();
        let now = 1_800_000_000;
        let mut g = ReplayGuard::default();
        let e = Envelope::sign(&a, Kind::Offer, b.node_id(), "s1", "r", "sdp".into(), now);

        let mut t = e.clone();
        t.body = "other sdp".into();
        assert_eq!(
            Envelope::open(&t.to_json(), b.node_id(), now, &mut g),
            Err(Rejected::BadSignature)
        );

        let mut t = e.clone();
        t.from = b.node_id().into();
        assert!(matches!(
            Envelope::open(&t.to_json(), b.node_id(), now, &mut g),
            Err(Rejected::WrongId { .. })
        ));

        let mut t = e.clone();
        t.sig = String::new();
        assert_eq!(
            Envelope::open(&t.to_json(), b.node_id(), now, &mut g),
            Err(Rejected::BadSignature)
        );

        assert!(matches!(
            Envelope::open(&e.to_json(), a.node_id(), now, &mut g),
            Err(Rejected::NotForUs { .. })
        ));
        assert!(matches!(
            Envelope::open(&e.to_json(), b.node_id(), now + TTL_S, &mut g),
            Err(Rejected::Expired(0))
        ));
        let far = Envelope {
            exp: now + 10_000,
            ..e.clone()
        };
        assert!(matches!(
            Envelope::open(&far.to_json(), b.node_id(), now, &mut g),
            Err(Rejected::TooFarAhead(_))
        ));
        assert!(matches!(
            Envelope::open(b"{}", b.node_id(), now, &mut g),
            Err(Rejected::Malformed(_))
        ));
        // Hex fields are hex: u8::from_str_radix took "+a" for 0x0a, so the same key or
        // signature had several spellings. A signer whose key, and a message whose
        // signature, have a byte below 0x10 (whose "0" can become "+"):
        let low = |s: &str| (0..s.len()).step_by(2).find(|&i| s.as_bytes()[i] == b'0');
        let plus = |s: &str| {
            let i = low(s).unwrap();
            format!("{}+{}", &s[..i], &s[i + 1..])
        };
        let d = tempfile::tempdir().unwrap();
        let e2 = (0..)
            .find_map(|n| {
                let id = Identity::load_or_create(&d.path().join(format!("k{n}"))).unwrap();
                let e = Envelope::sign(&id, Kind::Offer, b.node_id(), "s", "r", "sdp".into(), now);
                (low(&e.public_key).is_some() && low(&e.sig).is_some()).then_some(e)
            })
            .unwrap();
        let mut t = e2.clone();
        t.sig = plus(&e2.sig);
        assert_eq!(
            Envelope::open(&t.to_json(), b.node_id(), now, &mut g),
            Err(Rejected::BadSignature)
        );
        let mut t = e2.clone();
        t.public_key = plus(&e2.public_key);
        assert!(matches!(
            Envelope::open(&t.to_json(), b.node_id(), now, &mut g),
            Err(Rejected::Malformed(_))
        ));
        assert!(Envelope::open(&e2.to_json(), b.node_id(), now, &mut g).is_ok());

        // The untampered message still opens: failed checks did not burn its nonce.
        assert!(Envelope::open(&e.to_json(), b.node_id(), now, &mut g).is_ok());
    }

    #[test]
    fn replay_guard_forgets_expired_and_is_bounded() {
        let mut g = ReplayGuard::default();
        assert!(g.check_and_record("a", "n1", 100, 50));
        assert!(!g.check_and_record("a", "n1", 100, 60));
        assert!(
            g.check_and_record("b", "n1", 100, 60),
            "nonces are per sender"
        );
        assert!(
            g.check_and_record("a", "n1", 300, 150),
            "expired entries are forgotten"
        );
        for i in 0..(MAX_NONCES + 10) {
            g.check_and_record("c", &i.to_string(), 10_000, 200);
        }
        assert!(g.order.len() <= MAX_NONCES);
    }

    #[test]
    fn fingerprints_from_sdp() {
        let sdp = "v=0\r\na=fingerprint:sha-256 ab:CD:01\r\nm=application 9\r\n";
        assert_eq!(
            sdp_fingerprints(sdp),
            vec![("sha-256".to_string(), "AB:CD:01".to_string())]
        );
    }
}
