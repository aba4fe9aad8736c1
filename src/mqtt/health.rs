//! The health message: retained on `<prefix>/nodes/<id>/health`, also the `status` reply.
//! Pure assembly from figures the agent gathered.

use crate::sensors::monitor::Status;
use crate::store::Stat;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The health message (docs/mqtt.md): built by the node ([`health`]), published signed,
/// and read back by `ddc-edge nodes` and the node's own membership record. Every field
/// has a default, so a message from an older or newer agent (a field missing or added)
/// still reads; `null` means the node does not know.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub node_id: String,
    pub name: String,
    pub board: String,
    pub public_key: String,
    /// When the node built it (unix seconds).
    pub ts: u64,
    pub version: String,
    pub uptime_s: u64,
    pub cpu_temp_c: Option<f64>,
    pub battery_percent: Option<f64>,
    pub on_battery: Option<bool>,
    pub undervoltage: Option<bool>,
    /// `full`, `reduced` or `paused`.
    pub level: String,
    /// Sentences with figures, for people.
    pub reasons: Vec<String>,
    /// Stable codes (`temp_high`, `battery_low`, ...), for labels.
    pub reason_codes: Vec<String>,
    pub cpu_load: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub agent_rss_bytes: u64,
    pub disk: Disk,
    pub bandwidth: Bandwidth,
    pub replication: Replication,
    pub draining: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<Dataplane>,
    /// The signature (`crate::fleet::sign_health`), kept through a round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<Value>,
}

/// The store's figures; the offered/used/free three are `null` when the store could not
/// be read, and the breakdown is then left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Disk {
    pub offered_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaimable_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_upload_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bandwidth {
    pub egress_limit_bps: u64,
    pub ingress_limit_bps: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Replication {
    /// `operator`, `policy` or `null`.
    pub paused_by: Option<String>,
    pub factor: f64,
    pub placement: u64,
    /// The replicator's figures; absent with `replication.factor = 1`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ReplicationStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationStats {
    pub target_factor: u64,
    pub files_with_more_copies: u64,
    pub queued: u64,
    pub held: u64,
    pub pulled_chunks: u64,
    pub pulled_bytes: u64,
    pub served_bytes: u64,
    pub repaired: u64,
    pub handed_off: u64,
    pub failed_proofs: u64,
    pub budget_bps: u64,
    pub anti_entropy_passes: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub messages_dropped: u64,
    pub notices_sent: u64,
    pub listings_sent: u64,
    pub listings_received: u64,
    pub planner_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dataplane {
    pub peers: u64,
    pub egress_bytes: u64,
    pub ingress_bytes: u64,
    pub requests: u64,
    pub refused_peers: u64,
}

impl Health {
    /// The JSON the node publishes (before it is signed).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("health serializes")
    }
}

/// Everything that goes into one health message.
pub struct HealthInputs<'a> {
    pub node_id: &'a str,
    pub name: &'a str,
    pub board: &'a str,
    pub public_key_hex: &'a str,
    pub ts: u64,
    pub uptime_s: u64,
    pub sensors: &'a Status,
    pub cpu_load: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub agent_rss_bytes: u64,
    pub store: Option<Stat>,
    pub egress_limit_bps: u64,
    pub ingress_limit_bps: u64,
    pub operator_paused: bool,
    pub draining: bool,
    /// From the replicator, when there is one.
    pub replication: Option<ReplicationStats>,
    pub dataplane: Option<Dataplane>,
}

/// `paused_by` in the contract: the operator's pause wins over the policy's.
pub fn paused_by(operator_paused: bool, level: crate::throttle::Level) -> Option<&'static str> {
    if operator_paused {
        Some("operator")
    } else if level == crate::throttle::Level::Paused {
        Some("policy")
    } else {
        None
    }
}

/// Bytes the node can still take: the smaller of what is left of the quota and what the
/// filesystem has above its reserve.
pub fn free_offered(s: &Stat) -> u64 {
    s.quota_bytes
        .saturating_sub(s.used_bytes)
        .min(s.free_bytes.saturating_sub(s.reserve_bytes))
}

