//! Log setup: human-readable lines on stderr, which journald captures under systemd.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins over the config's `node.log`, so an
/// operator can turn up one module without editing the file. Safe to call twice.
pub fn init(config_filter: &str) {
    // The embedded broker logs every connection at info; keep it to warnings unless the
    // operator asks for it by name.
    let quiet = if config_filter.contains("rumqttd") {
        String::new()
    } else {
        ",rumqttd=off".into()
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{config_filter}{quiet}")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
