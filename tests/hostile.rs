//! A fleet that holds against hostile or broken members: real agents, a real mosquitto,
//! and an attacker who can publish on the broker.

mod common;
use common::mosquitto::{Mosquitto, Probe};
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn topic(id: &str, leaf: &str) -> String {
    format!("ddc/nodes/{id}/{leaf}")
}

/// Sends a command and waits for its reply.
fn command(p: &mut Probe, id: &str, cmd_id: &str, body: Value) -> Value {
    let mut body = body;
    body["id"] = json!(cmd_id);
    p.publish(&topic(id, "cmd"), serde_json::to_vec(&body).unwrap(), false);
    let reply_topic = topic(id, "reply");
    p.wait_new(&format!("reply to {cmd_id}"), T, |m| {
        m.topic == reply_topic && m.json()["id"] == cmd_id
    })
    .json()
}

/// One oversized message (retained on another node's health or status topic, or sent to
/// the node's own command and signal topics) used to end the agent's MQTT connection: a
/// retained one put every agent into a reconnect loop, offline, its commands unanswered.
#[test]
fn oversized_messages_never_take_a_node_off_the_broker() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut p = Probe::connect(m.port, &[&topic(&id, "reply"), &topic(&id, "status")]);
    // Retained before the node starts: it gets them at its first subscription.
    let other = "0bad00000000000000000001";
    p.publish(&topic(other, "health"), vec![b'{'; 300_000], true);
    p.publish(&topic(other, "status"), vec![b'o'; 300_000], true);
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    p.wait("online", T, |x| x.text() == "online");
    // While it runs: a megabyte on its command topic, an oversized signaling offer, a
    // health message just over its limit (parsed by nobody), then a new retained giant.
    p.publish(&topic(&id, "cmd"), vec![b' '; 1_000_000], false);
    p.publish(&topic(&id, "signal"), vec![b'{'; 300_000], false);
    p.publish(&topic(other, "health"), vec![b' '; (16 << 10) + 1], false);
    p.publish(
        &topic("0bad00000000000000000002", "health"),
        vec![b'{'; 300_000],
        true,
    );
    let r = command(&mut p, &id, "after", json!({"cmd": "ping"}));
    assert_eq!(r["ok"], true, "{r}");
    agent.wait_for("ignoring an oversized MQTT message", T);
    assert!(
        !agent
            .seen
            .iter()
            .any(|l| l.contains("MQTT connection lost")),
        "the node lost its broker connection"
    );
    // Still online: no last will fired.
    let statuses = p.drain_for(Duration::from_millis(500));
    assert!(
        statuses.iter().all(|x| x.text() != "offline"),
        "the node went offline"
    );
}
