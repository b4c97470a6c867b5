//! The one backoff policy, for every wait-and-try-again in tidemark: a `_bulk` request's
//! failed items, a sync step that failed, a lost connection to Redis or to PostgreSQL's
//! the database watch, a full rebuild that failed.
//!
//! Capped exponential with **full jitter**: the wait before retry `n` is drawn uniformly
//! from `[0, min(cap, base × 2^(n-1))]`. Full jitter (rather than a fixed or "equal"
//! jitter) because many workers retrying one overloaded server must not come back in
//! lock-step: clustered retries re-create the 429 storm they back off from. The cap bounds
//! one wait, so a batch ends its retries well inside its deadline.
//!
//! With base 100 ms and cap 5 s (the `[sync]` defaults for `_bulk` retries):
//!
//! | retry | the wait is drawn from |
//! | ---   | ---          |
//! | 1     | 0 – 100 ms   |
//! | 2     | 0 – 200 ms   |
//! | 3     | 0 – 400 ms   |
//! | 4     | 0 – 800 ms   |
//! | 5     | 0 – 1.6 s    |
//! | 6     | 0 – 3.2 s    |
//! | 7+    | 0 – 5 s      |
//!
//! [`Backoff`] is also a [`backon::BackoffBuilder`], so plain "call until it works" loops
//! use backon's `Retryable` with this policy.

use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The bound of the first wait.
    pub base: Duration,
    /// The largest bound.
    pub cap: Duration,
}

impl Backoff {
    /// Reconnecting to a service that went away (Redis, the database watch's connection):
    /// soon at first, then at most every 10 s.
    pub const RECONNECT: Backoff = Backoff { base: Duration::from_millis(500), cap: Duration::from_secs(10) };

    /// The upper bound of the wait before retry number `attempt` (1-based).
    pub fn bound(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry number `attempt`: uniform in `[0, bound]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let bound = self.bound(attempt).as_micros() as u64;
        Duration::from_micros(rng.gen_range(0..=bound))
    }

    /// The waits before retries 1, 2, 3, … (endless).
    pub fn delays(self) -> Delays {
        Delays { policy: self, attempt: 0, rng: StdRng::from_entropy() }
    }
}

/// The successive waits of one retry loop.
#[derive(Debug)]
pub struct Delays {
    policy: Backoff,
    attempt: u32,
    rng: StdRng,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        Some(self.policy.delay(self.attempt, &mut self.rng))
    }
}

impl backon::BackoffBuilder for Backoff {
    type Backoff = Delays;

    fn build(self) -> Delays {
        self.delays()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_doubles_then_caps_and_delay_stays_under_it() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(5) };
        assert_eq!(b.bound(1), Duration::from_millis(100));
        assert_eq!(b.bound(4), Duration::from_millis(800));
        assert_eq!(b.bound(7), Duration::from_secs(5));
        assert_eq!(b.bound(200), Duration::from_secs(5));
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        // Full jitter: spread over the whole range, not bunched at the top.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(300)));
    }

    #[test]
    fn delays_follow_the_schedule() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_millis(300) };
        let waits: Vec<Duration> = b.delays().take(50).collect();
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(waits[1] <= Duration::from_millis(200));
        assert!(waits.iter().all(|d| *d <= Duration::from_millis(300)));
    }
}
