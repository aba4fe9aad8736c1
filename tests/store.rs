//! The chunk store through the CLI, as real processes on the real filesystem.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn store(data_dir: &Path, args: &[&str], sets: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec!["store".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend([
        "--config".into(),
        "/dev/null".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]);
    for s in sets {
        all.extend(["--set".into(), s.to_string()]);
    }
    bin().args(&all).output().unwrap()
}

fn stat(data_dir: &Path) -> Value {
    let o = store(data_dir, &["stat", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Sizes of the chunk files actually on disk.
fn chunks_on_disk(data_dir: &Path) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for fan in std::fs::read_dir(data_dir.join("store/chunks"))
        .unwrap()
        .flatten()
    {
        for e in std::fs::read_dir(fan.path()).unwrap().flatten() {
            n += 1;
            bytes += e.metadata().unwrap().len();
        }
    }
    (n, bytes)
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or("").trim().to_string()
}

#[test]
fn sigkill_during_1000_concurrent_puts_leaves_exact_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let file = dir.path().join("big.bin");
    // 96 KiB chunks: the manifest of 1000 chunks (67 bytes each) must fit in one chunk.
    let data = random_file(&file, 1000 * 96 * 1024, 0xdecaf);
    let sets = ["storage.chunk_size=96KiB", "storage.quota=1GiB"];
    let mut args = vec![
        "store".to_string(),
        "put".into(),
        file.display().to_string(),
        "--jobs".into(),
        "16".into(),
        "--config".into(),
        "/dev/null".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    for s in sets {
        args.extend(["--set".into(), s.into()]);
    }
    let mut child = bin()
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a good share of the chunks has landed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let landed = if data_dir.join("store/chunks").exists() {
            chunks_on_disk(&data_dir).0
        } else {
            0
        };
        if landed >= 150 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "put finished before it could be killed ({landed} chunks)"
        );
        assert!(Instant::now() < deadline, "put made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let (landed, _) = chunks_on_disk(&data_dir);
    assert!(
        landed < 1001,
        "the file was complete before the kill: nothing tested"
    );

    // Restart: the store opens, replays its journal and clears the temp files.
    let st = stat(&data_dir);
    let (n, bytes) = chunks_on_disk(&data_dir);
    assert_eq!(
        st["used_bytes"].as_u64().unwrap(),
        bytes,
        "used_bytes must equal the chunks present"
    );
    assert_eq!(st["chunks"].as_u64().unwrap(), n);
    assert_eq!(
        std::fs::read_dir(data_dir.join("store/tmp"))
            .unwrap()
            .count(),
        0,
        "temp files remain"
    );
    let o = store(&data_dir, &["scrub", "--rate", "0"], &sets);
    assert!(
        o.status.success(),
        "a listed chunk failed verification: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stdout(&o).starts_with(&format!("checked {n} chunks")),
        "{}",
        stdout(&o)
    );

    // Putting the file again completes it, reusing what landed.
    let o = store(
        &data_dir,
        &["put", file.to_str().unwrap(), "--jobs", "8"],
        &sets,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let id = last_line(&stdout(&o));
    let out = dir.path().join("out.bin");
    let o = store(&data_dir, &["get", &id, "-o", out.to_str().unwrap()], &sets);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "file differs after the restart"
    );
    let st = stat(&data_dir);
    assert_eq!(st["chunks"].as_u64().unwrap(), 1001);
    assert_eq!(
        st["used_bytes"].as_u64().unwrap(),
        chunks_on_disk(&data_dir).1
    );
}

#[test]
fn a_flipped_bit_is_refused_quarantined_and_accounted() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let file = dir.path().join("f.bin");
    random_file(&file, 3 * 4096 + 100, 7);
    let sets = ["storage.chunk_size=4KiB"];
    let o = store(&data_dir, &["put", file.to_str().unwrap()], &sets);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = last_line(&stdout(&o));
    let before = stat(&data_dir);
    assert_eq!(before["chunks"], 5);

    // Flip one bit in the first data chunk.
    let o = store(&data_dir, &["ls"], &[]);
    let chunk = stdout(&o)
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f[0] != id && f[1] == "4096")
        .map(|f| f[0].to_string())
        .unwrap();
    let path = data_dir.join("store/chunks").join(&chunk[..2]).join(&chunk);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let out = dir.path().join("out.bin");
    let o = store(&data_dir, &["get", &id, "-o", out.to_str().unwrap()], &sets);
    assert!(!o.status.success(), "a corrupt file was served");
    assert!(
        stderr(&o).contains(&format!("chunk {chunk} is corrupt")),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "a partial output file was left");
    assert!(data_dir.join("store/quarantine").join(&chunk).exists());
    let after = stat(&data_dir);
    assert_eq!(after["chunks"], 4);
    assert_eq!(after["quarantined"], 1);
    assert_eq!(
        after["used_bytes"].as_u64().unwrap(),
        before["used_bytes"].as_u64().unwrap() - 4096
    );
    assert_eq!(
        after["used_bytes"].as_u64().unwrap(),
        chunks_on_disk(&data_dir).1
    );
}

