//! `keyring` holds the keys in memory: the one signing key (in a locked
//! page) and the public keys that verify and are published. A [`KeySet`] is
//! immutable; the daemon swaps a new one in when keys change, so the sign
//! path clones an `Arc` out of the lock and never holds the lock while it
//! signs.
//!
//! A key's state is a pure function of its stored timestamps and the time.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::keys::algorithm::JwkMembers;
use crate::keys::locked::LockedKey;
use crate::keys::{KeyInfo, Verifier, state};

/// A key that signs (or will), with its pre-encoded JWS header.
pub struct Signer {
    pub kid: String,
    /// base64url of `{"alg":…,"typ":"JWT","kid":…}` (RFC 7515 §7.1), with
    /// the key's own label.
    pub header_b64: String,
    pub key: LockedKey,
    pub activate_at: i64,
    pub deactivate_at: i64,
    pub retire_at: i64,
    /// The generation of the shares the key was unsealed from.
    pub share_generation: u32,
    /// The latest `exp` this key may have issued (`i64::MIN`: none). A
    /// rotation ends the key's publication once these tokens expire.
    latest_exp: AtomicI64,
}

impl Signer {
    /// `latest_exp`: what tokens issued before this value existed may
    /// carry (by an earlier process, or an earlier `Signer` of this key).
    pub fn new(row: &KeyInfo, key: LockedKey, latest_exp: i64) -> Signer {
        // Field order as documented; the kid is base64url, so no escaping.
        debug_assert!(crate::keys::share_format::is_valid_kid(&row.kid));
        let header = format!(
            r#"{{"alg":"{}","typ":"JWT","kid":"{}"}}"#,
            row.alg.as_str(),
            row.kid
        );
        Signer {
            kid: row.kid.clone(),
            header_b64: B64.encode(header),
            key,
            activate_at: row.activate_at,
            deactivate_at: row.deactivate_at,
            retire_at: row.retire_at,
            share_generation: row.share_generation,
            latest_exp: AtomicI64::new(latest_exp),
        }
    }

    /// Note a token issued with `exp`. Most calls only read: `exp` moves
    /// once a second.
    pub fn issued(&self, exp: i64) {
        if exp > self.latest_exp.load(Ordering::Relaxed) {
            self.latest_exp.fetch_max(exp, Ordering::Relaxed);
        }
    }

    /// The latest `exp` of any token this key may have issued.
    pub fn latest_exp(&self) -> i64 {
        self.latest_exp.load(Ordering::Relaxed)
    }
}

/// A published public key.
#[derive(Clone)]
pub struct Published {
    pub row: KeyInfo,
    /// The key of `row.public_key`, of the type its `alg` names.
    pub key: Verifier,
    /// The node whose key it is, when it is another node's (a cluster):
    /// it verifies and is published here, and never signs here.
    pub node: Option<String>,
}

/// One consistent view of all keys.
pub struct KeySet {
    /// The active key and any pending ones, rebuilt and locked, in order of
    /// activation. The sign path picks by time ([`KeySet::signer_at`]), so a
    /// pending key takes over at its `activate_at` to the second, without
    /// waiting for the daemon's timer.
    pub signers: Vec<Arc<Signer>>,
    pub published: Vec<Published>,
    pub jwks: Box<RawValue>,
    /// In a cluster, the owner's bound on a token's lifetime (`exp - iat`,
    /// seconds): sign stays within it, verify refuses beyond it.
    pub max_token_ttl: Option<i64>,
}

/// A public JWK: `{"kty":"OKP","crv":"Ed25519","x"}` (RFC 8037) or
/// `{"kty":"EC","crv":"P-256","x","y"}` (RFC 7518 §6.2), with `kid`, `alg`
/// and `use`.
#[derive(Serialize)]
struct Jwk<'a> {
    kty: &'static str,
    crv: &'static str,
    x: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    kid: &'a str,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
}

impl KeySet {
    /// Build a key set; `published` must hold every key not yet retired.
    /// Each JWK carries its key's own `alg` label.
    pub fn new(mut signers: Vec<Arc<Signer>>, published: Vec<Published>) -> KeySet {
        signers.sort_by_key(|s| s.activate_at);
        let keys: Vec<Jwk> = published
            .iter()
            .map(|p| {
                let JwkMembers { crv, kty, x, y } = p.row.public_key.jwk_members();
                Jwk {
                    kty,
                    crv,
                    x,
                    y,
                    kid: &p.row.kid,
                    alg: p.row.alg.as_str(),
                    use_: "sig",
                }
            })
            .collect();
        let json = serde_json::to_string(&serde_json::json!({ "keys": keys }))
            .expect("a JWKS always serializes");
        let jwks = RawValue::from_string(json).expect("serde_json output is valid JSON");
        KeySet {
            signers,
            published,
            jwks,
            max_token_ttl: None,
        }
    }

    /// The key that signs at `now`: the latest-activated signer whose
    /// signing period contains `now`.
    pub fn signer_at(&self, now: i64) -> Option<&Arc<Signer>> {
        self.signers
            .iter()
            .rev()
            .find(|s| s.activate_at <= now && now < s.deactivate_at)
    }

    /// The in-memory signer of `kid`, if it is held.
    pub fn signer_of(&self, kid: &str) -> Option<&Arc<Signer>> {
        self.signers.iter().find(|s| s.kid == kid)
    }

    /// The rows of this node's published keys (not other nodes').
    pub fn own_rows(&self) -> Vec<KeyInfo> {
        self.published
            .iter()
            .filter(|p| p.node.is_none())
            .map(|p| p.row.clone())
            .collect()
    }

    /// The verifying key for `kid`, if tokens signed by it verify at `now`.
    pub fn verifier(&self, kid: &str, now: i64) -> Option<&Published> {
        self.published
            .iter()
            .find(|p| p.row.kid == kid && state(&p.row, now).verifies())
    }
}

/// The current key set, swapped atomically.
pub struct Keyring {
    current: crate::snapshot::Shared<KeySet>,
}

impl Keyring {
    pub fn new(set: KeySet) -> Keyring {
        Keyring {
            current: crate::snapshot::Shared::new(set),
        }
    }

    /// A snapshot of the keys; the lock is held only for the `Arc` clone.
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.current.get()
    }

    pub fn replace(&self, set: KeySet) {
        self.current.set(set)
    }
}
