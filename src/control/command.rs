//! Parsing and screening fleet commands. Pure: told the payload, whether the broker
//! delivered it as retained, and the time; returns what to do.
//!
//! A command is `{"id": "<string>", "cmd": "<verb>", "args": {...}, "ts": <unix s>}`
//! (`args` and `ts` optional). Screening, in order:
//! 1. retained deliveries are ignored, so a retained `pause` can never replay forever;
//! 2. payloads that are not a JSON object with a non-empty string `id` are ignored (no
//!    one to answer) and logged by the caller;
//! 3. an `id` seen recently is ignored (ids are single-use; the last 256 are kept);
//! 4. oversized payloads, commands older than `control.max_age` (by `ts`), unknown verbs,
//!    verbs not in `control.allowed_verbs` and bad arguments get an error reply.

use crate::throttle::Level;
use serde_json::{Map, Value, json};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// Every verb the agent knows.
pub const VERBS: &[&str] = &[
    "ping",
    "status",
    "pause_replication",
    "resume_replication",
    "set_limits",
    "force_level",
    "clear_level",
    "scrub",
    "drain",
    "undrain",
];

/// Runtime limits; each `None` leaves that limit unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub egress_bps: Option<u64>,
    pub ingress_bps: Option<u64>,
    pub quota_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verb {
    Ping,
    Status,
    PauseReplication,
    ResumeReplication,
    SetLimits(Limits),
    ForceLevel {
        level: Level,
        ttl: Duration,
        over_sensors: bool,
    },
    ClearLevel,
    Scrub,
    Drain,
    Undrain,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub verb: Verb,
}

/// A reply for `<prefix>/nodes/<id>/reply`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: String,
    pub result: Result<Value, ErrorReply>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub code: &'static str,
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: &'static str, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

impl Reply {
    pub fn to_json(&self) -> Value {
        match &self.result {
            Ok(v) => json!({"id": self.id, "ok": true, "result": v}),
            Err(e) => {
                json!({"id": self.id, "ok": false, "error": {"code": e.code, "message": e.message}})
            }
        }
    }
}

/// What to do with one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Execute(Command),
    /// Answer with an error and do nothing else.
    Reject(Reply),
    /// Do nothing; the reason is for the log.
    Ignore(String),
}

/// Screening state: the policy and the ids already seen.
#[derive(Debug)]
pub struct Inbox {
    allowed: HashSet<String>,
    max_age: Duration,
    max_payload: usize,
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
}

