//! A network lab made of Linux network namespaces: the networks Pis live on (home NATs,
//! a symmetric carrier NAT, lossy links, a host with only `lo`), built by the tests
//! themselves and torn down when the lab is dropped, also when a test fails.
//!
//! Needs root, `ip` (iproute2) and `iptables`; scripts/prereqs.sh installs them, and a
//! missing piece fails the test loudly. Traffic never leaves the namespaces a lab makes:
//! every address below exists only inside them, so concurrent labs reuse them freely.
//!
//! ```text
//!            public (10.77.1.1, 10.77.2.1): mosquitto :1883, coturn :3478
//!             /pa                        \pb
//!     wan 10.77.1.2                  wan 10.77.2.2
//!   router1 (NAT)                  router2 (NAT, cone or symmetric)
//!     lan 192.168.1.1                lan 192.168.2.1
//!        |                              |
//!   home1 192.168.1.2              home2 192.168.2.2
//! ```
#![allow(dead_code)]

use super::Running;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The public address where the lab's services listen.
pub const PUBLIC_IP: &str = "10.77.1.1";
/// The lab's broker, as an agent in a home reaches it.
pub const BROKER: &str = "mqtt://10.77.1.1:1883";
/// The lab TURN server's shared secret (coturn `static-auth-secret`).
pub const TURN_SECRET: &str = "lab-turn-secret";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How a home router translates addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Port-preserving MASQUERADE with stateful filtering: a home NAT. STUN's
    /// server-reflexive candidates get through it by hole punching.
    Cone,
    /// MASQUERADE --random-fully: a new port for every destination, as carrier-grade
    /// and some corporate NATs do. Only a TURN relay gets through.
    Symmetric,
}

/// A set of namespaces and the processes running in them.
pub struct Lab {
    tag: String,
    namespaces: Vec<String>,
    processes: Vec<Running>,
    pub dir: tempfile::TempDir,
}

