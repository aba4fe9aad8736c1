//! `ddc-edge run`: wires the drivers to the core and runs until SIGINT or SIGTERM.
//!
//! Started here, in order: the node identity, the chunk store, the sensing thread, the
//! controller (runtime settings and command execution), the embedded broker when
//! configured, the MQTT session, and the tasks that publish health and events and answer
//! commands. docs/architecture.md shows how data moves between them.

use crate::bandwidth::Limiter;
use crate::config::{Broker, LoadedConfig};
use crate::control::Controller;
use crate::control::command::{Inbox, Outcome};
use crate::dataplane::node::{NodeServer, ReplicationServing};
use crate::dataplane::signal::Signal;
use crate::identity::Identity;
use crate::mqtt::event::Event;
use crate::mqtt::health::Health;
use crate::mqtt::{broker, discovery, session, topics::Topics};
use crate::replication::{self, Replicator, membership::Membership};
use crate::sensors::monitor::Monitor;
use crate::store::{AsyncStore, Store, StoreConfig, StoreEvent};
use anyhow::Context;
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

pub fn run(loaded: LoadedConfig) -> anyhow::Result<()> {
    crate::logging::init(&loaded.config.node.log);
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(loaded))
}

async fn run_async(loaded: LoadedConfig) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while we start must still stop us cleanly.
    let shutdown = shutdown_signal()?;
    let cfg = Arc::new(loaded.config);
    info!(version = env!("CARGO_PKG_VERSION"), config = %loaded.source, "ddc-edge starting");
    let data_dir = &cfg.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    let identity = Arc::new(Identity::load_or_create(data_dir)?);
    let store = Arc::new(Store::open(
        data_dir,
        StoreConfig::from_section(&cfg.storage),
    )?);
    info!(
        node_id = identity.node_id(),
        board = %cfg.board.name,
        data_dir = %data_dir.display(),
        quota = %cfg.storage.quota,
        egress = %cfg.bandwidth.egress,
        ingress = %cfg.bandwidth.ingress,
        replication = %cfg.bandwidth.replication,
        broker = %cfg.mqtt.broker,
        sysfs_root = %cfg.sensors.sysfs_root.display(),
        "configured"
    );
    let monitor = Monitor::spawn(&cfg).context("starting the sensor thread")?;
    let (events_tx, events_rx) = mpsc::channel::<Event>(64);
    let controller = Controller::new(
        Arc::clone(&cfg),
        Arc::clone(&identity),
        monitor,
        Arc::clone(&store),
        events_tx,
    )?;
    spawn_store_maintenance(Arc::clone(&store), &cfg);

    let embedded = match cfg.mqtt.broker {
        Broker::Embedded => {
            broker::start(
                cfg.mqtt.embedded_listen,
                cfg.web.enabled.then_some(cfg.mqtt.embedded_ws_listen),
            )?;
            Some(cfg.mqtt.embedded_listen)
        }
        Broker::Url(_) => None,
    };
    let topics = Arc::new(Topics::new(
        &cfg.mqtt.topic_prefix,
        identity.node_id(),
        &cfg.telemetry.discovery_prefix,
    ));
    let client_id = if cfg.mqtt.client_id.is_empty() {
        format!("ddc-edge-{}", identity.node_id())
    } else {
        cfg.mqtt.client_id.clone()
    };
    let options = session::options(&cfg, &client_id, Some(topics.status.as_str()), embedded)?;
    let discovery_payload = cfg.telemetry.homeassistant.then(|| {
        let name = if cfg.node.name.is_empty() {
            sysinfo::System::host_name().unwrap_or_default()
        } else {
            cfg.node.name.clone()
        };
        serde_json::to_vec(&discovery::payload(
            &topics,
            identity.node_id(),
            &name,
            &cfg.board.name,
            cfg.telemetry.interval.0,
        ))
        .expect("discovery serializes")
    });
    let discovery_payload = Arc::new(discovery_payload);

    let on_connect: session::OnConnect = {
        let (topics, controller, discovery_payload) = (
            Arc::clone(&topics),
            Arc::clone(&controller),
            Arc::clone(&discovery_payload),
        );
        Arc::new(move |client: &AsyncClient| {
            // Clean session: subscriptions and our retained state are restored on every
            // ConnAck. try_* never waits, so the event loop cannot block on itself.
            // One SUBSCRIBE for all, so one SubAck says the node is reachable.
            let mut filters = vec![
                SubscribeFilter::new(topics.cmd.clone(), QoS::AtLeastOnce),
                SubscribeFilter::new(topics.signal.clone(), QoS::AtLeastOnce),
                SubscribeFilter::new(topics.all_status.clone(), QoS::AtLeastOnce),
                SubscribeFilter::new(topics.all_member.clone(), QoS::AtLeastOnce),
                // Our own health only (to correct a forged one): peers' health is for
                // people and dashboards; placement reads the compact member records.
                SubscribeFilter::new(topics.health.clone(), QoS::AtMostOnce),
            ];
            if discovery_payload.is_some() {
                filters.push(SubscribeFilter::new(
                    topics.ha_status.clone(),
                    QoS::AtMostOnce,
                ));
            }
            let _ = client.try_subscribe_many(filters);
            let _ = client.try_publish(&topics.status, QoS::AtLeastOnce, true, "online");
            // A membership record goes out with the first health, changed or not.
            controller.forget_member();
            publish_health(client, &topics, &controller);
            if let Some(history) = controller.history_payload() {
                publish_history(client, &topics, history);
            }
            if let Some(d) = discovery_payload.as_ref() {
                let _ = client.try_publish(&topics.discovery, QoS::AtLeastOnce, true, d.clone());
            }
        })
    };
    let (incoming_tx, mut incoming_rx) = mpsc::channel(64);
    let mqtt = session::Session::spawn(options, cfg.mqtt.reconnect_max.0, on_connect, incoming_tx);
    let client = mqtt.client.clone();

    // The data plane: offers arrive on our signal topic.
    let (offers_tx, offers_rx) = mpsc::channel(16);
    let signal = Signal::new(
        Arc::clone(&identity),
        client.clone(),
        &cfg.mqtt.topic_prefix,
        topics.signal.clone(),
        Some(offers_tx),
    );
    let (egress_rate, ingress_rate) = bandwidth_watches(&controller);
    // Replication: the fleet view from retained status/health, and the budget the
    // throttle level and the operator pause scale.
    let fleet_ca = fleet_ca(&cfg, &identity);
    let membership = Arc::new(std::sync::Mutex::new(Membership::new(fleet_ca)));
    let replication_budget = Arc::new(Limiter::paused(replication_budget_watch(
        &controller,
        cfg.bandwidth.replication.0,
    )));
    let replication_stats = Arc::new(replication::Stats::default());
    let factors = Arc::new(replication::factors::Factors::open(
        &cfg.storage.data_dir.join("replication"),
        cfg.replication.factor,
        cfg.replication.max_factor,
    )?);
    let serving = ReplicationServing {
        is_node: {
            let membership = Arc::clone(&membership);
            Box::new(move |id: &str| {
                membership
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_member(id)
            })
        },
        budget: Arc::clone(&replication_budget),
        stats: Arc::clone(&replication_stats),
        factors: Arc::clone(&factors),
    };
    let server = NodeServer::new(
        &cfg,
        Arc::clone(&signal),
        AsyncStore(Arc::clone(&store)),
        controller.draining.subscribe(),
        Arc::new(Limiter::cap(egress_rate)),
        Arc::new(Limiter::cap(ingress_rate)),
        Some(serving),
    );
    let replicator = if cfg.replication.factor > 1 {
        let r = Replicator::new(
            &cfg,
            identity.node_id(),
            Arc::clone(&store),
            Arc::clone(&signal),
            Arc::clone(&membership),
            Arc::clone(&replication_budget),
            Arc::clone(&replication_stats),
            Arc::clone(&factors),
        )?;
        let health = Arc::clone(&r);
        controller.set_replication_figures(move || health.health());
        tokio::spawn(Arc::clone(&r).run());
        Some(r)
    } else {
        info!("replication.factor is 1: no replication");
        None
    };
    {
        let counters = Arc::clone(&server.counters);
        controller.set_dataplane_figures(move || {
            use std::sync::atomic::Ordering::Relaxed;
            crate::mqtt::health::Dataplane {
                peers: counters.peers.load(Relaxed) as u64,
                egress_bytes: counters.egress_bytes.load(Relaxed),
                ingress_bytes: counters.ingress_bytes.load(Relaxed),
                requests: counters.requests.load(Relaxed),
                refused_peers: counters.refused_peers.load(Relaxed),
            }
        });
    }
    tokio::spawn(Arc::clone(&server).run(offers_rx));

    // Commands and Home Assistant's birth message.
    {
        let (client, topics, controller, discovery_payload) = (
            client.clone(),
            Arc::clone(&topics),
            Arc::clone(&controller),
            Arc::clone(&discovery_payload),
        );
        let (membership, replicator) = (Arc::clone(&membership), replicator.clone());
        let authority = if cfg.control.unsigned_commands {
            warn!(
                "commands are NOT authenticated: anyone who may publish on this node's cmd topic controls it (control.unsigned_commands = true; development only)"
            );
            crate::control::command::Authority::Unsigned
        } else {
            if cfg.control.operators.is_empty() {
                warn!("control.operators is empty: every command will be refused");
            } else {
                info!(
                    operators = cfg.control.operators.len(),
                    "commands must be signed by an operator key"
                );
            }
            crate::control::command::Authority::Operators {
                node_id: identity.node_id().to_string(),
                keys: cfg.control.operators.clone(),
            }
        };
        let mut inbox = Inbox::new(
            &cfg.control.allowed_verbs,
            cfg.control.max_age.0,
            cfg.control.max_payload.0 as usize,
            authority,
        );
        let node_identity = Arc::clone(&identity);
        tokio::spawn(async move {
            while let Some(p) = incoming_rx.recv().await {
                if p.topic == topics.signal {
                    signal.on_message(&p.payload);
                } else if p.topic == topics.status
                    && !p.retain
                    && &p.payload[..] != b"online"
                    && !controller
                        .stopping
                        .load(std::sync::atomic::Ordering::SeqCst)
                {
                    // Our own status says we are not online while we run: a forged
                    // retained "offline", a reflected answer. Corrected at once, and not
                    // believed (we stay a member of our own placement). A message
                    // flagged retained is the broker's old copy at subscription time, which
                    // the "online" we publish right after subscribing replaces anyway.
                    warn!(
                        "someone else published on our status topic; publishing \"online\" again"
                    );
                    let _ = client.try_publish(&topics.status, QoS::AtLeastOnce, true, "online");
                } else if p.topic == topics.health
                    && !p.retain
                    && !controller.published_health(&p.payload)
                {
                    warn!("someone else published on our health topic; publishing ours again");
                    publish_health(&client, &topics, &controller);
                } else if p.topic == topics.member
                    && !p.retain
                    && !controller.published_member(&p.payload)
                {
                    warn!("someone else published on our member topic; publishing ours again");
                    controller.forget_member();
                    publish_member(&client, &topics, &controller, &controller.health());
                } else if let Some(id) = topics.node_of(&p.topic, "status") {
                    let changed = {
                        let mut m = membership.lock().unwrap_or_else(|e| e.into_inner());
                        let g = m.generation();
                        m.on_status(id, &p.payload);
                        m.generation() != g
                    };
                    if changed && let Some(r) = &replicator {
                        r.membership_changed();
                    }
                } else if let Some(id) = topics.node_of(&p.topic, "member") {
                    let changed = {
                        let mut m = membership.lock().unwrap_or_else(|e| e.into_inner());
                        let g = m.generation();
                        if let Some(why) = m.on_health(id, &p.payload, crate::control::unix_now()) {
                            warn!(node = %crate::logging::printable(id), reason = %why, "not a member of this fleet: invisible to placement");
                        }
                        m.generation() != g
                    };
                    if changed && let Some(r) = &replicator {
                        r.membership_changed();
                    }
                } else if p.topic == topics.cmd {
                    match inbox.accept(&p.payload, p.retain, crate::control::unix_now()) {
                        Outcome::Execute(cmd) => {
                            let mut reply = controller.execute(cmd).await.to_json();
                            crate::control::auth::sign_reply(&node_identity, &mut reply);
                            publish_json(&client, &topics.reply, &reply, false).await;
                        }
                        Outcome::Reject(reply) => {
                            let e = reply.result.as_ref().err();
                            warn!(id = %crate::logging::printable(&reply.id), code = e.map(|e| e.code), message = e.map(|e| e.message.as_str()), "command rejected");
                            let mut reply = reply.to_json();
                            crate::control::auth::sign_reply(&node_identity, &mut reply);
                            publish_json(&client, &topics.reply, &reply, false).await;
                        }
                        Outcome::Ignore(why) => warn!(reason = %why, "command ignored"),
                    }
                } else if p.topic == topics.ha_status {
                    if &p.payload[..] == b"online"
                        && let Some(d) = discovery_payload.as_ref()
                    {
                        debug!("Home Assistant came online; republishing discovery");
                        let _ = client.try_publish(
                            &topics.discovery,
                            QoS::AtLeastOnce,
                            true,
                            d.clone(),
                        );
                    }
                } else {
                    debug!(topic = %p.topic, "unexpected MQTT message");
                }
            }
        });
    }

    // Health on a timer and on level changes; events from every subsystem.
    tokio::spawn(telemetry(
        client.clone(),
        Arc::clone(&topics),
        Arc::clone(&controller),
        events_rx,
        cfg.telemetry.interval.0,
    ));

    if cfg.web.enabled {
        crate::web::serve(
            cfg.web.listen,
            crate::web::page_config(&cfg, identity.node_id()),
            crate::web::content_security_policy(&cfg),
        )
        .await?;
    }
    if let Some(listen) = cfg.metrics.listen_addr() {
        let (controller, connected, reconnects) = (
            Arc::clone(&controller),
            mqtt.connected.clone(),
            Arc::clone(&mqtt.reconnects),
        );
        crate::metrics::serve(
            listen,
            Arc::new(move || {
                let state = crate::metrics::MqttState {
                    connected: *connected.borrow(),
                    reconnects: reconnects.load(std::sync::atomic::Ordering::Relaxed),
                };
                (controller.health().to_value(), state)
            }),
        )
        .await?;
    }
    crate::sdnotify::ready();
    spawn_watchdog(&controller, cfg.sensors.interval.0);
    info!(node_id = identity.node_id(), "ddc-edge running");
    let sig = shutdown.await;
    info!(signal = sig, "shutting down");
    controller
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    crate::sdnotify::stopping();
    mqtt.shutdown(Some(&topics.status)).await;
    if let Err(e) = store.checkpoint() {
        error!(error = %e, "final store checkpoint failed (the journal still has every change)");
    }
    Ok(())
}

