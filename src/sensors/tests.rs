use super::*;
use crate::config::SensorsSection;
use crate::throttle::{Level, Policy};
use std::path::Path;
use std::time::Instant;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sysfs")
        .join(name)
}

fn cfg_for(root: &Path) -> SensorsSection {
    SensorsSection {
        sysfs_root: root.to_path_buf(),
        ..SensorsSection::default()
    }
}

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn pi4_on_mains() {
    let mut s = Sensors::probe(&cfg_for(&fixture("pi4-mains")));
    assert_eq!(s.sources().cpu_temp, "thermal_zone0 (cpu-thermal)");
    assert_eq!(s.sources().battery, "none (mains)");
    assert_eq!(s.sources().power, "firmware get_throttled");
    let r = s.read();
    assert_eq!(r.cpu_temp_c, Ok(48.312));
    assert_eq!(r.battery, BatteryReading::Absent);
    assert_eq!(r.on_battery(), Some(false));
    assert_eq!(r.battery_percent(), None, "mains is null, not 0 %");
    assert_eq!(
        r.undervoltage(),
        Some(false),
        "0x50000: occurred before, not now"
    );
    let flags = r.power.unwrap();
    assert_eq!(flags.get(PowerFlags::UNDERVOLTAGE_OCCURRED), Some(true));
    assert_eq!(flags.get(PowerFlags::THROTTLED_OCCURRED), Some(true));
}

#[test]
fn pi5_on_a_battery_hat() {
    let mut s = Sensors::probe(&cfg_for(&fixture("pi5-battery-hat")));
    assert_eq!(s.sources().battery, "power_supply/battery");
    let r = s.read();
    assert_eq!(r.cpu_temp_c, Ok(62.35));
    let BatteryReading::Present(b) = r.battery else {
        panic!("{:?}", r.battery)
    };
    assert_eq!(b.percent, 35.0);
    assert_eq!(b.status, ChargeStatus::Discharging);
    assert_eq!(b.voltage_v, Some(3.71));
    assert_eq!(r.on_battery(), Some(true));
    assert_eq!(r.undervoltage(), Some(false));
    let d = Policy::new(&Default::default()).step(Instant::now(), &r);
    assert_eq!(d.level, Level::Reduced);
}

#[test]
fn pi5_with_an_i2c_gauge_from_a_fake_register_map() {
    let mut s = Sensors::probe(&cfg_for(&fixture("pi5-max17048-hat")));
    assert_eq!(s.sources().battery, "max17048 at 0x36 on i2c-1");
    let r = s.read();
    let BatteryReading::Present(b) = r.battery else {
        panic!("{:?}", r.battery)
    };
    assert_eq!(b.percent, 18.5);
    assert_eq!(b.voltage_v, Some(4.0));
    assert_eq!(b.status, ChargeStatus::Discharging);
    assert_eq!(r.undervoltage(), Some(true));
    let d = Policy::new(&Default::default()).step(Instant::now(), &r);
    assert_eq!(d.level, Level::Paused);
    let j = to_json(&r, &d, s.sources());
    assert_eq!(j["battery_percent"], 18.5);
    assert_eq!(j["on_battery"], true);
    assert_eq!(j["undervoltage"], true);
    assert_eq!(j["level"], "paused");
    assert_eq!(j["throttled"]["throttled_now"], true);
    assert_eq!(j["throttled"]["soft_temp_limit_occurred"], false);
}

#[test]
fn configured_source_order_is_respected() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "sys/class/power_supply/BAT0/type", "Battery\n");
    put(d.path(), "sys/class/power_supply/BAT0/capacity", "80\n");
    put(d.path(), "sys/class/power_supply/BAT0/status", "Charging\n");
    put(
        d.path(),
        "dev/i2c-1",
        "0x57 0x22 0x0f\n0x57 0x23 0xa0\n0x57 0x2a 0x30\n0x57 0x02 0x00\n",
    );
    let mut c = cfg_for(d.path());
    c.battery = vec![BatterySource::Pisugar3, BatterySource::PowerSupply];
    let mut s = Sensors::probe(&c);
    assert_eq!(s.sources().battery, "pisugar3 at 0x57 on i2c-1");
    assert_eq!(s.read().battery_percent(), Some(48.0));
    c.battery = vec![BatterySource::Auto];
    assert_eq!(Sensors::probe(&c).sources().battery, "power_supply/BAT0");
    c.battery = vec![BatterySource::None, BatterySource::PowerSupply];
    let mut s = Sensors::probe(&c);
    assert_eq!(s.read().battery, BatteryReading::Absent);
    // A gauge that does not answer means no battery (a MAX17048 without a cell is silent).
    c.battery = vec![BatterySource::Max17048];
    assert_eq!(Sensors::probe(&c).read().battery, BatteryReading::Absent);
}

