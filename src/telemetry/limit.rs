//! Rate-limited logging: an event that can repeat thousands of times a second (an
//! undecodable message, a broker that stays unreachable) is logged at most once per
//! interval, with the number of occurrences left out since the last line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One call site's limiter; make it a `static`.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// Lets one line through per `every`.
    pub const fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when this occurrence may be logged, with how many were
    /// suppressed since the last logged one; `None` when it is to be suppressed.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        for _ in 0..999 {
            assert_eq!(l.allow(), None);
        }
        let l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
    }
}
