//! Reading and parsing the kernel's sysfs sensor files.
//!
//! Discovery (which zone, which hwmon, which power supply) happens once at probe time and
//! produces fixed paths; each tick then opens those paths and reads a few bytes into a
//! stack buffer, so a steady-state reading allocates nothing. The parsers are pure
//! functions over the file text so that bad data is tested without any files.

use super::{ChargeStatus, Unavailable};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Largest sysfs value we read; every file used here holds a short line.
const BUF: usize = 64;

/// Reads a short sysfs file into `buf` and returns its trimmed text.
pub fn read_small<'a>(path: &Path, buf: &'a mut [u8; BUF]) -> Result<&'a str, Unavailable> {
    let mut f = File::open(path).map_err(io_reason)?;
    let mut n = 0;
    loop {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if n == BUF {
                    return Err(Unavailable::Garbage);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_reason(e)),
        }
    }
    std::str::from_utf8(&buf[..n])
        .map(str::trim)
        .map_err(|_| Unavailable::Garbage)
}

fn io_reason(e: io::Error) -> Unavailable {
    match e.kind() {
        io::ErrorKind::NotFound => Unavailable::Missing,
        k => Unavailable::Io(k),
    }
}

/// Reads a file as a trimmed owned string; for probing only (allocates).
pub fn read_string(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Millidegrees C as written by thermal zones and hwmon (`70908` = 70.9 C).
pub fn parse_millidegrees(text: &str) -> Result<f64, Unavailable> {
    let v: i64 = text.parse().map_err(|_| Unavailable::Garbage)?;
    plausible_temp(v as f64 / 1000.0)
}

/// A CPU temperature outside this range is a broken sensor, not a hot board: -40 C and
/// 250 C are what failing drivers report.
pub fn plausible_temp(c: f64) -> Result<f64, Unavailable> {
    if (-20.0..=125.0).contains(&c) {
        Ok(c)
    } else {
        Err(Unavailable::Implausible(c))
    }
}

pub fn plausible_percent(p: f64) -> Result<f64, Unavailable> {
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(Unavailable::Implausible(p))
    }
}

/// `capacity` of a power supply: an integer percentage.
pub fn parse_capacity(text: &str) -> Result<f64, Unavailable> {
    let v: i64 = text.parse().map_err(|_| Unavailable::Garbage)?;
    plausible_percent(v as f64)
}

/// `status` of a power supply.
pub fn parse_status(text: &str) -> ChargeStatus {
    match text {
        "Charging" => ChargeStatus::Charging,
        "Discharging" => ChargeStatus::Discharging,
        "Not charging" => ChargeStatus::NotCharging,
        "Full" => ChargeStatus::Full,
        _ => ChargeStatus::Unknown,
    }
}

/// `voltage_now`, in microvolts.
pub fn parse_microvolts(text: &str) -> Result<f64, Unavailable> {
    let v: i64 = text.parse().map_err(|_| Unavailable::Garbage)?;
    let volts = v as f64 / 1e6;
    if (0.0..=60.0).contains(&volts) {
        Ok(volts)
    } else {
        Err(Unavailable::Implausible(volts))
    }
}

/// The firmware's `get_throttled` word, written in hex with or without `0x`.
pub fn parse_throttled(text: &str) -> Result<u32, Unavailable> {
    let t = text.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(t, 16).map_err(|_| Unavailable::Garbage)
}

/// `0`/`1` alarm files such as hwmon `in0_lcrit_alarm`.
pub fn parse_bool01(text: &str) -> Result<bool, Unavailable> {
    match text {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(Unavailable::Garbage),
    }
}

/// Joins a sysfs path such as `/sys/class/thermal` under the configured root.
pub fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Entries of a directory, sorted by name so probing order is stable.
pub fn sorted_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    // thermal_zone10 after thermal_zone9: natural order on the trailing number.
    v.sort_by_key(|e| natural_key(&e.0));
    v
}

fn natural_key(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (stem, num) = name.split_at(name.len() - digits);
    (stem.to_string(), num.parse().unwrap_or(0))
}

/// A thermal zone found at probe time.
#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    pub kind: String,
    pub temp: PathBuf,
}

