//! `ddc-edge put` and `ddc-edge get`: files to and from nodes over the data plane.
//!
//! The client joins the broker with its own key (`--key`, created on first use), learns
//! which nodes are online from their retained status and health, and talks to them over
//! WebRTC. Both commands resume: a put first asks the node which chunks it already HAS
//! and uploads only the rest; a get verifies every chunk and looks for missing ones on
//! other nodes. Progress shows on a terminal only.

use crate::config::{Broker, Config};
use crate::dataplane::RtcSettings;
use crate::dataplane::client::{ClientError, Conn};
use crate::dataplane::signal::{Signal, client_topic};
use crate::identity::Identity;
use crate::mqtt::session::{self, Session};
use crate::store::{ChunkId, Hasher, Manifest};
use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Uploads and downloads in flight per connection.
const PARALLEL: usize = 4;

/// What the client knows about a node from its retained messages.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub online: bool,
    /// Its health is signed by its own key (and, with `fleet.ca`, it is enrolled): a
    /// status "online" alone proves nothing.
    pub verified: bool,
    pub free_bytes: Option<u64>,
    pub draining: bool,
}

/// A client on the broker: signaling plus the nodes' status and health.
pub struct ClientHub {
    pub signal: Arc<Signal>,
    pub settings: RtcSettings,
    pub nodes: Arc<Mutex<HashMap<String, NodeInfo>>>,
    session: Session,
}

/// The default client key: `$XDG_CONFIG_HOME/ddc-edge/client.key` or
/// `~/.config/ddc-edge/client.key`.
pub fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ddc-edge").join("client.key")
}

