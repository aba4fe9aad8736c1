//! `ddc-edge sensors` against the fake sysfs trees in tests/fixtures/sysfs: the real
//! binary, the real parsing code, the JSON contract.

mod common;
use common::*;
use serde_json::Value;

fn sensors_json(args: &[&str]) -> Value {
    let mut all = vec!["sensors", "--config", "/dev/null", "--json"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(o.status.success(), "sensors {args:?}: {}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines().count(),
        1,
        "--json prints exactly one line: {out}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/sysfs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Every key of the contract is present with the right type.
fn assert_contract(j: &Value) {
    let num_or_null = |k: &str| assert!(j[k].is_number() || j[k].is_null(), "{k}: {}", j[k]);
    let bool_or_null = |k: &str| assert!(j[k].is_boolean() || j[k].is_null(), "{k}: {}", j[k]);
    num_or_null("cpu_temp_c");
    num_or_null("battery_percent");
    bool_or_null("on_battery");
    bool_or_null("undervoltage");
    assert!(
        ["full", "reduced", "paused"].contains(&j["level"].as_str().unwrap()),
        "{}",
        j["level"]
    );
    assert!(
        j["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_string)
    );
}

#[test]
fn pi4_on_mains() {
    let j = sensors_json(&["--sysfs-root", &fixture("pi4-mains")]);
    assert_contract(&j);
    assert_eq!(j["cpu_temp_c"], 48.3);
    assert_eq!(
        j["battery_percent"],
        Value::Null,
        "mains reports no battery, not 0 %"
    );
    assert_eq!(j["on_battery"], false);
    assert_eq!(j["undervoltage"], false);
    assert_eq!(j["throttled"]["undervoltage_occurred"], true);
    assert_eq!(j["level"], "full");
    assert_eq!(j["reasons"], serde_json::json!([]));
}

#[test]
fn pi5_on_a_battery_hat() {
    let j = sensors_json(&["--sysfs-root", &fixture("pi5-battery-hat")]);
    assert_contract(&j);
    assert_eq!(j["cpu_temp_c"], 62.4);
    assert_eq!(j["battery_percent"], 35.0);
    assert_eq!(j["on_battery"], true);
    assert_eq!(j["undervoltage"], false);
    assert_eq!(j["level"], "reduced");
    assert_eq!(
        j["reasons"],
        serde_json::json!(["on battery at 35 % < 40 %: reduced"])
    );
}

#[test]
fn pi5_with_a_max17048_on_a_fake_i2c_bus() {
    let j = sensors_json(&["--sysfs-root", &fixture("pi5-max17048-hat")]);
    assert_contract(&j);
    assert_eq!(j["battery_percent"], 18.5);
    assert_eq!(j["battery_voltage_v"], 4.0);
    assert_eq!(j["on_battery"], true);
    assert_eq!(j["undervoltage"], true);
    assert_eq!(j["level"], "paused");
    assert_eq!(j["sources"]["battery"], "max17048 at 0x36 on i2c-1");
}

#[test]
fn config_thresholds_change_the_level() {
    // 62.4 C: below the defaults, above a reduce threshold of 60 C.
    let j = sensors_json(&[
        "--sysfs-root",
        &fixture("pi5-battery-hat"),
        "--set",
        "throttle.reduce_temp_c=60",
        "--set",
        "sensors.battery=[\"none\"]",
    ]);
    assert_eq!(j["level"], "reduced");
    assert_eq!(j["battery_percent"], Value::Null);
    assert_eq!(
        j["reasons"],
        serde_json::json!(["cpu 62.4 C >= 60 C: reduced"])
    );
}

#[test]
fn an_empty_tree_is_unknown_not_an_error() {
    let d = tempfile::tempdir().unwrap();
    let j = sensors_json(&["--sysfs-root", d.path().to_str().unwrap()]);
    assert_contract(&j);
    assert_eq!(j["cpu_temp_c"], Value::Null);
    assert_eq!(j["undervoltage"], Value::Null);
    assert_eq!(
        j["level"], "full",
        "documented default for an unknown temperature"
    );
    let j = sensors_json(&[
        "--sysfs-root",
        d.path().to_str().unwrap(),
        "--set",
        "throttle.unknown_temp=reduced",
    ]);
    assert_eq!(j["level"], "reduced");
}

#[test]
fn human_output_names_the_level() {
    let o = run(&[
        "sensors",
        "--config",
        "/dev/null",
        "--sysfs-root",
        &fixture("pi5-battery-hat"),
    ]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("35.0 % discharging, 3.710 V"), "{out}");
    assert!(
        out.contains("reduced (replication at 25 % of its budget)"),
        "{out}"
    );
}
