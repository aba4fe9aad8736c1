//! Health and fleet control over a real mosquitto, driven by a real MQTT client.

mod common;
use common::mosquitto::{Mosquitto, Probe};
use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

struct Node {
    agent: Running,
    id: String,
    dir: tempfile::TempDir,
}

fn node(m: &Mosquitto, extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), extra);
    Node { agent, id, dir }
}

fn topic(id: &str, leaf: &str) -> String {
    format!("ddc/nodes/{id}/{leaf}")
}

/// A probe on `subs`, returned once the node's `online` status is seen. The agent
/// subscribes to its command topic before it publishes `online` on the same connection,
/// so from then on commands reach it.
fn ready_probe(m: &Mosquitto, id: &str, subs: &[&str]) -> Probe {
    let status = topic(id, "status");
    let mut all: Vec<&str> = subs.to_vec();
    all.push(&status);
    let mut p = Probe::connect(m.port, &all);
    p.wait("online status", T, |x| {
        x.topic == status && x.text() == "online"
    });
    p
}

/// Sends a command and waits for its reply.
fn command(p: &mut Probe, id: &str, cmd_id: &str, body: Value) -> Value {
    let mut body = body;
    body["id"] = json!(cmd_id);
    p.publish(&topic(id, "cmd"), serde_json::to_vec(&body).unwrap(), false);
    let reply_topic = topic(id, "reply");
    let m = p.wait_new(&format!("reply to {cmd_id}"), T, |m| {
        m.topic == reply_topic && m.json()["id"] == cmd_id
    });
    m.json()
}

#[test]
fn status_health_and_discovery_are_published() {
    let m = Mosquitto::start();
    let n = node(&m, &[]);
    let mut p = ready_probe(&m, &n.id, &["ddc/#", "homeassistant/#"]);
    // A late subscriber gets the status as a retained message.
    let mut late = Probe::connect(m.port, &[&topic(&n.id, "status")]);
    let status = late.wait("retained online status", T, |x| {
        x.topic == topic(&n.id, "status")
    });
    assert_eq!(status.text(), "online");
    assert!(status.retain, "status must be retained");
    let h = p
        .wait("health", T, |x| x.topic == topic(&n.id, "health"))
        .json();
    for key in [
        "node_id",
        "ts",
        "version",
        "uptime_s",
        "cpu_temp_c",
        "battery_percent",
        "on_battery",
        "undervoltage",
        "level",
        "reasons",
        "cpu_load",
        "mem_used_bytes",
    ] {
        assert!(h.get(key).is_some(), "health lacks {key}: {h}");
    }
    assert_eq!(h["node_id"], n.id.as_str());
    assert_eq!(h["cpu_temp_c"], 48.3);
    assert_eq!(h["battery_percent"], Value::Null);
    assert_eq!(h["on_battery"], false);
    assert_eq!(h["level"], "full");
    for key in ["offered_bytes", "used_bytes", "free_bytes"] {
        assert!(h["disk"][key].is_u64(), "disk.{key}: {h}");
    }
    assert!(h["bandwidth"]["egress_limit_bps"].is_u64());
    assert!(h["bandwidth"]["ingress_limit_bps"].is_u64());
    assert_eq!(h["replication"]["paused_by"], Value::Null);
    assert!(h["ts"].as_u64().unwrap() > 1_700_000_000);

    let disc_topic = format!("homeassistant/device/ddc_{}/config", n.id);
    let d = p.wait("discovery", T, |x| x.topic == disc_topic).json();
    let mut late = Probe::connect(m.port, &[&disc_topic]);
    assert!(
        late.wait("retained discovery", T, |x| x.topic == disc_topic)
            .retain,
        "discovery must be retained"
    );
    assert_eq!(d["availability_topic"], topic(&n.id, "status"));
    assert_eq!(d["state_topic"], topic(&n.id, "health"));
    assert_eq!(d["cmps"]["undervoltage"]["device_class"], "problem");
    // Home Assistant restarts: discovery is sent again.
    p.publish("homeassistant/status", "online", false);
    p.wait_new("discovery after HA birth", T, |x| x.topic == disc_topic);

    // A second health within the interval (telemetry every 1 s).
    p.wait_new("periodic health", Duration::from_secs(5), |x| {
        x.topic == topic(&n.id, "health")
    });
}

