//! MQTT: health and fleet control (docs/mqtt.md).
//!
//! Pure: [`topics`] (the contract), [`backoff`], [`health`] and [`discovery`] (payloads).
//! Drivers: [`session`] (rumqttc event loop, reconnects), [`broker`] (embedded rumqttd),
//! [`tls`], [`sync`] (a client's marker behind the retained messages). Command screening lives in `control::command`; executing commands in
//! `control`.

pub mod backoff;
pub mod broker;
pub mod discovery;
pub mod event;
pub mod health;
pub mod session;
pub mod sync;
pub mod tls;
pub mod topics;
