//! `clock`: the wall clock, for tokens and records, and the lifecycle's
//! clock, which never goes backwards, for key states.

use std::sync::atomic::{AtomicI64, Ordering};

/// The current wall-clock time in Unix seconds.
pub fn wall_now() -> i64 {
    wall_now_ms().div_euclid(1000)
}

/// The current wall-clock time in Unix milliseconds.
pub fn wall_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The daemon's clock: wall time that never goes backwards. After the
/// system clock is set back, key states keep following the latest time
/// seen, so the active key stays active (and a warning is logged) instead
/// of an older key, whose shares are gone, becoming "active" again.
#[derive(Debug)]
pub struct Clock {
    high: AtomicI64,
    warned_at: AtomicI64,
}

impl Clock {
    /// Start at least at `floor` (the newest key's `created_at`).
    pub fn new(floor: i64) -> Clock {
        Clock {
            high: AtomicI64::new(floor),
            warned_at: AtomicI64::new(i64::MIN),
        }
    }

    pub fn now(&self) -> i64 {
        let wall = wall_now();
        let prev = self.high.fetch_max(wall, Ordering::Relaxed);
        if wall >= prev {
            return wall;
        }
        if prev - wall > 1 && self.warned_at.swap(prev, Ordering::Relaxed) != prev {
            tracing::warn!(
                behind_s = prev - wall,
                "the system clock went backwards; keeping the current keys and using the latest time seen"
            );
        }
        prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_backwards() {
        let c = Clock::new(wall_now() + 3600);
        assert!(c.now() >= wall_now() + 3599);
        let c = Clock::new(0);
        let a = c.now();
        assert!(c.now() >= a);
    }
}
