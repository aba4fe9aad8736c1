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
    p.publish(&topic(other, "member"), vec![b'{'; 300_000], true);
    p.publish(&topic(other, "status"), vec![b'o'; 300_000], true);
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    p.wait("online", T, |x| x.text() == "online");
    // While it runs: a megabyte on its command topic, an oversized signaling offer, a
    // health message just over its limit (parsed by nobody), then a new retained giant.
    p.publish(&topic(&id, "cmd"), vec![b' '; 1_000_000], false);
    p.publish(&topic(&id, "signal"), vec![b'{'; 300_000], false);
    p.publish(&topic(other, "health"), vec![b' '; (16 << 10) + 1], false);
    p.publish(&topic(other, "member"), vec![b' '; (4 << 10) + 1], false);
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

/// Someone with a fresh key sends a properly signed offer whose `reply_to` is the
/// victim's own status topic: the node used to publish its answer (JSON) there, and its
/// peers, reading anything but "online" as offline, stopped replicating with it.
#[test]
fn a_reflected_offer_is_dropped_and_never_answered() {
    use ddc_edge::dataplane::RtcSettings;
    use ddc_edge::dataplane::client::Conn;
    use ddc_edge::dataplane::signal::Signal;
    use ddc_edge::identity::Identity;
    use std::sync::Arc;

    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let status = topic(&id, "status");
    let mut p = Probe::connect(m.port, &[&status]);
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    p.wait("online", T, |x| x.text() == "online");

    let work = tempfile::tempdir().unwrap();
    let me = Arc::new(Identity::load_or_create_file(&work.path().join("k")).unwrap());
    let mut cfg = m.client_config();
    cfg.webrtc.connect_timeout = ddc_edge::units::HumanDuration(Duration::from_secs(3));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let o = rumqttc::MqttOptions::new("attacker", "127.0.0.1", m.port);
        let (client, mut ev) = rumqttc::AsyncClient::new(o, 16);
        tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        // The offer names the victim's status topic as where to answer.
        let signal = Signal::new(me, client, "ddc", status.clone(), None);
        let r = Conn::connect(&signal, &RtcSettings::from_config(&cfg), &id).await;
        assert!(r.is_err(), "a reflected offer was answered");
    });
    agent.wait_for("reply_to is not the sender's own signaling topic", T);
    let seen = p.drain_for(Duration::from_millis(500));
    assert!(
        seen.iter().all(|x| x.text() == "online"),
        "something other than \"online\" appeared on the node's status topic: {:?}",
        seen.iter().map(|x| x.text()).collect::<Vec<_>>()
    );
}

/// A forged retained "offline" (or health, or membership record) on a running node's own
/// topics used to stand until someone cleared it; the node now puts its own value back at
/// once.
#[test]
fn a_forged_status_or_health_is_corrected_at_once() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let (status, health) = (topic(&id, "status"), topic(&id, "health"));
    let member = topic(&id, "member");
    let mut p = Probe::connect(m.port, &[&status, &health, &member]);
    let _agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    p.wait("online", T, |x| x.topic == status && x.text() == "online");
    p.publish(&status, "offline", true);
    p.wait_new("the node's own status back", T, |x| {
        x.topic == status && x.text() == "online"
    });
    p.publish(
        &health,
        r#"{"disk":{"free_bytes":0},"draining":true}"#,
        true,
    );
    p.wait_new("the node's own health back", T, |x| {
        x.topic == health && x.json()["node_id"] == id.as_str()
    });
    // Placement reads the membership record: a forged "draining" would empty the node.
    p.publish(
        &member,
        format!(r#"{{"node_id":"{id}","draining":true,"disk":{{"free_bytes":0}}}}"#),
        true,
    );
    p.wait_new("the node's own membership record back", T, |x| {
        x.topic == member && x.json()["draining"] == false && x.json()["auth"]["sig"].is_string()
    });
    // What a late subscriber (a peer starting now) sees is the node's, not the forgery.
    let mut late = Probe::connect(m.port, &[&status, &health, &member]);
    late.wait("retained online", T, |x| {
        x.topic == status && x.text() == "online"
    });
    late.wait("retained health", T, |x| {
        x.topic == health && x.json()["node_id"] == id.as_str()
    });
    late.wait("retained membership record", T, |x| {
        x.topic == member && x.json()["draining"] == false
    });
}

