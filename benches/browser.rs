//! Browser <-> agent throughput against Chromium <-> Chromium, measured in the same run
//! (release agent, headless Chromium, mosquitto's WebSocket listener, loopback):
//! - upload and download MB/s of a 32 MiB file between the page and the agent;
//! - data-channel throughput between two peer connections inside one Chromium page, with
//!   the same 64 KiB messages; the ratio says whether the agent is the bottleneck
//!   (goal: >= 1.0).
//!
//! Run: cargo bench --bench browser

#[path = "../tests/common/browser.rs"]
mod browser;
#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    let ws = mosquitto::free_port();
    let m = mosquitto::Mosquitto::start_with(&format!(
        "listener {ws} 127.0.0.1\nprotocol websockets\n"
    ));
    let web = mosquitto::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_ddc-edge"))
        .args([
            "run",
            "--config",
            "/dev/null",
            "--broker",
            &m.url(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .args([
            "--set",
            "webrtc.bind=[\"127.0.0.1:0\"]",
            "--set",
            "storage.fsync=false",
            "--set",
            "storage.quota=4GiB",
        ])
        .args([
            "--set",
            &format!("web.listen=127.0.0.1:{web}"),
            "--set",
            &format!("web.mqtt_ws_url=ws://127.0.0.1:{ws}/mqtt"),
        ])
        // One extra agent setting to compare, e.g. DDC_BENCH_AGENT_SET=webrtc.send_buffer=256KiB
        .args(
            std::env::var("DDC_BENCH_AGENT_SET")
                .map(|s| vec!["--set".to_string(), s])
                .unwrap_or_default(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("http://127.0.0.1:{web}/");
    let out = tempfile::tempdir().unwrap();
    let (mut up, mut down, mut c2c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let r = browser::drive(&url, 1, &["roundtrip", out.path().to_str().unwrap(), "32"]);
        up.push(r["upload_mb_s"].as_f64().unwrap());
        down.push(r["download_mb_s"].as_f64().unwrap());
        c2c.push(
            browser::drive(&url, 1, &["c2c", "32"])["mb_s"]
                .as_f64()
                .unwrap(),
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (u, d, c) = (median(up), median(down), median(c2c));
    println!(
        "browser -> agent upload {u:.1} MB/s, agent -> browser download {d:.1} MB/s; Chromium -> Chromium in one page {c:.1} MB/s; \
         ratios upload {:.2}, download {:.2} (medians of 3 alternating rounds) [goal >= 1.0]",
        u / c,
        d / c
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
