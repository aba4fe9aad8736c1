//! The WebRTC data plane end to end: mosquitto, agent processes, and the client (as the
//! CLI and as the library), all on loopback.

mod common;
use common::mosquitto::{Mosquitto, Probe};
use common::*;
use ddc_edge::dataplane::client::ClientError;
use ddc_edge::identity::Identity;
use ddc_edge::protocol::{Status, encode};
use ddc_edge::signaling::{Envelope, Kind};
use ddc_edge::store::ChunkId;
use ddc_edge::transfer::ClientHub;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// `ddc-edge put/get` with the test settings.
fn client(m: &Mosquitto, key: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(
        [
            "--config",
            "/dev/null",
            "--broker",
            &m.url(),
            "--key",
            key.to_str().unwrap(),
        ]
        .map(String::from),
    );
    for s in TEST_SETS {
        all.extend(["--set".to_string(), s.to_string()]);
    }
    bin().args(&all).output().unwrap()
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_string()
}

#[test]
fn put_64mib_to_one_node_and_get_it_back() {
    let m = Mosquitto::start();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let id_a = node_id(a.path());
    let _na = start_agent(&m.url(), a.path(), &fixture("pi4-mains"), &[]);
    let _nb = start_agent(&m.url(), b.path(), &fixture("pi4-mains"), &[]);
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("client.key");
    let file = work.path().join("big.bin");
    let size = if emulated() { 8 << 20 } else { 64 << 20 };
    let data = random_file(&file, size, 64);

    let o = client(&m, &key, &["put", file.to_str().unwrap(), "--to", &id_a]);
    assert!(o.status.success(), "put failed: {}", stderr(&o));
    let file_id = last_line(&stdout(&o));
    assert_eq!(file_id.len(), 64, "{}", stdout(&o));

    // Fetch from any node: only node A has it.
    let out = work.path().join("out.bin");
    let o = client(&m, &key, &["get", &file_id, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "get failed: {}", stderr(&o));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the file came back different"
    );

    // A second put resumes: everything is already there.
    let mut args: Vec<String> = ["put", file.to_str().unwrap(), "--to", &id_a]
        .map(String::from)
        .to_vec();
    args.extend(
        [
            "--config",
            "/dev/null",
            "--broker",
            &m.url(),
            "--key",
            key.to_str().unwrap(),
        ]
        .map(String::from),
    );
    for s in TEST_SETS {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let o = bin().args(&args).env("RUST_LOG", "info").output().unwrap();
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("uploaded=0"),
        "a repeated put uploaded again: {}",
        stderr(&o)
    );
    assert_eq!(last_line(&stdout(&o)), file_id);
}

