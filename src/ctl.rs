//! `ddc-edge ctl`: fleet commands from a terminal. Signs each command with the
//! operator's key for the node it goes to ([`crate::control::auth`]), publishes it,
//! waits for the node's signed reply, and prints it.

use crate::config::Config;
use crate::control::auth;
use crate::identity::Identity;
use crate::mqtt::session::Session;
use crate::mqtt::sync::{SyncMarker, client_session};
use anyhow::{Context, bail};
use rumqttc::QoS;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Which nodes a command goes to.
pub enum Target {
    Node(String),
    /// Every node whose retained status says `online`.
    All,
}

/// `key=value` arguments to a JSON object: values that parse as JSON (numbers, `true`,
/// `false`) are taken as such, anything else as a string.
pub fn parse_args(pairs: &[String]) -> anyhow::Result<Value> {
    if pairs.is_empty() {
        return Ok(Value::Null);
    }
    let mut m = Map::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("argument {p:?}: expected key=value (e.g. quota_bytes=1000000)");
        };
        if k.is_empty() {
            bail!("argument {p:?}: the key is empty");
        }
        let value = match serde_json::from_str::<Value>(v) {
            Ok(j @ (Value::Number(_) | Value::Bool(_))) => j,
            _ => Value::String(v.to_string()),
        };
        m.insert(k.to_string(), value);
    }
    Ok(Value::Object(m))
}

/// Sends `verb` to the target nodes and waits up to `timeout` for their replies.
/// Returns the replies by node; an error if any node answered with an error or not at all.
pub async fn run(
    cfg: &Config,
    key: &Path,
    target: Target,
    verb: &str,
    args: Value,
    timeout: Duration,
    json_out: bool,
) -> anyhow::Result<()> {
    let operator = Identity::load_or_create_file(key)
        .with_context(|| format!("operator key {}", key.display()))?;
    let prefix = cfg.mqtt.topic_prefix.clone();
    let client_id = format!(
        "ddc-ctl-{}-{}",
        &operator.node_id()[..8],
        &crate::dataplane::signal::new_session_id()[..8]
    );
    let (mqtt, mut rx, marker) = client_session(
        cfg,
        &client_id,
        &[
            format!("{prefix}/nodes/+/reply"),
            format!("{prefix}/nodes/+/status"),
        ],
    )?;
    let result = exchange(
        &mqtt, &mut rx, &marker, &operator, &prefix, target, verb, args, timeout,
    )
    .await;
    mqtt.shutdown(None).await;
    let replies = result?;
    report(&replies, json_out)
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    mqtt: &Session,
    rx: &mut mpsc::Receiver<rumqttc::Publish>,
    marker: &SyncMarker,
    operator: &Identity,
    prefix: &str,
    target: Target,
    verb: &str,
    args: Value,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Option<Value>>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut subscribed = mqtt.subscribed.clone();
    tokio::time::timeout_at(deadline, subscribed.wait_for(|s| *s))
        .await
        .map_err(|_| anyhow::anyhow!("no connection to the broker within {timeout:?}"))??;
    let nodes_prefix = format!("{prefix}/nodes/");
    let leaf_of = |topic: &str| -> Option<(String, String)> {
        let (id, leaf) = topic.strip_prefix(&nodes_prefix)?.split_once('/')?;
        Some((id.to_string(), leaf.to_string()))
    };
    let nodes: Vec<String> = match target {
        Target::Node(n) => vec![n],
        Target::All => {
            // Retained statuses arrive right after the SubAck, our marker behind them.
            // (An ACL that hides our inbox costs 3 s and a warning, not the command.)
            marker.publish(&mqtt.client).await?;
            let sync_deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(3));
            let mut online = BTreeSet::new();
            let mut synced = false;
            while let Ok(Some(p)) = tokio::time::timeout_at(sync_deadline, rx.recv()).await {
                if marker.is_marker(&p) {
                    synced = true;
                    break;
                }
                if let Some((id, leaf)) = leaf_of(&p.topic)
                    && leaf == "status"
                {
                    if &p.payload[..] == b"online" {
                        online.insert(id);
                    } else {
                        online.remove(&id);
                    }
                }
            }
            if !synced {
                eprintln!(
                    "warning: the broker did not echo our marker within 3 s; commanding the nodes seen online so far"
                );
            }
            if online.is_empty() {
                bail!("no node is online (none has a retained \"online\" status)");
            }
            online.into_iter().collect()
        }
    };
    let id = format!("ctl-{}", &crate::dataplane::signal::new_session_id()[..16]);
    let ts = crate::control::unix_now();
    for node in &nodes {
        let cmd = auth::signed_command(operator, node, &id, ts, verb, args.clone());
        mqtt.client
            .publish(
                format!("{prefix}/nodes/{node}/cmd"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&cmd)?,
            )
            .await?;
    }
    let mut replies: BTreeMap<String, Option<Value>> =
        nodes.iter().map(|n| (n.clone(), None)).collect();
    while replies.values().any(Option::is_none) {
        let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let Some((node, leaf)) = leaf_of(&p.topic) else {
            continue;
        };
        if leaf != "reply" || !replies.contains_key(&node) {
            continue;
        }
        let Ok(reply) = serde_json::from_slice::<Value>(&p.payload) else {
            continue;
        };
        if reply["id"] != id.as_str() {
            continue;
        }
        if !auth::verify_reply(&reply, &node) {
            eprintln!(
                "warning: a reply on {}'s topic is not signed by it; ignored",
                node
            );
            continue;
        }
        replies.insert(node, Some(reply));
    }
    Ok(replies)
}

fn report(replies: &BTreeMap<String, Option<Value>>, json_out: bool) -> anyhow::Result<()> {
    let mut failed = 0;
    if json_out {
        let all: Map<String, Value> = replies
            .iter()
            .map(|(n, r)| (n.clone(), r.clone().unwrap_or(Value::Null)))
            .collect();
        println!("{}", Value::Object(all));
    }
    for (node, reply) in replies {
        match reply {
            None => {
                failed += 1;
                if !json_out {
                    println!("{node}: no reply");
                }
            }
            Some(r) if r["ok"] == true => {
                if !json_out {
                    println!("{node}: ok {}", r["result"]);
                }
            }
            Some(r) => {
                failed += 1;
                if !json_out {
                    println!(
                        "{node}: error {}: {}",
                        r["error"]["code"].as_str().unwrap_or("?"),
                        r["error"]["message"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} nodes did not succeed", replies.len());
    }
    Ok(())
}

/// The operator's public key, for `control.operators` (creating the key on first use).
pub fn public_key(key: &Path) -> anyhow::Result<String> {
    Ok(Identity::load_or_create_file(key)
        .with_context(|| format!("operator key {}", key.display()))?
        .public_key_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_are_typed_like_json() {
        let v = parse_args(&[
            "quota_bytes=1000".into(),
            "level=paused".into(),
            "over_sensors=true".into(),
        ])
        .unwrap();
        assert_eq!(
            v,
            json!({"quota_bytes": 1000, "level": "paused", "over_sensors": true})
        );
        assert_eq!(parse_args(&[]).unwrap(), Value::Null);
        assert!(parse_args(&["nokey".into()]).is_err());
        assert!(parse_args(&["=1".into()]).is_err());
    }
}
