//! Who may be a member of a fleet (docs/deploy.md, "Fleet membership"). Pure: keys,
//! payloads and the time in, verdicts out.
//!
//! Every node signs its health message (`"auth": {"key", "sig", "cert"}` over the health
//! object without `auth`, compact JSON with sorted keys), so nobody can speak for a node
//! whose key they do not hold: the node ID is the hash of the key. A fleet may also
//! decide who can join at all: `ddc-edge fleet init` makes a fleet key, `ddc-edge fleet
//! enroll NODE_PUBKEY` issues a certificate
//!
//! ```text
//! ddc-cert/1.<node public key, 64 hex>.<not_after, unix s>.<fleet signature, 128 hex>
//! ```
//!
//! signed over `ddc-cert/1\n<node public key hex>\n<not_after>`, which the node carries
//! in its health (`fleet.cert`). With `fleet.ca` set, nodes without a valid certificate
//! are invisible to placement. Without it the fleet is open: any key may join (the
//! development default; the agent says so).

use crate::identity::{Identity, node_id_of, verify};
use serde_json::{Value, json};

const CERT_TAG: &str = "ddc-cert/1";

/// A parsed fleet certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    pub node_key: [u8; 32],
    pub not_after: u64,
    sig: Vec<u8>,
}

fn cert_message(node_key: &[u8; 32], not_after: u64) -> Vec<u8> {
    format!("{CERT_TAG}\n{}\n{not_after}", hex::encode(node_key)).into_bytes()
}

impl Cert {
    pub fn parse(s: &str) -> Result<Cert, String> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [tag, key, not_after, sig] = parts[..] else {
            return Err(format!(
                "expected {CERT_TAG}.<node key>.<not_after>.<signature>"
            ));
        };
        if tag != CERT_TAG {
            return Err(format!("expected a {CERT_TAG} certificate, got {tag:?}"));
        }
        let node_key: [u8; 32] = hex::decode(key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or("node key: expected 64 hex characters")?;
        let not_after = not_after
            .parse()
            .map_err(|_| format!("not_after: expected unix seconds, got {not_after:?}"))?;
        let sig = hex::decode(sig)
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or("signature: expected 128 hex characters")?;
        Ok(Cert {
            node_key,
            not_after,
            sig,
        })
    }

    /// A certificate for `node_key`, valid until `not_after`.
    pub fn issue(fleet: &Identity, node_key: &[u8; 32], not_after: u64) -> String {
        let sig = fleet.sign(&cert_message(node_key, not_after));
        format!(
            "{CERT_TAG}.{}.{not_after}.{}",
            hex::encode(node_key),
            hex::encode(sig)
        )
    }

    /// Valid for `key` under fleet key `ca` at `now`?
    pub fn check(&self, ca: &[u8; 32], key: &[u8], now: u64) -> Result<(), String> {
        if self.node_key[..] != *key {
            return Err("the certificate names another key".into());
        }
        if now > self.not_after {
            return Err(format!(
                "the certificate expired {} s ago",
                now - self.not_after
            ));
        }
        if !verify(ca, &cert_message(&self.node_key, self.not_after), &self.sig) {
            return Err("the certificate is not signed by this fleet (fleet.ca)".into());
        }
        Ok(())
    }
}

/// Parses `fleet.ca` (64 hex).
pub fn parse_ca(s: &str) -> Result<[u8; 32], String> {
    hex::decode(s.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| format!("expected the fleet's public key as 64 hex characters, got {s:?}"))
}

fn health_message(node_id: &str, body: &Value) -> Vec<u8> {
    // serde_json's map is sorted (no preserve_order): the same object always gives the
    // same bytes.
    format!("ddc-health/1\n{node_id}\n{body}").into_bytes()
}

/// Adds the node's signature (and certificate, if it has one) to its health object.
pub fn sign_health(node: &Identity, cert: Option<&str>, health: &mut Value) {
    if let Some(o) = health.as_object_mut() {
        o.remove("auth");
    }
    let sig = node.sign(&health_message(node.node_id(), health));
    let mut auth = json!({"key": node.public_key_hex(), "sig": hex::encode(sig)});
    if let Some(c) = cert.filter(|c| !c.is_empty()) {
        auth["cert"] = json!(c);
    }
    health["auth"] = auth;
}

/// Why a health message is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not from the node whose topic it is on: ignore it, whatever it says.
    #[error("not from this node: {0}")]
    Forged(String),
    /// From the node itself, but the node is not (or no longer) enrolled in the fleet.
    #[error("not enrolled in this fleet: {0}")]
    NotEnrolled(String),
}

