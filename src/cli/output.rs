//! `output`: how commands fail (an exit code and one message) and what
//! they print that more than one command shares.

use std::time::Duration;

use serde_json::Value;

use crate::client::ClientError;
use crate::error::{Error, exit};

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub struct CommandError {
    pub code: u8,
    pub message: String,
}

impl From<Error> for CommandError {
    fn from(e: Error) -> CommandError {
        CommandError {
            code: e.exit_code(),
            message: crate::error::chain(&e),
        }
    }
}

impl From<ClientError> for CommandError {
    fn from(e: ClientError) -> CommandError {
        let code = match &e {
            ClientError::Connect { .. } | ClientError::Timeout { .. } => exit::UNAVAILABLE,
            // Try again later: the daemon is busy, cannot reach a store, or
            // keeps the audit log's last disk space for the admins.
            ClientError::Daemon { code, .. }
                if matches!(code.as_str(), "unavailable" | "busy" | "audit_reserve") =>
            {
                exit::UNAVAILABLE
            }
            _ => exit::FAILURE,
        };
        CommandError {
            code,
            message: e.to_string(),
        }
    }
}
pub fn usage(message: String) -> CommandError {
    CommandError {
        code: exit::USAGE,
        message,
    }
}

/// "signs now", or "signs from <time>" when the key starts later (a
/// cluster's rotation waits a moment for the other nodes).
pub fn signs_from(activate_at: Option<i64>) -> String {
    match activate_at {
        Some(t) if t > crate::clock::wall_now() => format!("signs from {}", rfc3339(t)),
        _ => "signs now".into(),
    }
}

pub use crate::clock::rfc3339;

/// A point in time given on the command line: Unix seconds, RFC 3339, or
/// an age ("90d": that long ago).
pub fn parse_time(s: &str) -> Result<i64, CommandError> {
    let bad = || {
        usage(format!(
            "{s:?} is not a time: give Unix seconds, RFC 3339 (2026-01-31T00:00:00Z) or an age (90d)"
        ))
    };
    let t = if let Ok(n) = s.parse::<i64>() {
        n
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| bad())?
            .as_secs() as i64
    } else if let Ok(age) = humantime::parse_duration(s) {
        crate::clock::wall_now().saturating_sub(i64::try_from(age.as_secs()).map_err(|_| bad())?)
    } else {
        return Err(bad());
    };
    if !(0..=crate::protocol::MAX_UNIX_TIME).contains(&t) {
        return Err(bad());
    }
    Ok(t)
}

pub fn previous_note(previous: Option<&str>, emergency: bool) -> String {
    match (previous, emergency) {
        (None, _) => String::new(),
        (Some(p), true) => format!("; key {p} is retired, its tokens no longer verify"),
        (Some(p), false) => {
            format!("; key {p} no longer signs, its tokens verify until they expire")
        }
    }
}

/// A readable table of `status`.
pub fn render_status(status: &Value) -> String {
    let daemon = match status.get("uptime_s").and_then(Value::as_u64) {
        Some(up) => format!("daemon up {up}s"),
        None => "daemon not running".into(),
    };
    // `alg` is the label of keys created from now on; each key's own is
    // in the table.
    let mut out = format!(
        "issuer {}  alg of new keys {}  {daemon}\nactive key       {}\nnext transition  {}\n",
        text(status, "issuer"),
        text(status, "alg"),
        text(status, "active_kid"),
        time(status, "next_transition"),
    );
    if let Some(c) = status.get("cluster") {
        render_cluster(&mut out, c);
    }
    if let Some(a) = status.get("audit").filter(|a| a.is_object()) {
        render_audit(&mut out, a);
    }
    if let Some(f) = status.get("store_fault").and_then(Value::as_str) {
        out.push_str(&format!("NOT SIGNING      {f}\n"));
    }
    render_keys(&mut out, status);
    out
}

/// The string field `k` of `v`, or "-".
fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned()
}

/// The Unix-seconds field `k` of `v` in RFC 3339, or "-".
fn time(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_i64)
        .and_then(|secs| {
            std::time::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).ok()?))
        })
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}

/// The status's cluster lines: the node, a database gone back, skipped keys.
fn render_cluster(out: &mut String, c: &Value) {
    out.push_str(&format!(
        "node             {}  (database {}{}; {} node(s))\n",
        text(c, "node"),
        text(c, "database"),
        c.get("reason")
            .and_then(Value::as_str)
            .map(|r| format!(": {r}"))
            .unwrap_or_default(),
        c.get("nodes").and_then(Value::as_u64).unwrap_or(1)
    ));
    if let Some(w) = c.get("database_went_back").filter(|w| w.is_object()) {
        out.push_str(&format!(
            "database         WENT BACK at {} (a restored dump?): the revocations seen stay \
             in force; {} of this node's written back\n",
            time(w, "at"),
            w.get("written_back").and_then(Value::as_u64).unwrap_or(0)
        ));
    }
    for k in c
        .get("skipped_keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "skipped key      {} of node {}: {}\n",
            text(k, "kid"),
            text(k, "node"),
            text(k, "reason")
        ));
    }
}

/// The status's audit log line: its state and the disk space left.
fn render_audit(out: &mut String, a: &Value) {
    let bytes = |k: &str| {
        a.get(k)
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), crate::config::human_bytes)
    };
    let space = format!(
        "{} free, {} kept free by audit_keep_free",
        bytes("free_bytes"),
        bytes("keep_free_bytes")
    );
    out.push_str(&match text(a, "state").as_str() {
        "failing" => format!("NOT SIGNING      the audit log cannot be written ({space})\n"),
        "off" => "audit log        off (audit = false)\n".to_owned(),
        state if a.get("reserve_in_use") == Some(&Value::Bool(true)) => {
            format!("audit log        {state}, DOWN TO ITS RESERVE: only admins sign ({space})\n")
        }
        state => format!("audit log        {state} ({space})\n"),
    });
}

/// The status's table of keys, with a node column in a cluster.
fn render_keys(out: &mut String, status: &Value) {
    let keys: Vec<&Value> = status
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    // A cluster's status names each key's node.
    let nodes = keys.iter().any(|k| k.get("node").is_some());
    let node_col = |k: Option<&Value>| {
        if !nodes {
            return String::new();
        }
        let name = k.map_or_else(|| "NODE".to_owned(), |k| text(k, "node"));
        format!("{name:<16} ")
    };
    out.push_str(&format!(
        "\n{}{:<44} {:<9} {:<7} {:<6} {:<21} {:<21} {:<21}\n",
        node_col(None),
        "KID",
        "STATE",
        "ALG",
        "SHARE",
        "ACTIVATES",
        "DEACTIVATES",
        "RETIRES"
    ));
    for k in keys {
        out.push_str(&format!(
            "{}{:<44} {:<9} {:<7} {:<6} {:<21} {:<21} {:<21}\n",
            node_col(Some(k)),
            text(k, "kid"),
            text(k, "state"),
            text(k, "alg"),
            // How the file share is kept: sealed to the TPM, or in clear.
            match k.get("file_share").and_then(Value::as_str) {
                Some("none") => "clear",
                Some(_) => "sealed",
                None => "-",
            },
            time(k, "activate_at"),
            time(k, "deactivate_at"),
            time(k, "retire_at")
        ));
    }
}