/// All `thermal_zone*` under the root, with their `type`.
pub fn thermal_zones(root: &Path) -> Vec<Zone> {
    sorted_entries(&under(root, "/sys/class/thermal"))
        .into_iter()
        .filter(|(n, _)| n.starts_with("thermal_zone"))
        .map(|(name, dir)| Zone {
            kind: read_string(&dir.join("type")).unwrap_or_default(),
            temp: dir.join("temp"),
            name,
        })
        .collect()
}

/// hwmon directories with the given `name` file contents.
pub fn hwmon_named(root: &Path, names: &[&str]) -> Vec<(String, PathBuf)> {
    sorted_entries(&under(root, "/sys/class/hwmon"))
        .into_iter()
        .filter_map(|(_, dir)| {
            let n = read_string(&dir.join("name"))?;
            names.contains(&n.as_str()).then_some((n, dir))
        })
        .collect()
}

/// Power supplies of type Battery or UPS: (name, directory).
pub fn battery_supplies(root: &Path) -> Vec<(String, PathBuf)> {
    sorted_entries(&under(root, "/sys/class/power_supply"))
        .into_iter()
        .filter(|(_, dir)| {
            matches!(
                read_string(&dir.join("type")).as_deref(),
                Some("Battery" | "UPS")
            )
        })
        .collect()
}

/// The firmware's `get_throttled` file. Its platform directory is named after the SoC's
/// device-tree node (`soc`, `soc@107c000000` on a Pi 5), so search rather than assume.
pub fn find_get_throttled(root: &Path) -> Option<PathBuf> {
    for (name, dir) in sorted_entries(&under(root, "/sys/devices/platform")) {
        if !name.starts_with("soc") {
            continue;
        }
        for (sub, subdir) in sorted_entries(&dir) {
            if sub.ends_with(":firmware") {
                let p = subdir.join("get_throttled");
                if p.exists() {
                    return Some(p);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperatures() {
        assert_eq!(parse_millidegrees("70908"), Ok(70.908));
        assert_eq!(parse_millidegrees("-5000"), Ok(-5.0));
        assert_eq!(
            parse_millidegrees("-40000"),
            Err(Unavailable::Implausible(-40.0))
        );
        assert_eq!(
            parse_millidegrees("250000"),
            Err(Unavailable::Implausible(250.0))
        );
        assert_eq!(parse_millidegrees("hot"), Err(Unavailable::Garbage));
        assert_eq!(parse_millidegrees(""), Err(Unavailable::Garbage));
    }

    #[test]
    fn batteries() {
        assert_eq!(parse_capacity("87"), Ok(87.0));
        assert_eq!(parse_capacity("180"), Err(Unavailable::Implausible(180.0)));
        assert_eq!(parse_capacity("-1"), Err(Unavailable::Implausible(-1.0)));
        assert_eq!(parse_status("Discharging"), ChargeStatus::Discharging);
        assert_eq!(parse_status("Not charging"), ChargeStatus::NotCharging);
        assert_eq!(parse_status("?"), ChargeStatus::Unknown);
        assert_eq!(parse_microvolts("3950000"), Ok(3.95));
        assert_eq!(parse_microvolts("x"), Err(Unavailable::Garbage));
    }

    #[test]
    fn throttled_word() {
        assert_eq!(parse_throttled("0x50005"), Ok(0x50005));
        assert_eq!(parse_throttled("50005"), Ok(0x50005));
        assert_eq!(parse_throttled("0"), Ok(0));
        assert_eq!(parse_throttled("nope"), Err(Unavailable::Garbage));
        assert_eq!(parse_bool01("1"), Ok(true));
        assert_eq!(parse_bool01("2"), Err(Unavailable::Garbage));
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["thermal_zone10", "thermal_zone2", "thermal_zone1"];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v, ["thermal_zone1", "thermal_zone2", "thermal_zone10"]);
    }

    #[test]
    fn read_small_handles_missing_and_oversize() {
        let d = tempfile::tempdir().unwrap();
        let mut buf = [0u8; BUF];
        assert_eq!(
            read_small(&d.path().join("nope"), &mut buf),
            Err(Unavailable::Missing)
        );
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'1'; 200]).unwrap();
        assert_eq!(read_small(&big, &mut buf), Err(Unavailable::Garbage));
        let ok = d.path().join("ok");
        std::fs::write(&ok, "42000\n").unwrap();
        assert_eq!(read_small(&ok, &mut buf), Ok("42000"));
    }
}
