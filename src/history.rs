//! The last hour of a node's health, for the page's charts: a fixed ring of samples taken
//! from the health messages the node publishes, served as one retained, compact message
//! (`<prefix>/nodes/<id>/history`, docs/mqtt.md).
//!
//! Pure: it is told the time and the health message (typed, as built), keeps no clock
//! and does no I/O. The ring is a `heapless::HistoryBuf`, so its memory is fixed (about
//! 4 KiB) whatever the uptime, and a sample costs no allocation on a board that publishes
//! health for years.

use crate::mqtt::health::Health;
use heapless::HistoryBuf;
use serde_json::{Value, json};

/// Samples kept: an hour at the default `telemetry.interval` of 30 s.
pub const SAMPLES: usize = 120;
/// The history message goes out every this many samples (5 minutes at the default
/// interval), and with the first one. Between them the page appends the live health it
/// receives anyway, so it costs a fleet of 1,000 nodes ~60 KiB per node per hour.
pub const PUBLISH_EVERY: u32 = 10;

/// One point of the charts. Rates are over the time since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    t: u64,
    cpu_temp_c: Option<f32>,
    battery_percent: Option<f32>,
    level: Level,
    /// Replication traffic in both directions (pulled and served), bytes per second.
    replication_bps: Option<u64>,
    /// Data-plane bytes sent to peers and clients, bytes per second.
    egress_bps: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Full,
    Reduced,
    Paused,
    Unknown,
}

impl Level {
    fn of(s: &str) -> Level {
        match s {
            "full" => Level::Full,
            "reduced" => Level::Reduced,
            "paused" => Level::Paused,
            _ => Level::Unknown,
        }
    }

    fn as_json(self) -> Value {
        match self {
            Level::Full => "full".into(),
            Level::Reduced => "reduced".into(),
            Level::Paused => "paused".into(),
            Level::Unknown => Value::Null,
        }
    }
}

/// The counters the rates are computed from, as of the last sample.
#[derive(Debug, Clone, Copy)]
struct Counters {
    t: u64,
    replication_bytes: Option<u64>,
    egress_bytes: Option<u64>,
}

