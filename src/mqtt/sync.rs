//! Knowing when the broker has sent every retained message. A client subscribes, then
//! publishes a marker to its own inbox on the same connection; the broker delivers the
//! marker behind the retained messages of the subscriptions made before it. This replaces
//! fixed quiet spells, which are too short on a slow link and too long on a fast one.

use crate::config::{Broker, Config};
use crate::mqtt::session::{self, Session};
use rumqttc::{AsyncClient, Publish, QoS, SubscribeFilter};
use tokio::sync::mpsc;

/// One client's marker and the inbox it travels through.
pub struct SyncMarker {
    topic: String,
    payload: Vec<u8>,
}

impl SyncMarker {
    /// A marker for a client of `cfg`'s broker connected as `client_id`. Under the shipped
    /// ACL a party reads only the inbox named by its broker user, so that name is used when
    /// there is one.
    pub fn new(cfg: &Config, client_id: &str) -> SyncMarker {
        let inbox = if cfg.mqtt.username.is_empty() {
            client_id
        } else {
            cfg.mqtt.username.as_str()
        };
        SyncMarker {
            topic: crate::dataplane::signal::client_topic(&cfg.mqtt.topic_prefix, inbox),
            payload: format!(
                "ddc-edge-sync {}",
                crate::dataplane::signal::new_session_id()
            )
            .into_bytes(),
        }
    }

    /// The inbox to subscribe to, with the other subscriptions.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends the marker; call it once the subscriptions are acknowledged.
    pub async fn publish(&self, client: &AsyncClient) -> Result<(), rumqttc::ClientError> {
        client
            .publish(
                self.topic.as_str(),
                QoS::AtLeastOnce,
                false,
                self.payload.clone(),
            )
            .await
    }

    /// Whether `p` is this marker coming back.
    pub fn is_marker(&self, p: &Publish) -> bool {
        p.topic == self.topic && p.payload[..] == self.payload[..]
    }
}

/// A command-line client's MQTT session (`nodes`, `ctl`): connected as `client_id` with
/// the agent's broker settings, subscribed to `filters` and to its marker's inbox on every
/// (re)connection. Returns the session, its incoming messages and the marker.
pub fn client_session(
    cfg: &Config,
    client_id: &str,
    filters: &[String],
) -> anyhow::Result<(Session, mpsc::Receiver<Publish>, SyncMarker)> {
    let embedded = matches!(cfg.mqtt.broker, Broker::Embedded).then_some(cfg.mqtt.embedded_listen);
    let options = session::options(cfg, client_id, None, embedded)?;
    let marker = SyncMarker::new(cfg, client_id);
    let mut all = filters.to_vec();
    all.push(marker.topic().to_string());
    let on_connect: session::OnConnect = std::sync::Arc::new(move |c: &AsyncClient| {
        let _ = c.try_subscribe_many(
            all.iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
        );
    });
    let (tx, rx) = mpsc::channel(1024);
    let session = Session::spawn(options, cfg.mqtt.reconnect_max.0, on_connect, tx);
    Ok((session, rx, marker))
}
