//! Signed commands and replies (docs/mqtt.md, "Authenticated commands"). Pure: keys and
//! JSON in, verdicts out.
//!
//! A command carries `"auth": {"key": "<operator public key, 64 hex>", "sig": "<128 hex>"}`,
//! an Ed25519 signature over
//!
//! ```text
//! ddc-cmd/1\n<node_id>\n<id>\n<ts>\n<cmd>\n<args>
//! ```
//!
//! where `<args>` is the `args` object as compact JSON with its keys sorted (`{}` when
//! absent). Naming the node means a command for one node cannot be replayed to another;
//! `ts` bounds it in time and `id` within that time (the inbox remembers ids until their
//! `ts` is out of the window). A reply carries the node's signature over
//!
//! ```text
//! ddc-reply/1\n<node_id>\n<id>\n<the reply without "auth", compact, keys sorted>
//! ```
//!
//! so `ddc-edge ctl` knows the answer came from the node it asked.

use crate::identity::{Identity, node_id_of, verify};
use serde_json::{Map, Value, json};

fn canonical(v: &Value) -> String {
    // serde_json's map is a BTreeMap (no preserve_order feature): keys come out sorted.
    v.to_string()
}

/// The bytes an operator signs for a command to `node_id`.
pub fn command_message(node_id: &str, id: &str, ts: u64, cmd: &str, args: &Value) -> Vec<u8> {
    let args = match args {
        Value::Null => "{}".to_string(),
        other => canonical(other),
    };
    format!("ddc-cmd/1\n{node_id}\n{id}\n{ts}\n{cmd}\n{args}").into_bytes()
}

/// A signed command, ready to publish on `<prefix>/nodes/<node_id>/cmd`.
pub fn signed_command(
    operator: &Identity,
    node_id: &str,
    id: &str,
    ts: u64,
    cmd: &str,
    args: Value,
) -> Value {
    let sig = operator.sign(&command_message(node_id, id, ts, cmd, &args));
    let mut c = json!({"id": id, "ts": ts, "cmd": cmd,
        "auth": {"key": operator.public_key_hex(), "sig": hex::encode(sig)}});
    if !args.is_null() {
        c["args"] = args;
    }
    c
}

/// Checks a command's signature against the operator keys (lowercase hex). Returns the
/// signing key on success, or why not.
pub fn verify_command(
    obj: &Map<String, Value>,
    node_id: &str,
    operators: &[String],
) -> Result<String, String> {
    let auth = obj
        .get("auth")
        .and_then(Value::as_object)
        .ok_or("unsigned command (this node takes commands signed by control.operators)")?;
    let key = auth
        .get("key")
        .and_then(Value::as_str)
        .ok_or("auth.key: expected the operator's public key in hex")?;
    if !operators.iter().any(|k| k.eq_ignore_ascii_case(key)) {
        return Err(format!("auth.key {key:.16}...: not in control.operators"));
    }
    let key_bytes = hex::decode(key).map_err(|_| "auth.key: not hex")?;
    let sig = auth
        .get("sig")
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok())
        .ok_or("auth.sig: expected a signature in hex")?;
    let (Some(id), Some(ts), Some(cmd)) = (
        obj.get("id").and_then(Value::as_str),
        obj.get("ts").and_then(Value::as_u64),
        obj.get("cmd").and_then(Value::as_str),
    ) else {
        return Err("a signed command needs id, ts and cmd".into());
    };
    let args = obj.get("args").cloned().unwrap_or(Value::Null);
    if verify(
        &key_bytes,
        &command_message(node_id, id, ts, cmd, &args),
        &sig,
    ) {
        Ok(key.to_ascii_lowercase())
    } else {
        Err("bad signature (for this node, id, ts, cmd and args)".into())
    }
}

/// Adds the node's signature to a reply.
pub fn sign_reply(node: &Identity, reply: &mut Value) {
    let id = reply["id"].as_str().unwrap_or_default().to_string();
    let msg = format!(
        "ddc-reply/1\n{}\n{id}\n{}",
        node.node_id(),
        canonical(reply)
    );
    let sig = node.sign(msg.as_bytes());
    reply["auth"] = json!({"key": node.public_key_hex(), "sig": hex::encode(sig)});
}

