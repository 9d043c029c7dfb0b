//! `verify`: the signature and claims (`keys::jws`), then revocation and
//! the token's binding to a client fingerprint. A refusal is counted.

use serde_json::Value;

use super::Times;
use crate::daemon::state::{Peer, State};
use crate::keys::jws::{self, VerifyError};
use crate::protocol::{self, Code, Failure, VerifyRequest};

/// Answer a `verify`.
pub(super) fn answer_verify(
    st: &State,
    id: Option<Value>,
    r: VerifyRequest,
    peer: &Peer,
    at: Times,
    out: &mut Vec<u8>,
) {
    match verify(st, &r, at) {
        Ok(v) => {
            st.metrics.verified("ok");
            protocol::write_ok(
                out,
                id.as_ref(),
                protocol::VerifyOk {
                    claims: &v.claims,
                    kid: &v.kid,
                },
            )
        }
        Err((code, msg)) => {
            st.metrics.verified(code.as_str());
            st.tally_refusal(peer.uid, peer.pid, "verify", code.as_str());
            protocol::write_error(out, &Failure::new(id, code, msg));
        }
    }
}

/// The verify path: signature and claims, then revocation and binding.
fn verify(st: &State, r: &VerifyRequest, at: Times) -> Result<jws::Verified, (Code, String)> {
    let keys = st.manager.keyring.snapshot();
    let policy = st.rules();
    let (token, aud, fingerprint) = (&r.token, r.aud.as_deref(), r.fingerprint.as_deref());
    let v = jws::verify(&keys, &policy, token, aud, at.keys, at.wall).map_err(|e| match e {
        VerifyError::Invalid(why) => (Code::InvalidToken, why.to_owned()),
        VerifyError::UnknownKey => (
            Code::UnknownKey,
            "no published key with the token's kid verifies now".into(),
        ),
        VerifyError::Expired => (Code::TokenExpired, "token has expired".into()),
        VerifyError::NotYetValid => (
            Code::TokenNotYetValid,
            "token is not valid yet (nbf)".into(),
        ),
        VerifyError::AudienceMismatch => (
            Code::AudienceMismatch,
            "token is not issued for that audience".into(),
        ),
    })?;
    let claim = |k: &str| v.claims.get(k).and_then(Value::as_str);
    let iat = v
        .claims
        .get("iat")
        .and_then(Value::as_i64)
        .unwrap_or(i64::MIN);
    if st
        .manager
        .revocations()
        .is_revoked(claim("jti"), claim("sub"), iat)
    {
        return Err((Code::Revoked, "token has been revoked".into()));
    }
    let bound = claim(jws::FINGERPRINT_CLAIM);
    let given = fingerprint.map(jws::fingerprint_hash);
    if bound != given.as_deref() {
        return Err((
            Code::FingerprintMismatch,
            "the fingerprint does not match the token's binding".into(),
        ));
    }
    Ok(v)
}
