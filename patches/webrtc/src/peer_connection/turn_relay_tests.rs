//! A data channel over a TURN relay must move data as packets arrive, not as timers fire.
//!
//! The driver used to hand relayed traffic over one loop pass late in both directions: the
//! core's packets for a relayed candidate were wrapped by the TURN client after that pass's
//! socket writes, and data arriving through the relay reached the core after them. Either way
//! the answer waited for the next socket read or timer. Over a real relay the transfer then ran
//! at the pace of SCTP's timers: 10x slower than direct in ddc-edge's network lab.
//!
//! Here a mock TURN server relays between a relay-only peer and a host peer on the mock
//! network. Once the channel is open, the virtual clocks stand still: a megabyte must cross
//! anyway, because every step of it is driven by a packet. With the late hand-over it stalls
//! after the first flight, since nothing but a timer would have sent the rest.

use super::*;
use crate::runtime::AsyncUdpSocket;
use crate::runtime::mock::{MockRuntime, MockUDPNetwork};
use bytes::BytesMut;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::stun::attributes::{ATTR_NONCE, ATTR_REALM};
use rtc::stun::error_code::CODE_UNAUTHORIZED;
use rtc::stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH,
    METHOD_SEND, Message as StunMessage, MessageType, Setter,
};
use rtc::stun::textattrs::{Nonce, Realm};
use rtc::turn::proto::chandata::ChannelData;
use rtc::turn::proto::channum::ChannelNumber;
use rtc::turn::proto::data::Data;
use rtc::turn::proto::lifetime::Lifetime;
use rtc::turn::proto::peeraddr::PeerAddress;
use rtc::turn::proto::relayaddr::RelayedAddress;
use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicUsize;

/// What the relay knows about its one client.
#[derive(Default)]
struct Relay {
    client: Option<SocketAddr>,
    channels: HashMap<u16, SocketAddr>,
    /// Bytes relayed from the client to its peers.
    relayed: usize,
}

fn bind(rt: &MockRuntime) -> Arc<dyn AsyncUdpSocket> {
    let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("reserve a port");
    rt.wrap_udp_socket(std_socket)
        .expect("bind on the mock network")
}

/// The client side of a minimal TURN server (RFC 8656): Allocate (after one 401),
/// CreatePermission, ChannelBind and Refresh are granted; Send indications and ChannelData
/// leave from the relay socket.
async fn serve_client(
    server: Arc<dyn AsyncUdpSocket>,
    relay_socket: Arc<dyn AsyncUdpSocket>,
    relay: Arc<StdMutex<Relay>>,
) {
    let relay_addr = relay_socket.local_addr().expect("relay address");
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = server.recv_from(&mut buf).await else {
            return;
        };
        relay.lock().unwrap().client = Some(from);
        if ChannelData::is_channel_data(&buf[..n]) {
            let mut cd = ChannelData {
                raw: buf[..n].to_vec(),
                ..Default::default()
            };
            let peer = cd
                .decode()
                .ok()
                .and_then(|_| relay.lock().unwrap().channels.get(&cd.number.0).copied());
            if let Some(peer) = peer {
                relay.lock().unwrap().relayed += cd.data.len();
                let _ = relay_socket.send_to(&cd.data, peer).await;
            }
            continue;
        }
        let mut msg = StunMessage::new();
        msg.raw = buf[..n].to_vec();
        if msg.decode().is_err() {
            continue;
        }
        if msg.typ == MessageType::new(METHOD_SEND, CLASS_INDICATION) {
            let mut peer = PeerAddress::default();
            let mut data = Data::default();
            if peer.get_from(&msg).is_ok() && data.get_from(&msg).is_ok() {
                relay.lock().unwrap().relayed += data.0.len();
                let _ = relay_socket
                    .send_to(&data.0, SocketAddr::new(peer.ip, peer.port))
                    .await;
            }
            continue;
        }
        if msg.typ.class != CLASS_REQUEST {
            continue;
        }
        // Built apart from the await below: `dyn Setter` is not `Send`.
        let response = (|| {
            let method = msg.typ.method;
            let mut attrs: Vec<Box<dyn Setter>> = vec![Box::new(msg.transaction_id)];
            if method == METHOD_ALLOCATE && msg.get(ATTR_NONCE).is_err() {
                attrs.push(Box::new(MessageType::new(method, CLASS_ERROR_RESPONSE)));
                attrs.push(Box::new(CODE_UNAUTHORIZED));
                attrs.push(Box::new(Realm::new(ATTR_REALM, "lab".to_owned())));
                attrs.push(Box::new(Nonce::new(ATTR_NONCE, "nonce".to_owned())));
            } else {
                attrs.push(Box::new(MessageType::new(method, CLASS_SUCCESS_RESPONSE)));
                match method {
                    METHOD_ALLOCATE => {
                        attrs.push(Box::new(RelayedAddress {
                            ip: relay_addr.ip(),
                            port: relay_addr.port(),
                        }));
                        attrs.push(Box::new(Lifetime(Duration::from_secs(600))));
                    }
                    METHOD_REFRESH => attrs.push(Box::new(Lifetime(Duration::from_secs(600)))),
                    METHOD_CHANNEL_BIND => {
                        let mut number = ChannelNumber::default();
                        let mut peer = PeerAddress::default();
                        if number.get_from(&msg).is_err() || peer.get_from(&msg).is_err() {
                            return None;
                        }
                        relay
                            .lock()
                            .unwrap()
                            .channels
                            .insert(number.0, SocketAddr::new(peer.ip, peer.port));
                    }
                    METHOD_CREATE_PERMISSION => {}
                    _ => return None,
                }
            }
            let mut response = StunMessage::new();
            response.build(&attrs).ok()?;
            Some(response.raw)
        })();
        if let Some(raw) = response
            && server.send_to(&raw, from).await.is_err()
        {
            return;
        }
    }
}

