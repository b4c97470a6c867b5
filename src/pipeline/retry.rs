//! Backoff for transient failures: capped exponential with full jitter.
//!
//! Full jitter (a uniform draw between zero and the exponential bound) is used because many
//! workers retrying one overloaded server must not come back in lock-step: a fixed or
//! "equal" jitter keeps their retries clustered and re-creates the 429 storm. The cap bounds
//! one wait so a batch finishes its retries inside its lease (checked in config).
//!
//! With the defaults (base 100 ms, cap 5 s):
//!
//! | attempt | bound of the wait |
//! | ---     | ---   |
//! | 1       | 100 ms |
//! | 2       | 200 ms |
//! | 3       | 400 ms |
//! | 4       | 800 ms |
//! | 5       | 1.6 s |
//! | 6       | 3.2 s |
//! | 7+      | 5 s   |

use std::time::Duration;

use rand::Rng;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bound_doubles_then_caps_and_delay_stays_under_it() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(5) };
        assert_eq!(b.bound(1), Duration::from_millis(100));
        assert_eq!(b.bound(4), Duration::from_millis(800));
        assert_eq!(b.bound(7), Duration::from_secs(5));
        assert_eq!(b.bound(200), Duration::from_secs(5));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        // Full jitter: spread over the whole range, not bunched at the top.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(300)));
    }
}
