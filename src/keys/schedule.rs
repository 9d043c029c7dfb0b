//! `schedule` is the key lifecycle as pure functions of the stored
//! timestamps and the time: a key's state, the active key, what is due
//! next, when something next changes. No I/O, no clock of its own.

use serde::Serialize;

use crate::config::{Schedule, Tokens};

use super::KeyInfo;

/// Where a key is in its life (DESIGN: pending → active → retiring → retired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Published, does not sign yet.
    Pending,
    /// The key that signs.
    Active,
    /// Published for verification only; its shares are destroyed.
    Retiring,
    /// Dropped from the JWKS; tokens it signed no longer verify.
    Retired,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Active => "active",
            State::Retiring => "retiring",
            State::Retired => "retired",
        }
    }
    /// Whether a key in this state must have both shares.
    pub fn needs_shares(self) -> bool {
        matches!(self, State::Pending | State::Active)
    }
    /// Whether the key is in the JWKS.
    pub fn is_published(self) -> bool {
        !matches!(self, State::Retired)
    }
    /// Whether tokens signed by this key verify now.
    pub fn verifies(self) -> bool {
        matches!(self, State::Active | State::Retiring)
    }
}

/// The state of `row` at `now` (Unix seconds).
pub fn state(row: &KeyInfo, now: i64) -> State {
    if now < row.activate_at {
        State::Pending
    } else if now < row.deactivate_at {
        State::Active
    } else if now < row.retire_at {
        State::Retiring
    } else {
        State::Retired
    }
}

/// `deactivate_at` and `retire_at` of a key that activates at `activate_at`.
/// Retirement waits until the last token the key may sign has expired (plus
/// clock leeway), so no token outlives its key's publication.
pub fn schedule(s: &Schedule, tokens: &Tokens, activate_at: i64) -> (i64, i64) {
    let deactivate_at = activate_at + s.rotation_interval.as_secs() as i64;
    let retire_at =
        deactivate_at + tokens.max_ttl.as_secs() as i64 + tokens.leeway.as_secs() as i64;
    (deactivate_at, retire_at)
}

/// The active key at `now`: the latest-activated verified key in its
/// signing period.
pub fn active(rows: &[KeyInfo], now: i64) -> Option<&KeyInfo> {
    rows.iter()
        .filter(|r| r.verified && state(r, now) == State::Active)
        .max_by_key(|r| r.activate_at)
}

/// What the schedule asks for at `now`. Pure.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing to create.
    Nothing,
    /// Create the next key now, to activate at the given time (pre-publish).
    Next(i64),
    /// No key is active (the daemon was down, or the clock jumped): create
    /// one key active now. One, not one per missed interval.
    Now,
}

pub fn due(rows: &[KeyInfo], now: i64, s: &Schedule) -> Due {
    let verified = || rows.iter().filter(|r| r.verified);
    let pending_after = |t: i64| verified().any(|r| r.activate_at >= t && now < r.activate_at);
    match active(rows, now) {
        None => Due::Now,
        Some(a) => {
            let lead = s.prepublish.as_secs() as i64;
            if now >= a.deactivate_at - lead && !pending_after(a.deactivate_at) {
                Due::Next(a.deactivate_at.max(now))
            } else {
                Due::Nothing
            }
        }
    }
}

