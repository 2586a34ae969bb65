//! Reconnect delays: exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// The upper bound of the delay before reconnect attempt `attempt` (0-based):
/// `min(max, min * 2^attempt)`, saturating instead of overflowing.
pub fn backoff_cap(attempt: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(2u32.saturating_pow(attempt)).min(max)
}

/// The delay before reconnect attempt `attempt`: uniformly random in
/// `[0, backoff_cap(attempt, min, max)]` ("full jitter"), so clients that lost
/// the same node do not all come back at once.
pub fn backoff_delay<R: Rng + ?Sized>(
    attempt: u32,
    min: Duration,
    max: Duration,
    rng: &mut R,
) -> Duration {
    rng.random_range(Duration::ZERO..=backoff_cap(attempt, min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn cap_doubles_up_to_max() {
        assert_eq!(backoff_cap(0, MIN, MAX), MIN);
        assert_eq!(backoff_cap(1, MIN, MAX), Duration::from_millis(200));
        assert_eq!(backoff_cap(6, MIN, MAX), Duration::from_millis(6400));
        assert_eq!(backoff_cap(7, MIN, MAX), MAX);
        assert_eq!(backoff_cap(40, MIN, MAX), MAX);
        assert_eq!(backoff_cap(u32::MAX, MIN, MAX), MAX);
        assert_eq!(backoff_cap(0, MAX, MIN), MIN, "max wins over a larger min");
        assert_eq!(backoff_cap(3, Duration::ZERO, MAX), Duration::ZERO);
    }

    #[test]
    fn delay_is_jittered_within_the_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 0..20 {
            let cap = backoff_cap(attempt, MIN, MAX);
            let delays: Vec<Duration> = (0..200)
                .map(|_| backoff_delay(attempt, MIN, MAX, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= cap), "attempt {attempt}");
            assert!(
                delays.iter().any(|d| *d < cap / 2),
                "attempt {attempt}: no low delays"
            );
            assert!(
                delays.iter().any(|d| *d > cap / 2),
                "attempt {attempt}: no high delays"
            );
        }
        assert_eq!(
            backoff_delay(5, Duration::ZERO, MAX, &mut rng),
            Duration::ZERO
        );
    }
}
