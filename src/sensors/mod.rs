//! Sensor driver: CPU temperature, firmware throttle flags and battery, read from sysfs and
//! I2C fuel gauges into a [`Readings`] snapshot for the throttle policy.
//!
//! Sources are chosen once by [`Sensors::probe`] (see docs/throttle.md for the order) and
//! then read every `sensors.interval`. Every path resolves under `sensors.sysfs_root`, so
//! the same code reads a real board or a fake tree. A source that fails (missing file,
//! garbage, implausible value, I2C NACK) never fails the reading: that field becomes
//! [`Unavailable`] with the reason, and [`Availability`] reports the change once instead
//! of every tick.

pub mod i2c;
pub mod monitor;
pub mod sysfs;

use crate::config::{BatterySource, CpuTempSource, SensorsSection};
use crate::throttle::Decision;
use i2c::{Gauge, RegisterBus};
use serde_json::{Value, json};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use tracing::{debug, info};

/// Why a reading is missing. `Copy` so that a reading never allocates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unavailable {
    /// No source of this kind was found or configured.
    NoSource,
    /// The file went away.
    Missing,
    /// The text could not be parsed.
    Garbage,
    /// Parsed, but outside what the quantity can be (-40 C, 250 C, 180 %).
    Implausible(f64),
    /// The I2C device did not acknowledge.
    I2cNack,
    Io(io::ErrorKind),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoSource => f.write_str("no source"),
            Unavailable::Missing => f.write_str("file missing"),
            Unavailable::Garbage => f.write_str("unparsable value"),
            Unavailable::Implausible(v) => write!(f, "implausible value {v}"),
            Unavailable::I2cNack => f.write_str("I2C device did not acknowledge"),
            Unavailable::Io(k) => write!(f, "I/O error: {k}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeStatus {
    Charging,
    Discharging,
    NotCharging,
    Full,
    Unknown,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeStatus::Charging => "charging",
            ChargeStatus::Discharging => "discharging",
            ChargeStatus::NotCharging => "not charging",
            ChargeStatus::Full => "full",
            ChargeStatus::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Battery {
    pub percent: f64,
    pub status: ChargeStatus,
    pub voltage_v: Option<f64>,
}

impl Battery {
    /// Running from the battery: true when discharging, false when charging, full or on
    /// external power, unknown when the source cannot tell.
    pub fn on_battery(&self) -> Option<bool> {
        match self.status {
            ChargeStatus::Discharging => Some(true),
            ChargeStatus::Charging | ChargeStatus::Full | ChargeStatus::NotCharging => Some(false),
            ChargeStatus::Unknown => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatteryReading {
    /// No battery: the board runs on mains.
    Absent,
    Present(Battery),
    /// A battery source was found but cannot be read now.
    Unavailable(Unavailable),
}

/// Firmware throttle state, as in `vcgencmd get_throttled`. Bits not reported by the
/// source are unknown rather than false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerFlags {
    bits: u32,
    known: u32,
}

impl PowerFlags {
    pub const UNDERVOLTAGE_NOW: u32 = 1 << 0;
    pub const FREQ_CAPPED_NOW: u32 = 1 << 1;
    pub const THROTTLED_NOW: u32 = 1 << 2;
    pub const SOFT_TEMP_LIMIT_NOW: u32 = 1 << 3;
    pub const UNDERVOLTAGE_OCCURRED: u32 = 1 << 16;
    pub const FREQ_CAPPED_OCCURRED: u32 = 1 << 17;
    pub const THROTTLED_OCCURRED: u32 = 1 << 18;
    pub const SOFT_TEMP_LIMIT_OCCURRED: u32 = 1 << 19;
    const ALL: u32 = 0x000f_000f;

    /// From the firmware's `get_throttled` word: every flag known.
    pub fn from_throttled(word: u32) -> PowerFlags {
        PowerFlags {
            bits: word & Self::ALL,
            known: Self::ALL,
        }
    }

    /// From the `rpi_volt` hwmon's `in0_lcrit_alarm`: only under-voltage now is known.
    pub fn from_undervoltage_alarm(alarm: bool) -> PowerFlags {
        PowerFlags {
            bits: if alarm { Self::UNDERVOLTAGE_NOW } else { 0 },
            known: Self::UNDERVOLTAGE_NOW,
        }
    }

    pub fn get(&self, flag: u32) -> Option<bool> {
        (self.known & flag == flag).then_some(self.bits & flag == flag)
    }

    pub fn undervoltage_now(&self) -> Option<bool> {
        self.get(Self::UNDERVOLTAGE_NOW)
    }

    /// The raw word (known bits only), for logs.
    pub fn bits(&self) -> u32 {
        self.bits
    }
}

/// One snapshot of every sensor. `Copy`: taking one allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Readings {
    pub cpu_temp_c: Result<f64, Unavailable>,
    pub battery: BatteryReading,
    pub power: Result<PowerFlags, Unavailable>,
}

impl Readings {
    /// True when the board is known to run from its battery.
    pub fn on_battery(&self) -> Option<bool> {
        match self.battery {
            BatteryReading::Absent => Some(false),
            BatteryReading::Present(b) => b.on_battery(),
            BatteryReading::Unavailable(_) => None,
        }
    }

    pub fn battery_percent(&self) -> Option<f64> {
        match self.battery {
            BatteryReading::Present(b) => Some(b.percent),
            _ => None,
        }
    }

    pub fn undervoltage(&self) -> Option<bool> {
        self.power.ok().and_then(|p| p.undervoltage_now())
    }
}

enum TempSource {
    Zone {
        path: PathBuf,
    },
    /// No `cpu-thermal` zone: the hottest plausible zone each tick.
    Hottest {
        paths: Vec<PathBuf>,
    },
    Hwmon {
        path: PathBuf,
    },
    Sysinfo(Box<sysinfo::Components>),
    None,
}

enum BatterySrc {
    PowerSupply {
        capacity: PathBuf,
        status: PathBuf,
        voltage: PathBuf,
    },
    Gauge {
        gauge: Gauge,
        bus: Box<dyn RegisterBus>,
    },
    Absent,
}

enum PowerSrc {
    GetThrottled(PathBuf),
    RpiVolt(PathBuf),
    None,
}

/// Human names of the sources chosen at probe time.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceNames {
    pub cpu_temp: String,
    pub battery: String,
    pub power: String,
}

/// The probed sensor sources, read once per tick.
pub struct Sensors {
    temp: TempSource,
    battery: BatterySrc,
    power: PowerSrc,
    names: SourceNames,
}

impl Sensors {
    /// Chooses a source for each sensor (see docs/throttle.md for the probing order).
    pub fn probe(cfg: &SensorsSection) -> Sensors {
        let root = cfg.sysfs_root.as_path();
        let (temp, temp_name) = probe_temp(cfg, root);
        let (battery, battery_name) = probe_battery(cfg, root);
        let (power, power_name) = probe_power(root);
        let names = SourceNames {
            cpu_temp: temp_name,
            battery: battery_name,
            power: power_name,
        };
        info!(cpu_temp = %names.cpu_temp, battery = %names.battery, power = %names.power, "sensor sources");
        Sensors {
            temp,
            battery,
            power,
            names,
        }
    }

    pub fn sources(&self) -> &SourceNames {
        &self.names
    }

    /// Takes one reading. Never fails and, past the first call, never allocates (the
    /// sysinfo fallback aside).
    pub fn read(&mut self) -> Readings {
        let mut buf = [0u8; 64];
        let cpu_temp_c = match &mut self.temp {
            TempSource::Zone { path } | TempSource::Hwmon { path } => {
                sysfs::read_small(path, &mut buf).and_then(sysfs::parse_millidegrees)
            }
            TempSource::Hottest { paths } => {
                let mut best: Result<f64, Unavailable> = Err(Unavailable::NoSource);
                for p in paths.iter() {
                    let t = sysfs::read_small(p, &mut buf).and_then(sysfs::parse_millidegrees);
                    best = match (best, t) {
                        (Ok(a), Ok(b)) => Ok(a.max(b)),
                        (Err(_), Ok(b)) => Ok(b),
                        (best @ Ok(_), Err(_)) => best,
                        (Err(_), Err(e)) => Err(e),
                    };
                }
                best
            }
            TempSource::Sysinfo(c) => {
                c.refresh(false);
                c.iter()
                    .filter_map(|c| c.temperature())
                    .map(|t| t as f64)
                    .filter(|t| sysfs::plausible_temp(*t).is_ok())
                    .reduce(f64::max)
                    .ok_or(Unavailable::Missing)
            }
            TempSource::None => Err(Unavailable::NoSource),
        };

        let battery = match &mut self.battery {
            BatterySrc::Absent => BatteryReading::Absent,
            BatterySrc::PowerSupply {
                capacity,
                status,
                voltage,
            } => {
                let percent = sysfs::read_small(capacity, &mut buf).and_then(sysfs::parse_capacity);
                let st = sysfs::read_small(status, &mut buf)
                    .map(sysfs::parse_status)
                    .unwrap_or(ChargeStatus::Unknown);
                let voltage_v = sysfs::read_small(voltage, &mut buf)
                    .and_then(sysfs::parse_microvolts)
                    .ok();
                match percent {
                    Ok(percent) => BatteryReading::Present(Battery {
                        percent,
                        status: st,
                        voltage_v,
                    }),
                    Err(e) => BatteryReading::Unavailable(e),
                }
            }
            BatterySrc::Gauge { gauge, bus } => match gauge.read(bus.as_mut()) {
                Ok(b) => BatteryReading::Present(b),
                Err(e) => BatteryReading::Unavailable(e),
            },
        };

        let power = match &self.power {
            PowerSrc::GetThrottled(p) => sysfs::read_small(p, &mut buf)
                .and_then(sysfs::parse_throttled)
                .map(PowerFlags::from_throttled),
            PowerSrc::RpiVolt(p) => sysfs::read_small(p, &mut buf)
                .and_then(sysfs::parse_bool01)
                .map(PowerFlags::from_undervoltage_alarm),
            PowerSrc::None => Err(Unavailable::NoSource),
        };

        Readings {
            cpu_temp_c,
            battery,
            power,
        }
    }
}

fn probe_temp(cfg: &SensorsSection, root: &Path) -> (TempSource, String) {
    let want = cfg.cpu_temp;
    let real_root = root == Path::new("/");
    if matches!(want, CpuTempSource::Auto | CpuTempSource::Thermal) {
        let zones = sysfs::thermal_zones(root);
        if !cfg.thermal_zone.is_empty() {
            // Named explicitly: use it even if it is missing now, so the problem shows.
            let dir = sysfs::under(root, "/sys/class/thermal").join(&cfg.thermal_zone);
            return (
                TempSource::Zone {
                    path: dir.join("temp"),
                },
                cfg.thermal_zone.clone(),
            );
        }
        if let Some(z) = zones.iter().find(|z| z.kind == "cpu-thermal") {
            return (
                TempSource::Zone {
                    path: z.temp.clone(),
                },
                format!("{} ({})", z.name, z.kind),
            );
        }
        if !zones.is_empty() {
            let names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
            let name = format!("hottest of {}", names.join(", "));
            return (
                TempSource::Hottest {
                    paths: zones.into_iter().map(|z| z.temp).collect(),
                },
                name,
            );
        }
        if want == CpuTempSource::Thermal {
            return (TempSource::None, "none (no thermal zones)".into());
        }
    }
    if matches!(want, CpuTempSource::Auto | CpuTempSource::Hwmon) {
        let names = [
            "cpu_thermal",
            "cpu-thermal",
            "soc_thermal",
            "coretemp",
            "k10temp",
        ];
        if let Some((n, dir)) = sysfs::hwmon_named(root, &names).into_iter().next() {
            return (
                TempSource::Hwmon {
                    path: dir.join("temp1_input"),
                },
                format!("hwmon {n}"),
            );
        }
        if want == CpuTempSource::Hwmon {
            return (TempSource::None, "none (no CPU hwmon)".into());
        }
    }
    // sysinfo reads the real /sys itself, so it is only a fallback on real hardware.
    if (want == CpuTempSource::Sysinfo || (want == CpuTempSource::Auto && real_root))
        && let Ok(c) = sysinfo::Components::new_with_refreshed_list()
        && c.iter().any(|c| c.temperature().is_some())
    {
        return (
            TempSource::Sysinfo(Box::new(c)),
            "sysinfo components".into(),
        );
    }
    (TempSource::None, "none".into())
}

fn probe_battery(cfg: &SensorsSection, root: &Path) -> (BatterySrc, String) {
    let mut order: Vec<BatterySource> = Vec::new();
    for s in &cfg.battery {
        match s {
            BatterySource::Auto => order.extend([
                BatterySource::PowerSupply,
                BatterySource::Max17048,
                BatterySource::Pisugar3,
                BatterySource::Ina219,
            ]),
            BatterySource::None => break,
            other => order.push(*other),
        }
    }
    let mut bus: Option<Box<dyn RegisterBus>> = None;
    let mut bus_error: Option<String> = None;
    for s in order {
        let gauge = match s {
            BatterySource::PowerSupply => {
                if let Some((name, dir)) = sysfs::battery_supplies(root).into_iter().next() {
                    return (
                        BatterySrc::PowerSupply {
                            capacity: dir.join("capacity"),
                            status: dir.join("status"),
                            voltage: dir.join("voltage_now"),
                        },
                        format!("power_supply/{name}"),
                    );
                }
                continue;
            }
            BatterySource::Max17048 => Gauge::Max17048,
            BatterySource::Pisugar3 => Gauge::PiSugar3,
            BatterySource::Ina219 => Gauge::Ina219 {
                addr: cfg.ina219_address,
                cells: cfg.ina219_cells,
            },
            BatterySource::Auto | BatterySource::None => continue,
        };
        if bus.is_none() && bus_error.is_none() {
            match i2c::open_bus(root, cfg.i2c_bus) {
                Ok(b) => bus = Some(b),
                Err(e) => {
                    debug!("I2C gauges not probed: {e}");
                    bus_error = Some(e);
                }
            }
        }
        let Some(b) = bus.as_mut() else { continue };
        if gauge.probe(b.as_mut()) {
            let name = format!(
                "{} at {:#04x} on i2c-{}",
                gauge.name(),
                gauge.addr(),
                cfg.i2c_bus
            );
            return (
                BatterySrc::Gauge {
                    gauge,
                    bus: bus.take().expect("bus is open"),
                },
                name,
            );
        }
        debug!("{} did not answer at {:#04x}", gauge.name(), gauge.addr());
    }
    (BatterySrc::Absent, "none (mains)".into())
}

fn probe_power(root: &Path) -> (PowerSrc, String) {
    if let Some(p) = sysfs::find_get_throttled(root) {
        return (PowerSrc::GetThrottled(p), "firmware get_throttled".into());
    }
    if let Some((_, dir)) = sysfs::hwmon_named(root, &["rpi_volt"]).into_iter().next() {
        return (
            PowerSrc::RpiVolt(dir.join("in0_lcrit_alarm")),
            "hwmon rpi_volt".into(),
        );
    }
    (PowerSrc::None, "none".into())
}

/// Which sensor a change in availability concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensorKind {
    CpuTemp,
    Battery,
    Power,
}

