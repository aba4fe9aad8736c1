//! Log setup: human-readable lines on stderr, which journald captures under systemd.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins over the config's `node.log`, so an
/// operator can turn up one module without editing the file. Safe to call twice.
pub fn init(config_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(with_quiet_dependencies(config_filter)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// The embedded broker and the WebRTC stack log routine events (every connection, every
/// stray STUN packet) at info and warn; keep them to errors unless the operator names
/// them in the filter.
fn with_quiet_dependencies(filter: &str) -> String {
    let mut f = filter.to_string();
    for (target, level) in [
        ("rumqttd", "off"),
        ("webrtc", "error"),
        ("rtc", "error"),
        ("rtc_ice", "error"),
        ("rtc_dtls", "error"),
        ("rtc_sctp", "error"),
    ] {
        if !filter.contains(target) {
            f.push_str(&format!(",{target}={level}"));
        }
    }
    f
}

/// Text from the network made safe for a log line: control characters (a NUL, an escape
/// sequence, a newline that would forge a second line) are shown escaped, and anything
/// longer than 200 characters is cut.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= 200 && !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn network_text_cannot_forge_or_garble_log_lines() {
        assert_eq!(super::printable("plain"), "plain");
        assert_eq!(super::printable("a\0b\nINFO fake"), "a\\u{0}b\\nINFO fake");
        assert_eq!(super::printable(&"x".repeat(500)).chars().count(), 201);
    }
}
