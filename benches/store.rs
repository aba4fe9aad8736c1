//! Chunk store throughput against a raw baseline measured in the same run.
//!
//! - put: 1 MiB chunks through `Store::put` (SHA-256, temp file, journal, rename, and the
//!   fsyncs when on) vs writing the same bytes as plain files (create, write, and fsync
//!   when on). Targets: put >= 0.7 x raw.
//! - get: `Store::get` (read + SHA-256 verify) vs reading the same files plainly. Target
//!   at least 0.8 x raw, measured cold (pages evicted with posix_fadvise, as on a device
//!   whose store is larger than its RAM); the hot page-cache figure is printed too, where
//!   the baseline is a memcpy and SHA-256 sets the pace.
//! - SHA-256 throughput, and start-up (`Store::open`) with 100k chunks, next to a naive
//!   walk that stats every chunk.
//!
//! Run: cargo bench --bench store   (DDC_BENCH_DIR picks the disk; default: target/)

use ddc_edge::config::Reserve;
use ddc_edge::store::{ChunkId, Store, StoreConfig};
use ddc_edge::units::ByteSize;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const CHUNKS: usize = 96;

fn chunks() -> Vec<Vec<u8>> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..CHUNKS)
        .map(|_| {
            (0..MIB)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn cfg(fsync: bool) -> StoreConfig {
    StoreConfig {
        quota: 1 << 40,
        reserve: Reserve::Size(ByteSize(0)),
        max_chunk: 4 << 20,
        fsync,
        upload_grace_s: 86_400,
    }
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn raw_write(dir: &Path, data: &[Vec<u8>], fsync: bool) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    for (i, c) in data.iter().enumerate() {
        let mut f = File::create(dir.join(i.to_string())).unwrap();
        f.write_all(c).unwrap();
        if fsync {
            f.sync_all().unwrap();
        }
    }
    t.elapsed()
}

fn raw_read(dir: &Path) -> Duration {
    let t = Instant::now();
    for i in 0..CHUNKS {
        let mut f = File::open(dir.join(i.to_string())).unwrap();
        let mut buf = Vec::with_capacity(MIB);
        f.read_to_end(&mut buf).unwrap();
        std::hint::black_box(&buf);
    }
    t.elapsed()
}

/// Drops a file's pages from the page cache (after syncing them, so they are clean).
fn evict(path: &Path) {
    use std::os::unix::io::AsRawFd;
    let f = File::open(path).unwrap();
    f.sync_data().unwrap();
    // SAFETY: advisory call on a descriptor we own.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn chunk_path(data_dir: &Path, id: &ChunkId) -> PathBuf {
    data_dir
        .join("store/chunks")
        .join(id.fanout())
        .join(id.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_dir() -> PathBuf {
    std::env::var_os("DDC_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn main() {
    let base = bench_dir();
    std::fs::create_dir_all(&base).unwrap();
    let data = chunks();
    let bytes = CHUNKS * MIB;

    let t = Instant::now();
    for c in &data {
        std::hint::black_box(ChunkId::of(c));
    }
    println!("sha256: {:.0} MB/s", mbps(bytes, t.elapsed()));

    for fsync in [true, false] {
        let (mut put_r, mut cold_r, mut hot_r) = (Vec::new(), Vec::new(), Vec::new());
        let (mut put_mb, mut raw_put_mb) = (Vec::new(), Vec::new());
        let (mut cold_mb, mut raw_cold_mb, mut hot_mb, mut raw_hot_mb) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..6 {
            let tmp = tempfile::tempdir_in(&base).unwrap();
            let raw_dir = tmp.path().join("raw");
            let store_dir = tmp.path().join("store");
            let store = Store::open(&store_dir, cfg(fsync)).unwrap();
            // Alternate which side goes first, so writeback of one side's dirty pages does
            // not always land on the other.
            let put_all = || {
                let t = Instant::now();
                let ids: Vec<ChunkId> = data.iter().map(|c| store.put(c).unwrap().id()).collect();
                (ids, t.elapsed())
            };
            let (raw_w, (ids, put)) = if round % 2 == 0 {
                let r = raw_write(&raw_dir, &data, fsync);
                (r, put_all())
            } else {
                let p = put_all();
                (raw_write(&raw_dir, &data, fsync), p)
            };
            put_r.push(raw_w.as_secs_f64() / put.as_secs_f64());
            put_mb.push(mbps(bytes, put));
            raw_put_mb.push(mbps(bytes, raw_w));

            let get_all = || {
                let t = Instant::now();
                for id in &ids {
                    std::hint::black_box(store.get(id).unwrap());
                }
                t.elapsed()
            };
            // Cold: both sides read from the disk.
            for i in 0..CHUNKS {
                evict(&raw_dir.join(i.to_string()));
            }
            for id in &ids {
                evict(&chunk_path(&store_dir, id));
            }
            let raw_cold = raw_read(&raw_dir);
            let cold = get_all();
            // Hot: both from the page cache (just read).
            let raw_hot = raw_read(&raw_dir);
            let hot = get_all();
            cold_r.push(raw_cold.as_secs_f64() / cold.as_secs_f64());
            hot_r.push(raw_hot.as_secs_f64() / hot.as_secs_f64());
            cold_mb.push(mbps(bytes, cold));
            raw_cold_mb.push(mbps(bytes, raw_cold));
            hot_mb.push(mbps(bytes, hot));
            raw_hot_mb.push(mbps(bytes, raw_hot));
        }
        let label = if fsync { "fsync on " } else { "fsync off" };
        println!(
            "{label}: put {:7.1} MB/s vs raw write {:7.1} MB/s: ratio {:.2} (target >= 0.70)",
            median(put_mb),
            median(raw_put_mb),
            median(put_r)
        );
        println!(
            "{label}: get {:7.1} MB/s vs raw read  {:7.1} MB/s from disk: ratio {:.2} (target >= 0.80); \
             from page cache {:.1} vs {:.1} MB/s: ratio {:.2}",
            median(cold_mb),
            median(raw_cold_mb),
            median(cold_r),
            median(hot_mb),
            median(raw_hot_mb),
            median(hot_r)
        );
    }

    // Start-up with 100k chunks.
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let n = 100_000;
    {
        let store = Store::open(tmp.path(), cfg(false)).unwrap();
        for i in 0..n as u64 {
            store.put(&i.to_le_bytes()).unwrap();
        }
        store.checkpoint().unwrap();
        // Leave a journal behind, as after a crash, for the second measurement.
    }
    let t = Instant::now();
    let store = Store::open(tmp.path(), cfg(false)).unwrap();
    let open_clean = t.elapsed();
    for i in n as u64..n as u64 + 4000 {
        store.put(&i.to_le_bytes()).unwrap();
    }
    std::mem::forget(store); // no checkpoint: a crash with 4000 journaled puts
    // The forgotten store still holds the lock; release it the way a dead process would.
    let lock = tmp.path().join("store/lock");
    std::fs::remove_file(&lock).unwrap();
    let t = Instant::now();
    let store = Store::open(tmp.path(), cfg(false)).unwrap();
    let open_journal = t.elapsed();
    assert_eq!(store.stat().unwrap().chunks, n as u64 + 4000);
    let t = Instant::now();
    let mut walked = 0u64;
    store
        .for_each(|_, size| {
            walked += size;
            true
        })
        .unwrap();
    let walk = t.elapsed();
    println!(
        "start-up with {n} chunks: {:.1} ms after a clean stop, {:.1} ms replaying a 4000-record journal \
         (a full walk of the chunks takes {:.0} ms)",
        open_clean.as_secs_f64() * 1e3,
        open_journal.as_secs_f64() * 1e3,
        walk.as_secs_f64() * 1e3
    );
}
