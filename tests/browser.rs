//! The browser as a peer: the agent's web page in headless Chromium stores and fetches
//! files over WebRTC, signaling through mosquitto's WebSocket listener with the same
//! signed messages as native peers.

mod common;
use common::browser::{Driven, drive};
use common::mosquitto::{Mosquitto, free_port};
use common::*;
use std::path::Path;
use std::time::Duration;

struct Net {
    m: Mosquitto,
    url: String,
    /// The agents and their data dirs; the first serves the page.
    agents: Vec<(Running, tempfile::TempDir)>,
}

/// mosquitto with a WebSocket listener (its port second), for pages.
fn ws_mosquitto() -> (Mosquitto, u16) {
    let ws = free_port();
    let m = Mosquitto::start_with(&format!("listener {ws} 127.0.0.1\nprotocol websockets\n"));
    (m, ws)
}

/// The `--set`s for an agent that serves the page on `web`, pointing it at the broker's
/// WebSocket listener `ws`.
fn serving_page(web: u16, ws: u16) -> Vec<String> {
    vec![
        "web.enabled=true".into(),
        format!("web.listen=127.0.0.1:{web}"),
        format!("web.mqtt_ws_url=ws://127.0.0.1:{ws}/mqtt"),
    ]
}

/// mosquitto with a WebSocket listener, and three agents; the first serves the page.
fn network() -> Net {
    let (m, ws) = ws_mosquitto();
    let web = free_port();
    let mut agents = Vec::new();
    for i in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut extra: Vec<String> = vec![
            "replication.anti_entropy_interval=2s".into(),
            "storage.fsync=false".into(),
        ];
        if i == 0 {
            extra.extend(serving_page(web, ws));
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let a = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &extra);
        agents.push((a, dir));
    }
    Net {
        m,
        url: format!("http://127.0.0.1:{web}/"),
        agents,
    }
}

fn artifacts() -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_page_stores_10_mib_and_fetches_it_back_byte_identical() {
    let net = network();
    let out = artifacts();
    let r = drive(&net.url, 3, &["roundtrip", out.to_str().unwrap(), "10"]);
    assert_eq!(r["same"], true);
    assert_eq!(r["size"], 10 << 20);
    // Stored again: every chunk the node still holds was proved (PROVE, checked by the
    // page with WebCrypto) and skipped; only the rest and the manifest were sent.
    assert_eq!(r["again_id"], r["id"]);
    let (sent, proved) = (
        r["again_uploaded"].as_u64().unwrap(),
        r["again_proved"].as_u64().unwrap(),
    );
    assert!(proved > 0, "the page proved nothing: {r}");
    assert_eq!(sent - 1 + proved, 10, "10 chunks, each proved or sent: {r}");
    assert!(out.join("page.png").exists(), "no screenshot");
    // Both stores are listed in this browser, with the file's ID, once.
    let stored = r["stored"].as_array().expect("the stored-files list");
    assert_eq!(stored.len(), 1, "{r}");
    assert_eq!(stored[0]["id"], r["id"]);
    assert_eq!(stored[0]["size"], 10 << 20);
    let online = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "online")
        .count();
    assert_eq!(
        online, 3,
        "the screenshot should show three nodes: {}",
        r["nodes"]
    );
    let c2c = drive(&net.url, 3, &["c2c", "32"]);
    let c2c_mb_s = c2c["mb_s"].as_f64().unwrap();
    eprintln!(
        "browser <-> agent (debug build): upload {:.1} MB/s, download {:.1} MB/s; Chromium <-> Chromium in one page: {c2c_mb_s:.1} MB/s; \
         ratios {:.2} / {:.2} (release figures: cargo bench --bench browser); screenshot {}",
        r["upload_mb_s"].as_f64().unwrap(),
        r["download_mb_s"].as_f64().unwrap(),
        r["upload_mb_s"].as_f64().unwrap() / c2c_mb_s,
        r["download_mb_s"].as_f64().unwrap() / c2c_mb_s,
        out.join("page.png").display()
    );
}

