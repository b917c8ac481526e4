//! Crash back-off, as a kubelet counts it: the first restart is immediate, then the
//! delay starts at 10 s and doubles up to 5 min; a container that ran for 10 min
//! without failing starts over.

use std::time::Duration;

/// The delays of one container's restarts.
#[derive(Debug, Clone)]
pub(crate) struct CrashBackoff {
    initial: Duration,
    max: Duration,
    /// The next delay; zero until the first failure.
    next: Duration,
}

/// Running this long earns a fresh back-off.
pub(crate) const RESET_AFTER: Duration = Duration::from_secs(600);

impl Default for CrashBackoff {
    fn default() -> Self {
        CrashBackoff::new(Duration::from_secs(10), Duration::from_secs(300))
    }
}

impl CrashBackoff {
    /// Delays from `initial` doubling to `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        CrashBackoff {
            initial,
            max,
            next: Duration::ZERO,
        }
    }

    /// The delay before restarting a container that ran for `ran` and then ended.
    pub(crate) fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.next = Duration::ZERO;
        }
        let delay = self.next;
        self.next = if delay.is_zero() {
            self.initial
        } else {
            (delay * 2).min(self.max)
        };
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_ten_seconds_to_five_minutes_and_reset_after_a_long_run() {
        let mut b = CrashBackoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.after_exit(short).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.after_exit(RESET_AFTER), Duration::ZERO);
        assert_eq!(b.after_exit(short), Duration::from_secs(10));
    }
}