/// The peer side: what arrives at the relay address goes to the client, as ChannelData when
/// the peer has a channel and as a Data indication otherwise.
async fn serve_peers(
    server: Arc<dyn AsyncUdpSocket>,
    relay_socket: Arc<dyn AsyncUdpSocket>,
    relay: Arc<StdMutex<Relay>>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, peer)) = relay_socket.recv_from(&mut buf).await else {
            return;
        };
        let (client, channel) = {
            let r = relay.lock().unwrap();
            let channel = r
                .channels
                .iter()
                .find(|(_, a)| **a == peer)
                .map(|(c, _)| *c);
            (r.client, channel)
        };
        let Some(client) = client else { continue };
        let raw = match channel {
            Some(number) => {
                let mut cd = ChannelData {
                    data: buf[..n].to_vec(),
                    number: ChannelNumber(number),
                    ..Default::default()
                };
                cd.encode();
                cd.raw
            }
            None => {
                let mut msg = StunMessage::new();
                let built = msg.build(&[
                    Box::new(rtc::stun::message::TransactionId::new()),
                    Box::new(MessageType::new(METHOD_DATA, CLASS_INDICATION)),
                    Box::new(PeerAddress {
                        ip: peer.ip(),
                        port: peer.port(),
                    }),
                    Box::new(Data(buf[..n].to_vec())),
                ]);
                if built.is_err() {
                    continue;
                }
                msg.raw
            }
        };
        if server.send_to(&raw, client).await.is_err() {
            return;
        }
    }
}

/// Records what a peer's handler sees.
#[derive(Default)]
struct Recorder {
    candidates: StdMutex<Vec<RTCIceCandidateInit>>,
    connected: AtomicBool,
    channels: StdMutex<Vec<Arc<dyn DataChannel>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Recorder {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.store(true, Ordering::SeqCst);
        }
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.candidates.lock().unwrap().push(init);
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        self.channels.lock().unwrap().push(dc);
    }
}

struct Peer {
    pc: Box<dyn PeerConnection>,
    rt: Arc<MockRuntime>,
    rec: Arc<Recorder>,
}

async fn build_peer(network: &Arc<MockUDPNetwork>, config: RTCConfiguration) -> Peer {
    let rt = Arc::new(MockRuntime::with_network(Arc::clone(network)));
    let rec = Arc::new(Recorder::default());
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(setting_engine)
        .with_runtime(Arc::clone(&rt) as Arc<dyn Runtime>)
        .with_handler(Arc::clone(&rec) as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec!["127.0.0.1:0"])
        .build()
        .await
        .expect("a peer connection builds on the mock runtime");
    Peer {
        pc: Box::new(pc),
        rt,
        rec,
    }
}

/// Lets the driver threads run (they are OS threads under `MockRuntime`); protocol time only
/// moves when a test advances the clocks.
fn settle() {
    std::thread::yield_now();
    std::thread::sleep(Duration::from_millis(2));
}