impl ClientHub {
    pub async fn join(cfg: &Config, key: &Path) -> anyhow::Result<ClientHub> {
        let identity = Arc::new(
            Identity::load_or_create_file(key)
                .with_context(|| format!("client key {}", key.display()))?,
        );
        let prefix = cfg.mqtt.topic_prefix.clone();
        let my_topic = client_topic(&prefix, identity.node_id());
        let embedded =
            matches!(cfg.mqtt.broker, Broker::Embedded).then_some(cfg.mqtt.embedded_listen);
        let client_id = format!(
            "ddc-client-{}-{}",
            &identity.node_id()[..8],
            crate::dataplane::signal::new_session_id()
                .get(..8)
                .unwrap_or("0")
        );
        let options = session::options(cfg, &client_id, None, embedded)?;
        let (tx, mut rx) = mpsc::channel(256);
        let status_filter = format!("{prefix}/nodes/+/status");
        let health_filter = format!("{prefix}/nodes/+/health");
        let on_connect: session::OnConnect = {
            let (t, s, h) = (
                my_topic.clone(),
                status_filter.clone(),
                health_filter.clone(),
            );
            Arc::new(move |c: &AsyncClient| {
                let _ = c.try_subscribe_many([
                    SubscribeFilter::new(t.clone(), QoS::AtLeastOnce),
                    SubscribeFilter::new(s.clone(), QoS::AtLeastOnce),
                    SubscribeFilter::new(h.clone(), QoS::AtLeastOnce),
                ]);
            })
        };
        let session = Session::spawn(options, cfg.mqtt.reconnect_max.0, on_connect, tx);
        let mut subscribed = session.subscribed.clone();
        let signal = Signal::new(
            identity,
            session.client.clone(),
            &prefix,
            my_topic.clone(),
            None,
        );
        let nodes: Arc<Mutex<HashMap<String, NodeInfo>>> = Arc::default();
        let ca = crate::fleet::parse_ca(&cfg.fleet.ca).ok();
        // The broker sends the retained status and health of every node when we
        // subscribe; a message we publish to our own topic after the SUBACK comes back
        // behind them. Waiting for it replaces a fixed wait (it was 300 ms, a third of
        // a 1 MiB `get`).
        let marker = format!(
            "ddc-edge-sync {}",
            crate::dataplane::signal::new_session_id()
        )
        .into_bytes();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let (signal, nodes) = (Arc::clone(&signal), Arc::clone(&nodes));
            let nodes_prefix = format!("{prefix}/nodes/");
            let (my_topic, marker) = (my_topic.clone(), marker.clone());
            let mut synced_tx = Some(synced_tx);
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    if p.topic == my_topic {
                        if p.payload[..] == marker[..] {
                            if let Some(tx) = synced_tx.take() {
                                let _ = tx.send(());
                            }
                        } else {
                            signal.on_message(&p.payload);
                        }
                        continue;
                    }
                    let Some(rest) = p.topic.strip_prefix(&nodes_prefix) else {
                        continue;
                    };
                    let Some((id, leaf)) = rest.split_once('/') else {
                        continue;
                    };
                    let mut n = nodes.lock().unwrap_or_else(|e| e.into_inner());
                    let info = n.entry(id.to_string()).or_default();
                    match leaf {
                        "status" => info.online = &p.payload[..] == b"online",
                        "health" => match crate::fleet::verify_health(
                            id,
                            &p.payload,
                            ca.as_ref(),
                            crate::control::unix_now(),
                        ) {
                            Ok(h) => {
                                info.verified = true;
                                info.free_bytes = h["disk"]["free_bytes"].as_u64();
                                info.draining = h["draining"].as_bool().unwrap_or(false);
                            }
                            Err(crate::fleet::Rejected::NotEnrolled(_)) => info.verified = false,
                            Err(crate::fleet::Rejected::Forged(_)) => {}
                        },
                        _ => {}
                    }
                }
            });
        }
        let connect_timeout = cfg.webrtc.connect_timeout.0;
        if tokio::time::timeout(connect_timeout, subscribed.wait_for(|s| *s))
            .await
            .is_err()
        {
            bail!(
                "cannot reach the MQTT broker at {} within {} s",
                cfg.mqtt.broker,
                connect_timeout.as_secs()
            );
        }
        let _ = session
            .client
            .publish(my_topic.as_str(), QoS::AtLeastOnce, false, marker)
            .await;
        if tokio::time::timeout(Duration::from_secs(3), synced_rx)
            .await
            .is_err()
        {
            warn!(
                "the broker did not echo our sync marker within 3 s; going on with the nodes seen so far"
            );
        }
        Ok(ClientHub {
            signal,
            settings: RtcSettings::from_config(cfg),
            nodes,
            session,
        })
    }

    /// Online nodes, most free space first.
    pub fn online(&self) -> Vec<String> {
        let n = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(&String, &NodeInfo)> =
            n.iter().filter(|(_, i)| i.online && i.verified).collect();
        v.sort_by_key(|(id, i)| (std::cmp::Reverse(i.free_bytes.unwrap_or(0)), (*id).clone()));
        v.into_iter().map(|(id, _)| id.clone()).collect()
    }

    pub async fn connect(&self, node: &str) -> Result<Conn, ClientError> {
        Conn::connect(&self.signal, &self.settings, node).await
    }

    pub async fn leave(self) {
        self.session.shutdown(None).await;
    }
}

fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// A chunk of a local file: its ID, offset and length.
type FileChunk = (ChunkId, u64, usize);

/// Chunk IDs of a file (and its size), computed without storing anything.
fn chunk_ids(path: &Path, chunk_size: u32) -> anyhow::Result<(Vec<FileChunk>, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; chunk_size as usize];
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = f
                .read(&mut buf[n..])
                .with_context(|| format!("reading {}", path.display()))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        let mut h = Hasher::new();
        h.update(&buf[..n]);
        out.push((h.finish(), offset, n));
        offset += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok((out, offset))
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Uploads a file to `targets` (or to the online node with the most room) and returns
/// its ID. `replicas`: copies wanted when more than the fleet default (recorded in the
/// manifest).
pub async fn put(
    cfg: &Config,
    key: &Path,
    file: &Path,
    targets: &[String],
    replicas: Option<u8>,
) -> anyhow::Result<ChunkId> {
    let hub = ClientHub::join(cfg, key).await?;
    let targets: Vec<String> = if targets.is_empty() {
        let online = hub.online();
        if online.is_empty() {
            bail!(
                "no node is online on {} (none has a retained \"online\" status)",
                cfg.mqtt.broker
            );
        }
        online.into_iter().take(1).collect()
    } else {
        targets.to_vec()
    };
    let chunk_size = cfg.storage.chunk_size.0 as u32;
    let path = file.to_path_buf();
    let (chunks, size) =
        tokio::task::spawn_blocking(move || chunk_ids(&path, chunk_size)).await??;
    let manifest = Manifest {
        ddc_manifest: crate::store::manifest::VERSION,
        size,
        chunk_size,
        chunks: chunks.iter().map(|(id, _, _)| *id).collect(),
        replicas,
    };
    let manifest_bytes = Bytes::from(manifest.encode());
    let file_id = ChunkId::of(&manifest_bytes);
    let mut failures = Vec::new();
    for node in &targets {
        match put_to(&hub, node, file, &chunks, size, &file_id, &manifest_bytes).await {
            Ok((sent, skipped)) => {
                info!(%node, uploaded = sent, already_there = skipped, "file stored")
            }
            Err(e) => failures.push(format!("{node}: {e:#}")),
        }
    }
    hub.leave().await;
    if failures.len() == targets.len() {
        bail!(
            "could not store the file on any node:\n  {}",
            failures.join("\n  ")
        );
    }
    for f in &failures {
        warn!("{f}");
    }
    Ok(file_id)
}

