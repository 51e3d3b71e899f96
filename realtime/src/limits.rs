//! The per-connection message rate: at most `per_second` messages in any one-second
//! window (a fixed window, reset each second; in-process, since a connection lives on one
//! instance).

use std::time::Duration;

use tokio::time::Instant;

/// Counts one connection's incoming messages.
#[derive(Debug)]
pub struct MessageRate {
    per_second: u32,
    window_start: Instant,
    in_window: u32,
}

impl MessageRate {
    /// At most `per_second` messages a second.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window_start: Instant::now(),
            in_window: 0,
        }
    }

    /// Counts a message arriving now; `false` when it is over the rate.
    pub fn admit(&mut self) -> bool {
        self.admit_at(Instant::now())
    }

    fn admit_at(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        self.in_window += 1;
        self.in_window <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_resets_every_second() {
        let mut rate = MessageRate::new(2);
        let start = rate.window_start;
        assert!(rate.admit_at(start) && rate.admit_at(start));
        assert!(!rate.admit_at(start + Duration::from_millis(999)));
        assert!(rate.admit_at(start + Duration::from_secs(1)));
    }
}
