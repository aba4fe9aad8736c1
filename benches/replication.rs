//! Replication figures (release build, loopback, mosquitto, two agents):
//!
//! - repair throughput at `full`: node B fetches a 32 MiB file (1 MiB chunks) that only
//!   node A holds, with a budget high enough not to bind;
//! - the measured replication rate at `reduced` as a ratio of the budget it should run at
//!   (`bandwidth.replication` x 0.25), over a steady window (target within 10 %).
//!
//! Run: cargo bench --bench replication

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Running, bin, fixture, mosquitto, node_id, random_file, start_agent};

use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// An agent with the tests' settings (web page off, so several can run at once) and the
/// given replication budget; killed when dropped, even if the bench panics.
fn agent(broker: &str, dir: &Path, budget: &str) -> Running {
    let budget = format!("bandwidth.replication={budget}");
    start_agent(
        broker,
        dir,
        &fixture("pi4-mains"),
        &[
            "replication.sweep_interval=1s",
            "storage.fsync=false",
            &budget,
        ],
    )
}

fn put(broker: &str, file: &Path, to: &str, key: &Path) -> String {
    let o = bin()
        .args([
            "put",
            file.to_str().unwrap(),
            "--to",
            to,
            "--config",
            "/dev/null",
            "--broker",
            broker,
            "--key",
            key.to_str().unwrap(),
        ])
        .args(["--set", "webrtc.bind=[\"127.0.0.1:0\"]"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string()
}

fn pulled(h: &Value) -> u64 {
    h["replication"]["pulled_bytes"].as_u64().unwrap_or(0)
}

fn health(p: &mut mosquitto::Probe, id: &str) -> Value {
    let t = format!("ddc/nodes/{id}/health");
    p.latest("health", Duration::from_secs(10), |m| m.topic == t)
        .json()
}

fn main() {
    let m = mosquitto::Mosquitto::start();
    let broker = m.url();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("k");

    // Repair throughput at full.
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let ida = node_id(&a);
    let na = agent(&broker, &a, "1GiB/s");
    let mut p = mosquitto::Probe::connect(m.port, &["ddc/nodes/+/health"]);
    std::thread::sleep(Duration::from_secs(2));
    let file = work.path().join("f");
    random_file(&file, (32 * MIB) as usize, 5);
    put(&broker, &file, &ida, &key);
    let t = Instant::now();
    let nb = agent(&broker, &b, "1GiB/s");
    // Watch B's chunk directory: 33 files (32 data chunks and the manifest) when done.
    let count = |dir: &Path| -> usize {
        std::fs::read_dir(dir.join("store/chunks"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| std::fs::read_dir(f.path()).map(|d| d.count()).unwrap_or(0))
            .sum()
    };
    let mut first = None;
    loop {
        let n = count(&b);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= 33 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "repair stalled at {n} chunks"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t1, n1) = first.unwrap();
    let moved = (33 - n1) as f64 * MIB as f64;
    println!(
        "repair at full: B fetched 32 MiB from A in {:.2} s from its start (start-up and first sweep included); {:.1} MB/s from its first chunk to its last",
        t.elapsed().as_secs_f64(),
        moved / t1.elapsed().as_secs_f64().max(0.001) / 1e6
    );
    drop((nb, na));

    // Rate at reduced, as a ratio of the budget.
    let (c, d) = (work.path().join("c"), work.path().join("d"));
    let (idc, idd) = (node_id(&c), node_id(&d));
    let budget = 8 * MIB;
    let nc = agent(&broker, &c, "8MiB/s");
    std::thread::sleep(Duration::from_secs(2));
    let file = work.path().join("g");
    random_file(&file, (48 * MIB) as usize, 6);
    put(&broker, &file, &idc, &key);
    let nd = agent(&broker, &d, "8MiB/s");
    health(&mut p, &idd); // subscribed and reporting
    let mut ctl = mosquitto::Probe::connect(m.port, &[&format!("ddc/nodes/{idd}/reply")]);
    ctl.publish(
        &format!("ddc/nodes/{idd}/cmd"),
        json!({"id": "r", "cmd": "force_level", "args": {"level": "reduced", "ttl_s": 600}})
            .to_string(),
        false,
    );
    ctl.wait("force reply", Duration::from_secs(20), |m| {
        m.json()["id"] == "r"
    });
    // Wait for the transfer to be under way, then measure a steady window.
    let start = loop {
        let h = health(&mut p, &idd);
        if h["level"] == "reduced" && pulled(&h) > 2 * MIB {
            break (Instant::now(), pulled(&h));
        }
    };
    std::thread::sleep(Duration::from_secs(10));
    let h = health(&mut p, &idd);
    let rate = (pulled(&h) - start.1) as f64 / start.0.elapsed().as_secs_f64();
    let expected = budget as f64 * 0.25;
    println!(
        "rate at reduced: {:.2} MB/s measured vs {:.2} MB/s expected (8 MiB/s x 0.25): ratio {:.2} [target 0.90-1.10]",
        rate / 1e6,
        expected / 1e6,
        rate / expected
    );
    drop((nd, nc));
    let _ = idc;
}