/// Checks a health message published on `<prefix>/nodes/<node_id>/health`: signed by
/// the key whose hash is `node_id`, and with `ca`, carrying a valid certificate for
/// that key. Returns the health object (without `auth`) or why it is not accepted.
pub fn verify_health(
    node_id: &str,
    payload: &[u8],
    ca: Option<&[u8; 32]>,
    now: u64,
) -> Result<Value, Rejected> {
    let health = verify_signature(node_id, payload).map_err(Rejected::Forged)?;
    if let Some(ca) = ca {
        let (h, auth) = health;
        let key = hex::decode(auth["key"].as_str().unwrap_or_default()).unwrap_or_default();
        let cert = auth["cert"].as_str().ok_or_else(|| {
            Rejected::NotEnrolled("no fleet certificate (`ddc-edge fleet enroll`)".into())
        })?;
        Cert::parse(cert)
            .and_then(|c| c.check(ca, &key, now))
            .map_err(Rejected::NotEnrolled)?;
        return Ok(h);
    }
    Ok(health.0)
}

fn verify_signature(node_id: &str, payload: &[u8]) -> Result<(Value, Value), String> {
    let mut health: Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let auth = health
        .as_object_mut()
        .ok_or("not a JSON object")?
        .remove("auth")
        .ok_or("unsigned (no \"auth\")")?;
    let key = auth["key"]
        .as_str()
        .and_then(|k| hex::decode(k).ok())
        .filter(|k| k.len() == 32)
        .ok_or("auth.key: expected 64 hex characters")?;
    if node_id_of(&key) != node_id {
        return Err("auth.key is not this node's key".into());
    }
    let sig = auth["sig"]
        .as_str()
        .and_then(|s| hex::decode(s).ok())
        .ok_or("auth.sig: expected hex")?;
    if !verify(&key, &health_message(node_id, &health), &sig) {
        return Err("bad signature".into());
    }
    Ok((health, auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (tempfile::TempDir, Identity, Identity, Identity) {
        let d = tempfile::tempdir().unwrap();
        let f = Identity::load_or_create_file(&d.path().join("fleet")).unwrap();
        let a = Identity::load_or_create_file(&d.path().join("a")).unwrap();
        let b = Identity::load_or_create_file(&d.path().join("b")).unwrap();
        (d, f, a, b)
    }

    fn signed(node: &Identity, cert: Option<&str>) -> Vec<u8> {
        let mut h = json!({"node_id": node.node_id(), "ts": 5, "cpu_temp_c": 61.3,
            "disk": {"free_bytes": 1000}, "draining": false});
        sign_health(node, cert, &mut h);
        serde_json::to_vec(&h).unwrap()
    }

    #[test]
    fn health_is_accepted_only_from_the_key_of_its_topic() {
        let (_d, _f, a, b) = ids();
        let h = verify_health(a.node_id(), &signed(&a, None), None, 0).unwrap();
        assert_eq!(h["disk"]["free_bytes"], 1000);
        assert!(h.get("auth").is_none());
        // On another node's topic, unsigned, or changed: refused.
        assert!(verify_health(b.node_id(), &signed(&a, None), None, 0).is_err());
        assert!(verify_health(a.node_id(), br#"{"disk":{"free_bytes":9}}"#, None, 0).is_err());
        let mut v: Value = serde_json::from_slice(&signed(&a, None)).unwrap();
        v["disk"]["free_bytes"] = json!(999_999);
        assert!(verify_health(a.node_id(), &serde_json::to_vec(&v).unwrap(), None, 0).is_err());
    }

    #[test]
    fn with_a_fleet_ca_only_enrolled_nodes_are_members() {
        let (_d, fleet, a, b) = ids();
        let ca = *fleet.public_key();
        let cert_a = Cert::issue(&fleet, a.public_key(), 1000);
        assert!(verify_health(a.node_id(), &signed(&a, Some(&cert_a)), Some(&ca), 999).is_ok());
        // Expired.
        let e = verify_health(a.node_id(), &signed(&a, Some(&cert_a)), Some(&ca), 1001);
        assert!(matches!(e, Err(Rejected::NotEnrolled(w)) if w.contains("expired")));
        // A forgery is told apart from a node that is not enrolled.
        assert!(matches!(
            verify_health(b.node_id(), &signed(&a, Some(&cert_a)), Some(&ca), 0),
            Err(Rejected::Forged(_))
        ));
        // No certificate, or a's certificate carried by b, or one from another fleet.
        assert!(verify_health(b.node_id(), &signed(&b, None), Some(&ca), 0).is_err());
        assert!(verify_health(b.node_id(), &signed(&b, Some(&cert_a)), Some(&ca), 0).is_err());
        let rogue = Cert::issue(&b, b.public_key(), 1000);
        assert!(verify_health(b.node_id(), &signed(&b, Some(&rogue)), Some(&ca), 0).is_err());
    }

    #[test]
    fn certificates_parse_strictly() {
        let (_d, fleet, a, _) = ids();
        let c = Cert::issue(&fleet, a.public_key(), 77);
        assert_eq!(Cert::parse(&c).unwrap().not_after, 77);
        for bad in [
            "",
            "ddc-cert/1.x.1.y",
            "other/1.aa.1.bb",
            &c.replace(".77.", ".x."),
        ] {
            assert!(Cert::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_ca(&hex::encode(fleet.public_key())).is_ok());
        assert!(parse_ca("abc").is_err());
    }
}
