//! `daemon_cmds`: the commands that talk to a running daemon. `status`,
//! `rotate`, `reshare` and `revoke` work offline on the stores when no
//! daemon listens (never when one runs but does not answer: that is exit
//! 69, since the daemon holds the stores).

use std::io::Read;

use serde_json::{Map, Value, json};

use super::offline;
use super::output::{CommandError, previous_note, render_status, signs_from, usage};
use super::{Ctx, ReshareArgs, RevokeArgs, RotateArgs, SignArgs, StatusArgs, VerifyArgs};
use crate::client::ClientError;
use crate::error::exit;
use crate::protocol::{Code, RevokeTarget};

pub fn sign(cx: &Ctx, a: SignArgs) -> Result<(), CommandError> {
    // A claim given twice is ambiguous: refused, as the daemon refuses it.
    let mut claims = match a.claims_json {
        None => Map::new(),
        Some(j) => match crate::protocol::strict_json::parse(&j) {
            Ok(Value::Object(m)) => m,
            Err(e) if crate::protocol::strict_json::is_duplicate(&e) => {
                return Err(usage(format!("--claims-json: {e}")));
            }
            _ => return Err(usage("--claims-json must be a JSON object".into())),
        },
    };
    let mut named = std::collections::HashSet::new();
    for (k, v) in a.claims {
        if !named.insert(k.clone()) || claims.contains_key(&k) {
            return Err(usage(format!(
                "--claim {k:?} is given twice (or also in --claims-json): give each claim once"
            )));
        }
        claims.insert(k, Value::String(v));
    }
    // `--ttl` is whole seconds, at least 1 (checked when parsed).
    let s = cx.daemon()?.sign_bound(
        &claims,
        a.ttl.map(|d| d.as_secs()),
        a.fingerprint.as_deref(),
    )?;
    if a.json {
        println!(
            "{}",
            json!({"token": s.token, "kid": s.kid, "exp": s.exp, "jti": s.jti})
        );
    } else {
        println!("{}", s.token);
    }
    Ok(())
}

pub fn verify(cx: &Ctx, a: VerifyArgs) -> Result<(), CommandError> {
    let token = if a.token == "-" {
        let mut t = String::new();
        std::io::stdin()
            .take(1024 * 1024)
            .read_to_string(&mut t)
            .map_err(|e| usage(format!("reading the token from stdin: {e}")))?;
        t.trim().to_owned()
    } else {
        a.token
    };
    if token.trim().is_empty() {
        return Err(usage(
            "verify: the token is empty (give it as the argument, or \"-\" and on stdin)".into(),
        ));
    }
    match cx
        .daemon()?
        .verify_bound(&token, a.aud.as_deref(), a.fingerprint.as_deref())
    {
        Ok(v) => {
            let out = json!({"kid": v.kid, "claims": v.claims});
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("JSON serializes")
            );
            Ok(())
        }
        Err(ClientError::Daemon { code, message }) if says_not_valid(&code) => Err(CommandError {
            code: exit::INVALID_TOKEN,
            message: format!("token is not valid: {message} ({code})"),
        }),
        Err(e) => Err(e.into()),
    }
}

pub fn jwks(cx: &Ctx) -> Result<(), CommandError> {
    let jwks = cx.daemon()?.jwks()?;
    println!(
        "{}",
        serde_json::to_string_pretty(&jwks).expect("JSON serializes")
    );
    Ok(())
}

pub fn status(cx: &Ctx, a: StatusArgs) -> Result<(), CommandError> {
    let status = match cx.daemon() {
        Ok(mut c) => c.status()?,
        Err(e) if e.no_daemon() => offline::status(cx.offline()?)?,
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!("{status}");
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

pub fn rotate(cx: &Ctx, a: RotateArgs) -> Result<(), CommandError> {
    let mut c = match cx.daemon() {
        Ok(c) => c,
        Err(e) if e.no_daemon() => return offline::rotate(cx.offline()?, a.emergency),
        Err(e) => return Err(e.into()),
    };
    let mut f = Map::new();
    f.insert("emergency".into(), a.emergency.into());
    let r = c.call("rotate", f)?;
    println!(
        "rotated: key {} {}{}",
        r.get("kid").and_then(Value::as_str).unwrap_or("?"),
        signs_from(r.get("activate_at").and_then(Value::as_i64)),
        previous_note(r.get("previous").and_then(Value::as_str), a.emergency)
    );
    Ok(())
}

pub fn reshare(cx: &Ctx, a: ReshareArgs) -> Result<(), CommandError> {
    let mut c = match cx.daemon() {
        Ok(c) => c,
        Err(e) if e.no_daemon() => return offline::reshare(cx.offline()?, a.recovery_share),
        Err(e) => return Err(e.into()),
    };
    if a.recovery_share.is_some() {
        return Err(usage(
            "--recovery-share works offline only: a daemon is running, and it never writes \
             key material outside its stores. Stop it, or reshare without --recovery-share"
                .into(),
        ));
    }
    let r = c.call("reshare", Map::new())?;
    for k in r
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "re-split key {} into share generation {}",
            k["kid"].as_str().unwrap_or("?"),
            k["generation"]
        );
    }
    Ok(())
}