/// `ddc-edge ctl` with arguments for this broker.
fn ctl(m: &Mosquitto, key: &std::path::Path, words: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec!["ctl".into()];
    args.extend(words.iter().map(|s| s.to_string()));
    args.extend(["--config", "/dev/null", "--broker", &m.url(), "--key"].map(String::from));
    args.push(key.display().to_string());
    bin().args(&args).output().unwrap()
}

/// With operators configured, only commands signed by one of them, for this node and
/// within the time window, are obeyed; replies are signed by the node; a replayed
/// command is not executed again. (Unsigned, `set_limits quota_bytes=1` from anyone on
/// the broker was enough to start deleting.)
#[test]
fn only_signed_operator_commands_are_obeyed() {
    let m = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let (op_key, stranger_key) = (work.path().join("op.key"), work.path().join("x.key"));
    let o = ctl(&m, &op_key, &["--public-key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let op_pub = stdout(&o).trim().to_string();
    assert_eq!(op_pub.len(), 64);

    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let operators = format!("control.operators=[\"{op_pub}\"]");
    let _agent = start_agent(
        &m.url(),
        dir.path(),
        &fixture("pi4-mains"),
        &["control.unsigned_commands=false", &operators],
    );
    let mut p = Probe::connect(m.port, &[&topic(&id, "reply"), &topic(&id, "cmd")]);

    // Unsigned: refused, with a reply signed by the node.
    let r = command(
        &mut p,
        &id,
        "u1",
        json!({"cmd": "set_limits", "args": {"quota_bytes": 1}}),
    );
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert!(ddc_edge::control::auth::verify_reply(&r, &id), "{r}");

    // A stranger's key: refused.
    let o = ctl(&m, &stranger_key, &[&id, "set_limits", "quota_bytes=1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("unauthorized"), "{}", stdout(&o));

    // The operator: obeyed.
    let o = ctl(&m, &op_key, &[&id, "set_limits", "quota_bytes=5000000"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(&format!("{id}: ok")), "{}", stdout(&o));
    let o = ctl(&m, &op_key, &["--all", "ping", "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let all: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(all[&id]["ok"], true, "{all}");

    // Replaying the operator's signed command: not executed again.
    let sent = p
        .drain_for(Duration::from_millis(500))
        .iter()
        .rev()
        .find(|x| x.topic == topic(&id, "cmd") && x.json()["cmd"] == "ping")
        .expect("the probe saw ctl's command")
        .payload
        .clone();
    let cmd_id = serde_json::from_slice::<Value>(&sent).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    p.publish(&topic(&id, "cmd"), sent, false);
    let replies = p.drain_for(Duration::from_secs(2));
    assert!(
        !replies
            .iter()
            .any(|x| x.topic == topic(&id, "reply") && x.json()["id"] == cmd_id.as_str()),
        "a replayed command was executed again"
    );

    // No such node: no reply, exit 1.
    let o = ctl(
        &m,
        &op_key,
        &["000000000000000000000000", "ping", "--timeout", "1s"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("no reply"), "{}", stdout(&o));
}

/// Members that publish a retained "online" and a health message (and membership
/// record, the same signed object) of their own making.
fn fake_members(p: &Probe, n: usize, signed: bool) -> Vec<tempfile::TempDir> {
    let mut keep = Vec::new();
    for i in 0..n {
        let d = tempfile::tempdir().unwrap();
        let me = ddc_edge::identity::Identity::load_or_create_file(&d.path().join("k")).unwrap();
        let mut h = json!({"node_id": me.node_id(), "ts": ddc_edge::control::unix_now(),
            "disk": {"free_bytes": 1u64 << 40}, "draining": false, "n": i});
        if signed {
            ddc_edge::fleet::sign_health(&me, None, &mut h);
        }
        for leaf in ["health", "member"] {
            p.publish(
                &topic(me.node_id(), leaf),
                serde_json::to_vec(&h).unwrap(),
                true,
            );
        }
        p.publish(&topic(me.node_id(), "status"), "online", true);
        keep.push(d);
    }
    keep
}

fn run_out(args: &[&str]) -> String {
    let o = bin().args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

/// Anyone who could publish a retained "online" was a member and won placement. With a
/// fleet CA, only enrolled nodes are: fakes (unsigned, or signed by keys of their own)
/// get nothing, and the file ends on exactly the two enrolled nodes.
#[test]
fn unenrolled_members_are_invisible_when_the_fleet_has_a_ca() {
    let m = Mosquitto::start();
    let p = Probe::connect(m.port, &[]);
    let _fakes = (fake_members(&p, 4, false), fake_members(&p, 4, true));
    let work = tempfile::tempdir().unwrap();
    let fleet_key = work.path().join("fleet.key");
    let ca = run_out(&["fleet", "init", "--key", fleet_key.to_str().unwrap()]);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let enroll = |dir: &std::path::Path| -> Vec<String> {
        let id: Value = serde_json::from_str(&run_out(&[
            "id",
            "--json",
            "--config",
            "/dev/null",
            "--data-dir",
            dir.to_str().unwrap(),
        ]))
        .unwrap();
        let cert = run_out(&[
            "fleet",
            "enroll",
            id["public_key"].as_str().unwrap(),
            "--key",
            fleet_key.to_str().unwrap(),
        ]);
        vec![
            format!("fleet.ca=\"{ca}\""),
            format!("fleet.cert=\"{cert}\""),
            "replication.anti_entropy_interval=2s".into(),
            "storage.chunk_size=64KiB".into(),
        ]
    };
    let (sa, sb) = (enroll(a.path()), enroll(b.path()));
    let id_a = node_id(a.path());
    let mut na = start_agent(
        &m.url(),
        a.path(),
        &fixture("pi4-mains"),
        &sa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let _nb = start_agent(
        &m.url(),
        b.path(),
        &fixture("pi4-mains"),
        &sb.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let key = work.path().join("client.key");
    let file = work.path().join("f.bin");
    let data = random_file(&file, 16 * 65536, 21);
    let o = client_cli(
        &m.url(),
        &key,
        &["put", file.to_str().unwrap(), "--to", &id_a],
        &["storage.chunk_size=64KiB"],
    );
    assert!(o.status.success(), "put: {}", stderr(&o));
    let ids: Vec<String> = data
        .chunks(65536)
        .map(|c| ddc_edge::store::ChunkId::of(c).to_string())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let copies = chunk_copies(&[a.path(), b.path()]);
        if ids.iter().all(|c| copies.get(c) == Some(&2)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file did not end on both enrolled nodes: {copies:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    na.wait_for("not a member of this fleet", T);
}

/// In an open fleet, a dozen members that never answer used to stall every sweep for a
/// connect timeout each. Now they win placement of most chunks of a file stored on the
/// node: its hand-offs to them fail fast (and keep its copies), and its anti-entropy
/// passes go on at their pace.
#[test]
fn silent_members_of_an_open_fleet_do_not_stall_replication() {
    let m = Mosquitto::start();
    let mut p = Probe::connect(m.port, &[]);
    let _fakes = fake_members(&p, 12, true);
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut h = Probe::connect(m.port, &[&topic(&id, "health")]);
    let _agent = start_agent(
        &m.url(),
        dir.path(),
        &fixture("pi4-mains"),
        &[
            "replication.anti_entropy_interval=1s",
            "webrtc.connect_timeout=3s",
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f");
    let data = random_file(&file, 1 << 20, 4);
    let o = bin()
        .args([
            "put",
            file.to_str().unwrap(),
            "--to",
            &id,
            "--config",
            "/dev/null",
        ])
        .args(["--broker", &m.url(), "--key"])
        .arg(work.path().join("k"))
        .args(TEST_SETS.iter().flat_map(|s| ["--set", s]))
        .args(["--set", "storage.chunk_size=64KiB"])
        .output()
        .unwrap();
    assert!(o.status.success(), "put: {}", stderr(&o));
    // Twelve silent peers at 3 s each, per hand-off, was over a minute per round.
    h.wait("six anti-entropy passes", Duration::from_secs(40), |x| {
        x.json()["replication"]["anti_entropy_passes"]
            .as_u64()
            .unwrap_or(0)
            >= 6
    });
    for c in data.chunks(64 << 10) {
        let c = ddc_edge::store::ChunkId::of(c);
        assert!(
            chunk_copies(&[dir.path()]).contains_key(&c.to_string()),
            "chunk {c} was dropped"
        );
    }
    p.drain_for(Duration::from_millis(10));
}

/// The ACL shipped in packaging/ (the one docs/deploy.md gives) with a real mosquitto,
/// one user per node, client and operator: nodes replicate, a client stores and fetches,
/// an operator commands, and a node cannot publish under another node's topics. (The
/// ACL the docs gave before denied the node's answer to a client and had no rules for
/// clients at all: no client could connect to a node.)
#[test]
fn the_shipped_acl_lets_the_fleet_work_and_nodes_speak_only_for_themselves() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (id_a, id_b) = (node_id(a.path()), node_id(b.path()));
    let client_key = work.path().join("client.key");
    let client = ddc_edge::identity::Identity::load_or_create_file(&client_key).unwrap();
    let client_id = client.node_id().to_string();
    let op_key = work.path().join("op.key");

    let passwords = work.path().join("passwd");
    for (i, user) in [&id_a, &id_b, &client_id, "operator", "observer"]
        .iter()
        .enumerate()
    {
        let mut c = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            c.arg("-c");
        }
        let o = c
            .arg("-b")
            .arg(&passwords)
            .arg(user)
            .arg(format!("pw-{user}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "mosquitto_passwd: {}", stderr(&o));
    }
    // The shipped file, plus one observer for the test's own eyes.
    let acl = work.path().join("acl");
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/mosquitto/ddc-edge.acl"),
    )
    .unwrap();
    std::fs::write(&acl, format!("{shipped}\nuser observer\ntopic read #\n")).unwrap();
    let m = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwords.display(),
        acl.display()
    ));
    let login = |user: &str| {
        vec![
            format!("mqtt.username={user}"),
            format!("mqtt.password=pw-{user}"),
        ]
    };
    let node_sets = |user: &str| {
        let mut v = login(user);
        v.push("replication.anti_entropy_interval=2s".into());
        v.push("storage.chunk_size=64KiB".into());
        v
    };
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let mut observer = Probe::connect_as(m.port, Some(("observer", "pw-observer")), &["ddc/#"]);
    let _na = start_agent(
        &m.url(),
        a.path(),
        &fixture("pi4-mains"),
        &refs(&node_sets(&id_a)),
    );
    let _nb = start_agent(
        &m.url(),
        b.path(),
        &fixture("pi4-mains"),
        &refs(&node_sets(&id_b)),
    );
    observer.wait("both online", T, |x| {
        x.topic == topic(&id_b, "status") && x.text() == "online"
    });
    // The history the page charts gets through (published with the first sample).
    observer.wait("A's history", T, |x| {
        x.topic == topic(&id_a, "history") && x.json()["t"].is_array()
    });

    // A client stores a file on A through the ACL; replication puts it on B too.
    let file = work.path().join("f.bin");
    let data = random_file(&file, 8 * 65536, 31);
    let as_client = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--config", "/dev/null", "--broker", &m.url(), "--key"].map(String::from));
        all.push(client_key.display().to_string());
        for s in TEST_SETS
            .iter()
            .map(|s| s.to_string())
            .chain(login(&client_id))
            .chain(["storage.chunk_size=64KiB".to_string()])
        {
            all.extend(["--set".to_string(), s]);
        }
        bin().args(&all).output().unwrap()
    };
    let o = as_client(&["put", file.to_str().unwrap(), "--to", &id_a]);
    assert!(o.status.success(), "put through the ACL: {}", stderr(&o));
    let file_id = stdout(&o).lines().last().unwrap().trim().to_string();
    let chunks: Vec<String> = data
        .chunks(65536)
        .map(|c| ddc_edge::store::ChunkId::of(c).to_string())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !chunks
        .iter()
        .all(|c| chunk_copies(&[a.path(), b.path()]).get(c) == Some(&2))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "replication through the ACL stalled"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = work.path().join("out.bin");
    let o = as_client(&[
        "get",
        &file_id,
        "-o",
        out.to_str().unwrap(),
        "--from",
        &id_b,
    ]);
    assert!(o.status.success(), "get through the ACL: {}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == data);

    // The operator commands both nodes.
    let mut args: Vec<String> = [
        "ctl",
        "--all",
        "ping",
        "--config",
        "/dev/null",
        "--broker",
        &m.url(),
        "--key",
    ]
    .map(String::from)
    .to_vec();
    args.push(op_key.display().to_string());
    for s in login("operator") {
        args.extend(["--set".to_string(), s]);
    }
    let o = bin().args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "ctl through the ACL: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stdout(&o).contains(&format!("{id_a}: ok")) && stdout(&o).contains(&format!("{id_b}: ok"))
    );
    // The ACL lets the operator read its own inbox, where ctl's sync marker comes back.
    assert!(
        !stderr(&o).contains("did not echo our marker"),
        "{}",
        stderr(&o)
    );

    // Node A's credentials cannot speak for B, nor command it.
    observer.drain_for(Duration::from_millis(500));
    let mark = observer.seen.len();
    let as_a = Probe::connect_as(m.port, Some((&id_a, &format!("pw-{id_a}"))), &[]);
    as_a.publish(&topic(&id_b, "status"), "offline", true);
    as_a.publish(&topic(&id_b, "health"), "{}", true);
    as_a.publish(&topic(&id_b, "member"), "{}", true);
    as_a.publish(&topic(&id_b, "history"), "{}", true);
    as_a.publish(&topic(&id_b, "cmd"), r#"{"id":"x","cmd":"drain"}"#, false);
    // Control: the same login may publish under A's own topics, and that arrives (after
    // the three above, which the broker would have delivered first).
    as_a.publish(&topic(&id_a, "events"), r#"{"event":"probe"}"#, false);
    observer.wait_new("A's own event", T, |x| {
        x.topic == topic(&id_a, "events") && x.text().contains("probe")
    });
    observer.drain_for(Duration::from_millis(500));
    let leaked: Vec<String> = observer.seen[mark..]
        .iter()
        .filter(|x| {
            (x.topic == topic(&id_b, "status") && x.text() == "offline")
                || (x.topic == topic(&id_b, "health") && x.text() == "{}")
                || (x.topic == topic(&id_b, "history") && x.text() == "{}")
                || x.topic == topic(&id_b, "cmd")
        })
        .map(|x| format!("{} {}", x.topic, x.text()))
        .collect();
    assert!(
        leaked.is_empty(),
        "the broker let node A publish under node B's topics: {leaked:?}"
    );
}

/// Text from peers (a signaling field, a channel label) used to reach the log raw: a NUL
/// or an escape sequence garbled it, a newline could forge a line. It is escaped now.
#[test]
fn peer_text_reaches_the_log_escaped() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let p = Probe::connect(m.port, &[]);
    let work = tempfile::tempdir().unwrap();
    let me = ddc_edge::identity::Identity::load_or_create_file(&work.path().join("k")).unwrap();
    let e = ddc_edge::signaling::Envelope::sign(
        &me,
        ddc_edge::signaling::Kind::Offer,
        "evil\u{0}\u{1b}[2J\nINFO forged line",
        "s",
        &format!("ddc/clients/{}/signal", me.node_id()),
        "v=0\r\n".into(),
        ddc_edge::control::unix_now(),
    );
    p.publish(&topic(&id, "signal"), e.to_json(), false);
    let line = agent.wait_for("signaling message dropped", T);
    assert!(line.contains("\\u{0}"), "{line:?}");
    assert!(
        !agent
            .seen
            .iter()
            .any(|l| l.contains('\u{0}') || l.contains('\u{1b}') || l.starts_with("INFO forged")),
        "raw control characters reached the log"
    );
}

/// Replication messages are a new way in: a `repl` envelope on a node's signal topic.
/// From a key that is not a member, over a member's rate, or malformed, each is dropped
/// and counted, and none of them makes the node fetch, list or fail; a well-formed
/// notice from a member about a chunk that does not exist costs it one failed fetch.
#[test]
fn hostile_replication_messages_are_dropped_and_counted() {
    use ddc_edge::signaling::{Envelope, Kind};
    let m = Mosquitto::start();
    let p = Probe::connect(m.port, &[]);
    let member_dirs = fake_members(&p, 1, true);
    let member =
        ddc_edge::identity::Identity::load_or_create_file(&member_dirs[0].path().join("k"))
            .unwrap();
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger =
        ddc_edge::identity::Identity::load_or_create_file(&stranger_dir.path().join("k")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut h = Probe::connect(m.port, &[&topic(&id, "health")]);
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let send = |from: &ddc_edge::identity::Identity, body: String| {
        let e = Envelope::sign(
            from,
            Kind::Repl,
            &id,
            "repl",
            &topic(from.node_id(), "signal"),
            body,
            ddc_edge::control::unix_now(),
        );
        p.publish(&topic(&id, "signal"), e.to_json(), false);
    };
    let fake_chunk = "ab".repeat(32);
    // A stranger's notice, then malformed bodies from the member.
    send(&stranger, format!("ddc-repl/1 notice\n{fake_chunk} 2"));
    send(&member, "ddc-repl/1 gossip".into());
    send(&member, format!("ddc-repl/1 notice\n{fake_chunk} 0"));
    send(
        &member,
        format!("ddc-repl/1 listing 1 1\n{}", "zz".repeat(32)),
    );
    agent.wait_for("malformed replication message dropped", T);
    // A flood from the member: the burst passes, the rest is cut.
    for _ in 0..400 {
        send(&member, format!("ddc-repl/1 notice\n{fake_chunk} 2"));
    }
    // The flood is cut, by the per-sender limit here or, if the node falls behind, by
    // the MQTT session's bounded queue (logged); wait until the figures settle.
    let count = |x: &Value, k: &str| x["replication"][k].as_u64().unwrap_or(0);
    let seen = |x: &Value| count(x, "messages_received") + count(x, "messages_dropped");
    let mut last = 0;
    let mut r = Value::Null;
    wait_until("the flood to be handled", Duration::from_secs(30), || {
        h.drain_for(Duration::ZERO);
        r = h
            .wait_new("health", Duration::from_secs(10), |_| true)
            .json();
        let settled = seen(&r) == last && last >= 4 + 50;
        last = seen(&r);
        settled
    });
    assert!(
        count(&r, "messages_received") <= 300,
        "the member's flood was not cut: {}",
        r["replication"]
    );
    assert!(
        count(&r, "messages_dropped") >= 4,
        "the stranger's and the malformed messages were not counted: {}",
        r["replication"]
    );
    let r = &r["replication"];
    assert_eq!(r["listings_sent"], 0, "{r}");
    assert_eq!(r["pulled_chunks"], 0, "{r}");
    assert!(agent.child.try_wait().unwrap().is_none(), "the node died");
    // Still answering.
    let mut c = Probe::connect(m.port, &[&topic(&id, "reply")]);
    let reply = command(&mut c, &id, "after", json!({"cmd": "ping"}));
    assert_eq!(reply["ok"], true, "{reply}");
}
