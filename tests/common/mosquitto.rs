//! A real mosquitto on a free loopback port, and a real MQTT client to drive the agent.
//! Fails loudly when mosquitto is missing: scripts/prereqs.sh installs it.
#![allow(dead_code)]

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_bin() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed: the MQTT tests need a real broker (run scripts/prereqs.sh)"
    );
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// Extra lines go into the listener section (TLS settings, say).
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).unwrap();
        // `user root`: as root, mosquitto would otherwise drop to its own user, which cannot
        // read this test's private temp dir.
        writeln!(f, "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlistener {port} 127.0.0.1\n{extra}").unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
            _dir: dir,
        };
        m.launch();
        m
    }

    fn launch(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mosquitto exited at start ({status}); config {}",
                    self.conf.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client's config for this broker, with WebRTC on loopback only.
    pub fn client_config(&self) -> ddc_edge::config::Config {
        let mut c = ddc_edge::config::Config::default();
        c.mqtt.broker = self.url().parse().unwrap();
        c.webrtc.bind = vec!["127.0.0.1:0".into()];
        c
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.topic, self.text()))
    }
}

/// A test client: subscribes, publishes, and collects everything it receives.
pub struct Probe {
    pub client: Client,
    rx: mpsc::Receiver<Msg>,
    pub seen: Vec<Msg>,
}

impl Probe {
    pub fn connect(port: u16, subscriptions: &[&str]) -> Probe {
        Self::connect_as(port, None, subscriptions)
    }

    /// A probe logged in as `user` with `password` (for brokers with an ACL).
    pub fn connect_as(port: u16, login: Option<(&str, &str)>, subscriptions: &[&str]) -> Probe {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "probe-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = login {
            o.set_credentials(user, password);
        }
        let (client, mut conn) = Client::new(o, 64);
        for s in subscriptions {
            client.subscribe(*s, QoS::AtLeastOnce).unwrap();
        }
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let expected = subscriptions.len();
        std::thread::spawn(move || {
            let mut acks = 0;
            if expected == 0 {
                let _ = ready_tx.send(());
            }
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks += 1;
                        if acks == expected {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("probe subscriptions not acknowledged");
        Probe {
            client,
            rx,
            seen: Vec::new(),
        }
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .unwrap();
    }

    /// Waits for a message matching `pred` (already-seen messages count).
    pub fn wait(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Msg {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        self.wait_new(what, timeout, pred)
    }

    /// Waits for a new message matching `pred`, ignoring earlier ones.
    pub fn wait_new(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return m;
                    }
                }
                Err(_) => {
                    let topics: Vec<String> = self
                        .seen
                        .iter()
                        .map(|m| {
                            format!(
                                "{} {}",
                                m.topic,
                                m.text().chars().take(120).collect::<String>()
                            )
                        })
                        .collect();
                    panic!("no {what} within {timeout:?}; saw:\n{}", topics.join("\n"));
                }
            }
        }
    }

    /// The most recent message matching `pred`: everything already delivered is read
    /// first (so a backlog never passes for fresh news); if none of it matches, waits for
    /// a new one.
    pub fn latest(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Msg {
        let mut found = None;
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m.clone());
            if pred(&m) {
                found = Some(m);
            }
        }
        match found {
            Some(m) => m,
            None => self.wait_new(what, timeout, pred),
        }
    }

    /// Everything received within `d`.
    pub fn drain_for(&mut self, d: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(m) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(m.clone());
            out.push(m);
        }
        out
    }
}
