//! `ddc-edge nodes`: the fleet as a table, from what every node keeps retained on the
//! broker (its status and its signed health, docs/mqtt.md).
//!
//! Pure: [`Fleet`] takes the retained messages in and gives [`Row`]s out, checking each
//! health message's signature (and fleet certificate, with `fleet.ca`) exactly as the
//! agents do, so a forgery on the broker shows as one, not as a node. [`table`] and
//! [`Row::json`] render them. Driver: [`run`] subscribes, waits until the broker has sent
//! everything retained (a marker it echoes behind them, not a fixed wait), prints, and
//! with `--watch` prints again on every change.

use crate::config::Config;
use crate::fleet::Rejected;
use crate::mqtt::health::Health;
use crate::mqtt::session::Session;
use crate::mqtt::sync::{SyncMarker, client_session};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use tokio::sync::mpsc;

/// What is known about one node.
#[derive(Debug, Default, Clone)]
struct Node {
    /// The retained status: `online`, or the last will's `offline`.
    online: Option<bool>,
    /// The last health message that passed the checks.
    health: Option<Health>,
    /// Why the last health message on its topic was refused, if it was.
    refused: Option<String>,
    /// The node is signed but not enrolled in this fleet (`fleet.ca`).
    not_enrolled: bool,
}

/// The fleet as seen from the broker's retained messages.
#[derive(Debug, Default)]
pub struct Fleet {
    ca: Option<[u8; 32]>,
    nodes: BTreeMap<String, Node>,
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub node_id: String,
    pub name: Option<String>,
    pub online: Option<bool>,
    pub level: Option<String>,
    pub reasons: Vec<String>,
    pub cpu_temp_c: Option<f64>,
    pub battery_percent: Option<f64>,
    pub on_battery: Option<bool>,
    pub disk_used_bytes: Option<u64>,
    pub disk_offered_bytes: Option<u64>,
    pub replication_queued: Option<u64>,
    pub replication_budget_bps: Option<u64>,
    pub version: Option<String>,
    /// Seconds since the node signed its last health message.
    pub last_seen_s: Option<u64>,
    pub draining: bool,
    /// Whose health this is not: the health on the node's topic was refused, and why.
    pub refused: Option<String>,
    pub not_enrolled: bool,
}

impl Fleet {
    pub fn new(ca: Option<[u8; 32]>) -> Fleet {
        Fleet {
            ca,
            nodes: BTreeMap::new(),
        }
    }

