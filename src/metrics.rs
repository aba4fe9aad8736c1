//! The Prometheus endpoint (`metrics.listen`, off unless set): the node's figures in the
//! text exposition format, for the scrapers people run beside every storage node.
//!
//! The figures are the health message's (docs/mqtt.md), so the two never disagree:
//! [`render`] is pure, health JSON and MQTT state in, exposition text out; names and units
//! follow Prometheus' conventions (base units: bytes, seconds, ratios; `_total` for
//! counters). The exposition itself (escaping, types, help) is metrics-exporter-prometheus'.
//! [`serve`] is the driver: one bounded GET per connection, like the web page's server.

use metrics::{counter, describe_counter, describe_gauge, gauge, with_local_recorder};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

/// The MQTT session's state, which the health message does not carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct MqttState {
    pub connected: bool,
    pub reconnects: u64,
}

/// Counters: (name, help, path in the health message).
const COUNTERS: &[(&str, &str, &[&str])] = &[
    (
        "ddc_edge_dataplane_egress_bytes_total",
        "Bytes sent to peers and clients over the data plane.",
        &["dataplane", "egress_bytes"],
    ),
    (
        "ddc_edge_dataplane_ingress_bytes_total",
        "Bytes received from peers and clients over the data plane.",
        &["dataplane", "ingress_bytes"],
    ),
    (
        "ddc_edge_dataplane_requests_total",
        "Chunk protocol requests served.",
        &["dataplane", "requests"],
    ),
    (
        "ddc_edge_dataplane_refused_peers_total",
        "Peer connections refused (max_peers reached).",
        &["dataplane", "refused_peers"],
    ),
    (
        "ddc_edge_replication_pulled_chunks_total",
        "Chunks fetched from other nodes by replication.",
        &["replication", "pulled_chunks"],
    ),
    (
        "ddc_edge_replication_pulled_bytes_total",
        "Bytes fetched from other nodes by replication.",
        &["replication", "pulled_bytes"],
    ),
    (
        "ddc_edge_replication_served_bytes_total",
        "Bytes served to other nodes' replication.",
        &["replication", "served_bytes"],
    ),
    (
        "ddc_edge_replication_repaired_chunks_total",
        "Corrupt chunks fetched again from a replica.",
        &["replication", "repaired"],
    ),
    (
        "ddc_edge_replication_handed_off_chunks_total",
        "Local copies deleted after their placed nodes proved they hold them.",
        &["replication", "handed_off"],
    ),
    (
        "ddc_edge_replication_failed_proofs_total",
        "Possession claims (HAS) that a proof then refuted.",
        &["replication", "failed_proofs"],
    ),
    (
        "ddc_edge_replication_anti_entropy_passes_total",
        "Anti-entropy passes (inventory digests compared with partners).",
        &["replication", "anti_entropy_passes"],
    ),
    (
        "ddc_edge_replication_messages_sent_total",
        "Replication messages (notices, digests, listings) sent.",
        &["replication", "messages_sent"],
    ),
    (
        "ddc_edge_replication_messages_received_total",
        "Replication messages taken in.",
        &["replication", "messages_received"],
    ),
    (
        "ddc_edge_replication_messages_dropped_total",
        "Replication messages dropped: from non-members, over a sender's rate, malformed, or queues full.",
        &["replication", "messages_dropped"],
    ),
    (
        "ddc_edge_replication_listings_sent_total",
        "Chunk listings sent (anti-entropy found a difference).",
        &["replication", "listings_sent"],
    ),
];

