//! `protocol` is wire format v1: one JSON object per `\n`-terminated line,
//! each way. It parses requests into typed [`Request`]s with bounded,
//! hostile-input-safe checks, and encodes responses. Error messages name the
//! field at fault, never the value sent.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::strict_json;

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
            Code::Busy => "busy",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal",
        }
    }

    pub const ALL: [Code; 23] = [
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
        Code::Busy,
        Code::RateLimited,
        Code::Internal,
    ];

    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
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

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Ping,
    Sign {
        claims: Map<String, Value>,
        ttl: Option<u64>,
        /// Client fingerprint to bind the token to (only its SHA-256 goes
        /// into the token).
        fingerprint: Option<String>,
    },
    Verify {
        token: String,
        aud: Option<String>,
        fingerprint: Option<String>,
    },
    Jwks,
    Status,
    /// Admin: rotate now; with `emergency`, retire the current key at once.
    Rotate {
        emergency: bool,
    },
    /// Admin: re-split the keys that hold shares.
    Reshare,
    /// Admin: revoke a token or a subject.
    Revoke(RevokeTarget),
    /// Admin: prune audit records older than `before` (Unix seconds).
    AuditPrune {
        before: i64,
    },
}

/// What `revoke` names.
#[derive(Debug, Clone, PartialEq)]
pub enum RevokeTarget {
    /// One token by `jti`, kept until its `exp`.
    Jti { jti: String, exp: i64 },
    /// One token, given whole (its signature is checked; jti and exp are
    /// read from it).
    Token(String),
    /// Every token for `sub` issued before `before` (default: now).
    Sub { sub: String, before: Option<i64> },
}

impl Op {
    /// Whether only admin peers may use this op.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Op::Rotate { .. } | Op::Reshare | Op::Revoke(_) | Op::AuditPrune { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub op: Op,
}

/// Longest accepted `id` string; ids are echoed, so they are bounded.
const MAX_ID_LEN: usize = 128;

/// The latest instant a request may name, in Unix seconds (the end of year
/// 9999). Times beyond it, or before 1970, are refused as
/// `invalid_request`: every sum the daemon makes with them stays far from
/// overflowing.
pub const MAX_UNIX_TIME: i64 = 253_402_300_799;

