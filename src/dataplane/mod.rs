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
pub mod ice_servers;
pub mod node;
pub mod signal;

use crate::config::Config;
use anyhow::Context;
use rtc::ice::mdns::MulticastDnsMode;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCStatsReportEntry, SettingEngineBuilder, StatsSelector,
};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
};

/// Peer-connection settings resolved from `[webrtc]`.
#[derive(Debug, Clone)]
pub struct RtcSettings {
    /// As configured: TURN REST credentials are computed per connection from these.
    pub ice_servers: Vec<crate::config::IceServer>,
    /// Names this device to a TURN server using REST credentials.
    pub turn_user: String,
    pub bind: Vec<String>,
    pub send_buffer: usize,
    pub max_message: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// SO_RCVBUF / SO_SNDBUF asked for on every WebRTC UDP socket.
    pub udp_buffer: usize,
    /// SCTP retransmission timeout: initial, floor, ceiling.
    pub sctp_rto: (Duration, Duration, Duration),
    /// DTLS handshake flight retransmission interval.
    pub dtls_retransmit: Duration,
}

impl RtcSettings {
    pub fn from_config(cfg: &Config) -> RtcSettings {
        let w = &cfg.webrtc;
        RtcSettings {
            ice_servers: w.ice_servers.clone(),
            turn_user: if cfg.node.name.is_empty() {
                "ddc-edge".into()
            } else {
                cfg.node.name.clone()
            },
            bind: w.bind.clone(),
            send_buffer: w.send_buffer.0 as usize,
            max_message: w.max_message.0 as u32,
            connect_timeout: w.connect_timeout.0,
            request_timeout: w.request_timeout.0,
            udp_buffer: w.udp_buffer.0 as usize,
            sctp_rto: (w.sctp_rto_initial.0, w.sctp_rto_min.0, w.sctp_rto_max.0),
            dtls_retransmit: w.dtls_retransmit.0,
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

/// ICE connectivity checks are paced at this interval. webrtc's 200 ms meant the
/// controlling side nominated a working pair only at its next tick: most of the 200 ms
/// a connection took on a LAN.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(25);
/// Checks per candidate pair before it is given up: 80 x 25 ms keeps webrtc's budget of
/// about 2 s per pair, so slow or lossy paths are not dropped sooner than before.
const ICE_MAX_CHECKS: u16 = 80;

/// Set once an mDNS socket could not be opened: later connections go without.
static NO_MDNS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Builds a peer connection with our bounds. The data-channel send buffer is always
/// limited: unbounded (webrtc's default) it grew to gigabytes under load.
///
/// mDNS (resolving browsers' `.local` host candidates) is optional: on a host without a
/// multicast route (a container or namespace with only `lo`, a link without multicast)
/// joining the mDNS group fails, and webrtc then fails the whole connection. We retry
/// without mDNS and remember it; browsers still connect through their connectivity
/// checks (peer-reflexive candidates), STUN and TURN.
pub async fn new_peer_connection(
    s: &RtcSettings,
) -> anyhow::Result<(Arc<dyn PeerConnection>, PcEvents)> {
    use std::sync::atomic::Ordering;
    if !NO_MDNS.load(Ordering::Relaxed) {
        match build_peer_connection(s, true).await {
            Ok(pc) => return Ok(pc),
            Err(e) => match build_peer_connection(s, false).await {
                Ok(pc) => {
                    NO_MDNS.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "mDNS is unavailable here (no multicast route?); connecting without it: browsers' .local candidates will not be resolved"
                    );
                    return Ok(pc);
                }
                Err(_) => return Err(e),
            },
        }
    }
    build_peer_connection(s, false).await
}

async fn build_peer_connection(
    s: &RtcSettings,
    mdns: bool,
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
    let (rto_initial, rto_min, rto_max) = s.sctp_rto;
    let mut setting = SettingEngineBuilder::new()
        .with_include_loopback_candidate(s.loopback())
        .with_sctp_rto(rto_initial, rto_min, rto_max)
        .with_dtls_retransmit_interval(s.dtls_retransmit)
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_CHECKS))
        // A pair of a worse kind is accepted only after these waits (webrtc: 500 ms,
        // 1 s, 2 s) so that a better one can still win; behind a home NAT the working
        // pair is peer-reflexive, which cost a whole second per connection.
        .with_srflx_acceptance_min_wait(Some(Duration::from_millis(100)))
        .with_prflx_acceptance_min_wait(Some(Duration::from_millis(150)))
        .with_relay_acceptance_min_wait(Some(Duration::from_millis(500)));
    if !mdns {
        setting = setting.with_multicast_dns_mode(MulticastDnsMode::Disabled);
    }
    let servers = ice_servers::resolve(&s.ice_servers, &s.turn_user, crate::control::unix_now());
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(servers)
        .build();
    let runtime = tuned_runtime(s.udp_buffer)?;
    let pc = PeerConnectionBuilder::new()
        .with_runtime(runtime)
        .with_configuration(config)
        .with_setting_engine(setting.build())
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

/// Asks for `want` bytes of receive and send buffer; returns what the kernel granted
/// (receive, send). A refusal is not an error: the socket works, only slower.
fn set_buffers(socket: &std::net::UdpSocket, want: usize) -> (usize, usize) {
    let s = socket2::SockRef::from(socket);
    let want = want.min(i32::MAX as usize);
    let _ = s.set_recv_buffer_size(want);
    let _ = s.set_send_buffer_size(want);
    // Linux reports double the usable size.
    (
        s.recv_buffer_size().unwrap_or(0) / 2,
        s.send_buffer_size().unwrap_or(0) / 2,
    )
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
        let (rcv, snd) = set_buffers(&socket, self.buffer);
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

/// The candidate types of the pair ICE selected, `local->remote` (`host->srflx`,
/// `relay->prflx`, ...), for the log: whether a connection went direct, through a NAT's
/// mapping or through a TURN relay is the first thing to know when one is slow.
pub async fn selected_path(pc: &Arc<dyn PeerConnection>) -> String {
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let pair_id = report.iter().find_map(|e| match e {
        RTCStatsReportEntry::Transport(t) if !t.selected_candidate_pair_id.is_empty() => {
            Some(t.selected_candidate_pair_id.clone())
        }
        _ => None,
    });
    let pair = report.iter().find_map(|e| match e {
        RTCStatsReportEntry::IceCandidatePair(p)
            if Some(e.id()) == pair_id.as_deref() || (pair_id.is_none() && p.nominated) =>
        {
            Some((p.local_candidate_id.clone(), p.remote_candidate_id.clone()))
        }
        _ => None,
    });
    let Some((local, remote)) = pair else {
        return "unknown".into();
    };
    // Candidate stats are keyed `RTCLocalIceCandidate_<id>` / `RTCRemoteIceCandidate_<id>`;
    // a remote candidate learned from a connectivity check was never signaled, so it has
    // no entry: it is peer-reflexive.
    let kind = |id: &str, prefix: &str, unlisted: &str| {
        let key = format!("{prefix}{id}");
        report
            .iter()
            .find_map(|e| match e {
                RTCStatsReportEntry::LocalCandidate(c)
                | RTCStatsReportEntry::RemoteCandidate(c)
                    if e.id() == key || e.id() == id =>
                {
                    Some(c.candidate_type.to_string())
                }
                _ => None,
            })
            .unwrap_or_else(|| unlisted.into())
    };
    let (local, remote) = (
        kind(&local, "RTCLocalIceCandidate_", "unknown"),
        kind(&remote, "RTCRemoteIceCandidate_", "prflx"),
    );
    format!("{local}->{remote}")
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
