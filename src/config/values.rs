//! `values`: the types of the settings that are more than a number or a
//! path: the `alg` label, `audit_sync`, the audit reserve's size, `mlock`,
//! a `[[policy]]` table, and where a cluster's PostgreSQL is.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The JWS `alg` label of a key, fixed when the key is created: the
/// config's `alg` names the label of keys created from then on. `EdDSA` and
/// `Ed25519` name the same algorithm (Ed25519, RFC 8037; `Ed25519` is the
/// fully-specified name of RFC 9864, `EdDSA` the label most verifiers know
/// today). `ES256` is ECDSA on P-256 with SHA-256 (RFC 7518 §3.4), for the
/// verifiers that have no EdDSA. `keys::algorithm` maps a label to its key
/// type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AlgLabel {
    EdDSA,
    Ed25519,
    ES256,
}

impl AlgLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            AlgLabel::EdDSA => "EdDSA",
            AlgLabel::Ed25519 => "Ed25519",
            AlgLabel::ES256 => "ES256",
        }
    }

    /// Every label, in the order the docs list them.
    pub const ALL: [AlgLabel; 3] = [AlgLabel::EdDSA, AlgLabel::Ed25519, AlgLabel::ES256];

    pub fn parse(s: &str) -> Option<AlgLabel> {
        AlgLabel::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The label of keys made before labels were recorded: they are all
    /// Ed25519, so this label when it is one of Ed25519's, else `EdDSA`.
    pub fn legacy(self) -> AlgLabel {
        match self {
            AlgLabel::EdDSA | AlgLabel::Ed25519 => self,
            AlgLabel::ES256 => AlgLabel::EdDSA,
        }
    }
}

/// How hard an audit commit waits for the disk (`audit_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// `synchronous=FULL`: the WAL is fsync'ed at every commit; a committed
    /// record survives power loss. One fsync per batch.
    Full,
    /// `synchronous=NORMAL` (WAL): a committed record survives a crash of
    /// the daemon (it is in the OS before the reply leaves), but the last
    /// batches may be lost on power loss. No fsync per batch.
    Normal,
}

/// How much of the audit log's filesystem stays free for the admins
/// (`audit_keep_free`): below it, only admins may sign, so that legitimate
/// traffic never fills the disk to the last byte. A size (`"256MiB"`, or
/// bytes as an integer) or a share of the filesystem (`"5%"`); `0` turns
/// the reserve off. The default is 5% of the filesystem, at most 1 GiB
/// (journald's `SystemKeepFree=` has the same shape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepFree {
    Bytes(u64),
    /// A share of the filesystem's size, in percent, at most `cap` bytes.
    Percent {
        percent: f64,
        cap: Option<u64>,
    },
}

impl Default for KeepFree {
    fn default() -> Self {
        KeepFree::Percent {
            percent: 5.0,
            cap: Some(1 << 30),
        }
    }
}

impl KeepFree {
    /// The reserve in bytes, on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            KeepFree::Bytes(n) => n,
            KeepFree::Percent { percent, cap } => {
                let n = (total as f64 * percent / 100.0) as u64;
                cap.map_or(n, |c| n.min(c))
            }
        }
    }

    /// Parse `"5%"`, `"256MiB"`, `"1G"`, `"0"`: units K, M, G, T (powers
    /// of 1024, with or without `iB`/`B`). A percentage is at most 50.
    pub fn parse(text: &str) -> std::result::Result<KeepFree, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let percent: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage like \"5%\""))?;
            if !(0.0..=50.0).contains(&percent) {
                return Err(format!("{text:?}: a percentage must be between 0% and 50%"));
            }
            return Ok(KeepFree::Percent { percent, cap: None });
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("{text:?} is not a size like \"256MiB\" or a percentage like \"5%\"")
        })?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" | "KB" => 10,
            "M" | "MiB" | "MB" => 20,
            "G" | "GiB" | "GB" => 30,
            "T" | "TiB" | "TB" => 40,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use K, M, G or T, powers of 1024, or %)"
                ));
            }
        };
        n.checked_mul(1u64 << shift)
            .ok_or_else(|| format!("{text:?} is too large"))
            .and_then(KeepFree::bounded)
    }

    /// A size, at most [`KeepFree::MAX`].
    fn bounded(n: u64) -> std::result::Result<KeepFree, String> {
        if n > KeepFree::MAX {
            return Err(format!(
                "{} is more than any filesystem this is for (at most {})",
                human_bytes(n),
                human_bytes(KeepFree::MAX)
            ));
        }
        Ok(KeepFree::Bytes(n))
    }

    /// The largest size taken: 1 PiB.
    pub const MAX: u64 = 1 << 50;
}

