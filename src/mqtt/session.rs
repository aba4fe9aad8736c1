//! The MQTT connection: drives rumqttc's event loop, reconnects with jittered backoff,
//! and on every ConnAck runs the caller's `on_connect` (resubscribe, republish retained
//! state: with a clean session the broker forgets subscriptions on each reconnect).
//!
//! Incoming publishes go to a bounded channel; if the agent falls behind, new ones are
//! dropped with a warning rather than stalling the event loop (which would stop
//! keep-alives and make the broker fire our last will).
//!
//! No message can take the connection down: a packet over
//! [`topics::MAX_INCOMING_PACKET`] is skipped by the (patched) codec as it streams in,
//! and a payload over its topic's limit ([`topics::payload_limit`]) is dropped here,
//! before anything parses it. Both are counted and logged once per topic.

use super::backoff::Backoff;
use super::topics;
use crate::config::{Broker, Config};
use anyhow::Context;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS, Transport,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub type OnConnect = Arc<dyn Fn(&AsyncClient) + Send + Sync>;

/// Handle to the running session.
pub struct Session {
    pub client: AsyncClient,
    /// True while connected.
    pub connected: watch::Receiver<bool>,
    /// True once the broker acknowledged the subscriptions `on_connect` made (with one
    /// SUBSCRIBE), i.e. once messages to us are delivered. Reset on disconnection.
    pub subscribed: watch::Receiver<bool>,
    /// Connections made after the first (for the metrics).
    pub reconnects: Arc<std::sync::atomic::AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Connection settings resolved from the config. `last_will`: the status topic of a node
/// (`offline` is published there if it vanishes); `None` for a client.
pub fn options(
    cfg: &Config,
    client_id: &str,
    last_will: Option<&str>,
    embedded: Option<std::net::SocketAddr>,
) -> anyhow::Result<MqttOptions> {
    let m = &cfg.mqtt;
    let (host, port, tls) = match (&m.broker, embedded) {
        (_, Some(addr)) => (addr.ip().to_string(), addr.port(), false),
        (Broker::Url(u), None) => (u.host.clone(), u.port, u.tls),
        (Broker::Embedded, None) => anyhow::bail!("embedded broker address missing"),
    };
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(m.keep_alive.0)
        .set_clean_session(true)
        // Discovery payloads exceed rumqttc's 10 KiB default on the way out; what comes
        // in is bounded by the contract's per-topic limits.
        .set_max_packet_size(topics::MAX_INCOMING_PACKET, 256 << 10)
        .set_request_channel_capacity(64);
    if let Some(topic) = last_will {
        o.set_last_will(LastWill::new(topic, "offline", QoS::AtLeastOnce, true));
    }
    let password = if !m.password_file.as_os_str().is_empty() {
        std::fs::read_to_string(&m.password_file)
            .with_context(|| format!("mqtt.password_file: {}", m.password_file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string()
    } else {
        m.password.clone()
    };
    if !m.username.is_empty() {
        o.set_credentials(m.username.clone(), password);
    }
    if tls {
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(super::tls::client_config(m)?),
        ));
    }
    Ok(o)
}

impl Session {
    pub fn spawn(
        options: MqttOptions,
        reconnect_max: Duration,
        on_connect: OnConnect,
        incoming: mpsc::Sender<Publish>,
    ) -> Session {
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (connected_tx, connected) = watch::channel(false);
        let (subscribed_tx, subscribed) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let reconnects = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            reconnect_max,
            on_connect,
            incoming,
            Flags {
                connected: connected_tx,
                subscribed: subscribed_tx,
                reconnects: Arc::clone(&reconnects),
            },
            stop_rx,
        ));
        Session {
            client,
            connected,
            subscribed,
            reconnects,
            stop,
            task,
        }
    }

    /// Clean shutdown: publish the retained `offline` ourselves on `status_topic` (the
    /// last will only fires on an unclean disconnect; clients pass `None`), disconnect,
    /// and wait briefly for both to go out.
    pub async fn shutdown(self, status_topic: Option<&str>) {
        if let Some(t) = status_topic {
            let _ = self
                .client
                .try_publish(t, QoS::AtLeastOnce, true, "offline");
        }
        let _ = self.client.try_disconnect();
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
    }
}

/// Counts and logs the messages dropped for their size: once per topic (a retained one
/// comes again on every reconnect), remembering at most 1024 topics.
#[derive(Default)]
struct Oversized {
    count: u64,
    logged: std::collections::HashSet<String>,
}

