//! The health message: retained on `<prefix>/nodes/<id>/health`, also the `status` reply.
//! Pure assembly from figures the agent gathered.

use crate::sensors::monitor::Status;
use crate::store::Stat;
use serde_json::{Value, json};

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
    /// Extra sections from later subsystems (data plane, replication).
    pub extra: Vec<(&'static str, Value)>,
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

pub fn health(h: &HealthInputs<'_>) -> Value {
    let r = &h.sensors.readings;
    let d = &h.sensors.decision;
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    let disk = match &h.store {
        Some(s) => json!({
            "offered_bytes": s.quota_bytes,
            "used_bytes": s.used_bytes,
            "free_bytes": free_offered(s),
            "chunks": s.chunks,
            "quarantined": s.quarantined,
            "reclaimable_bytes": s.retention.reclaimable_bytes,
            "pending_upload_bytes": s.retention.pending_upload_bytes,
            "protected_bytes": s.retention.protected_bytes,
        }),
        None => json!({"offered_bytes": null, "used_bytes": null, "free_bytes": null}),
    };
    let mut v = json!({
        "node_id": h.node_id,
        "name": h.name,
        "board": h.board,
        "public_key": h.public_key_hex,
        "ts": h.ts,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": h.uptime_s,
        "cpu_temp_c": r.cpu_temp_c.ok().map(round1),
        "battery_percent": r.battery_percent().map(round1),
        "on_battery": r.on_battery(),
        "undervoltage": r.undervoltage(),
        "level": d.level.as_str(),
        "reasons": d.reason_strings(),
        "reason_codes": d.reason_codes(),
        "cpu_load": round1(h.cpu_load),
        "mem_used_bytes": h.mem_used_bytes,
        "mem_total_bytes": h.mem_total_bytes,
        "agent_rss_bytes": h.agent_rss_bytes,
        "disk": disk,
        "bandwidth": {
            "egress_limit_bps": h.egress_limit_bps,
            "ingress_limit_bps": h.ingress_limit_bps,
        },
        "replication": {
            "paused_by": paused_by(h.operator_paused, d.level),
            "factor": if h.operator_paused { 0.0 } else { d.factor },
            "placement": crate::replication::placement::VERSION,
        },
        "draining": h.draining,
    });
    if let Value::Object(m) = &mut v {
        for (k, section) in &h.extra {
            match m.get_mut(*k) {
                Some(Value::Object(existing)) => {
                    if let Value::Object(add) = section {
                        existing.extend(add.clone());
                    }
                }
                _ => {
                    m.insert(k.to_string(), section.clone());
                }
            }
        }
    }
    v
}
