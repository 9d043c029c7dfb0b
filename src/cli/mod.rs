//! `cli` is the command line. `main` parses it, calls [`run`] and prints
//! one error line. `run` is a table of contents: each command is one
//! function, in `daemon_cmds` (commands that go through the daemon, with
//! an offline fallback where one makes sense), `offline` (commands on the
//! stores themselves: init, import, recover, check, backup),
//! `cluster_cmds` (pg-schema, node, migrate-store), `audit` (the audit
//! log) and `docs` (completions, man pages); `output` has what they print
//! and how they fail, `places` where they looked when they find nothing.

mod audit;
mod cluster_cmds;
mod daemon_cmds;
mod docs;
mod offline;
mod output;
mod places;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::config::{Config, Env, Overrides};
use crate::protocol::MAX_UNIX_TIME;

pub use output::CommandError;
pub use places::Unreached;

#[derive(Debug, Parser)]
#[command(
    name = "splitsign",
    version,
    about = "Sign JWTs with an Ed25519 or P-256 key split between a file and a database"
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
    /// Unix socket of the daemon (overrides the config). Also from the
    /// environment, like `SSH_AUTH_SOCK`; the flag wins.
    #[arg(long, global = true, value_name = "PATH", env = "SPLITSIGN_SOCKET")]
    pub socket: Option<PathBuf>,
    /// How long to wait to connect to the daemon, and for each reply; then
    /// give up with exit 69. Between 1ms and 1d.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (creates the first key on first start).
    Serve,
    /// Create the first key offline, optionally with an offline recovery share.
    Init(InitArgs),
    /// Import an existing key (PKCS#8 PEM) as the first key: Ed25519 with
    /// `alg` EdDSA or Ed25519, P-256 with `alg` ES256.
    Import(ImportArgs),
    /// Ask the daemon for a token; prints it.
    Sign(SignArgs),
    /// Ask the daemon to verify a token ("-" reads it from stdin). Exit 0 if
    /// valid, 3 if the daemon says it is not (revoked, expired, unknown key,
    /// bad signature, malformed, wrong audience or fingerprint), 69 if the
    /// daemon cannot be reached, 1 on any other failure.
    Verify(VerifyArgs),
    /// Print the published keys (JWKS).
    Jwks,
    /// Show every key with its state, timestamps and the next transition
    /// (from the daemon, or from the database when no daemon runs).
    Status(StatusArgs),
    /// Rotate now: a new key signs at once; the old key's tokens keep
    /// verifying until they expire. Through the daemon if one runs, else
    /// offline on the stores (also the way back when a store is lost).
    Rotate(RotateArgs),
    /// Re-split the keys into fresh shares (after a suspected leak of one
    /// store). Capped per key; beyond the cap, rotate.
    Reshare(ReshareArgs),
    /// Rebuild a lost file share or database share from the other store and
    /// the offline recovery share. Offline (stop the daemon first).
    Recover(RecoverArgs),
    /// Keep the current file shares as `share_seal` says: sealed to this
    /// host's TPM, or in clear. Each is written again (the same share) and
    /// renamed over the old file, crash-safely; the database share and the
    /// recovery share stay valid. Offline (stop the daemon first).
    Reseal(ResealArgs),
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
    Backup(BackupArgs),
    /// Revoke a token (by jti and exp, or whole) or every token of a
    /// subject issued before an instant. Through the daemon if one runs,
    /// else offline (jti or sub only).
    Revoke(RevokeArgs),
    /// List the audit log, check its hash chain (--verify: exit 0 if
    /// intact, 65 naming the first broken record), or prune it.
    Audit(AuditArgs),
    /// Print the daemon's metrics (Prometheus text format), as
    /// `metrics_file` holds them.
    Metrics,
    /// Ask the running daemon to read its config again (what `systemctl
    /// reload` runs). Prints why a reload was refused; the daemon then
    /// keeps its running config.
    Reload,
    /// PostgreSQL: apply the schema (run with a config whose `postgres`
    /// logs in as the tables' owner); `--grant NODE` is `node add NODE`.
    PgSchema(PgSchemaArgs),
    /// PostgreSQL: the cluster's members and bounds (run with the owner's
    /// config, like `pg-schema`).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Move this host's keys, database shares and revocations from its
    /// SQLite database to PostgreSQL (the `postgres` of the config), kids
    /// unchanged. Offline; crash-safe; run it again to finish an
    /// interrupted move.
    MigrateStore(MigrateStoreArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish,
    /// powershell): `splitsign completions bash > /etc/bash_completion.d/splitsign`.
    Completions(CompletionsArgs),
    /// Write the man pages (splitsign.1 and one per command) to DIR, or
    /// print splitsign.1 to stdout.
    Manpage(ManpageArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PgSchemaArgs {
    /// Add this node (its login role is named like it) to the cluster, as
    /// `node add` does (repeatable).
    #[arg(long, value_name = "NODE")]
    pub grant: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the members: state, keys not yet retired, revocations against
    /// the cap, whether the role may log in; and the bounds.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make NODE a member: grant its role (named like it, made beforehand
    /// with a password) the tables, list it as active, cap its connections.
    Add { node: String },
    /// Remove NODE: mark it removed, take its rights away, disable its
    /// login and end its sessions, in one step. Its keys retire by their
    /// timestamps; with --at-once, no node trusts them any more (its
    /// tokens are refused within a second) and its database shares are
    /// destroyed. A removed node never comes back under its name.
    Remove {
        node: String,
        #[arg(long)]
        at_once: bool,
    },
    /// Show the bounds no node can raise, or change them.
    Bounds(BoundsArgs),
}

#[derive(Debug, Args)]
pub struct BoundsArgs {
    /// The longest key lifetime (activation to retirement), e.g. 32d;
    /// between 60s and 3660d.
    #[arg(long, value_name = "DURATION", value_parser = parse_key_lifetime)]
    pub max_key_lifetime: Option<Duration>,
    /// The longest token TTL (exp - iat) any node may issue, e.g. 1h;
    /// between 1s and 366d.
    #[arg(long, value_name = "DURATION", value_parser = parse_token_ttl_bound)]
    pub max_token_ttl: Option<Duration>,
    /// Keys of one node not yet retired (2 to 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(2..=1000))]
    pub max_keys: Option<i64>,
    /// Revocations one node may hold.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub max_revocations: Option<i64>,
    /// Bytes of revoked values one node may hold (K, M, G: KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_revocation_bytes: Option<i64>,
    #[arg(long)]
    pub json: bool,
}

/// A duration flag's value: humantime (`90s`, `5m`, `1h`), between `min`
/// and `max`, and a whole number of seconds when `whole` (a value the
/// command would otherwise round is refused, never changed).
fn duration_between(
    s: &str,
    min: Duration,
    max: Duration,
    whole: bool,
) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write a duration like 90s, 5m or 1h)"))?;
    if whole && d.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds".into());
    }
    if d < min || d > max {
        return Err(if max == Duration::MAX {
            format!("must be at least {}", humantime::format_duration(min))
        } else {
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            )
        });
    }
    Ok(d)
}