/// Gauges: (name, help, path, scale applied to the health value). Units are in the
/// names, as Prometheus' text format has no field for them.
const GAUGES: &[(&str, &str, &[&str], f64)] = &[
    (
        "ddc_edge_cpu_temperature_celsius",
        "CPU temperature.",
        &["cpu_temp_c"],
        1.0,
    ),
    (
        "ddc_edge_battery_charge_ratio",
        "Battery state of charge, 0 to 1.",
        &["battery_percent"],
        0.01,
    ),
    (
        "ddc_edge_cpu_load_ratio",
        "CPU load over all cores, 0 to 1.",
        &["cpu_load"],
        0.01,
    ),
    (
        "ddc_edge_memory_used_bytes",
        "Memory in use on the board.",
        &["mem_used_bytes"],
        1.0,
    ),
    (
        "ddc_edge_memory_total_bytes",
        "Memory on the board.",
        &["mem_total_bytes"],
        1.0,
    ),
    (
        "ddc_edge_agent_resident_bytes",
        "The agent's resident memory.",
        &["agent_rss_bytes"],
        1.0,
    ),
    (
        "ddc_edge_uptime_seconds",
        "Seconds since the agent started.",
        &["uptime_s"],
        1.0,
    ),
    (
        "ddc_edge_store_offered_bytes",
        "Disk offered to the network (the quota).",
        &["disk", "offered_bytes"],
        1.0,
    ),
    (
        "ddc_edge_store_used_bytes",
        "Bytes stored.",
        &["disk", "used_bytes"],
        1.0,
    ),
    (
        "ddc_edge_store_free_bytes",
        "Bytes the node can still take (quota and filesystem reserve).",
        &["disk", "free_bytes"],
        1.0,
    ),
    (
        "ddc_edge_store_chunks",
        "Chunks stored.",
        &["disk", "chunks"],
        1.0,
    ),
    (
        "ddc_edge_store_quarantined_chunks",
        "Chunks that failed verification and were set aside.",
        &["disk", "quarantined"],
        1.0,
    ),
    (
        "ddc_edge_store_reclaimable_bytes",
        "Stored bytes the retention model may delete.",
        &["disk", "reclaimable_bytes"],
        1.0,
    ),
    (
        "ddc_edge_store_protected_bytes",
        "Stored bytes the retention model protects.",
        &["disk", "protected_bytes"],
        1.0,
    ),
    (
        "ddc_edge_bandwidth_egress_limit_bytes_per_second",
        "Egress cap.",
        &["bandwidth", "egress_limit_bps"],
        1.0,
    ),
    (
        "ddc_edge_bandwidth_ingress_limit_bytes_per_second",
        "Ingress cap.",
        &["bandwidth", "ingress_limit_bps"],
        1.0,
    ),
    (
        "ddc_edge_dataplane_peers",
        "Peer connections open.",
        &["dataplane", "peers"],
        1.0,
    ),
    (
        "ddc_edge_replication_queued_chunks",
        "Chunks waiting to be fetched.",
        &["replication", "queued"],
        1.0,
    ),
    (
        "ddc_edge_replication_budget_bytes_per_second",
        "Replication budget now (the throttle level applied).",
        &["replication", "budget_bps"],
        1.0,
    ),
    (
        "ddc_edge_throttle_factor",
        "Share of the replication budget the throttle level allows, 0 to 1.",
        &["replication", "factor"],
        1.0,
    ),
];

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

