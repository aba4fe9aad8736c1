//! The embedded broker (rumqttd) for the built-in default: `ddc-edge run` works on a
//! machine with no MQTT broker installed. Loopback only unless `mqtt.embedded_listen` says
//! otherwise; production configs point at mosquitto or an EMQX cluster instead.

use std::net::SocketAddr;

#[cfg(not(feature = "embedded-broker"))]
pub fn start(_listen: SocketAddr, _ws_listen: Option<SocketAddr>) -> anyhow::Result<()> {
    anyhow::bail!(
        "this build has no embedded MQTT broker (built without the embedded-broker feature): \
         set mqtt.broker to your broker's URL (--broker mqtt://HOST:1883)"
    )
}

#[cfg(feature = "embedded-broker")]
pub use embedded::start;

#[cfg(feature = "embedded-broker")]
mod embedded {
    use super::SocketAddr;
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
    use std::collections::HashMap;
    use tracing::{error, info};

    /// Largest message the embedded broker accepts (discovery and health are a few KiB;
    /// signaling SDP a few KiB more).
    const MAX_PAYLOAD: usize = 256 << 10;

    /// Starts the broker on its own threads. Fails at once, with a hint, if the address is
    /// taken (rumqttd itself would only log that from inside its thread).
    pub fn start(listen: SocketAddr, ws_listen: Option<SocketAddr>) -> anyhow::Result<()> {
        drop(std::net::TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!(
            "embedded MQTT broker cannot listen on {listen}: {e}. Another broker (mosquitto?) may be running there: \
             point mqtt.broker at it (--broker mqtt://{listen}) or move mqtt.embedded_listen"
        )
    })?);
        if let Some(ws) = ws_listen {
            drop(std::net::TcpListener::bind(ws).map_err(|e| {
            anyhow::anyhow!("embedded MQTT broker cannot listen for WebSockets on {ws}: {e} (mqtt.embedded_ws_listen)")
        })?);
        }
        let settings = |name: &str, listen| ServerSettings {
            name: name.into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: MAX_PAYLOAD,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let server = settings("embedded", listen);
        let ws = ws_listen
            .map(|w| HashMap::from([("embedded-ws".to_string(), settings("embedded-ws", w))]));
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 256,
                max_outgoing_packet_count: 200,
                // Bounded memory on a small board: a few MiB of commit log in all.
                max_segment_size: 1 << 20,
                max_segment_count: 4,
                ..Default::default()
            },
            v4: Some(HashMap::from([("embedded".to_string(), server)])),
            ws,
            ..Default::default()
        };
        let mut broker = Broker::new(config);
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    error!(error = %e, "embedded MQTT broker stopped");
                }
            })?;
        // rumqttd binds inside its own thread; wait for it so our own client's first connect
        // does not race it into a backoff.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect_timeout(&listen, std::time::Duration::from_millis(200))
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "embedded MQTT broker did not start listening on {listen} within 5 s"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        info!(%listen, "embedded MQTT broker listening");
        Ok(())
    }
}