#[test]
fn hottest_zone_without_cpu_thermal_then_hwmon() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "sys/class/thermal/thermal_zone0/type", "acpitz\n");
    put(d.path(), "sys/class/thermal/thermal_zone0/temp", "41000\n");
    put(
        d.path(),
        "sys/class/thermal/thermal_zone1/type",
        "x86_pkg_temp\n",
    );
    put(d.path(), "sys/class/thermal/thermal_zone1/temp", "57000\n");
    put(d.path(), "sys/class/thermal/thermal_zone2/type", "broken\n");
    put(d.path(), "sys/class/thermal/thermal_zone2/temp", "-40000\n");
    let mut s = Sensors::probe(&cfg_for(d.path()));
    assert_eq!(s.read().cpu_temp_c, Ok(57.0), "hottest plausible zone");
    let mut c = cfg_for(d.path());
    c.thermal_zone = "thermal_zone0".into();
    assert_eq!(Sensors::probe(&c).read().cpu_temp_c, Ok(41.0));
    c.thermal_zone = "thermal_zone9".into();
    assert_eq!(
        Sensors::probe(&c).read().cpu_temp_c,
        Err(Unavailable::Missing)
    );

    let h = tempfile::tempdir().unwrap();
    put(h.path(), "sys/class/hwmon/hwmon3/name", "cpu_thermal\n");
    put(h.path(), "sys/class/hwmon/hwmon3/temp1_input", "66600\n");
    let mut s = Sensors::probe(&cfg_for(h.path()));
    assert_eq!(s.sources().cpu_temp, "hwmon cpu_thermal");
    assert_eq!(s.read().cpu_temp_c, Ok(66.6));
    // A fake root never falls back to the real machine's sensors.
    let empty = tempfile::tempdir().unwrap();
    let mut s = Sensors::probe(&cfg_for(empty.path()));
    assert_eq!(s.read().cpu_temp_c, Err(Unavailable::NoSource));
    assert_eq!(s.read().power, Err(Unavailable::NoSource));
}

#[test]
fn bad_data_marks_readings_unavailable_and_is_reported_once() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    put(
        root,
        "sys/class/thermal/thermal_zone0/type",
        "cpu-thermal\n",
    );
    put(root, "sys/class/thermal/thermal_zone0/temp", "50000\n");
    put(root, "sys/class/power_supply/battery/type", "Battery\n");
    put(root, "sys/class/power_supply/battery/capacity", "60\n");
    put(
        root,
        "sys/class/power_supply/battery/status",
        "Discharging\n",
    );
    let mut s = Sensors::probe(&cfg_for(root));
    let mut avail = Availability::default();
    assert!(avail.observe(&s.read()).is_empty());

    put(root, "sys/class/thermal/thermal_zone0/temp", "garbage\n");
    put(root, "sys/class/power_supply/battery/capacity", "180\n");
    let r = s.read();
    assert_eq!(r.cpu_temp_c, Err(Unavailable::Garbage));
    assert_eq!(
        r.battery,
        BatteryReading::Unavailable(Unavailable::Implausible(180.0))
    );
    assert_eq!(r.on_battery(), None);
    let changes = avail.observe(&r);
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].sensor, SensorKind::CpuTemp);
    assert_eq!(changes[0].unavailable, Some(Unavailable::Garbage));
    for _ in 0..5 {
        assert!(
            avail.observe(&s.read()).is_empty(),
            "reported again while unchanged"
        );
    }
    put(root, "sys/class/thermal/thermal_zone0/temp", "250000\n");
    let changes = avail.observe(&s.read());
    assert_eq!(
        changes[0].unavailable,
        Some(Unavailable::Implausible(250.0))
    );

    std::fs::remove_file(root.join("sys/class/thermal/thermal_zone0/temp")).unwrap();
    assert_eq!(s.read().cpu_temp_c, Err(Unavailable::Missing));
    put(root, "sys/class/thermal/thermal_zone0/temp", "51000\n");
    put(root, "sys/class/power_supply/battery/capacity", "59\n");
    let changes = avail.observe(&s.read());
    assert!(
        changes.iter().all(|c| c.unavailable.is_none()),
        "{changes:?}"
    );
    assert_eq!(changes.len(), 2, "both recoveries reported");

    let j = to_json(
        &r,
        &Policy::new(&Default::default()).step(Instant::now(), &r),
        s.sources(),
    );
    assert_eq!(j["cpu_temp_c"], serde_json::Value::Null);
    assert_eq!(j["unavailable"]["cpu_temp"], "unparsable value");
    assert_eq!(j["unavailable"]["battery"], "implausible value 180");
}

#[test]
fn i2c_nack_after_probe_is_unavailable_not_a_crash() {
    let d = tempfile::tempdir().unwrap();
    put(
        d.path(),
        "dev/i2c-1",
        "0x36 0x08 0x0012\n0x36 0x02 0xc800\n0x36 0x04 0x3200\n0x36 0x16 0x0000\n",
    );
    let mut c = cfg_for(d.path());
    c.battery = vec![BatterySource::Max17048];
    let mut s = Sensors::probe(&c);
    assert_eq!(s.read().battery_percent(), Some(50.0));
    // The bus is loaded once at probe time; simulate the chip going silent by probing a
    // map whose version answers but whose data registers are missing.
    put(d.path(), "dev/i2c-1", "0x36 0x08 0x0012\n");
    let mut s = Sensors::probe(&c);
    assert!(matches!(
        s.read().battery,
        BatteryReading::Unavailable(Unavailable::Io(_))
    ));
}
