//! The topic contract (docs/mqtt.md). Every topic the agent uses is built here.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `<prefix>/nodes/<node_id>`
    pub base: String,
    pub status: String,
    pub health: String,
    pub events: String,
    pub cmd: String,
    pub reply: String,
    pub signal: String,
    /// Every node's status and health, for peers that place data (`<prefix>/nodes/+/...`).
    pub all_status: String,
    pub all_health: String,
    pub discovery: String,
    pub ha_status: String,
}

impl Topics {
    pub fn new(prefix: &str, node_id: &str, discovery_prefix: &str) -> Topics {
        let base = format!("{prefix}/nodes/{node_id}");
        Topics {
            status: format!("{base}/status"),
            health: format!("{base}/health"),
            events: format!("{base}/events"),
            cmd: format!("{base}/cmd"),
            reply: format!("{base}/reply"),
            signal: format!("{base}/signal"),
            all_status: format!("{prefix}/nodes/+/status"),
            all_health: format!("{prefix}/nodes/+/health"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_topics() {
        let t = Topics::new("ddc", "abc123", "homeassistant");
        assert_eq!(t.status, "ddc/nodes/abc123/status");
        assert_eq!(t.health, "ddc/nodes/abc123/health");
        assert_eq!(t.events, "ddc/nodes/abc123/events");
        assert_eq!(t.cmd, "ddc/nodes/abc123/cmd");
        assert_eq!(t.reply, "ddc/nodes/abc123/reply");
        assert_eq!(t.signal, "ddc/nodes/abc123/signal");
        assert_eq!(t.discovery, "homeassistant/device/ddc_abc123/config");
        assert_eq!(t.ha_status, "homeassistant/status");
        assert_eq!(t.node_of("ddc/nodes/xyz/status", "status"), Some("xyz"));
        assert_eq!(t.node_of("ddc/nodes/xyz/health", "status"), None);
        assert_eq!(t.node_of("other/nodes/xyz/status", "status"), None);
    }
}