/// The next time at which something changes for these keys: an activation,
/// a deactivation, a retirement, or the pre-publication of the next key.
pub fn next_event(rows: &[KeyInfo], now: i64, s: &Schedule) -> Option<i64> {
    let mut times: Vec<i64> = rows
        .iter()
        .filter(|r| r.verified)
        .flat_map(|r| [r.activate_at, r.deactivate_at, r.retire_at])
        .collect();
    if let Some(a) = active(rows, now) {
        times.push(a.deactivate_at - s.prepublish.as_secs() as i64);
    }
    times.into_iter().filter(|&t| t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::keys::Origin;

    fn cfg() -> Config {
        // rotation 100s, prepublish 10s, max_ttl 20s, leeway 0.
        Config::from_toml(
            "rotation_interval = \"100s\"\nprepublish = \"10s\"\njwks_max_age = \"5s\"\nmax_ttl = \"20s\"\ndefault_ttl = \"10s\"\nleeway = \"0s\"\n",
        )
        .unwrap()
    }

    fn row(kid: &str, activate: i64, cfg: &Config) -> KeyInfo {
        let (d, r) = schedule(&cfg.schedule, &cfg.tokens, activate);
        KeyInfo {
            kid: kid.into(),
            public_key: crate::keys::PublicKey::Ed25519([0; 32]),
            origin: Origin::Generated,
            created_at: activate,
            activate_at: activate,
            deactivate_at: d,
            retire_at: r,
            share_generation: 1,
            pending_generation: None,
            verified: true,
            alg: crate::config::AlgLabel::EdDSA,
        }
    }

    #[test]
    fn the_next_key_is_due_prepublish_before_the_switch() {
        let c = cfg();
        let a = row("a", 1000, &c);
        assert_eq!(
            due(std::slice::from_ref(&a), 1000, &c.schedule),
            Due::Nothing
        );
        assert_eq!(
            due(std::slice::from_ref(&a), 1089, &c.schedule),
            Due::Nothing
        );
        assert_eq!(
            due(std::slice::from_ref(&a), 1090, &c.schedule),
            Due::Next(1100)
        );
        // Once the next key exists, nothing more is due.
        let b = row("b", 1100, &c);
        assert_eq!(
            due(&[a.clone(), b.clone()], 1095, &c.schedule),
            Due::Nothing
        );
        // At 1100 b is active, a retiring.
        assert_eq!(active(&[a.clone(), b.clone()], 1100).unwrap().kid, "b");
        assert_eq!(state(&a, 1100), State::Retiring);
        assert_eq!(next_event(&[a, b], 1095, &c.schedule), Some(1100));
    }

    #[test]
    fn a_clock_jump_forward_asks_for_one_key_not_a_catch_up() {
        let c = cfg();
        let a = row("a", 1000, &c);
        let year = 365 * 86400;
        assert_eq!(
            due(std::slice::from_ref(&a), 1000 + year, &c.schedule),
            Due::Now
        );
        let b = row("b", 1000 + year, &c);
        assert_eq!(due(&[a, b], 1000 + year, &c.schedule), Due::Nothing);
    }

    #[test]
    fn retire_covers_the_last_token() {
        let c = cfg();
        let a = row("a", 1000, &c);
        // A token signed the second before deactivation with max_ttl expires
        // no later than retire_at.
        assert!(a.deactivate_at - 1 + c.tokens.max_ttl.as_secs() as i64 <= a.retire_at);
    }

    fn info(activate: i64, deactivate: i64, retire: i64) -> KeyInfo {
        KeyInfo {
            kid: "k".into(),
            public_key: crate::keys::PublicKey::Ed25519([0; 32]),
            origin: Origin::Generated,
            created_at: activate - 10,
            activate_at: activate,
            deactivate_at: deactivate,
            retire_at: retire,
            share_generation: 1,
            pending_generation: None,
            verified: true,
            alg: crate::config::AlgLabel::EdDSA,
        }
    }

    #[test]
    fn state_is_a_function_of_timestamps() {
        let r = info(100, 200, 300);
        assert_eq!(state(&r, 0), State::Pending);
        assert_eq!(state(&r, 99), State::Pending);
        assert_eq!(state(&r, 100), State::Active);
        assert_eq!(state(&r, 199), State::Active);
        assert_eq!(state(&r, 200), State::Retiring);
        assert_eq!(state(&r, 299), State::Retiring);
        assert_eq!(state(&r, 300), State::Retired);
        assert!(State::Active.needs_shares() && State::Pending.needs_shares());
        assert!(!State::Retiring.needs_shares());
        assert!(State::Retiring.verifies() && !State::Pending.verifies());
        assert!(!State::Retired.is_published());
    }
}
