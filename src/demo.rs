//! `ddc-edge demo`: the whole network on one machine, in under a minute.
//!
//! An embedded broker and three agents (their own data dirs and fake sysfs trees) run as
//! child processes of this command. The demo stores a file with factor 2 and shows
//! replication happening, heats one node's fake CPU past the pause threshold (its
//! replication stops while the others go on), cools it (it resumes after the dwell time),
//! kills a node (the others repair), and fetches the file back intact.

use crate::config::Config;
use crate::store::ChunkId;
use crate::transfer;
use anyhow::{Context, bail};
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct DemoNode {
    name: String,
    id: String,
    dir: PathBuf,
    sysfs: PathBuf,
    child: Option<Child>,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&c),
                rustix::process::Signal::TERM,
            );
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A fake sysfs tree of a Pi on mains at `celsius`.
fn fake_board(root: &Path, celsius: u32) -> anyhow::Result<()> {
    write(
        &root.join("sys/class/thermal/thermal_zone0/type"),
        "cpu-thermal\n",
    )?;
    set_temp(root, celsius)?;
    write(
        &root.join("sys/devices/platform/soc/soc:firmware/get_throttled"),
        "0\n",
    )
}

fn set_temp(root: &Path, celsius: u32) -> anyhow::Result<()> {
    write(
        &root.join("sys/class/thermal/thermal_zone0/temp"),
        &format!("{}\n", celsius * 1000),
    )
}

fn chunks_held(dir: &Path) -> HashMap<String, ()> {
    let mut m = HashMap::new();
    for fan in std::fs::read_dir(dir.join("store/chunks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in std::fs::read_dir(fan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            m.insert(e.file_name().to_string_lossy().into_owned(), ());
        }
    }
    m
}

type Healths = Arc<Mutex<BTreeMap<String, Value>>>;

struct Demo {
    nodes: Vec<DemoNode>,
    healths: Healths,
    started: Instant,
    /// Multiplies every wait: 1 natively, more when the agents run under an emulator.
    patience: u32,
}

impl Demo {
    fn table(&self, note: &str) {
        let h = self.healths.lock().unwrap_or_else(|p| p.into_inner());
        println!("  t={:>5.1}s  {note}", self.started.elapsed().as_secs_f32());
        for n in &self.nodes {
            let alive = n.child.is_some();
            let v = h.get(&n.id).cloned().unwrap_or(Value::Null);
            let mb = |x: &Value| x.as_u64().unwrap_or(0) as f64 / 1e6;
            let temp = v["cpu_temp_c"]
                .as_f64()
                .map(|t| format!("{t:.0} C"))
                .unwrap_or_else(|| "-".into());
            let paused = v["replication"]["paused_by"]
                .as_str()
                .map(|p| format!(" (paused by {p})"))
                .unwrap_or_default();
            println!(
                "      {:<7} {:<8} {:>6}  {:>3} chunks  pulled {:>5.1} MB  served {:>5.1} MB  {}{}",
                n.name,
                if alive {
                    v["level"].as_str().unwrap_or("?")
                } else {
                    "killed"
                },
                temp,
                chunks_held(&n.dir).len(),
                mb(&v["replication"]["pulled_bytes"]),
                mb(&v["replication"]["served_bytes"]),
                if alive { "" } else { "(offline)" },
                paused,
            );
        }
    }

    fn level(&self, i: usize) -> String {
        let h = self.healths.lock().unwrap_or_else(|p| p.into_inner());
        h.get(&self.nodes[i].id)
            .and_then(|v| v["level"].as_str().map(String::from))
            .unwrap_or_default()
    }

    fn replication_bytes(&self, i: usize) -> u64 {
        let h = self.healths.lock().unwrap_or_else(|p| p.into_inner());
        h.get(&self.nodes[i].id)
            .map(|v| {
                v["replication"]["pulled_bytes"].as_u64().unwrap_or(0)
                    + v["replication"]["served_bytes"].as_u64().unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Copies per chunk over the live nodes.
    fn copies(&self) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            for id in chunks_held(&n.dir).into_keys() {
                *c.entry(id).or_insert(0) += 1;
            }
        }
        c
    }

    /// An agent that exits on its own (a port in use, a bad setting) ends the demo with
    /// the tail of its log rather than a timeout further on.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            let Some(child) = &mut n.child else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                let log = n
                    .dir
                    .parent()
                    .map(|d| d.join("agent.log"))
                    .unwrap_or_default();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{} exited early ({status}); the end of {}:\n  {}",
                    n.name,
                    log.display(),
                    tail.join("\n  ")
                );
            }
        }
        Ok(())
    }

    async fn watch_until(
        &mut self,
        note: &str,
        timeout: Duration,
        mut done: impl FnMut(&Demo) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout * self.patience;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.check_alive()?;
            self.table(note);
            if done(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the demo timed out: {note}");
            }
        }
    }
}

