//! The throttle policy: from sensor readings to a replication level. Pure: it is told the
//! time and the readings and returns a decision, so every rule is tested deterministically.
//!
//! Rules (defaults from the board profile, see docs/throttle.md):
//! - CPU temperature, median-smoothed over the last few readings so one spike does not flap
//!   the level: `reduced` at `reduce_temp_c`, `paused` at `pause_temp_c`; a temperature
//!   level is left only when the smoothed value is at or below its threshold minus
//!   `temp_hysteresis_c`.
//! - Battery, only while discharging or of unknown status (charging, full or mains lift
//!   it): `reduced` below `battery_reduce_percent`, `paused` below `battery_pause_percent`;
//!   left only at or above the threshold plus `battery_hysteresis_percent`.
//! - Under-voltage now: at least `reduced`.
//! - Unknown readings count as the configured `unknown_temp` / `unknown_battery` level.
//! - The level is the most restrictive of the rules. Stepping down (more restrictive) is
//!   immediate; stepping up waits until a less restrictive level has been called for
//!   continuously for `dwell`, and then goes to the most restrictive level called for in
//!   that time.
//! - An operator override composes with it: a forced level is a floor (the more
//!   restrictive wins) unless the operator explicitly forces it over the sensors, in which
//!   case it wins either way. It lapses at its deadline.
//!
//! No allocation per step: reasons are a fixed-capacity list of small values, rendered to
//! text only when someone looks.

use crate::config::ThrottleSection;
use crate::sensors::{BatteryReading, ChargeStatus, Readings};
use heapless::Deque;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, Instant};

/// How much background work the node does. Ordered from least to most restrictive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Full,
    Reduced,
    Paused,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Reduced => "reduced",
            Level::Paused => "paused",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        match s {
            "full" => Ok(Level::Full),
            "reduced" => Ok(Level::Reduced),
            "paused" => Ok(Level::Paused),
            _ => Err(format!(
                "expected \"full\", \"reduced\" or \"paused\", got {s:?}"
            )),
        }
    }
}

/// Why the policy chose its level. Small `Copy` values; `Display` renders the sentence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// Smoothed CPU temperature at or above a threshold.
    TempHigh {
        temp_c: f64,
        threshold_c: f64,
        level: Level,
    },
    /// Below the threshold but not yet below threshold minus hysteresis.
    TempCooling {
        temp_c: f64,
        resume_at_c: f64,
        level: Level,
    },
    TempUnknown {
        level: Level,
    },
    BatteryLow {
        percent: f64,
        threshold: f64,
        level: Level,
    },
    BatteryRecovering {
        percent: f64,
        resume_at: f64,
        level: Level,
    },
    BatteryUnknown {
        level: Level,
    },
    Undervoltage,
    /// A less restrictive level is called for but the dwell time has not passed.
    Dwell {
        toward: Level,
        remaining: Duration,
    },
    /// The operator forced this level.
    Forced {
        level: Level,
        remaining: Duration,
        over_sensors: bool,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::TempHigh {
                temp_c,
                threshold_c,
                level,
            } => {
                write!(f, "cpu {temp_c:.1} C >= {threshold_c} C: {level}")
            }
            Reason::TempCooling {
                temp_c,
                resume_at_c,
                level,
            } => {
                write!(
                    f,
                    "cpu {temp_c:.1} C cooling: {level} until <= {resume_at_c} C"
                )
            }
            Reason::TempUnknown { level } => write!(
                f,
                "cpu temperature unknown: {level} (throttle.unknown_temp)"
            ),
            Reason::BatteryLow {
                percent,
                threshold,
                level,
            } => {
                write!(
                    f,
                    "on battery at {} % < {threshold} %: {level}",
                    tenths(percent)
                )
            }
            Reason::BatteryRecovering {
                percent,
                resume_at,
                level,
            } => {
                write!(
                    f,
                    "on battery at {} %: {level} until >= {resume_at} %",
                    tenths(percent)
                )
            }
            Reason::BatteryUnknown { level } => {
                write!(f, "battery unreadable: {level} (throttle.unknown_battery)")
            }
            Reason::Undervoltage => f.write_str("under-voltage: at least reduced"),
            Reason::Dwell { toward, remaining } => {
                write!(
                    f,
                    "holding for {:.0}s more before {toward} (dwell)",
                    remaining.as_secs_f64().ceil()
                )
            }
            Reason::Forced {
                level,
                remaining,
                over_sensors,
            } => {
                let how = if over_sensors {
                    "forced over sensors"
                } else {
                    "forced"
                };
                write!(
                    f,
                    "operator {how}: {level} for {:.0}s",
                    remaining.as_secs_f64().ceil()
                )
            }
        }
    }
}