pub struct History {
    samples: HistoryBuf<Sample, SAMPLES>,
    last: Option<Counters>,
    since_publish: u32,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            samples: HistoryBuf::new(),
            last: None,
            since_publish: 0,
        }
    }

    /// Takes a sample from the health message `health` published at unix time `now`.
    /// Returns whether the history message is due.
    pub fn record(&mut self, now: u64, health: &Health) -> bool {
        let f32_of = |v: Option<f64>| v.filter(|x| x.is_finite()).map(|x| x as f32);
        let counters = Counters {
            t: now,
            replication_bytes: health
                .replication
                .stats
                .as_ref()
                .map(|r| r.pulled_bytes.saturating_add(r.served_bytes)),
            egress_bytes: health.dataplane.as_ref().map(|d| d.egress_bytes),
        };
        // A rate needs an earlier sample, time between them and a counter that did not go
        // back (it does when the agent restarts; the ring does not survive that either).
        let rate =
            |now_v: Option<u64>, then: Option<Counters>, pick: fn(&Counters) -> Option<u64>| {
                let then = then?;
                let dt = now.checked_sub(then.t).filter(|&d| d > 0)?;
                Some(now_v?.checked_sub(pick(&then)?)? / dt)
            };
        let sample = Sample {
            t: now,
            cpu_temp_c: f32_of(health.cpu_temp_c),
            battery_percent: f32_of(health.battery_percent),
            level: Level::of(&health.level),
            replication_bps: rate(counters.replication_bytes, self.last, |c| {
                c.replication_bytes
            }),
            egress_bps: rate(counters.egress_bytes, self.last, |c| c.egress_bytes),
        };
        self.last = Some(counters);
        self.samples.write(sample);
        let due = self.since_publish == 0;
        self.since_publish = (self.since_publish + 1) % PUBLISH_EVERY;
        due
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The history message: one array per series, oldest first, `null` where a figure
    /// was unknown (docs/mqtt.md, "History").
    pub fn message(&self, node_id: &str, interval_s: u64) -> Value {
        let s: Vec<&Sample> = self.samples.oldest_ordered().collect();
        let round1 = |v: Option<f32>| v.map(|x| (f64::from(x) * 10.0).round() / 10.0);
        json!({
            "node_id": node_id,
            "interval_s": interval_s,
            "t": s.iter().map(|x| x.t).collect::<Vec<_>>(),
            "cpu_temp_c": s.iter().map(|x| round1(x.cpu_temp_c)).collect::<Vec<_>>(),
            "battery_percent": s.iter().map(|x| round1(x.battery_percent)).collect::<Vec<_>>(),
            "level": s.iter().map(|x| x.level.as_json()).collect::<Vec<_>>(),
            "replication_bps": s.iter().map(|x| x.replication_bps).collect::<Vec<_>>(),
            "egress_bps": s.iter().map(|x| x.egress_bps).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(temp: Option<f64>, level: &str, pulled: u64, served: u64, egress: u64) -> Health {
        use crate::mqtt::health::{Dataplane, Replication, ReplicationStats};
        Health {
            cpu_temp_c: temp,
            level: level.into(),
            replication: Replication {
                stats: Some(ReplicationStats {
                    pulled_bytes: pulled,
                    served_bytes: served,
                    ..Default::default()
                }),
                ..Default::default()
            },
            dataplane: Some(Dataplane {
                egress_bytes: egress,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn samples_become_series_with_rates_from_the_counters() {
        let mut h = History::new();
        assert!(h.record(1000, &health(Some(51.26), "full", 0, 0, 0)));
        assert!(!h.record(1030, &health(Some(70.0), "reduced", 3000, 0, 60_000)));
        assert!(!h.record(1060, &health(None, "paused", 3000, 900, 60_000)));
        let m = h.message("n1", 30);
        assert_eq!(m["t"], json!([1000, 1030, 1060]));
        assert_eq!(m["cpu_temp_c"], json!([51.3, 70.0, null]));
        assert_eq!(m["level"], json!(["full", "reduced", "paused"]));
        assert_eq!(m["replication_bps"], json!([null, 100, 30]));
        assert_eq!(m["egress_bps"], json!([null, 2000, 0]));
        assert_eq!(m["battery_percent"], json!([null, null, null]));
        assert_eq!(m["interval_s"], 30);
    }

    #[test]
    fn the_ring_keeps_the_last_hour_and_publishes_every_tenth_sample() {
        let mut h = History::new();
        let mut due = Vec::new();
        for i in 0..(SAMPLES as u64 + 25) {
            if h.record(i * 30, &health(Some(40.0), "full", i, i, i)) {
                due.push(i);
            }
        }
        assert_eq!(h.len(), SAMPLES);
        let m = h.message("n", 30);
        let t = m["t"].as_array().unwrap();
        assert_eq!(t.len(), SAMPLES);
        assert_eq!(t[0], 25 * 30, "oldest first, the first 25 gone");
        assert_eq!(t[SAMPLES - 1], (SAMPLES as u64 + 24) * 30);
        assert_eq!(&due[..3], &[0, 10, 20]);
        assert_eq!(due.len(), (SAMPLES + 25).div_ceil(PUBLISH_EVERY as usize));
    }

    /// A restarted counter, a clock that went back, a missing subsystem or a figure that
    /// is not a number give no rate and no nonsense, never a panic.
    #[test]
    fn odd_figures_give_no_rate_rather_than_a_wrong_one() {
        let mut h = History::new();
        h.record(100, &health(Some(40.0), "full", 5000, 0, 5000));
        h.record(130, &health(Some(40.0), "full", 10, 0, 10)); // restarted counters
        h.record(130, &health(Some(40.0), "full", 20, 0, 20)); // no time passed
        h.record(90, &health(Some(40.0), "full", 30, 0, 30)); // clock went back
        // No replicator (factor 1), no data plane, a figure that is not a number.
        h.record(
            120,
            &Health {
                cpu_temp_c: Some(f64::NAN),
                level: "hot".into(),
                ..Default::default()
            },
        );
        let m = h.message("n", 30);
        assert_eq!(m["replication_bps"], json!([null, null, null, null, null]));
        assert_eq!(m["egress_bps"], json!([null, null, null, null, null]));
        assert_eq!(m["cpu_temp_c"][4], Value::Null);
        assert_eq!(m["level"][4], Value::Null);
    }

    /// The page and any subscriber bound what they take (docs/mqtt.md, "Size limits"):
    /// a full ring with the widest figures stays within the topic's limit.
    #[test]
    fn a_full_ring_fits_the_topics_size_limit() {
        let mut h = History::new();
        for i in 0..SAMPLES as u64 {
            // Counters that grow by ~9e16 bytes a second: 17-digit rates.
            let big = (u64::MAX / 200) * i;
            let mut v = health(Some(-123.4), "reduced", big, 0, big);
            v.battery_percent = Some(100.0);
            h.record(u64::from(u32::MAX) * 1000 + i, &v);
        }
        let bytes = serde_json::to_vec(&h.message(&"f".repeat(64), 30)).unwrap();
        let limit = crate::mqtt::topics::payload_limit("ddc/nodes/x/history");
        assert!(bytes.len() <= limit, "{} bytes, limit {limit}", bytes.len());
        eprintln!("a full history message: {} bytes", bytes.len());
    }
}
