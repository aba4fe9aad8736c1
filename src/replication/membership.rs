//! The fleet as every node sees it: built from the retained `status` and `member`
//! messages of `<prefix>/nodes/+/...` (a member record is a signed, compact health:
//! [`Membership::on_health`] reads either). Pure: fed messages and the time, it keeps the
//! members and a generation number that changes whenever placement could change.
//!
//! A node is a member only once a health message signed by its own key (and, with a
//! fleet CA, carrying a valid certificate: [`crate::fleet`]) has been seen; a status
//! `online` alone makes nobody a member. A message that is not from the node whose
//! topic it is on is ignored and changes nothing; one from a node that is not (or no
//! longer) enrolled removes it.

use super::placement::Member;
use crate::fleet::{self, Rejected};
use std::collections::{BTreeMap, BTreeSet};

/// Nodes whose last rejection is remembered (for "logged once"), at most.
const MAX_REJECTED: usize = 1024;

#[derive(Debug, Default, Clone)]
pub struct Membership {
    /// With a fleet CA, only enrolled nodes are members.
    ca: Option<[u8; 32]>,
    /// Status as published, by node ID, for nodes not yet (or not) verified too.
    status_online: BTreeMap<String, bool>,
    members: BTreeMap<String, Member>,
    /// Node IDs whose health was rejected, with the reason (bounded).
    rejected: BTreeMap<String, String>,
    /// The `ts` of each member's latest accepted health.
    last_ts: BTreeMap<String, u64>,
    /// Nodes whose replication is paused (policy or operator): they hold their chunks
    /// but answer replication GETs with `busy`, so fetch from someone else first.
    paused: BTreeSet<String>,
    generation: u64,
}

impl Membership {
    pub fn new(ca: Option<[u8; 32]>) -> Membership {
        Membership {
            ca,
            ..Membership::default()
        }
    }

    /// A `status` payload (`online` / `offline`; an empty retained message clears).
    pub fn on_status(&mut self, id: &str, payload: &[u8]) {
        let online = payload == b"online";
        // A flood of made-up node IDs: beyond a bound, remember statuses of members only.
        if self.status_online.len() >= 4 * MAX_REJECTED
            && !self.status_online.contains_key(id)
            && !self.members.contains_key(id)
        {
            return;
        }
        self.status_online.insert(id.to_string(), online);
        if let Some(m) = self.members.get_mut(id)
            && m.online != online
        {
            m.online = online;
            self.generation += 1;
        }
    }

    /// A `health` payload at `now` (unix s): free space, draining and whether replication
    /// is paused, once it is verified. Returns the reason when it is rejected and that
    /// reason is new for this node (for the caller to log once).
    pub fn on_health(&mut self, id: &str, payload: &[u8], now: u64) -> Option<String> {
        let verified = fleet::verify_health(id, payload, self.ca.as_ref(), now).and_then(|h| {
            // A signed health is only as new as its `ts`: an older one replayed by
            // someone else must not roll the node's state back.
            match (h["ts"].as_u64(), self.last_ts.get(id)) {
                (None, _) => Err(Rejected::Forged("health without a ts".into())),
                (Some(ts), Some(&last)) if ts < last => Err(Rejected::Forged(format!(
                    "an older health (ts {ts}, latest {last}) replayed"
                ))),
                (Some(ts), _) => {
                    self.last_ts.insert(id.to_string(), ts);
                    Ok(h)
                }
            }
        });
        let h = match verified {
            Ok(h) => {
                self.rejected.remove(id);
                h
            }
            Err(e) => {
                if matches!(e, Rejected::NotEnrolled(_)) && self.members.remove(id).is_some() {
                    self.paused.remove(id);
                    self.last_ts.remove(id);
                    self.generation += 1;
                }
                let why = e.to_string();
                if self.rejected.get(id) == Some(&why) {
                    return None;
                }
                if self.rejected.len() < MAX_REJECTED || self.rejected.contains_key(id) {
                    self.rejected.insert(id.to_string(), why.clone());
                    return Some(why);
                }
                return None;
            }
        };
        let free = h["disk"]["free_bytes"].as_u64();
        let draining = h["draining"].as_bool().unwrap_or(false);
        // Nodes of releases before placement versions do not say: they compute v1.
        let placement = h["replication"]["placement"]
            .as_u64()
            .map_or(1, |v| v.clamp(1, u8::MAX as u64) as u8);
        // Pausing does not move placement: a paused node still holds what it holds.
        if h["replication"]["paused_by"].is_string() {
            self.paused.insert(id.to_string());
        } else {
            self.paused.remove(id);
        }
        let m = self.entry(id);
        // Free space changes with every write; only crossing "full" changes placement,
        // and `eligible` decides that at use. Draining changes placement at once. The
        // placement version is only recorded (see replication::placement).
        m.free_bytes = free;
        m.placement = placement;
        if m.draining != draining {
            m.draining = draining;
            self.generation += 1;
        }
        None
    }

