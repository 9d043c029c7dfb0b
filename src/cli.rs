//! `cli` defines the command line (clap) and runs each command. `main` only
//! parses, calls [`run`] and turns the result into an exit code.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use crate::client::{Client, ClientError};
use crate::config::{Config, Env, Overrides};
use crate::error::{Error, exit};
use crate::keys::Origin;
use crate::lifecycle;
use crate::store::Stores;

#[derive(Debug, Parser)]
#[command(
    name = "splitsign",
    version,
    about = "Sign JWTs with an Ed25519 key split between a file and a SQLite database"
)]
pub struct Cli {
    /// Config file (TOML). Default: /etc/splitsign/config.toml if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the file shares (overrides the config).
    #[arg(long, global = true, value_name = "DIR")]
    pub shares_dir: Option<PathBuf>,
    /// SQLite database (overrides the config).
    #[arg(long, global = true, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Unix socket of the daemon (overrides the config).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// How long to wait to connect to the daemon, and for each reply; then
    /// give up with exit 69.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (creates the first key on first start).
    Serve,
    /// Create the first key offline, optionally with an offline recovery share.
    Init {
        /// Also write a third share (x = 3) here, mode 0600, for offline keeping.
        #[arg(long, value_name = "PATH")]
        recovery_share: Option<PathBuf>,
    },
    /// Import an existing Ed25519 key (PKCS#8 PEM) as the first key.
    Import {
        /// The PKCS#8 PEM file ("-----BEGIN PRIVATE KEY-----").
        #[arg(long, value_name = "FILE")]
        pem: PathBuf,
        #[arg(long, value_name = "PATH")]
        recovery_share: Option<PathBuf>,
    },
    /// Ask the daemon for a token; prints it.
    Sign {
        /// A string claim, NAME=VALUE (repeatable).
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
        /// Claims as a JSON object, merged before --claim.
        #[arg(long = "claims-json", value_name = "JSON")]
        claims_json: Option<String>,
        /// Lifetime, e.g. 90s, 5m, 1h (default: the daemon's default_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Print the whole response as JSON instead of the token alone.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon to verify a token ("-" reads it from stdin). Exit 0 if
    /// valid, 3 if not.
    Verify {
        token: String,
        /// Also require this audience.
        #[arg(long)]
        aud: Option<String>,
    },
    /// Print the published keys (JWKS).
    Jwks,
    /// Show every key with its state, timestamps and the next transition
    /// (from the daemon, or from the database when no daemon runs).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rotate now: a new key signs at once; the old key's tokens keep
    /// verifying until they expire. Through the daemon if one runs, else
    /// offline on the stores (also the way back when a store is lost).
    Rotate {
        /// Retire the current key at once: its tokens stop verifying.
        #[arg(long)]
        emergency: bool,
    },
    /// Re-split the keys into fresh shares (after a suspected leak of one
    /// store). Capped per key; beyond the cap, rotate.
    Reshare {
        /// Offline only: also write a new offline recovery share for the
        /// active key (the old one stops working).
        #[arg(long, value_name = "PATH")]
        recovery_share: Option<PathBuf>,
    },
    /// Rebuild a lost file share or database share from the other store and
    /// the offline recovery share. Offline (stop the daemon first).
    Recover {
        #[arg(long, value_name = "FILE")]
        recovery_share: PathBuf,
    },
    /// Check both stores offline: they must belong together (the same
    /// deployment, no share the database cannot account for), and every key
    /// that may sign must rebuild from its two shares. Exit 0, or 65 with
    /// the reason. Only reads, so it also works beside a running daemon.
    Check,
    /// Write a consistent copy of the database store (keys, database
    /// shares, revocations, audit log) to FILE, a new file, mode 0600, with
    /// SQLite's online backup API; works while the daemon runs. It never
    /// holds a file share: back up the share directory separately, and keep
    /// the two backups apart.
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Revoke a token (by jti and exp, or whole) or every token of a
    /// subject issued before an instant. Through the daemon if one runs,
    /// else offline (jti or sub only).
    Revoke {
        #[arg(long, conflicts_with_all = ["token", "sub"], requires = "exp")]
        jti: Option<String>,
        /// The revoked token's exp (Unix seconds), with --jti.
        #[arg(long)]
        exp: Option<i64>,
        #[arg(long, conflicts_with = "sub")]
        token: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        /// With --sub: tokens issued before this Unix time (default: now).
        #[arg(long, requires = "sub")]
        before: Option<i64>,
    },
    /// List the audit log, or check its hash chain (--verify: exit 0 if
    /// intact, 65 naming the first broken record).
    Audit {
        #[arg(long, conflicts_with = "prune_before")]
        verify: bool,
        /// Prune the records older than TIME (Unix seconds, RFC 3339 like
        /// 2026-01-31T00:00:00Z, or an age like 90d), keeping the rest of
        /// the chain verifiable. Through the daemon if one runs (admin op),
        /// else offline.
        #[arg(long, value_name = "TIME")]
        prune_before: Option<String>,
        /// First record to list.
        #[arg(long, default_value_t = 1)]
        from: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            code: e.exit_code(),
            message: crate::error::chain(&e),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match &e {
            ClientError::Connect { .. } | ClientError::Timeout { .. } => exit::UNAVAILABLE,
            _ => exit::FAILURE,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn usage(message: String) -> Failure {
    Failure {
        code: exit::USAGE,
        message,
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    let overrides = Overrides {
        config: cli.config,
        shares_dir: cli.shares_dir,
        db: cli.db,
        socket: cli.socket,
    };
    let cfg = Config::load(&overrides, &Env::from_process())?;
    let timeout = cli.timeout;
    let connect = |cfg: &Config| Client::connect_timeout(&cfg.socket, timeout);
    match cli.command {
        Command::Serve => Ok(crate::daemon::serve(cfg, overrides)?),
        Command::Init { recovery_share } => create_first(&cfg, None, recovery_share),
        Command::Import {
            pem,
            recovery_share,
        } => create_first(&cfg, Some(pem), recovery_share),
        Command::Sign {
            claims,
            claims_json,
            ttl,
            json,
        } => {
            let mut map = match claims_json {
                None => Map::new(),
                Some(j) => match serde_json::from_str(&j) {
                    Ok(Value::Object(m)) => m,
                    _ => return Err(usage("--claims-json must be a JSON object".into())),
                },
            };
            for c in claims {
                let (k, v) = c
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--claim {c:?} is not NAME=VALUE")))?;
                map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let mut client = connect(&cfg)?;
            let s = client.sign(&map, ttl.map(|d| d.as_secs().max(1)))?;
            if json {
                let v =
                    serde_json::json!({"token": s.token, "kid": s.kid, "exp": s.exp, "jti": s.jti});
                println!("{v}");
            } else {
                println!("{}", s.token);
            }
            Ok(())
        }
        Command::Verify { token, aud } => {
            let token = if token == "-" {
                let mut t = String::new();
                std::io::stdin()
                    .take(1024 * 1024)
                    .read_to_string(&mut t)
                    .map_err(|e| usage(format!("reading the token from stdin: {e}")))?;
                t.trim().to_owned()
            } else {
                token
            };
            let mut client = connect(&cfg)?;
            match client.verify(&token, aud.as_deref()) {
                Ok(v) => {
                    let out = serde_json::json!({"kid": v.kid, "claims": v.claims});
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&out).expect("JSON serializes")
                    );
                    Ok(())
                }
                Err(ClientError::Daemon { code, message }) if is_token_error(&code) => {
                    Err(Failure {
                        code: exit::INVALID_TOKEN,
                        message: format!("token is not valid: {message} ({code})"),
                    })
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Jwks => {
            let jwks = connect(&cfg)?.jwks()?;
            println!(
                "{}",
                serde_json::to_string_pretty(&jwks).expect("JSON serializes")
            );
            Ok(())
        }
        Command::Status { json } => {
            let status = match connect(&cfg) {
                Ok(mut c) => c.status()?,
                Err(e) if e.no_daemon() => offline_status(&cfg)?,
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{status}");
            } else {
                print!("{}", render_status(&status));
            }
            Ok(())
        }
        Command::Rotate { emergency } => match connect(&cfg) {
            Ok(mut c) => {
                let mut f = Map::new();
                f.insert("emergency".into(), emergency.into());
                let r = c.call("rotate", f)?;
                println!(
                    "rotated: key {} signs now{}",
                    r.get("kid").and_then(Value::as_str).unwrap_or("?"),
                    previous_note(r.get("previous").and_then(Value::as_str), emergency)
                );
                Ok(())
            }
            Err(e) if e.no_daemon() => {
                crate::keys::locked::harden_process()?;
                let mut stores = Stores::open(&cfg, false)?;
                let now = lifecycle::wall_now();
                // Offline, what the key issued is unknown: its tokens may
                // carry any exp up to now + max_ttl.
                let latest_exp = now.saturating_add(cfg.max_ttl.as_secs() as i64);
                let (new, previous) = {
                    let s = &mut stores;
                    lifecycle::rotate_now(&mut s.db, &s.shares, &cfg, now, latest_exp, emergency)?
                };
                stores.reconcile(now)?;
                println!(
                    "rotated (offline): key {} signs now{}",
                    new.row.kid,
                    previous_note(previous.as_deref(), emergency)
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Reshare { recovery_share } => match connect(&cfg) {
            Ok(mut c) => {
                if recovery_share.is_some() {
                    return Err(usage(
                        "--recovery-share works offline only: a daemon is running, and it                          never writes key material outside its stores. Stop it, or reshare                          without --recovery-share"
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
            Err(e) if e.no_daemon() => offline_reshare(&cfg, recovery_share),
            Err(e) => Err(e.into()),
        },
        Command::Recover { recovery_share } => {
            if !connect(&cfg).is_err_and(|e| e.no_daemon()) {
                return Err(usage(
                    "a daemon is running, so the key is intact in its memory: run                      `splitsign reshare` to write fresh shares, or stop the daemon to recover                      from the recovery share"
                        .into(),
                ));
            }
            crate::keys::locked::harden_process()?;
            let mut stores = Stores::open(&cfg, false)?;
            let now = lifecycle::wall_now();
            let (kid, what) = {
                let s = &mut stores;
                lifecycle::recover(&mut s.db, &s.shares, &recovery_share, now)?
            };
            match what {
                lifecycle::Recovered::Nothing => {
                    println!("key {kid}: both shares are intact; nothing to recover")
                }
                lifecycle::Recovered::FileShare => println!(
                    "key {kid}: rebuilt the file share {}",
                    stores
                        .shares
                        .share_path(&kid, current_generation(&stores, &kid)?)
                        .display()
                ),
                lifecycle::Recovered::DatabaseShare => println!(
                    "key {kid}: rebuilt the database share in {}",
                    stores.db.path().display()
                ),
            }
            Ok(())
        }
        Command::Check => check(&cfg),
        Command::Backup { file } => backup(&cfg, &file),
        Command::Revoke {
            jti,
            exp,
            token,
            sub,
            before,
        } => revoke(&cfg, connect(&cfg), jti, exp, token, sub, before),
        Command::Audit {
            verify,
            prune_before: Some(time),
            ..
        } => {
            debug_assert!(!verify);
            prune_audit(&cfg, connect(&cfg), &time)
        }
        Command::Audit {
            verify,
            from,
            limit,
            json,
            prune_before: None,
        } => audit(&cfg, verify, from, limit, json),
    }
}

fn revoke(
    cfg: &Config,
    daemon: Result<Client, ClientError>,
    jti: Option<String>,
    exp: Option<i64>,
    token: Option<String>,
    sub: Option<String>,
    before: Option<i64>,
) -> Result<(), Failure> {
    let mut f = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            f.insert(k.into(), v);
        }
    };
    put("jti", jti.clone().map(Value::from));
    put("exp", exp.map(Value::from));
    put("token", token.clone().map(Value::from));
    put("sub", sub.clone().map(Value::from));
    put("before", before.map(Value::from));
    if f.is_empty() {
        return Err(usage("give --jti with --exp, --token, or --sub".into()));
    }
    match daemon {
        Ok(mut c) => {
            let r = c.call("revoke", f)?;
            println!(
                "revoked {} {} until {}",
                r.get("revoked").and_then(Value::as_str).unwrap_or("?"),
                r.get("value").and_then(Value::as_str).unwrap_or("?"),
                r.get("until").and_then(Value::as_i64).unwrap_or(0)
            );
            Ok(())
        }
        Err(e) if e.no_daemon() => {
            let stores = Stores::open(cfg, false)?;
            let now = lifecycle::wall_now();
            let leeway = cfg.leeway.as_secs() as i64;
            let row = match (jti, exp, sub) {
                (Some(jti), Some(exp), None) => crate::store::Revocation::Jti {
                    jti,
                    expires_at: exp + leeway,
                },
                (None, None, Some(sub)) => {
                    let before = before.unwrap_or(now);
                    crate::store::Revocation::Sub {
                        sub,
                        before,
                        expires_at: before + cfg.max_ttl.as_secs() as i64 + leeway,
                    }
                }
                _ => {
                    return Err(usage(
                        "offline, revoke takes --jti with --exp, or --sub (a whole --token needs the daemon to check it)".into(),
                    ));
                }
            };
            stores.db.add_revocation(&row, now)?;
            let mut stores = stores;
            let (op_jti, op_sub) = match &row {
                crate::store::Revocation::Jti { jti, .. } => (Some(jti.clone()), None),
                crate::store::Revocation::Sub { sub, .. } => (None, Some(sub.clone())),
            };
            stores.db.audit(&[crate::store::audit_log::Record {
                at: now,
                uid: Some(rustix::process::getuid().as_raw()),
                pid: Some(std::process::id() as i32),
                op: "revoke",
                jti: op_jti,
                sub: op_sub,
                result: "ok",
                ..Default::default()
            }])?;
            println!("revoked (offline); the daemon applies it when it starts");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn audit(cfg: &Config, verify: bool, from: i64, limit: i64, json: bool) -> Result<(), Failure> {
    let database = crate::store::Database::open_read_only(&cfg.db, cfg.alg)?;
    let conn = database.connection();
    let db_err = |source| Error::Database {
        path: cfg.db.clone(),
        source,
    };
    if verify {
        return match crate::store::audit_log::verify(conn).map_err(db_err)? {
            crate::store::audit_log::Verdict::Intact {
                records,
                head,
                anchor,
            } => {
                match anchor {
                    None => println!("audit log intact: {records} records; head {head}"),
                    Some(a) => println!(
                        "audit log intact: {records} records from record {}, chained from the \
                         pruning anchor (record {} and the {} before it were pruned, the last \
                         prune removed records before {}); head {head}",
                        a.seq + 1,
                        a.seq,
                        a.pruned - 1,
                        rfc3339(a.pruned_before)
                    ),
                }
                Ok(())
            }
            crate::store::audit_log::Verdict::Broken { seq, reason } => Err(Failure {
                code: exit::KEY_STORE,
                message: format!("audit log broken at record {seq}: {reason}"),
            }),
        };
    }
    let rows =
        crate::store::audit_log::list(conn, from, limit.clamp(1, 100_000)).map_err(db_err)?;
    for r in rows {
        if json {
            println!("{}", serde_json::to_string(&r).expect("JSON serializes"));
        } else {
            // Fields came from clients: no control characters reach the
            // terminal.
            let shown = |v: Option<&str>| -> String {
                v.map_or("-".into(), |v| {
                    v.chars()
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect()
                })
            };
            println!(
                "{:>6} {} uid={} pid={} {:<8} {:<14} x{} kid={} sub={} jti={}",
                r.seq,
                rfc3339(r.at),
                r.uid.map(|u| u.to_string()).unwrap_or("-".into()),
                r.pid.map(|u| u.to_string()).unwrap_or("-".into()),
                shown(Some(&r.op)),
                shown(Some(&r.result)),
                r.count,
                shown(r.kid.as_deref()),
                shown(r.sub.as_deref()),
                shown(r.jti.as_deref()),
            );
        }
    }
    Ok(())
}

fn rfc3339(secs: i64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs.max(0) as u64))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

/// A point in time given on the command line: Unix seconds, RFC 3339, or
/// an age ("90d": that long ago).
fn parse_time(s: &str) -> Result<i64, Failure> {
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
        lifecycle::wall_now().saturating_sub(i64::try_from(age.as_secs()).map_err(|_| bad())?)
    } else {
        return Err(bad());
    };
    if !(0..=crate::protocol::MAX_UNIX_TIME).contains(&t) {
        return Err(bad());
    }
    Ok(t)
}

/// `audit --prune-before TIME`: through the daemon (admin op) or offline.
fn prune_audit(
    cfg: &Config,
    daemon: Result<Client, ClientError>,
    time: &str,
) -> Result<(), Failure> {
    let before = parse_time(time)?;
    let pruned = match daemon {
        Ok(mut c) => {
            let mut f = Map::new();
            f.insert("before".into(), before.into());
            let r = c.call("audit_prune", f)?;
            r.get("pruned").and_then(Value::as_u64).unwrap_or(0) as usize
        }
        Err(e) if e.no_daemon() => {
            let mut stores = Stores::open(cfg, false)?;
            let n = stores.db.prune_audit(before)?;
            stores.db.audit(&[crate::store::audit_log::Record {
                at: lifecycle::wall_now(),
                uid: Some(rustix::process::getuid().as_raw()),
                pid: Some(std::process::id() as i32),
                op: "audit_prune",
                result: "ok",
                ..Default::default()
            }])?;
            n
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "pruned {pruned} audit records older than {}; `splitsign audit --verify` checks the rest \
         from the pruning anchor",
        rfc3339(before)
    );
    Ok(())
}

fn previous_note(previous: Option<&str>, emergency: bool) -> String {
    match (previous, emergency) {
        (None, _) => String::new(),
        (Some(p), true) => format!("; key {p} is retired, its tokens no longer verify"),
        (Some(p), false) => {
            format!("; key {p} no longer signs, its tokens verify until they expire")
        }
    }
}

fn current_generation(stores: &Stores, kid: &str) -> Result<u32, Failure> {
    Ok(stores
        .db
        .keys()?
        .into_iter()
        .find(|r| r.kid == kid)
        .map(|r| r.share_generation)
        .unwrap_or(1))
}

fn offline_reshare(cfg: &Config, recovery: Option<PathBuf>) -> Result<(), Failure> {
    crate::keys::locked::harden_process()?;
    let mut stores = Stores::open(cfg, false)?;
    let now = lifecycle::wall_now();
    stores.reconcile(now)?;
    let rows = stores.db.keys()?;
    let active = crate::keys::schedule::active(&rows, now).map(|r| r.kid.clone());
    for row in rows
        .iter()
        .filter(|r| r.verified && crate::keys::state(r, now).needs_shares())
    {
        let key = lifecycle::unseal_key(&stores.db, &stores.shares, row)?;
        let rec = recovery
            .as_deref()
            .filter(|_| active.as_deref() == Some(row.kid.as_str()));
        let s = &mut stores;
        let g = lifecycle::reshare(&mut s.db, &s.shares, row, &key, rec)?;
        println!("re-split key {} into share generation {g}", row.kid);
        if let Some(p) = rec {
            println!(
                "  new recovery share: {} (the previous one no longer works)",
                p.display()
            );
        }
    }
    Ok(())
}

/// `backup FILE`: a consistent copy of the database store.
fn backup(cfg: &Config, file: &std::path::Path) -> Result<(), Failure> {
    // Both shares of a key in one place is what the split is there to
    // prevent: no database backup inside the share directory.
    let dest_dir = std::path::absolute(file)
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_owned()))
        .and_then(|d| d.canonicalize().ok());
    if dest_dir.is_some() && dest_dir == cfg.shares_dir.canonicalize().ok() {
        return Err(usage(format!(
            "{} is in the share directory; keep the database backup apart from the file shares",
            file.display()
        )));
    }
    let database = crate::store::Database::open_read_only(&cfg.db, cfg.alg)?;
    let s = database.backup(file)?;
    println!(
        "backed up database {} to {} (schema {}, deployment {}, {} keys, {} revocations, {} audit records)",
        cfg.db.display(),
        file.display(),
        s.schema,
        s.deployment,
        s.keys,
        s.revocations,
        s.audit_records
    );
    println!(
        "the file shares are not in it: back up {} separately, and keep the two apart",
        cfg.shares_dir.display()
    );
    Ok(())
}

/// `check`: prove the stores belong together and rebuild every key that
/// may sign from its two shares, read-only.
fn check(cfg: &Config) -> Result<(), Failure> {
    crate::keys::locked::harden_process()?;
    let dir = crate::store::ShareDir::open(&cfg.shares_dir)?;
    let database = crate::store::Database::open_read_only(&cfg.db, cfg.alg)?;
    let now = lifecycle::wall_now();
    let plan = lifecycle::survey(&database, &dir, now)?;
    let rows = database.keys()?;
    if rows.iter().all(|r| !r.verified) {
        return Err(Error::KeyStore(format!("database {} holds no key", cfg.db.display())).into());
    }
    for row in rows.iter().filter(|r| r.verified) {
        let state = crate::keys::state(row, now);
        if state.needs_shares() {
            lifecycle::unseal_key(&database, &dir, row)?;
            println!(
                "key {} ({}): file share and database share rebuild its public key",
                row.kid,
                state.as_str()
            );
        } else {
            println!("key {} ({}): public key only", row.kid, state.as_str());
        }
    }
    if crate::keys::schedule::active(&rows, now).is_none() {
        println!("no key is active now: the daemon will create one when it starts");
    }
    let leftovers = plan.destroy_files.len() + plan.remove_temps.len();
    if leftovers + plan.discard_rows.len() + plan.destroy_db_shares_of.len() > 0 {
        println!(
            "the next start cleans up {} leftover file(s) of interrupted writes or of keys that \
             no longer sign, and {} unfinished key(s)",
            leftovers,
            plan.discard_rows.len()
        );
    }
    println!(
        "ok: the share directory and the database belong together (deployment {})",
        database.deployment()
    );
    Ok(())
}

/// `status` without a daemon: the same fields, read from the database.
fn offline_status(cfg: &Config) -> Result<Value, Failure> {
    let database = crate::store::Database::open_read_only(&cfg.db, cfg.alg)?;
    let now = lifecycle::wall_now();
    let rows: Vec<_> = database
        .keys()?
        .into_iter()
        .filter(|r| r.verified)
        .collect();
    let keys: Vec<Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "kid": r.kid,
                "state": crate::keys::state(r, now).as_str(),
                "origin": r.origin.as_str(),
                "created_at": r.created_at,
                "activate_at": r.activate_at,
                "deactivate_at": r.deactivate_at,
                "retire_at": r.retire_at,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "daemon": "not running",
        "issuer": cfg.issuer,
        "alg": cfg.alg.as_str(),
        "active_kid": crate::keys::schedule::active(&rows, now).map(|r| r.kid.clone()),
        "now": now,
        "next_transition": crate::keys::schedule::next_event(&rows, now, cfg),
        "keys": keys,
    }))
}

fn is_token_error(code: &str) -> bool {
    matches!(
        code,
        "invalid_token"
            | "unknown_key"
            | "token_expired"
            | "token_not_yet_valid"
            | "audience_mismatch"
    )
}

/// `init` and `import`: create the first key of a deployment offline.
fn create_first(
    cfg: &Config,
    pem: Option<PathBuf>,
    recovery: Option<PathBuf>,
) -> Result<(), Failure> {
    crate::keys::locked::harden_process()?;
    // Read the PEM before touching the stores, so a bad file changes nothing.
    let imported = match &pem {
        None => None,
        Some(path) => Some(read_pem(path)?),
    };
    let mut stores = Stores::open(cfg, true)?;
    let now = lifecycle::wall_now();
    stores.reconcile(now)?;
    if !stores.db.is_empty()? {
        let kids: Vec<String> = stores.db.keys()?.into_iter().map(|k| k.kid).collect();
        return Err(usage(format!(
            "the stores are already initialised (key {}); nothing was changed",
            kids.join(", ")
        )));
    }
    let (seed, origin) = match imported {
        Some(seed) => (seed, Origin::Imported),
        None => (lifecycle::random_seed()?, Origin::Generated),
    };
    let row = lifecycle::create_key(
        &mut stores.db,
        &stores.shares,
        cfg,
        &seed,
        origin,
        now,
        lifecycle::Creation {
            activate_at: now,
            recovery: recovery.as_deref(),
            ..Default::default()
        },
    )?
    .row;
    println!(
        "{} key {}",
        if pem.is_some() { "imported" } else { "created" },
        row.kid
    );
    println!(
        "  file share:     {}",
        stores
            .shares
            .share_path(&row.kid, row.share_generation)
            .display()
    );
    println!("  database share: {}", stores.db.path().display());
    if let Some(r) = &recovery {
        println!(
            "  recovery share: {} (move it offline; with either store it rebuilds the key)",
            r.display()
        );
    }
    if let Some(p) = &pem {
        println!(
            "  the key is now split; delete {} once you have checked `splitsign serve` starts",
            p.display()
        );
    }
    Ok(())
}

fn read_pem(path: &std::path::Path) -> Result<zeroize::Zeroizing<[u8; 32]>, Failure> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
        .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&text).map_err(|_| {
        usage(format!(
            "{} is not a PKCS#8 PEM Ed25519 private key (\"-----BEGIN PRIVATE KEY-----\")",
            path.display()
        ))
    })?;
    Ok(zeroize::Zeroizing::new(key.to_bytes()))
}

/// A readable table of `status`.
fn render_status(status: &Value) -> String {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let t = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_i64)
            .and_then(|secs| {
                std::time::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).ok()?))
            })
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into())
    };
    let daemon = match status.get("uptime_s").and_then(Value::as_u64) {
        Some(up) => format!("daemon up {up}s"),
        None => "daemon not running".into(),
    };
    let mut out = format!(
        "issuer {}  alg {}  {daemon}\nactive key       {}\nnext transition  {}\n\n{:<44} {:<9} {:<21} {:<21} {:<21}\n",
        s(status, "issuer"),
        s(status, "alg"),
        s(status, "active_kid"),
        t(status, "next_transition"),
        "KID",
        "STATE",
        "ACTIVATES",
        "DEACTIVATES",
        "RETIRES"
    );
    for k in status
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<44} {:<9} {:<21} {:<21} {:<21}\n",
            s(k, "kid"),
            s(k, "state"),
            t(k, "activate_at"),
            t(k, "deactivate_at"),
            t(k, "retire_at")
        ));
    }
    out
}
