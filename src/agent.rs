//! `ddc-edge run`: wires the drivers to the core and runs until SIGINT or SIGTERM.
//!
//! Today the agent loads its config, reports what it is configured to offer, and waits for
//! a signal; the sensor, store, MQTT and WebRTC drivers are started here as they land.

use crate::config::LoadedConfig;
use anyhow::Context;
use tracing::info;

pub fn run(loaded: LoadedConfig) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    crate::logging::init(&cfg.node.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        // Handlers first: a signal that arrives while we start must still stop us cleanly.
        let shutdown = shutdown_signal()?;
        info!(version = env!("CARGO_PKG_VERSION"), config = %loaded.source, "ddc-edge starting");
        info!(
            board = %cfg.board.name,
            data_dir = %cfg.storage.data_dir.display(),
            quota = %cfg.storage.quota,
            egress = %cfg.bandwidth.egress,
            ingress = %cfg.bandwidth.ingress,
            replication = %cfg.bandwidth.replication,
            broker = %cfg.mqtt.broker,
            sysfs_root = %cfg.sensors.sysfs_root.display(),
            "configured"
        );
        let monitor =
            crate::sensors::monitor::Monitor::spawn(cfg).context("starting the sensor thread")?;
        let sig = shutdown.await;
        drop(monitor);
        info!(signal = sig, "shutting down");
        anyhow::Ok(())
    })
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that resolves with the
/// name of the first one received (systemd stops services with SIGTERM).
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
