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
