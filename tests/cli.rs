//! The command line as an operator uses it: real binary, real files.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn version_names_the_crate() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim(),
        format!("ddc-edge {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_every_command() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for cmd in ["run", "check-config", "init", "boards"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    let o = run(&["run", "--help"]);
    let out = stdout(&o);
    for flag in [
        "--config",
        "--data-dir",
        "--broker",
        "--sysfs-root",
        "--set",
    ] {
        assert!(out.contains(flag), "run --help lacks {flag}:\n{out}");
    }
}

/// The subcommands an operator types most: completions and the man page must know them.
const COMMANDS: &[&str] = &[
    "run",
    "check-config",
    "init",
    "put",
    "get",
    "ctl",
    "nodes",
    "store",
];

#[test]
fn completions_cover_every_shell_and_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "completions {shell}: {}", stderr(&o));
        let out = stdout(&o);
        for cmd in COMMANDS {
            assert!(out.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    // The bash script is loaded into every interactive shell: it must at least parse.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ddc-edge.bash");
    std::fs::write(&script, stdout(&run(&["completions", "bash"]))).unwrap();
    let o = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(o.status.success(), "bash -n: {}", stderr(&o));
    let o = run(&["completions", "tcsh"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_page_renders_and_names_every_command() {
    let o = run(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let roff = stdout(&o);
    assert!(roff.contains(".TH ddc-edge"), "not a man page:\n{roff}");
    for cmd in COMMANDS {
        // roff escapes hyphens; the SUBCOMMANDS section names each subcommand's page.
        let page = format!("ddc\\-edge\\-{}(1)", cmd.replace('-', "\\-"));
        assert!(roff.contains(&page), "man page lacks {page}");
    }
    // groff (installed by scripts/prereqs.sh) renders it without warnings.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("ddc-edge.1");
    std::fs::write(&page, &roff).unwrap();
    let o = std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .expect("groff is missing: run scripts/prereqs.sh");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "groff: {}",
        stderr(&o)
    );
    // --dir writes the pages the SUBCOMMANDS section refers to.
    let o = run(&["man", "--dir", dir.path().join("man1").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for cmd in COMMANDS {
        let page = dir.path().join(format!("man1/ddc-edge-{cmd}.1"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{page:?}: {e}"));
        assert!(text.contains(".TH ddc-edge-"), "{page:?} is not a man page");
    }
    assert!(dir.path().join("man1/ddc-edge.1").exists());
}

/// Each bad config is rejected with exit code 2 and a message naming the file and key.
#[test]
fn check_config_rejects_bad_configs_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "bad unit",
            "[storage]\nquota = \"twenty\"\n",
            "storage.quota: expected a size like \"20GiB\", got \"twenty\"",
        ),
        (
            "unknown key",
            "[storage]\nqouta = \"1GiB\"\n",
            "storage.qouta: unknown key",
        ),
        (
            "metrics address",
            "[metrics]\nlisten = \"9464\"\n",
            "metrics.listen: expected an address like \"127.0.0.1:9464\"",
        ),
        (
            "metrics on the page's port",
            "[web]\nlisten = \"127.0.0.1:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"\n",
            "metrics.listen: 127.0.0.1:8080 is also web.listen",
        ),
        (
            "unknown section",
            "[stroage]\nquota = \"1GiB\"\n",
            "stroage: unknown key",
        ),
        (
            "wrong type",
            "[sensors]\ninterval = true\n",
            "sensors.interval: invalid type: boolean",
        ),
        (
            "zero quota",
            "[storage]\nquota = 0\n",
            "storage.quota: expected a size above zero",
        ),
        (
            "pause below reduce",
            "[throttle]\nreduce_temp_c = 80\npause_temp_c = 70\n",
            "throttle.pause_temp_c: must be above throttle.reduce_temp_c",
        ),
        (
            "implausible temperature",
            "[throttle]\nreduce_temp_c = 250\n",
            "throttle.reduce_temp_c: expected a temperature in C between",
        ),
        (
            "battery order",
            "[throttle]\nbattery_reduce_percent = 10\nbattery_pause_percent = 30\n",
            "throttle.battery_pause_percent: must be below",
        ),
        (
            "bad broker",
            "[mqtt]\nbroker = \"localhost:1883\"\n",
            "mqtt.broker: expected \"embedded\" or a URL",
        ),
        (
            "bad broker port",
            "[mqtt]\nbroker = \"mqtt://h:70000\"\n",
            "mqtt.broker: port must be 1-65535",
        ),
        (
            "unknown sensor source",
            "[sensors]\nbattery = [\"lipo9000\"]\n",
            "sensors.battery[0]: unknown value `lipo9000`",
        ),
        (
            "interval too short",
            "[sensors]\ninterval = \"1ms\"\n",
            "sensors.interval: expected between 100ms and 1h",
        ),
        (
            "bad target",
            "[board]\ntarget = \"mips-unknown-linux-gnu\"\n",
            "board.target: expected one of",
        ),
        (
            "bad rate",
            "[bandwidth]\negress = \"fast\"\n",
            "bandwidth.egress: expected a rate like \"4MiB/s\", got \"fast\"",
        ),
        (
            "bad reserve",
            "[storage]\nreserve = \"some\"\n",
            "storage.reserve: expected \"auto\" or a size",
        ),
        (
            "bad factor",
            "[throttle]\nreduced_factor = 1.5\n",
            "throttle.reduced_factor: expected a fraction",
        ),
        (
            "bad i2c address",
            "[sensors]\nina219_address = 0x90\n",
            "sensors.ina219_address: expected a 7-bit I2C address",
        ),
        (
            "bad topic prefix",
            "[mqtt]\ntopic_prefix = \"ddc/#\"\n",
            "mqtt.topic_prefix: expected topic levels",
        ),
        (
            "bad log filter",
            "[node]\nlog = \"\"\n",
            "node.log: expected a log level",
        ),
        ("syntax error", "[storage\nquota = 1\n", "invalid TOML"),
        // Ranges that used to pass check-config and then misbehave at run time.
        (
            "no peers",
            "[webrtc]\nmax_peers = 0\n",
            "webrtc.max_peers: expected 1 to 256",
        ),
        (
            "too many peers",
            "[webrtc]\nmax_peers = 2000\n",
            "webrtc.max_peers",
        ),
        (
            "no requests",
            "[webrtc]\nmax_inflight = 0\n",
            "webrtc.max_inflight",
        ),
        (
            "too many requests",
            "[webrtc]\nmax_inflight = 1000\n",
            "webrtc.max_inflight",
        ),
        (
            "factor 0",
            "[replication]\nfactor = 0\n",
            "replication.factor: expected 1 to 8",
        ),
        (
            "factor 9",
            "[replication]\nfactor = 9\n",
            "replication.factor",
        ),
        (
            "short keep-alive",
            "[mqtt]\nkeep_alive = \"1s\"\n",
            "mqtt.keep_alive",
        ),
        (
            "unknown verb",
            "[control]\nallowed_verbs = [\"reboot\"]\n",
            "control.allowed_verbs: unknown verb \"reboot\"",
        ),
        (
            "two passwords",
            "[mqtt]\npassword = \"a\"\npassword_file = \"/p\"\n",
            "mqtt.password_file: expected either",
        ),
        (
            "zero telemetry interval (panicked the agent)",
            "[telemetry]\ninterval = \"0s\"\n",
            "telemetry.interval: expected between 1s and 1h",
        ),
        (
            "zero GC interval",
            "[storage]\ngc_interval = \"0s\"\n",
            "storage.gc_interval",
        ),
    ];
    for (i, (what, text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        write(&path, text);
        let o = run(&["check-config", "--config", path.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{what}: expected exit 2, got {:?}; stderr: {err}",
            o.status
        );
        assert!(
            err.contains(path.to_str().unwrap()),
            "{what}: message does not name the file: {err}"
        );
        assert!(err.contains(want), "{what}: expected {want:?} in: {err}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let o = run(&["check-config", "--config", "/nonexistent/ddc.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/ddc.toml: cannot read config file"),
        "{}",
        stderr(&o)
    );
    let o = bin()
        .args(["check-config"])
        .env("DDC_EDGE_CONFIG", "/nonexistent/env.toml")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("$DDC_EDGE_CONFIG"), "{}", stderr(&o));
}

#[test]
fn set_overrides_are_checked_like_the_file() {
    let o = run(&[
        "check-config",
        "--config",
        "/dev/null",
        "--set",
        "storage.quota=2GiB",
        "--print",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("quota = \"2GiB\""), "{}", stdout(&o));
    let o = run(&[
        "check-config",
        "--config",
        "/dev/null",
        "--set",
        "throttle.pause_temp_c=hot",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--set throttle.pause_temp_c=hot: throttle.pause_temp_c"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn every_board_profile_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["boards"]);
    assert!(o.status.success());
    let listing = stdout(&o);
    let names: Vec<&str> = listing
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for want in [
        "rpi5",
        "rpi4",
        "rpi3",
        "rpi-zero-2w",
        "rpi-armv7",
        "generic-aarch64",
    ] {
        assert!(names.contains(&want), "boards lacks {want}:\n{listing}");
    }
    assert!(!listing.contains("invalid profile"), "{listing}");
    for name in names {
        let out = dir.path().join(format!("{name}.toml"));
        let o = run(&["init", "--board", name, "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "init {name}: {}", stderr(&o));
        let o = run(&["check-config", "--config", out.to_str().unwrap()]);
        assert!(o.status.success(), "check-config {name}: {}", stderr(&o));
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.starts_with("# ddc-edge configuration"),
            "{name} profile is not commented"
        );
    }
}

#[test]
fn init_is_idempotent_and_keeps_edits_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("etc/config.toml");
    let out_s = out.to_str().unwrap();
    assert!(
        run(&["init", "--board", "rpi4", "--out", out_s])
            .status
            .success()
    );
    let first = std::fs::read_to_string(&out).unwrap();
    let o = run(&["init", "--board", "rpi4", "--out", out_s]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("nothing to do"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), first);

    let edited = first.replace("quota = \"32GiB\"", "quota = \"5GiB\"");
    assert_ne!(edited, first);
    write(&out, &edited);
    let o = run(&["init", "--board", "rpi4", "--out", out_s]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("kept it"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), edited);
    let o = run(&["init", "--board", "rpi4", "--out", out_s, "--force"]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), first);

    let o = run(&["init", "--board", "pi9000", "--out", out_s]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown board \"pi9000\"; expected one of rpi5"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_starts_on_the_builtin_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut args = vec![
            "run".to_string(),
            "--data-dir".into(),
            dir.path().display().to_string(),
        ];
        for s in free_listeners() {
            args.extend(["--set".to_string(), s]);
        }
        let mut agent = Running::spawn(bin().current_dir(dir.path()).args(&args));
        agent.wait_for("built-in development default", Duration::from_secs(20));
        agent.wait_for("configured", Duration::from_secs(20));
        agent.signal(sig);
        let status = agent.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{name}: {status:?}");
        agent.wait_for(name, Duration::from_secs(5));
    }
}

#[test]
fn run_with_a_bad_override_exits_2() {
    let o = run(&["run", "--config", "/dev/null", "--broker", "tcp://x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--broker: mqtt.broker"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_reads_the_sensors_and_logs_the_level() {
    let dir = tempfile::tempdir().unwrap();
    let root = format!(
        "{}/tests/fixtures/sysfs/pi5-battery-hat",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut args = vec![
        "run".to_string(),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--sysfs-root".into(),
        root,
    ];
    for s in free_listeners() {
        args.extend(["--set".to_string(), s]);
    }
    let mut agent = Running::spawn(bin().current_dir(dir.path()).args(&args));
    agent.wait_for("sensor sources", Duration::from_secs(20));
    let line = agent.wait_for("replication level", Duration::from_secs(20));
    assert!(line.contains("level=reduced"), "{line}");
    assert!(
        line.contains("on battery at 35 % < 40 %: reduced"),
        "{line}"
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
}

/// `ddc-edge simulate --json` prints the figures issue 15 names, as numbers, for scripts.
#[test]
fn simulate_prints_the_fleet_figures_as_json() {
    let o = run(&[
        "simulate", "--nodes", "15", "--chunks", "2000", "--kill", "1", "--join", "1", "--store",
        "50", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for key in [
        "steady_control_bytes_per_node_per_hour",
        "moved_chunks",
        "ideal_moved_chunks",
        "repair_seconds",
        "planner_peak_bytes_per_node",
    ] {
        assert!(r[key].is_number(), "{key} missing or not a number: {r}");
    }
    assert_eq!(r["moved_chunks"], r["ideal_moved_chunks"], "{r}");
    assert_eq!(r["events"].as_array().unwrap().len(), 3, "{r}");
    for e in r["events"].as_array().unwrap() {
        // The default chunk size, 1 MiB.
        assert_eq!(
            e["moved_bytes"].as_u64().unwrap(),
            e["moved_chunks"].as_u64().unwrap() << 20,
            "{e}"
        );
    }
    // Bad options: a usage error that says what is wrong.
    let o = run(&["simulate", "--nodes", "2", "--kill", "2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--nodes must exceed"), "{}", stderr(&o));
}