const TOTAL: usize = 1 << 20;
const MESSAGE: usize = 16 * 1024;

#[test]
fn relayed_data_moves_without_waiting_for_timers() {
    let network = Arc::new(MockUDPNetwork::new());
    let driver = MockRuntime::with_network(Arc::clone(&network));
    driver.block_on(Box::pin(async {
        let server = bind(&driver);
        let relay_socket = bind(&driver);
        let relay = Arc::new(StdMutex::new(Relay::default()));
        let turn_addr = server.local_addr().unwrap();
        let _client_side = driver.spawn(Box::pin(serve_client(
            Arc::clone(&server),
            Arc::clone(&relay_socket),
            Arc::clone(&relay),
        )));
        let _peer_side = driver.spawn(Box::pin(serve_peers(
            Arc::clone(&server),
            Arc::clone(&relay_socket),
            Arc::clone(&relay),
        )));

        let relayed = build_peer(
            &network,
            RTCConfigurationBuilder::new()
                .with_ice_servers(vec![RTCIceServer {
                    urls: vec![format!("turn:{turn_addr}?transport=udp")],
                    username: "user".to_owned(),
                    credential: "pass".to_owned(),
                }])
                .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
                .build(),
        )
        .await;
        let direct = build_peer(&network, RTCConfigurationBuilder::new().build()).await;

        let dc = relayed
            .pc
            .create_data_channel("bulk", None)
            .await
            .expect("create data channel");
        let offer = relayed.pc.create_offer(None).await.expect("offer");
        relayed
            .pc
            .set_local_description(offer.clone())
            .await
            .unwrap();
        direct.pc.set_remote_description(offer).await.unwrap();
        let answer = direct.pc.create_answer(None).await.expect("answer");
        direct
            .pc
            .set_local_description(answer.clone())
            .await
            .unwrap();
        relayed.pc.set_remote_description(answer).await.unwrap();

        // Connect through the relay, moving the clocks as ICE, DTLS and SCTP need.
        let mut open = false;
        for _ in 0..400 {
            for (from, to) in [(&relayed, &direct), (&direct, &relayed)] {
                let candidates = std::mem::take(&mut *from.rec.candidates.lock().unwrap());
                for c in candidates {
                    to.pc.add_ice_candidate(c).await.ok();
                }
            }
            if relayed.rec.connected.load(Ordering::SeqCst)
                && !direct.rec.channels.lock().unwrap().is_empty()
            {
                open = true;
                break;
            }
            relayed.rt.clock().advance(Duration::from_millis(25));
            direct.rt.clock().advance(Duration::from_millis(25));
            settle();
        }
        assert!(open, "the relayed data channel did not open");
        loop {
            match futures::FutureExt::now_or_never(dc.poll()) {
                Some(Some(DataChannelEvent::OnOpen)) => break,
                Some(Some(_)) => {}
                Some(None) => panic!("the data channel closed"),
                None => {
                    relayed.rt.clock().advance(Duration::from_millis(25));
                    direct.rt.clock().advance(Duration::from_millis(25));
                    settle();
                }
            }
        }

        // From here on the clocks stand still.
        let received = Arc::new(AtomicUsize::new(0));
        let rx = direct.rec.channels.lock().unwrap()[0].clone();
        let counter = Arc::clone(&received);
        let _reader = direct.rt.spawn(Box::pin(async move {
            while let Some(event) = rx.poll().await {
                if let DataChannelEvent::OnMessage(m) = event {
                    counter.fetch_add(m.data.len(), Ordering::SeqCst);
                }
            }
        }));
        for _ in 0..TOTAL / MESSAGE {
            dc.send(BytesMut::from(&[7u8; MESSAGE][..]))
                .await
                .expect("send");
        }
        // Waiting on the wall clock only for the drivers' threads: 2,500 passes of 2 ms are
        // far more than a megabyte over the in-memory network needs.
        for _ in 0..2500 {
            if received.load(Ordering::SeqCst) == TOTAL {
                break;
            }
            settle();
        }
        assert_eq!(
            received.load(Ordering::SeqCst),
            TOTAL,
            "a relayed transfer stalled while no timer could fire"
        );
        let relayed_bytes = relay.lock().unwrap().relayed;
        assert!(
            relayed_bytes > TOTAL,
            "only {relayed_bytes} bytes went through the relay"
        );
        relayed.pc.close().await.ok();
        direct.pc.close().await.ok();
    }));
}