/// Rounds for display: "35", "18.5", "83.3".
fn tenths(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Up to this many reasons are kept per decision; there are at most six rules.
pub const MAX_REASONS: usize = 8;
/// Longest smoothing window, in readings.
pub const MAX_SMOOTHING: usize = 8;

/// What the policy decided at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub level: Level,
    /// The level the sensors alone call for (after dwell), before any operator override.
    pub sensor_level: Level,
    /// Share of the replication budget to use at this level (1, `reduced_factor`, or 0).
    pub factor: f64,
    pub reasons: heapless::Vec<Reason, MAX_REASONS>,
    /// Smoothed CPU temperature the decision used, if known.
    pub smoothed_temp_c: Option<f64>,
}

impl Decision {
    /// Reasons as sentences, for logs, JSON and MQTT.
    pub fn reason_strings(&self) -> Vec<String> {
        self.reasons.iter().map(|r| r.to_string()).collect()
    }

    /// Reasons as stable codes without figures, for metrics labels and scripts.
    pub fn reason_codes(&self) -> Vec<&'static str> {
        self.reasons.iter().map(Reason::code).collect()
    }
}

impl Reason {
    /// The kind of reason, without its figures: stable across readings, so a metrics
    /// label made from it does not start a new series at every tenth of a degree.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::TempHigh { .. } => "temp_high",
            Reason::TempCooling { .. } => "temp_cooling",
            Reason::TempUnknown { .. } => "temp_unknown",
            Reason::BatteryLow { .. } => "battery_low",
            Reason::BatteryRecovering { .. } => "battery_recovering",
            Reason::BatteryUnknown { .. } => "battery_unknown",
            Reason::Undervoltage => "undervoltage",
            Reason::Dwell { .. } => "dwell",
            Reason::Forced { .. } => "forced",
        }
    }
}

/// An operator's forced level.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Force {
    level: Level,
    until: Instant,
    over_sensors: bool,
}

/// The policy state machine.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: ThrottleSection,
    window: usize,
    temps: Deque<f64, MAX_SMOOTHING>,
    /// Sub-levels with their own hysteresis.
    temp_level: Level,
    battery_level: Level,
    /// The sensor-driven level after dwell.
    level: Option<Level>,
    /// Since when a less restrictive level has been called for, and the most restrictive
    /// level called for since then.
    calm: Option<(Instant, Level)>,
    force: Option<Force>,
}

impl Policy {
    pub fn new(cfg: &ThrottleSection) -> Policy {
        Policy {
            window: cfg.smoothing_samples.clamp(1, MAX_SMOOTHING as u8) as usize,
            cfg: cfg.clone(),
            temps: Deque::new(),
            temp_level: Level::Full,
            battery_level: Level::Full,
            level: None,
            calm: None,
            force: None,
        }
    }

    /// The replication budget share for a level.
    pub fn factor(&self, level: Level) -> f64 {
        match level {
            Level::Full => 1.0,
            Level::Reduced => self.cfg.reduced_factor,
            Level::Paused => 0.0,
        }
    }

    /// Forces `level` until `now + ttl`. Without `over_sensors` the more restrictive of the
    /// forced and the sensor level wins; with it, the forced level wins either way.
    pub fn force(&mut self, now: Instant, level: Level, ttl: Duration, over_sensors: bool) {
        self.force = Some(Force {
            level,
            until: now + ttl,
            over_sensors,
        });
    }

    pub fn clear_force(&mut self) {
        self.force = None;
    }

