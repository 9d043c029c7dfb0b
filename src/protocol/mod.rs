//! `protocol` is wire format v1: one JSON object per `\n`-terminated line,
//! each way. `parse_request` turns a line into a typed [`Request`] with
//! bounded, hostile-input-safe checks: the line is strict JSON (no member
//! name twice, `strict_json`), an object whose fields a cursor hands out
//! one at a time (`fields`), and each op parses its own. `response`
//! encodes the replies and holds the stable error codes; `lines` splits
//! request lines out of a read buffer. Error messages name the field at
//! fault, never the value sent.

mod fields;
mod lines;
mod response;
pub mod strict_json;

pub use fields::Fields;
pub use lines::{Frame, LineSplitter};
pub use response::{Code, Failure, JwksOk, PingOk, SignOk, VerifyOk, write_error, write_ok};

use serde_json::{Map, Value};

use fields::{FieldError, shown};

/// Claims only the daemon sets: a request that supplies one is refused
/// (`reserved_claim`), never silently overwritten (RFC 8725 §3.10, §3.12).
/// `fph` is the SHA-256 of a client fingerprint (token binding).
pub const RESERVED_CLAIMS: [&str; 6] = ["iss", "iat", "nbf", "exp", "jti", "fph"];

/// The latest instant a request may name, in Unix seconds (the end of year
/// 9999). Times beyond it, or before 1970, are refused as
/// `invalid_request`: every sum the daemon makes with them stays far from
/// overflowing.
pub const MAX_UNIX_TIME: i64 = 253_402_300_799;

/// Longest accepted `id` string; ids are echoed, so they are bounded.
const MAX_ID_LEN: usize = 128;

/// The name of every op: the one list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpName {
    Ping,
    Sign,
    Verify,
    Jwks,
    Status,
    Rotate,
    Reshare,
    Revoke,
    AuditPrune,
    Reload,
    Metrics,
}

impl OpName {
    pub const ALL: [OpName; 11] = [
        OpName::Ping,
        OpName::Sign,
        OpName::Verify,
        OpName::Jwks,
        OpName::Status,
        OpName::Rotate,
        OpName::Reshare,
        OpName::Revoke,
        OpName::AuditPrune,
        OpName::Reload,
        OpName::Metrics,
    ];

