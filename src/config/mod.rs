//! The agent's configuration: one TOML file, typed, with unknown keys rejected.
//!
//! Every field has a default, and the defaults together are the *built-in development
//! default*: a config that runs on any Linux machine with no broker or hardware installed.
//! Board profiles (`boards/*.toml`) and operator files only say what differs.
//!
//! Loading (lookup order, `--set` overrides, error messages that name the file and key)
//! lives in [`load`]; the semantic checks that serde cannot express live in [`validate`].

mod load;
mod validate;

pub use load::{
    CONFIG_ENV, ConfigError, ConfigSource, LoadedConfig, Overrides, SYSTEM_CONFIG, load,
    parse as parse_text,
};

use crate::throttle::Level;
use crate::units::{ByteSize, HumanDuration, Rate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub board: BoardSection,
    pub node: NodeSection,
    pub storage: StorageSection,
    pub bandwidth: BandwidthSection,
    pub sensors: SensorsSection,
    pub throttle: ThrottleSection,
    pub mqtt: MqttSection,
    pub telemetry: TelemetrySection,
    pub control: ControlSection,
    pub webrtc: WebrtcSection,
    pub security: SecuritySection,
    pub replication: ReplicationSection,
    pub fleet: FleetSection,
    pub web: WebSection,
    pub metrics: MetricsSection,
}

/// The Prometheus endpoint (docs/metrics.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Where to serve `GET /metrics`, e.g. `"127.0.0.1:9464"`; empty (the default) serves
    /// nothing. The figures are the health message's: no secrets, but a fleet's layout,
    /// so bind it where only the scraper reaches.
    pub listen: String,
}

impl MetricsSection {
    /// The address to serve on, if any (validate has checked it parses).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

/// Who may be a member of the fleet (docs/deploy.md, "Fleet membership").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSection {
    /// The fleet's public key (64 hex, from `ddc-edge fleet init`). Set, only nodes with a
    /// certificate it signed are members; empty, the fleet is open to any key.
    pub ca: String,
    /// This node's certificate (`ddc-edge fleet enroll <this node's public key>`).
    pub cert: String,
}

/// Which board profile a config was written from. Informational for the agent; the
/// packaging and `boards` commands use the target triple.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoardSection {
    /// Profile name, e.g. `rpi4`; `dev` for the built-in default.
    pub name: String,
    pub description: String,
    /// Rust target triple the agent is built for on this board.
    pub target: String,
}

impl Default for BoardSection {
    fn default() -> Self {
        BoardSection {
            name: "dev".into(),
            description: "built-in development default (any Linux machine)".into(),
            target: "x86_64-unknown-linux-gnu".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Human label shown in dashboards; empty means the host name.
    pub name: String,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    /// `RUST_LOG` overrides it.
    pub log: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: String::new(),
            log: "info".into(),
        }
    }
}

/// The offered disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Where chunks, the node key and persistent state live.
    pub data_dir: PathBuf,
    /// The offered size: the store never holds more than this.
    pub quota: ByteSize,
    /// Free space always left on the filesystem, whatever the quota says. `auto` is the
    /// larger of 5 % of the filesystem and 1 GiB.
    pub reserve: Reserve,
    /// Largest chunk, and the size files are split into (hard cap 4 MiB).
    pub chunk_size: ByteSize,
    /// fsync data, journal and directories before a write is acknowledged. Off trades
    /// durability on power loss for speed; a process crash loses nothing either way.
    pub fsync: bool,
    /// I/O budget of a scrub (0 = unlimited).
    pub scrub_rate: Rate,
    /// How often every chunk is read back and verified in the background ("0s": only
    /// on the `scrub` command). A bad copy is otherwise found only when read: anti-entropy
    /// compares chunk IDs, not bytes. Checked at GC rounds (`gc_interval`).
    pub scrub_interval: HumanDuration,
    /// How often GC looks for abandoned uploads (the only chunks it may delete).
    pub gc_interval: HumanDuration,
    /// How long a client's upload may go without a manifest claiming its chunks before
    /// they count as abandoned.
    pub upload_grace: HumanDuration,
    /// No longer used (GC only deletes abandoned uploads); accepted so that old
    /// configs still load, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_high_percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_low_percent: Option<u8>,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            data_dir: PathBuf::from("./ddc-data"),
            quota: ByteSize(1 << 30),
            reserve: Reserve::Auto,
            chunk_size: ByteSize(1 << 20),
            fsync: true,
            scrub_rate: Rate(8 << 20),
            scrub_interval: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            gc_interval: HumanDuration(Duration::from_secs(600)),
            upload_grace: HumanDuration(Duration::from_secs(24 * 3600)),
            gc_high_percent: None,
            gc_low_percent: None,
        }
    }
}

/// `storage.reserve`: `"auto"` or a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reserve {
    #[default]
    Auto,
    Size(ByteSize),
}

