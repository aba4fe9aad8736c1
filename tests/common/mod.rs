//! Helpers shared by the integration tests: run the real binary, wait for what it prints.
#![allow(dead_code)]

pub mod browser;
pub mod mosquitto;
pub mod netlab;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The agent binary as a command. When the tests run under qemu-user (cross-compiled
/// for ARM), `DDC_EDGE_TEST_RUNNER` names the emulator so the ARM agent binary runs under it
/// too: the kernel here has no binfmt_misc to do that by itself.
pub fn bin() -> Command {
    let exe = env!("CARGO_BIN_EXE_ddc-edge");
    let mut c = match std::env::var("DDC_EDGE_TEST_RUNNER") {
        Ok(r) if !r.trim().is_empty() => {
            let mut parts = r.split_whitespace();
            let mut c = Command::new(parts.next().unwrap());
            c.args(parts).arg(exe);
            // `ddc-edge demo` starts agents of its own: the same emulator for them.
            c.env("DDC_EDGE_AGENT_RUNNER", r.trim());
            c
        }
        _ => Command::new(exe),
    };
    // Tests must never pick up the machine's config.
    c.env_remove("DDC_EDGE_CONFIG").env_remove("RUST_LOG");
    c
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn ddc-edge")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running agent whose stderr lines are collected in the background.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ddc-edge");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; panics with what was seen on timeout.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Waits for exit; panics if it takes longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

/// The node ID of a data dir (creating its key).
pub fn node_id(data_dir: &Path) -> String {
    let o = run(&[
        "id",
        "--config",
        "/dev/null",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/sysfs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Settings every test agent uses: fast telemetry and sensing, loopback-only WebRTC.
pub const TEST_SETS: &[&str] = &[
    "telemetry.interval=1s",
    "sensors.interval=500ms",
    "mqtt.keep_alive=5s",
    "webrtc.bind=[\"127.0.0.1:0\"]",
    "web.enabled=false",
];

/// `--set`s that move every listener of the built-in default to free loopback ports.
pub fn free_listeners() -> Vec<String> {
    vec![
        format!("mqtt.embedded_listen=127.0.0.1:{}", mosquitto::free_port()),
        format!(
            "mqtt.embedded_ws_listen=127.0.0.1:{}",
            mosquitto::free_port()
        ),
        format!("web.listen=127.0.0.1:{}", mosquitto::free_port()),
    ]
}

/// Starts `ddc-edge run` on `broker` with the test settings plus `extra` `--set`s, and
/// waits until it is connected.
pub fn start_agent(broker: &str, dir: &Path, sysfs: &str, extra: &[&str]) -> Running {
    let mut args: Vec<String> = [
        "run",
        "--config",
        "/dev/null",
        "--data-dir",
        dir.to_str().unwrap(),
        "--broker",
        broker,
        "--sysfs-root",
        sysfs,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in TEST_SETS.iter().chain(extra) {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    let mut a = Running::spawn(bin().args(&args));
    a.wait_for("MQTT subscribed", Duration::from_secs(60));
    a
}

/// `ddc-edge <args>` as a client of the broker at `url` with the key at `key`: no config
/// file, the tests' settings, then `sets`; logs at info (so `uploaded=N` shows).
pub fn client_cli(url: &str, key: &Path, args: &[&str], sets: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--config", "/dev/null", "--broker", url, "--key"].map(String::from));
    all.push(key.display().to_string());
    for s in TEST_SETS.iter().chain(sets) {
        all.extend(["--set".to_string(), s.to_string()]);
    }
    bin()
        .env("RUST_LOG", "info")
        .args(&all)
        .output()
        .expect("spawn ddc-edge")
}

/// True when the tests run under qemu (cross-compiled): big transfers are scaled down.
pub fn emulated() -> bool {
    std::env::var("DDC_EDGE_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}

/// Chunk ID -> number of the data dirs whose store holds it (read straight from the
/// fan-out directories, so what a test counts is what is on disk).
pub fn chunk_copies(data_dirs: &[&Path]) -> std::collections::HashMap<String, usize> {
    let mut c = std::collections::HashMap::new();
    for d in data_dirs {
        let root = d.join("store/chunks");
        for fan in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(fan.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                *c.entry(e.file_name().to_string_lossy().into_owned())
                    .or_insert(0) += 1;
            }
        }
    }
    c
}

/// Polls `f` every 200 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes `len` pseudo-random bytes (xorshift from `seed`) to `path` and returns them:
/// incompressible, distinct per seed, the same on every run.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

/// A small runtime for tests that drive the library's client directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
