//! Retry delays: exponential with full jitter, capped.

use std::time::Duration;

/// Delay before attempt `attempt + 1` after `attempt` failures: a random value in
/// `[base·2^(attempt-1) / 2, base·2^(attempt-1)]`, capped at `max`. Half the window is
/// random so that jobs failing together do not retry together.
pub fn backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let half = ceiling / 2;
    let jitter = half.mul_f64(rand::random::<f64>());
    // Whole microseconds: PostgreSQL intervals hold no finer precision (sqlx refuses to lose it).
    let delay = half + jitter;
    Duration::from_micros(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn stays_within_the_window(attempt in 1i32..60, base_ms in 1u64..10_000, max_s in 1u64..86_400) {
            let base = Duration::from_millis(base_ms);
            let max = Duration::from_secs(max_s);
            let delay = backoff(attempt, base, max);
            let ceiling = base.saturating_mul(1u32 << (attempt - 1).min(30) as u32).min(max);
            prop_assert!(delay <= ceiling);
            prop_assert!(delay >= ceiling / 2);
        }
    }

    #[test]
    fn grows_exponentially_until_the_cap() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert!(backoff(1, base, max) <= Duration::from_secs(1));
        assert!(backoff(4, base, max) >= Duration::from_secs(4));
        assert!(backoff(40, base, max) <= max);
    }
}