/// Whether `reply` is signed by the node `node_id`.
pub fn verify_reply(reply: &Value, node_id: &str) -> bool {
    let mut body = reply.clone();
    let Some(auth) = body.as_object_mut().and_then(|o| o.remove("auth")) else {
        return false;
    };
    let (Some(key), Some(sig)) = (
        auth["key"].as_str().and_then(|k| hex::decode(k).ok()),
        auth["sig"].as_str().and_then(|s| hex::decode(s).ok()),
    ) else {
        return false;
    };
    if node_id_of(&key) != node_id {
        return false;
    }
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let msg = format!("ddc-reply/1\n{node_id}\n{id}\n{}", canonical(&body));
    verify(&key, msg.as_bytes(), &sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (tempfile::TempDir, Identity, Identity) {
        let d = tempfile::tempdir().unwrap();
        let op = Identity::load_or_create_file(&d.path().join("op")).unwrap();
        let node = Identity::load_or_create_file(&d.path().join("node")).unwrap();
        (d, op, node)
    }

    fn obj(v: &Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_signed_command_verifies_only_for_its_node_key_and_contents() {
        let (_d, op, node) = ids();
        let ops = vec![op.public_key_hex()];
        let args = json!({"quota_bytes": 5, "egress_bps": 7});
        let c = signed_command(&op, node.node_id(), "c1", 100, "set_limits", args);
        assert_eq!(
            verify_command(&obj(&c), node.node_id(), &ops),
            Ok(op.public_key_hex())
        );
        // Another node: the command cannot be replayed there.
        assert!(verify_command(&obj(&c), "someoneelse", &ops).is_err());
        // Not an operator.
        assert!(verify_command(&obj(&c), node.node_id(), &[node.public_key_hex()]).is_err());
        // Any field changed.
        for (k, v) in [
            ("id", json!("c2")),
            ("ts", json!(101)),
            ("cmd", json!("drain")),
            ("args", json!({"quota_bytes": 1, "egress_bps": 7})),
        ] {
            let mut t = c.clone();
            t[k] = v;
            assert!(
                verify_command(&obj(&t), node.node_id(), &ops).is_err(),
                "{k} changed"
            );
        }
        // Unsigned, or without ts.
        let mut u = c.clone();
        u.as_object_mut().unwrap().remove("auth");
        assert!(verify_command(&obj(&u), node.node_id(), &ops).is_err());
        let mut u = c.clone();
        u.as_object_mut().unwrap().remove("ts");
        assert!(verify_command(&obj(&u), node.node_id(), &ops).is_err());
    }

    #[test]
    fn argument_order_does_not_matter_to_the_signature() {
        let (_d, op, node) = ids();
        let c = signed_command(
            &op,
            node.node_id(),
            "c",
            1,
            "set_limits",
            json!({"b": 1, "a": 2}),
        );
        let reordered: Value = serde_json::from_str(
            &c.to_string()
                .replace(r#"{"a":2,"b":1}"#, r#"{"b":1,"a":2}"#),
        )
        .unwrap();
        assert!(verify_command(&obj(&reordered), node.node_id(), &[op.public_key_hex()]).is_ok());
    }

    #[test]
    fn replies_are_signed_by_the_node() {
        let (_d, op, node) = ids();
        let mut r = json!({"id": "c1", "ok": true, "result": {"pong": true}});
        sign_reply(&node, &mut r);
        assert!(verify_reply(&r, node.node_id()));
        assert!(!verify_reply(&r, op.node_id()));
        let mut t = r.clone();
        t["ok"] = json!(false);
        assert!(!verify_reply(&t, node.node_id()));
        let mut t = r.clone();
        t.as_object_mut().unwrap().remove("auth");
        assert!(!verify_reply(&t, node.node_id()));
    }
}
