//! Checks that types alone cannot express: ranges, orderings between keys, and values that
//! would make the agent misbehave quietly (a pause threshold below the reduce threshold, a
//! zero quota). Each failure names the one key an operator should change.

use super::Config;
use crate::boards::KNOWN_TARGETS;
use crate::units::HumanDuration;
use std::time::Duration;

type Problem = (String, String);

fn fail(key: &str, msg: impl Into<String>) -> Result<(), Problem> {
    Err((key.to_string(), msg.into()))
}

fn range(key: &str, v: f64, lo: f64, hi: f64, what: &str) -> Result<(), Problem> {
    if !(lo..=hi).contains(&v) || v.is_nan() {
        return fail(
            key,
            format!("expected {what} between {lo} and {hi}, got {v}"),
        );
    }
    Ok(())
}

impl Config {
    /// Returns the first problem as (key path, message).
    pub fn validate(&self) -> Result<(), Problem> {
        let b = &self.board;
        if !KNOWN_TARGETS.contains(&b.target.as_str()) {
            return fail(
                "board.target",
                format!(
                    "expected one of {}, got {:?}",
                    KNOWN_TARGETS.join(", "),
                    b.target
                ),
            );
        }

        let log = &self.node.log;
        if log.trim().is_empty() || tracing_subscriber::EnvFilter::try_new(log).is_err() {
            return fail(
                "node.log",
                format!(
                    "expected a log level like \"info\" or a filter like \"ddc_edge=debug\", got {log:?}"
                ),
            );
        }

        let s = &self.storage;
        if s.data_dir.as_os_str().is_empty() {
            return fail(
                "storage.data_dir",
                "expected a directory path, got an empty string",
            );
        }
        if s.quota.0 == 0 {
            return fail(
                "storage.quota",
                "expected a size above zero (the disk offered to the network)",
            );
        }

        let cs = s.chunk_size.0;
        if !(4096..=crate::store::HARD_MAX_CHUNK).contains(&cs) {
            return fail(
                "storage.chunk_size",
                format!("expected between 4KiB and 4MiB, got {}", s.chunk_size),
            );
        }
        if s.gc_interval.0 < Duration::from_secs(1) {
            return fail(
                "storage.gc_interval",
                format!("expected at least 1s, got {}", s.gc_interval),
            );
        }
        if s.upload_grace.0 < Duration::from_secs(1) {
            return fail(
                "storage.upload_grace",
                format!(
                    "expected at least 1s (a client needs time to send its manifest), got {}",
                    s.upload_grace
                ),
            );
        }

        let n = &self.sensors;
        if n.sysfs_root.as_os_str().is_empty() {
            return fail(
                "sensors.sysfs_root",
                "expected a directory path (\"/\" on a real board)",
            );
        }
        let iv = n.interval.0;
        if iv < Duration::from_millis(100) || iv > Duration::from_secs(3600) {
            return fail(
                "sensors.interval",
                format!("expected between 100ms and 1h, got {}", n.interval),
            );
        }
        if n.battery.is_empty() {
            return fail(
                "sensors.battery",
                "expected at least one source; use [\"none\"] for a board on mains",
            );
        }
        if !(0x03..=0x77).contains(&n.ina219_address) {
            return fail(
                "sensors.ina219_address",
                format!(
                    "expected a 7-bit I2C address 0x03-0x77, got {:#04x}",
                    n.ina219_address
                ),
            );
        }
        if !(1..=2).contains(&n.ina219_cells) {
            return fail(
                "sensors.ina219_cells",
                format!("expected 1 or 2 cells, got {}", n.ina219_cells),
            );
        }

        let t = &self.throttle;
        range(
            "throttle.reduce_temp_c",
            t.reduce_temp_c,
            30.0,
            110.0,
            "a temperature in C",
        )?;
        range(
            "throttle.pause_temp_c",
            t.pause_temp_c,
            30.0,
            110.0,
            "a temperature in C",
        )?;
        if t.pause_temp_c <= t.reduce_temp_c {
            return fail(
                "throttle.pause_temp_c",
                format!(
                    "must be above throttle.reduce_temp_c ({}), got {}",
                    t.reduce_temp_c, t.pause_temp_c
                ),
            );
        }
        range(
            "throttle.temp_hysteresis_c",
            t.temp_hysteresis_c,
            0.5,
            30.0,
            "degrees",
        )?;
        range(
            "throttle.battery_reduce_percent",
            t.battery_reduce_percent,
            0.0,
            100.0,
            "a percentage",
        )?;
        range(
            "throttle.battery_pause_percent",
            t.battery_pause_percent,
            0.0,
            100.0,
            "a percentage",
        )?;
        if t.battery_pause_percent >= t.battery_reduce_percent {
            return fail(
                "throttle.battery_pause_percent",
                format!(
                    "must be below throttle.battery_reduce_percent ({}), got {}",
                    t.battery_reduce_percent, t.battery_pause_percent
                ),
            );
        }
        range(
            "throttle.battery_hysteresis_percent",
            t.battery_hysteresis_percent,
            0.0,
            50.0,
            "points",
        )?;
        if t.dwell.0 > Duration::from_secs(24 * 3600) {
            return fail(
                "throttle.dwell",
                format!("expected at most 24h, got {}", t.dwell),
            );
        }
        if !(t.reduced_factor > 0.0 && t.reduced_factor < 1.0) {
            return fail(
                "throttle.reduced_factor",
                format!(
                    "expected a fraction above 0 and below 1, got {}",
                    t.reduced_factor
                ),
            );
        }

        if !(1..=crate::throttle::MAX_SMOOTHING as u8).contains(&t.smoothing_samples) {
            return fail(
                "throttle.smoothing_samples",
                format!(
                    "expected 1 to {}, got {}",
                    crate::throttle::MAX_SMOOTHING,
                    t.smoothing_samples
                ),
            );
        }

        let m = &self.mqtt;
        let p = &m.topic_prefix;
        if p.is_empty() || p.contains(['+', '#', '\0']) || p.starts_with('/') || p.ends_with('/') {
            return fail(
                "mqtt.topic_prefix",
                format!(
                    "expected topic levels without wildcards or leading/trailing '/', got {p:?}"
                ),
            );
        }
        let ka = m.keep_alive.0;
        if ka < Duration::from_secs(5) || ka > Duration::from_secs(3600) {
            return fail(
                "mqtt.keep_alive",
                format!("expected between 5s and 1h, got {}", m.keep_alive),
            );
        }
        if !m.password.is_empty() && !m.password_file.as_os_str().is_empty() {
            return fail(
                "mqtt.password_file",
                "expected either mqtt.password or mqtt.password_file, not both",
            );
        }
        let iv = self.telemetry.interval.0;
        if iv < Duration::from_secs(1) || iv > Duration::from_secs(3600) {
            return fail(
                "telemetry.interval",
                format!(
                    "expected between 1s and 1h, got {}",
                    self.telemetry.interval
                ),
            );
        }

        let c = &self.control;
        if let Some(v) = c
            .allowed_verbs
            .iter()
            .find(|v| !crate::control::command::VERBS.contains(&v.as_str()))
        {
            return fail(
                "control.allowed_verbs",
                format!(
                    "unknown verb {v:?}; known: {}",
                    crate::control::command::VERBS.join(", ")
                ),
            );
        }
        if let Some(k) = c
            .operators
            .iter()
            .find(|k| k.len() != 64 || hex::decode(k).is_err())
        {
            return fail(
                "control.operators",
                format!("expected public keys as 64 hex characters, got {k:?}"),
            );
        }
        if c.max_age.0 < Duration::from_secs(1) || c.max_age.0 > Duration::from_secs(24 * 3600) {
            return fail(
                "control.max_age",
                format!("expected between 1s and 24h, got {}", c.max_age),
            );
        }

        let w = &self.webrtc;
        let whole = |key: &str, v: u64, lo: u64, hi: u64| -> Result<(), Problem> {
            if !(lo..=hi).contains(&v) {
                return fail(key, format!("expected {lo} to {hi}, got {v}"));
            }
            Ok(())
        };
        whole("webrtc.max_peers", w.max_peers as u64, 1, 256)?;
        whole("webrtc.max_inflight", w.max_inflight as u64, 1, 64)?;
        if !(16 << 10..=256 << 10).contains(&w.max_message.0) {
            return fail(
                "webrtc.max_message",
                format!("expected between 16KiB and 256KiB, got {}", w.max_message),
            );
        }
        if w.send_buffer.0 < w.max_message.0 || w.send_buffer.0 > 64 << 20 {
            return fail(
                "webrtc.send_buffer",
                format!(
                    "expected between webrtc.max_message ({}) and 64MiB, got {}",
                    w.max_message, w.send_buffer
                ),
            );
        }
        for (key, d) in [
            ("webrtc.idle_timeout", w.idle_timeout),
            ("webrtc.connect_timeout", w.connect_timeout),
            ("webrtc.request_timeout", w.request_timeout),
        ] {
            if d.0 < Duration::from_secs(1) {
                return fail(key, format!("expected at least 1s, got {d}"));
            }
        }
        let ms = Duration::from_millis;
        for (key, d, lo, hi) in [
            ("webrtc.sctp_rto_min", w.sctp_rto_min, ms(50), ms(5000)),
            (
                "webrtc.sctp_rto_initial",
                w.sctp_rto_initial,
                w.sctp_rto_min.0,
                w.sctp_rto_max.0,
            ),
            (
                "webrtc.sctp_rto_max",
                w.sctp_rto_max,
                w.sctp_rto_min.0,
                ms(60_000),
            ),
            (
                "webrtc.dtls_retransmit",
                w.dtls_retransmit,
                ms(50),
                ms(5000),
            ),
        ] {
            if !(lo..=hi).contains(&d.0) {
                return fail(
                    key,
                    format!(
                        "expected between {} and {}, got {d}",
                        HumanDuration(lo),
                        HumanDuration(hi)
                    ),
                );
            }
        }
        for (i, server) in w.ice_servers.iter().enumerate() {
            let key = format!("webrtc.ice_servers[{i}]");
            if server.urls.is_empty() {
                return fail(&key, "has no urls".to_string());
            }
            for u in &server.urls {
                if !["stun:", "stuns:", "turn:", "turns:"]
                    .iter()
                    .any(|s| u.starts_with(s))
                {
                    return fail(
                        &key,
                        format!("url {u:?} must start with stun:, stuns:, turn: or turns:"),
                    );
                }
            }
            if !server.secret.is_empty()
                && (!server.username.is_empty() || !server.credential.is_empty())
            {
                return fail(
                    &key,
                    "set either secret (TURN REST credentials) or username and credential, not both"
                        .to_string(),
                );
            }
            if let Some(ttl) = server.credential_ttl
                && !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400)).contains(&ttl.0)
            {
                return fail(
                    &format!("{key}.credential_ttl"),
                    format!("expected between 1m and 7d, got {ttl}"),
                );
            }
        }

        let f = &self.fleet;
        if !f.ca.is_empty()
            && let Err(e) = crate::fleet::parse_ca(&f.ca)
        {
            return fail("fleet.ca", e);
        }
        if !f.cert.is_empty()
            && let Err(e) = crate::fleet::Cert::parse(&f.cert)
        {
            return fail("fleet.cert", e);
        }

        let r = &self.replication;
        whole("replication.factor", r.factor as u64, 1, 8)?;
        if r.max_factor < r.factor || r.max_factor > 8 {
            return fail(
                "replication.max_factor",
                format!(
                    "expected between replication.factor ({}) and 8, got {}",
                    r.factor, r.max_factor
                ),
            );
        }
        if r.anti_entropy_interval.0 < Duration::from_secs(1) {
            return fail(
                "replication.anti_entropy_interval",
                format!("expected at least 1s, got {}", r.anti_entropy_interval),
            );
        }
        whole("replication.queue_max", r.queue_max as u64, 1, 10_000_000)?;

        let m = &self.metrics;
        if !m.listen.trim().is_empty() && m.listen_addr().is_none() {
            return fail(
                "metrics.listen",
                format!(
                    "expected an address like \"127.0.0.1:9464\" (or \"\" for no endpoint), got {:?}",
                    m.listen
                ),
            );
        }
        if let Some(a) = m.listen_addr()
            && self.web.enabled
            && a == self.web.listen
        {
            return fail(
                "metrics.listen",
                format!("{a} is also web.listen; give the metrics a port of their own"),
            );
        }
        Ok(())
    }
}
