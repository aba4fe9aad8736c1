//! Knowing when the broker has sent every retained message. A client subscribes, then
//! publishes a marker to its own inbox on the same connection; the broker delivers the
//! marker behind the retained messages of the subscriptions made before it. This replaces
//! fixed quiet spells, which are too short on a slow link and too long on a fast one.

use crate::config::Config;
use rumqttc::{AsyncClient, Publish, QoS};

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