impl Oversized {
    /// True if `p` must be dropped.
    fn screen(&mut self, p: &Publish) -> bool {
        let discarded = &p.payload[..] == rumqttc::DISCARDED_OVERSIZED;
        let limit = topics::payload_limit(&p.topic);
        if !discarded && p.payload.len() <= limit {
            return false;
        }
        self.count += 1;
        if self.logged.len() < 1024 && self.logged.insert(p.topic.clone()) {
            let size = if discarded {
                format!("over {} bytes", topics::MAX_INCOMING_PACKET)
            } else {
                format!("{} bytes", p.payload.len())
            };
            warn!(
                topic = %crate::logging::printable(&p.topic),
                size = %size,
                limit,
                retained = p.retain,
                total_dropped = self.count,
                "ignoring an oversized MQTT message (docs/mqtt.md, size limits)"
            );
        }
        true
    }
}

fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// What the event loop reports about the connection.
struct Flags {
    connected: watch::Sender<bool>,
    subscribed: watch::Sender<bool>,
    reconnects: Arc<std::sync::atomic::AtomicU64>,
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    reconnect_max: Duration,
    on_connect: OnConnect,
    incoming: mpsc::Sender<Publish>,
    flags: Flags,
    mut stop: watch::Receiver<bool>,
) {
    let Flags {
        connected,
        subscribed,
        reconnects,
    } = flags;
    let mut backoff = Backoff::new(Duration::from_millis(500), reconnect_max);
    let mut down_since: Option<std::time::Instant> = None;
    let mut dropped = 0u64;
    let mut oversized = Oversized::default();
    loop {
        let stopping = *stop.borrow();
        let event = if stopping {
            // Flush the offline publish and the disconnect, then end.
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => continue,
            }
        } else {
            tokio::select! {
                e = eventloop.poll() => e,
                _ = stop.changed() => continue,
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                match down_since.take() {
                    Some(t) => {
                        reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        info!(after_s = t.elapsed().as_secs(), "MQTT reconnected");
                    }
                    None => info!(session_present = ack.session_present, "MQTT connected"),
                }
                backoff.reset();
                let _ = connected.send(true);
                on_connect(&client);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if !*subscribed.borrow() {
                    info!("MQTT subscribed");
                    let _ = subscribed.send(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if oversized.screen(&p) {
                    continue;
                }
                if incoming.try_send(p).is_err() {
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        warn!(
                            dropped,
                            "agent is behind on incoming MQTT messages; dropping"
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = connected.send(false);
                let _ = subscribed.send(false);
                if down_since.is_none() {
                    warn!(error = %e, "MQTT connection lost; reconnecting with backoff (sensing and serving go on)");
                    down_since = Some(std::time::Instant::now());
                } else {
                    debug!(error = %e, "MQTT reconnect failed");
                }
                let wait = backoff.next(random_fraction());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use rumqttc::{Codec, Packet, Publish, QoS};
    use tokio_util::codec::{Decoder, Encoder};

    /// The patched codec: an oversized PUBLISH, arriving in pieces, comes out as its
    /// header with the discard marker, and the packet after it is intact.
    #[test]
    fn an_oversized_publish_is_skipped_not_fatal() {
        let mut wire = BytesMut::new();
        let mut enc = Codec {
            max_incoming_size: 1 << 30,
            max_outgoing_size: 1 << 30,
            skip: 0,
        };
        let mut big = Publish::new("ddc/nodes/x/health", QoS::AtLeastOnce, vec![7u8; 300_000]);
        big.pkid = 9;
        big.retain = true;
        enc.encode(Packet::Publish(big), &mut wire).unwrap();
        let small = Publish::new("ddc/nodes/x/status", QoS::AtMostOnce, "online");
        enc.encode(Packet::Publish(small.clone()), &mut wire)
            .unwrap();

        let mut dec = Codec {
            max_incoming_size: 64 << 10,
            max_outgoing_size: 1 << 20,
            skip: 0,
        };
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(1000) {
            buf.extend_from_slice(piece);
            while let Some(p) = dec.decode(&mut buf).unwrap() {
                out.push(p);
            }
            assert!(
                buf.capacity() < 200_000,
                "the oversized payload was buffered"
            );
        }
        assert_eq!(out.len(), 2, "{out:?}");
        let Packet::Publish(first) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(first.topic, "ddc/nodes/x/health");
        assert_eq!((first.pkid, first.retain), (9, true));
        assert_eq!(&first.payload[..], rumqttc::DISCARDED_OVERSIZED);
        assert_eq!(out[1], Packet::Publish(small));
    }
}
