//! `response` encodes replies: the stable error codes clients branch on,
//! failures, and the success bodies. Each reply is one line.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Stable machine-readable error codes. Clients branch on these; the
/// message is for humans and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The line is not valid JSON.
    InvalidJson,
    /// The line is not UTF-8.
    InvalidUtf8,
    /// Valid JSON, but not a well-formed request (missing or mistyped field,
    /// unknown field, claims not an object…).
    InvalidRequest,
    /// `op` names no operation.
    UnknownOp,
    /// The line is longer than the frame limit; the connection is closed.
    FrameTooLong,
    /// A claim only the daemon may set was supplied.
    ReservedClaim,
    /// `ttl` exceeds `max_ttl`.
    TtlTooLong,
    /// The signed token would exceed `max_token_bytes`.
    TokenTooLarge,
    /// The token is malformed, its signature or header is wrong, or its
    /// issuer is not ours.
    InvalidToken,
    /// No published key with the token's kid verifies now.
    UnknownKey,
    TokenExpired,
    TokenNotYetValid,
    /// `verify` was given an `aud` the token does not carry.
    AudienceMismatch,
    /// The daemon has no key that may sign (fail closed).
    Unavailable,
    /// The peer may not use this op (admin ops need an admin uid).
    Forbidden,
    /// An admin op could not be completed (e.g. the reshare cap); the
    /// message says why. Nothing was changed.
    Refused,
    /// The peer (by uid/gid) may not use this op, or matches no policy.
    /// (Also: admin ops from a non-admin peer.)
    /// A claim name, or an `aud`, that the client's policy does not allow.
    ForbiddenClaim,
    /// The token was revoked (by jti, or by sub before an instant).
    Revoked,
    /// `verify` was given a fingerprint that does not match the token's
    /// binding, or the token is bound and no fingerprint was given.
    FingerprintMismatch,
    /// The audit record could not be committed; no token was issued.
    AuditUnavailable,
    /// The audit log's filesystem is down to its reserve
    /// (`audit_keep_free`): only admins may sign until space is freed.
    AuditReserve,
    /// The peer's uid holds as many connections as it may
    /// (`max_connections_per_peer`); the connection is closed.
    Busy,
    /// The peer's policy limits how fast it may get tokens (`sign_rate`).
    RateLimited,
    /// Something failed inside the daemon; details are in its log.
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidJson => "invalid_json",
            Code::InvalidUtf8 => "invalid_utf8",
            Code::InvalidRequest => "invalid_request",
            Code::UnknownOp => "unknown_op",
            Code::FrameTooLong => "frame_too_long",
            Code::ReservedClaim => "reserved_claim",
            Code::TtlTooLong => "ttl_too_long",
            Code::TokenTooLarge => "token_too_large",
            Code::InvalidToken => "invalid_token",
            Code::UnknownKey => "unknown_key",
            Code::TokenExpired => "token_expired",
            Code::TokenNotYetValid => "token_not_yet_valid",
            Code::AudienceMismatch => "audience_mismatch",
            Code::Unavailable => "unavailable",
            Code::Forbidden => "forbidden",
            Code::Refused => "refused",
            Code::ForbiddenClaim => "forbidden_claim",
            Code::Revoked => "revoked",
            Code::FingerprintMismatch => "fingerprint_mismatch",
            Code::AuditUnavailable => "audit_unavailable",
            Code::AuditReserve => "audit_reserve",
            Code::Busy => "busy",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal",
        }
    }

    pub const ALL: [Code; 24] = [
        Code::InvalidJson,
        Code::InvalidUtf8,
        Code::InvalidRequest,
        Code::UnknownOp,
        Code::FrameTooLong,
        Code::ReservedClaim,
        Code::TtlTooLong,
        Code::TokenTooLarge,
        Code::InvalidToken,
        Code::UnknownKey,
        Code::TokenExpired,
        Code::TokenNotYetValid,
        Code::AudienceMismatch,
        Code::Unavailable,
        Code::Forbidden,
        Code::Refused,
        Code::ForbiddenClaim,
        Code::Revoked,
        Code::FingerprintMismatch,
        Code::AuditUnavailable,
        Code::AuditReserve,
        Code::Busy,
        Code::RateLimited,
        Code::Internal,
    ];

    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether this answer to a `verify` says that the token is not valid
    /// (`splitsign verify` exits 3), rather than that the request or the
    /// daemon failed. Every code is listed, so that a new one must be
    /// classified here before the crate compiles.
    pub fn rejects_token(self) -> bool {
        match self {
            Code::InvalidToken
            | Code::UnknownKey
            | Code::TokenExpired
            | Code::TokenNotYetValid
            | Code::AudienceMismatch
            | Code::Revoked
            | Code::FingerprintMismatch => true,
            Code::InvalidJson
            | Code::InvalidUtf8
            | Code::InvalidRequest
            | Code::UnknownOp
            | Code::FrameTooLong
            | Code::ReservedClaim
            | Code::TtlTooLong
            | Code::TokenTooLarge
            | Code::Unavailable
            | Code::Forbidden
            | Code::Refused
            | Code::ForbiddenClaim
            | Code::AuditUnavailable
            | Code::AuditReserve
            | Code::Busy
            | Code::RateLimited
            | Code::Internal => false,
        }
    }
}

/// A failed request: code, human message, and the id to echo (if known).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub id: Option<Value>,
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(id: Option<Value>, code: Code, message: impl Into<String>) -> Failure {
        Failure {
            id,
            code,
            message: message.into(),
        }
    }
}

// Each reply is appended to an output buffer, followed by `\n`.

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    ok: bool,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'static str,
    message: &'a str,
}

/// Append a success response with `body`'s fields.
pub fn write_ok<T: Serialize>(out: &mut Vec<u8>, id: Option<&Value>, body: T) {
    let env = Envelope { id, ok: true, body };
    serde_json::to_writer(&mut *out, &env).expect("responses always serialize");
    out.push(b'\n');
}

/// Append an error response.
pub fn write_error(out: &mut Vec<u8>, f: &Failure) {
    let env = Envelope {
        id: f.id.as_ref(),
        ok: false,
        body: ErrorBody {
            error: ErrorInner {
                code: f.code.as_str(),
                message: &f.message,
            },
        },
    };
    serde_json::to_writer(&mut *out, &env).expect("responses always serialize");
    out.push(b'\n');
}

#[derive(Serialize)]
pub struct SignOk<'a> {
    pub token: &'a str,
    pub kid: &'a str,
    pub exp: i64,
    pub jti: &'a str,
}

#[derive(Serialize)]
pub struct VerifyOk<'a> {
    pub claims: &'a Map<String, Value>,
    pub kid: &'a str,
}

#[derive(Serialize)]
pub struct JwksOk<'a> {
    pub jwks: &'a RawValue,
}

#[derive(Serialize)]
pub struct PingOk {
    pub pong: bool,
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn the_codes_that_reject_a_token_are_the_documented_ones() {
        // docs/clients.md and the README's exit code 3 list these.
        let rejecting: Vec<&str> = Code::ALL
            .into_iter()
            .filter(|c| c.rejects_token())
            .map(Code::as_str)
            .collect();
        assert_eq!(
            rejecting,
            [
                "invalid_token",
                "unknown_key",
                "token_expired",
                "token_not_yet_valid",
                "audience_mismatch",
                "revoked",
                "fingerprint_mismatch"
            ]
        );
    }
}