#[test]
fn filling_the_quota_fails_cleanly_and_delete_frees_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let sets = ["storage.chunk_size=4KiB", "storage.quota=40KiB"];
    let mut ids = Vec::new();
    // Each 4 KiB file takes one data chunk plus its manifest.
    for i in 0..20 {
        let f = dir.path().join(format!("f{i}"));
        random_file(&f, 4096, 100 + i);
        let o = store(
            &data_dir,
            &["put", f.to_str().unwrap(), "--jobs", "1"],
            &sets,
        );
        if !o.status.success() {
            assert!(stderr(&o).contains("quota exceeded"), "{}", stderr(&o));
            break;
        }
        ids.push(last_line(&stdout(&o)));
    }
    assert!(
        ids.len() >= 8 && ids.len() < 20,
        "quota never reached ({} files)",
        ids.len()
    );
    let st = stat(&data_dir);
    let used = st["used_bytes"].as_u64().unwrap();
    assert!(used <= 40 * 1024);
    assert_eq!(used, chunks_on_disk(&data_dir).1, "nothing partial counted");
    assert_eq!(
        std::fs::read_dir(data_dir.join("store/tmp"))
            .unwrap()
            .count(),
        0
    );

    // Deleting a chunk frees exactly its size.
    let o = store(&data_dir, &["ls"], &[]);
    let line = stdout(&o).lines().next().unwrap().to_string();
    let (victim, size) = line.split_once(' ').unwrap();
    let o = store(&data_dir, &["rm", victim], &sets);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = stat(&data_dir)["used_bytes"].as_u64().unwrap();
    assert_eq!(after, used - size.parse::<u64>().unwrap());
}

#[test]
fn bad_ids_and_missing_chunks_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let out = dir.path().join("o");
    let cases = [
        ("abc", "expected 64 hex characters"),
        (&format!("{good}ff")[..], "expected 64 hex characters"),
        (&good.to_uppercase()[..], "hex must be lowercase"),
        (
            &format!("../../../../etc/passwd{}", "0".repeat(42))[..],
            "only the characters",
        ),
        (&format!("{}zz", &good[..62])[..], "only the characters"),
    ];
    for (id, want) in cases {
        let o = store(&data_dir, &["get", id, "-o", out.to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(1), "{id}");
        assert!(stderr(&o).contains(want), "{id}: {}", stderr(&o));
        let o = store(&data_dir, &["rm", id], &[]);
        assert!(stderr(&o).contains(want), "rm {id}: {}", stderr(&o));
    }
    let o = store(&data_dir, &["get", good, "-o", out.to_str().unwrap()], &[]);
    assert!(
        stderr(&o).contains(&format!("chunk {good} not found")),
        "{}",
        stderr(&o)
    );

    // A manifest that lists a missing chunk.
    let f = dir.path().join("f");
    random_file(&f, 10_000, 3);
    let sets = ["storage.chunk_size=4KiB"];
    let o = store(&data_dir, &["put", f.to_str().unwrap()], &sets);
    let id = last_line(&stdout(&o));
    let o = store(
        &data_dir,
        &["get", &id, "-o", out.to_str().unwrap(), "--raw"],
        &sets,
    );
    assert!(o.status.success());
    let m: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let second = m["chunks"][1].as_str().unwrap();
    assert!(store(&data_dir, &["rm", second], &sets).status.success());
    let o = store(&data_dir, &["get", &id, "-o", out.to_str().unwrap()], &sets);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!(
            "fetching chunk 1 ({second}): chunk {second} not found"
        )),
        "{}",
        stderr(&o)
    );
    // An empty file is a manifest with no chunks, and comes back empty.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let o = store(&data_dir, &["put", empty.to_str().unwrap()], &sets);
    let id = last_line(&stdout(&o));
    let o = store(&data_dir, &["get", &id, "-o", out.to_str().unwrap()], &sets);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap().len(), 0);
}