/// The fleet CA from the config (checked by validate), and a loud word about what it
/// means for this node.
fn fleet_ca(cfg: &crate::config::Config, identity: &Identity) -> Option<[u8; 32]> {
    let f = &cfg.fleet;
    let Ok(ca) = crate::fleet::parse_ca(&f.ca) else {
        warn!(
            "the fleet is OPEN (fleet.ca is empty): any key that can publish on the broker may join placement"
        );
        return None;
    };
    let own = crate::fleet::Cert::parse(&f.cert)
        .and_then(|c| c.check(&ca, identity.public_key(), crate::control::unix_now()));
    match own {
        Ok(()) => info!("fleet membership: enrolled nodes only (fleet.ca)"),
        Err(why) => error!(
            reason = %why,
            public_key = %identity.public_key_hex(),
            "this node has no valid fleet certificate (fleet.cert): the fleet will not count it as a member; enroll it with `ddc-edge fleet enroll <public_key>`"
        ),
    }
    Some(ca)
}

/// Pets systemd's watchdog while the agent is alive: the sensing thread must have
/// produced a reading recently (it stops if that thread wedges), and this task must run
/// (it stops if the runtime wedges). Also keeps `systemctl status` showing the level.
fn spawn_watchdog(controller: &Arc<Controller>, sensor_interval: Duration) {
    let Some(every) = crate::sdnotify::watchdog_interval() else {
        return;
    };
    let status = controller.monitor.status.clone();
    tokio::spawn(async move {
        let stale_after = (sensor_interval * 3).max(every * 2);
        loop {
            tokio::time::sleep(every).await;
            let s = status.borrow().clone();
            let age = s.taken_at.elapsed().unwrap_or_default();
            if age <= stale_after {
                crate::sdnotify::watchdog();
                crate::sdnotify::status(&format!(
                    "replication {} ({})",
                    s.decision.level,
                    s.decision.reason_strings().join("; ")
                ));
            } else {
                warn!(
                    age_s = age.as_secs(),
                    "sensor thread stalled; not petting the watchdog"
                );
            }
        }
    });
}