/// Parse one line (without its `\n`).
pub fn parse_request(line: &[u8]) -> Result<Request, Failure> {
    let text = std::str::from_utf8(line)
        .map_err(|_| Failure::new(None, Code::InvalidUtf8, "request is not valid UTF-8"))?;
    // serde_json bounds nesting depth (128) by default; never lift it.
    let value: Value = strict_json::parse(text).map_err(|e| {
        if strict_json::is_duplicate(&e) {
            Failure::new(
                None,
                Code::InvalidRequest,
                "a JSON object has the same member name twice",
            )
        } else {
            Failure::new(None, Code::InvalidJson, json_error(&e))
        }
    })?;
    let Value::Object(mut obj) = value else {
        return Err(Failure::new(
            None,
            Code::InvalidRequest,
            "request must be a JSON object",
        ));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Number(_)) => Some(v),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Some(Value::String(s)),
        Some(_) => {
            return Err(Failure::new(
                None,
                Code::InvalidRequest,
                format!("field `id` must be a number or a string of at most {MAX_ID_LEN} bytes"),
            ));
        }
    };
    let fail = |code, msg: String| Err(Failure::new(id.clone(), code, msg));
    let op_name = match obj.remove("op") {
        Some(Value::String(s)) => s,
        Some(_) => return fail(Code::InvalidRequest, "field `op` must be a string".into()),
        None => return fail(Code::InvalidRequest, "field `op` is missing".into()),
    };
    let allowed: &[&str] = match op_name.as_str() {
        "ping" | "jwks" | "status" | "reshare" => &[],
        "rotate" => &["emergency"],
        "revoke" => &["jti", "exp", "token", "sub", "before"],
        "audit_prune" => &["before"],
        "sign" => &["claims", "ttl", "fingerprint"],
        "verify" => &["token", "aud", "fingerprint"],
        _ => {
            let shown: String = op_name
                .chars()
                .take(32)
                .filter(|c| !c.is_control())
                .collect();
            return fail(Code::UnknownOp, format!("unknown op {shown:?}"));
        }
    };
    if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        let shown: String = extra.chars().take(32).filter(|c| !c.is_control()).collect();
        return fail(
            Code::InvalidRequest,
            format!("field {shown:?} is not valid for op {op_name:?}"),
        );
    }
    let op = match op_name.as_str() {
        "ping" => Op::Ping,
        "jwks" => Op::Jwks,
        "status" => Op::Status,
        "reshare" => Op::Reshare,
        "rotate" => {
            let emergency = match obj.remove("emergency") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(_) => {
                    return fail(
                        Code::InvalidRequest,
                        "field `emergency` must be a boolean".into(),
                    );
                }
            };
            Op::Rotate { emergency }
        }
        "sign" => {
            let claims = match obj.remove("claims") {
                Some(Value::Object(m)) => m,
                None => Map::new(),
                Some(_) => {
                    return fail(
                        Code::InvalidRequest,
                        "field `claims` must be a JSON object".into(),
                    );
                }
            };
            let ttl = match obj.remove("ttl") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(t) if t >= 1 => Some(t),
                    _ => {
                        return fail(
                            Code::InvalidRequest,
                            "field `ttl` must be a positive integer (seconds)".into(),
                        );
                    }
                },
                Some(_) => {
                    return fail(
                        Code::InvalidRequest,
                        "field `ttl` must be a positive integer (seconds)".into(),
                    );
                }
            };
            let fingerprint = match opt_string(&mut obj, "fingerprint") {
                Ok(f) => f,
                Err(m) => return fail(Code::InvalidRequest, m),
            };
            Op::Sign {
                claims,
                ttl,
                fingerprint,
            }
        }
        "revoke" => {
            let mut s = |k| opt_string(&mut obj, k);
            let (jti, token, sub) = match (s("jti"), s("token"), s("sub")) {
                (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                (Err(m), _, _) | (_, Err(m), _) | (_, _, Err(m)) => {
                    return fail(Code::InvalidRequest, m);
                }
            };
            let mut int = |k: &str| unix_time(&mut obj, k);
            let (exp, before) = match (int("exp"), int("before")) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(m), _) | (_, Err(m)) => return fail(Code::InvalidRequest, m),
            };
            let target = match (jti, token, sub) {
                (Some(jti), None, None) => match exp {
                    Some(exp) if before.is_none() => RevokeTarget::Jti { jti, exp },
                    _ => {
                        return fail(
                            Code::InvalidRequest,
                            "revoke by `jti` needs the token's `exp`".into(),
                        );
                    }
                },
                (None, Some(token), None) if exp.is_none() && before.is_none() => {
                    RevokeTarget::Token(token)
                }
                (None, None, Some(sub)) if exp.is_none() => RevokeTarget::Sub { sub, before },
                _ => {
                    return fail(
                        Code::InvalidRequest,
                        "revoke takes exactly one of `jti` (with `exp`), `token`, or `sub` \
                         (with an optional `before`)"
                            .into(),
                    );
                }
            };
            Op::Revoke(target)
        }
        "audit_prune" => match unix_time(&mut obj, "before") {
            Ok(Some(before)) => Op::AuditPrune { before },
            Ok(None) => return fail(Code::InvalidRequest, "field `before` is missing".into()),
            Err(m) => return fail(Code::InvalidRequest, m),
        },
        "verify" => {
            let token = match obj.remove("token") {
                Some(Value::String(s)) => s,
                Some(_) => {
                    return fail(
                        Code::InvalidRequest,
                        "field `token` must be a string".into(),
                    );
                }
                None => return fail(Code::InvalidRequest, "field `token` is missing".into()),
            };
            let (aud, fingerprint) = match (
                opt_string(&mut obj, "aud"),
                opt_string(&mut obj, "fingerprint"),
            ) {
                (Ok(a), Ok(f)) => (a, f),
                (Err(m), _) | (_, Err(m)) => return fail(Code::InvalidRequest, m),
            };
            Op::Verify {
                token,
                aud,
                fingerprint,
            }
        }
        _ => unreachable!("op names were matched above"),
    };
    Ok(Request { id, op })
}