pub fn revoke(cx: &Ctx, a: RevokeArgs) -> Result<(), CommandError> {
    if let Some(file) = &a.jti_file {
        return bulk_revoke(cx, "jti", file);
    }
    if let Some(file) = &a.sub_file {
        return bulk_revoke(cx, "sub", file);
    }
    let target = match (a.jti, a.exp, a.token, a.sub) {
        (Some(jti), Some(exp), None, None) => RevokeTarget::Jti { jti, exp },
        (None, None, Some(token), None) => RevokeTarget::Token(token),
        (None, None, None, Some(sub)) => RevokeTarget::Sub {
            sub,
            before: a.before,
        },
        _ => return Err(usage("give --jti with --exp, --token, or --sub".into())),
    };
    let mut c = match cx.daemon() {
        Ok(c) => c,
        Err(e) if e.no_daemon() => return offline::revoke(cx.offline()?, &target),
        Err(e) => return Err(e.into()),
    };
    let r = c.call("revoke", revoke_fields(target))?;
    println!(
        "revoked {} {} until {}",
        r.get("revoked").and_then(Value::as_str).unwrap_or("?"),
        r.get("value").and_then(Value::as_str).unwrap_or("?"),
        r.get("until").and_then(Value::as_i64).unwrap_or(0)
    );
    Ok(())
}

/// The fields of a `revoke` request for `target`.
fn revoke_fields(target: RevokeTarget) -> Map<String, Value> {
    let mut f = Map::new();
    match target {
        RevokeTarget::Jti { jti, exp } => {
            f.insert("jti".into(), jti.into());
            f.insert("exp".into(), exp.into());
        }
        RevokeTarget::Token(t) => {
            f.insert("token".into(), t.into());
        }
        RevokeTarget::Sub { sub, before } => {
            f.insert("sub".into(), sub.into());
            if let Some(b) = before {
                f.insert("before".into(), b.into());
            }
        }
    }
    f
}

/// Whether the daemon's answer to a `verify` says the token is not valid
/// (exit 3): every code that rejects the token (revoked and a fingerprint
/// mismatch too), and a line too long for the daemon to read, since every
/// token it issues fits in a line (`max_token_bytes` leaves room in
/// `max_frame_bytes`). The daemon unreachable or busy, a refusal of the
/// peer, or an internal failure are not answers about the token.
fn says_not_valid(code: &str) -> bool {
    Code::parse(code).is_some_and(|c| c.rejects_token() || c == Code::FrameTooLong)
}

/// `reload`: through the daemon only (there is nothing to reload offline).
pub fn reload(cx: &Ctx) -> Result<(), CommandError> {
    let mut c = cx.daemon()?;
    c.call("reload", Map::new())?;
    println!(
        "reloaded the config of the daemon at {}",
        cx.cfg.paths.socket.display()
    );
    Ok(())
}

/// `metrics`: the daemon's metrics text, as it is.
pub fn metrics(cx: &Ctx) -> Result<(), CommandError> {
    let r = cx.daemon()?.call("metrics", Map::new())?;
    print!("{}", r.get("metrics").and_then(Value::as_str).unwrap_or(""));
    Ok(())
}

/// Longest line of a `--jti-file` / `--sub-file` (a protocol value is at
/// most 1024 bytes).
const MAX_VALUE_LINE: usize = 1024;

/// The values of a revoke file: one a line, blank lines and `#` comments
/// skipped; a line that is too long, or not UTF-8, is an error naming it.
fn revoke_values(file: &std::path::Path) -> Result<Vec<String>, CommandError> {
    let text = if file == std::path::Path::new("-") {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)
            .map_err(|e| usage(format!("reading stdin: {e}")))?;
        s
    } else {
        std::fs::read(file).map_err(|e| usage(format!("reading {}: {e}", file.display())))?
    };
    let text = String::from_utf8(text)
        .map_err(|_| usage(format!("{} is not UTF-8 text", file.display())))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v = line.trim();
        if v.is_empty() || v.starts_with('#') {
            continue;
        }
        if v.len() > MAX_VALUE_LINE {
            return Err(usage(format!(
                "{}:{}: longer than {MAX_VALUE_LINE} bytes",
                file.display(),
                n + 1
            )));
        }
        out.push(v.to_owned());
    }
    Ok(out)
}

/// `revoke --jti-file` / `--sub-file`: every value, through the daemon
/// (pipelined, a window of requests in flight, so that its revokes share
/// transactions), or offline in one transaction.
fn bulk_revoke(cx: &Ctx, kind: &str, file: &std::path::Path) -> Result<(), CommandError> {
    let values = revoke_values(file)?;
    let now = crate::clock::wall_now();
    let exp = now.saturating_add(cx.cfg.tokens.max_ttl.as_secs() as i64);
    let target = |v: &str| match kind {
        "jti" => RevokeTarget::Jti {
            jti: v.to_owned(),
            exp,
        },
        _ => RevokeTarget::Sub {
            sub: v.to_owned(),
            before: None,
        },
    };
    let mut c = match cx.daemon() {
        Ok(c) => c,
        Err(e) if e.no_daemon() => {
            let targets: Vec<RevokeTarget> = values.iter().map(|v| target(v)).collect();
            return offline::revoke_many(cx.offline()?, &targets);
        }
        Err(e) => return Err(e.into()),
    };
    const WINDOW: usize = 512;
    let mut in_flight = std::collections::VecDeque::new();
    let (mut done, mut failed) = (0usize, Vec::new());
    let mut next = values.iter();
    loop {
        while in_flight.len() < WINDOW {
            let Some(v) = next.next() else { break };
            in_flight.push_back((c.send("revoke", revoke_fields(target(v)))?, v));
        }
        let Some((id, v)) = in_flight.pop_front() else {
            break;
        };
        match c.receive(id) {
            Ok(_) => done += 1,
            Err(crate::client::ClientError::Daemon { code, message }) => {
                failed.push(format!("{v}: {message} ({code})"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("revoked {done} {kind} value(s) from {}", file.display());
    if let Some(first) = failed.first() {
        return Err(CommandError {
            code: crate::error::exit::FAILURE,
            message: format!("{} value(s) refused; the first: {first}", failed.len()),
        });
    }
    Ok(())
}