/// A file stored by the CLI on another node and spread by replication (factor 2 over
/// three nodes) is fetched by the page chunk by chunk from whichever nodes hold them.
#[test]
fn the_page_fetches_a_file_stored_by_the_cli() {
    let net = network();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("cli.bin");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let page_node = node_id(net.agents[0].1.path());
    let other = node_id(net.agents[1].1.path());
    let mut args: Vec<String> = [
        "put",
        file.to_str().unwrap(),
        "--to",
        &other,
        "--config",
        "/dev/null",
        "--broker",
        &net.m.url(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--key".into(), work.path().join("k").display().to_string()]);
    // Small chunks: dozens of them, so placement all but surely leaves
    // some off the page's own node (checked below, not assumed).
    for s in TEST_SETS.iter().chain(&["storage.chunk_size=64KiB"]) {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).lines().last().unwrap().trim().to_string();
    // Distinct chunks plus the manifest (this pattern repeats every 2 MiB).
    let objects = data
        .chunks(64 << 10)
        .map(ddc_edge::store::ChunkId::of)
        .collect::<std::collections::HashSet<_>>()
        .len()
        + 1;
    let dirs: Vec<&Path> = net.agents.iter().map(|(_, d)| d.path()).collect();
    wait_until(
        "replication to settle at 2 copies of every chunk",
        Duration::from_secs(90),
        || {
            let c = chunk_copies(&dirs);
            c.len() == objects && c.values().all(|&n| n == 2)
        },
    );
    let on_page_node = chunk_copies(&dirs[..1]).len();
    assert!(
        on_page_node < objects,
        "the page's node holds all {objects} chunks; the test wants a spread file"
    );
    let sha = ddc_edge::store::ChunkId::of(&data).to_string();
    let r = drive(&net.url, 3, &["fetch", &id, &sha]);
    assert_eq!(r["size"], data.len());
    let from: Vec<&str> = r["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        from.first(),
        Some(&page_node.as_str()),
        "asks its own node first"
    );
    assert!(
        from.len() >= 2,
        "the page's node holds {on_page_node} of {objects} chunks, so the rest must come from other nodes: {from:?}"
    );
}

/// Health from the network used to be rendered as markup: a retained health message
/// whose `name` was an `<img onerror=...>` ran script in every operator's page (which
/// holds the browser's signing key). Now it shows as text, and the page is served with a
/// Content-Security-Policy that forbids inline script anyway.
#[test]
fn hostile_health_shows_as_text_and_runs_nothing() {
    use common::mosquitto::Probe;
    let (m, ws) = ws_mosquitto();
    let web = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sets = serving_page(web, ws);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let _agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &sets);
    let p = Probe::connect(m.port, &[]);
    let evil_id = "<img src=x onerror=window.__pwned=1>";
    p.publish(&format!("ddc/nodes/{evil_id}/status"), "online", true);
    p.publish(
        &format!("ddc/nodes/{evil_id}/health"),
        r#"{"name":"<img src=x onerror=window.__pwned=2>evil","level":"<b>x</b>","cpu_temp_c":"hot","disk":{"free_bytes":"lots"}}"#,
        true,
    );
    // A history of the wrong shape: markup for a level, text for figures, a time that
    // is not a number, and far more points than a node keeps.
    let many: Vec<u64> = (0..5000).collect();
    p.publish(
        &format!("ddc/nodes/{evil_id}/history"),
        serde_json::json!({
            "t": ["<b>x</b>", 2, 3, 4],
            "cpu_temp_c": ["<img src=x onerror=window.__pwned=3>", 1e308, null, 5],
            "level": ["<b>paused</b>", "full", "full", "reduced"],
            "egress_bps": many,
        })
        .to_string(),
        true,
    );
    let r = drive(
        &format!("http://127.0.0.1:{web}/"),
        1,
        &["hostile", "<img src=x onerror=window.__pwned=2>evil"],
    );
    // Its chart holds only the points with a numeric time, as text and shapes.
    let charts = r["charts"].as_array().unwrap();
    let evil = charts.iter().find(|c| c["node"] == evil_id);
    let evil = evil.unwrap_or_else(|| panic!("no chart for the forged node: {r}"));
    assert!(evil["points"].as_u64() <= Some(4), "{r}");
    assert_eq!(r["pwned"], serde_json::Value::Null, "{r}");
    assert_eq!(r["elements"], 0, "{r}");
    let csp = r["csp"].as_str().unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "CSP: {csp:?}");
    assert!(!csp.contains("unsafe-inline"), "CSP: {csp:?}");
    assert!(
        csp.contains(&format!("ws://127.0.0.1:{ws}")),
        "CSP must allow the broker: {csp:?}"
    );
}

/// web/mqtt.js on its own, under Node's test runner with a scripted WebSocket and
/// simulated timers: packet ids wrap to 1 (they used to reach 0 after 65,535 requests,
/// and a broker disconnects a client for that), a lost connection is retried with backoff
/// and the subscriptions come back, a silent one is replaced, an oversized message is
/// skipped.
#[test]
fn the_pages_mqtt_client_passes_its_unit_tests() {
    common::browser::check_prerequisites();
    let o = std::process::Command::new("node")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--test", "tests/browser/mqtt.test.mjs"])
        .output()
        .expect("running node --test");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "node --test failed:\n{out}\n{}",
        stderr(&o)
    );
    let passed = out
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok());
    assert!(
        passed >= Some(5),
        "expected at least 5 passing tests:\n{out}"
    );
}