/// The exposition for one scrape. A figure the node does not have (no battery, no
/// replication) is left out rather than reported as zero.
pub fn render(health: &Value, mqtt: MqttState) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    with_local_recorder(&recorder, || {
        for (name, help, path) in COUNTERS {
            if let Some(v) = at(health, path).and_then(Value::as_u64) {
                describe_counter!(*name, *help);
                counter!(*name).absolute(v);
            }
        }
        for (name, help, path, scale) in GAUGES {
            if let Some(v) = at(health, path).and_then(Value::as_f64) {
                describe_gauge!(*name, *help);
                gauge!(*name).set(v * scale);
            }
        }
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        for (name, help, path) in [
            (
                "ddc_edge_on_battery",
                "1 while the board runs on battery.",
                "on_battery",
            ),
            (
                "ddc_edge_undervoltage",
                "1 while the supply is under voltage.",
                "undervoltage",
            ),
            (
                "ddc_edge_draining",
                "1 while the node is draining.",
                "draining",
            ),
        ] {
            if let Some(b) = health.get(path).and_then(Value::as_bool) {
                describe_gauge!(name, help);
                gauge!(name).set(flag(b));
            }
        }
        if let Some(level) = health.get("level").and_then(Value::as_str) {
            describe_gauge!(
                "ddc_edge_throttle_level",
                "The throttle level: 1 for the current one of full, reduced, paused."
            );
            for l in ["full", "reduced", "paused"] {
                gauge!("ddc_edge_throttle_level", "level" => l).set(flag(l == level));
            }
        }
        if let Some(reasons) = health.get("reason_codes").and_then(Value::as_array) {
            describe_gauge!(
                "ddc_edge_throttle_reason",
                "1 for each reason the throttle level is below full."
            );
            for r in reasons.iter().filter_map(Value::as_str) {
                gauge!("ddc_edge_throttle_reason", "reason" => r.to_string()).set(1.0);
            }
        }
        describe_gauge!(
            "ddc_edge_mqtt_connected",
            "1 while connected to the MQTT broker."
        );
        gauge!("ddc_edge_mqtt_connected").set(flag(mqtt.connected));
        describe_counter!(
            "ddc_edge_mqtt_reconnects_total",
            "Connections to the MQTT broker after the first."
        );
        counter!("ddc_edge_mqtt_reconnects_total").absolute(mqtt.reconnects);
        describe_gauge!(
            "ddc_edge_build_info",
            "The agent's version and board profile, as labels; always 1."
        );
        gauge!(
            "ddc_edge_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "board" => health.get("board").and_then(Value::as_str).unwrap_or("").to_string()
        )
        .set(1.0);
    });
    handle.render()
}

/// Serves `GET /metrics` on `listen`, rendering `snapshot()` at each scrape.
pub async fn serve(
    listen: SocketAddr,
    snapshot: Arc<dyn Fn() -> (Value, MqttState) + Send + Sync>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {listen}: {e} (metrics.listen)"))?;
    info!(url = %format!("http://{listen}/metrics"), "Prometheus metrics");
    // Scrapes are rare; more than a few at once is a misbehaving client.
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let snapshot = Arc::clone(&snapshot);
            tokio::spawn(async move {
                let _permit = permit;
                if tokio::time::timeout(Duration::from_secs(10), handle(sock, &*snapshot))
                    .await
                    .is_err()
                {
                    debug!("metrics request timed out");
                }
            });
        }
    });
    Ok(())
}

async fn handle(mut sock: TcpStream, snapshot: &(dyn Fn() -> (Value, MqttState) + Send + Sync)) {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == buf.len() {
            let _ = respond(&mut sock, "431 Request Header Fields Too Large", b"").await;
            return;
        }
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        let _ = respond(&mut sock, "405 Method Not Allowed", b"GET only\n").await;
        return;
    }
    if path != "/metrics" {
        let _ = respond(&mut sock, "404 Not Found", b"metrics are at /metrics\n").await;
        return;
    }
    let (health, mqtt) = snapshot();
    let body = render(&health, mqtt);
    let _ = respond(&mut sock, "200 OK", body.as_bytes()).await;
}

