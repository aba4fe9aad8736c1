//! Parsing and screening fleet commands. Pure: told the payload, whether the broker
//! delivered it as retained, and the time; returns what to do.
//!
//! A command is `{"id": "<string>", "cmd": "<verb>", "args": {...}, "ts": <unix s>,
//! "auth": {...}}` (`args` optional; `ts` and `auth` required unless the node takes
//! unsigned commands). Screening, in order:
//! 1. retained deliveries are ignored, so a retained `pause` can never replay forever;
//! 2. payloads that are not a JSON object with a non-empty string `id` are ignored (no
//!    one to answer) and logged by the caller;
//! 3. oversized payloads get an error reply;
//! 4. with signed commands, a missing or bad signature (by a key in
//!    `control.operators`, for this node: [`super::auth`]) gets an `unauthorized` reply;
//! 5. a `ts` more than `control.max_age` away from now, in either direction, gets an
//!    `expired` reply;
//! 6. an `id` accepted within its time window is ignored: ids are remembered until
//!    their command could no longer be accepted (`ts + max_age`), so a replay is never
//!    executed (at most 4096 are kept; the ones closest to expiry go first). Ids are
//!    remembered only after the signature checks, so forged commands cannot burn them;
//! 7. unknown verbs, verbs not in `control.allowed_verbs` and bad arguments get an
//!    error reply. `cmd` and `args` are read by serde as one adjacently tagged enum
//!    (`Wire`), so the argument types live in one place and an error names the
//!    argument (`args.ttl_s: ...`); ranges are checked after.

use crate::throttle::Level;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Who may command this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// Anyone who can publish on the command topic (development).
    Unsigned,
    /// Commands signed by one of these operator keys, for this node.
    Operators { node_id: String, keys: Vec<String> },
}

/// Screening state: the policy and the ids already seen.
#[derive(Debug)]
pub struct Inbox {
    allowed: HashSet<String>,
    max_age: Duration,
    max_payload: usize,
    authority: Authority,
    /// id -> unix second after which its command can no longer be accepted.
    seen: HashMap<String, u64>,
    by_expiry: BTreeSet<(u64, String)>,
}

const REMEMBERED_IDS: usize = 4096;
const MAX_ID_LEN: usize = 128;
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Inbox {
    pub fn new(
        allowed: &[String],
        max_age: Duration,
        max_payload: usize,
        authority: Authority,
    ) -> Inbox {
        Inbox {
            allowed: allowed.iter().cloned().collect(),
            max_age,
            max_payload,
            authority,
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    pub fn accept(&mut self, payload: &[u8], retained: bool, now_unix: u64) -> Outcome {
        self.forget_expired(now_unix);
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
        let signed = match &self.authority {
            Authority::Unsigned => false,
            Authority::Operators { node_id, keys } => {
                if let Err(why) = super::auth::verify_command(&obj, node_id, keys) {
                    return reject("unauthorized", why);
                }
                true
            }
        };
        let max_age = self.max_age.as_secs();
        let ts = match obj.get("ts") {
            None if signed => return reject("bad_request", "missing \"ts\"".into()),
            None => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(other) => {
                return reject(
                    "bad_request",
                    format!("ts: expected unix seconds, got {other}"),
                );
            }
        };
        if let Some(ts) = ts {
            if now_unix.saturating_sub(ts) > max_age {
                return reject(
                    "expired",
                    format!(
                        "command is {} s old; commands older than {max_age} s are ignored (control.max_age)",
                        now_unix - ts
                    ),
                );
            }
            if ts.saturating_sub(now_unix) > max_age {
                return reject(
                    "expired",
                    format!(
                        "command is dated {} s in the future; more than {max_age} s is refused (control.max_age; check the clocks)",
                        ts - now_unix
                    ),
                );
            }
        }
        if self.seen.contains_key(&id) {
            return Outcome::Ignore(format!("duplicate command id {id:?}"));
        }
        self.remember(&id, ts.unwrap_or(now_unix).saturating_add(max_age));
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

    fn forget_expired(&mut self, now_unix: u64) {
        while let Some((until, _)) = self.by_expiry.first()
            && *until < now_unix
        {
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.seen.remove(&id);
            }
        }
    }

    fn remember(&mut self, id: &str, until: u64) {
        if self.seen.len() >= REMEMBERED_IDS
            && let Some((_, old)) = self.by_expiry.pop_first()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_string(), until);
        self.by_expiry.insert((until, id.to_string()));
    }
}

/// A command's verb and arguments as they travel: `cmd` names the variant, `args` holds
/// its fields. serde does the reading (types, unknown and missing arguments, with the
/// argument's path in the message); [`Wire::check`] adds the ranges serde cannot express.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", content = "args", rename_all = "snake_case")]
enum Wire {
    Ping(NoArgs),
    Status(NoArgs),
    PauseReplication(NoArgs),
    ResumeReplication(NoArgs),
    SetLimits(Limits),
    ForceLevel(ForceLevelArgs),
    ClearLevel(NoArgs),
    Scrub(NoArgs),
    Drain(NoArgs),
    Undrain(NoArgs),
}

/// The arguments of a verb that takes none: `{}`, or `args` left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceLevelArgs {
    level: Level,
    /// Optional to serde so that a missing one gets the message that says what it is for.
    #[serde(default)]
    ttl_s: Option<u64>,
    #[serde(default)]
    over_sensors: Option<bool>,
}