const DAY: u64 = 86_400;

/// `--timeout`: more than nothing (a zero timeout cannot wait for any
/// reply), at most a day.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::from_millis(1), Duration::from_secs(DAY), false)
}

/// `sign --ttl`: whole seconds, at least 1s (the daemon's `max_ttl` is the
/// upper bound).
fn parse_ttl(s: &str) -> Result<Duration, String> {
    duration_between(s, Duration::from_secs(1), Duration::MAX, true)
}

/// `node bounds --max-key-lifetime`: the range the cluster's schema takes.
fn parse_key_lifetime(s: &str) -> Result<Duration, String> {
    duration_between(
        s,
        Duration::from_secs(60),
        Duration::from_secs(3660 * DAY),
        true,
    )
}

/// `node bounds --max-token-ttl`: the range the cluster's schema takes.
fn parse_token_ttl_bound(s: &str) -> Result<Duration, String> {
    duration_between(
        s,
        Duration::from_secs(1),
        Duration::from_secs(366 * DAY),
        true,
    )
}

/// `sign --claim NAME=VALUE`: a name that is not empty.
fn parse_claim(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| "must be NAME=VALUE".to_owned())?;
    if name.is_empty() {
        return Err("the claim name (before `=`) is empty".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the claim name {name:?} holds a space or a control character (use --claims-json \
             for such a name)"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// A string flag whose empty value means nothing (an audience, a
/// fingerprint, a subject or token id to revoke).
fn non_empty() -> clap::builder::NonEmptyStringValueParser {
    clap::builder::NonEmptyStringValueParser::new()
}

/// A size in bytes: digits, optionally followed by K, M or G (powers of
/// 1024; "KiB" and the like too).
fn parse_size(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 16777216, 16M or 16MiB)"))?;
    let mul: i64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: the unit must be K, M or G")),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Debug, Args)]
pub struct MigrateStoreArgs {
    /// Move to the PostgreSQL server of the config's `postgres`.
    #[arg(long)]
    pub to_postgres: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Also write a third share (x = 3) here, mode 0600, for offline keeping.
    #[arg(long, value_name = "PATH")]
    pub recovery_share: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The PKCS#8 PEM file ("-----BEGIN PRIVATE KEY-----").
    #[arg(long, value_name = "FILE")]
    pub pem: PathBuf,
    #[arg(long, value_name = "PATH")]
    pub recovery_share: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// A string claim, NAME=VALUE (repeatable, each name once; the name
    /// must not be empty).
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, String)>,
    /// Claims as a JSON object, merged before --claim.
    #[arg(long = "claims-json", value_name = "JSON")]
    pub claims_json: Option<String>,
    /// Lifetime in whole seconds, at least 1s, e.g. 90s, 5m, 1h (default:
    /// the daemon's default_ttl).
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Bind the token to this client fingerprint (a session cookie, a
    /// TLS client certificate's hash…): only its SHA-256 goes into the
    /// token, and verifying it then needs the same --fingerprint.
    #[arg(long, value_name = "VALUE", value_parser = non_empty())]
    pub fingerprint: Option<String>,
    /// Print the whole response as JSON instead of the token alone.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub token: String,
    /// Also require this audience.
    #[arg(long, value_parser = non_empty())]
    pub aud: Option<String>,
    /// The client fingerprint the token is bound to (`sign
    /// --fingerprint`): a bound token verifies only with it.
    #[arg(long, value_name = "VALUE", value_parser = non_empty())]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Retire the current key at once: its tokens stop verifying.
    #[arg(long)]
    pub emergency: bool,
}

#[derive(Debug, Args)]
pub struct ReshareArgs {
    /// Offline only: also write a new offline recovery share for the
    /// active key (the old one stops working).
    #[arg(long, value_name = "PATH")]
    pub recovery_share: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    #[arg(long, value_name = "FILE")]
    pub recovery_share: PathBuf,
}

#[derive(Debug, Args)]
pub struct ResealArgs {
    /// What the shares become: `tpm2` (sealed) or `none` (in clear). It
    /// must be the config's `share_seal`, so that the shares written from
    /// then on are kept the same way (default: the config's).
    #[arg(long, value_name = "SEAL", value_parser = ["tpm2", "none"])]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Revoke the token with this jti (with --exp: kept until then).
    #[arg(long, conflicts_with_all = ["token", "sub"], requires = "exp", value_parser = non_empty())]
    pub jti: Option<String>,
    /// Revoke every token id in FILE, one a line ("-": stdin), each until
    /// now + max_ttl (every token with it has expired by then). A mass
    /// logout: pipelined, stored in large transactions.
    #[arg(long, value_name = "FILE",
          conflicts_with_all = ["jti", "exp", "token", "sub", "before", "sub_file"])]
    pub jti_file: Option<PathBuf>,
    /// Revoke every subject in FILE, one a line ("-": stdin): their tokens
    /// issued until now.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["jti", "exp", "token", "sub", "before"])]
    pub sub_file: Option<PathBuf>,
    /// The revoked token's exp (Unix seconds), with --jti.
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..=MAX_UNIX_TIME))]
    pub exp: Option<i64>,
    /// Revoke this token (its jti until its exp; through the daemon, which
    /// checks the signature first).
    #[arg(long, conflicts_with = "sub", value_parser = non_empty())]
    pub token: Option<String>,
    /// Revoke every token of this subject issued until --before.
    #[arg(long, value_parser = non_empty())]
    pub sub: Option<String>,
    /// With --sub: tokens issued before this Unix time (default: now).
    #[arg(long, requires = "sub", value_parser = clap::value_parser!(i64).range(0..=MAX_UNIX_TIME))]
    pub before: Option<i64>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long, conflicts_with = "prune_before")]
    pub verify: bool,
    /// Prune the records older than TIME (Unix seconds, RFC 3339 like
    /// 2026-01-31T00:00:00Z, or an age like 90d), keeping the rest of
    /// the chain verifiable. Through the daemon if one runs (admin op),
    /// else offline.
    #[arg(long, value_name = "TIME")]
    pub prune_before: Option<String>,
    /// First record to list (1 or more).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    pub from: i64,
    /// How many records to list (1 to 100000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
    #[arg(long)]
    pub json: bool,
}

