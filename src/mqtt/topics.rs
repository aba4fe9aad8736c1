//! The topic contract (docs/mqtt.md). Every topic the agent uses is built here.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>/nodes/<node_id>`
    pub base: String,
    pub status: String,
    pub health: String,
    /// The compact, signed membership record (what placement needs), retained and
    /// published only when it changes.
    pub member: String,
    /// The last hour of health, for charts (crate::history), retained.
    pub history: String,
    pub events: String,
    pub cmd: String,
    pub reply: String,
    pub signal: String,
    /// Every node's status and membership record, for peers that place data
    /// (`<prefix>/nodes/+/...`).
    pub all_status: String,
    pub all_member: String,
    pub discovery: String,
    pub ha_status: String,
}

impl Topics {
    pub fn new(prefix: &str, node_id: &str, discovery_prefix: &str) -> Topics {
        let base = format!("{prefix}/nodes/{node_id}");
        Topics {
            status: format!("{base}/status"),
            health: format!("{base}/health"),
            member: format!("{base}/member"),
            history: format!("{base}/history"),
            events: format!("{base}/events"),
            cmd: format!("{base}/cmd"),
            reply: format!("{base}/reply"),
            signal: format!("{base}/signal"),
            all_status: format!("{prefix}/nodes/+/status"),
            all_member: format!("{prefix}/nodes/+/member"),
            discovery: format!("{discovery_prefix}/device/ddc_{node_id}/config"),
            ha_status: format!("{discovery_prefix}/status"),
            base,
        }
    }

    /// The node id in `<prefix>/nodes/<id>/<leaf>`, if the topic has that shape.
    pub fn node_of<'a>(&self, topic: &'a str, leaf: &str) -> Option<&'a str> {
        let prefix = self.all_status.strip_suffix("+/status")?;
        let rest = topic.strip_prefix(prefix)?;
        let (id, l) = rest.split_once('/')?;
        (l == leaf && !id.is_empty()).then_some(id)
    }
}

/// The largest MQTT packet the agent (or a client) takes from the broker. Anything
/// larger is discarded as it streams in, never buffered, and the connection stays up
/// (the patched rumqttc codec, patches/rumqttc/PATCH.md).
pub const MAX_INCOMING_PACKET: usize = 64 << 10;

/// The largest payload accepted on a topic, checked before anything parses it
/// (docs/mqtt.md, "Size limits"). Keyed by the topic's last level, which is what the
/// contract fixes; anything unknown gets the packet limit.
pub fn payload_limit(topic: &str) -> usize {
    match topic.rsplit('/').next().unwrap_or("") {
        // "online" / "offline" (and Home Assistant's birth message).
        "status" => 64,
        "health" | "history" => 16 << 10,
        // A signed membership record, with a fleet certificate at most.
        "member" => 4 << 10,
        // Signed offers and answers carry an SDP with its candidates.
        "signal" => 32 << 10,
        "cmd" | "reply" => 16 << 10,
        _ => MAX_INCOMING_PACKET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_a_bound_no_larger_than_a_packet() {
        assert_eq!(payload_limit("ddc/nodes/x/status"), 64);
        assert_eq!(payload_limit("homeassistant/status"), 64);
        assert_eq!(payload_limit("ddc/nodes/x/health"), 16 << 10);
        assert_eq!(payload_limit("ddc/nodes/x/history"), 16 << 10);
        assert_eq!(payload_limit("ddc/nodes/x/member"), 4 << 10);
        assert_eq!(payload_limit("ddc/clients/x/signal"), 32 << 10);
        assert_eq!(payload_limit("ddc/nodes/x/cmd"), 16 << 10);
        assert_eq!(payload_limit("anything/else"), MAX_INCOMING_PACKET);
        for t in ["a/status", "a/health", "a/signal", "a/cmd", "a/reply", "x"] {
            assert!(payload_limit(t) <= MAX_INCOMING_PACKET);
        }
    }

    #[test]
    fn contract_topics() {
        let t = Topics::new("ddc", "abc123", "homeassistant");
        assert_eq!(t.status, "ddc/nodes/abc123/status");
        assert_eq!(t.health, "ddc/nodes/abc123/health");
        assert_eq!(t.events, "ddc/nodes/abc123/events");
        assert_eq!(t.history, "ddc/nodes/abc123/history");
        assert_eq!(t.cmd, "ddc/nodes/abc123/cmd");
        assert_eq!(t.reply, "ddc/nodes/abc123/reply");
        assert_eq!(t.signal, "ddc/nodes/abc123/signal");
        assert_eq!(t.discovery, "homeassistant/device/ddc_abc123/config");
        assert_eq!(t.ha_status, "homeassistant/status");
        assert_eq!(t.node_of("ddc/nodes/xyz/status", "status"), Some("xyz"));
        assert_eq!(t.node_of("ddc/nodes/xyz/health", "status"), None);
        assert_eq!(t.node_of("other/nodes/xyz/status", "status"), None);
        assert_eq!(t.member, "ddc/nodes/abc123/member");
        assert_eq!(t.all_member, "ddc/nodes/+/member");
    }

    /// A cluster is a topic prefix: a node under `ddc/site-a` takes no member, status or
    /// signal of `ddc/site-b`, nor of the bare `ddc` fleet (docs/deploy.md, "Scaling").
    #[test]
    fn a_cluster_prefix_sees_only_its_own_nodes() {
        let t = Topics::new("ddc/site-a", "abc123", "homeassistant");
        assert_eq!(t.all_member, "ddc/site-a/nodes/+/member");
        assert_eq!(t.signal, "ddc/site-a/nodes/abc123/signal");
        assert_eq!(
            t.node_of("ddc/site-a/nodes/xyz/member", "member"),
            Some("xyz")
        );
        for other in [
            "ddc/site-b/nodes/xyz/member",
            "ddc/nodes/xyz/member",
            "ddc/site-a/nodes/xyz/extra/member",
        ] {
            assert_eq!(t.node_of(other, "member"), None, "{other}");
        }
    }
}
