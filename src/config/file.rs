//! `file`: the settings file as an operator writes it (every field
//! optional, unknown keys refused), read with a size bound.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{AlgLabel, AuditSync, KeepFree, MlockMode, PolicyFile, ShareSeal};
use crate::error::{Error, Result};

/// A config file larger than this is refused before it is parsed.
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// The settings file, as written by an operator. Every field is optional;
/// unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) issuer: Option<String>,
    pub(super) alg: Option<AlgLabel>,
    pub(super) shares_dir: Option<PathBuf>,
    pub(super) db: Option<PathBuf>,
    pub(super) socket: Option<PathBuf>,
    pub(super) socket_mode: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) max_ttl: Option<Duration>,
    pub(super) max_token_bytes: Option<usize>,
    pub(super) max_frame_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_peer: Option<usize>,
    pub(super) admin_connections: Option<usize>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) write_timeout: Option<Duration>,
    pub(super) mlock: Option<MlockMode>,
    pub(super) share_seal: Option<ShareSeal>,
    pub(super) tpm_tcti: Option<String>,
    pub(super) audit: Option<bool>,
    pub(super) audit_sync: Option<AuditSync>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) audit_retention: Option<Duration>,
    pub(super) audit_keep_free: Option<KeepFree>,
    pub(super) admin_uids: Option<Vec<u32>>,
    #[serde(default)]
    pub(super) policy: Vec<PolicyFile>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) rotation_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) leeway: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) prepublish: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub(super) jwks_max_age: Option<Duration>,
    pub(super) jwks_file: Option<PathBuf>,
    pub(super) metrics_file: Option<PathBuf>,
    pub(super) postgres: Option<String>,
    pub(super) postgres_password_file: Option<PathBuf>,
    pub(super) postgres_ca_file: Option<PathBuf>,
    pub(super) node: Option<String>,
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| Error::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::Config {
            path: path.to_owned(),
            message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    toml::from_str(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Parse an octal file mode such as `"0660"`. Bits for "other" users are
/// refused: they would let every local account ask for tokens.
pub(super) fn parse_mode(s: &str) -> Result<u32> {
    let bad = |message: String| Error::Setting {
        key: "socket_mode",
        message,
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| bad(format!("{s:?} is not an octal mode such as \"0660\"")))?;
    if mode > 0o777 {
        return Err(bad(format!("{s:?} is larger than 0777")));
    }
    if mode & 0o007 != 0 {
        return Err(bad(format!(
            "{s:?} grants access to other users; use a group (0660)"
        )));
    }
    if mode & 0o600 != 0o600 {
        return Err(bad(format!(
            "{s:?} must let the owner read and write (0600)"
        )));
    }
    Ok(mode)
}