/// An optional Unix time field, range-checked (0 to [`MAX_UNIX_TIME`]).
fn unix_time(obj: &mut Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) if (0..=MAX_UNIX_TIME).contains(&t) => Ok(Some(t)),
            _ => Err(format!(
                "field `{key}` must be a Unix time in seconds between 0 and {MAX_UNIX_TIME}"
            )),
        },
        Some(_) => Err(format!("field `{key}` must be an integer (Unix seconds)")),
    }
}

/// An optional string field.
fn opt_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("field `{key}` must be a string")),
    }
}

/// serde_json's message without the echoed input: category and position.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "truncated JSON",
        Category::Syntax => "malformed JSON",
        Category::Data => "invalid JSON value",
        Category::Io => "unreadable input",
    };
    format!("{what} at column {}", e.column())
}

// ---------------------------------------------------------------------------
// Responses. Each is appended to an output buffer followed by `\n`.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

/// What the line splitter found.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    Line(&'a [u8]),
    /// A line (or the unterminated rest of the buffer) exceeds the limit.
    TooLong,
}

/// Splits `\n`-terminated lines out of a read buffer without copying.
/// `scanned` remembers how far the buffer was searched, so a slow client
/// sending a long line costs linear, not quadratic, time.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    start: usize,
    scanned: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            start: 0,
            scanned: 0,
        }
    }

    /// The next complete line in `buf`, if any. A trailing `\r` is dropped.
    pub fn next<'b>(&mut self, buf: &'b [u8]) -> Option<Frame<'b>> {
        let from = self.scanned.max(self.start);
        match buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = from + i;
                let mut line = &buf[self.start..end];
                self.start = end + 1;
                self.scanned = self.start;
                if line.len() > self.max {
                    return Some(Frame::TooLong);
                }
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                Some(Frame::Line(line))
            }
            None => {
                self.scanned = buf.len();
                if buf.len() - self.start > self.max {
                    Some(Frame::TooLong)
                } else {
                    None
                }
            }
        }
    }

    /// Bytes consumed so far; the caller drops them from its buffer and
    /// then calls [`LineSplitter::reset`].
    pub fn consumed(&self) -> usize {
        self.start
    }

    pub fn reset(&mut self) {
        self.scanned -= self.start;
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_op() {
        let r = parse_request(br#"{"id":1,"op":"sign","claims":{"sub":"a"},"ttl":60}"#).unwrap();
        assert_eq!(r.id, Some(Value::from(1)));
        let Op::Sign { claims, ttl, .. } = r.op else {
            panic!()
        };
        assert_eq!(claims["sub"], "a");
        assert_eq!(ttl, Some(60));
        assert_eq!(parse_request(br#"{"op":"ping"}"#).unwrap().op, Op::Ping);
        assert!(matches!(
            parse_request(br#"{"op":"verify","token":"x","aud":"api"}"#)
                .unwrap()
                .op,
            Op::Verify { .. }
        ));
    }

    #[test]
    fn errors_have_codes_and_keep_the_id() {
        let code = |b: &[u8]| parse_request(b).unwrap_err().code;
        assert_eq!(code(b"{nope"), Code::InvalidJson);
        assert_eq!(code(b"{\"op\":\"ping\"\xff}"), Code::InvalidUtf8);
        assert_eq!(code(b"[1]"), Code::InvalidRequest);
        assert_eq!(code(br#"{"op":"fly"}"#), Code::UnknownOp);
        assert_eq!(code(br#"{"op":"sign","claims":[1]}"#), Code::InvalidRequest);
        assert_eq!(code(br#"{"op":"sign","ttl":"5m"}"#), Code::InvalidRequest);
        assert_eq!(code(br#"{"op":"sign","ttl":0}"#), Code::InvalidRequest);
        assert_eq!(code(br#"{"op":"sign","token":"x"}"#), Code::InvalidRequest);
        assert_eq!(code(br#"{"op":7}"#), Code::InvalidRequest);
        assert_eq!(code(br#"{"op":"verify"}"#), Code::InvalidRequest);
        assert_eq!(
            code(br#"{"op":"sign","claims":{"sub":"a","sub":"b"}}"#),
            Code::InvalidRequest
        );
        assert_eq!(code(br#"{"op":"ping","op":"ping"}"#), Code::InvalidRequest);
        assert_eq!(code(br#"{"op":"revoke","jti":"x"}"#), Code::InvalidRequest);
        assert_eq!(
            code(br#"{"op":"revoke","jti":"x","exp":1,"sub":"a"}"#),
            Code::InvalidRequest
        );
        assert_eq!(
            code(br#"{"op":"revoke","sub":"a","before":9223372036854775000}"#),
            Code::InvalidRequest
        );
        assert_eq!(
            code(br#"{"op":"revoke","sub":"a","before":-1}"#),
            Code::InvalidRequest
        );
        assert_eq!(
            code(br#"{"op":"revoke","jti":"j","exp":253402300800}"#),
            Code::InvalidRequest
        );
        assert_eq!(code(br#"{"op":"audit_prune"}"#), Code::InvalidRequest);
        assert!(matches!(
            parse_request(br#"{"op":"revoke","sub":"a","before":5}"#)
                .unwrap()
                .op,
            Op::Revoke(RevokeTarget::Sub {
                before: Some(5),
                ..
            })
        ));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(deep.as_bytes()), Code::InvalidJson);
        let f = parse_request(br#"{"id":"a","op":"fly"}"#).unwrap_err();
        assert_eq!(f.id, Some(Value::from("a")));
    }

    #[test]
    fn messages_do_not_echo_values() {
        let f = parse_request(br#"{"op":"sign","ttl":"secret-value"}"#).unwrap_err();
        assert!(!f.message.contains("secret-value"), "{}", f.message);
        let f = parse_request(br#"{"op":"sign","claims":{"a":"secret-value"#).unwrap_err();
        assert!(!f.message.contains("secret-value"), "{}", f.message);
    }

    #[test]
    fn splitter_finds_lines_and_limits_length() {
        let mut s = LineSplitter::new(8);
        let buf = b"{\"a\":1}\r\nabc\n12345";
        assert_eq!(s.next(buf), Some(Frame::Line(b"{\"a\":1}")));
        assert_eq!(s.next(buf), Some(Frame::Line(b"abc")));
        assert_eq!(s.next(buf), None);
        assert_eq!(s.consumed(), 13);
        let mut s = LineSplitter::new(4);
        assert_eq!(s.next(b"123456"), Some(Frame::TooLong));
        let mut s = LineSplitter::new(4);
        assert_eq!(s.next(b"12345\n"), Some(Frame::TooLong));
    }

    proptest! {
        #[test]
        fn splitter_round_trips(lines in proptest::collection::vec("[a-z{}\":,0-9]{0,20}", 0..20), cut in 0usize..400) {
            let joined: Vec<u8> = lines.iter().flat_map(|l| l.bytes().chain([b'\n'])).collect();
            let cut = cut.min(joined.len());
            // Feed in two reads, as a socket would.
            let mut s = LineSplitter::new(64);
            let mut buf = joined[..cut].to_vec();
            let mut got = Vec::new();
            while let Some(Frame::Line(l)) = s.next(&buf) { got.push(l.to_vec()); }
            let used = s.consumed();
            buf.drain(..used);
            s.reset();
            buf.extend_from_slice(&joined[cut..]);
            while let Some(Frame::Line(l)) = s.next(&buf) { got.push(l.to_vec()); }
            let want: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&bytes);
        }
    }
}
