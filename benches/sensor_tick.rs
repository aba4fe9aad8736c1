//! The cost of one sensor tick: a full reading of every source plus one throttle-policy
//! step, on the fake sysfs trees (real files, real parsing). Prints the mean and p99
//! time per tick and the heap allocations per tick in the steady state, with a naive
//! baseline (read_to_string per file) measured in the same run for comparison.
//!
//! Run: cargo bench --bench sensor_tick

use ddc_edge::config::{SensorsSection, ThrottleSection};
use ddc_edge::sensors::Sensors;
use ddc_edge::throttle::Policy;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const TICKS: usize = 20_000;

fn stats(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() / samples.len() as f64;
    let p99 = samples[samples.len() * 99 / 100].as_secs_f64();
    (mean * 1e6, p99 * 1e6)
}

fn bench_tree(name: &str, root: &Path) {
    let cfg = SensorsSection {
        sysfs_root: root.to_path_buf(),
        ..SensorsSection::default()
    };
    let mut sensors = Sensors::probe(&cfg);
    let mut policy = Policy::new(&ThrottleSection::default());
    let t0 = Instant::now();
    for i in 0..100 {
        let r = sensors.read();
        policy.step(t0 + Duration::from_secs(i), &r);
    }
    let mut samples = Vec::with_capacity(TICKS);
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in 0..TICKS {
        let s = Instant::now();
        let r = sensors.read();
        let d = policy.step(t0 + Duration::from_secs(100 + i as u64), &r);
        std::hint::black_box(d);
        samples.push(s.elapsed());
    }
    // The samples vector was allocated up front; nothing else should have allocated.
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let (mean, p99) = stats(samples);

    // Baseline: the same files read the obvious way, allocating a String per file.
    let files: Vec<PathBuf> = walk(root);
    let mut base = Vec::with_capacity(TICKS);
    for _ in 0..TICKS {
        let s = Instant::now();
        for f in &files {
            std::hint::black_box(std::fs::read_to_string(f).ok());
        }
        base.push(s.elapsed());
    }
    let (bmean, _) = stats(base);
    println!(
        "{name:<20} tick mean {mean:7.1} us  p99 {p99:7.1} us  allocations/tick {:.3}  \
         (baseline read_to_string of the {} files: {bmean:.1} us, ratio {:.2})",
        allocs as f64 / TICKS as f64,
        files.len(),
        mean / bmean
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.to_string_lossy().contains("/dev/")
            && !p.ends_with("name")
            && !p.ends_with("type")
        {
            out.push(p);
        }
    }
    out
}

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs");
    println!(
        "sensor tick: one full reading + one policy step, {TICKS} ticks (target < 1000 us, 0 allocations)"
    );
    for name in ["pi4-mains", "pi5-battery-hat", "pi5-max17048-hat"] {
        bench_tree(name, &fixtures.join(name));
    }
}
