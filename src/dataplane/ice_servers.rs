//! STUN/TURN servers for a peer connection, with TURN credentials computed from a
//! shared secret when the config gives one.
//!
//! Fleets do not hand every device a fixed TURN password: coturn's "TURN REST API"
//! (`use-auth-secret` + `static-auth-secret`) accepts any username of the form
//! `<expiry unix time>:<user>` whose password is `base64(HMAC-SHA1(secret, username))`.
//! A leaked pair stops working at its expiry, and the secret never leaves the device.
//! Pure: told the time, tested against a vector computed independently.

use crate::config::IceServer;
use base64::Engine;
use std::time::Duration;
use webrtc::peer_connection::RTCIceServer;

/// Default lifetime of computed credentials (coturn's examples use a day too).
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// The username and password coturn's REST mechanism accepts for `user` until
/// `now_unix + ttl`.
pub fn rest_credentials(
    secret: &str,
    user: &str,
    now_unix: u64,
    ttl: Duration,
) -> (String, String) {
    let username = format!("{}:{user}", now_unix.saturating_add(ttl.as_secs()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, password)
}

/// The configured servers as webrtc wants them, REST credentials computed for `now_unix`.
/// `user` names the device in the TURN server's logs and quotas.
pub fn resolve(servers: &[IceServer], user: &str, now_unix: u64) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| {
            let (username, credential) = if s.secret.is_empty() {
                (s.username.clone(), s.credential.clone())
            } else {
                let ttl = s.credential_ttl.map(|t| t.0).unwrap_or(DEFAULT_TTL);
                rest_credentials(&s.secret, user, now_unix, ttl)
            };
            RTCIceServer {
                urls: s.urls.clone(),
                username,
                credential,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturns_formula() {
        // python3 -c 'import hmac,hashlib,base64;
        //   print(base64.b64encode(hmac.new(b"north-wind", b"1700086400:ddc-edge",
        //   hashlib.sha1).digest()).decode())'
        let (u, p) = rest_credentials("north-wind", "ddc-edge", 1_700_000_000, DEFAULT_TTL);
        assert_eq!(u, "1700086400:ddc-edge");
        assert_eq!(p, PYTHON_VECTOR);
    }

    const PYTHON_VECTOR: &str = "fxsvdKcbySXnLhbUU++JvOjdyis=";

    #[test]
    fn static_credentials_pass_through_and_secrets_are_computed_per_call() {
        let servers = vec![
            IceServer {
                urls: vec!["stun:s:3478".into()],
                ..Default::default()
            },
            IceServer {
                urls: vec!["turn:t:3478".into()],
                username: "u".into(),
                credential: "p".into(),
                ..Default::default()
            },
            IceServer {
                urls: vec!["turn:t:3478".into()],
                secret: "north-wind".into(),
                credential_ttl: Some(crate::units::HumanDuration(Duration::from_secs(600))),
                ..Default::default()
            },
        ];
        let r = resolve(&servers, "node-1", 1000);
        assert_eq!((r[0].username.as_str(), r[0].credential.as_str()), ("", ""));
        assert_eq!(
            (r[1].username.as_str(), r[1].credential.as_str()),
            ("u", "p")
        );
        assert_eq!(r[2].username, "1600:node-1");
        assert_eq!(
            r[2].credential,
            rest_credentials("north-wind", "node-1", 1000, Duration::from_secs(600)).1
        );
        let later = resolve(&servers, "node-1", 2000);
        assert_ne!(
            later[2].username, r[2].username,
            "a fresh expiry per connection"
        );
    }
}
