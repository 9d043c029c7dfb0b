//! `revocations` holds the revoked token ids and subjects in memory for
//! `verify`, and turns a `revoke` request into what the database stores.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::Error;
use crate::keys::jws::{self, TokenRules};
use crate::keys::keyring::KeySet;
use crate::protocol::RevokeTarget;
use crate::store::Revocation;

/// Revoked tokens and subjects, held in memory for `verify`, compactly:
/// the daemon's own jtis (22 base64url characters, 16 random bytes) as 16
/// bytes with a 32-bit expiry in a sorted vector (20 bytes each; a million
/// take 20 MB) plus a small map of recent additions merged into it now and
/// then; any other jti, and subjects, in maps.
#[derive(Debug, Default, Clone)]
pub struct Revocations {
    jti: JtiSet,
    other_jti: HashMap<String, u32>,
    /// Subject → (before, expires_at).
    sub: HashMap<String, (i64, i64)>,
}

/// 16 bytes and an expiry (Unix seconds, saturated to u32: an expiry past
/// 2106 is kept as "never").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Entry {
    key: [u8; 16],
    exp: u32,
}

#[derive(Debug, Default, Clone)]
struct JtiSet {
    /// Sorted by key, no duplicates.
    base: Vec<Entry>,
    /// Added since the last merge.
    recent: HashMap<[u8; 16], u32>,
}

/// The smallest `recent` that is merged into `base`; past it, a merge comes
/// when `recent` holds an eighth of `base` (each entry moves O(1) times on
/// average).
const MERGE_AT: usize = 4096;

impl JtiSet {
    fn get(&self, key: &[u8; 16]) -> bool {
        self.recent.contains_key(key) || self.base.binary_search_by(|e| e.key.cmp(key)).is_ok()
    }

    /// Add `key` until `exp`; whether that is news (a new key, or a later
    /// expiry).
    fn add(&mut self, key: [u8; 16], exp: u32) -> bool {
        if let Ok(i) = self.base.binary_search_by(|e| e.key.cmp(&key)) {
            let e = &mut self.base[i];
            let grew = exp > e.exp;
            e.exp = e.exp.max(exp);
            return grew;
        }
        let grew = match self.recent.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let grew = exp > *o.get();
                *o.get_mut() = (*o.get()).max(exp);
                grew
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(exp);
                true
            }
        };
        if self.recent.len() >= MERGE_AT.max(self.base.len() / 8) {
            self.merge();
        }
        grew
    }

    fn merge(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let mut fresh: Vec<Entry> = self
            .recent
            .drain()
            .map(|(key, exp)| Entry { key, exp })
            .collect();
        fresh.sort_unstable_by_key(|e| e.key);
        let old = std::mem::take(&mut self.base);
        let mut merged = Vec::with_capacity(old.len() + fresh.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() && j < fresh.len() {
            if old[i].key < fresh[j].key {
                merged.push(old[i]);
                i += 1;
            } else {
                merged.push(fresh[j]);
                j += 1;
            }
        }
        merged.extend_from_slice(&old[i..]);
        merged.extend_from_slice(&fresh[j..]);
        self.base = merged;
        self.recent.shrink_to_fit();
    }

    fn retain_unexpired(&mut self, before: i64) {
        self.base.retain(|e| kept(e.exp.into(), before));
        self.recent.retain(|_, exp| kept((*exp).into(), before));
    }

    fn len(&self) -> usize {
        self.base.len() + self.recent.len()
    }
}

/// A set loaded in bulk (a start, a full re-read): token ids collected
/// unsorted, then sorted once, not merged a few thousand at a time.
#[derive(Default)]
pub struct Bulk {
    jti: Vec<Entry>,
    rest: Revocations,
}

impl Bulk {
    pub fn add(&mut self, row: Revocation) {
        match row {
            Revocation::Jti { jti, expires_at } => match jti_bytes(&jti) {
                Some(key) => self.jti.push(Entry {
                    key,
                    exp: exp32(expires_at),
                }),
                None => self.rest.add(Revocation::Jti { jti, expires_at }),
            },
            sub => self.rest.add(sub),
        }
    }

    pub fn build(self) -> Revocations {
        let Bulk { mut jti, mut rest } = self;
        jti.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.exp.cmp(&a.exp)));
        // Of equal keys the latest expiry came first: keep it.
        jti.dedup_by(|later, first| later.key == first.key);
        jti.shrink_to_fit();
        rest.jti.base = jti;
        rest
    }
}

/// The 16 bytes of a jti the daemon minted (22 base64url characters).
fn jti_bytes(jti: &str) -> Option<[u8; 16]> {
    use base64::Engine;
    if jti.len() != 22 {
        return None;
    }
    let mut out = [0u8; 16];
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(jti, &mut out) {
        // Only the canonical encoding: the same token id, the same key.
        Ok(16) if base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out) == jti => Some(out),
        _ => None,
    }
}