/// What every command has: the configuration, and how to reach the daemon.
pub struct Ctx {
    pub cfg: Config,
    timeout: Duration,
    /// What chose the places besides the config file (for messages).
    given: places::Given,
}

impl Ctx {
    /// A connection to the daemon, within `--timeout`. When no daemon
    /// listens, the error says where the CLI looked.
    pub fn daemon(&self) -> Result<Client, Unreached> {
        Client::connect_timeout(&self.cfg.paths.socket, self.timeout)
            .map_err(|e| Unreached::new(e, &self.cfg, self.given))
    }

    /// The configuration, for a command that works on the stores
    /// offline; refused, saying where the CLI looked, when no store is
    /// there at all.
    pub fn offline(&self) -> Result<&Config, CommandError> {
        match places::nothing_here(&self.cfg, self.given) {
            Some(f) => Err(f),
            None => Ok(&self.cfg),
        }
    }
}

pub fn run(cli: Cli) -> Result<(), CommandError> {
    // These need no config (a packager runs them at build time).
    match &cli.command {
        Command::Completions(a) => return docs::completions(a.shell),
        Command::Manpage(a) => return docs::manpages(a.out_dir.as_deref()),
        _ => {}
    }
    let env = Env::from_process();
    let given = places::Given {
        socket: cli.socket.is_some(),
        db: cli.db.is_some(),
        shares_dir: cli.shares_dir.is_some(),
        state_directory: env
            .state_directory
            .as_deref()
            .is_some_and(|s| !s.is_empty()),
        runtime_directory: env
            .runtime_directory
            .as_deref()
            .is_some_and(|s| !s.is_empty()),
    };
    let overrides = Overrides {
        config: cli.config,
        shares_dir: cli.shares_dir,
        db: cli.db,
        socket: cli.socket,
    };
    let cx = Ctx {
        cfg: Config::load(&overrides, &env)?,
        timeout: cli.timeout,
        given,
    };
    match cli.command {
        Command::Serve => Ok(crate::daemon::serve(cx.cfg, overrides)?),
        Command::Init(a) => offline::init(&cx, a),
        Command::Import(a) => offline::import(&cx, a),
        Command::Sign(a) => daemon_cmds::sign(&cx, a),
        Command::Verify(a) => daemon_cmds::verify(&cx, a),
        Command::Jwks => daemon_cmds::jwks(&cx),
        Command::Status(a) => daemon_cmds::status(&cx, a),
        Command::Rotate(a) => daemon_cmds::rotate(&cx, a),
        Command::Reshare(a) => daemon_cmds::reshare(&cx, a),
        Command::Revoke(a) => daemon_cmds::revoke(&cx, a),
        Command::Recover(a) => offline::recover(&cx, a),
        Command::Reseal(a) => offline::reseal(&cx, a),
        Command::Check => offline::check(&cx),
        Command::Backup(a) => offline::backup(&cx, a),
        Command::Audit(a) => audit::run(&cx, a),
        Command::Reload => daemon_cmds::reload(&cx),
        Command::Metrics => daemon_cmds::metrics(&cx),
        Command::PgSchema(a) => cluster_cmds::pg_schema(&cx, a),
        Command::Node(c) => cluster_cmds::node(&cx, c),
        Command::MigrateStore(a) => cluster_cmds::migrate_store(&cx, a),
        Command::Completions(_) | Command::Manpage(_) => unreachable!("handled above"),
    }
}
