//! `clock`: the wall clock, for tokens and records; the lifecycle's
//! clock, which never goes backwards, for key states; and the purge clock,
//! which never runs ahead of measured time, for forgetting revocations and
//! old audit records.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

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

/// How long a revocation is kept after the last token it covers has
/// expired. A daemon that starts while the system clock is ahead (a
/// hardware clock kept in local time, before NTP sets it right) forgets no
/// revocation of a token that is valid again once the clock is corrected,
/// as long as the clock was ahead by less than this.
const REVOCATION_GRACE_S: i64 = 86_400;

/// The purge of revocations at `now` (by the purge clock) deletes those
/// kept until before this: a day before.
pub fn revocations_purged_before(now: i64) -> i64 {
    now - REVOCATION_GRACE_S
}

/// How much faster than measured time the purge clock may catch up with a
/// wall clock that is ahead of it: 1 hour a day.
const CATCH_UP_DIVISOR: i64 = 24;

/// Past this, a wall clock ahead of the purge clock is logged.
const AHEAD_WARN_MS: i64 = 60_000;

/// The time by which data is forgotten (revocations of expired tokens,
/// audit records past their retention): the wall clock, but never ahead of
/// the time the monotonic clock has measured since the daemon started,
/// plus 1 hour a day. A system clock stepped forward, then corrected, while
/// the daemon runs makes nothing be forgotten early: tokens that expired
/// only at the wrong time are valid again after the correction, and their
/// revocations must still be there. A wall clock that stays ahead (or that
/// was behind at start and was then set right) is caught up with slowly.
/// A clock set back is followed at once (that forgets less).
#[derive(Debug)]
pub struct PurgeClock {
    what: &'static str,
    state: Mutex<Followed>,
}

#[derive(Debug, Clone, Copy)]
struct Followed {
    at_ms: i64,
    mono: Instant,
    warned: bool,
}

impl Followed {
    /// Move to `wall_ms` as far as the time measured since the last step
    /// allows; returns how far the wall clock is ahead, in milliseconds.
    fn follow(&mut self, wall_ms: i64, mono: Instant) -> i64 {
        let elapsed = i64::try_from(mono.saturating_duration_since(self.mono).as_millis())
            .unwrap_or(i64::MAX);
        let allowed = self
            .at_ms
            .saturating_add(elapsed)
            .saturating_add(elapsed / CATCH_UP_DIVISOR);
        self.at_ms = wall_ms.min(allowed);
        self.mono = mono;
        wall_ms - self.at_ms
    }
}

impl PurgeClock {
    /// Start at the wall clock; `what` names what is purged, for the log.
    pub fn new(what: &'static str) -> PurgeClock {
        PurgeClock {
            what,
            state: Mutex::new(Followed {
                at_ms: wall_now_ms(),
                mono: Instant::now(),
                warned: false,
            }),
        }
    }

    /// The purge time, in Unix seconds.
    pub fn now(&self) -> i64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ahead = s.follow(wall_now_ms(), Instant::now());
        if ahead > AHEAD_WARN_MS && !s.warned {
            tracing::warn!(
                ahead_s = ahead / 1000,
                "the system clock is ahead of the time measured since the daemon started; {} are purged by the measured time, which catches up by 1 hour a day",
                self.what
            );
        }
        s.warned = ahead > AHEAD_WARN_MS;
        s.at_ms.div_euclid(1000)
    }
}

/// Unix seconds as RFC 3339 ("2026-12-07T16:12:11Z"), for messages.
pub fn rfc3339(secs: i64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(secs.max(0) as u64))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const H: i64 = 3_600_000;

    #[test]
    fn the_purge_clock_does_not_follow_a_forward_jump_and_catches_up_slowly() {
        let t0 = Instant::now();
        let at = |s: Duration| t0 + s;
        let mut f = Followed {
            at_ms: 1_000 * H,
            mono: t0,
            warned: false,
        };
        // In step with the wall clock.
        assert_eq!(f.follow(1_000 * H + 60_000, at(Duration::from_secs(60))), 0);
        assert_eq!(f.at_ms, 1_000 * H + 60_000);
        // The wall clock jumps 3 days ahead: one more minute measured, and
        // 1/24 of it to catch up.
        let jumped = 1_000 * H + 120_000 + 72 * H;
        let ahead = f.follow(jumped, at(Duration::from_secs(120)));
        assert_eq!(f.at_ms, 1_000 * H + 120_000 + 2_500);
        assert_eq!(ahead, jumped - f.at_ms);
        // A day later (still 3 days ahead), an hour caught up.
        let day = Duration::from_secs(86_400);
        f.follow(jumped + 24 * H, at(Duration::from_secs(120) + day));
        assert_eq!(f.at_ms, 1_000 * H + 120_000 + 2_500 + 25 * H);
        // The clock is set right: followed at once, since it is behind.
        let right = 1_000 * H + 120_000 + 24 * H + 1_000;
        assert_eq!(f.follow(right, at(Duration::from_secs(121) + day)), 0);
        assert_eq!(f.at_ms, right);
        // Set back further: followed too.
        f.follow(right - 10 * H, at(Duration::from_secs(122) + day));
        assert_eq!(f.at_ms, right - 10 * H);
    }

    #[test]
    fn the_purge_clock_follows_a_wall_clock_in_step() {
        let c = PurgeClock::new("tests");
        let before = wall_now();
        let t = c.now();
        assert!(t >= before - 1 && t <= wall_now(), "{t} {before}");
    }

    #[test]
    fn the_clock_never_goes_backwards() {
        let c = Clock::new(wall_now() + 3600);
        assert!(c.now() >= wall_now() + 3599);
        let c = Clock::new(0);
        let a = c.now();
        assert!(c.now() >= a);
    }
}
