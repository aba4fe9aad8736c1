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