#[test]
fn every_verb_replies_and_limits_survive_a_restart() {
    let m = Mosquitto::start();
    let mut n = node(&m, &[]);
    let mut p = ready_probe(&m, &n.id, &["ddc/#"]);
    let id = n.id.clone();

    let r = command(&mut p, &id, "p1", json!({"cmd": "ping"}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["pong"], true);

    let r = command(&mut p, &id, "s1", json!({"cmd": "status"}));
    assert_eq!(r["result"]["node_id"], id.as_str());
    assert_eq!(r["result"]["level"], "full");

    let r = command(&mut p, &id, "pause", json!({"cmd": "pause_replication"}));
    assert_eq!(r["result"]["replication"]["paused_by"], "operator", "{r}");
    let h = p
        .wait("health after pause", T, |x| {
            x.topic == topic(&id, "health") && x.json()["replication"]["paused_by"] == "operator"
        })
        .json();
    assert_eq!(h["replication"]["paused_by"], "operator");
    // An operator pause holds against a `full` policy.
    assert_eq!(h["level"], "full");

    let r = command(
        &mut p,
        &id,
        "force",
        json!({"cmd": "force_level", "args": {"level": "paused", "ttl_s": 600}}),
    );
    assert_eq!(r["result"]["forced"], "paused", "{r}");
    // Events and replies go out from different tasks: either may arrive first.
    let ev = p.wait("level_changed event", T, |x| {
        x.topic == topic(&id, "events") && x.json()["event"] == "level_changed"
    });
    assert_eq!(ev.json()["to"], "paused");
    assert!(!ev.retain, "events are not retained");
    let r = command(&mut p, &id, "clear", json!({"cmd": "clear_level"}));
    assert_eq!(r["result"]["cleared"], true);
    p.wait("level back to full", T, |x| {
        x.topic == topic(&id, "events")
            && x.json()["event"] == "level_changed"
            && x.json()["to"] == "full"
    });

    let r = command(&mut p, &id, "resume", json!({"cmd": "resume_replication"}));
    assert_eq!(r["result"]["replication"]["paused_by"], Value::Null);

    let r = command(
        &mut p,
        &id,
        "lim",
        json!({"cmd": "set_limits", "args": {"egress_bps": 1000000, "quota_bytes": 500000000}}),
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["egress_bps"], 1000000);
    assert_eq!(r["result"]["quota_bytes"], 500000000);
    let h = p
        .wait("health with new limits", T, |x| {
            x.topic == topic(&id, "health") && x.json()["disk"]["offered_bytes"] == 500000000
        })
        .json();
    assert_eq!(h["bandwidth"]["egress_limit_bps"], 1000000);
    assert_eq!(h["disk"]["offered_bytes"], 500000000);

    let r = command(&mut p, &id, "scrub", json!({"cmd": "scrub"}));
    assert_eq!(r["result"]["started"], true, "{r}");
    let ev = p.wait("scrub_finished", T, |x| {
        x.topic == topic(&id, "events") && x.json()["event"] == "scrub_finished"
    });
    assert_eq!(ev.json()["corrupt"], json!([]));

    let r = command(&mut p, &id, "drain", json!({"cmd": "drain"}));
    assert_eq!(r["result"]["draining"], true, "{r}");
    assert!(r["result"]["progress"]["chunks_held"].is_u64());
    let r = command(&mut p, &id, "undrain", json!({"cmd": "undrain"}));
    assert_eq!(r["result"]["draining"], false);

    // Restart: the limits set over MQTT are kept.
    n.agent.signal(libc::SIGTERM);
    assert!(n.agent.wait_exit(T).success());
    n.agent = start_agent(&m.url(), n.dir.path(), &fixture("pi4-mains"), &[]);
    n.agent.wait_for("bandwidth limit set over MQTT", T);
    let h = p
        .wait_new("health from the restarted agent", T, |x| {
            x.topic == topic(&id, "health") && x.json()["uptime_s"].as_u64() < Some(3)
        })
        .json();
    assert_eq!(h["bandwidth"]["egress_limit_bps"], 1000000);
    assert_eq!(h["disk"]["offered_bytes"], 500000000);
}

#[test]
fn bad_commands_get_errors_and_never_stop_the_agent() {
    let m = Mosquitto::start();
    let mut n = node(
        &m,
        &["control.allowed_verbs=[\"ping\",\"status\",\"set_limits\"]"],
    );
    let mut p = ready_probe(&m, &n.id, &["ddc/#"]);
    let id = n.id.clone();
    let cmd = topic(&id, "cmd");
    let reply = topic(&id, "reply");
    let err = |p: &mut Probe, cid: &str, body: Value| -> Value {
        let r = command(p, &id, cid, body);
        assert_eq!(r["ok"], false, "{r}");
        r["error"].clone()
    };
    assert_eq!(
        err(&mut p, "u", json!({"cmd": "reboot"}))["code"],
        "unknown_verb"
    );
    assert_eq!(
        err(&mut p, "f", json!({"cmd": "drain"}))["code"],
        "forbidden"
    );
    let e = err(
        &mut p,
        "t",
        json!({"cmd": "set_limits", "args": {"egress_bps": "fast"}}),
    );
    assert_eq!(e["code"], "bad_args");
    assert!(
        e["message"].as_str().unwrap().contains("args.egress_bps"),
        "{e}"
    );
    assert_eq!(
        err(&mut p, "x", json!({"cmd": "ping", "ts": 1}))["code"],
        "expired"
    );
    assert_eq!(
        err(
            &mut p,
            "big",
            json!({"cmd": "ping", "pad": "x".repeat(10_000)})
        )["code"],
        "too_large"
    );

    // No id to answer: logged, no reply.
    p.publish(&cmd, "this is not json", false);
    n.agent.wait_for("command ignored", T);
    p.publish(&cmd, r#"{"cmd":"ping"}"#, false);
    // A retained command is never acted on, now or on reconnect.
    p.publish(&cmd, r#"{"id":"ret","cmd":"ping"}"#, true);
    // A duplicate id is ignored.
    let r = command(&mut p, &id, "dup", json!({"cmd": "ping"}));
    assert_eq!(r["ok"], true);
    p.publish(&cmd, r#"{"id":"dup","cmd":"ping"}"#, false);
    let extra = p.drain_for(Duration::from_secs(2));
    let replies: Vec<Value> = extra
        .iter()
        .filter(|m| m.topic == reply)
        .map(|m| m.json())
        .collect();
    assert!(replies.is_empty(), "unexpected replies: {replies:?}");
    p.publish(&cmd, "", true); // clear the retained command

    // Still alive and answering.
    let r = command(&mut p, &id, "alive", json!({"cmd": "ping"}));
    assert_eq!(r["ok"], true);
    assert!(n.agent.child.try_wait().unwrap().is_none());
}

#[test]
fn sigkill_makes_the_broker_publish_offline() {
    let m = Mosquitto::start();
    let n = node(&m, &[]);
    let mut p = Probe::connect(m.port, &["ddc/nodes/+/status"]);
    p.wait("online", T, |x| {
        x.topic == topic(&n.id, "status") && x.text() == "online"
    });
    n.agent.signal(libc::SIGKILL);
    let off = p.wait_new("last will offline", T, |x| {
        x.topic == topic(&n.id, "status")
    });
    assert_eq!(off.text(), "offline");
    // Retained for anyone who looks later.
    let mut late = Probe::connect(m.port, &[&topic(&n.id, "status")]);
    let r = late.wait("retained offline", T, |x| x.topic == topic(&n.id, "status"));
    assert_eq!((r.text().as_str(), r.retain), ("offline", true));
}

#[test]
fn clean_shutdown_publishes_offline() {
    let m = Mosquitto::start();
    let mut n = node(&m, &[]);
    let mut p = Probe::connect(m.port, &["ddc/nodes/+/status"]);
    p.wait("online", T, |x| {
        x.topic == topic(&n.id, "status") && x.text() == "online"
    });
    n.agent.signal(libc::SIGTERM);
    let off = p.wait_new("offline on shutdown", T, |x| {
        x.topic == topic(&n.id, "status")
    });
    assert_eq!(off.text(), "offline");
    assert!(n.agent.wait_exit(T).success());
}

#[test]
fn broker_outage_of_10s_is_survived_without_a_restart() {
    let mut m = Mosquitto::start();
    let mut n = node(&m, &[]);
    let pid = n.agent.child.id();
    m.stop();
    n.agent.wait_for("MQTT connection lost", T);
    std::thread::sleep(Duration::from_secs(10));
    m.restart();
    let back = Instant::now();
    // mosquitto runs without persistence: everything retained must be republished.
    let mut p = Probe::connect(m.port, &["ddc/#", "homeassistant/#"]);
    let cap = Duration::from_secs(30 + 5);
    let s = p.wait("status after reconnect", cap, |x| {
        x.topic == topic(&n.id, "status")
    });
    assert_eq!(s.text(), "online");
    p.wait("health after reconnect", cap, |x| {
        x.topic == topic(&n.id, "health")
    });
    p.wait("discovery after reconnect", cap, |x| {
        x.topic.starts_with("homeassistant/device/")
    });
    assert!(back.elapsed() <= cap, "took {:?}", back.elapsed());
    assert_eq!(n.agent.child.id(), pid);
    assert!(
        n.agent.child.try_wait().unwrap().is_none(),
        "the agent restarted or died"
    );
    n.agent.wait_for("MQTT reconnected", T);
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (scripts/prereqs.sh installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1/localhost, made for this test.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ddc-edge test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn tls_to_the_broker_with_a_ca_made_by_the_test() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let tls_port = common::mosquitto::free_port();
    let extra = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    // The first listener stays plain for the probe; the agent uses the TLS one.
    let m = Mosquitto::start_with(&extra);
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut p = Probe::connect(m.port, &["ddc/nodes/+/status"]);
    let ca_set = format!("mqtt.ca_file={}", ca.display());
    let _agent = start_agent(
        &format!("mqtts://localhost:{tls_port}"),
        dir.path(),
        &fixture("pi4-mains"),
        &[&ca_set],
    );
    let s = p.wait("online over TLS", T, |x| x.topic == topic(&id, "status"));
    assert_eq!(s.text(), "online");

    // A CA that did not sign the server's certificate: no connection.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = make_certs(other.path());
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = format!("mqtt.ca_file={}", wrong_ca.display());
    let mut args: Vec<String> = [
        "run",
        "--config",
        "/dev/null",
        "--data-dir",
        dir2.path().to_str().unwrap(),
        "--broker",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("mqtts://localhost:{tls_port}"));
    args.extend(["--set".into(), wrong]);
    let mut bad = Running::spawn(bin().args(&args));
    let line = bad.wait_for("MQTT connection lost", T);
    assert!(
        line.to_lowercase().contains("certificate") || line.to_lowercase().contains("tls"),
        "{line}"
    );
}

/// `ddc-edge nodes` against a fleet of two: both nodes with their figures as JSON and as
/// a table, a forged health on the broker shown as a forgery (not as a node's figures),
/// and `--watch` printing again when a node dies (its last will).
#[test]
fn nodes_shows_the_fleet_and_watches_it_change() {
    let m = Mosquitto::start();
    let a = node(&m, &[]);
    let b = node(&m, &[]);
    let mut p = ready_probe(&m, &a.id, &[&topic(&b.id, "status"), "ddc/nodes/+/health"]);
    for id in [&a.id, &b.id] {
        p.wait("health", T, |x| x.topic == topic(id, "health"));
    }
    p.wait("b online", T, |x| {
        x.topic == topic(&b.id, "status") && x.text() == "online"
    });
    // Someone without the node's key publishes a health for an ID.
    let ghost = "0123456789abcdef01234567";
    p.publish(&topic(ghost, "status"), "online", true);
    p.publish(
        &topic(ghost, "health"),
        r#"{"name":"ghost","level":"full","disk":{"offered_bytes":1000000000000}}"#,
        true,
    );
    p.wait("the forgery, retained", T, |x| {
        x.topic == topic(ghost, "health")
    });

    let nodes = |extra: &[&str]| {
        let o = bin()
            .args(["nodes", "--config", "/dev/null", "--broker", &m.url()])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let rows: Vec<Value> = serde_json::from_str(&nodes(&["--json"])).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for id in [&a.id, &b.id] {
        let r = rows.iter().find(|r| r["node_id"] == id.as_str()).unwrap();
        assert_eq!(r["online"], true, "{r}");
        assert_eq!(r["level"], "full", "{r}");
        assert_eq!(r["cpu_temp_c"], 48.3, "{r}");
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
        assert!(r["disk_offered_bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["last_seen_s"].as_u64().unwrap() < 60, "{r}");
        assert_eq!(r["refused"], Value::Null, "{r}");
    }
    let g = rows.iter().find(|r| r["node_id"] == ghost).unwrap();
    assert!(
        g["refused"]
            .as_str()
            .unwrap()
            .starts_with("forged health ignored"),
        "{g}"
    );
    assert_eq!(
        g["name"],
        Value::Null,
        "the forgery's figures were shown: {g}"
    );
    assert_eq!(g["disk_offered_bytes"], Value::Null, "{g}");

    let table = nodes(&[]);
    assert!(table.starts_with("NODE"), "{table}");
    let line = table.lines().find(|l| l.starts_with(&a.id[..12])).unwrap();
    for cell in ["yes", "full", "48.3°C", env!("CARGO_PKG_VERSION")] {
        assert!(line.contains(cell), "{cell:?} missing from {line:?}");
    }

    // --watch: a line per change; b's last will shows up as offline.
    let mut w = bin()
        .args([
            "nodes",
            "--watch",
            "--json",
            "--config",
            "/dev/null",
            "--broker",
            &m.url(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Value>>();
    let out = w.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let b_online = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["node_id"] == b.id.as_str())
            .map(|r| r["online"].clone())
    };
    let first = rx.recv_timeout(T).expect("a first view");
    assert_eq!(b_online(&first), Some(Value::Bool(true)));
    b.agent.signal(libc::SIGKILL);
    let deadline = Instant::now() + T;
    loop {
        let view = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a view with b offline");
        if b_online(&view) == Some(Value::Bool(false)) {
            break;
        }
    }
    w.kill().unwrap();
    w.wait().unwrap();
    drop(a);
}

/// One HTTP/1.1 GET on loopback: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// `metrics.listen` serves the node's figures in Prometheus' text format: promtool (the
/// real one, Debian's prometheus package) accepts the exposition, and the values are the
/// node's (the fixture board's 48.3 °C, its level, the MQTT connection).
#[test]
fn the_metrics_endpoint_passes_promtool() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("promtool is not installed: run scripts/prereqs.sh (Debian package prometheus)");
    let m = Mosquitto::start();
    let port = common::mosquitto::free_port();
    let mut n = node(&m, &[&format!("metrics.listen=127.0.0.1:{port}")]);
    n.agent.wait_for("Prometheus metrics", T);
    ready_probe(&m, &n.id, &[]);
    let (status, body) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");

    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let o = check.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{body}",
        stdout(&o),
        stderr(&o)
    );

    let value = |sample: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {sample} in\n{body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("ddc_edge_cpu_temperature_celsius"), 48.3);
    assert_eq!(value("ddc_edge_throttle_level{level=\"full\"}"), 1.0);
    assert_eq!(value("ddc_edge_throttle_level{level=\"paused\"}"), 0.0);
    assert_eq!(value("ddc_edge_mqtt_connected"), 1.0);
    assert_eq!(value("ddc_edge_mqtt_reconnects_total"), 0.0);
    assert!(value("ddc_edge_store_offered_bytes") > 0.0);
    assert!(body.contains("# TYPE ddc_edge_dataplane_egress_bytes_total counter"));
    assert!(
        body.contains(&format!(
            "ddc_edge_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    // Only /metrics, only GET.
    assert!(http_get(port, "/").0.contains("404"));
}
