//! The sensing loop: reads the sensors every `sensors.interval`, steps the throttle policy
//! and publishes the result for the rest of the agent.
//!
//! It runs on its own small thread rather than a tokio worker: I2C reads block for a
//! millisecond or so, and a thread with `recv_timeout` is both the timer and the command
//! inbox (operator overrides), with nothing to poll. Consumers read the latest
//! [`Status`] from a `watch` channel and are woken on every tick.

use super::{Availability, AvailabilityChange, Readings, Sensors, SourceNames};
use crate::config::Config;
use crate::throttle::{Decision, Level, Policy};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tracing::{info, warn};

/// The latest reading and the policy's decision on it.
#[derive(Clone, Debug)]
pub struct Status {
    pub taken_at: SystemTime,
    pub readings: Readings,
    pub decision: Decision,
    pub sources: Arc<SourceNames>,
    /// Sensors that became unavailable or recovered at this tick.
    pub changes: heapless::Vec<AvailabilityChange, 3>,
}

/// Operator overrides, delivered to the policy between ticks.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    Force {
        level: Level,
        ttl: Duration,
        over_sensors: bool,
    },
    ClearForce,
}

/// Handle to the running loop; dropping every clone of `commands` stops it.
#[derive(Clone)]
pub struct Monitor {
    pub status: watch::Receiver<Status>,
    pub commands: mpsc::Sender<Command>,
}

impl Monitor {
    /// Probes the sensors, takes the first reading synchronously (so the status is never
    /// empty) and starts the loop.
    pub fn spawn(cfg: &Config) -> std::io::Result<Monitor> {
        let mut sensors = Sensors::probe(&cfg.sensors);
        let mut policy = Policy::new(&cfg.throttle);
        let interval = cfg.sensors.interval.0;
        let mut availability = Availability::default();
        let sources = Arc::new(sensors.sources().clone());
        let first = tick(&mut sensors, &mut policy, &mut availability, &sources, None);
        let (tx, rx) = watch::channel(first);
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        std::thread::Builder::new().name("sensors".into()).spawn(move || {
            let mut next = Instant::now() + interval;
            loop {
                match cmd_rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(Command::Force {
                        level,
                        ttl,
                        over_sensors,
                    }) => {
                        info!(%level, ttl_s = ttl.as_secs(), over_sensors, "operator forced a level");
                        policy.force(Instant::now(), level, ttl, over_sensors);
                        next = Instant::now(); // apply at once
                        continue;
                    }
                    Ok(Command::ClearForce) => {
                        info!("operator cleared the forced level");
                        policy.clear_force();
                        next = Instant::now();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                let prev = tx.borrow().decision.level;
                let status = tick(&mut sensors, &mut policy, &mut availability, &sources, Some(prev));
                next += interval;
                if next < Instant::now() {
                    next = Instant::now() + interval; // fell behind (suspend): don't burst
                }
                if tx.send(status).is_err() {
                    return;
                }
            }
        })?;
        Ok(Monitor {
            status: rx,
            commands: cmd_tx,
        })
    }
}

fn tick(
    sensors: &mut Sensors,
    policy: &mut Policy,
    availability: &mut Availability,
    sources: &Arc<SourceNames>,
    prev: Option<Level>,
) -> Status {
    let readings = sensors.read();
    let changes = availability.observe(&readings);
    for change in &changes {
        match change.unavailable {
            Some(why) => {
                warn!(sensor = change.sensor.as_str(), reason = %why, "sensor unavailable")
            }
            None => info!(sensor = change.sensor.as_str(), "sensor available again"),
        }
    }
    let decision = policy.step(Instant::now(), &readings);
    if prev != Some(decision.level) {
        info!(
            level = %decision.level,
            factor = decision.factor,
            reasons = ?decision.reason_strings(),
            "replication level"
        );
    }
    Status {
        taken_at: SystemTime::now(),
        readings,
        decision,
        sources: Arc::clone(sources),
        changes,
    }
}