impl Serialize for Reserve {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reserve::Auto => s.serialize_str("auto"),
            Reserve::Size(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Reserve {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = toml::Value::deserialize(d)?;
        if v.as_str() == Some("auto") {
            return Ok(Reserve::Auto);
        }
        let shown = v.to_string();
        ByteSize::deserialize(v).map(Reserve::Size).map_err(|_| {
            serde::de::Error::custom(format!(
                "expected \"auto\" or a size like \"2GiB\", got {shown}"
            ))
        })
    }
}

/// The offered bandwidth. `0` means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BandwidthSection {
    /// Cap on everything the node sends to peers and clients.
    pub egress: Rate,
    /// Cap on everything the node receives.
    pub ingress: Rate,
    /// Budget for background replication at the `full` level; the throttle policy scales it.
    pub replication: Rate,
}

impl Default for BandwidthSection {
    fn default() -> Self {
        BandwidthSection {
            egress: Rate(0),
            ingress: Rate(0),
            replication: Rate(8 << 20),
        }
    }
}

/// Where the sensor readings come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorsSection {
    /// Every sysfs path is resolved under this root, so a fake tree can stand in for a board.
    pub sysfs_root: PathBuf,
    /// How often a reading is taken.
    pub interval: HumanDuration,
    /// CPU temperature source.
    pub cpu_temp: CpuTempSource,
    /// The thermal zone to read when `cpu_temp = "thermal"`; empty picks the zone whose
    /// type is `cpu-thermal`, else the hottest.
    pub thermal_zone: String,
    /// Battery sources to probe, in order; the first that answers is used.
    pub battery: Vec<BatterySource>,
    /// I2C bus number for fuel gauges (`/dev/i2c-N`).
    pub i2c_bus: u8,
    /// INA219 address; Waveshare UPS HATs use 0x42 (HAT C: 0x43).
    pub ina219_address: u8,
    /// Cells in series on an INA219-monitored pack (1 or 2), for voltage-to-percent.
    pub ina219_cells: u8,
}

impl Default for SensorsSection {
    fn default() -> Self {
        SensorsSection {
            sysfs_root: PathBuf::from("/"),
            interval: HumanDuration(Duration::from_secs(5)),
            cpu_temp: CpuTempSource::Auto,
            thermal_zone: String::new(),
            battery: vec![BatterySource::Auto],
            i2c_bus: 1,
            ina219_address: 0x42,
            ina219_cells: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuTempSource {
    /// Thermal zones, then hwmon, then sysinfo components.
    Auto,
    Thermal,
    Hwmon,
    Sysinfo,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatterySource {
    /// power_supply class first, then the I2C gauges in a safe probing order.
    Auto,
    PowerSupply,
    Max17048,
    Ina219,
    Pisugar3,
    /// Mains only: never report a battery.
    None,
}

/// Thresholds for the throttle policy. Defaults are the Raspberry Pi firmware's own
/// limits minus a margin: the ARM is throttled from 80 C.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleSection {
    pub reduce_temp_c: f64,
    pub pause_temp_c: f64,
    /// A level entered by temperature is left only this many degrees below its threshold.
    pub temp_hysteresis_c: f64,
    /// On battery (discharging), below this charge replication is reduced.
    pub battery_reduce_percent: f64,
    pub battery_pause_percent: f64,
    pub battery_hysteresis_percent: f64,
    /// Minimum time at a level before stepping up to a less restrictive one.
    pub dwell: HumanDuration,
    /// Share of the replication budget used at the `reduced` level.
    pub reduced_factor: f64,
    /// Readings whose median is used for the temperature (1-8); one spike cannot flap the
    /// level, at the cost of reacting a reading later.
    pub smoothing_samples: u8,
    /// Level to assume while the CPU temperature cannot be read. The firmware still
    /// protects the chip, so the default keeps working.
    pub unknown_temp: Level,
    /// Level to assume while a battery that was found cannot be read.
    pub unknown_battery: Level,
}

impl Default for ThrottleSection {
    fn default() -> Self {
        ThrottleSection {
            reduce_temp_c: 75.0,
            pause_temp_c: 80.0,
            temp_hysteresis_c: 5.0,
            battery_reduce_percent: 40.0,
            battery_pause_percent: 20.0,
            battery_hysteresis_percent: 5.0,
            dwell: HumanDuration(Duration::from_secs(30)),
            reduced_factor: 0.25,
            smoothing_samples: 3,
            unknown_temp: Level::Full,
            unknown_battery: Level::Full,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSection {
    /// `embedded` runs a broker inside the agent (loopback only); otherwise
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub broker: Broker,
    /// First level of every topic the agent uses.
    pub topic_prefix: String,
    /// Empty: `ddc-edge-<node_id>`.
    pub client_id: String,
    pub username: String,
    /// Inline password; prefer `password_file` (read at start, trailing newline dropped).
    pub password: String,
    pub password_file: PathBuf,
    /// PEM CA bundle for `mqtts://`; empty uses the system roots (/etc/ssl/certs).
    pub ca_file: PathBuf,
    /// PEM client certificate and key for brokers that require them.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// MQTT keep-alive: how fast a dead link is noticed (and the last will fires).
    pub keep_alive: HumanDuration,
    /// Longest wait between reconnection attempts (jittered exponential backoff).
    pub reconnect_max: HumanDuration,
    /// Where the embedded broker listens when `broker = "embedded"`. Loopback by default:
    /// a board should not expose an unauthenticated broker to its network.
    pub embedded_listen: std::net::SocketAddr,
    /// The embedded broker's MQTT-over-WebSocket listener, for the web page.
    pub embedded_ws_listen: std::net::SocketAddr,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            broker: Broker::Embedded,
            topic_prefix: "ddc".into(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            keep_alive: HumanDuration(Duration::from_secs(30)),
            reconnect_max: HumanDuration(Duration::from_secs(30)),
            embedded_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 1883)),
            embedded_ws_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9001)),
        }
    }
}

/// What the node reports and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySection {
    /// Health is published this often, and at once when the throttle level changes.
    pub interval: HumanDuration,
    /// Publish Home Assistant device discovery.
    pub homeassistant: bool,
    pub discovery_prefix: String,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            interval: HumanDuration(Duration::from_secs(30)),
            homeassistant: true,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// Fleet control over MQTT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSection {
    /// Verbs this node obeys; a fleet can switch off dangerous ones.
    pub allowed_verbs: Vec<String>,
    /// Commands carrying a `ts` older than this are ignored.
    pub max_age: HumanDuration,
    /// Larger command payloads are refused.
    pub max_payload: ByteSize,
    /// Public keys (64 hex) of the operators whose signed commands this node obeys
    /// (`ddc-edge ctl --public-key` prints one).
    pub operators: Vec<String>,
    /// Obey unsigned commands from anyone who may publish on the command topic. For
    /// development only; the agent says so at start.
    pub unsigned_commands: bool,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            allowed_verbs: crate::control::VERBS
                .iter()
                .map(|v| v.to_string())
                .collect(),
            max_age: HumanDuration(Duration::from_secs(60)),
            max_payload: ByteSize(8 << 10),
            operators: Vec::new(),
            unsigned_commands: true,
        }
    }
}

