//! Tokens checked as a relying party would: with jsonwebtoken, against
//! the key the daemon publishes under the token's kid.

use serde_json::Value;

/// Verify `token` with jsonwebtoken against the key of `jwks` named by its
/// kid: signature, `iss`, `exp`, `nbf` (jsonwebtoken skips it by default),
/// no leeway, and `aud` when given (with `sub` then required too).
pub fn verify_with_jwks_at(token: &str, jwks: &Value, aud: Option<&str>) -> Value {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let kid = header.kid.expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid is published");
    let x = jwk["x"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .unwrap()
            .len(),
        32
    );
    let key = DecodingKey::from_ed_components(x).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&["splitsign"]);
    v.validate_nbf = true;
    match aud {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
        }
        None => {
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp", "iat", "nbf", "iss"]);
        }
    }
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("token verifies with jsonwebtoken")
        .claims
}

/// [`verify_with_jwks_at`] for a token that must carry `aud` and `sub`.
pub fn verify_with_jwks(token: &str, jwks: &Value, aud: &str) -> Value {
    verify_with_jwks_at(token, jwks, Some(aud))
}