    /// Feeds one reading taken at `now` and returns the decision.
    pub fn step(&mut self, now: Instant, r: &Readings) -> Decision {
        let mut reasons = heapless::Vec::<Reason, MAX_REASONS>::new();
        let mut push = |reason| {
            // Capacity covers every rule; a full list would only drop a duplicate.
            let _ = reasons.push(reason);
        };
        let c = &self.cfg;

        // Temperature.
        let smoothed = match r.cpu_temp_c {
            Ok(t) => {
                if self.temps.len() >= self.window {
                    self.temps.pop_front();
                }
                let _ = self.temps.push_back(t);
                Some(median(&self.temps))
            }
            Err(_) => None,
        };
        let temp_target = match smoothed {
            Some(t) => {
                let (reduce, pause, hyst) = (c.reduce_temp_c, c.pause_temp_c, c.temp_hysteresis_c);
                self.temp_level = if t >= pause {
                    push(Reason::TempHigh {
                        temp_c: t,
                        threshold_c: pause,
                        level: Level::Paused,
                    });
                    Level::Paused
                } else if self.temp_level == Level::Paused && t > pause - hyst {
                    push(Reason::TempCooling {
                        temp_c: t,
                        resume_at_c: pause - hyst,
                        level: Level::Paused,
                    });
                    Level::Paused
                } else if t >= reduce {
                    push(Reason::TempHigh {
                        temp_c: t,
                        threshold_c: reduce,
                        level: Level::Reduced,
                    });
                    Level::Reduced
                } else if self.temp_level >= Level::Reduced && t > reduce - hyst {
                    push(Reason::TempCooling {
                        temp_c: t,
                        resume_at_c: reduce - hyst,
                        level: Level::Reduced,
                    });
                    Level::Reduced
                } else {
                    Level::Full
                };
                self.temp_level
            }
            None => {
                let level = c.unknown_temp;
                if level > Level::Full {
                    push(Reason::TempUnknown { level });
                }
                level
            }
        };

        // Battery.
        let battery_target = match r.battery {
            BatteryReading::Absent => {
                self.battery_level = Level::Full;
                Level::Full
            }
            BatteryReading::Unavailable(_) => {
                let level = c.unknown_battery;
                if level > Level::Full {
                    push(Reason::BatteryUnknown { level });
                }
                level
            }
            BatteryReading::Present(b) => {
                let draining =
                    matches!(b.status, ChargeStatus::Discharging | ChargeStatus::Unknown);
                let p = b.percent;
                let (reduce, pause, hyst) = (
                    c.battery_reduce_percent,
                    c.battery_pause_percent,
                    c.battery_hysteresis_percent,
                );
                self.battery_level = if !draining {
                    Level::Full
                } else if p < pause {
                    push(Reason::BatteryLow {
                        percent: p,
                        threshold: pause,
                        level: Level::Paused,
                    });
                    Level::Paused
                } else if self.battery_level == Level::Paused && p < pause + hyst {
                    push(Reason::BatteryRecovering {
                        percent: p,
                        resume_at: pause + hyst,
                        level: Level::Paused,
                    });
                    Level::Paused
                } else if p < reduce {
                    push(Reason::BatteryLow {
                        percent: p,
                        threshold: reduce,
                        level: Level::Reduced,
                    });
                    Level::Reduced
                } else if self.battery_level >= Level::Reduced && p < reduce + hyst {
                    push(Reason::BatteryRecovering {
                        percent: p,
                        resume_at: reduce + hyst,
                        level: Level::Reduced,
                    });
                    Level::Reduced
                } else {
                    Level::Full
                };
                self.battery_level
            }
        };

        let mut target = temp_target.max(battery_target);
        if let Ok(flags) = r.power
            && flags.undervoltage_now() == Some(true)
        {
            push(Reason::Undervoltage);
            target = target.max(Level::Reduced);
        }

        // Dwell: down at once, up only after `dwell` of calm.
        let level = match self.level {
            None => target,
            Some(cur) if target >= cur => {
                self.calm = None;
                target
            }
            Some(cur) => {
                let (since, floor) = match self.calm {
                    Some((since, floor)) => (since, floor.max(target)),
                    None => (now, target),
                };
                self.calm = Some((since, floor));
                let waited = now.saturating_duration_since(since);
                if waited >= c.dwell.0 {
                    self.calm = None;
                    floor
                } else {
                    push(Reason::Dwell {
                        toward: floor,
                        remaining: c.dwell.0 - waited,
                    });
                    cur
                }
            }
        };
        if self.level != Some(level) {
            self.calm = None;
        }
        self.level = Some(level);

        // Operator override.
        if self.force.is_some_and(|f| now >= f.until) {
            self.force = None;
        }
        let effective = match self.force {
            Some(f) => {
                push(Reason::Forced {
                    level: f.level,
                    remaining: f.until.saturating_duration_since(now),
                    over_sensors: f.over_sensors,
                });
                if f.over_sensors {
                    f.level
                } else {
                    f.level.max(level)
                }
            }
            None => level,
        };

        Decision {
            level: effective,
            sensor_level: level,
            factor: self.factor(effective),
            reasons,
            smoothed_temp_c: smoothed,
        }
    }
}

/// Median of at most MAX_SMOOTHING values, on the stack.
fn median(values: &Deque<f64, MAX_SMOOTHING>) -> f64 {
    let mut buf = [0f64; MAX_SMOOTHING];
    let n = values.len();
    for (slot, v) in buf.iter_mut().zip(values.iter()) {
        *slot = *v;
    }
    let s = &mut buf[..n];
    s.sort_unstable_by(f64::total_cmp);
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests;