/// The command that starts one of the demo's agents: this same binary, or, when
/// `DDC_EDGE_AGENT_RUNNER` is set (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`), this
/// binary under that command. An ARM build run under qemu-user on a PC needs it: the
/// kernel there cannot start the ARM agents by itself (no binfmt_misc).
fn agent_command(exe: &Path) -> Command {
    match agent_runner() {
        Some(r) => {
            let mut parts = r.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or_default());
            c.args(parts).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

fn agent_runner() -> Option<String> {
    std::env::var("DDC_EDGE_AGENT_RUNNER")
        .ok()
        .filter(|r| !r.trim().is_empty())
}

pub fn run(keep: Option<PathBuf>) -> anyhow::Result<()> {
    crate::logging::init("warn");
    let work = match &keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new().prefix("demo-").tempdir_in(d)?
        }
        None => tempfile::Builder::new().prefix("ddc-demo-").tempdir()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(demo(work.path()));
    if keep.is_some() {
        let path = work.keep();
        println!("demo files kept in {}", path.display());
    }
    result
}

async fn demo(work: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the ddc-edge binary")?;
    let port = free_port()?;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let ws_port = free_port()?;
    crate::mqtt::broker::start(
        listen,
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], ws_port))),
    )?;
    let broker = format!("mqtt://127.0.0.1:{port}");
    // node1 serves the page, so the network can be watched (and used) from a browser.
    let web_port = free_port()?;
    println!(
        "ddc-edge demo: embedded broker on {broker}, three agents, files under {}",
        work.display()
    );

    let mut nodes = Vec::new();
    for (i, temp) in [48, 52, 50].into_iter().enumerate() {
        let dir = work.join(format!("node{}", i + 1));
        let sysfs = dir.join("sysfs");
        fake_board(&sysfs, temp)?;
        let identity = crate::identity::Identity::load_or_create(&dir.join("data"))?;
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let web: Vec<String> = if i == 0 {
            vec![
                format!("web.listen=127.0.0.1:{web_port}"),
                format!("web.mqtt_ws_url=ws://127.0.0.1:{ws_port}/mqtt"),
            ]
        } else {
            vec!["web.enabled=false".into()]
        };
        let child = agent_command(&exe)
            .args(["run", "--config", "/dev/null", "--broker", &broker])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--sysfs-root")
            .arg(&sysfs)
            .args([
                "--set",
                "webrtc.bind=[\"127.0.0.1:0\"]",
                "--set",
                "sensors.interval=500ms",
                "--set",
                "telemetry.interval=1s",
            ])
            .args([
                "--set",
                "throttle.dwell=4s",
                "--set",
                "replication.anti_entropy_interval=2s",
                "--set",
                "storage.fsync=false",
            ])
            .args([
                "--set",
                "bandwidth.replication=2MiB/s",
                "--set",
                "storage.chunk_size=256KiB",
            ])
            .args(web.iter().flat_map(|s| ["--set", s.as_str()]))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting an agent")?;
        nodes.push(DemoNode {
            name: format!("node{}", i + 1),
            id: identity.node_id().to_string(),
            dir: dir.join("data"),
            sysfs,
            child: Some(child),
        });
    }
    for n in &nodes {
        println!("  {} is {}", n.name, n.id);
    }
    println!("  watch it in a browser: http://127.0.0.1:{web_port}/");

    let mut cfg = Config::default();
    cfg.mqtt.broker = broker.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    cfg.webrtc.bind = vec!["127.0.0.1:0".into()];
    cfg.storage.chunk_size = crate::units::ByteSize(256 << 10);
    let healths: Healths = Arc::default();
    let watcher = watch_health(&cfg, Arc::clone(&healths)).await?;
    let mut demo = Demo {
        nodes,
        healths,
        started: Instant::now(),
        // Emulated agents (qemu-user) are several times slower to connect and hash.
        patience: if agent_runner().is_some() { 4 } else { 1 },
    };
    demo.watch_until(
        "waiting for the three agents",
        Duration::from_secs(30),
        |d| (0..3).all(|i| !d.level(i).is_empty()),
    )
    .await?;

    // 1. Store a file on node1; replication gives every chunk two copies.
    let file = work.join("file.bin");
    let data: Vec<u8> = {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..(8 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    std::fs::write(&file, &data)?;
    let key = work.join("client.key");
    println!("\n1. storing an 8 MiB file on node1 (factor 2; replication budget 2 MiB/s per node)");
    let file_id = transfer::put(&cfg, &key, &file, &[demo.nodes[0].id.clone()], None).await?;
    println!("  file ID {file_id}");
    demo.watch_until("replicating", Duration::from_secs(10), |d| {
        d.replication_bytes(1) > 0 || d.replication_bytes(2) > 0
    })
    .await?;

    // 2. Heat node2: its replication pauses, the others go on.
    println!("\n2. heating node2's CPU to 85 C (pause threshold 80 C)");
    set_temp(&demo.nodes[1].sysfs, 85)?;
    demo.watch_until("node2 should pause", Duration::from_secs(10), |d| {
        d.level(1) == "paused"
    })
    .await?;
    let frozen = demo.replication_bytes(1);
    let others = demo.replication_bytes(2);
    demo.watch_until(
        "node2 paused, node3 goes on",
        Duration::from_secs(4),
        |_| false,
    )
    .await
    .ok();
    let still = demo.replication_bytes(1) - frozen < (512 << 10);
    println!(
        "  node2 moved {} KiB while paused; node3 moved {} KiB meanwhile",
        (demo.replication_bytes(1) - frozen) / 1024,
        (demo.replication_bytes(2) - others) / 1024
    );
    if !still {
        bail!("node2 kept replicating while paused");
    }

    // 3. Cool it: back to full after the dwell time.
    println!("\n3. cooling node2 to 50 C: it returns to full after the 4 s dwell");
    set_temp(&demo.nodes[1].sysfs, 50)?;
    let cooled = Instant::now();
    demo.watch_until("node2 recovering", Duration::from_secs(15), |d| {
        d.level(1) == "full"
    })
    .await?;
    println!(
        "  node2 back to full after {:.1} s",
        cooled.elapsed().as_secs_f32()
    );
    demo.watch_until(
        "replication settling: two copies of every chunk",
        Duration::from_secs(40),
        |d| {
            let c = d.copies();
            !c.is_empty() && c.values().all(|n| *n == 2)
        },
    )
    .await?;

    // 4. Kill node3: the other two repair.
    println!("\n4. killing node3 (its last will marks it offline; the others repair)");
    if let Some(mut c) = demo.nodes[2].child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    demo.watch_until(
        "repairing: two copies on node1 and node2",
        Duration::from_secs(40),
        |d| {
            let c = d.copies();
            !c.is_empty() && c.values().all(|n| *n == 2)
        },
    )
    .await?;

    // 5. Fetch the file back.
    println!("\n5. fetching the file back from the surviving nodes");
    let out = work.join("file.out");
    transfer::get(
        &cfg,
        &key,
        &file_id.to_string().parse::<ChunkId>()?,
        &out,
        &[],
    )
    .await?;
    if std::fs::read(&out)? != data {
        bail!("the file came back different");
    }
    println!(
        "  intact: {} bytes, SHA-256 {}",
        data.len(),
        ChunkId::of(&data)
    );
    println!(
        "\ndemo finished in {:.1} s",
        demo.started.elapsed().as_secs_f32()
    );
    watcher.abort();
    Ok(())
}

/// Keeps the latest health of every node.
async fn watch_health(
    cfg: &Config,
    healths: Healths,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let options = crate::mqtt::session::options(
        cfg,
        &format!("ddc-demo-{}", std::process::id()),
        None,
        None,
    )?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let filter = format!("{}/nodes/+/health", cfg.mqtt.topic_prefix);
    let on_connect: crate::mqtt::session::OnConnect = Arc::new(move |c: &AsyncClient| {
        let _ = c.try_subscribe(&filter, QoS::AtMostOnce);
    });
    let session =
        crate::mqtt::session::Session::spawn(options, Duration::from_secs(2), on_connect, tx);
    Ok(tokio::spawn(async move {
        let _session = session;
        while let Some(p) = rx.recv().await {
            let id = p.topic.split('/').nth(2).unwrap_or_default().to_string();
            if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                healths
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, v);
            }
        }
    }))
}