    /// What a client policy allows when it lists no `ops`.
    pub const DEFAULT: [OpName; 5] = [
        OpName::Ping,
        OpName::Sign,
        OpName::Verify,
        OpName::Jwks,
        OpName::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpName::Ping => "ping",
            OpName::Sign => "sign",
            OpName::Verify => "verify",
            OpName::Jwks => "jwks",
            OpName::Status => "status",
            OpName::Rotate => "rotate",
            OpName::Reshare => "reshare",
            OpName::Revoke => "revoke",
            OpName::AuditPrune => "audit_prune",
            OpName::Reload => "reload",
            OpName::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<OpName> {
        OpName::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether only admin peers may use it.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            OpName::Rotate | OpName::Reshare | OpName::Revoke | OpName::AuditPrune | OpName::Reload
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Ping,
    Sign(SignRequest),
    Verify(VerifyRequest),
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
    /// Admin: read the config again (as SIGHUP does).
    Reload,
    /// The metrics in Prometheus text format (not in the default ops: a
    /// policy lists it, admins have it).
    Metrics,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SignRequest {
    pub claims: Map<String, Value>,
    pub ttl: Option<u64>,
    /// Client fingerprint to bind the token to (only its SHA-256 goes into
    /// the token).
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyRequest {
    pub token: String,
    pub aud: Option<String>,
    pub fingerprint: Option<String>,
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
    pub fn name(&self) -> OpName {
        match self {
            Op::Ping => OpName::Ping,
            Op::Sign(_) => OpName::Sign,
            Op::Verify(_) => OpName::Verify,
            Op::Jwks => OpName::Jwks,
            Op::Status => OpName::Status,
            Op::Rotate { .. } => OpName::Rotate,
            Op::Reshare => OpName::Reshare,
            Op::Revoke(_) => OpName::Revoke,
            Op::AuditPrune { .. } => OpName::AuditPrune,
            Op::Reload => OpName::Reload,
            Op::Metrics => OpName::Metrics,
        }
    }

    /// Whether only admin peers may use this op.
    pub fn is_admin(&self) -> bool {
        self.name().is_admin()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub op: Op,
}

/// Parse one line (without its `\n`).
pub fn parse_request(line: &[u8]) -> Result<Request, Failure> {
    let mut fields = Fields::new(json_object(line)?);
    let id = request_id(&mut fields)?;
    let invalid = |code, message: String| Failure::new(id.clone(), code, message);
    let name = op_name(&mut fields).map_err(|(code, m)| invalid(code, m))?;
    let op = parse_op(name, &mut fields).map_err(|m| invalid(Code::InvalidRequest, m))?;
    fields
        .finish(name.as_str())
        .map_err(|m| invalid(Code::InvalidRequest, m))?;
    Ok(Request { id, op })
}

/// The line as a JSON object: UTF-8, strict JSON (nesting bounded at 128,
/// no member name twice), an object.
fn json_object(line: &[u8]) -> Result<Map<String, Value>, Failure> {
    let text = std::str::from_utf8(line)
        .map_err(|_| Failure::new(None, Code::InvalidUtf8, "request is not valid UTF-8"))?;
    let value = strict_json::parse(text).map_err(|e| {
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
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(Failure::new(
            None,
            Code::InvalidRequest,
            "request must be a JSON object",
        )),
    }
}

/// The `id` to echo: a number, or a bounded string.
fn request_id(fields: &mut Fields) -> Result<Option<Value>, Failure> {
    let bad = || {
        Failure::new(
            None,
            Code::InvalidRequest,
            format!("field `id` must be a number or a string of at most {MAX_ID_LEN} bytes"),
        )
    };
    match fields.value("id") {
        None => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v)),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(Value::String(s))),
        Some(_) => Err(bad()),
    }
}

fn op_name(fields: &mut Fields) -> Result<OpName, (Code, String)> {
    let name = fields
        .required_string("op")
        .map_err(|m| (Code::InvalidRequest, m))?;
    OpName::parse(&name).ok_or_else(|| (Code::UnknownOp, format!("unknown op {:?}", shown(&name))))
}

fn parse_op(name: OpName, f: &mut Fields) -> Result<Op, FieldError> {
    Ok(match name {
        OpName::Ping => Op::Ping,
        OpName::Jwks => Op::Jwks,
        OpName::Status => Op::Status,
        OpName::Reshare => Op::Reshare,
        OpName::Reload => Op::Reload,
        OpName::Metrics => Op::Metrics,
        OpName::Rotate => Op::Rotate {
            emergency: f.bool("emergency")?.unwrap_or(false),
        },
        OpName::Sign => Op::Sign(SignRequest {
            claims: f.object("claims")?.unwrap_or_default(),
            ttl: f.seconds("ttl")?,
            fingerprint: f.string("fingerprint")?,
        }),
        OpName::Verify => Op::Verify(VerifyRequest {
            token: f.required_string("token")?,
            aud: f.string("aud")?,
            fingerprint: f.string("fingerprint")?,
        }),
        OpName::Revoke => Op::Revoke(revoke_target(f)?),
        OpName::AuditPrune => Op::AuditPrune {
            before: f.unix_time("before")?.ok_or("field `before` is missing")?,
        },
    })
}

/// Exactly one of `jti` (with `exp`), `token`, or `sub` (with an optional
/// `before`).
fn revoke_target(f: &mut Fields) -> Result<RevokeTarget, FieldError> {
    let (jti, token, sub) = (f.string("jti")?, f.string("token")?, f.string("sub")?);
    let (exp, before) = (f.unix_time("exp")?, f.unix_time("before")?);
    match (jti, token, sub) {
        (Some(jti), None, None) => match exp {
            Some(exp) if before.is_none() => Ok(RevokeTarget::Jti { jti, exp }),
            _ => Err("revoke by `jti` needs the token's `exp`".into()),
        },
        (None, Some(token), None) if exp.is_none() && before.is_none() => {
            Ok(RevokeTarget::Token(token))
        }
        (None, None, Some(sub)) if exp.is_none() => Ok(RevokeTarget::Sub { sub, before }),
        _ => Err(
            "revoke takes exactly one of `jti` (with `exp`), `token`, or `sub` \
                  (with an optional `before`)"
                .into(),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_op() {
        let r = parse_request(br#"{"id":1,"op":"sign","claims":{"sub":"a"},"ttl":60}"#).unwrap();
        assert_eq!(r.id, Some(Value::from(1)));
        let Op::Sign(SignRequest { claims, ttl, .. }) = r.op else {
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

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&bytes);
        }
    }
}
