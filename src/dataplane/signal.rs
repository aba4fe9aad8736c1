//! Signaling over MQTT: our envelopes out, theirs in, each routed to its session.
//!
//! Every node listens on `<prefix>/nodes/<id>/signal`; a client listens on
//! `<prefix>/clients/<id>/signal` and names it as `reply_to` in its offers. An offer for
//! an unknown session goes to the serving side; anything else goes to the session that
//! registered its id, and only if it comes from the peer that session talks to, so a
//! third party cannot inject candidates or a `bye` into someone else's connection.

use crate::identity::Identity;
use crate::signaling::{Envelope, Kind, ReplayGuard};
use rumqttc::{AsyncClient, QoS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub fn node_topic(prefix: &str, node_id: &str) -> String {
    format!("{prefix}/nodes/{node_id}/signal")
}

pub fn client_topic(prefix: &str, id: &str) -> String {
    format!("{prefix}/clients/{id}/signal")
}

struct Route {
    peer: String,
    tx: mpsc::Sender<Envelope>,
}

pub struct Signal {
    pub identity: Arc<Identity>,
    client: AsyncClient,
    pub prefix: String,
    /// Where peers reach us.
    pub my_topic: String,
    guard: Mutex<ReplayGuard>,
    sessions: Mutex<HashMap<String, Route>>,
    offers: Option<mpsc::Sender<Envelope>>,
    /// Where replication messages go (the replicator), once it asked for them.
    repl: Mutex<Option<mpsc::Sender<Envelope>>>,
    /// Replication messages dropped because the replicator's inbox was full.
    repl_overflow: std::sync::atomic::AtomicU64,
}

impl Signal {
    /// `offers`: where new offers go (the serving side); `None` for a pure client.
    pub fn new(
        identity: Arc<Identity>,
        client: AsyncClient,
        prefix: &str,
        my_topic: String,
        offers: Option<mpsc::Sender<Envelope>>,
    ) -> Arc<Signal> {
        Arc::new(Signal {
            identity,
            client,
            prefix: prefix.to_string(),
            my_topic,
            guard: Mutex::new(ReplayGuard::default()),
            sessions: Mutex::new(HashMap::new()),
            offers,
            repl: Mutex::new(None),
            repl_overflow: Default::default(),
        })
    }

    /// Handles one payload from our signal topic. Bad or foreign messages are dropped and
    /// logged; nothing here can fail the agent.
    pub fn on_message(&self, payload: &[u8]) {
        let now = crate::control::unix_now();
        let opened = {
            let mut g = self.guard.lock().unwrap_or_else(|p| p.into_inner());
            Envelope::open(payload, self.identity.node_id(), now, &mut g)
        };
        let e = match opened {
            Ok(e) => e,
            Err(why) => {
                warn!(reason = %crate::logging::printable(&why.to_string()), "signaling message dropped");
                return;
            }
        };
        if !e.replies_to_sender(&self.prefix) {
            warn!(
                from = %e.from,
                reply_to = %crate::logging::printable(&e.reply_to),
                "signaling message dropped: reply_to is not the sender's own signaling topic"
            );
            return;
        }
        if e.kind == Kind::Repl {
            let tx = self.repl.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match tx {
                Some(tx) if tx.try_send(e).is_err() => {
                    self.repl_overflow
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    debug!("replication inbox full; message dropped (anti-entropy finds it)")
                }
                Some(_) => {}
                None => debug!("replication message for a node that does not replicate; dropped"),
            }
            return;
        }
        let route = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions
                .get(&e.session)
                .map(|r| (r.peer.clone(), r.tx.clone()))
        };
        match route {
            Some((peer, tx)) => {
                if peer != e.from {
                    warn!(session = %crate::logging::printable(&e.session), from = %e.from, "signaling message for another peer's session dropped");
                    return;
                }
                if tx.try_send(e).is_err() {
                    debug!("session is not keeping up with signaling; message dropped");
                }
            }
            None if e.kind == Kind::Offer => match &self.offers {
                Some(offers) => {
                    if offers.try_send(e).is_err() {
                        warn!("too many pending offers; one dropped");
                    }
                }
                None => debug!("offer received by a client; ignored"),
            },
            None => {
                debug!(session = %e.session, kind = ?e.kind, "signaling for an unknown session dropped")
            }
        }
    }

    /// Routes messages of `session` from `peer` to the returned receiver.
    pub fn register(&self, session: &str, peer: &str) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(32);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                session.to_string(),
                Route {
                    peer: peer.to_string(),
                    tx,
                },
            );
        rx
    }

    /// Routes replication messages (kind `repl`) to the returned receiver; at most
    /// `depth` wait, the rest are dropped.
    pub fn replication_inbox(&self, depth: usize) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(depth);
        *self.repl.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Replication messages dropped so far because the inbox was full.
    pub fn replication_overflow(&self) -> u64 {
        self.repl_overflow
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn unregister(&self, session: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
    }

    pub fn sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Signs and publishes a message to `to` on `topic`.
    pub async fn send(&self, to: &str, topic: &str, kind: Kind, session: &str, body: String) {
        let e = Envelope::sign(
            &self.identity,
            kind,
            to,
            session,
            &self.my_topic,
            body,
            crate::control::unix_now(),
        );
        let publish = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, e.to_json());
        match tokio::time::timeout(std::time::Duration::from_secs(5), publish).await {
            Ok(Ok(())) => {}
            _ => warn!(topic, "could not queue a signaling message"),
        }
    }
}

/// A random session id (128 bits, hex).
pub fn new_session_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}
