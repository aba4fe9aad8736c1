//! The data plane: WebRTC data channels carrying the chunk protocol, set up by signed
//! signaling over MQTT (docs/protocol.md).
//!
//! - [`signal`]: routes signaling envelopes arriving on our MQTT signal topic to the
//!   session they belong to, and sends ours.
//! - [`node`]: the serving side: answers offers, checks the peer's DTLS fingerprint
//!   against its signed SDP, and runs a [`crate::protocol::server::Session`] per channel
//!   against the store, within the bandwidth caps and resource bounds.
//! - [`client`]: the requesting side, used by `ddc-edge put/get` and by replication.
//!
//! This module holds what both sides share: building a peer connection with our bounds
//! (send-buffer limit, bind addresses, ICE servers) and verifying fingerprints.

pub mod client;
pub mod node;
pub mod signal;

use crate::config::Config;
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};

/// Peer-connection settings resolved from `[webrtc]`.
#[derive(Debug, Clone)]
pub struct RtcSettings {
    pub ice_servers: Vec<RTCIceServer>,
    pub bind: Vec<String>,
    pub send_buffer: usize,
    pub max_message: u32,
    pub connect_timeout: Duration,
}

impl RtcSettings {
    pub fn from_config(cfg: &Config) -> RtcSettings {
        let w = &cfg.webrtc;
        RtcSettings {
            ice_servers: w
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
            bind: w.bind.clone(),
            send_buffer: w.send_buffer.0 as usize,
            max_message: w.max_message.0 as u32,
            connect_timeout: w.connect_timeout.0,
        }
    }

    /// Loopback candidates are offered only when we bind to loopback (tests, demos).
    fn loopback(&self) -> bool {
        self.bind
            .iter()
            .any(|a| a.starts_with("127.") || a.starts_with("[::1]") || a.starts_with("localhost"))
    }
}

/// What a peer connection tells us, as channels.
pub struct PcEvents {
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub gathered: watch::Receiver<bool>,
    pub candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    pub data_channels: mpsc::Receiver<Arc<dyn DataChannel>>,
}

struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    data_channels: mpsc::Sender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(c) = event.candidate.to_json() {
            let _ = self.candidates.send(c);
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        // Never await here: the connection's driver is waiting for us.
        if self.data_channels.try_send(dc).is_err() {
            tracing::warn!("peer opened more data channels than we serve; ignoring one");
        }
    }
}

/// Builds a peer connection with our bounds. The data-channel send buffer is always
/// limited: unbounded (webrtc's default) it grew to gigabytes under load.
pub async fn new_peer_connection(
    s: &RtcSettings,
) -> anyhow::Result<(Arc<dyn PeerConnection>, PcEvents)> {
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let (gathered_tx, gathered) = watch::channel(false);
    let (cand_tx, candidates) = mpsc::unbounded_channel();
    let (dc_tx, data_channels) = mpsc::channel(4);
    let handler = Arc::new(Handler {
        state: state_tx,
        gathered: gathered_tx,
        candidates: cand_tx,
        data_channels: dc_tx,
    });
    let setting = SettingEngineBuilder::new()
        .with_include_loopback_candidate(s.loopback())
        .build();
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(s.ice_servers.clone())
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(setting)
        .with_handler(handler)
        .with_udp_addrs(s.bind.clone())
        .with_data_channel_send_buffer_limit(s.send_buffer)
        .build()
        .await
        .context("creating a WebRTC peer connection")?;
    Ok((
        Arc::new(pc),
        PcEvents {
            state,
            gathered,
            candidates,
            data_channels,
        },
    ))
}

/// Waits until ICE gathering completes (or `timeout`), so a description carries its
/// candidates for peers that do not trickle (aiortc).
pub async fn wait_gathered(gathered: &mut watch::Receiver<bool>, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, gathered.wait_for(|g| *g)).await;
}

/// Waits for `Connected`; fails on `Failed`/`Closed` or after `timeout`.
pub async fn wait_connected(
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let r = tokio::time::timeout(
        timeout,
        state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        }),
    )
    .await;
    match r {
        Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
        Ok(Ok(s)) => anyhow::bail!("peer connection {}", *s),
        Ok(Err(_)) => anyhow::bail!("peer connection went away"),
        Err(_) => anyhow::bail!("no connection within {} s", timeout.as_secs()),
    }
}

/// Checks that the certificate the peer presented in the DTLS handshake has a
/// fingerprint listed in the SDP it signed. webrtc verifies the SDP's fingerprint during
/// the handshake; this ties that SDP to the signature we checked, and fails closed if the
/// stack cannot tell us.
pub async fn verify_remote_fingerprint(
    pc: &Arc<dyn PeerConnection>,
    signed_sdp: &str,
) -> Result<(), String> {
    let signed = crate::signaling::sdp_fingerprints(signed_sdp);
    if signed.is_empty() {
        return Err("the signed SDP has no a=fingerprint".into());
    }
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let remote_id = report.iter().find_map(|e| match e {
        RTCStatsReportEntry::Transport(t) if !t.remote_certificate_id.is_empty() => {
            Some(t.remote_certificate_id.clone())
        }
        _ => None,
    });
    let Some(remote_id) = remote_id else {
        return Err("the DTLS transport reports no remote certificate".into());
    };
    let cert = report.iter().find_map(|e| match e {
        RTCStatsReportEntry::Certificate(c) if e.id() == remote_id => Some((
            c.fingerprint_algorithm.to_ascii_lowercase(),
            c.fingerprint.to_ascii_uppercase(),
        )),
        _ => None,
    });
    match cert {
        Some(c) if signed.contains(&c) => Ok(()),
        Some((alg, fp)) => Err(format!(
            "remote certificate {alg} {fp} is not the one in the signed SDP"
        )),
        None => Err("remote certificate stats missing".into()),
    }
}
