//! The data plane, all in one run (release build, loopback, mosquitto):
//!
//! (a) latency of a single 1 MiB chunk GET from a connected agent, p50 and p99 over 200
//!     requests (target p99 < 50 ms);
//! (b) GET throughput client <- agent for a 64 MiB file, as a ratio to the raw
//!     data-channel throughput of the same build: two in-process peers pushing 64 KiB
//!     messages with flow control (target >= 0.8);
//! (c) the agent's RSS during 8 concurrent 64 MiB transfers (target < 64 MB).
//!
//! Run: cargo bench --bench dataplane

#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

use bytes::{Bytes, BytesMut};
use ddc_edge::config::{Broker, Config};
use ddc_edge::dataplane::{RtcSettings, new_peer_connection, wait_connected, wait_gathered};
use ddc_edge::store::ChunkId;
use ddc_edge::transfer::ClientHub;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::data_channel::{DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::RTCSessionDescription;

const MIB: usize = 1 << 20;
const FILE_CHUNKS: usize = 64;

fn rss_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn chunk(i: usize) -> Bytes {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
    Bytes::from(
        (0..MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

fn settings() -> RtcSettings {
    let mut c = Config::default();
    c.webrtc.bind = vec!["127.0.0.1:0".into()];
    RtcSettings::from_config(&c)
}

/// Raw data-channel throughput between two in-process peers: 64 MiB in 64 KiB messages,
/// paced by the send-buffer limit.
async fn raw_throughput(total: usize) -> f64 {
    let s = settings();
    let (a, mut ea) = new_peer_connection(&s).await.unwrap();
    let (b, mut eb) = new_peer_connection(&s).await.unwrap();
    let dc = a
        .create_data_channel(
            "raw",
            Some(RTCDataChannelInit {
                ordered: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let offer = a.create_offer(None).await.unwrap();
    a.set_local_description(offer).await.unwrap();
    wait_gathered(&mut ea.gathered, Duration::from_secs(2)).await;
    b.set_remote_description(
        RTCSessionDescription::offer(a.local_description().await.unwrap().sdp).unwrap(),
    )
    .await
    .unwrap();
    let answer = b.create_answer(None).await.unwrap();
    b.set_local_description(answer).await.unwrap();
    wait_gathered(&mut eb.gathered, Duration::from_secs(2)).await;
    a.set_remote_description(
        RTCSessionDescription::answer(b.local_description().await.unwrap().sdp).unwrap(),
    )
    .await
    .unwrap();
    wait_connected(&mut ea.state, Duration::from_secs(20))
        .await
        .unwrap();
    let rx_dc = eb.data_channels.recv().await.unwrap();
    let receiver = tokio::spawn(async move {
        let mut got = 0usize;
        let mut start = None;
        while let Some(ev) = rx_dc.poll().await {
            if let DataChannelEvent::OnMessage(m) = ev {
                start.get_or_insert_with(Instant::now);
                got += m.data.len();
                if got >= total {
                    break;
                }
            }
        }
        start.unwrap().elapsed()
    });
    loop {
        if let Some(DataChannelEvent::OnOpen) = dc.poll().await {
            break;
        }
    }
    let msg = BytesMut::from(&vec![7u8; 64 << 10][..]);
    let mut sent = 0;
    while sent < total {
        dc.send(msg.clone()).await.unwrap();
        sent += msg.len();
    }
    let elapsed = receiver.await.unwrap();
    let _ = a.close().await;
    let _ = b.close().await;
    total as f64 / elapsed.as_secs_f64() / 1e6
}

fn main() {
    let m = mosquitto::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let node_id = {
        let o = Command::new(env!("CARGO_BIN_EXE_ddc-edge"))
            .args([
                "id",
                "--config",
                "/dev/null",
                "--data-dir",
                dir.path().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let mut agent = Command::new(env!("CARGO_BIN_EXE_ddc-edge"))
        .args([
            "run",
            "--config",
            "/dev/null",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--broker",
            &m.url(),
        ])
        .args([
            "--set",
            "webrtc.bind=[\"127.0.0.1:0\"]",
            "--set",
            "storage.fsync=false",
            "--set",
            "storage.quota=2GiB",
        ])
        .args(["--set", "webrtc.max_peers=16"])
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
    let pid = agent.id();

    let mut cfg = Config::default();
    cfg.mqtt.broker = match m.url().parse::<Broker>().unwrap() {
        b @ Broker::Url(_) => b,
        Broker::Embedded => unreachable!(),
    };
    cfg.webrtc.bind = vec!["127.0.0.1:0".into()];
    let key = dir.path().join("client.key");
    // DDC_BENCH_PARTS picks parts (default "abc").
    let parts = std::env::var("DDC_BENCH_PARTS").unwrap_or_else(|_| "abc".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hub = ClientHub::join(&cfg, &key).await.unwrap();
        let conn = hub.connect(&node_id).await.unwrap();
        let chunks: Vec<Bytes> = (0..FILE_CHUNKS).map(chunk).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| ChunkId::of(c)).collect();
        for (c, id) in chunks.iter().zip(&ids) {
            conn.put(id, c).await.unwrap();
        }

        // (a) latency
        if parts.contains('a') {
        let mut lat = Vec::new();
        for i in 0..200 {
            let t = Instant::now();
            let got = conn.get(&ids[i % 8]).await.unwrap();
            lat.push(t.elapsed());
            assert_eq!(got.len(), MIB);
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
        println!("(a) 1 MiB GET latency over 200 requests: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms [target p99 < 50 ms]", p(0.5), p(0.99), p(1.0));
        }
        if !parts.contains('b') && !parts.contains('c') {
            conn.close().await;
            hub.leave().await;
            return;
        }

        // (b) throughput of a 64 MiB file, 4 chunks in flight, against raw data channels,
        // alternating over three rounds (the machine is shared: compare like with like).
        let conn = Arc::new(conn);
        let inflight: usize = std::env::var("DDC_BENCH_INFLIGHT").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
        let (mut gets, mut raws, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _round in 0..3 {
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            let sem = Arc::new(tokio::sync::Semaphore::new(inflight));
            for id in ids.clone() {
                let (conn, sem) = (conn.clone(), sem.clone());
                set.spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    conn.get(&id).await.unwrap().len()
                });
            }
            let mut got = 0;
            while let Some(n) = set.join_next().await {
                got += n.unwrap();
            }
            let get_mbps = got as f64 / t.elapsed().as_secs_f64() / 1e6;
            let raw_mbps = raw_throughput(FILE_CHUNKS * MIB).await;
            gets.push(get_mbps);
            raws.push(raw_mbps);
            ratios.push(get_mbps / raw_mbps);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "(b) GET 64 MiB client <- agent ({inflight} in flight): {:.1} MB/s; raw data channel (in-process pair, 64 KiB messages): {:.1} MB/s; ratio {:.2} (median of 3 alternating rounds) [target >= 0.80]",
            median(gets),
            median(raws),
            median(ratios)
        );

        // (c) RSS during 8 concurrent 64 MiB transfers, each on its own connection.
        let before = rss_kb(pid, "VmRSS:");
        let mut conns = Vec::new();
        for _ in 0..8 {
            conns.push(Arc::new(hub.connect(&node_id).await.unwrap()));
        }
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_kb(pid, "VmRSS:"), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in &conns {
            let (c, ids) = (c.clone(), ids.clone());
            set.spawn(async move {
                let mut n = 0;
                for id in &ids {
                    n += c.get(id).await.unwrap().len();
                }
                n
            });
        }
        let mut total = 0;
        while let Some(n) = set.join_next().await {
            total += n.unwrap();
        }
        sampler.abort();
        println!(
            "(c) 8 concurrent 64 MiB transfers: {:.1} MB/s in total; agent RSS {:.1} MB before, peak {:.1} MB during [target < 64 MB]",
            total as f64 / t.elapsed().as_secs_f64() / 1e6,
            before as f64 / 1e3,
            peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e3
        );
        for c in conns {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
        if let Ok(c) = Arc::try_unwrap(conn) {
            c.close().await;
        }
        hub.leave().await;
    });
    let _ = agent.kill();
    let _ = agent.wait();
}
