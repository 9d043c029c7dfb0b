//! `revocations` holds the revoked token ids and subjects in memory for
//! `verify`, and turns a `revoke` request into what the database stores.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::Error;
use crate::keys::jws::{self, Policy};
use crate::keys::keyset::KeySet;
use crate::protocol::RevokeTarget;
use crate::store::Revocation;

/// Revoked tokens and subjects, held in memory for `verify`.
#[derive(Debug, Default, Clone)]
pub struct Revocations {
    jti: HashMap<String, i64>,
    sub: HashMap<String, i64>,
}

impl Revocations {
    pub fn from_rows(rows: Vec<Revocation>) -> Revocations {
        let mut r = Revocations::default();
        for row in rows {
            r.add(row);
        }
        r
    }

    /// Add a revocation. One only grows: of two for the same jti or sub
    /// (two nodes', or a second revoke), the later `before` and
    /// `expires_at` win.
    pub fn add(&mut self, row: Revocation) {
        match row {
            Revocation::Jti { jti, expires_at } => {
                let e = self.jti.entry(jti).or_insert(expires_at);
                *e = (*e).max(expires_at);
            }
            Revocation::Sub { sub, before, .. } => {
                let b = self.sub.entry(sub).or_insert(before);
                *b = (*b).max(before);
            }
        }
    }

    /// How many tokens and subjects are revoked.
    pub fn len(&self) -> (usize, usize) {
        (self.jti.len(), self.sub.len())
    }

    /// Whether a token with these claims is revoked. A subject revocation
    /// covers tokens issued at or before its instant: `iat` has one-second
    /// resolution, and a token minted in the same second as "disable this
    /// user now" must not survive it.
    pub fn is_revoked(&self, jti: Option<&str>, sub: Option<&str>, iat: i64) -> bool {
        jti.is_some_and(|j| self.jti.contains_key(j))
            || sub.is_some_and(|s| self.sub.get(s).is_some_and(|&before| iat <= before))
    }
}

/// What to store for a revoke of a token id (kept until that token's exp)
/// or of a subject (tokens issued at or before `before`, default now, kept
/// until every one of them has expired); `None` for a whole token, which
/// must be checked against the keys first ([`revocation_for`]).
pub fn stored_for(
    target: &RevokeTarget,
    max_ttl: i64,
    leeway: i64,
    now: i64,
) -> Option<Revocation> {
    match target {
        RevokeTarget::Jti { jti, exp } => Some(Revocation::Jti {
            jti: jti.clone(),
            expires_at: exp + leeway,
        }),
        RevokeTarget::Sub { sub, before } => {
            let before = before.unwrap_or(now);
            Some(Revocation::Sub {
                sub: sub.clone(),
                before,
                // Every token issued before `before` expires by then.
                expires_at: before + max_ttl + leeway,
            })
        }
        RevokeTarget::Token(_) => None,
    }
}

/// What to store for a `revoke` request; a whole token is verified first
/// (only a valid token can be revoked by value) and its jti and exp used.
pub fn revocation_for(
    target: &RevokeTarget,
    keys: &KeySet,
    policy: &Policy,
    max_ttl: i64,
    key_now: i64,
    now: i64,
) -> Result<Revocation, Error> {
    let leeway = policy.leeway as i64;
    let RevokeTarget::Token(t) = target else {
        return Ok(stored_for(target, max_ttl, leeway, now).expect("not a whole token"));
    };
    let v = jws::verify(keys, policy, t, None, key_now, now).map_err(|e| {
        Error::Usage(format!(
            "cannot revoke that token: {e:?} (only a valid token can be revoked by value)"
        ))
    })?;
    let jti = v
        .claims
        .get("jti")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let exp = v.claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
    Ok(Revocation::Jti {
        jti,
        expires_at: exp + leeway,
    })
}