impl SensorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SensorKind::CpuTemp => "cpu_temp",
            SensorKind::Battery => "battery",
            SensorKind::Power => "power",
        }
    }
}

/// A sensor became unavailable (`Some(reason)`) or recovered (`None`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AvailabilityChange {
    pub sensor: SensorKind,
    pub unavailable: Option<Unavailable>,
}

/// Remembers each sensor's last state so a failing sensor is reported once, when it
/// fails, and once more when it recovers, rather than every tick. Sensors with no source
/// are not failures and are never reported here.
#[derive(Debug, Default)]
pub struct Availability {
    last: [Option<Unavailable>; 3],
}

impl Availability {
    pub fn observe(&mut self, r: &Readings) -> heapless::Vec<AvailabilityChange, 3> {
        let now = [
            r.cpu_temp_c.err(),
            match r.battery {
                BatteryReading::Unavailable(e) => Some(e),
                _ => None,
            },
            r.power.err(),
        ];
        let kinds = [SensorKind::CpuTemp, SensorKind::Battery, SensorKind::Power];
        let mut out = heapless::Vec::new();
        for i in 0..3 {
            let state = now[i].filter(|e| *e != Unavailable::NoSource);
            if state != self.last[i] {
                // Unavailable -> unavailable for another reason is a change too.
                let _ = out.push(AvailabilityChange {
                    sensor: kinds[i],
                    unavailable: state,
                });
                self.last[i] = state;
            }
        }
        out
    }
}

