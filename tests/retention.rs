//! The retention model with real agents and a real mosquitto: nothing deletes the last
//! good copy of a file, whatever the quota, the fleet or a member's answers.

mod common;
use common::mosquitto::{Mosquitto, Probe};
use common::*;
use ddc_edge::store::ChunkId;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 10;

/// `ddc-edge <args>` with the tests' settings against broker `m`.
fn cli(m: &Mosquitto, key: &Path, args: &[&str], extra_sets: &[&str]) -> std::process::Output {
    let mut sets = extra_sets.to_vec();
    sets.push("storage.chunk_size=64KiB");
    client_cli(&m.url(), key, args, &sets)
}

/// `ddc-edge store ...` on a data dir (the agent must not be running on it).
fn store(dir: &Path, args: &[&str], sets: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec!["store".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend(["--config", "/dev/null", "--data-dir"].map(String::from));
    all.push(dir.display().to_string());
    for s in sets {
        all.extend(["--set".into(), s.to_string()]);
    }
    bin().args(&all).output().unwrap()
}

fn chunk_ids(data: &[u8]) -> Vec<ChunkId> {
    data.chunks(CHUNK).map(ChunkId::of).collect()
}

fn chunk_path(dir: &Path, id: &ChunkId) -> PathBuf {
    dir.join("store/chunks")
        .join(id.fanout())
        .join(id.to_string())
}

/// Whether `dir` holds a good copy (bytes that hash to the ID) of `id`.
fn good_copy(dir: &Path, id: &ChunkId) -> bool {
    std::fs::read(chunk_path(dir, id)).is_ok_and(|b| ChunkId::of(&b) == *id)
}

/// A broken (or lying) member's store: a file under every chunk's name, with the wrong
/// bytes in it. It answers HAS "yes" for all of them.
fn plant_bad_copies(dir: &Path, ids: &[ChunkId]) {
    for id in ids {
        let p = chunk_path(dir, id);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![0x5a; CHUNK]).unwrap();
    }
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The reported loss: one node, a file filling 95 % of the quota, GC rounds. Before the
/// retention model the first GC round deleted chunks of the file.
#[test]
fn a_full_single_node_keeps_its_file_through_gc_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let sets = ["storage.quota=10MiB", "storage.reserve=0"];
    let file = dir.path().join("f.bin");
    let data = random_file(&file, 9_500 << 10, 7);
    let o = store(dir.path(), &["put", file.to_str().unwrap()], &sets);
    assert!(o.status.success(), "store put: {}", stderr(&o));
    let file_id = stdout(&o).lines().last().unwrap().trim().to_string();

    let m = Mosquitto::start();
    let mut sets_run = sets.to_vec();
    sets_run.push("storage.gc_interval=1s");
    let mut agent = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &sets_run);
    agent.wait_for("round=3", Duration::from_secs(60));
    drop(agent);

    let out = dir.path().join("out.bin");
    let o = store(
        dir.path(),
        &["get", &file_id, "-o", out.to_str().unwrap()],
        &sets,
    );
    assert!(o.status.success(), "the file is gone: {}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == data);
}

