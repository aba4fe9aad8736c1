//! Jittered exponential backoff for reconnecting. Pure: the caller supplies the random
//! fraction, so tests are deterministic.
//!
//! Delay n is `min(cap, base * 2^n)`, of which a random half is waited ("equal jitter"):
//! a fleet that lost its broker does not come back in lockstep, and a node never waits
//! less than half the nominal delay.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait; `random` is uniform in [0, 1).
    pub fn next(&mut self, random: f64) -> Duration {
        let nominal = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        nominal / 2 + nominal.mul_f64(random.clamp(0.0, 1.0) / 2.0)
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let lows: Vec<_> = (0..10).map(|_| b.next(0.0)).collect();
        assert_eq!(lows[0], Duration::from_millis(250));
        assert_eq!(lows[1], Duration::from_millis(500));
        assert_eq!(lows[2], Duration::from_secs(1));
        assert_eq!(lows[9], Duration::from_secs(15), "half of the 30 s cap");
        let high = b.next(0.999_999);
        assert!(
            high <= Duration::from_secs(30) && high > Duration::from_millis(29_990),
            "{high:?}"
        );
        b.reset();
        assert_eq!(b.next(1.0), Duration::from_millis(500));
        for _ in 0..100 {
            assert!(b.next(0.5) <= Duration::from_secs(30));
        }
    }
}