/// `mqtt.broker`: the embedded broker or a URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Broker {
    #[default]
    Embedded,
    Url(BrokerUrl),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broker::Embedded => f.write_str("embedded"),
            Broker::Url(u) => {
                let scheme = if u.tls { "mqtts" } else { "mqtt" };
                if u.host.contains(':') {
                    write!(f, "{scheme}://[{}]:{}", u.host, u.port)
                } else {
                    write!(f, "{scheme}://{}:{}", u.host, u.port)
                }
            }
        }
    }
}

impl std::str::FromStr for Broker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            || format!("expected \"embedded\" or a URL like \"mqtt://host:1883\", got {s:?}");
        if s == "embedded" {
            return Ok(Broker::Embedded);
        }
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(expected());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') {
            // Credentials belong in mqtt.username/password, not in a URL that ends up in logs.
            return Err(expected());
        }
        let (host, port) = if let Some(h) = rest.strip_prefix('[') {
            let (h, after) = h.split_once(']').ok_or_else(expected)?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
            return Err(expected());
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(format!("port must be 1-65535, got {p:?} in {s:?}")),
            },
        };
        Ok(Broker::Url(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        }))
    }
}

impl Serialize for Broker {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Broker {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = [
            ("mqtt://localhost", "mqtt://localhost:1883"),
            ("mqtts://broker.example:8884", "mqtts://broker.example:8884"),
            ("mqtts://b", "mqtts://b:8883"),
            ("mqtt://[::1]:1884", "mqtt://[::1]:1884"),
            ("embedded", "embedded"),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<Broker>().unwrap().to_string(), want);
        }
        for bad in [
            "localhost:1883",
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://u:p@h",
        ] {
            assert!(bad.parse::<Broker>().is_err(), "{bad}");
        }
    }
}