/// With the default embedded broker the broker is the agent: every restart of the agent
/// closed the page's WebSocket, and the page never reconnected (its node table froze, its
/// stores and fetches failed). Now the page reconnects with backoff, subscribes again and
/// shows the node online with fresh health, without a reload.
#[test]
fn the_page_reconnects_when_the_agent_and_its_embedded_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = free_listeners();
    let web = sets
        .iter()
        .find_map(|s| s.strip_prefix("web.listen="))
        .unwrap()
        .to_string();
    sets.push("web.enabled=true".into());
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let start = || start_agent("embedded", dir.path(), &fixture("pi4-mains"), &sets);
    let mut agent = start();
    let mut page = Driven::spawn(&format!("http://{web}/"), 1, &["reconnect"]);
    let before = page.next(Duration::from_secs(60));
    assert_eq!(before["phase"], "online", "{before}");
    assert_eq!(before["id"], node_id(dir.path()).as_str(), "{before}");
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    drop(agent);
    let _agent = start();
    let r = page.next(Duration::from_secs(120));
    assert_eq!(r["mqtt"]["connected"], true, "{r}");
    assert!(r["mqtt"]["reconnects"].as_u64() >= Some(1), "{r}");
    let now = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == before["id"]);
    let fresh = now.and_then(|n| n["ts"].as_u64()) > before["ts"].as_u64();
    assert!(
        fresh,
        "the node's health after the restart is not newer: {r}"
    );
    let log = r["log"].as_str().unwrap_or_default();
    assert!(log.contains("lost the broker"), "{log}");
    assert!(log.contains("reconnected to"), "{log}");
    assert!(
        r["broker"]
            .as_str()
            .unwrap_or_default()
            .starts_with("broker ws://"),
        "{r}"
    );
}

/// The page draws each node's last hour from the node's retained history message, not
/// only from the health it sees while open: the node is stopped (SIGSTOP) before the
/// page (served by a second node) opens, so every point beyond the one retained health
/// must come from the history.
#[test]
fn the_page_charts_a_nodes_last_hour_from_its_retained_history() {
    use common::mosquitto::Probe;
    let (m, ws) = ws_mosquitto();
    let web = free_port();
    let (dir, page_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let id = node_id(dir.path());
    let topic = format!("ddc/nodes/{id}/history");
    let mut p = Probe::connect(m.port, &[&topic]);
    // Published with the 1st, 11th, 21st... sample (telemetry.interval=1s in tests).
    let h = p.wait(
        "a history message with 11 samples",
        Duration::from_secs(60),
        |msg| msg.json()["t"].as_array().is_some_and(|t| t.len() >= 11),
    );
    let h = h.json();
    let n = h["t"].as_array().unwrap().len();
    for series in [
        "cpu_temp_c",
        "battery_percent",
        "level",
        "replication_bps",
        "egress_bps",
    ] {
        assert_eq!(h[series].as_array().map(Vec::len), Some(n), "{series}: {h}");
    }
    assert_eq!(h["node_id"], id.as_str());
    assert_eq!(h["interval_s"], 1);
    assert!(
        h["cpu_temp_c"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.is_f64()),
        "{h}"
    );
    agent.signal(libc::SIGSTOP);
    let sets = serving_page(web, ws);
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let _page_node = start_agent(&m.url(), page_dir.path(), &fixture("pi4-mains"), &sets);
    let r = drive(
        &format!("http://127.0.0.1:{web}/"),
        0,
        &["charts", &id, &n.to_string()],
    );
    agent.signal(libc::SIGCONT);
    let charts = r["charts"].as_array().unwrap();
    let chart = charts.iter().find(|c| c["node"] == id.as_str());
    let chart = chart.unwrap_or_else(|| panic!("no chart for {id}: {r}"));
    assert!(
        chart["points"].as_u64() >= Some(n as u64),
        "the chart has fewer points than the retained history ({n}): {r}"
    );
    // cpu is a line; battery (mains) has no figures and draws none.
    assert!(chart["lines"].as_u64() >= Some(1), "{r}");
    let captions: Vec<&str> = chart["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        captions[0].starts_with("cpu: ") && captions[0].ends_with("°C"),
        "{captions:?}"
    );
    assert_eq!(captions[1], "battery: -", "{captions:?}");
    assert_eq!(captions.last(), Some(&"level: full"), "{captions:?}");
}