fn run_checked(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/prereqs.sh installs iproute2 and iptables)")
    });
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes a namespace, killing what still runs in it first.
fn delete_namespace(name: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

impl Lab {
    /// An empty lab. Panics with what to install when root, `ip` or `iptables` is
    /// missing: a lab test never passes by skipping.
    pub fn new() -> Lab {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the network lab needs root (network namespaces, iptables)"
        );
        for tool in ["ip", "iptables"] {
            let ok = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            assert!(ok, "{tool} is missing: run scripts/prereqs.sh");
        }
        // Namespaces of labs whose test process died without dropping them.
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name
                    .strip_prefix("ddclab-")
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                    && !pid_alive(pid)
                {
                    delete_namespace(&name);
                }
            }
        }
        let tag = format!(
            "ddclab-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Lab {
            tag,
            namespaces: Vec::new(),
            processes: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A new namespace with `lo` up; returns its name.
    pub fn namespace(&mut self, short: &str) -> String {
        let name = format!("{}-{short}", self.tag);
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        self.namespaces.push(name.clone());
        self.sh(&name, "ip link set lo up");
        name
    }

    /// Runs a shell command inside `ns`; panics with its output if it fails.
    pub fn sh(&self, ns: &str, script: &str) -> String {
        let o = run_checked(Command::new("ip").args(["netns", "exec", ns, "sh", "-ec", script]));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A veth pair between two namespaces, with an address (CIDR) on each end.
    pub fn link(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        run_checked(Command::new("ip").args([
            "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]));
        self.sh(
            a,
            &format!("ip addr add {a_addr} dev {a_if}; ip link set {a_if} up"),
        );
        self.sh(
            b,
            &format!("ip addr add {b_addr} dev {b_if}; ip link set {b_if} up"),
        );
    }

    /// Drops `percent` % of the UDP datagrams arriving in `ns`, at random. Dropping on
    /// INPUT is what a lossy link does (on OUTPUT the sender would get EPERM).
    pub fn udp_loss(&self, ns: &str, percent: f64) {
        self.sh(
            ns,
            &format!(
                "iptables -A INPUT -p udp -m statistic --mode random --probability {} -j DROP",
                percent / 100.0
            ),
        );
    }

    /// `cmd` run inside `ns` (its program, arguments and environment carried over).
    pub fn command(&self, ns: &str, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }

    /// Starts `cmd` inside `ns`; it is killed when the lab is dropped.
    pub fn spawn(&mut self, ns: &str, cmd: &Command) -> &mut Running {
        let mut c = self.command(ns, cmd);
        self.processes.push(Running::spawn(&mut c));
        self.processes.last_mut().unwrap()
    }

    /// Starts mosquitto inside `ns` listening on `addr`:1883 and waits until it runs.
    pub fn mosquitto(&mut self, ns: &str, addr: &str) {
        let conf = self.dir.path().join(format!("mosquitto-{ns}.conf"));
        std::fs::write(
            &conf,
            format!(
                "user root\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type information\nlistener 1883 {addr}\n"
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed: run scripts/prereqs.sh");
        let mut c = Command::new(bin);
        c.arg("-c").arg(&conf);
        self.spawn(ns, &c)
            .wait_for(" running", Duration::from_secs(10));
    }

    /// Starts coturn inside `ns` on `addr`:3478 with REST (shared-secret) credentials,
    /// relaying for the lab's addresses only. The config is the one docs/protocol.md shows.
    pub fn coturn(&mut self, ns: &str, addr: &str) -> usize {
        let conf = self.dir.path().join(format!("turnserver-{ns}.conf"));
        let state = self.dir.path().display().to_string();
        std::fs::write(
            &conf,
            format!(
                "{}pidfile={state}/turnserver-{ns}.pid\nuserdb={state}/turndb-{ns}\n",
                coturn_config(addr)
            ),
        )
        .unwrap();
        let bin = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("coturn is not installed: run scripts/prereqs.sh");
        let mut c = Command::new(bin);
        c.arg("-c").arg(&conf);
        let i = self.processes.len();
        // coturn logs to stdout; Running reads stderr.
        let mut wrapped = self.command(ns, &c);
        wrapped.stdout(Stdio::null());
        let mut sh = Command::new("sh");
        sh.args(["-c", "exec \"$@\" 1>&2", "coturn"])
            .arg(wrapped.get_program())
            .args(wrapped.get_args());
        self.processes.push(Running::spawn(&mut sh));
        self.processes[i].wait_for("UDP listener opened", Duration::from_secs(10));
        i
    }

    /// How many processes the lab has started (the next one's index).
    pub fn process_count(&self) -> usize {
        self.processes.len()
    }

    /// A process started with [`Lab::spawn`] or [`Lab::coturn`], by index.
    pub fn process(&mut self, i: usize) -> &mut Running {
        &mut self.processes[i]
    }

    /// The two-homes topology of the module doc: a public namespace with mosquitto and
    /// coturn (STUN and TURN), and two homes behind their own NATs.
    pub fn two_homes(nat1: Nat, nat2: Nat) -> Homes {
        let mut lab = Lab::new();
        let public = lab.namespace("pub");
        let mut homes = Vec::new();
        for (i, nat) in [(1, nat1), (2, nat2)] {
            let router = lab.namespace(&format!("r{i}"));
            let home = lab.namespace(&format!("h{i}"));
            lab.link(
                &public,
                &format!("p{i}"),
                &format!("10.77.{i}.1/24"),
                &router,
                "wan",
                &format!("10.77.{i}.2/24"),
            );
            lab.link(
                &router,
                "lan",
                &format!("192.168.{i}.1/24"),
                &home,
                "eth0",
                &format!("192.168.{i}.2/24"),
            );
            // Unsolicited packets to the router itself are dropped, as a home router does.
            // Accepted, each would leave a conntrack entry that makes the NAT pick another
            // port for the home's next packet to that peer: hole punching would fail for a
            // reason no real router has.
            let random = if nat == Nat::Symmetric {
                " --random-fully"
            } else {
                ""
            };
            lab.sh(
                &router,
                &format!(
                    "ip route add default via 10.77.{i}.1
                     sysctl -qw net.ipv4.ip_forward=1
                     iptables -t nat -A POSTROUTING -o wan -j MASQUERADE{random}
                     iptables -P FORWARD DROP
                     iptables -A FORWARD -i lan -o wan -j ACCEPT
                     iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
                     iptables -P INPUT DROP
                     iptables -A INPUT -i lan -j ACCEPT
                     iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
                ),
            );
            lab.sh(&home, &format!("ip route add default via 192.168.{i}.1"));
            homes.push(home);
        }
        lab.sh(&public, "sysctl -qw net.ipv4.ip_forward=1");
        // Like any host on the Internet, the public side drops what it cannot route
        // (a peer's private address) instead of failing the send.
        lab.sh(&public, "ip route add blackhole default");
        lab.mosquitto(&public, "0.0.0.0");
        let coturn = lab.coturn(&public, PUBLIC_IP);
        let home2 = homes.pop().unwrap();
        let home1 = homes.pop().unwrap();
        Homes {
            lab,
            public,
            home1,
            home2,
            coturn,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.processes.clear();
        for ns in self.namespaces.drain(..).rev() {
            delete_namespace(&ns);
        }
    }
}

/// The coturn configuration the lab runs (docs/protocol.md shows the same).
pub fn coturn_config(addr: &str) -> String {
    format!(
        "listening-port=3478
listening-ip={addr}
relay-ip={addr}
min-port=49152
max-port=49352
use-auth-secret
static-auth-secret={TURN_SECRET}
realm=lab.ddc-edge.invalid
fingerprint
no-tls
no-dtls
no-cli
no-multicast-peers
denied-peer-ip=10.0.0.0-10.255.255.255
denied-peer-ip=172.16.0.0-172.31.255.255
denied-peer-ip=192.168.0.0-192.168.255.255
allowed-peer-ip=10.77.0.0-10.77.255.255
log-file=stdout
simple-log
verbose
"
    )
}

/// The two-homes lab.
pub struct Homes {
    pub lab: Lab,
    pub public: String,
    pub home1: String,
    pub home2: String,
    /// Index of the coturn process in the lab (its log shows allocations).
    pub coturn: usize,
}

/// `--set`s for an agent or client inside the lab: the lab's broker, every interface
/// (not only loopback), and optionally STUN or TURN through the public namespace.
pub fn lab_sets(ice: Ice) -> Vec<String> {
    let mut v = vec!["webrtc.bind=[\"0.0.0.0:0\"]".to_string()];
    match ice {
        Ice::None => {}
        Ice::Stun => v.push(format!(
            "webrtc.ice_servers=[{{ urls = [\"stun:{PUBLIC_IP}:3478\"] }}]"
        )),
        Ice::Turn => v.push(format!(
            "webrtc.ice_servers=[{{ urls = [\"turn:{PUBLIC_IP}:3478?transport=udp\"], secret = \"{TURN_SECRET}\" }}]"
        )),
    }
    v
}

/// Which ICE servers a lab peer uses.
#[derive(Clone, Copy, Debug)]
pub enum Ice {
    None,
    Stun,
    Turn,
}