/// The data plane: WebRTC peer connections and their bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebrtcSection {
    /// STUN/TURN servers, e.g. `{ urls = ["stun:stun.example:3478"] }` or
    /// `{ urls = ["turn:turn.example:3478"], username = "u", credential = "p" }`.
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to bind (host candidates); `0.0.0.0:0` is every interface.
    pub bind: Vec<String>,
    /// Peer connections served at once; more are refused.
    pub max_peers: u16,
    /// Requests in flight per channel.
    pub max_inflight: u16,
    /// Largest data-channel message we send (capped by what the peer negotiated).
    pub max_message: ByteSize,
    /// Per-channel send buffer: bytes handed to WebRTC but not yet acknowledged.
    pub send_buffer: ByteSize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: HumanDuration,
    /// Signaling plus ICE plus DTLS must finish within this.
    pub connect_timeout: HumanDuration,
    /// How long one request may take, from sending it to its last byte (a GET of a
    /// chunk included): a node that stalls or trickles is given up on after this.
    pub request_timeout: HumanDuration,
    /// Receive and send buffer asked for on each WebRTC UDP socket (capped by the
    /// kernel's net.core.rmem_max / wmem_max).
    pub udp_buffer: ByteSize,
    /// SCTP retransmission timeout before a round trip has been measured (it also paces
    /// the association's INIT and COOKIE-ECHO). RFC 9260 says 1 s for the open
    /// Internet; Chromium's data channels start at 500 ms.
    pub sctp_rto_initial: HumanDuration,
    /// Floor of the SCTP retransmission timeout. Every loss fast retransmit cannot repair
    /// (the last packets of a chunk, a lost acknowledgement) costs at least this much;
    /// RFC 9260's 1 s made one lost packet in a hundred stall transfers for seconds.
    /// libdatachannel uses 200 ms.
    pub sctp_rto_min: HumanDuration,
    /// Ceiling of the SCTP retransmission timeout and of its backoff.
    pub sctp_rto_max: HumanDuration,
    /// How long the DTLS handshake waits for the peer's next flight before resending
    /// its own (fixed, at most 7 resends). One lost handshake datagram costs this much.
    pub dtls_retransmit: HumanDuration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
    /// coturn's `static-auth-secret` (the TURN REST API): instead of a fixed
    /// username/credential, the node computes a time-limited pair from this secret on
    /// every connection (docs/protocol.md, "TURN").
    pub secret: String,
    /// How long credentials computed from `secret` stay valid (default 1 day).
    pub credential_ttl: Option<HumanDuration>,
}

impl Default for WebrtcSection {
    fn default() -> Self {
        WebrtcSection {
            ice_servers: Vec::new(),
            bind: vec!["0.0.0.0:0".into()],
            max_peers: 16,
            max_inflight: 8,
            max_message: ByteSize(64 << 10),
            send_buffer: ByteSize(2 << 20),
            idle_timeout: HumanDuration(Duration::from_secs(120)),
            connect_timeout: HumanDuration(Duration::from_secs(20)),
            request_timeout: HumanDuration(Duration::from_secs(60)),
            udp_buffer: ByteSize(4 << 20),
            sctp_rto_initial: HumanDuration(Duration::from_millis(500)),
            sctp_rto_min: HumanDuration(Duration::from_millis(200)),
            sctp_rto_max: HumanDuration(Duration::from_secs(10)),
            dtls_retransmit: HumanDuration(Duration::from_millis(400)),
        }
    }
}

/// Who may read and write the node's store over the data plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// Anyone who can signal to the node may write (private networks and development).
    pub open_writes: bool,
    /// Ed25519 public keys (64 hex characters, as `ddc-edge id --json` prints) allowed
    /// to write and delete.
    pub allowed_writers: Vec<String>,
    /// Anyone may read.
    pub open_reads: bool,
    pub allowed_readers: Vec<String>,
}

impl Default for SecuritySection {
    fn default() -> Self {
        // The built-in development default is open so a first try and the demo work;
        // the agent says so at start. Board profiles and the package are closed.
        SecuritySection {
            open_writes: true,
            allowed_writers: Vec::new(),
            open_reads: true,
            allowed_readers: Vec::new(),
        }
    }
}

/// Keeping copies of every chunk on other nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    /// Copies of every chunk across the fleet (1 turns replication off).
    pub factor: u8,
    /// Most copies a client may ask for per file (`ddc-edge put --replicas`).
    pub max_factor: u8,
    /// How often each pair of nodes sharing chunks compares inventory digests (lost
    /// notices, a crash before a fetch, a disk that lost chunks are found within one
    /// period). `sweep_interval`, its 0.1 name, is still read.
    #[serde(alias = "sweep_interval")]
    pub anti_entropy_interval: HumanDuration,
    /// Most chunks waiting to be fetched; anti-entropy finds what did not fit.
    pub queue_max: u32,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            factor: 2,
            max_factor: 4,
            anti_entropy_interval: HumanDuration(Duration::from_secs(900)),
            queue_max: 10_000,
        }
    }
}

/// The web page served by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSection {
    /// Serve the page (on in the built-in default, off in board profiles).
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// MQTT-over-WebSocket URL the page uses; empty: the embedded broker's, or
    /// ws://<broker host>:9001/mqtt.
    pub mqtt_ws_url: String,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt_ws_url: String::new(),
        }
    }
}