/// The replication budget in bytes per second: `bandwidth.replication` times the
/// throttle level's factor, and zero while an operator has paused replication. Follows
/// both at once, so a level change reaches transfers in flight within one sensor tick.
fn replication_budget_watch(
    controller: &Controller,
    configured: u64,
) -> tokio::sync::watch::Receiver<u64> {
    let mut status = controller.monitor.status.clone();
    let mut enabled = controller.replication_enabled.subscribe();
    let rate = move |factor: f64, enabled: bool| {
        if enabled {
            (configured as f64 * factor) as u64
        } else {
            0
        }
    };
    let first = rate(status.borrow().decision.factor, *enabled.borrow());
    let (tx, rx) = tokio::sync::watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = status.changed() => if r.is_err() { return },
                r = enabled.changed() => if r.is_err() { return },
            }
            let r = rate(status.borrow().decision.factor, *enabled.borrow());
            tx.send_if_modified(|v| std::mem::replace(v, r) != r);
        }
    });
    rx
}

/// Egress and ingress rates as their own watch channels, following `set_limits`.
fn bandwidth_watches(
    controller: &Controller,
) -> (
    tokio::sync::watch::Receiver<u64>,
    tokio::sync::watch::Receiver<u64>,
) {
    let mut limits = controller.limits();
    let first = *limits.borrow();
    let (etx, erx) = tokio::sync::watch::channel(first.egress_bps);
    let (itx, irx) = tokio::sync::watch::channel(first.ingress_bps);
    tokio::spawn(async move {
        while limits.changed().await.is_ok() {
            let l = *limits.borrow();
            etx.send_replace(l.egress_bps);
            itx.send_replace(l.ingress_bps);
        }
    });
    (erx, irx)
}