async fn respond(sock: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `name{labels} value` lines by name and labels.
    fn samples(text: &str) -> std::collections::HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn health_figures_become_metrics_in_base_units() {
        let h = json!({
            "board": "rpi4", "level": "reduced", "reason_codes": ["temp_high"],
            "cpu_temp_c": 71.5, "battery_percent": 40.0, "on_battery": true,
            "undervoltage": false, "draining": false, "cpu_load": 12.5, "uptime_s": 30,
            "disk": {"offered_bytes": 1000, "used_bytes": 10, "chunks": 2, "quarantined": 0},
            "replication": {"pulled_bytes": 5, "budget_bps": 250, "factor": 0.25, "queued": 3},
            "dataplane": {"egress_bytes": 7, "peers": 1},
        });
        let text = render(
            &h,
            MqttState {
                connected: true,
                reconnects: 2,
            },
        );
        let s = samples(&text);
        assert_eq!(s["ddc_edge_cpu_temperature_celsius"], 71.5);
        assert_eq!(s["ddc_edge_battery_charge_ratio"], 0.4);
        assert_eq!(s["ddc_edge_cpu_load_ratio"], 0.125);
        assert_eq!(s["ddc_edge_on_battery"], 1.0);
        assert_eq!(s["ddc_edge_store_offered_bytes"], 1000.0);
        assert_eq!(s["ddc_edge_replication_pulled_bytes_total"], 5.0);
        assert_eq!(s["ddc_edge_replication_budget_bytes_per_second"], 250.0);
        assert_eq!(s["ddc_edge_dataplane_egress_bytes_total"], 7.0);
        assert_eq!(s["ddc_edge_throttle_level{level=\"reduced\"}"], 1.0);
        assert_eq!(s["ddc_edge_throttle_level{level=\"full\"}"], 0.0);
        assert_eq!(s["ddc_edge_throttle_reason{reason=\"temp_high\"}"], 1.0);
        assert_eq!(s["ddc_edge_mqtt_connected"], 1.0);
        assert_eq!(s["ddc_edge_mqtt_reconnects_total"], 2.0);
        let info = format!(
            "ddc_edge_build_info{{version=\"{}\",board=\"rpi4\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(s[&info], 1.0, "{text}");
        assert!(text.contains("# TYPE ddc_edge_replication_pulled_bytes_total counter"));
        assert!(text.contains("# HELP ddc_edge_store_used_bytes Bytes stored."));
        // No battery, no metric (rather than a made-up zero).
        let text = render(&json!({"battery_percent": null}), MqttState::default());
        assert!(!text.contains("battery"), "{text}");
    }

    /// The shipped Grafana dashboard is valid JSON and queries only metrics the agent
    /// exports (a renamed metric would leave a panel silently empty).
    #[test]
    fn the_grafana_dashboard_queries_exported_metrics() {
        let d: Value =
            serde_json::from_str(include_str!("../packaging/grafana/ddc-edge-fleet.json"))
                .expect("packaging/grafana/ddc-edge-fleet.json is not valid JSON");
        let full = json!({
            "board": "b", "level": "full", "reason_codes": ["dwell"], "cpu_temp_c": 1.0,
            "battery_percent": 1.0, "on_battery": false, "undervoltage": false,
            "draining": false, "cpu_load": 1.0, "mem_used_bytes": 1, "mem_total_bytes": 1,
            "agent_rss_bytes": 1, "uptime_s": 1,
            "disk": {"offered_bytes": 1, "used_bytes": 1, "free_bytes": 1, "chunks": 1,
                     "quarantined": 0, "reclaimable_bytes": 0, "protected_bytes": 1},
            "bandwidth": {"egress_limit_bps": 1, "ingress_limit_bps": 1},
            "replication": {"pulled_chunks": 1, "pulled_bytes": 1, "served_bytes": 1,
                            "repaired": 0, "handed_off": 0, "failed_proofs": 0, "anti_entropy_passes": 1,
                            "messages_sent": 1, "messages_received": 1, "messages_dropped": 0,
                            "listings_sent": 0,
                            "queued": 0, "budget_bps": 1, "factor": 1.0},
            "dataplane": {"peers": 0, "egress_bytes": 0, "ingress_bytes": 0, "requests": 0,
                          "refused_peers": 0},
        });
        let exported: std::collections::HashSet<String> = render(&full, MqttState::default())
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect();
        let mut queried = 0;
        for panel in d["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("ddc_edge_") {
                        queried += 1;
                        assert!(
                            exported.contains(word),
                            "panel {:?} queries {word}, which the agent does not export",
                            panel["title"]
                        );
                    }
                }
            }
        }
        assert!(queried >= 10, "only {queried} metrics queried");
    }

    #[test]
    fn label_values_are_escaped() {
        let h = json!({"level": "paused", "reason_codes": ["a\"b\\c\nd"], "board": "x\"y"});
        let text = render(&h, MqttState::default());
        assert!(
            text.contains(r#"ddc_edge_throttle_reason{reason="a\"b\\c\nd"} 1"#),
            "{text}"
        );
    }
}
