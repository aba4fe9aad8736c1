//! The events a node publishes on `<prefix>/nodes/<id>/events` (docs/mqtt.md, "Events"):
//! one enum, so the contract is a type the compiler checks, and the subscriber side (a
//! test, a tool) parses the same type back.

use crate::store::quota::Counters;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    LevelChanged {
        from: String,
        to: String,
        reasons: Vec<String>,
    },
    SensorUnavailable {
        sensor: String,
        reason: String,
    },
    SensorAvailable {
        sensor: String,
    },
    /// The chunk was quarantined.
    ChunkCorrupt {
        id: String,
        size: u64,
    },
    /// Once when usage crosses 90 %; re-armed below 85 %.
    QuotaNearFull {
        used_bytes: u64,
        quota_bytes: u64,
    },
    /// A bug; corrected.
    StoreCounterDrift {
        counted: Counters,
        actual: Counters,
    },
    ScrubFinished {
        checked: u64,
        bytes: u64,
        /// The IDs of the chunks found corrupt (and quarantined).
        corrupt: Vec<String>,
    },
    ScrubFailed {
        error: String,
    },
    ReplicationPausedByOperator {
        paused: bool,
    },
    Draining {
        draining: bool,
    },
}

/// An event with the time it happened, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    #[serde(flatten)]
    pub event: Event,
    pub ts: u64,
}

impl Event {
    /// Whether the health message changes with this event, so it goes out at once.
    pub fn changes_health(&self) -> bool {
        matches!(
            self,
            Event::ReplicationPausedByOperator { .. } | Event::Draining { .. }
        )
    }

    /// The published payload, stamped `ts` (unix seconds).
    pub fn payload(self, ts: u64) -> Vec<u8> {
        serde_json::to_vec(&Stamped { event: self, ts }).expect("an event serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Every kind, as docs/mqtt.md's table lists it: the name and its fields.
    #[test]
    fn events_serialize_as_the_documented_contract() {
        let cases = [
            (
                Event::LevelChanged {
                    from: "full".into(),
                    to: "reduced".into(),
                    reasons: vec!["cpu 71.2 C".into()],
                },
                json!({"event": "level_changed", "from": "full", "to": "reduced", "reasons": ["cpu 71.2 C"]}),
            ),
            (
                Event::SensorUnavailable {
                    sensor: "battery".into(),
                    reason: "gone".into(),
                },
                json!({"event": "sensor_unavailable", "sensor": "battery", "reason": "gone"}),
            ),
            (
                Event::SensorAvailable {
                    sensor: "cpu_temp".into(),
                },
                json!({"event": "sensor_available", "sensor": "cpu_temp"}),
            ),
            (
                Event::ChunkCorrupt {
                    id: "ab".into(),
                    size: 3,
                },
                json!({"event": "chunk_corrupt", "id": "ab", "size": 3}),
            ),
            (
                Event::QuotaNearFull {
                    used_bytes: 9,
                    quota_bytes: 10,
                },
                json!({"event": "quota_near_full", "used_bytes": 9, "quota_bytes": 10}),
            ),
            (
                Event::StoreCounterDrift {
                    counted: Counters {
                        used_bytes: 10,
                        chunks: 1,
                    },
                    actual: Counters {
                        used_bytes: 20,
                        chunks: 2,
                    },
                },
                json!({"event": "store_counter_drift",
                       "counted": {"used_bytes": 10, "chunks": 1},
                       "actual": {"used_bytes": 20, "chunks": 2}}),
            ),
            (
                Event::ScrubFinished {
                    checked: 5,
                    bytes: 50,
                    corrupt: vec!["ab".into()],
                },
                json!({"event": "scrub_finished", "checked": 5, "bytes": 50, "corrupt": ["ab"]}),
            ),
            (
                Event::ScrubFailed { error: "io".into() },
                json!({"event": "scrub_failed", "error": "io"}),
            ),
            (
                Event::ReplicationPausedByOperator { paused: true },
                json!({"event": "replication_paused_by_operator", "paused": true}),
            ),
            (
                Event::Draining { draining: false },
                json!({"event": "draining", "draining": false}),
            ),
        ];
        for (event, mut want) in cases {
            want["ts"] = 1700000000u64.into();
            let bytes = event.clone().payload(1_700_000_000);
            let got: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(got, want);
            let back: Stamped = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back.event, event);
            assert_eq!(back.ts, 1_700_000_000);
        }
    }

    #[test]
    fn only_operator_state_changes_republish_health() {
        assert!(Event::Draining { draining: true }.changes_health());
        assert!(Event::ReplicationPausedByOperator { paused: false }.changes_health());
        assert!(
            !Event::ScrubFailed {
                error: String::new()
            }
            .changes_health()
        );
    }
}