/// Publishes the health message (and the membership record if it changed); returns the
/// health it published.
fn publish_health(client: &AsyncClient, topics: &Topics, controller: &Controller) -> Health {
    let (health, bytes) = controller.health_payload();
    if client
        .try_publish(&topics.health, QoS::AtLeastOnce, true, bytes)
        .is_err()
    {
        debug!("MQTT queue full; health dropped (the next one replaces it)");
    }
    publish_member(client, topics, controller, &health);
    health
}

/// The history message, retained, at most once: a lost one is replaced by the next.
fn publish_history(client: &AsyncClient, topics: &Topics, history: Vec<u8>) {
    if client
        .try_publish(&topics.history, QoS::AtMostOnce, true, history)
        .is_err()
    {
        debug!("MQTT queue full; history dropped (the next one replaces it)");
    }
}

/// Publishes the membership record if placement would see a change since the last one
/// (`Controller::forget_member` makes the next one go out regardless).
fn publish_member(client: &AsyncClient, topics: &Topics, controller: &Controller, health: &Health) {
    let Some(record) = controller.member_payload(health) else {
        return;
    };
    if client
        .try_publish(&topics.member, QoS::AtLeastOnce, true, record)
        .is_err()
    {
        // Not replaced by a later one unless something changes again: force the next.
        warn!("MQTT queue full; membership record dropped, publishing it again next time");
        controller.forget_member();
    }
}

