//! The `ddc-edge` command line. Parsing and dispatch only: each command's work lives in
//! the module it belongs to.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad config or bad usage.

use crate::boards::{BOARDS, Board};
use crate::config::{self, Config, ConfigError, LoadedConfig, Overrides};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ddc-edge",
    version,
    about = "Edge agent for a decentralized data center: offers spare disk and bandwidth \
             from a Raspberry Pi-class board, throttled by temperature and battery.",
    after_help = "Config lookup: --config, then $DDC_EDGE_CONFIG, then /etc/ddc-edge/config.toml, \
                  then a built-in development default.\nLogging: node.log in the config; RUST_LOG overrides it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent until SIGINT or SIGTERM.
    Run(ConfigArgs),
    /// Load and validate the config, then print where it came from (and, with --print,
    /// the effective values after defaults and overrides).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print the effective config as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Write a commented config for a board profile.
    Init {
        /// Board profile; `ddc-edge boards` lists them.
        #[arg(long, value_name = "NAME")]
        board: String,
        /// Where to write it.
        #[arg(long, value_name = "PATH", default_value = config::SYSTEM_CONFIG)]
        out: PathBuf,
        /// Replace an existing file that differs (without it, an existing file is kept and
        /// the command still succeeds, so it is safe as a first-boot step).
        #[arg(long)]
        force: bool,
    },
    /// List the board profiles.
    Boards,
    /// The local chunk store (the agent must not be running on the same data dir).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run a whole network on this machine (embedded broker, three agents with fake
    /// sensors) and show replication, throttling by temperature, repair and a verified
    /// fetch. Under a minute.
    Demo {
        /// Keep the demo's files (data dirs, logs) in a new directory under DIR.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Store a file on nodes over WebRTC; prints its file ID on the last line.
    Put {
        file: PathBuf,
        /// Node to store on (repeatable); default: the online node with the most room.
        #[arg(long = "to", value_name = "NODE_ID")]
        to: Vec<String>,
        /// This client's key (created on first use).
        #[arg(long, value_name = "PATH")]
        key: Option<PathBuf>,
        /// Copies to keep across the fleet, when more than replication.factor (nodes cap
        /// it at replication.max_factor).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=8))]
        replicas: Option<u8>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Fetch a file by ID over WebRTC, verifying every chunk.
    Get {
        id: String,
        #[arg(short, long, value_name = "OUT")]
        out: PathBuf,
        /// Node to fetch from (repeatable); default: every online node.
        #[arg(long = "from", value_name = "NODE_ID")]
        from: Vec<String>,
        #[arg(long, value_name = "PATH")]
        key: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Send a fleet command (docs/mqtt.md) to a node, or to every online node with --all,
    /// signed with the operator key; print the replies. Exits 1 on an error reply or
    /// none within --timeout.
    ///
    /// Examples: `ddc-edge ctl 9da249de9d5675be421a940f status`,
    /// `ddc-edge ctl --all set_limits egress_bps=1000000`,
    /// `ddc-edge ctl --public-key` (for control.operators).
    Ctl {
        /// NODE_ID VERB [key=value]... (or, with --all, VERB [key=value]...)
        #[arg(value_name = "NODE_ID VERB [key=value]")]
        words: Vec<String>,
        /// Every node whose retained status is online.
        #[arg(long)]
        all: bool,
        /// The operator key (created on first use).
        #[arg(long, value_name = "PATH")]
        key: Option<PathBuf>,
        /// How long to wait for replies.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        timeout: crate::units::HumanDuration,
        /// Print the replies as one JSON object keyed by node.
        #[arg(long)]
        json: bool,
        /// Print the operator key's public key (for control.operators) and exit.
        #[arg(long)]
        public_key: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The fleet as a table, from what every node keeps retained on the broker: node,
    /// name, online, throttle level and why, CPU temperature, battery, disk used/offered,
    /// replication queue and budget, version, last seen. A health message not signed by
    /// its node is shown as a forgery, never as the node's figures.
    ///
    /// Examples: `ddc-edge nodes`, `ddc-edge nodes --watch`,
    /// `ddc-edge nodes --json | jq '.[] | select(.level != "full")'`.
    Nodes {
        /// Print JSON: an array of nodes (with --watch, one array per line, per change).
        #[arg(long)]
        json: bool,
        /// Keep running and print the fleet again whenever it changes (Ctrl-C ends).
        #[arg(long)]
        watch: bool,
        /// How long to wait for the broker and its retained messages.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        timeout: crate::units::HumanDuration,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Simulate replication over a fleet: every node's replication planner (the agent's
    /// own code) against each other in memory, on a simulated clock. Prints the control
    /// traffic per node in steady state and, for each event (nodes killed, joined,
    /// drained; chunks stored), the chunks moved against the ideal, the time until every
    /// chunk is back to its factor under the budgets, and the planner's memory.
    ///
    /// Example: `ddc-edge simulate --nodes 1000 --chunks 1000000 --kill 1 --join 1 --json`
    Simulate {
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 100_000)]
        chunks: usize,
        /// Copies of each chunk (1 or 2).
        #[arg(long, default_value_t = 2)]
        factor: usize,
        /// Nodes that die (their copies are lost).
        #[arg(long, default_value_t = 1)]
        kill: usize,
        /// Nodes that join, empty.
        #[arg(long, default_value_t = 1)]
        join: usize,
        /// Nodes that drain (leave placement, hand everything off).
        #[arg(long, default_value_t = 0)]
        drain: usize,
        /// New chunks stored by clients, each on some live node.
        #[arg(long, default_value_t = 0)]
        store: usize,
        /// Bytes of a chunk.
        #[arg(long, value_name = "SIZE", default_value = "1MiB")]
        chunk_size: crate::units::ByteSize,
        /// Each node's replication budget, per second (both what it pulls and serves).
        #[arg(long, value_name = "SIZE", default_value = "1MiB")]
        budget: crate::units::ByteSize,
        /// How often each pair of nodes compares inventory digests.
        #[arg(long, value_name = "DURATION", default_value = "15m")]
        anti_entropy: crate::units::HumanDuration,
        /// How long steady state is watched (figures are per hour).
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        steady: crate::units::HumanDuration,
        /// One-way latency of every message and request.
        #[arg(long, value_name = "DURATION", default_value = "50ms")]
        latency: crate::units::HumanDuration,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Fleet membership: make the fleet key, enroll nodes (docs/deploy.md, "Fleet
    /// membership").
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Print this node's ID (creating its key in the data dir on first use).
    Id {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also print the public key, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take one sensor reading and print it with the replication level the throttle
    /// policy would choose from it.
    Sensors {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions to stdout, e.g. `ddc-edge completions bash >
    /// /etc/bash_completion.d/ddc-edge` (the .deb installs them for bash, zsh and fish).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g. `ddc-edge man | man -l -`, or write it and
    /// one page per subcommand (ddc-edge-run.1, ...) into a directory (the .deb installs
    /// them all in section 1).
    Man {
        /// Write ddc-edge.1 and every ddc-edge-SUBCOMMAND.1 here instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Create the fleet key (kept if it exists) and print its public key: the value of
    /// `fleet.ca` on every node. Keep the key file off the nodes.
    Init {
        #[arg(long, value_name = "PATH", default_value = "fleet.key")]
        key: PathBuf,
    },
    /// Issue a certificate for a node (its public key: `ddc-edge id --json` on the node)
    /// and print it: the value of `fleet.cert` on that node.
    Enroll {
        /// The node's public key, 64 hex characters.
        node_public_key: String,
        #[arg(long, value_name = "PATH", default_value = "fleet.key")]
        key: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Store files (split into chunks plus a manifest); prints each file ID, the last
    /// file's on the last line.
    Put {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Chunk writes in flight at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Write a stored file (or, with --raw, one chunk) to OUT, verifying every chunk.
    Get {
        id: String,
        #[arg(short, long, value_name = "OUT")]
        out: PathBuf,
        /// The ID is a single chunk, not a file manifest.
        #[arg(long)]
        raw: bool,
    },
    /// List stored chunks: ID and size.
    Ls,
    /// Usage figures.
    Stat {
        #[arg(long)]
        json: bool,
    },
    /// Verify every chunk at storage.scrub_rate; corrupt chunks are quarantined. Exits 1
    /// if any was found.
    Scrub {
        /// Override storage.scrub_rate, e.g. 20MiB/s (0 = unlimited).
        #[arg(long)]
        rate: Option<crate::units::Rate>,
    },
    /// Delete chunks by ID.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Where the config comes from and what to change on top of it.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Config file (default: $DDC_EDGE_CONFIG, /etc/ddc-edge/config.toml, built-in).
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Override storage.data_dir.
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Override mqtt.broker: `embedded`, `mqtt://host:port` or `mqtts://host:port`.
    #[arg(long, value_name = "URL", global = true)]
    pub broker: Option<String>,
    /// Override sensors.sysfs_root (read sensors from a fake tree).
    #[arg(long, value_name = "DIR", global = true)]
    pub sysfs_root: Option<PathBuf>,
    /// Override any config key, e.g. --set storage.quota=20GiB (repeatable).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE", global = true)]
    pub set: Vec<String>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<LoadedConfig, ConfigError> {
        let overrides = Overrides {
            sets: self.set.clone(),
            data_dir: self.data_dir.clone(),
            broker: self.broker.clone(),
            sysfs_root: self.sysfs_root.clone(),
        };
        config::load(self.config.as_deref(), &overrides)
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => with_config(&args, crate::agent::run),
        Command::CheckConfig { config, print } => with_config(&config, |loaded| {
            println!("config OK: {}", loaded.source);
            if print {
                print!("{}", toml::to_string(&loaded.config)?);
            }
            Ok(())
        }),
        Command::Init { board, out, force } => exit_with(init(&board, &out, force)),
        Command::Demo { keep } => exit_with(crate::demo::run(keep)),
        Command::Boards => {
            print_boards();
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ddc-edge",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { dir } => exit_with(match dir {
            Some(dir) => std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| anyhow::anyhow!("writing man pages to {}: {e}", dir.display())),
            None => clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(Into::into),
        }),
        Command::Store { command, config } => {
            with_config(&config, |loaded| store_command(&loaded.config, command))
        }
        Command::Put {
            file,
            to,
            key,
            replicas,
            config,
        } => with_config(&config, |loaded| {
            client_runtime(&loaded.config, |cfg| async move {
                let key = key.unwrap_or_else(crate::transfer::default_key_path);
                let id = crate::transfer::put(&cfg, &key, &file, &to, replicas).await?;
                println!("{id}");
                Ok(())
            })
        }),
        Command::Get {
            id,
            out,
            from,
            key,
            config,
        } => with_config(&config, |loaded| {
            let id: crate::store::ChunkId = id.parse()?;
            client_runtime(&loaded.config, |cfg| async move {
                let key = key.unwrap_or_else(crate::transfer::default_key_path);
                let n = crate::transfer::get(&cfg, &key, &id, &out, &from).await?;
                eprintln!("wrote {n} bytes to {}", out.display());
                Ok(())
            })
        }),
        Command::Ctl {
            words,
            all,
            key,
            timeout,
            json,
            public_key,
            config,
        } => with_config(&config, |loaded| {
            let key = key.unwrap_or_else(crate::transfer::default_key_path);
            if public_key {
                println!("{}", crate::ctl::public_key(&key)?);
                return Ok(());
            }
            let (target, rest) = match (all, words.split_first()) {
                (true, _) => (crate::ctl::Target::All, &words[..]),
                (false, Some((node, rest))) => (crate::ctl::Target::Node(node.clone()), rest),
                (false, None) => {
                    return Err(ConfigError::new("ctl", None, "name a node ID or --all").into());
                }
            };
            let Some((verb, args)) = rest.split_first() else {
                return Err(ConfigError::new(
                    "ctl",
                    None,
                    "name a verb (ping, status, drain, ...)",
                )
                .into());
            };
            let args = crate::ctl::parse_args(args)?;
            client_runtime(&loaded.config, |cfg| async move {
                crate::ctl::run(&cfg, &key, target, verb, args, timeout.0, json).await
            })
        }),
        Command::Nodes {
            json,
            watch,
            timeout,
            config,
        } => with_config(&config, |loaded| {
            client_runtime(&loaded.config, |cfg| async move {
                crate::nodes::run(&cfg, json, watch, timeout.0).await
            })
        }),
        Command::Simulate {
            nodes,
            chunks,
            factor,
            kill,
            join,
            drain,
            store,
            chunk_size,
            budget,
            anti_entropy,
            steady,
            latency,
            json,
        } => exit_with((|| {
            let o = crate::simulate::Options {
                nodes,
                chunks,
                factor,
                chunk_size: chunk_size.0,
                budget: budget.0,
                anti_entropy: anti_entropy.0,
                latency: latency.0,
                steady: steady.0,
                kill,
                join,
                drain,
                store,
                seed: 1,
            };
            let r = crate::simulate::run(&o)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                crate::simulate::print(&r);
            }
            Ok(())
        })()),
        Command::Fleet { command } => exit_with(fleet_command(command)),
        Command::Id { config, json } => with_config(&config, |loaded| {
            let id = crate::identity::Identity::load_or_create(&loaded.config.storage.data_dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"node_id": id.node_id(), "public_key": id.public_key_hex()})
                );
            } else {
                println!("{}", id.node_id());
            }
            Ok(())
        }),
        Command::Sensors { config, json } => with_config(&config, |loaded| {
            print_sensors(&loaded.config, json);
            Ok(())
        }),
    }
}

fn fleet_command(command: FleetCommand) -> anyhow::Result<()> {
    use crate::identity::Identity;
    match command {
        FleetCommand::Init { key } => {
            let fleet = Identity::load_or_create_file(&key)?;
            eprintln!(
                "fleet key: {} (keep it safe and off the nodes); its public key, for fleet.ca:",
                key.display()
            );
            println!("{}", fleet.public_key_hex());
        }
        FleetCommand::Enroll {
            node_public_key,
            key,
            days,
        } => {
            if !key.exists() {
                return Err(ConfigError::new(
                    "--key",
                    None,
                    format!(
                        "{}: no fleet key here (`ddc-edge fleet init` makes one)",
                        key.display()
                    ),
                )
                .into());
            }
            let node_key: [u8; 32] = hex::decode(node_public_key.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        "NODE_PUBLIC_KEY",
                        None,
                        format!("expected 64 hex characters, got {node_public_key:?}"),
                    )
                })?;
            let fleet = Identity::load_or_create_file(&key)?;
            let not_after = crate::control::unix_now() + days * 86_400;
            println!(
                "{}",
                crate::fleet::Cert::issue(&fleet, &node_key, not_after)
            );
        }
    }
    Ok(())
}

fn with_config(args: &ConfigArgs, f: impl FnOnce(LoadedConfig) -> anyhow::Result<()>) -> ExitCode {
    match args.load() {
        Ok(loaded) => exit_with(f(loaded)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn exit_with(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init(name: &str, out: &Path, force: bool) -> anyhow::Result<()> {
    let Some(board) = Board::find(name) else {
        let names: Vec<_> = BOARDS.iter().map(|b| b.name).collect();
        return Err(ConfigError::new(
            "--board",
            None,
            format!(
                "unknown board {name:?}; expected one of {}",
                names.join(", ")
            ),
        )
        .into());
    };
    match std::fs::read_to_string(out) {
        Ok(existing) if existing == board.text => {
            eprintln!(
                "{} is already the {} profile; nothing to do",
                out.display(),
                name
            );
            return Ok(());
        }
        Ok(_) if !force => {
            eprintln!(
                "{} exists and differs from the {} profile; kept it (use --force to replace it)",
                out.display(),
                name
            );
            return Ok(());
        }
        _ => {}
    }
    crate::fsutil::write_atomic(out, board.text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    eprintln!("wrote the {} profile to {}", name, out.display());
    Ok(())
}

fn print_boards() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<16} {:<30} {:>12} {:>8} {:>10} {:>11}  DESCRIPTION",
        "NAME", "TARGET", "REDUCE/PAUSE", "QUOTA", "EGRESS", "REPLICATION"
    );
    for b in BOARDS {
        // Profiles are checked by the test suite; a broken one would be a build defect.
        let c: Config = match b.config() {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(out, "{:<16} invalid profile: {e}", b.name);
                continue;
            }
        };
        let t = &c.throttle;
        let _ = writeln!(
            out,
            "{:<16} {:<30} {:>12} {:>8} {:>10} {:>11}  {}",
            b.name,
            c.board.target,
            format!("{}/{} C", t.reduce_temp_c, t.pause_temp_c),
            c.storage.quota.to_string(),
            c.bandwidth.egress.to_string(),
            c.bandwidth.replication.to_string(),
            c.board.description
        );
    }
}

fn print_sensors(cfg: &Config, json: bool) {
    use crate::sensors::{BatteryReading, Sensors, to_json};
    let mut sensors = Sensors::probe(&cfg.sensors);
    let readings = sensors.read();
    let decision =
        crate::throttle::Policy::new(&cfg.throttle).step(std::time::Instant::now(), &readings);
    if json {
        println!("{}", to_json(&readings, &decision, sensors.sources()));
        return;
    }
    let src = sensors.sources();
    let temp = match readings.cpu_temp_c {
        Ok(t) => format!("{t:.1} C"),
        Err(e) => format!("unavailable ({e})"),
    };
    let battery = match readings.battery {
        BatteryReading::Absent => "none (mains)".to_string(),
        BatteryReading::Present(b) => {
            let v = b
                .voltage_v
                .map(|v| format!(", {v:.3} V"))
                .unwrap_or_default();
            format!("{:.1} % {}{v}", b.percent, b.status.as_str())
        }
        BatteryReading::Unavailable(e) => format!("unavailable ({e})"),
    };
    let power = match readings.power {
        Ok(p) => match p.undervoltage_now() {
            Some(true) => format!("UNDER-VOLTAGE (flags {:#x})", p.bits()),
            _ => format!("ok (flags {:#x})", p.bits()),
        },
        Err(e) => format!("unknown ({e})"),
    };
    println!("{:<16} {:<32} {}", "cpu temperature", temp, src.cpu_temp);
    println!("{:<16} {:<32} {}", "battery", battery, src.battery);
    println!("{:<16} {:<32} {}", "power", power, src.power);
    println!(
        "{:<16} {} (replication at {:.0} % of its budget)",
        "level",
        decision.level,
        decision.factor * 100.0
    );
    for (i, r) in decision.reason_strings().iter().enumerate() {
        println!("{:<16} {r}", if i == 0 { "reasons" } else { "" });
    }
}

fn store_command(cfg: &Config, cmd: StoreCommand) -> anyhow::Result<()> {
    use crate::store::{ChunkId, Store, StoreConfig};
    use anyhow::Context;
    let store = Store::open(
        &cfg.storage.data_dir,
        StoreConfig::from_section(&cfg.storage),
    )?;
    let chunk_size = store.config().max_chunk as u32;
    match cmd {
        StoreCommand::Put { files, jobs } => {
            for f in files {
                let file =
                    std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                // The whole file is counted up front: a put that cannot fit writes
                // nothing (and one that fails later removes what it wrote).
                store
                    .check_room(len)
                    .with_context(|| format!("storing {}", f.display()))?;
                let id = store.put_file_jobs(std::io::BufReader::new(file), chunk_size, jobs)?;
                eprintln!("stored {} ({len} bytes)", f.display());
                println!("{id}");
            }
        }
        StoreCommand::Get { id, out, raw } => {
            let id: ChunkId = id.parse()?;
            let tmp = out.with_extension("ddc-partial");
            let result = (|| -> anyhow::Result<u64> {
                let mut w = std::io::BufWriter::new(
                    std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?,
                );
                let n = if raw {
                    let data = store.get(&id)?;
                    w.write_all(&data)?;
                    data.len() as u64
                } else {
                    store.get_file(&id, &mut w)?
                };
                w.flush()?;
                Ok(n)
            })();
            match result {
                Ok(n) => {
                    std::fs::rename(&tmp, &out)
                        .with_context(|| format!("writing {}", out.display()))?;
                    eprintln!("wrote {n} bytes to {}", out.display());
                }
                Err(e) => {
                    // Never leave a half-written or unverified file under the asked name.
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        StoreCommand::Ls => {
            let mut out = std::io::stdout().lock();
            let mut result = Ok(());
            store.for_each(|id, size| {
                result = writeln!(out, "{id} {size}");
                result.is_ok()
            })?;
            result?;
        }
        StoreCommand::Stat { json } => {
            let st = store.stat()?;
            if json {
                println!("{}", serde_json::to_string(&st)?);
            } else {
                println!(
                    "used        {} bytes in {} chunks",
                    st.used_bytes, st.chunks
                );
                println!("quota       {} bytes", st.quota_bytes);
                println!(
                    "quarantined {} chunks, {} bytes",
                    st.quarantined, st.quarantined_bytes
                );
                println!(
                    "filesystem  {} bytes free, {} kept in reserve",
                    st.free_bytes, st.reserve_bytes
                );
            }
        }
        StoreCommand::Scrub { rate } => {
            let rate = rate.unwrap_or(cfg.storage.scrub_rate).0;
            let r = store.scrub(rate)?;
            println!(
                "checked {} chunks ({} bytes), {} corrupt",
                r.checked,
                r.bytes,
                r.corrupt.len()
            );
            for id in &r.corrupt {
                println!("corrupt {id} (quarantined)");
            }
            if !r.corrupt.is_empty() {
                anyhow::bail!("scrub found {} corrupt chunks", r.corrupt.len());
            }
        }
        StoreCommand::Rm { ids } => {
            let ids = ids
                .iter()
                .map(|s| s.parse::<ChunkId>())
                .collect::<Result<Vec<_>, _>>()?;
            for id in ids {
                let n = store.delete(&id)?;
                eprintln!("deleted {id} ({n} bytes)");
            }
        }
    }
    store.checkpoint()?;
    Ok(())
}

/// Runs a client command on a small runtime, logging warnings (RUST_LOG overrides).
fn client_runtime<F, Fut>(cfg: &Config, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    crate::logging::init("warn");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(f(cfg.clone()))
}