/// Whether a purge of the revocations kept until before `before` keeps
/// one kept until `expires_at`.
fn kept(expires_at: i64, before: i64) -> bool {
    expires_at >= before
}

fn exp32(exp: i64) -> u32 {
    u32::try_from(exp.max(0)).unwrap_or(u32::MAX)
}

impl Revocations {
    pub fn from_rows(rows: Vec<Revocation>) -> Revocations {
        let mut b = Bulk::default();
        for row in rows {
            b.add(row);
        }
        b.build()
    }

    /// Add a revocation. One only grows: of two for the same jti or sub
    /// (two nodes', or a second revoke), the later `before` and
    /// `expires_at` win.
    pub fn add(&mut self, row: Revocation) {
        self.add_ref(&row);
    }

    /// [`Revocations::add`], copying only what is new; whether the set
    /// grew (a new jti or sub, a later `before` or expiry).
    pub fn add_ref(&mut self, row: &Revocation) -> bool {
        match row {
            Revocation::Jti { jti, expires_at } => match jti_bytes(jti) {
                Some(key) => self.jti.add(key, exp32(*expires_at)),
                None => {
                    let exp = exp32(*expires_at);
                    match self.other_jti.get_mut(jti.as_str()) {
                        Some(e) => {
                            let grew = exp > *e;
                            *e = (*e).max(exp);
                            grew
                        }
                        None => {
                            self.other_jti.insert(jti.clone(), exp);
                            true
                        }
                    }
                }
            },
            Revocation::Sub {
                sub,
                before,
                expires_at,
            } => match self.sub.get_mut(sub.as_str()) {
                Some(e) => {
                    let grew = *before > e.0 || *expires_at > e.1;
                    *e = (e.0.max(*before), e.1.max(*expires_at));
                    grew
                }
                None => {
                    self.sub.insert(sub.clone(), (*before, *expires_at));
                    true
                }
            },
        }
    }

    /// What adding `row` would change in the set.
    pub fn news_of(&self, row: &Revocation) -> News {
        let grew = |grew: bool| if grew { News::Grown } else { News::Nothing };
        match row {
            Revocation::Jti { jti, expires_at } => {
                let exp = exp32(*expires_at);
                let have = match jti_bytes(jti) {
                    Some(key) => self.jti.recent.get(&key).copied().or_else(|| {
                        self.jti
                            .base
                            .binary_search_by(|e| e.key.cmp(&key))
                            .ok()
                            .map(|i| self.jti.base[i].exp)
                    }),
                    None => self.other_jti.get(jti.as_str()).copied(),
                };
                have.map_or(News::New, |h| grew(exp > h))
            }
            Revocation::Sub {
                sub,
                before,
                expires_at,
            } => self
                .sub
                .get(sub.as_str())
                .map_or(News::New, |&(b, e)| grew(*before > b || *expires_at > e)),
        }
    }

    /// Forget the revocations kept until before `before` (as the stores
    /// purge their rows).
    pub fn purge(&mut self, before: i64) {
        self.jti.retain_unexpired(before);
        self.other_jti.retain(|_, exp| kept((*exp).into(), before));
        self.sub.retain(|_, (_, expires)| kept(*expires, before));
    }

    /// Whether a token with these claims is revoked. A subject revocation
    /// covers tokens issued at or before its instant: `iat` has one-second
    /// resolution, and a token minted in the same second as "disable this
    /// user now" must not survive it.
    pub fn is_revoked(&self, jti: Option<&str>, sub: Option<&str>, iat: i64) -> bool {
        jti.is_some_and(|j| match jti_bytes(j) {
            Some(key) => self.jti.get(&key),
            None => self.other_jti.contains_key(j),
        }) || sub.is_some_and(|s| self.sub.get(s).is_some_and(|&(before, _)| iat <= before))
    }

