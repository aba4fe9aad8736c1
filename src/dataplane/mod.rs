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
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
};

/// Peer-connection settings resolved from `[webrtc]`.
#[derive(Debug, Clone)]
pub struct RtcSettings {
    pub ice_servers: Vec<RTCIceServer>,
    pub bind: Vec<String>,
    pub send_buffer: usize,
    pub max_message: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// SO_RCVBUF / SO_SNDBUF asked for on every WebRTC UDP socket.
    pub udp_buffer: usize,
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
            request_timeout: w.request_timeout.0,
            udp_buffer: w.udp_buffer.0 as usize,
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
    let runtime = tuned_runtime(s.udp_buffer)?;
    let pc = PeerConnectionBuilder::new()
        .with_runtime(runtime)
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

/// The tokio runtime webrtc would use, but with larger UDP socket buffers.
///
/// A 1 MiB chunk leaves as a burst of ~900 datagrams. With the kernel's default 208 KiB
/// receive buffer the tail of a burst is dropped at the receiver (`RcvbufErrors` rises),
/// and a loss at the end of a short transfer is only recovered by SCTP's retransmission
/// timeout, a full second: the stall seen on single-chunk GETs. Bigger socket buffers
/// absorb the burst. The kernel caps the request at `net.core.rmem_max` /
/// `net.core.wmem_max`; the package raises those (docs/deploy.md).
fn tuned_runtime(buffer: usize) -> anyhow::Result<Arc<dyn Runtime>> {
    let inner = webrtc::runtime::default_runtime()
        .ok_or_else(|| anyhow::anyhow!("no tokio runtime for WebRTC"))?;
    Ok(Arc::new(TunedRuntime { inner, buffer }))
}

#[derive(Debug)]
struct TunedRuntime {
    inner: Arc<dyn Runtime>,
    buffer: usize,
}

static WARNED_BUFFER: std::sync::Once = std::sync::Once::new();

fn set_buffer(fd: std::os::fd::RawFd, opt: libc::c_int, want: usize) -> usize {
    let v = want.min(i32::MAX as usize) as libc::c_int;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt/getsockopt on a socket we own, with a c_int-sized value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            len,
        );
        let mut got: libc::c_int = 0;
        let mut got_len = len;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut got as *mut libc::c_int as *mut libc::c_void,
            &mut got_len,
        );
        // Linux reports double the usable size.
        got.max(0) as usize / 2
    }
}

impl Runtime for TunedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }
    fn spawn_reactor(
        &self,
        n: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(n, future)
    }
    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let rcv = set_buffer(fd, libc::SO_RCVBUF, self.buffer);
        let snd = set_buffer(fd, libc::SO_SNDBUF, self.buffer);
        if rcv < self.buffer / 2 || snd < self.buffer / 2 {
            WARNED_BUFFER.call_once(|| {
                tracing::info!(
                    wanted = self.buffer,
                    receive = rcv,
                    send = snd,
                    "UDP socket buffers capped by the kernel; raise net.core.rmem_max and net.core.wmem_max for faster short transfers"
                )
            });
        }
        self.inner.wrap_udp_socket(socket)
    }
    fn wrap_tcp_listener(
        &self,
        l: std::net::TcpListener,
    ) -> std::io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(l)
    }
    fn connect_tcp<'a>(
        &'a self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(addr)
    }
    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(d)
    }
    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }
    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }
    fn name(&self) -> &'static str {
        "tokio (tuned UDP buffers)"
    }
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
