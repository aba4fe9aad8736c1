//! The fleet as every node sees it: built from the retained `status` and `health`
//! messages of `<prefix>/nodes/+/...`. Pure: fed messages, it keeps the members and a
//! generation number that changes whenever placement could change.

use super::placement::Member;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
pub struct Membership {
    members: BTreeMap<String, Member>,
    /// Nodes whose replication is paused (policy or operator): they hold their chunks
    /// but answer replication GETs with `busy`, so fetch from someone else first.
    paused: BTreeSet<String>,
    generation: u64,
}

impl Membership {
    /// A `status` payload (`online` / `offline`; an empty retained message clears).
    pub fn on_status(&mut self, id: &str, payload: &[u8]) {
        let online = payload == b"online";
        let m = self.entry(id);
        if m.online != online {
            m.online = online;
            self.generation += 1;
        }
    }

    /// A `health` payload: free space, draining and whether replication is paused.
    pub fn on_health(&mut self, id: &str, payload: &[u8]) {
        let Ok(h) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let free = h["disk"]["free_bytes"].as_u64();
        let draining = h["draining"].as_bool().unwrap_or(false);
        // Pausing does not move placement: a paused node still holds what it holds.
        if h["replication"]["paused_by"].is_string() {
            self.paused.insert(id.to_string());
        } else {
            self.paused.remove(id);
        }
        let m = self.entry(id);
        // Free space changes with every write; only crossing "full" changes placement,
        // and `eligible` decides that at use. Draining changes placement at once.
        m.free_bytes = free;
        if m.draining != draining {
            m.draining = draining;
            self.generation += 1;
        }
    }

    fn entry(&mut self, id: &str) -> &mut Member {
        self.members
            .entry(id.to_string())
            .or_insert_with(|| Member {
                id: id.to_string(),
                online: false,
                free_bytes: None,
                draining: false,
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

    #[test]
    fn status_and_health_build_the_view() {
        let mut v = Membership::default();
        v.on_status("a", b"online");
        v.on_status("b", b"online");
        let g = v.generation();
        v.on_health("a", br#"{"disk":{"free_bytes":1000},"draining":false}"#);
        assert_eq!(
            v.generation(),
            g,
            "free space alone does not bump the generation"
        );
        v.on_health("b", br#"{"disk":{"free_bytes":5},"draining":true}"#);
        assert!(v.generation() > g);
        v.on_status("a", b"offline");
        let m = v.members();
        assert_eq!(m.len(), 2);
        assert!(!m[0].online && m[0].free_bytes == Some(1000));
        assert!(m[1].online && m[1].draining);
        assert_eq!(v.online(), vec!["b".to_string()]);
        assert!(!v.is_paused("b"));
        let g = v.generation();
        v.on_health(
            "b",
            br#"{"draining":true,"replication":{"paused_by":"policy"}}"#,
        );
        assert!(v.is_paused("b"));
        assert_eq!(v.generation(), g, "pausing does not move placement");
        v.on_health(
            "b",
            br#"{"draining":true,"replication":{"paused_by":null}}"#,
        );
        assert!(!v.is_paused("b"));
        v.on_health("c", b"not json");
        assert!(!v.is_member("c"));
    }
}
