//! Fleet control: the agent's runtime state that operators change over MQTT (limits,
//! operator pause, draining, forced levels) and the execution of commands against it.
//! Screening of raw payloads is pure and lives in [`command`]; persisted settings in
//! [`settings`].

pub mod auth;
pub mod command;
pub mod settings;

pub use command::VERBS;
use command::{Command, ErrorReply, Reply, Verb};
use settings::RuntimeSettings;

use crate::config::Config;
use crate::identity::Identity;
use crate::mqtt::event::Event;
use crate::mqtt::health::{self, HealthInputs};
use crate::sensors::monitor::{self, Monitor};
use crate::store::Store;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Bandwidth limits in force, for the data plane (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BandwidthLimits {
    pub egress_bps: u64,
    pub ingress_bps: u64,
}

/// The fields of a membership record that placement depends on.
type MemberKey = (bool, bool, Option<u64>, Option<String>);

pub struct Controller {
    cfg: Arc<Config>,
    data_dir: PathBuf,
    pub identity: Arc<Identity>,
    pub monitor: Monitor,
    pub store: Arc<Store>,
    settings: Mutex<RuntimeSettings>,
    started: Instant,
    /// None where sysinfo cannot read the system (the figures are then reported as 0).
    sys: Mutex<Option<sysinfo::System>>,
    scrub_running: AtomicBool,
    events: mpsc::Sender<Event>,
    limits: watch::Sender<BandwidthLimits>,
    /// True when replication should run at all (no operator pause).
    pub replication_enabled: watch::Sender<bool>,
    /// True while the node accepts no new data.
    pub draining: watch::Sender<bool>,
    /// The replicator's and the data plane's figures for health, once they exist.
    replication_figures: Figures<health::ReplicationStats>,
    dataplane_figures: Figures<health::Dataplane>,
    /// The last few health payloads we published (hashes): anything else that shows up
    /// on our own health topic was put there by someone else.
    recent_health: Mutex<std::collections::VecDeque<[u8; 32]>>,
    /// The last hour of health, for the page's charts.
    history: Mutex<crate::history::History>,
    /// What the last membership record said (draining, room, placement, paused by), and
    /// the hash of its bytes.
    last_member: Mutex<(Option<MemberKey>, Option<[u8; 32]>)>,
    /// Set when the agent stops, so its own `offline` is not "corrected".
    pub stopping: AtomicBool,
}

/// A subsystem's figures for the health message, read at each one.
type Figures<T> = Mutex<Option<Box<dyn Fn() -> T + Send + Sync>>>;

/// The figures now, if the subsystem has said where they come from.
fn read_figures<T>(f: &Figures<T>) -> Option<T> {
    f.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|f| f())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Controller {
    pub fn new(
        cfg: Arc<Config>,
        identity: Arc<Identity>,
        monitor: Monitor,
        store: Arc<Store>,
        events: mpsc::Sender<Event>,
    ) -> Result<Arc<Controller>, settings::SettingsError> {
        let data_dir = cfg.storage.data_dir.clone();
        let s = RuntimeSettings::load(&data_dir)?;
        if let Some(q) = s.quota_bytes {
            info!(
                quota_bytes = q,
                config = cfg.storage.quota.0,
                "quota set over MQTT (settings.json) overrides the config"
            );
            store.set_quota(q);
        }
        for (name, v) in [("egress_bps", s.egress_bps), ("ingress_bps", s.ingress_bps)] {
            if let Some(v) = v {
                info!(
                    limit = name,
                    value = v,
                    "bandwidth limit set over MQTT (settings.json) overrides the config"
                );
            }
        }
        if s.replication_paused {
            warn!(
                "replication is paused by an operator (settings.json); resume_replication lifts it"
            );
        }
        if s.draining {
            warn!("node is draining (settings.json): no new data is accepted; undrain lifts it");
        }
        let limits = watch::Sender::new(Self::limits_of(&cfg, &s));
        let replication_enabled = watch::Sender::new(!s.replication_paused);
        let draining = watch::Sender::new(s.draining);
        let sys = sysinfo::System::new().ok().map(|mut s| {
            s.refresh_cpu_usage();
            s
        });
        Ok(Arc::new(Controller {
            data_dir,
            identity,
            monitor,
            store,
            settings: Mutex::new(s),
            started: Instant::now(),
            sys: Mutex::new(sys),
            scrub_running: AtomicBool::new(false),
            events,
            limits,
            replication_enabled,
            draining,
            replication_figures: Mutex::new(None),
            dataplane_figures: Mutex::new(None),
            recent_health: Mutex::new(std::collections::VecDeque::new()),
            history: Mutex::new(crate::history::History::new()),
            last_member: Mutex::new((None, None)),
            stopping: AtomicBool::new(false),
            cfg,
        }))
    }

    /// Records `health` (just published) in the history; returns the history message
    /// when one is due (crate::history::PUBLISH_EVERY).
    pub fn record_history(&self, health: &health::Health) -> Option<Vec<u8>> {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.record(unix_now(), health).then(|| self.history_bytes(&h))
    }

    /// The history message as it stands, unless it is empty (republished on every
    /// connection: a broker without persistence forgets retained messages).
    pub fn history_payload(&self) -> Option<Vec<u8>> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        (!h.is_empty()).then(|| self.history_bytes(&h))
    }

    fn history_bytes(&self, h: &crate::history::History) -> Vec<u8> {
        let m = h.message(
            self.identity.node_id(),
            self.cfg.telemetry.interval.0.as_secs(),
        );
        serde_json::to_vec(&m).expect("history serializes")
    }

    /// The health payload to publish now (and the health it was made from), remembered
    /// so that our own echo is told apart from a forged message on our topic.
    pub fn health_payload(&self) -> (health::Health, Vec<u8>) {
        let health = self.health();
        let mut signed = health.to_value();
        let cert = Some(self.cfg.fleet.cert.as_str()).filter(|c| !c.is_empty());
        crate::fleet::sign_health(&self.identity, cert, &mut signed);
        let bytes = serde_json::to_vec(&signed).expect("health serializes");
        let mut recent = self.recent_health.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == 8 {
            recent.pop_front();
        }
        recent.push_back(crate::store::ChunkId::of(&bytes).0);
        (health, bytes)
    }

    /// The membership record (`<prefix>/nodes/<id>/member`): the part of health `h` that
    /// placement reads, signed the same way. `None` when nothing placement depends on
    /// changed since the last one (or since [`Self::forget_member`]): free space changes
    /// with every write, but only crossing "room for one more chunk" matters, so an idle
    /// or busy fleet publishes these only when a node fills up, drains, pauses or upgrades.
    pub fn member_payload(&self, h: &health::Health) -> Option<Vec<u8>> {
        let free = h.disk.free_bytes;
        let room = free.is_none_or(|f| f >= self.cfg.storage.chunk_size.0);
        let key = (
            h.draining,
            room,
            Some(h.replication.placement),
            h.replication.paused_by.clone(),
        );
        let mut last = self.last_member.lock().unwrap_or_else(|p| p.into_inner());
        if last.0.as_ref() == Some(&key) {
            return None;
        }
        let mut record = serde_json::json!({
            "node_id": h.node_id, "ts": h.ts, "draining": key.0,
            "disk": {"free_bytes": free},
            "replication": {"placement": key.2, "paused_by": key.3},
        });
        let cert = Some(self.cfg.fleet.cert.as_str()).filter(|c| !c.is_empty());
        crate::fleet::sign_health(&self.identity, cert, &mut record);
        let bytes = serde_json::to_vec(&record).expect("a member record serializes");
        *last = (Some(key), Some(crate::store::ChunkId::of(&bytes).0));
        Some(bytes)
    }

    /// The last membership record did not go out: the next call publishes one.
    pub fn forget_member(&self) {
        self.last_member.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }

    /// Whether `payload`, seen on our own member topic, is the one we published last.
    pub fn published_member(&self, payload: &[u8]) -> bool {
        let h = crate::store::ChunkId::of(payload).0;
        self.last_member
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .is_some_and(|l| l == h)
    }

    /// Whether `payload`, seen on our own health topic, is one we published lately.
    pub fn published_health(&self, payload: &[u8]) -> bool {
        let h = crate::store::ChunkId::of(payload).0;
        self.recent_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&h)
    }

    fn limits_of(cfg: &Config, s: &RuntimeSettings) -> BandwidthLimits {
        BandwidthLimits {
            egress_bps: s.egress_bps.unwrap_or(cfg.bandwidth.egress.0),
            ingress_bps: s.ingress_bps.unwrap_or(cfg.bandwidth.ingress.0),
        }
    }

    pub fn limits(&self) -> watch::Receiver<BandwidthLimits> {
        self.limits.subscribe()
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, RuntimeSettings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_draining(&self) -> bool {
        self.settings().draining
    }

    /// Where health reads the replicator's figures from.
    pub fn set_replication_figures(
        &self,
        f: impl Fn() -> health::ReplicationStats + Send + Sync + 'static,
    ) {
        *self
            .replication_figures
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    /// Where health reads the data plane's figures from.
    pub fn set_dataplane_figures(&self, f: impl Fn() -> health::Dataplane + Send + Sync + 'static) {
        *self
            .dataplane_figures
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    /// The health message (also the `status` reply). Gathers CPU, memory and disk figures.
    pub fn health(&self) -> health::Health {
        let status = self.monitor.status.borrow().clone();
        let (cpu_load, mem_used, mem_total, rss) = {
            let mut guard = self.sys.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(sys) => {
                    sys.refresh_cpu_usage();
                    sys.refresh_memory();
                    let pid = sysinfo::Pid::from_u32(std::process::id());
                    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), false);
                    let rss = sys.process(pid).map(|p| p.memory()).unwrap_or(0);
                    (
                        sys.global_cpu_usage() as f64,
                        sys.used_memory(),
                        sys.total_memory(),
                        rss,
                    )
                }
                None => (0.0, 0, 0, 0),
            }
        };
        let s = self.settings().clone();
        let limits = *self.limits.borrow();
        let host;
        let name = if self.cfg.node.name.is_empty() {
            host = sysinfo::System::host_name().unwrap_or_default();
            host.as_str()
        } else {
            self.cfg.node.name.as_str()
        };
        health::health(&HealthInputs {
            node_id: self.identity.node_id(),
            name,
            board: &self.cfg.board.name,
            public_key_hex: &self.identity.public_key_hex(),
            ts: unix_now(),
            uptime_s: self.started.elapsed().as_secs(),
            sensors: &status,
            cpu_load,
            mem_used_bytes: mem_used,
            mem_total_bytes: mem_total,
            agent_rss_bytes: rss,
            store: self.store.stat().ok(),
            egress_limit_bps: limits.egress_bps,
            ingress_limit_bps: limits.ingress_bps,
            operator_paused: s.replication_paused,
            draining: s.draining,
            replication: read_figures(&self.replication_figures),
            dataplane: read_figures(&self.dataplane_figures),
        })
    }

    fn update_settings(
        &self,
        f: impl FnOnce(&mut RuntimeSettings),
    ) -> Result<RuntimeSettings, ErrorReply> {
        let mut s = self.settings();
        let mut next = s.clone();
        f(&mut next);
        next.save(&self.data_dir)
            .map_err(|e| ErrorReply::new("internal", format!("persisting settings: {e}")))?;
        *s = next.clone();
        Ok(next)
    }

    pub async fn execute(self: &Arc<Self>, cmd: Command) -> Reply {
        info!(id = %cmd.id, verb = ?cmd.verb, "command");
        let result = self.run(cmd.verb).await;
        if let Err(e) = &result {
            warn!(id = %cmd.id, code = e.code, message = %e.message, "command failed");
        }
        Reply { id: cmd.id, result }
    }

    async fn run(self: &Arc<Self>, verb: Verb) -> Result<Value, ErrorReply> {
        Ok(match verb {
            Verb::Ping => {
                json!({"pong": true, "node_id": self.identity.node_id(), "ts": unix_now()})
            }
            Verb::Status => self.health().to_value(),
            Verb::PauseReplication | Verb::ResumeReplication => {
                let paused = matches!(verb, Verb::PauseReplication);
                self.update_settings(|s| s.replication_paused = paused)?;
                self.replication_enabled.send_replace(!paused);
                let _ = self
                    .events
                    .try_send(Event::ReplicationPausedByOperator { paused });
                json!({"replication": {"paused_by": health::paused_by(paused, self.monitor.status.borrow().decision.level)}})
            }
            Verb::SetLimits(l) => {
                let s = self.update_settings(|s| {
                    if l.egress_bps.is_some() {
                        s.egress_bps = l.egress_bps;
                    }
                    if l.ingress_bps.is_some() {
                        s.ingress_bps = l.ingress_bps;
                    }
                    if l.quota_bytes.is_some() {
                        s.quota_bytes = l.quota_bytes;
                    }
                })?;
                if let Some(q) = l.quota_bytes {
                    self.store.set_quota(q);
                }
                let limits = Self::limits_of(&self.cfg, &s);
                self.limits.send_replace(limits);
                json!({
                    "egress_bps": limits.egress_bps,
                    "ingress_bps": limits.ingress_bps,
                    "quota_bytes": s.quota_bytes.unwrap_or(self.cfg.storage.quota.0),
                    "persisted": true,
                })
            }
            Verb::ForceLevel {
                level,
                ttl,
                over_sensors,
            } => {
                self.monitor
                    .commands
                    .send(monitor::Command::Force {
                        level,
                        ttl,
                        over_sensors,
                    })
                    .map_err(|_| ErrorReply::new("internal", "sensor thread is not running"))?;
                json!({"forced": level.as_str(), "ttl_s": ttl.as_secs(), "over_sensors": over_sensors})
            }
            Verb::ClearLevel => {
                self.monitor
                    .commands
                    .send(monitor::Command::ClearForce)
                    .map_err(|_| ErrorReply::new("internal", "sensor thread is not running"))?;
                json!({"cleared": true})
            }
            Verb::Scrub => {
                if self.scrub_running.swap(true, Ordering::SeqCst) {
                    return Err(ErrorReply::new("busy", "a scrub is already running"));
                }
                let me = Arc::clone(self);
                let rate = self.cfg.storage.scrub_rate.0;
                tokio::task::spawn_blocking(move || {
                    let r = me.store.scrub(rate);
                    me.scrub_running.store(false, Ordering::SeqCst);
                    let ev = match r {
                        Ok(r) => Event::ScrubFinished {
                            checked: r.checked,
                            bytes: r.bytes,
                            corrupt: r.corrupt.iter().map(ToString::to_string).collect(),
                        },
                        Err(e) => Event::ScrubFailed {
                            error: e.to_string(),
                        },
                    };
                    let _ = me.events.try_send(ev);
                });
                json!({"started": true, "rate_bps": rate})
            }
            Verb::Drain | Verb::Undrain => {
                let draining = matches!(verb, Verb::Drain);
                self.update_settings(|s| s.draining = draining)?;
                self.draining.send_replace(draining);
                let st = self
                    .store
                    .stat()
                    .map_err(|e| ErrorReply::new("internal", e.to_string()))?;
                let _ = self.events.try_send(Event::Draining { draining });
                json!({"draining": draining, "progress": {"chunks_held": st.chunks, "bytes_held": st.used_bytes}})
            }
        })
    }
}