impl Wire {
    fn check(self) -> Result<Verb, String> {
        Ok(match self {
            Wire::Ping(_) => Verb::Ping,
            Wire::Status(_) => Verb::Status,
            Wire::PauseReplication(_) => Verb::PauseReplication,
            Wire::ResumeReplication(_) => Verb::ResumeReplication,
            Wire::ClearLevel(_) => Verb::ClearLevel,
            Wire::Scrub(_) => Verb::Scrub,
            Wire::Drain(_) => Verb::Drain,
            Wire::Undrain(_) => Verb::Undrain,
            Wire::SetLimits(l) => {
                if l == Limits::default() {
                    return Err(
                        "set_limits needs at least one of egress_bps, ingress_bps, quota_bytes"
                            .into(),
                    );
                }
                if l.quota_bytes == Some(0) {
                    return Err("args.quota_bytes: must be above zero".into());
                }
                Verb::SetLimits(l)
            }
            Wire::ForceLevel(a) => {
                let ttl = match a.ttl_s {
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
                Verb::ForceLevel {
                    level: a.level,
                    ttl,
                    over_sensors: a.over_sensors.unwrap_or(false),
                }
            }
        })
    }
}

/// Reads `verb` (already known to be one of [`VERBS`]) with its `args` object.
fn parse_verb(verb: &str, args: &Map<String, Value>) -> Result<Verb, String> {
    // As text with `cmd` first: serde then reads `args` knowing the variant, and the error
    // path reaches into it (from a `Value`, whose keys are sorted, `args` would come first
    // and be buffered without a path). At most `control.max_payload` bytes.
    let wire = format!(
        r#"{{"cmd":{},"args":{}}}"#,
        json!(verb),
        Value::Object(args.clone())
    );
    let mut de = serde_json::Deserializer::from_str(&wire);
    let parsed: Wire = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // The position is in the text built above, not in the sender's payload.
        let inner = inner.split(" at line ").next().unwrap_or_default();
        if inner.ends_with("there are no fields") {
            format!("{path}: {verb} takes no arguments")
        } else if path == "." {
            format!("args: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    parsed.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> Inbox {
        let all: Vec<String> = VERBS.iter().map(|s| s.to_string()).collect();
        Inbox::new(&all, Duration::from_secs(60), 8192, Authority::Unsigned)
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
            (
                r#"{"id":"7","cmd":"clear_level","args":null}"#,
                Verb::ClearLevel,
            ),
            (
                r#"{"id":"11","cmd":"force_level","args":{"level":"reduced","ttl_s":9,"over_sensors":true}}"#,
                Verb::ForceLevel {
                    level: Level::Reduced,
                    ttl: Duration::from_secs(9),
                    over_sensors: true,
                },
            ),
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

    /// VERBS (what config and `control.allowed_verbs` are checked against) and Wire
    /// (what is parsed) name the same verbs.
    #[test]
    fn every_listed_verb_is_a_variant() {
        for v in VERBS {
            if let Err(e) = parse_verb(v, &Map::new()) {
                assert!(!e.contains("unknown variant"), "{v}: {e}");
            }
        }
        let e = parse_verb("reboot", &Map::new()).unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
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
        // A ts far in the future used to be accepted: the command never expired.
        assert_eq!(
            error_code(&i.accept(br#"{"id":"h","cmd":"ping","ts":99000000}"#, false, now)),
            "expired"
        );
        assert!(matches!(
            i.accept(br#"{"id":"i","cmd":"ping","ts":1000030}"#, false, now),
            Outcome::Execute(_)
        ));
        let mut limited = Inbox::new(
            &["ping".to_string()],
            Duration::from_secs(60),
            8192,
            Authority::Unsigned,
        );
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
                "args.egress_bps: invalid type: string \"fast\", expected u64",
            ),
            (
                r#"{"id":"2","cmd":"set_limits","args":{"egress_bps":-5}}"#,
                "args.egress_bps: invalid value: integer `-5`, expected u64",
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
                "args.egres_bps: unknown field `egres_bps`, expected one of `egress_bps`, `ingress_bps`, `quota_bytes`",
            ),
            (
                r#"{"id":"6","cmd":"force_level","args":{"level":"hot","ttl_s":5}}"#,
                "args.level: unknown variant `hot`, expected one of `full`, `reduced`, `paused`",
            ),
            (
                r#"{"id":"7","cmd":"force_level","args":{"level":"full"}}"#,
                "args.ttl_s: required",
            ),
            (
                r#"{"id":"8","cmd":"force_level","args":{"level":"full","ttl_s":5,"over_sensors":"yes"}}"#,
                "args.over_sensors: invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"id":"9","cmd":"ping","args":{"x":1}}"#,
                "args.x: ping takes no arguments",
            ),
            (
                r#"{"id":"10","cmd":"ping","args":[1]}"#,
                "args: expected an object",
            ),
            (
                r#"{"id":"11","cmd":"force_level","args":{"ttl_s":5}}"#,
                "args: missing field `level`",
            ),
            (r#"{"id":"12","cmd":"set_limits"}"#, "needs at least one of"),
            (
                r#"{"id":"13","cmd":"force_level","args":{"level":"full","ttl_s":604801}}"#,
                "args.ttl_s: at most 604800 (7 days), got 604801",
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
    fn an_id_is_never_executed_twice_within_its_window_and_memory_is_bounded() {
        let mut i = inbox();
        let now = 1_000_000;
        let first = br#"{"id":"0","cmd":"ping","ts":1000000}"#;
        assert!(matches!(i.accept(first, false, now), Outcome::Execute(_)));
        // It used to run again once 256 other ids had gone by.
        for n in 1..1000 {
            let p = format!(r#"{{"id":"{n}","cmd":"ping","ts":{now}}}"#);
            assert!(matches!(
                i.accept(p.as_bytes(), false, now),
                Outcome::Execute(_)
            ));
        }
        assert!(
            matches!(i.accept(first, false, now + 59), Outcome::Ignore(r) if r.contains("duplicate"))
        );
        // Once its ts is out of the window the command is refused as expired anyway, and
        // its id is forgotten.
        assert_eq!(error_code(&i.accept(first, false, now + 61)), "expired");
        assert_eq!(i.seen.len(), 0);
        // Bounded however many arrive within one window.
        for n in 0..(REMEMBERED_IDS + 100) {
            let p = format!(r#"{{"id":"x{n}","cmd":"ping","ts":{now}}}"#);
            i.accept(p.as_bytes(), false, now);
        }
        assert_eq!(i.seen.len(), REMEMBERED_IDS);
        assert_eq!(i.by_expiry.len(), REMEMBERED_IDS);
    }

    #[test]
    fn signed_mode_obeys_only_operators_and_needs_ts() {
        let d = tempfile::tempdir().unwrap();
        let op = crate::identity::Identity::load_or_create_file(&d.path().join("op")).unwrap();
        let other = crate::identity::Identity::load_or_create_file(&d.path().join("x")).unwrap();
        let all: Vec<String> = VERBS.iter().map(|s| s.to_string()).collect();
        let mut i = Inbox::new(
            &all,
            Duration::from_secs(60),
            8192,
            Authority::Operators {
                node_id: "node1".into(),
                keys: vec![op.public_key_hex()],
            },
        );
        let now = 1_000_000;
        let sign = |who: &crate::identity::Identity, node: &str, id: &str, ts: u64| {
            let c = super::super::auth::signed_command(
                who,
                node,
                id,
                ts,
                "set_limits",
                json!({"quota_bytes": 1}),
            );
            serde_json::to_vec(&c).unwrap()
        };
        // Unsigned: refused (set_limits quota_bytes=1 is enough to start deleting).
        assert_eq!(
            error_code(&i.accept(
                br#"{"id":"u","cmd":"set_limits","args":{"quota_bytes":1}}"#,
                false,
                now
            )),
            "unauthorized"
        );
        assert_eq!(
            error_code(&i.accept(&sign(&other, "node1", "a", now), false, now)),
            "unauthorized"
        );
        assert_eq!(
            error_code(&i.accept(&sign(&op, "node2", "b", now), false, now)),
            "unauthorized"
        );
        assert!(matches!(
            i.accept(&sign(&op, "node1", "c", now), false, now),
            Outcome::Execute(_)
        ));
        assert!(matches!(
            i.accept(&sign(&op, "node1", "c", now), false, now + 1),
            Outcome::Ignore(_)
        ));
        assert_eq!(
            error_code(&i.accept(&sign(&op, "node1", "d", now + 3600), false, now)),
            "expired"
        );
        // A forged command cannot burn an id the operator will use.
        assert_eq!(
            error_code(&i.accept(&sign(&other, "node1", "e", now), false, now)),
            "unauthorized"
        );
        assert!(matches!(
            i.accept(&sign(&op, "node1", "e", now), false, now),
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
