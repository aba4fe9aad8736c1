//! Home Assistant device discovery: one retained payload that describes the node's sensors,
//! all reading the health topic, with availability tied to the status topic.

use super::topics::Topics;
use serde_json::{Value, json};
use std::time::Duration;

pub fn payload(t: &Topics, node_id: &str, name: &str, board: &str, telemetry: Duration) -> Value {
    let uid = |s: &str| format!("ddc_{node_id}_{s}");
    // A sensor not refreshed for three reports shows as unavailable.
    let expire = (telemetry.as_secs() * 3).max(10);
    let measurement = |key: &str, label: &str, class: &str, unit: &str, template: &str| {
        json!({
            "p": "sensor",
            "name": label,
            "unique_id": uid(key),
            "device_class": class,
            "unit_of_measurement": unit,
            "state_class": "measurement",
            "value_template": template,
            "expire_after": expire,
        })
    };
    let display = if name.is_empty() {
        format!("ddc-edge {node_id}")
    } else {
        format!("ddc-edge {name}")
    };
    json!({
        "dev": {
            "ids": [format!("ddc_{node_id}")],
            "name": display,
            "mf": "ddc-edge",
            "mdl": board,
            "sw": env!("CARGO_PKG_VERSION"),
        },
        "o": {"name": "ddc-edge", "sw": env!("CARGO_PKG_VERSION")},
        "state_topic": t.health,
        "availability_topic": t.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "cmps": {
            "cpu_temp": measurement("cpu_temp", "CPU temperature", "temperature", "°C",
                "{{ value_json.cpu_temp_c if value_json.cpu_temp_c is not none else 'unknown' }}"),
            "battery": measurement("battery", "Battery", "battery", "%",
                "{{ value_json.battery_percent if value_json.battery_percent is not none else 'unknown' }}"),
            "disk_used": measurement("disk_used", "Disk used", "data_size", "B", "{{ value_json.disk.used_bytes }}"),
            "disk_free": measurement("disk_free", "Disk free", "data_size", "B", "{{ value_json.disk.free_bytes }}"),
            "level": {
                "p": "sensor",
                "name": "Replication level",
                "unique_id": uid("level"),
                "device_class": "enum",
                "options": ["full", "reduced", "paused"],
                "value_template": "{{ value_json.level }}",
                "expire_after": expire,
            },
            "undervoltage": {
                "p": "binary_sensor",
                "name": "Under-voltage",
                "unique_id": uid("undervoltage"),
                "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.undervoltage else 'OFF' }}",
                "expire_after": expire,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_discovery_shape() {
        let t = Topics::new("ddc", "n1", "homeassistant");
        let p = payload(&t, "n1", "", "rpi4", Duration::from_secs(30));
        assert_eq!(p["dev"]["ids"][0], "ddc_n1");
        assert_eq!(p["state_topic"], "ddc/nodes/n1/health");
        assert_eq!(p["availability_topic"], "ddc/nodes/n1/status");
        let c = p["cmps"].as_object().unwrap();
        for k in [
            "cpu_temp",
            "battery",
            "level",
            "disk_used",
            "disk_free",
            "undervoltage",
        ] {
            assert!(c.contains_key(k), "{k}");
            assert!(c[k]["unique_id"].as_str().unwrap().starts_with("ddc_n1_"));
        }
        assert_eq!(c["undervoltage"]["device_class"], "problem");
        assert_eq!(c["cpu_temp"]["device_class"], "temperature");
        assert_eq!(c["battery"]["device_class"], "battery");
        assert_eq!(c["cpu_temp"]["expire_after"], 90);
    }
}