    /// How many tokens and subjects are revoked.
    pub fn len(&self) -> (usize, usize) {
        (self.jti.len() + self.other_jti.len(), self.sub.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// What a revocation read brings to the set in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// A token id or subject not revoked yet.
    New,
    /// One revoked already, now with a later `before` or expiry.
    Grown,
    Nothing,
}

/// The revocations in force, changed in place (never rebuilt for one more
/// revocation): `verify` takes the read lock for a lookup.
#[derive(Debug, Default)]
pub struct RevocationSet {
    inner: std::sync::RwLock<Revocations>,
}

impl RevocationSet {
    pub fn new(r: Revocations) -> RevocationSet {
        RevocationSet {
            inner: std::sync::RwLock::new(r),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Revocations> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Revocations> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_revoked(&self, jti: Option<&str>, sub: Option<&str>, iat: i64) -> bool {
        self.read().is_revoked(jti, sub, iat)
    }

    pub fn len(&self) -> (usize, usize) {
        self.read().len()
    }

    pub fn add(&self, rows: impl IntoIterator<Item = Revocation>) {
        let mut w = self.write();
        for row in rows {
            w.add(row);
        }
    }

    /// For each of `rows`, what adding it would change in the set.
    pub fn news<'a>(&self, rows: impl IntoIterator<Item = &'a Revocation>) -> Vec<News> {
        let r = self.read();
        rows.into_iter().map(|row| r.news_of(row)).collect()
    }

    /// Replace the whole set (a full re-read).
    pub fn replace(&self, r: Revocations) {
        *self.write() = r;
    }

    pub fn purge(&self, before: i64) {
        self.write().purge(before);
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
    policy: &TokenRules,
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
            "cannot revoke that token: {e} (only a valid token can be revoked by value)"
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

/// How far ahead of now a subject revocation's `before` may be in a
/// cluster (the database refuses more, by its own clock).
pub const CLUSTER_BEFORE_AHEAD: i64 = 600;

/// A revocation as a cluster stores it, within the bounds its database
/// enforces: a token id kept no longer than any token with it can be valid
/// (`exp` is at most now + the cluster's `max_token_ttl` + leeway), and a
/// subject's `before` at most [`CLUSTER_BEFORE_AHEAD`] ahead.
pub fn within_cluster_bounds(
    r: &Revocation,
    max_token_ttl: i64,
    now: i64,
    leeway: i64,
) -> Result<Revocation, Error> {
    match r {
        Revocation::Jti { jti, expires_at } => Ok(Revocation::Jti {
            jti: jti.clone(),
            expires_at: (*expires_at).min(
                now.saturating_add(max_token_ttl)
                    .saturating_add(leeway.saturating_mul(2)),
            ),
        }),
        Revocation::Sub { before, .. } if *before > now + CLUSTER_BEFORE_AHEAD => {
            Err(Error::Usage(format!(
                "in a cluster, `before` may be at most {CLUSTER_BEFORE_AHEAD} s ahead of now \
                 (the database refuses a revocation of tokens not yet issued)"
            )))
        }
        sub => Ok(sub.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jti(i: u32) -> String {
        use base64::Engine;
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b[15] = 7;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn row(i: u32, exp: i64) -> Revocation {
        Revocation::Jti {
            jti: jti(i),
            expires_at: exp,
        }
    }

    #[test]
    fn many_token_ids_added_one_by_one_or_in_bulk_are_found_and_purged() {
        let mut one = Revocations::default();
        let mut bulk = Bulk::default();
        // Enough to merge the recent map into the sorted base many times.
        for i in (0..50_000u32).rev() {
            one.add(row(i, 1000 + i64::from(i % 2)));
            bulk.add(row(i, 1000 + i64::from(i % 2)));
        }
        let bulk = bulk.build();
        for set in [&one, &bulk] {
            assert_eq!(set.len(), (50_000, 0));
            assert!(set.is_revoked(Some(&jti(0)), None, 0));
            assert!(set.is_revoked(Some(&jti(49_999)), None, 0));
            assert!(!set.is_revoked(Some(&jti(50_000)), None, 0));
        }
        // A second revocation of the same id keeps the later expiry; the
        // set does not grow.
        one.add(row(3, 5000));
        assert_eq!(one.len(), (50_000, 0));
        one.purge(1001);
        // Odd ids expire at 1001 (kept at 1001), even ones at 1000 (gone),
        // and id 3 lives on until 5000.
        assert_eq!(one.len(), (25_000, 0));
        assert!(!one.is_revoked(Some(&jti(2)), None, 0));
        assert!(one.is_revoked(Some(&jti(3)), None, 0));
        one.purge(1002);
        assert_eq!(one.len(), (1, 0));
    }

    #[test]
    fn other_token_ids_and_subjects() {
        let mut r = Revocations::from_rows(vec![
            Revocation::Jti {
                jti: "not-a-daemon-jti".into(),
                expires_at: 100,
            },
            Revocation::Sub {
                sub: "carol".into(),
                before: 50,
                expires_at: 200,
            },
        ]);
        assert!(r.is_revoked(Some("not-a-daemon-jti"), None, 0));
        // 22 characters that are not a canonical encoding are kept as text.
        let near = format!("{}B", &jti(1)[..21]);
        r.add(Revocation::Jti {
            jti: near.clone(),
            expires_at: 100,
        });
        assert!(r.is_revoked(Some(&near), None, 0));
        assert!(!r.is_revoked(Some(&jti(1)), None, 0));
        assert!(r.is_revoked(None, Some("carol"), 50));
        assert!(!r.is_revoked(None, Some("carol"), 51));
        // An earlier `before` never shrinks it.
        r.add(Revocation::Sub {
            sub: "carol".into(),
            before: 10,
            expires_at: 60,
        });
        assert!(r.is_revoked(None, Some("carol"), 50));
        r.purge(150);
        assert!(!r.is_revoked(Some("not-a-daemon-jti"), None, 0));
        assert!(r.is_revoked(None, Some("carol"), 50));
        r.purge(201);
        assert!(r.is_empty());
    }
}