const REMEMBERED_IDS: usize = 256;
const MAX_ID_LEN: usize = 128;
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Inbox {
    pub fn new(allowed: &[String], max_age: Duration, max_payload: usize) -> Inbox {
        Inbox {
            allowed: allowed.iter().cloned().collect(),
            max_age,
            max_payload,
            seen: VecDeque::with_capacity(REMEMBERED_IDS),
            seen_set: HashSet::new(),
        }
    }

    pub fn accept(&mut self, payload: &[u8], retained: bool, now_unix: u64) -> Outcome {
        if retained {
            return Outcome::Ignore(
                "retained command (a command is acted on once, when sent)".into(),
            );
        }
        let obj = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Outcome::Ignore("command is not a JSON object".into()),
            Err(e) => return Outcome::Ignore(format!("command is not JSON: {e}")),
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => s.clone(),
            Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
                return Outcome::Ignore(format!("command id longer than {MAX_ID_LEN} characters"));
            }
            _ => return Outcome::Ignore("command has no string \"id\"".into()),
        };
        if self.seen_set.contains(&id) {
            return Outcome::Ignore(format!("duplicate command id {id:?}"));
        }
        self.remember(&id);
        let reject = |code, message: String| {
            Outcome::Reject(Reply {
                id: id.clone(),
                result: Err(ErrorReply::new(code, message)),
            })
        };

        if payload.len() > self.max_payload {
            return reject(
                "too_large",
                format!(
                    "command is {} bytes; the limit is {} (control.max_payload)",
                    payload.len(),
                    self.max_payload
                ),
            );
        }
        match obj.get("ts") {
            None => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                let ts = n.as_u64().unwrap_or(0);
                let age = now_unix.saturating_sub(ts);
                if age > self.max_age.as_secs() {
                    return reject(
                        "expired",
                        format!(
                            "command is {age} s old; commands older than {} s are ignored (control.max_age)",
                            self.max_age.as_secs()
                        ),
                    );
                }
            }
            Some(other) => {
                return reject(
                    "bad_request",
                    format!("ts: expected unix seconds, got {other}"),
                );
            }
        }
        let verb_name = match obj.get("cmd") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return reject(
                    "bad_request",
                    format!("cmd: expected a string, got {other}"),
                );
            }
            None => return reject("bad_request", "missing \"cmd\"".into()),
        };
        if !VERBS.contains(&verb_name) {
            return reject(
                "unknown_verb",
                format!("unknown cmd {verb_name:?}; known: {}", VERBS.join(", ")),
            );
        }
        if !self.allowed.contains(verb_name) {
            return reject(
                "forbidden",
                format!("{verb_name:?} is switched off on this node (control.allowed_verbs)"),
            );
        }
        let empty = Map::new();
        let args = match obj.get("args") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(a)) => a,
            Some(other) => {
                return reject("bad_args", format!("args: expected an object, got {other}"));
            }
        };
        match parse_verb(verb_name, args) {
            Ok(verb) => Outcome::Execute(Command { id, verb }),
            Err(msg) => reject("bad_args", msg),
        }
    }

    fn remember(&mut self, id: &str) {
        if self.seen.len() == REMEMBERED_IDS
            && let Some(old) = self.seen.pop_front()
        {
            self.seen_set.remove(&old);
        }
        self.seen.push_back(id.to_string());
        self.seen_set.insert(id.to_string());
    }
}