async fn publish_json(client: &AsyncClient, topic: &str, v: &Value, retain: bool) {
    let bytes = serde_json::to_vec(v).expect("JSON serializes");
    // Bounded wait: while the broker is away the request queue fills up, and a reply that
    // cannot be delivered soon is worthless.
    match tokio::time::timeout(
        Duration::from_secs(5),
        client.publish(topic, QoS::AtLeastOnce, retain, bytes),
    )
    .await
    {
        Ok(Ok(())) => {}
        _ => warn!(topic, "could not queue an MQTT message; dropped"),
    }
}

async fn telemetry(
    client: AsyncClient,
    topics: Arc<Topics>,
    controller: Arc<Controller>,
    mut events: mpsc::Receiver<Event>,
    interval: Duration,
) {
    let mut status = controller.monitor.status.clone();
    let mut store_events = controller.store.subscribe();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut level = status.borrow().decision.level;
    let emit = |e: Event| {
        let bytes = e.payload(crate::control::unix_now());
        if client
            .try_publish(&topics.events, QoS::AtLeastOnce, false, bytes)
            .is_err()
        {
            debug!("MQTT queue full; event dropped");
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // History samples come from the timer only, so they stay evenly spaced
                // however often the level changes.
                let health = publish_health(&client, &topics, &controller);
                if let Some(history) = controller.record_history(&health) {
                    publish_history(&client, &topics, history);
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                let (new_level, reasons, changes) = {
                    let s = status.borrow_and_update();
                    (s.decision.level, s.decision.reason_strings(), s.changes.clone())
                };
                for c in changes {
                    match c.unavailable {
                        Some(why) => emit(Event::SensorUnavailable { sensor: c.sensor.as_str().into(), reason: why.to_string() }),
                        None => emit(Event::SensorAvailable { sensor: c.sensor.as_str().into() }),
                    }
                }
                if new_level != level {
                    emit(Event::LevelChanged { from: level.as_str().into(), to: new_level.as_str().into(), reasons });
                    level = new_level;
                    publish_health(&client, &topics, &controller);
                }
            }
            ev = store_events.recv() => match ev {
                Ok(StoreEvent::ChunkCorrupt { id, size }) => emit(Event::ChunkCorrupt { id: id.to_string(), size }),
                Ok(StoreEvent::QuotaNearFull { used_bytes, quota_bytes }) => {
                    emit(Event::QuotaNearFull { used_bytes, quota_bytes })
                }
                Ok(StoreEvent::CounterDrift { counted, actual }) => emit(Event::StoreCounterDrift { counted, actual }),
                // The replicator's business, not an event.
                Ok(StoreEvent::Stored { .. } | StoreEvent::Removed { .. }) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => warn!(missed = n, "store events dropped"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            Some(ev) = events.recv() => {
                let is_state = ev.changes_health();
                emit(ev);
                if is_state {
                    publish_health(&client, &topics, &controller);
                }
            }
        }
    }
}

/// Low-priority background work on the store: every `storage.gc_interval` a GC round
/// (abandoned uploads only: the retention model in docs/store.md), now and then a check
/// of the counters against the disk, and every `storage.scrub_interval` a scrub (a bad
/// copy is quarantined, and replication fetches a good one from its other placed nodes).
fn spawn_store_maintenance(store: Arc<Store>, cfg: &crate::config::Config) {
    if cfg.storage.gc_high_percent.is_some() || cfg.storage.gc_low_percent.is_some() {
        warn!(
            "storage.gc_high_percent and storage.gc_low_percent are no longer used and are ignored: GC deletes only abandoned uploads (docs/store.md, Retention)"
        );
    }
    let every = cfg.storage.gc_interval.0;
    let (scrub_every, scrub_rate) = (cfg.storage.scrub_interval.0, cfg.storage.scrub_rate.0);
    // The counters are checked about every six hours, whatever the GC interval.
    let verify_every = (6 * 3600 / every.as_secs().max(1)).max(1);
    let spawned = std::thread::Builder::new()
        .name("store-maintenance".into())
        .spawn(move || {
            // Nice 19 for this thread only (Linux: PRIO_PROCESS with a thread id).
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19)
            {
                debug!(error = %e, "store maintenance keeps its priority");
            }
            let mut round = 0u64;
            let mut last_scrub = std::time::Instant::now();
            loop {
                std::thread::sleep(every);
                if !scrub_every.is_zero() && last_scrub.elapsed() >= scrub_every {
                    match store.scrub(scrub_rate) {
                        Ok(r) if r.corrupt.is_empty() => {
                            debug!(
                                chunks = r.checked,
                                bytes = r.bytes,
                                "scrub: every chunk verified"
                            )
                        }
                        Ok(r) => warn!(
                            chunks = r.checked,
                            corrupt = r.corrupt.len(),
                            "scrub: corrupt chunks quarantined"
                        ),
                        Err(e) => warn!(error = %e, "scrub failed"),
                    }
                    last_scrub = std::time::Instant::now();
                }
                round += 1;
                match store.gc(crate::control::unix_now()) {
                    Ok((chunks, bytes)) => {
                        let stat = store.stat().ok();
                        info!(
                            round,
                            freed_chunks = chunks,
                            freed_bytes = bytes,
                            reclaimable_bytes = stat.map(|s| s.retention.reclaimable_bytes),
                            protected_bytes = stat.map(|s| s.retention.protected_bytes),
                            "store GC round"
                        );
                    }
                    Err(e) => warn!(error = %e, "store GC failed"),
                }
                if round % verify_every == 1 % verify_every {
                    match store.verify_counters() {
                        Ok(Some(c)) => debug!(
                            used_bytes = c.used_bytes,
                            chunks = c.chunks,
                            "store counters verified"
                        ),
                        Ok(None) => debug!("store verification raced with writes; will retry"),
                        Err(e) => warn!(error = %e, "store verification failed"),
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "store maintenance thread not started");
    }
}

/// glibc gives each thread that allocates its own malloc arena and rarely returns their
/// memory; with tokio's worker and blocking threads that fragmentation was most of the
/// agent's RSS under load (8 concurrent transfers: 67 MB with the default, 47 MB with two
/// arenas, `cargo bench --bench dataplane`). musl has no arenas.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that resolves with the
/// name of the first one received (systemd stops services with SIGTERM).
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