async fn put_to(
    hub: &ClientHub,
    node: &str,
    file: &Path,
    chunks: &[FileChunk],
    size: u64,
    file_id: &ChunkId,
    manifest: &Bytes,
) -> anyhow::Result<(usize, usize)> {
    let conn = Arc::new(hub.connect(node).await?);
    let result = upload(&conn, node, file, chunks, size, file_id, manifest).await;
    // Say bye however it went: the node frees our peer slot now, not after a timeout.
    if let Ok(c) = Arc::try_unwrap(conn) {
        c.close().await;
    }
    result
}

async fn upload(
    conn: &Arc<Conn>,
    node: &str,
    file: &Path,
    chunks: &[FileChunk],
    size: u64,
    file_id: &ChunkId,
    manifest: &Bytes,
) -> anyhow::Result<(usize, usize)> {
    if !conn.can_write {
        // HELLO says "no writes" both for a key that may not write and for a node that
        // is draining: tell them apart for the user.
        let draining = conn
            .stat()
            .await
            .ok()
            .and_then(|s| s["draining"].as_bool())
            .unwrap_or(false);
        if draining {
            bail!("node {node} is draining: it accepts no new data (try another node)");
        }
        bail!(
            "node {node} does not accept writes from this client's key (see security.allowed_writers)"
        );
    }
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.0).collect();
    let claimed = conn.has(&ids).await?;
    // HAS is the node's claim; a chunk is skipped only once the node proves it holds
    // it (a hash over a fresh nonce and a random range, checked against our file), so a
    // lying or broken node cannot leave us with a file ID whose data it does not have.
    let mut have = Vec::with_capacity(chunks.len());
    for ((id, offset, len), claims) in chunks.iter().zip(&claimed) {
        let proved = if *claims {
            let (path, offset, len) = (file.to_path_buf(), *offset, *len);
            let data = tokio::task::spawn_blocking(move || read_at(&path, offset, len)).await??;
            let ok = conn.proves(id, &data).await?;
            if !ok {
                warn!(%node, chunk = %id, "the node claims a chunk it cannot prove it holds; uploading it");
            }
            ok
        } else {
            false
        };
        have.push(proved);
    }
    let missing: Vec<&FileChunk> = chunks
        .iter()
        .zip(&have)
        .filter(|(_, h)| !**h)
        .map(|(c, _)| c)
        .collect();
    // Refuse up front what cannot fit, rather than leave half a file behind.
    let needed: u64 = missing.iter().map(|c| c.2 as u64).sum::<u64>() + manifest.len() as u64;
    if let Ok(stat) = conn.stat().await
        && let Some(free) = stat.get("free_bytes").and_then(|v| v.as_u64())
        && needed > free
    {
        bail!(
            "node {node} has room for {free} more bytes, this file needs {needed}: nothing uploaded"
        );
    }
    let skipped = chunks.len() - missing.len();
    let pb = progress(size, "put");
    pb.inc(
        chunks
            .iter()
            .zip(&have)
            .filter(|(_, h)| **h)
            .map(|(c, _)| c.2 as u64)
            .sum(),
    );
    let mut uploads = futures::stream::iter(missing.iter().map(|(id, offset, len)| {
        let (conn, path, pb) = (Arc::clone(conn), file.to_path_buf(), pb.clone());
        let (id, offset, len) = (*id, *offset, *len);
        async move {
            let data = tokio::task::spawn_blocking(move || read_at(&path, offset, len)).await??;
            conn.put(&id, &data)
                .await
                .with_context(|| format!("chunk {id}"))?;
            pb.inc(len as u64);
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(PARALLEL);
    while let Some(r) = uploads.next().await {
        r?;
    }
    drop(uploads);
    conn.put(file_id, manifest).await.context("manifest")?;
    pb.finish_and_clear();
    Ok((missing.len(), skipped))
}

/// Downloads file `id` into `out`, from `sources` or any online node that has it.
pub async fn get(
    cfg: &Config,
    key: &Path,
    id: &ChunkId,
    out: &Path,
    sources: &[String],
) -> anyhow::Result<u64> {
    let hub = ClientHub::join(cfg, key).await?;
    let candidates = if sources.is_empty() {
        hub.online()
    } else {
        sources.to_vec()
    };
    if candidates.is_empty() {
        bail!("no node is online on {} to fetch from", cfg.mqtt.broker);
    }
    let result = get_from(&hub, id, out, &candidates).await;
    hub.leave().await;
    result
}

async fn get_from(
    hub: &ClientHub,
    id: &ChunkId,
    out: &Path,
    candidates: &[String],
) -> anyhow::Result<u64> {
    // One connection per node, opened at once (one after another, a fleet of ten cost
    // ten set-ups before the first byte), reused for every chunk of the file.
    let mut conns: Vec<Conn> = Vec::new();
    let mut errors = Vec::new();
    let attempts = futures::future::join_all(candidates.iter().map(|node| hub.connect(node))).await;
    for (node, attempt) in candidates.iter().zip(attempts) {
        match attempt {
            Ok(c) => conns.push(c),
            Err(e) => errors.push(format!("{node}: {e}")),
        }
    }
    if conns.is_empty() {
        bail!("no node could be reached:\n  {}", errors.join("\n  "));
    }
    // The manifest, from the first node that has it.
    let mut manifest = None;
    for c in &conns {
        match c.get(id).await {
            Ok(b) => {
                manifest = Some(Manifest::decode(&b).with_context(|| format!("{id}"))?);
                break;
            }
            Err(ClientError::Status(crate::protocol::Status::NotFound, _)) => continue,
            Err(e) => errors.push(format!("{}: {e}", c.node_id)),
        }
    }
    let Some(m) = manifest else {
        bail!(
            "no reachable node has file {id}{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(":\n  {}", errors.join("\n  "))
            }
        );
    };
    let tmp = out.with_extension("ddc-partial");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let pb = progress(m.size, "get");
    let conns = Arc::new(conns);
    let fetches = futures::stream::iter(m.chunks.iter().enumerate().map(|(i, cid)| {
        let (conns, cid, want) = (Arc::clone(&conns), *cid, m.chunk_len(i));
        async move {
            let mut last = None;
            for c in conns.iter() {
                match c.get(&cid).await {
                    Ok(b) if b.len() as u64 == want => return Ok(b),
                    Ok(_) => last = Some(format!("{}: chunk {i} has the wrong length", c.node_id)),
                    Err(e) => last = Some(format!("{}: {e}", c.node_id)),
                }
            }
            Err(anyhow::anyhow!(
                "chunk {i} ({cid}) is on no reachable node ({})",
                last.unwrap_or_default()
            ))
        }
    }))
    .buffered(PARALLEL);
    let mut fetches = Box::pin(fetches);
    let mut written = 0u64;
    let result: anyhow::Result<()> = async {
        while let Some(chunk) = fetches.next().await {
            let chunk = chunk?;
            w.write_all(&chunk)?;
            written += chunk.len() as u64;
            pb.inc(chunk.len() as u64);
        }
        w.flush()?;
        Ok(())
    }
    .await;
    pb.finish_and_clear();
    drop(fetches);
    if let Ok(conns) = Arc::try_unwrap(conns) {
        for c in conns {
            c.close().await;
        }
    }
    match result {
        Ok(()) => {
            std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