#[test]
fn unreachable_nodes_fail_clearly() {
    let m = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("client.key");
    let file = work.path().join("f");
    random_file(&file, 1000, 1);
    // No node online at all.
    let o = client(&m, &key, &["put", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no node is online"), "{}", stderr(&o));
    // A node that does not exist.
    let o = client(
        &m,
        &key,
        &[
            "put",
            file.to_str().unwrap(),
            "--to",
            "000000000000000000000000",
            "--set",
            "webrtc.connect_timeout=3s",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("did not answer"), "{}", stderr(&o));
    let o = client(
        &m,
        &key,
        &[
            "get",
            &"ab".repeat(32),
            "-o",
            work.path().join("o").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no node is online"), "{}", stderr(&o));
    // No broker.
    let mut args: Vec<String> = [
        "put",
        file.to_str().unwrap(),
        "--config",
        "/dev/null",
        "--key",
        key.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "--broker".into(),
        format!("mqtt://127.0.0.1:{}", common::mosquitto::free_port()),
    ]);
    args.extend(["--set".into(), "webrtc.connect_timeout=3s".into()]);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot reach the MQTT broker"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unauthorized_writer_is_rejected_and_an_allowed_one_accepted() {
    let m = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let (good_key, bad_key) = (work.path().join("good.key"), work.path().join("bad.key"));
    let good = Identity::load_or_create_file(&good_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let allow = format!("security.allowed_writers=[\"{}\"]", good.public_key_hex());
    let mut agent = start_agent(
        &m.url(),
        dir.path(),
        &fixture("pi4-mains"),
        &["security.open_writes=false", &allow],
    );
    agent.wait_for("writes restricted to security.allowed_writers", T);
    let file = work.path().join("f");
    let data = random_file(&file, 300_000, 2);

    let o = client(&m, &bad_key, &["put", file.to_str().unwrap(), "--to", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("does not accept writes from this client's key"),
        "{}",
        stderr(&o)
    );

    let o = client(&m, &good_key, &["put", file.to_str().unwrap(), "--to", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file_id = last_line(&stdout(&o));
    // Reads stay open: the other key can fetch.
    let out = work.path().join("out");
    let o = client(
        &m,
        &bad_key,
        &["get", &file_id, "-o", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn tampered_and_replayed_signaling_is_dropped() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let work = tempfile::tempdir().unwrap();
    let me = Identity::load_or_create_file(&work.path().join("k")).unwrap();
    let reply = format!("ddc/clients/{}/signal", me.node_id());
    let mut p = Probe::connect(m.port, &[&reply]);
    let node_topic = format!("ddc/nodes/{id}/signal");
    let now = ddc_edge::control::unix_now();
    let e = Envelope::sign(
        &me,
        Kind::Offer,
        &id,
        "s-tamper",
        &reply,
        "v=0\r\n".into(),
        now,
    );

    let mut tampered = e.clone();
    tampered.body = "v=0\r\na=fingerprint:sha-256 AA:BB\r\n".into();
    p.publish(&node_topic, tampered.to_json(), false);
    agent.wait_for("bad signature", T);

    let mut other = e.clone();
    other.from = id.clone(); // pretends to be the node itself
    p.publish(&node_topic, other.to_json(), false);
    agent.wait_for("is not the node ID of its public key", T);

    let expired = Envelope::sign(
        &me,
        Kind::Offer,
        &id,
        "s-old",
        &reply,
        "v=0\r\n".into(),
        now - 3600,
    );
    p.publish(&node_topic, expired.to_json(), false);
    agent.wait_for("expired", T);

    p.publish(&node_topic, "{not json", false);
    agent.wait_for("not a signaling message", T);

    // None of them got an answer.
    let got = p.drain_for(Duration::from_secs(2));
    assert!(
        got.is_empty(),
        "the node answered a bad message: {:?}",
        got.iter().map(|m| m.text()).collect::<Vec<_>>()
    );
    assert!(agent.child.try_wait().unwrap().is_none());
}

#[test]
fn a_peer_sending_garbage_is_cut_off_while_another_transfer_completes() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let _agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let work = tempfile::tempdir().unwrap();
    let cfg = m.client_config();
    let rt = runtime();
    rt.block_on(async {
        let hub = ClientHub::join(&cfg, &work.path().join("k")).await.unwrap();
        let good = hub.connect(&id).await.unwrap();
        let bad = hub.connect(&id).await.unwrap();
        // Store a few chunks, then fetch them while the other peer misbehaves.
        let chunks: Vec<bytes::Bytes> = (0..8u8)
            .map(|i| bytes::Bytes::from(vec![i; 1 << 20]))
            .collect();
        for c in &chunks {
            good.put(&ChunkId::of(c), c).await.unwrap();
        }
        let fetch = async {
            for c in &chunks {
                let got = good.get(&ChunkId::of(c)).await.unwrap();
                assert_eq!(&got, c);
            }
        };
        let misbehave = async {
            bad.send_raw(bytes::Bytes::from_static(&[0x42, 1, 2, 3, 4, 5, 6]))
                .await
                .unwrap();
            for _ in 0..100 {
                if bad.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the node kept a channel that sent garbage");
        };
        tokio::join!(fetch, misbehave);
        // Protocol errors that can be pinned on a request get an answer instead.
        let e = good.get(&ChunkId([7; 32])).await.unwrap_err();
        assert!(matches!(e, ClientError::Status(Status::NotFound, _)), "{e}");
        good.send_raw(encode::put(999, &ChunkId([1; 32]), 1 << 30))
            .await
            .unwrap();
        assert!(!good.is_closed());
        let st = good.stat().await.unwrap();
        assert_eq!(st["chunks"], 8);
        good.close().await;
        hub.leave().await;
    });
}

/// `put` and `get` say `bye` when they finish, so a node with one peer slot serves the
/// next command at once (it used to hold the slot for seconds and answer `busy`); and a
/// put to a draining node says that it is draining, not that the key may not write.
#[test]
fn clients_free_their_peer_slot_and_draining_is_named() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let _agent = start_agent(
        &m.url(),
        dir.path(),
        &fixture("pi4-mains"),
        &["webrtc.max_peers=1"],
    );
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("client.key");
    let file = work.path().join("f");
    let data = random_file(&file, 300_000, 4);
    let o = client(&m, &key, &["put", file.to_str().unwrap(), "--to", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file_id = last_line(&stdout(&o));
    for i in 0..3 {
        let out = work.path().join(format!("out{i}"));
        let o = client(&m, &key, &["get", &file_id, "-o", out.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "get {i} right after another: {}",
            stderr(&o)
        );
        assert!(std::fs::read(&out).unwrap() == data);
    }

    let mut p = Probe::connect(m.port, &[&format!("ddc/nodes/{id}/reply")]);
    p.publish(
        &format!("ddc/nodes/{id}/cmd"),
        r#"{"id":"d","cmd":"drain"}"#,
        false,
    );
    p.wait("drain reply", T, |x| x.json()["id"] == "d");
    let o = client(&m, &key, &["put", file.to_str().unwrap(), "--to", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is draining"), "{}", stderr(&o));
}