    /// One message from `<prefix>/nodes/<id>/<leaf>`; returns whether the view changed.
    /// A status other than `online`/`offline`, or a health message that fails its
    /// checks, changes nothing the table shows as the node's own.
    pub fn on_message(&mut self, id: &str, leaf: &str, payload: &[u8], now: u64) -> bool {
        match leaf {
            "status" => {
                let online = match payload {
                    b"online" => Some(true),
                    b"offline" => Some(false),
                    // Retained status cleared (empty payload): the node is gone.
                    b"" => None,
                    _ => return false,
                };
                let node = self.nodes.entry(id.to_string()).or_default();
                let changed = node.online != online;
                node.online = online;
                if online.is_none() && node.health.is_none() {
                    self.nodes.remove(id);
                }
                changed
            }
            "health" => {
                if payload.is_empty() {
                    return self
                        .nodes
                        .get_mut(id)
                        .is_some_and(|n| n.health.take().is_some());
                }
                let node = self.nodes.entry(id.to_string()).or_default();
                // Signed by the node itself, but its figures must still read as health.
                let typed = |h: Value| {
                    serde_json::from_value::<Health>(h)
                        .map_err(|e| format!("unreadable health ignored: {e}"))
                };
                match crate::fleet::verify_health(id, payload, self.ca.as_ref(), now) {
                    Ok(h) => match typed(h) {
                        Ok(h) => {
                            node.health = Some(h);
                            node.refused = None;
                            node.not_enrolled = false;
                        }
                        Err(why) => node.refused = Some(why),
                    },
                    Err(Rejected::NotEnrolled(why)) => {
                        // Signed by the node itself: its figures are its own, but it is
                        // not a member of this fleet.
                        node.health = crate::fleet::verify_health(id, payload, None, now)
                            .ok()
                            .and_then(|h| typed(h).ok());
                        node.not_enrolled = true;
                        node.refused = Some(format!("not enrolled: {why}"));
                    }
                    Err(Rejected::Forged(why)) => {
                        node.refused = Some(format!("forged health ignored: {why}"));
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// The table's rows, by node ID.
    pub fn rows(&self, now: u64) -> Vec<Row> {
        self.nodes
            .iter()
            .map(|(id, n)| {
                let h = n.health.as_ref();
                let text = |f: fn(&Health) -> &String| h.map(f).filter(|s| !s.is_empty()).cloned();
                let stats = h.and_then(|h| h.replication.stats.as_ref());
                Row {
                    node_id: id.clone(),
                    name: text(|h| &h.name),
                    online: n.online,
                    level: text(|h| &h.level),
                    reasons: h.map(|h| h.reasons.clone()).unwrap_or_default(),
                    cpu_temp_c: h.and_then(|h| h.cpu_temp_c),
                    battery_percent: h.and_then(|h| h.battery_percent),
                    on_battery: h.and_then(|h| h.on_battery),
                    disk_used_bytes: h.and_then(|h| h.disk.used_bytes),
                    disk_offered_bytes: h.and_then(|h| h.disk.offered_bytes),
                    replication_queued: stats.map(|s| s.queued),
                    replication_budget_bps: stats.map(|s| s.budget_bps),
                    version: text(|h| &h.version),
                    // A message without a time (0) has no age.
                    last_seen_s: h
                        .map(|h| h.ts)
                        .filter(|&ts| ts > 0)
                        .map(|ts| now.saturating_sub(ts)),
                    draining: h.is_some_and(|h| h.draining),
                    refused: n.refused.clone(),
                    not_enrolled: n.not_enrolled,
                }
            })
            .collect()
    }
}

impl Row {
    /// The row for `--json`: base units, `null` for what the node did not report.
    pub fn json(&self) -> Value {
        json!({
            "node_id": self.node_id,
            "name": self.name,
            "online": self.online,
            "level": self.level,
            "reasons": self.reasons,
            "cpu_temp_c": self.cpu_temp_c,
            "battery_percent": self.battery_percent,
            "on_battery": self.on_battery,
            "disk_used_bytes": self.disk_used_bytes,
            "disk_offered_bytes": self.disk_offered_bytes,
            "replication_queued": self.replication_queued,
            "replication_budget_bps": self.replication_budget_bps,
            "version": self.version,
            "last_seen_s": self.last_seen_s,
            "draining": self.draining,
            "refused": self.refused,
            "not_enrolled": self.not_enrolled,
        })
    }
}

/// Bytes in the units people read (1000-based, like the health message's rates).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The rows as an aligned table with a header.
pub fn table(rows: &[Row]) -> String {
    let dash = || "-".to_string();
    let header = [
        "NODE", "NAME", "ONLINE", "LEVEL", "WHY", "CPU", "BATTERY", "DISK", "QUEUE", "REPL",
        "VERSION", "SEEN",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mut why = r.reasons.join(",");
        if r.draining {
            why = if why.is_empty() {
                "draining".into()
            } else {
                format!("{why},draining")
            };
        }
        if let Some(refused) = &r.refused {
            why = if why.is_empty() {
                refused.clone()
            } else {
                format!("{why}; {refused}")
            };
        }
        lines.push(vec![
            r.node_id.chars().take(12).collect(),
            r.name.clone().unwrap_or_else(dash),
            match r.online {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "?".into(),
            },
            r.level.clone().unwrap_or_else(dash),
            if why.is_empty() { dash() } else { why },
            r.cpu_temp_c.map_or_else(dash, |t| format!("{t:.1}°C")),
            match (r.battery_percent, r.on_battery) {
                (Some(p), Some(true)) => format!("{p:.0}% (on battery)"),
                (Some(p), _) => format!("{p:.0}%"),
                (None, _) => dash(),
            },
            match (r.disk_used_bytes, r.disk_offered_bytes) {
                (Some(u), Some(o)) => format!("{}/{}", bytes(u), bytes(o)),
                _ => dash(),
            },
            r.replication_queued.map_or_else(dash, |q| q.to_string()),
            r.replication_budget_bps
                .map_or_else(dash, |b| format!("{}/s", bytes(b))),
            r.version.clone().unwrap_or_else(dash),
            r.last_seen_s
                .map_or_else(dash, |s| format!("{} ago", ago(s))),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}", w = *w))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Prints the fleet once, or with `watch` on every change until interrupted.
pub async fn run(
    cfg: &Config,
    json_out: bool,
    watch: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let prefix = &cfg.mqtt.topic_prefix;
    let session_id = crate::dataplane::signal::new_session_id();
    let client_id = format!("ddc-nodes-{}", session_id.get(..12).unwrap_or("0"));
    let (mqtt, mut rx, marker) = client_session(
        cfg,
        &client_id,
        &[
            format!("{prefix}/nodes/+/status"),
            format!("{prefix}/nodes/+/health"),
        ],
    )?;
    let result = watch_fleet(cfg, &mqtt, &mut rx, &marker, json_out, watch, timeout).await;
    mqtt.shutdown(None).await;
    result
}

async fn watch_fleet(
    cfg: &Config,
    mqtt: &Session,
    rx: &mut mpsc::Receiver<rumqttc::Publish>,
    marker: &SyncMarker,
    json_out: bool,
    watch: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut subscribed = mqtt.subscribed.clone();
    tokio::time::timeout(timeout, subscribed.wait_for(|s| *s))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot reach the MQTT broker at {} within {} s",
                cfg.mqtt.broker,
                timeout.as_secs()
            )
        })??;
    marker.publish(&mqtt.client).await?;
    let ca = crate::fleet::parse_ca(&cfg.fleet.ca).ok();
    let mut fleet = Fleet::new(ca);
    let nodes_prefix = format!("{}/nodes/", cfg.mqtt.topic_prefix);
    let mut synced = false;
    let sync_deadline = tokio::time::Instant::now() + timeout;
    let mut out = std::io::stdout();
    let redraw = out.is_terminal() && !json_out;
    loop {
        let msg = if synced {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(sync_deadline, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    eprintln!(
                        "warning: the broker did not echo our marker within {} s; showing the nodes seen so far",
                        timeout.as_secs()
                    );
                    synced = true;
                    print(&mut out, &fleet, json_out, watch, redraw)?;
                    if !watch {
                        return Ok(());
                    }
                    continue;
                }
            }
        };
        let Some(p) = msg else {
            anyhow::bail!("the MQTT session ended");
        };
        if p.topic == marker.topic() {
            if !synced && marker.is_marker(&p) {
                synced = true;
                print(&mut out, &fleet, json_out, watch, redraw)?;
                if !watch {
                    return Ok(());
                }
            }
            continue;
        }
        let Some((id, leaf)) = p
            .topic
            .strip_prefix(&nodes_prefix)
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        if fleet.on_message(id, leaf, &p.payload, crate::control::unix_now()) && synced {
            print(&mut out, &fleet, json_out, watch, redraw)?;
        }
    }
}

fn print(
    out: &mut std::io::Stdout,
    fleet: &Fleet,
    json_out: bool,
    watch: bool,
    redraw: bool,
) -> anyhow::Result<()> {
    let rows = fleet.rows(crate::control::unix_now());
    let mut out = out.lock();
    if json_out {
        // One JSON array per view: a line each with --watch, for `jq` and scripts.
        let all: Vec<Value> = rows.iter().map(Row::json).collect();
        if watch {
            writeln!(out, "{}", Value::Array(all))?;
        } else {
            writeln!(out, "{}", serde_json::to_string_pretty(&Value::Array(all))?)?;
        }
    } else {
        if redraw && watch {
            // Clear the screen and go home, like watch(1).
            write!(out, "\x1b[2J\x1b[H")?;
        } else if watch {
            writeln!(out)?;
        }
        if rows.is_empty() {
            writeln!(
                out,
                "no nodes: nothing retained under this prefix on this broker"
            )?;
        } else {
            write!(out, "{}", table(&rows))?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn signed(id: &Identity, body: Value) -> Vec<u8> {
        let mut h = body;
        crate::fleet::sign_health(id, None, &mut h);
        serde_json::to_vec(&h).unwrap()
    }

    fn node() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        (dir, id)
    }

    #[test]
    fn rows_come_from_signed_health_and_status() {
        let (_d, a) = node();
        let mut f = Fleet::new(None);
        assert!(f.on_message(a.node_id(), "status", b"online", 1000));
        let h = json!({
            "node_id": a.node_id(), "name": "shed", "ts": 990, "version": "0.1.0",
            "level": "reduced", "reasons": ["cpu_temp"], "cpu_temp_c": 71.5,
            "battery_percent": 40.0, "on_battery": true, "draining": false,
            "disk": {"used_bytes": 2_000_000, "offered_bytes": 10_000_000_000u64},
            "replication": {"queued": 3, "budget_bps": 250_000},
        });
        assert!(f.on_message(a.node_id(), "health", &signed(&a, h), 1000));
        let rows = f.rows(1000);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.online, Some(true));
        assert_eq!(r.name.as_deref(), Some("shed"));
        assert_eq!(r.level.as_deref(), Some("reduced"));
        assert_eq!(r.reasons, ["cpu_temp"]);
        assert_eq!(r.last_seen_s, Some(10));
        assert_eq!(r.replication_queued, Some(3));
        let t = table(&rows);
        let line = t.lines().nth(1).unwrap();
        for cell in [
            &a.node_id()[..12],
            "shed",
            "yes",
            "reduced",
            "cpu_temp",
            "71.5°C",
            "40% (on battery)",
            "2.0 MB/10.0 GB",
            "250.0 kB/s",
            "0.1.0",
            "10s ago",
        ] {
            assert!(line.contains(cell), "{cell:?} missing from {line:?}");
        }
        assert_eq!(r.json()["disk_offered_bytes"], 10_000_000_000u64);
        // The last will.
        assert!(f.on_message(a.node_id(), "status", b"offline", 1001));
        assert_eq!(f.rows(1001)[0].online, Some(false));
        assert!(!f.on_message(a.node_id(), "status", b"offline", 1002));
    }

    #[test]
    fn a_forged_health_is_shown_as_one_and_changes_nothing() {
        let (_d, a) = node();
        let (_e, mallory) = node();
        let mut f = Fleet::new(None);
        let real = json!({"name": "real", "level": "normal", "ts": 5});
        f.on_message(a.node_id(), "health", &signed(&a, real), 10);
        // Signed by someone else, on a's topic.
        let fake = json!({"name": "fake", "level": "paused", "ts": 9});
        f.on_message(a.node_id(), "health", &signed(&mallory, fake), 10);
        // Not even JSON.
        f.on_message(a.node_id(), "health", b"{{{", 10);
        let r = &f.rows(10)[0];
        assert_eq!(r.name.as_deref(), Some("real"));
        assert_eq!(r.level.as_deref(), Some("normal"));
        assert!(r.refused.as_deref().unwrap().starts_with("forged"), "{r:?}");
        // Garbage status is not a status.
        assert!(!f.on_message(a.node_id(), "status", b"\xff\x00", 10));
        assert!(!f.on_message(a.node_id(), "whatever", b"online", 10));
    }

    /// Signed by the node, but not health as the type says (a figure of the wrong type):
    /// refused with the reason, and the node's last good figures stay.
    #[test]
    fn a_signed_health_of_the_wrong_shape_is_refused_with_the_reason() {
        let (_d, a) = node();
        let mut f = Fleet::new(None);
        let good = json!({"name": "real", "level": "full", "ts": 5, "cpu_temp_c": 40.0});
        f.on_message(a.node_id(), "health", &signed(&a, good), 10);
        let odd = json!({"name": "odd", "level": "full", "ts": 6, "cpu_temp_c": "hot"});
        f.on_message(a.node_id(), "health", &signed(&a, odd), 10);
        let r = &f.rows(10)[0];
        assert_eq!(r.name.as_deref(), Some("real"));
        assert_eq!(r.cpu_temp_c, Some(40.0));
        let why = r.refused.as_deref().unwrap();
        assert!(why.starts_with("unreadable health ignored"), "{why}");
        assert!(
            why.contains("cpu_temp_c") || why.contains("invalid type"),
            "{why}"
        );
    }

    #[test]
    fn with_a_fleet_ca_unenrolled_nodes_are_marked() {
        let (_d, a) = node();
        let (_c, ca) = node();
        let mut f = Fleet::new(Some(*ca.public_key()));
        f.on_message(
            a.node_id(),
            "health",
            &signed(&a, json!({"name": "stray", "ts": 1})),
            1,
        );
        let r = &f.rows(1)[0];
        assert!(r.not_enrolled);
        assert_eq!(r.name.as_deref(), Some("stray"));
        assert!(table(&f.rows(1)).contains("not enrolled"));
    }

    #[test]
    fn cleared_retained_messages_remove_the_node() {
        let (_d, a) = node();
        let mut f = Fleet::new(None);
        f.on_message(a.node_id(), "status", b"online", 1);
        f.on_message(a.node_id(), "status", b"", 1);
        assert!(f.rows(1).is_empty());
        assert_eq!(table(&[]).lines().count(), 1);
    }
}