    fn entry(&mut self, id: &str) -> &mut Member {
        let online = self.status_online.get(id).copied().unwrap_or(false);
        if !self.members.contains_key(id) && online {
            // A new member that is already online can take data: placement changes.
            self.generation += 1;
        }
        self.members
            .entry(id.to_string())
            .or_insert_with(|| Member {
                id: id.to_string(),
                online,
                free_bytes: None,
                draining: false,
                placement: 1,
            })
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    pub fn is_member(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    pub fn online(&self) -> Vec<String> {
        self.members
            .values()
            .filter(|m| m.online)
            .map(|m| m.id.clone())
            .collect()
    }

    pub fn is_paused(&self, id: &str) -> bool {
        self.paused.contains(id)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use serde_json::{Value, json};

    struct Node {
        id: Identity,
        cert: Option<String>,
    }

    impl Node {
        fn health(&self, h: Value) -> Vec<u8> {
            let mut h = h;
            if h.get("ts").is_none() {
                h["ts"] = json!(100);
            }
            fleet::sign_health(&self.id, self.cert.as_deref(), &mut h);
            serde_json::to_vec(&h).unwrap()
        }
        fn name(&self) -> &str {
            self.id.node_id()
        }
    }

    fn node(d: &tempfile::TempDir, name: &str) -> Node {
        Node {
            id: Identity::load_or_create_file(&d.path().join(name)).unwrap(),
            cert: None,
        }
    }

    #[test]
    fn a_members_placement_version_is_recorded_and_moves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (node(&d, "a"), node(&d, "b"));
        let mut v = Membership::default();
        v.on_status(a.name(), b"online");
        v.on_status(b.name(), b"online");
        v.on_health(
            a.name(),
            &a.health(json!({"replication":{"placement":2}})),
            0,
        );
        // An older release says nothing: it computes v1.
        v.on_health(b.name(), &b.health(json!({"replication":{}})), 0);
        let version = |v: &Membership, id: &str| {
            v.members()
                .into_iter()
                .find(|m| m.id == id)
                .unwrap()
                .placement
        };
        assert_eq!((version(&v, a.name()), version(&v, b.name())), (2, 1));
        let g = v.generation();
        v.on_health(
            b.name(),
            &b.health(json!({"replication":{"placement":2}})),
            0,
        );
        assert_eq!(
            v.generation(),
            g,
            "a version change is not a placement change"
        );
        assert_eq!(version(&v, b.name()), 2);
    }

    #[test]
    fn status_and_signed_health_build_the_view() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (node(&d, "a"), node(&d, "b"));
        let mut v = Membership::default();
        v.on_status(a.name(), b"online");
        v.on_status(b.name(), b"online");
        assert!(
            v.members().is_empty(),
            "a status alone makes nobody a member"
        );
        assert!(
            v.on_health(
                a.name(),
                &a.health(json!({"disk":{"free_bytes":1000},"draining":false})),
                0
            )
            .is_none()
        );
        let g = v.generation();
        v.on_health(
            a.name(),
            &a.health(json!({"disk":{"free_bytes":900},"draining":false})),
            0,
        );
        assert_eq!(
            v.generation(),
            g,
            "free space alone does not bump the generation"
        );
        v.on_health(
            b.name(),
            &b.health(json!({"disk":{"free_bytes":5},"draining":true})),
            0,
        );
        assert!(v.generation() > g);
        v.on_status(a.name(), b"offline");
        let m = v.members();
        assert_eq!(m.len(), 2);
        let (ma, mb) = (
            m.iter().find(|x| x.id == a.name()).unwrap(),
            m.iter().find(|x| x.id == b.name()).unwrap(),
        );
        assert!(!ma.online && ma.free_bytes == Some(900));
        assert!(mb.online && mb.draining);
        assert_eq!(v.online(), vec![b.name().to_string()]);
        assert!(!v.is_paused(b.name()));
        let g = v.generation();
        v.on_health(
            b.name(),
            &b.health(json!({"draining":true,"replication":{"paused_by":"policy"}})),
            0,
        );
        assert!(v.is_paused(b.name()));
        assert_eq!(v.generation(), g, "pausing does not move placement");
        v.on_health(
            b.name(),
            &b.health(json!({"draining":true,"replication":{"paused_by":null}})),
            0,
        );
        assert!(!v.is_paused(b.name()));
    }

    #[test]
    fn forged_and_unsigned_health_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (node(&d, "a"), node(&d, "b"));
        let mut v = Membership::default();
        v.on_status(a.name(), b"online");
        v.on_health(a.name(), &a.health(json!({"disk":{"free_bytes":1000}})), 0);
        let g = v.generation();
        // Unsigned, signed by someone else, or garbage: ignored, reported once.
        let unsigned = br#"{"disk":{"free_bytes":0},"draining":true}"#;
        assert!(v.on_health(a.name(), unsigned, 0).is_some());
        assert!(v.on_health(a.name(), unsigned, 0).is_none(), "logged once");
        assert!(
            v.on_health(a.name(), &b.health(json!({"draining":true})), 0)
                .is_some()
        );
        assert!(v.on_health("c", b"not json", 0).is_some());
        assert_eq!(v.generation(), g);
        assert!(!v.members()[0].draining);
        assert!(!v.is_member("c"));
        // Fake members with made-up IDs never become members.
        for i in 0..20 {
            let id = format!("fa{i:022}");
            v.on_status(&id, b"online");
            v.on_health(&id, br#"{"disk":{"free_bytes":999999999999}}"#, 0);
        }
        assert_eq!(v.members().len(), 1);
    }

    #[test]
    fn an_older_signed_health_replayed_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = node(&d, "a");
        let mut v = Membership::default();
        v.on_status(a.name(), b"online");
        let old = a.health(json!({"ts": 10, "disk":{"free_bytes":1000},"draining":false}));
        let new = a.health(json!({"ts": 20, "disk":{"free_bytes":1000},"draining":true}));
        assert!(v.on_health(a.name(), &old, 0).is_none());
        assert!(v.on_health(a.name(), &new, 0).is_none());
        assert!(v.members()[0].draining);
        let why = v.on_health(a.name(), &old, 0).unwrap();
        assert!(why.contains("replayed"), "{why}");
        assert!(v.members()[0].draining, "the replay rolled the node back");
        // The same one again (a retained copy after a reconnect) is fine.
        assert!(v.on_health(a.name(), &new, 0).is_none());
        let no_ts = {
            let mut h = json!({"disk":{"free_bytes":1}});
            fleet::sign_health(&a.id, None, &mut h);
            serde_json::to_vec(&h).unwrap()
        };
        assert!(v.on_health(a.name(), &no_ts, 0).is_some());
    }

    #[test]
    fn with_a_fleet_ca_only_enrolled_nodes_are_members() {
        let d = tempfile::tempdir().unwrap();
        let fleet = Identity::load_or_create_file(&d.path().join("fleet")).unwrap();
        let mut a = node(&d, "a");
        a.cert = Some(fleet::Cert::issue(&fleet, a.id.public_key(), 1000));
        let b = node(&d, "b");
        let mut v = Membership::new(Some(*fleet.public_key()));
        v.on_status(a.name(), b"online");
        v.on_status(b.name(), b"online");
        assert!(
            v.on_health(a.name(), &a.health(json!({"disk":{"free_bytes":1}})), 10)
                .is_none()
        );
        let why = v.on_health(b.name(), &b.health(json!({"disk":{"free_bytes":1}})), 10);
        assert!(why.unwrap().contains("not enrolled"));
        assert_eq!(v.online(), vec![a.name().to_string()]);
        // A's certificate expires: its next health removes it from placement.
        let g = v.generation();
        assert!(
            v.on_health(a.name(), &a.health(json!({"disk":{"free_bytes":1}})), 1001)
                .is_some()
        );
        assert!(v.members().is_empty());
        assert!(v.generation() > g);
    }
}
