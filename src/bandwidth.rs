//! Bandwidth caps: token buckets, changeable at runtime.
//!
//! [`TokenBucket`] is pure (told the time): it answers how long to wait before `n` bytes
//! may go. [`Limiter`] is the async wrapper the data plane awaits; its rate comes from a
//! `watch` channel so `set_limits` over MQTT and throttle-level changes apply to transfers
//! already in flight: they slow down or wait, never fail. Rate 0 means unlimited for the
//! egress/ingress caps; for the replication budget, [`Limiter::paused`] makes 0 mean "wait".

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A token bucket holding up to `burst` bytes, refilled at `rate` bytes per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens may go negative: a big message is let through at once and paid for after,
    /// so a frame is never split to fit the bucket.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let burst = Self::burst_for(rate);
        TokenBucket {
            rate,
            burst,
            tokens: burst as f64,
            last: now,
        }
    }

    /// A quarter second of traffic, at least 64 KiB: smooth, but one data-channel
    /// message always fits.
    fn burst_for(rate: u64) -> u64 {
        (rate / 4).max(64 << 10)
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = Self::burst_for(rate);
        self.tokens = self.tokens.min(self.burst as f64);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst as f64);
    }

    /// Takes `n` bytes and returns how long the caller must wait before sending them
    /// (zero when the bucket had them). Rate 0 here means the caller is paused: the wait
    /// is `Duration::MAX` and nothing is taken.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::MAX;
        }
        self.refill(now);
        if self.tokens >= 0.0 {
            self.tokens -= n as f64;
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(-self.tokens / self.rate as f64);
        self.tokens -= n as f64;
        wait
    }
}

/// An async, shared limiter over a token bucket whose rate follows a `watch` channel.
pub struct Limiter {
    bucket: Mutex<TokenBucket>,
    rate: watch::Receiver<u64>,
    /// When true, rate 0 means "wait until the rate is raised" (the replication budget);
    /// when false it means "unlimited" (the egress and ingress caps).
    zero_pauses: bool,
}

impl Limiter {
    /// Rate 0 is unlimited.
    pub fn cap(rate: watch::Receiver<u64>) -> Limiter {
        Self::new(rate, false)
    }

    /// Rate 0 pauses.
    pub fn paused(rate: watch::Receiver<u64>) -> Limiter {
        Self::new(rate, true)
    }

    fn new(rate: watch::Receiver<u64>, zero_pauses: bool) -> Limiter {
        let r = *rate.borrow();
        Limiter {
            bucket: Mutex::new(TokenBucket::new(r, Instant::now())),
            rate,
            zero_pauses,
        }
    }

    pub fn current_rate(&self) -> u64 {
        *self.rate.borrow()
    }

    /// Waits until `n` more bytes may pass.
    pub async fn acquire(&self, n: u64) {
        self.pass(n, true).await;
    }

    /// Like [`acquire`](Self::acquire), but gives up (false) instead of holding when the
    /// rate is or becomes "paused": for work that someone else can do sooner (serving
    /// another node's replication, which can fetch from a different holder).
    pub async fn acquire_unless_paused(&self, n: u64) -> bool {
        self.pass(n, false).await
    }

    async fn pass(&self, n: u64, hold: bool) -> bool {
        let mut rate_rx = self.rate.clone();
        loop {
            let rate = *rate_rx.borrow_and_update();
            if rate == 0 && !self.zero_pauses {
                return true;
            }
            if rate == 0 && !hold {
                return false;
            }
            let wait = {
                let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                if b.rate() != rate {
                    b.set_rate(rate, now);
                }
                b.take(n, now)
            };
            if wait.is_zero() {
                return true;
            }
            if wait == Duration::MAX {
                // Paused: wait for a new rate.
                if rate_rx.changed().await.is_err() {
                    return true;
                }
                continue;
            }
            // Sleep, but wake early if the rate changes (a pause or a faster cap applies
            // to this transfer at once). The bytes are already paid for.
            tokio::select! {
                _ = tokio::time::sleep(wait) => return true,
                r = rate_rx.changed() => if r.is_err() { return true },
            }
            if *rate_rx.borrow() == 0 && self.zero_pauses {
                if !hold {
                    return false;
                }
                // Paused while sleeping: hold until resumed.
                while *rate_rx.borrow_and_update() == 0 {
                    if rate_rx.changed().await.is_err() {
                        return true;
                    }
                }
            }
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100_000, t0);
        // The burst goes at once.
        assert_eq!(b.take(65_536, t0), Duration::ZERO);
        // Then the debt is paid at 100 kB/s.
        assert_eq!(
            b.take(50_000, t0),
            Duration::ZERO,
            "non-negative tokens let one more through"
        );
        let w = b.take(10_000, t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        // Over a long run, throughput equals the rate.
        let mut now = t0 + Duration::from_secs(10);
        let mut b = TokenBucket::new(1_000_000, now);
        let start = now;
        let mut sent = 0u64;
        while sent < 20_000_000 {
            now += b.take(65_536, now);
            sent += 65_536;
        }
        let secs = now.duration_since(start).as_secs_f64();
        let rate = sent as f64 / secs;
        assert!((rate / 1_000_000.0 - 1.0).abs() < 0.02, "rate {rate}");
    }

    #[test]
    fn zero_rate_pauses_and_rate_changes_apply() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, t0);
        assert_eq!(b.take(1, t0), Duration::MAX);
        b.set_rate(1_000, t0);
        assert_eq!(b.take(1, t0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_follows_its_watch() {
        let (tx, rx) = watch::channel(0u64);
        let l = std::sync::Arc::new(Limiter::paused(rx));
        let l2 = l.clone();
        let task = tokio::spawn(async move { l2.acquire(1000).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished(), "a paused limiter must wait");
        tx.send(1_000_000).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .unwrap()
            .unwrap();

        let (_tx, rx) = watch::channel(0u64);
        let cap = Limiter::cap(rx);
        tokio::time::timeout(Duration::from_millis(10), cap.acquire(1 << 30))
            .await
            .expect("0 is unlimited for a cap");
    }

    #[tokio::test(start_paused = true)]
    async fn unless_paused_gives_up_instead_of_holding() {
        let (tx, rx) = watch::channel(0u64);
        let l = std::sync::Arc::new(Limiter::paused(rx));
        assert!(!l.acquire_unless_paused(1).await, "paused from the start");
        tx.send(1_000).unwrap();
        // The burst passes (and one more, into debt); the next take sleeps, and a pause
        // during the sleep gives up.
        assert!(l.acquire_unless_paused(65_536).await);
        assert!(l.acquire_unless_paused(65_536).await);
        let l2 = l.clone();
        let task = tokio::spawn(async move { l2.acquire_unless_paused(10_000).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!task.is_finished(), "a slow rate still paces");
        tx.send(0).unwrap();
        let passed = tokio::time::timeout(Duration::from_millis(10), task)
            .await
            .expect("a pause ends the wait at once")
            .unwrap();
        assert!(!passed, "a pause mid-wait means give up");
    }
}