/// The `ddc-edge sensors --json` object, also the sensor half of the MQTT health message.
pub fn to_json(r: &Readings, d: &Decision, sources: &SourceNames) -> Value {
    let battery = match r.battery {
        BatteryReading::Present(b) => Some(b),
        _ => None,
    };
    let flags = r.power.ok().map(|p| {
        let f = |bit| p.get(bit);
        json!({
            "undervoltage_now": f(PowerFlags::UNDERVOLTAGE_NOW),
            "freq_capped_now": f(PowerFlags::FREQ_CAPPED_NOW),
            "throttled_now": f(PowerFlags::THROTTLED_NOW),
            "soft_temp_limit_now": f(PowerFlags::SOFT_TEMP_LIMIT_NOW),
            "undervoltage_occurred": f(PowerFlags::UNDERVOLTAGE_OCCURRED),
            "freq_capped_occurred": f(PowerFlags::FREQ_CAPPED_OCCURRED),
            "throttled_occurred": f(PowerFlags::THROTTLED_OCCURRED),
            "soft_temp_limit_occurred": f(PowerFlags::SOFT_TEMP_LIMIT_OCCURRED),
        })
    });
    let mut unavailable = serde_json::Map::new();
    if let Err(e) = r.cpu_temp_c {
        unavailable.insert("cpu_temp".into(), e.to_string().into());
    }
    if let BatteryReading::Unavailable(e) = r.battery {
        unavailable.insert("battery".into(), e.to_string().into());
    }
    if let Err(e) = r.power {
        unavailable.insert("power".into(), e.to_string().into());
    }
    let round = |v: f64| (v * 10.0).round() / 10.0;
    json!({
        "cpu_temp_c": r.cpu_temp_c.ok().map(round),
        "cpu_temp_smoothed_c": d.smoothed_temp_c.map(round),
        "battery_percent": battery.map(|b| round(b.percent)),
        "battery_status": battery.map(|b| b.status.as_str()),
        "battery_voltage_v": battery.and_then(|b| b.voltage_v).map(|v| (v * 1000.0).round() / 1000.0),
        "on_battery": r.on_battery(),
        "undervoltage": r.undervoltage(),
        "throttled": flags,
        "level": d.level.as_str(),
        "factor": d.factor,
        "reasons": d.reason_strings(),
        "sources": sources,
        "unavailable": unavailable,
    })
}

#[cfg(test)]
mod tests;