pub fn health(h: &HealthInputs<'_>) -> Health {
    let r = &h.sensors.readings;
    let d = &h.sensors.decision;
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    let disk = match &h.store {
        Some(s) => Disk {
            offered_bytes: Some(s.quota_bytes),
            used_bytes: Some(s.used_bytes),
            free_bytes: Some(free_offered(s)),
            chunks: Some(s.chunks),
            quarantined: Some(s.quarantined),
            reclaimable_bytes: Some(s.retention.reclaimable_bytes),
            pending_upload_bytes: Some(s.retention.pending_upload_bytes),
            protected_bytes: Some(s.retention.protected_bytes),
        },
        None => Disk::default(),
    };
    Health {
        node_id: h.node_id.into(),
        name: h.name.into(),
        board: h.board.into(),
        public_key: h.public_key_hex.into(),
        ts: h.ts,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: h.uptime_s,
        cpu_temp_c: r.cpu_temp_c.ok().map(round1),
        battery_percent: r.battery_percent().map(round1),
        on_battery: r.on_battery(),
        undervoltage: r.undervoltage(),
        level: d.level.as_str().into(),
        reasons: d.reason_strings(),
        reason_codes: d.reason_codes().into_iter().map(String::from).collect(),
        cpu_load: round1(h.cpu_load),
        mem_used_bytes: h.mem_used_bytes,
        mem_total_bytes: h.mem_total_bytes,
        agent_rss_bytes: h.agent_rss_bytes,
        disk,
        bandwidth: Bandwidth {
            egress_limit_bps: h.egress_limit_bps,
            ingress_limit_bps: h.ingress_limit_bps,
        },
        replication: Replication {
            paused_by: paused_by(h.operator_paused, d.level).map(String::from),
            factor: if h.operator_paused { 0.0 } else { d.factor },
            placement: u64::from(crate::replication::placement::VERSION),
            stats: h.replication.clone(),
        },
        draining: h.draining,
        dataplane: h.dataplane.clone(),
        auth: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Health {
        Health {
            node_id: "n1".into(),
            name: "shed".into(),
            level: "reduced".into(),
            ts: 1_700_000_000,
            cpu_temp_c: Some(71.5),
            reason_codes: vec!["temp_high".into()],
            disk: Disk {
                offered_bytes: Some(10),
                used_bytes: Some(2),
                free_bytes: Some(8),
                chunks: Some(1),
                ..Disk::default()
            },
            replication: Replication {
                paused_by: Some("policy".into()),
                factor: 0.5,
                placement: 2,
                stats: Some(ReplicationStats {
                    queued: 3,
                    budget_bps: 250_000,
                    ..ReplicationStats::default()
                }),
            },
            dataplane: Some(Dataplane {
                peers: 1,
                ..Dataplane::default()
            }),
            ..Health::default()
        }
    }

    /// The JSON is docs/mqtt.md's shape (the replicator's figures sit in `replication`
    /// beside the policy's), and it reads back as the same value.
    #[test]
    fn health_round_trips_in_the_documented_shape() {
        let h = sample();
        let v = h.to_value();
        assert_eq!(v["replication"]["paused_by"], "policy");
        assert_eq!(v["replication"]["queued"], 3);
        assert_eq!(v["replication"]["placement"], 2);
        assert_eq!(v["dataplane"]["peers"], 1);
        assert_eq!(v["disk"]["chunks"], 1);
        assert!(v["disk"].get("quarantined").is_none(), "{v}");
        assert_eq!(v["battery_percent"], Value::Null);
        assert!(v.get("auth").is_none());
        let back: Health = serde_json::from_value(v).unwrap();
        assert_eq!(back, h);
    }

    /// Without a store reading the three disk figures are `null`, as before; without a
    /// replicator (factor 1) or data plane their sections are left out.
    #[test]
    fn unknown_figures_are_null_and_missing_subsystems_absent() {
        let v = Health::default().to_value();
        assert_eq!(
            v["disk"],
            json!({"offered_bytes": null, "used_bytes": null, "free_bytes": null})
        );
        assert!(v.get("dataplane").is_none());
        assert_eq!(
            v["replication"],
            json!({"paused_by": null, "factor": 0.0, "placement": 0})
        );
    }

    /// A message from an older or newer agent: missing fields default, unknown ones are
    /// ignored, the signature is kept.
    #[test]
    fn older_and_newer_messages_still_read() {
        let old = json!({"node_id": "n", "level": "full", "future_field": [1, 2],
                         "auth": {"key": "k", "sig": "s"}});
        let h: Health = serde_json::from_value(old).unwrap();
        assert_eq!(h.level, "full");
        assert_eq!(h.cpu_temp_c, None);
        assert_eq!(h.replication, Replication::default());
        assert_eq!(h.auth.unwrap()["sig"], "s");
    }
}
