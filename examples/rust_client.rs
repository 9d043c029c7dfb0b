//! splitsign from Rust: sign a token with the `client` module, fetch the
//! JWKS, and verify the token locally with `jsonwebtoken`, as a verifier on
//! another host would.
//!
//! From the repository root, with the zero-config daemon of
//! `cargo run --release -- serve` running there:
//!
//! ```sh
//! SPLITSIGN_SOCKET=var/splitsign.sock cargo run --example rust_client -- alice
//! ```
//!
//! SPLITSIGN_ALG is the `alg` label to pin (default EdDSA; jsonwebtoken 12
//! knows no other).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use splitsign::client::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let subject = std::env::args().nth(1).unwrap_or_else(|| "alice".into());
    let issuer = std::env::var("SPLITSIGN_ISSUER").unwrap_or_else(|_| "splitsign".into());
    let mut daemon = Client::connect(std::env::var("SPLITSIGN_SOCKET")?)?;

    let mut claims = Map::new();
    claims.insert("sub".into(), subject.into());
    claims.insert("aud".into(), "api".into());
    let signed = daemon.sign(&claims, Some(300))?;
    let jwks = daemon.jwks()?;

    // Verify locally: the key named by the token's kid, the pinned alg only.
    let alg = std::env::var("SPLITSIGN_ALG").unwrap_or_else(|_| "EdDSA".into());
    if alg != "EdDSA" {
        return Err(format!(
            "jsonwebtoken does not accept the {alg} label: keep alg = \"EdDSA\" in the daemon"
        )
        .into());
    }
    let kid = jsonwebtoken::decode_header(&signed.token)?
        .kid
        .ok_or("token has no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or("kid not in the JWKS")?;
    let x = jwk["x"].as_str().ok_or("JWK has no x")?;
    let key = DecodingKey::from_ed_components(x)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["api"]);
    validation.set_issuer(&[issuer]);
    let token = jsonwebtoken::decode::<Value>(&signed.token, &key, &validation)?;
    println!("{}", token.claims["sub"].as_str().unwrap_or_default());
    Ok(())
}
