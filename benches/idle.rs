//! An idle agent: connected to mosquitto, telemetry every 5 s, sensors every 5 s, nothing
//! else to do. Prints its CPU share of one core and its RSS after a steady period
//! (default 60 s; DDC_BENCH_IDLE_SECS overrides), with mosquitto's own figures from the
//! same run as a reference point. Targets: under 1 % CPU and under 15 MB RSS.
//!
//! Run: cargo bench --bench idle

#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// (user + system CPU seconds, RSS bytes, peak RSS bytes) of a process, from /proc.
fn sample(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14th and 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

fn main() {
    let secs: u64 = std::env::var("DDC_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let m = mosquitto::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let sysfs = format!(
        "{}/tests/fixtures/sysfs/pi4-mains",
        env!("CARGO_MANIFEST_DIR")
    );
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
            "--sysfs-root",
            &sysfs,
            "--set",
            "telemetry.interval=5s",
            "--set",
            "sensors.interval=5s",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let it start and connect, then measure a steady window.
    std::thread::sleep(Duration::from_secs(5));
    let pid = agent.id();
    let mosq_pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("mosquitto") && c.contains(".conf"))
        });
    let (c0, _, _) = sample(pid);
    let m0 = mosq_pid.map(sample);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = t0.elapsed().as_secs_f64();
    let (c1, rss, peak) = sample(pid);
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent exited during the run"
    );
    println!(
        "idle agent over {secs} s (telemetry and sensors every 5 s): CPU {:.3} % of one core, RSS {:.1} MB (peak {:.1} MB) \
         [targets: < 1 %, < 15 MB]",
        (c1 - c0) / wall * 100.0,
        rss as f64 / 1e6,
        peak as f64 / 1e6
    );
    if let (Some(p), Some((mc0, _, _))) = (mosq_pid, m0) {
        let (mc1, mrss, _) = sample(p);
        println!(
            "reference, mosquitto in the same run: CPU {:.3} %, RSS {:.1} MB",
            (mc1 - mc0) / wall * 100.0,
            mrss as f64 / 1e6
        );
    }
    let _ = agent.kill();
    let _ = agent.wait();
}
