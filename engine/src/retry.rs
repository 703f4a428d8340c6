//! Capped exponential backoff with full jitter, for transient errors.

use std::time::Duration;

/// Backoff schedule: attempt n waits a random time in [0, min(cap, base * 2^n)].
///
/// ```
/// use engine::retry::Backoff;
/// let b = Backoff::default();
/// for n in 0..40 { assert!(b.delay(n) <= b.cap); }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.cap);
        // Jitter spreads retries of many workers; it never reaches projected state.
        let nanos = rand::random_range(0..=exp.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }
}
