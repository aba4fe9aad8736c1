//! Another WebRTC stack as the peer: Python's aiortc runs the chunk protocol against the
//! agent (tests/interop/aiortc_peer.py). scripts/prereqs.sh makes the Python environment
//! (target/pyenv, or $DDC_EDGE_PYTHON); a missing environment fails the test loudly.

mod common;
use common::mosquitto::Mosquitto;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DDC_EDGE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/prereqs.sh (it creates a venv with aiortc and paho-mqtt)",
        venv.display()
    );
    venv
}

#[test]
fn aiortc_runs_the_chunk_protocol_against_the_agent() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let script = format!(
        "{}/tests/interop/aiortc_peer.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let o = std::process::Command::new(python())
        .args([&script, &m.port.to_string(), &id])
        .output()
        .expect("running the aiortc peer");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "aiortc peer failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = out.lines().last().unwrap_or("");
    let r: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["ok"], true);
    assert_eq!(r["chunks"], 2);
    eprintln!("aiortc interop: {line}");
    agent.wait_for("peer connected", Duration::from_secs(5));
    assert!(agent.child.try_wait().unwrap().is_none());
}

/// A HELLO with a version the node does not speak gets the `version` answer the protocol
/// promises before the channel closes (it used to be lost in the close).
#[test]
fn an_unsupported_version_is_answered_before_the_channel_closes() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let _agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let script = format!(
        "{}/tests/interop/aiortc_peer.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let o = std::process::Command::new(python())
        .args([&script, &m.port.to_string(), &id, "version0"])
        .output()
        .expect("running the aiortc peer");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "no version answer:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(r["node_version"], 2);
}

/// Rogue fleet members on another stack (tests/interop/rogue_node.py): one agrees a max
/// message of 0 in HELLO (the client used to underflow and panic), one announces 4 GiB
/// GETs (the client used to reserve them: an abort on a small board), one trickles a byte
/// a second; all list chunks they do not have, claim every chunk (HAS) and answer PROVE
/// with noise. The honest node stays up, within its memory, keeps every chunk of the file
/// it holds, and moves on from each of them.
#[test]
fn rogue_members_cannot_crash_bloat_or_rob_an_honest_node() {
    use common::mosquitto::Probe;
    use std::io::{BufRead, BufReader};
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut agent = start_agent(
        &m.url(),
        dir.path(),
        &fixture("pi4-mains"),
        &[
            "replication.anti_entropy_interval=2s",
            "webrtc.request_timeout=5s",
            "storage.chunk_size=64KiB",
            "node.log=\"info,ddc_edge::replication=debug\"",
        ],
    );
    // A file on the honest node, spread over many chunks.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f.bin");
    let data = random_file(&file, 40 * 65536, 17);
    let o = client_cli(
        &m.url(),
        &work.path().join("k"),
        &["put", file.to_str().unwrap(), "--to", &id],
        &["storage.chunk_size=64KiB"],
    );
    assert!(o.status.success(), "put: {}", stderr(&o));

    let script = format!("{}/tests/interop/rogue_node.py", env!("CARGO_MANIFEST_DIR"));
    let mut rogues = Vec::new();
    for mode in ["hello0", "huge", "slow"] {
        let mut c = std::process::Command::new(python())
            .args([&script, &m.port.to_string(), mode])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("starting a rogue node");
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("ready "),
            "rogue {mode} did not start: {line:?}"
        );
        rogues.push(KillOnDrop(c));
    }
    let t = Duration::from_secs(if emulated() { 180 } else { 90 });
    agent.wait_for("agreed a max message of 0 bytes", t);
    agent.wait_for("4294967295-byte chunk", t);
    agent.wait_for("no answer within 5 s", t);
    agent.wait_for("failed to prove it: keeping our copy", t);
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the honest node died"
    );

    // Still answering, within its memory.
    let mut p = Probe::connect(m.port, &[&format!("ddc/nodes/{id}/reply")]);
    p.publish(
        &format!("ddc/nodes/{id}/cmd"),
        r#"{"id":"s","cmd":"status"}"#,
        false,
    );
    let r = p
        .wait("status reply", Duration::from_secs(30), |x| {
            x.json()["id"] == "s"
        })
        .json();
    let rss = r["result"]["agent_rss_bytes"].as_u64().unwrap();
    let bound = if emulated() { 400 << 20 } else { 150 << 20 };
    assert!(rss < bound, "agent RSS {rss} bytes over {bound}");
    // Every chunk of the file is still on the honest node.
    let copies = chunk_copies(&[dir.path()]);
    for c in data.chunks(65536) {
        let cid = ddc_edge::store::ChunkId::of(c).to_string();
        assert_eq!(copies.get(&cid), Some(&1), "chunk {cid} was dropped");
    }
    eprintln!("honest node after three rogues: RSS {} MB", rss >> 20);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