/// Members that announce themselves and never answer win placement of most chunks;
/// the node that holds them must keep every one.
#[test]
fn members_that_never_answer_cannot_make_a_node_drop_chunks() {
    let m = Mosquitto::start();
    let p = Probe::connect(m.port, &[]);
    // Real members of an open fleet (health signed by their own keys) that never answer.
    let keys = tempfile::tempdir().unwrap();
    for n in 0..2 {
        let me =
            ddc_edge::identity::Identity::load_or_create_file(&keys.path().join(n.to_string()))
                .unwrap();
        let fake = me.node_id();
        let mut health = serde_json::json!({"ts": ddc_edge::control::unix_now(),
            "disk": {"free_bytes": 1000000000000u64}, "draining": false});
        ddc_edge::fleet::sign_health(&me, None, &mut health);
        for leaf in ["health", "member"] {
            p.publish(
                &format!("ddc/nodes/{fake}/{leaf}"),
                health.to_string(),
                true,
            );
        }
        p.publish(&format!("ddc/nodes/{fake}/status"), "online", true);
    }
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut agent = start_agent(
        &m.url(),
        dir.path(),
        &fixture("pi4-mains"),
        &[
            "replication.anti_entropy_interval=2s",
            "webrtc.connect_timeout=2s",
            "storage.gc_interval=1s",
            "storage.quota=3MiB",
            "storage.reserve=0",
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("client.key");
    let file = work.path().join("f.bin");
    let data = random_file(&file, 40 * CHUNK, 3);
    let o = cli(&m, &key, &["put", file.to_str().unwrap(), "--to", &id], &[]);
    assert!(o.status.success(), "put: {}", stderr(&o));
    // Several sweeps (each trying the silent members) and GC rounds go by.
    agent.wait_for("round=8", Duration::from_secs(120));
    for c in chunk_ids(&data) {
        assert!(good_copy(dir.path(), &c), "chunk {c} was dropped");
    }
}

/// Two broken members hold corrupt copies of a file's chunks under the right names and
/// answer HAS "yes". With HAS as the only check, the node holding the good copies
/// handed off every chunk placed on those two, and the file was lost. With proofs, no
/// chunk ever goes without a good copy, and the fleet heals to two good copies each.
#[test]
fn a_broken_member_cannot_make_a_node_drop_its_copy() {
    let m = Mosquitto::start();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f.bin");
    let data = random_file(&file, 24 * CHUNK, 11);
    let ids = chunk_ids(&data);
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    plant_bad_copies(b.path(), &ids);
    plant_bad_copies(c.path(), &ids);
    let sets = [
        "replication.anti_entropy_interval=2s",
        "storage.fsync=false",
        "storage.chunk_size=64KiB",
        // A placed node's bad copy that nobody reads is found by its scrub (after the
        // put: the hand-offs must meet the bad copies first).
        "storage.gc_interval=1s",
        "storage.scrub_interval=30s",
    ];
    let id_a = node_id(a.path());
    let mut na = start_agent(&m.url(), a.path(), &fixture("pi4-mains"), &sets);
    let _nb = start_agent(&m.url(), b.path(), &fixture("pi4-mains"), &sets);
    let _nc = start_agent(&m.url(), c.path(), &fixture("pi4-mains"), &sets);
    let key = work.path().join("client.key");
    let o = cli(
        &m,
        &key,
        &["put", file.to_str().unwrap(), "--to", &id_a],
        &[],
    );
    assert!(o.status.success(), "put: {}", stderr(&o));

    let dirs = [a.path(), b.path(), c.path()];
    let good = |id: &ChunkId| dirs.iter().filter(|d| good_copy(d, id)).count();
    // Watch while the fleet sorts itself out: never a chunk without a good copy.
    wait_until(
        "two good copies of every chunk",
        Duration::from_secs(180),
        || {
            let counts: Vec<usize> = ids.iter().map(good).collect();
            assert!(
                counts.iter().all(|&n| n >= 1),
                "a chunk was left with no good copy: {counts:?}"
            );
            counts.iter().all(|&n| n == 2)
        },
    );
    na.wait_for("failed to prove", Duration::from_secs(5));
}

/// `put` skipped whatever a node said it HAS: against a node holding corrupt copies it
/// exited 0, uploaded nothing, and the file existed nowhere. It must prove, then upload.
#[test]
fn put_uploads_what_a_node_claims_but_cannot_prove() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f.bin");
    let data = random_file(&file, 10 * CHUNK, 5);
    plant_bad_copies(dir.path(), &chunk_ids(&data));
    let id = node_id(dir.path());
    let _n = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &[]);
    let key = work.path().join("client.key");
    let o = cli(&m, &key, &["put", file.to_str().unwrap(), "--to", &id], &[]);
    assert!(o.status.success(), "put: {}", stderr(&o));
    assert!(
        stderr(&o).contains("uploaded=10"),
        "put trusted the node's claims: {}",
        stderr(&o)
    );
    let file_id = stdout(&o).lines().last().unwrap().trim().to_string();
    let out = work.path().join("out.bin");
    let o = cli(
        &m,
        &key,
        &["get", &file_id, "-o", out.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "get: {}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == data);
}

/// A put that cannot fit is refused before anything is written: over the network (the
/// client asks the node's free space first) and locally (`store put` counts the file).
#[test]
fn a_refused_put_leaves_used_bytes_where_they_were() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f.bin");
    random_file(&file, 48 * CHUNK, 9);

    // Locally: 3 MiB into a 1 MiB quota.
    let local = tempfile::tempdir().unwrap();
    let sets = ["storage.quota=1MiB", "storage.reserve=0"];
    let o = store(local.path(), &["put", file.to_str().unwrap()], &sets);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("quota"), "{}", stderr(&o));
    assert!(
        chunk_copies(&[local.path()]).is_empty(),
        "chunks left behind"
    );

    // Over the network.
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let _n = start_agent(&m.url(), dir.path(), &fixture("pi4-mains"), &sets);
    let key = work.path().join("client.key");
    let o = cli(&m, &key, &["put", file.to_str().unwrap(), "--to", &id], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("has room for"), "{}", stderr(&o));
    assert!(chunk_copies(&[dir.path()]).is_empty(), "chunks left behind");
}

/// A client that dies mid-upload leaves chunks no manifest will claim: the node reports
/// them as pending, then reclaimable, and GC deletes them after the grace period.
#[test]
fn an_abandoned_upload_is_reclaimed_after_the_grace_period() {
    let m = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let id = node_id(dir.path());
    let mut p = Probe::connect(m.port, &[&format!("ddc/nodes/{id}/health")]);
    let mut agent = start_agent(
        &m.url(),
        dir.path(),
        &fixture("pi4-mains"),
        &[
            "bandwidth.ingress=256KiB/s",
            "storage.gc_interval=1s",
            "storage.upload_grace=3s",
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("client.key");
    let file = work.path().join("f.bin");
    random_file(&file, 64 * CHUNK, 13);
    let mut args: Vec<String> = ["put", file.to_str().unwrap(), "--to", &id]
        .map(String::from)
        .to_vec();
    args.extend(
        ["--config", "/dev/null", "--broker", &m.url(), "--key"]
            .map(String::from)
            .into_iter()
            .chain([key.display().to_string()]),
    );
    for s in TEST_SETS {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args.extend(["--set".into(), format!("storage.chunk_size={CHUNK}")]);
    let mut client = bin()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Some chunks arrive (the node takes 4 a second), then the client dies.
    p.wait("an upload in progress", Duration::from_secs(60), |msg| {
        msg.json()["disk"]["pending_upload_bytes"]
            .as_u64()
            .is_some_and(|b| b >= 2 * CHUNK as u64)
    });
    client.kill().unwrap();
    client.wait().unwrap();
    agent.wait_for(
        "garbage-collected abandoned uploads",
        Duration::from_secs(60),
    );
    wait_until(
        "every abandoned chunk gone",
        Duration::from_secs(60),
        || chunk_copies(&[dir.path()]).is_empty(),
    );
    p.wait_new("health with nothing left", Duration::from_secs(30), |msg| {
        let d = &msg.json()["disk"];
        d["used_bytes"] == 0 && d["pending_upload_bytes"] == 0 && d["reclaimable_bytes"] == 0
    });
}