fn parse_verb(verb: &str, args: &Map<String, Value>) -> Result<Verb, String> {
    let allow = |keys: &[&str]| -> Result<(), String> {
        match args.keys().find(|k| !keys.contains(&k.as_str())) {
            Some(k) if keys.is_empty() => Err(format!("args.{k}: {verb} takes no arguments")),
            Some(k) => Err(format!(
                "args.{k}: unknown argument; {verb} takes {}",
                keys.join(", ")
            )),
            None => Ok(()),
        }
    };
    let uint = |key: &str| -> Result<Option<u64>, String> {
        match args.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
            Some(other) => Err(format!(
                "args.{key}: expected a non-negative integer, got {other}"
            )),
        }
    };
    Ok(match verb {
        "ping" | "status" | "pause_replication" | "resume_replication" | "clear_level"
        | "scrub" | "drain" | "undrain" => {
            allow(&[])?;
            match verb {
                "ping" => Verb::Ping,
                "status" => Verb::Status,
                "pause_replication" => Verb::PauseReplication,
                "resume_replication" => Verb::ResumeReplication,
                "clear_level" => Verb::ClearLevel,
                "scrub" => Verb::Scrub,
                "drain" => Verb::Drain,
                _ => Verb::Undrain,
            }
        }
        "set_limits" => {
            allow(&["egress_bps", "ingress_bps", "quota_bytes"])?;
            let l = Limits {
                egress_bps: uint("egress_bps")?,
                ingress_bps: uint("ingress_bps")?,
                quota_bytes: uint("quota_bytes")?,
            };
            if l == Limits::default() {
                return Err(
                    "set_limits needs at least one of egress_bps, ingress_bps, quota_bytes".into(),
                );
            }
            if l.quota_bytes == Some(0) {
                return Err("args.quota_bytes: must be above zero".into());
            }
            Verb::SetLimits(l)
        }
        "force_level" => {
            allow(&["level", "ttl_s", "over_sensors"])?;
            let level = match args.get("level") {
                Some(Value::String(s)) => {
                    s.parse::<Level>().map_err(|e| format!("args.level: {e}"))?
                }
                Some(other) => {
                    return Err(format!(
                        "args.level: expected \"full\", \"reduced\" or \"paused\", got {other}"
                    ));
                }
                None => return Err("args.level: required".into()),
            };
            let ttl = match uint("ttl_s")? {
                Some(0) | None => {
                    return Err("args.ttl_s: required, a number of seconds above zero".into());
                }
                Some(s) if Duration::from_secs(s) > MAX_TTL => {
                    return Err(format!(
                        "args.ttl_s: at most {} (7 days), got {s}",
                        MAX_TTL.as_secs()
                    ));
                }
                Some(s) => Duration::from_secs(s),
            };
            let over_sensors = match args.get("over_sensors") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(format!(
                        "args.over_sensors: expected true or false, got {other}"
                    ));
                }
            };
            Verb::ForceLevel {
                level,
                ttl,
                over_sensors,
            }
        }
        _ => unreachable!("checked against VERBS"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> Inbox {
        let all: Vec<String> = VERBS.iter().map(|s| s.to_string()).collect();
        Inbox::new(&all, Duration::from_secs(60), 8192)
    }

    fn error_code(o: &Outcome) -> &'static str {
        match o {
            Outcome::Reject(r) => r.result.as_ref().unwrap_err().code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn every_verb_parses() {
        let mut i = inbox();
        let cases = [
            (r#"{"id":"1","cmd":"ping"}"#, Verb::Ping),
            (r#"{"id":"2","cmd":"status","args":{}}"#, Verb::Status),
            (
                r#"{"id":"3","cmd":"pause_replication"}"#,
                Verb::PauseReplication,
            ),
            (
                r#"{"id":"4","cmd":"resume_replication"}"#,
                Verb::ResumeReplication,
            ),
            (
                r#"{"id":"5","cmd":"set_limits","args":{"egress_bps":1000,"quota_bytes":5}}"#,
                Verb::SetLimits(Limits {
                    egress_bps: Some(1000),
                    ingress_bps: None,
                    quota_bytes: Some(5),
                }),
            ),
            (
                r#"{"id":"6","cmd":"force_level","args":{"level":"paused","ttl_s":60}}"#,
                Verb::ForceLevel {
                    level: Level::Paused,
                    ttl: Duration::from_secs(60),
                    over_sensors: false,
                },
            ),
            (r#"{"id":"7","cmd":"clear_level"}"#, Verb::ClearLevel),
            (r#"{"id":"8","cmd":"scrub"}"#, Verb::Scrub),
            (r#"{"id":"9","cmd":"drain"}"#, Verb::Drain),
            (r#"{"id":"10","cmd":"undrain"}"#, Verb::Undrain),
        ];
        for (payload, want) in cases {
            match i.accept(payload.as_bytes(), false, 1000) {
                Outcome::Execute(c) => assert_eq!(c.verb, want, "{payload}"),
                other => panic!("{payload}: {other:?}"),
            }
        }
    }

    #[test]
    fn screening() {
        let mut i = inbox();
        let now = 1_000_000;
        assert!(matches!(
            i.accept(br#"{"id":"r","cmd":"pause_replication"}"#, true, now),
            Outcome::Ignore(_)
        ));
        assert!(matches!(
            i.accept(b"not json", false, now),
            Outcome::Ignore(_)
        ));
        assert!(matches!(i.accept(b"[1,2]", false, now), Outcome::Ignore(_)));
        assert!(matches!(
            i.accept(br#"{"cmd":"ping"}"#, false, now),
            Outcome::Ignore(_)
        ));
        assert!(matches!(
            i.accept(br#"{"id":5,"cmd":"ping"}"#, false, now),
            Outcome::Ignore(_)
        ));
        assert!(matches!(
            i.accept(br#"{"id":"a","cmd":"ping"}"#, false, now),
            Outcome::Execute(_)
        ));
        assert!(
            matches!(i.accept(br#"{"id":"a","cmd":"ping"}"#, false, now), Outcome::Ignore(r) if r.contains("duplicate"))
        );
        assert_eq!(
            error_code(&i.accept(br#"{"id":"b","cmd":"reboot"}"#, false, now)),
            "unknown_verb"
        );
        assert_eq!(
            error_code(&i.accept(br#"{"id":"c"}"#, false, now)),
            "bad_request"
        );
        assert_eq!(
            error_code(&i.accept(br#"{"id":"d","cmd":"ping","ts":999000}"#, false, now)),
            "expired"
        );
        assert!(matches!(
            i.accept(br#"{"id":"e","cmd":"ping","ts":999990}"#, false, now),
            Outcome::Execute(_)
        ));
        let big = format!(r#"{{"id":"f","cmd":"ping","pad":"{}"}}"#, "x".repeat(9000));
        assert_eq!(
            error_code(&i.accept(big.as_bytes(), false, now)),
            "too_large"
        );
        let mut limited = Inbox::new(&["ping".to_string()], Duration::from_secs(60), 8192);
        assert_eq!(
            error_code(&limited.accept(br#"{"id":"g","cmd":"drain"}"#, false, now)),
            "forbidden"
        );
    }

    #[test]
    fn bad_arguments_name_the_argument() {
        let mut i = inbox();
        let cases = [
            (
                r#"{"id":"1","cmd":"set_limits","args":{"egress_bps":"fast"}}"#,
                "args.egress_bps: expected a non-negative integer",
            ),
            (
                r#"{"id":"2","cmd":"set_limits","args":{"egress_bps":-5}}"#,
                "args.egress_bps: expected a non-negative integer",
            ),
            (
                r#"{"id":"3","cmd":"set_limits","args":{"quota_bytes":0}}"#,
                "args.quota_bytes: must be above zero",
            ),
            (
                r#"{"id":"4","cmd":"set_limits","args":{}}"#,
                "needs at least one of",
            ),
            (
                r#"{"id":"5","cmd":"set_limits","args":{"egres_bps":1}}"#,
                "args.egres_bps: unknown argument",
            ),
            (
                r#"{"id":"6","cmd":"force_level","args":{"level":"hot","ttl_s":5}}"#,
                "args.level: expected",
            ),
            (
                r#"{"id":"7","cmd":"force_level","args":{"level":"full"}}"#,
                "args.ttl_s: required",
            ),
            (
                r#"{"id":"8","cmd":"force_level","args":{"level":"full","ttl_s":5,"over_sensors":"yes"}}"#,
                "args.over_sensors",
            ),
            (
                r#"{"id":"9","cmd":"ping","args":{"x":1}}"#,
                "args.x: ping takes no arguments",
            ),
            (
                r#"{"id":"10","cmd":"ping","args":[1]}"#,
                "args: expected an object",
            ),
        ];
        for (payload, want) in cases {
            match i.accept(payload.as_bytes(), false, 0) {
                Outcome::Reject(r) => {
                    let e = r.result.unwrap_err();
                    assert_eq!(e.code, "bad_args", "{payload}");
                    assert!(e.message.contains(want), "{payload}: {}", e.message);
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }

    #[test]
    fn remembered_ids_are_bounded() {
        let mut i = inbox();
        for n in 0..1000 {
            let p = format!(r#"{{"id":"{n}","cmd":"ping"}}"#);
            assert!(matches!(
                i.accept(p.as_bytes(), false, 0),
                Outcome::Execute(_)
            ));
        }
        assert_eq!(i.seen.len(), REMEMBERED_IDS);
        assert!(matches!(
            i.accept(br#"{"id":"999","cmd":"ping"}"#, false, 0),
            Outcome::Ignore(_)
        ));
        assert!(matches!(
            i.accept(br#"{"id":"0","cmd":"ping"}"#, false, 0),
            Outcome::Execute(_)
        ));
    }

    #[test]
    fn replies_have_the_contract_shape() {
        let ok = Reply {
            id: "x".into(),
            result: Ok(json!({"pong": true})),
        };
        assert_eq!(
            ok.to_json(),
            json!({"id": "x", "ok": true, "result": {"pong": true}})
        );
        let err = Reply {
            id: "y".into(),
            result: Err(ErrorReply::new("busy", "scrub running")),
        };
        assert_eq!(
            err.to_json(),
            json!({"id": "y", "ok": false, "error": {"code": "busy", "message": "scrub running"}})
        );
    }
}