/// A size for people: `812 KiB`, `12.3 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{} KiB", n >> 10),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        1_073_741_824..1_099_511_627_776 => format!("{:.1} GiB", n as f64 / 1_073_741_824.0),
        _ => format!("{:.1} TiB", n as f64 / 1_099_511_627_776.0),
    }
}

impl std::fmt::Display for KeepFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepFree::Bytes(n) => write!(f, "{}", human_bytes(*n)),
            KeepFree::Percent {
                percent,
                cap: Some(c),
            } => write!(
                f,
                "{percent}% of the filesystem, at most {}",
                human_bytes(*c)
            ),
            KeepFree::Percent { percent, cap: None } => write!(f, "{percent}% of the filesystem"),
        }
    }
}

impl<'de> Deserialize<'de> for KeepFree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = KeepFree;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size like \"256MiB\", a percentage like \"5%\", or bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<KeepFree, E> {
                KeepFree::bounded(n).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<KeepFree, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("{n} is negative")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> std::result::Result<KeepFree, E> {
                KeepFree::parse(t).map_err(E::custom)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// How file shares are kept (`share_seal`): as written (`none`), or each
/// share's secret bytes sealed to the host's TPM 2.0 (`tpm2`), so that a
/// copy of the disk holds nothing that rebuilds a key off the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareSeal {
    None,
    Tpm2,
}

impl ShareSeal {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareSeal::None => "none",
            ShareSeal::Tpm2 => "tpm2",
        }
    }
}

/// What to do when key pages cannot be locked in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlockMode {
    /// Log a warning and go on (the key may be swapped out).
    Warn,
    /// Refuse to start.
    Require,
}

/// One `[[policy]]` table: which peers it matches and what they may do.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub users: Vec<String>,
    /// Matched against the peer's primary gid (SO_PEERCRED carries no
    /// supplementary groups).
    #[serde(default)]
    pub gids: Vec<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Allowed ops; default: ping, sign, verify, jwks, status.
    pub ops: Option<Vec<String>>,
    /// Allowed values of `aud`; default: any.
    pub audiences: Option<Vec<String>>,
    /// Claims the daemon sets for this client, replacing what it sends.
    #[serde(default)]
    pub forced_claims: toml::Table,
    /// Set `sub` to the peer's user name.
    #[serde(default)]
    pub sub_from_peer: bool,
    /// Claim names the client may send; default: any (but reserved ones).
    pub claims: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    pub max_ttl: Option<Duration>,
    /// May use the admin ops (rotate, reshare, revoke, audit_prune), in
    /// addition to `ops`.
    #[serde(default)]
    pub admin: bool,
    /// Tokens per second each peer uid of this policy may get (a token
    /// bucket); default: no limit.
    pub sign_rate: Option<f64>,
    /// How many tokens a peer may get at once before `sign_rate` applies;
    /// default: one second's worth (at least 1).
    pub sign_burst: Option<u32>,
}

/// Where a cluster keeps its key rows, database shares and revocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// A libpq connection string or URL, without a password.
    pub conninfo: String,
    /// The password, on the first line of this file (mode 0600); else
    /// `PGPASSFILE` (or `~/.pgpass`) is read, as libpq does.
    pub password_file: Option<PathBuf>,
    /// The CA certificates (PEM) a server's certificate must chain to; the
    /// system's roots when unset.
    pub ca_file: Option<PathBuf>,
}
