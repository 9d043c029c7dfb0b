//! `check`: the shape checks a config passes when it loads, one section
//! at a time (the first problem is the error, naming the setting), and the
//! check of the directories the daemon writes its output files in.

use std::path::Path;
use std::time::Duration;

use super::{Config, PolicyFile, dir_of, is_local_host, parse_conninfo, valid_node};
use crate::error::{Error, Result};
use crate::protocol::{OpName, RESERVED_CLAIMS};

impl Config {
    /// Shape checks, one section at a time; the first problem is the
    /// error, naming the setting.
    pub(super) fn validate(&self) -> Result<()> {
        self.check_tokens()?;
        self.check_limits()?;
        self.check_schedule()?;
        for p in &self.clients.policies {
            self.check_policy(p)?;
        }
        self.check_paths()?;
        self.check_sealing()?;
        self.check_cluster()
    }

    /// The TCTI names a TPM: `device:PATH`, `swtpm:…`, `mssim:…`, `tabrmd:…`
    /// or a bare library name, printable, bounded.
    fn check_sealing(&self) -> Result<()> {
        if self.sealing.seal == super::ShareSeal::Tpm2 && !cfg!(feature = "tpm2") {
            return Err(Error::Setting {
                key: "share_seal",
                message: "\"tpm2\", but this splitsign was built without TPM support: build \
                          it with `cargo build --release --features tpm2` (needs Debian's \
                          libtss2-dev), or install the package, which has it"
                    .into(),
            });
        }
        let t = &self.sealing.tcti;
        let ok = !t.is_empty()
            && t.len() <= 512
            && t.chars().all(|c| c.is_ascii_graphic())
            && t.split(':').next().is_some_and(|kind| {
                !kind.is_empty()
                    && kind
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            });
        if !ok {
            return Err(Error::Setting {
                key: "tpm_tcti",
                message: format!(
                    "{t:?} is not a TCTI: like \"device:/dev/tpmrm0\" or \
                     \"swtpm:host=127.0.0.1,port=2321\" (printable, at most 512 bytes)"
                ),
            });
        }
        Ok(())
    }

    /// The node name, and the PostgreSQL connection: parseable, no
    /// password in it, and TLS for any host that is not this one.
    fn check_cluster(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        // Without a cluster the node name is not used.
        let Some(pg) = &self.cluster.postgres else {
            return Ok(());
        };
        if !valid_node(&self.cluster.node) {
            return bad(
                "node",
                format!(
                    "{:?} is not a node name: 1 to 63 letters, digits, '_', '.' or '-' (set \
                     `node` if the host name is not one)",
                    self.cluster.node
                ),
            );
        }
        let parsed = parse_conninfo(&pg.conninfo).map_err(|message| Error::Setting {
            key: "postgres",
            message,
        })?;
        if parsed.get_password().is_some() {
            return bad(
                "postgres",
                "holds a password; put it in postgres_password_file (mode 0600) or PGPASSFILE \
                 instead"
                    .into(),
            );
        }
        if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Disable
            && parsed.get_hosts().iter().any(|h| !is_local_host(h))
        {
            return bad(
                "postgres",
                "sslmode=disable for a host that is not this one: the database shares would \
                 cross the network in clear; use TLS (the default)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The issuer and token lifetimes.
    fn check_tokens(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if self.tokens.issuer.is_empty() || self.tokens.issuer.len() > 256 {
            return bad("issuer", "must be 1 to 256 bytes long".into());
        }
        if self.tokens.issuer.chars().any(char::is_control) {
            return bad("issuer", "must not contain control characters".into());
        }
        if self.tokens.max_ttl < Duration::from_secs(1)
            || self.tokens.max_ttl > Duration::from_secs(366 * 86400)
        {
            return bad("max_ttl", "must be between 1s and 366d".into());
        }
        if self.tokens.default_ttl < Duration::from_secs(1)
            || self.tokens.default_ttl > self.tokens.max_ttl
        {
            return bad(
                "default_ttl",
                format!(
                    "must be between 1s and max_ttl ({})",
                    humantime::format_duration(self.tokens.max_ttl)
                ),
            );
        }
        Ok(())
    }

    /// Frames, tokens, connections, timeouts and the audit log's retention.
    fn check_limits(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if !(1024..=16 * 1024 * 1024).contains(&self.limits.max_frame_bytes) {
            return bad(
                "max_frame_bytes",
                "must be between 1024 and 16777216".into(),
            );
        }
        if self.tokens.max_token_bytes < 256
            || self.tokens.max_token_bytes + 256 > self.limits.max_frame_bytes
        {
            return bad(
                "max_token_bytes",
                "must be at least 256 and leave 256 bytes of a response frame (max_frame_bytes)"
                    .into(),
            );
        }
        if !(2..=1_000_000).contains(&self.limits.max_connections) {
            return bad("max_connections", "must be between 2 and 1000000".into());
        }
        if !(1..=self.limits.max_connections).contains(&self.limits.max_connections_per_peer) {
            return bad(
                "max_connections_per_peer",
                "must be between 1 and max_connections".into(),
            );
        }
        if self.limits.admin_connections >= self.limits.max_connections {
            return bad(
                "admin_connections",
                "must be less than max_connections (the rest is for other peers)".into(),
            );
        }
        if self.audit.retention < Duration::from_secs(3600)
            || self.audit.retention > Duration::from_secs(100 * 366 * 86400)
        {
            return bad("audit_retention", "must be between 1h and 100 years".into());
        }
        for (key, d) in [
            ("idle_timeout", self.limits.idle_timeout),
            ("read_timeout", self.limits.read_timeout),
            ("write_timeout", self.limits.write_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(86400) {
                return bad(key, "must be between 100ms and 1d".into());
            }
        }
        Ok(())
    }

    /// Rotation, leeway, pre-publication and the JWKS cache.
    fn check_schedule(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if self.schedule.rotation_interval < Duration::from_secs(1)
            || self.schedule.rotation_interval > Duration::from_secs(3650 * 86400)
        {
            return bad("rotation_interval", "must be between 1s and 3650d".into());
        }
        if self.tokens.leeway > Duration::from_secs(600) {
            return bad("leeway", "must be at most 10m".into());
        }
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if self.schedule.prepublish >= self.schedule.rotation_interval {
            return bad(
                "prepublish",
                format!(
                    "must be shorter than rotation_interval ({})",
                    fmt(self.schedule.rotation_interval)
                ),
            );
        }
        if self.schedule.prepublish < self.schedule.jwks_max_age {
            return bad(
                "prepublish",
                format!(
                    "must be at least jwks_max_age ({}): verifiers that cache the JWKS must \
                     learn a key before it signs",
                    fmt(self.schedule.jwks_max_age)
                ),
            );
        }
        Ok(())
    }

    /// One `[[policy]]`: whom it matches, its ops, claims, rate and TTL.
    fn check_policy(&self, p: &PolicyFile) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if p.name.is_empty() {
            return bad("policy.name", "every [[policy]] needs a name".into());
        }
        if p.uids.is_empty() && p.users.is_empty() && p.gids.is_empty() && p.groups.is_empty() {
            return bad(
                "policy",
                format!(
                    "policy {:?} matches nobody: give uids, users, gids or groups",
                    p.name
                ),
            );
        }
        for op in p.ops.iter().flatten() {
            let Some(name) = OpName::parse(op) else {
                return bad(
                    "policy.ops",
                    format!("policy {:?}: unknown op {op:?}", p.name),
                );
            };
            if name.is_admin() && !p.admin {
                return bad(
                    "policy.ops",
                    format!(
                        "policy {:?}: {op:?} is an admin op; it needs admin = true (which \
                         grants every admin op)",
                        p.name
                    ),
                );
            }
        }
        for name in p.forced_claims.keys().chain(p.claims.iter().flatten()) {
            if RESERVED_CLAIMS.contains(&name.as_str()) {
                return bad(
                    "policy",
                    format!("policy {:?}: claim {name:?} is set by the daemon", p.name),
                );
            }
        }
        if p.sign_rate
            .is_some_and(|r| !r.is_finite() || !(0.001..=1_000_000.0).contains(&r))
        {
            return bad(
                "policy.sign_rate",
                format!(
                    "policy {:?}: must be between 0.001 and 1000000 tokens per second",
                    p.name
                ),
            );
        }
        if p.sign_burst.is_some_and(|b| b == 0 || b > 1_000_000) {
            return bad(
                "policy.sign_burst",
                format!("policy {:?}: must be between 1 and 1000000", p.name),
            );
        }
        if p.sign_burst.is_some() && p.sign_rate.is_none() {
            return bad(
                "policy.sign_burst",
                format!("policy {:?}: sign_burst needs sign_rate", p.name),
            );
        }
        if p.max_ttl
            .is_some_and(|t| t < Duration::from_secs(1) || t > self.tokens.max_ttl)
        {
            return bad(
                "policy.max_ttl",
                format!("policy {:?}: must be between 1s and max_ttl", p.name),
            );
        }
        Ok(())
    }

    /// Store, socket and JWKS paths.
    fn check_paths(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        for (key, file) in [
            ("jwks_file", &self.outputs.jwks_file),
            ("metrics_file", &self.outputs.metrics_file),
        ] {
            if file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return bad(key, "must not be empty".into());
            }
        }
        for (key, p) in [
            ("shares_dir", &self.paths.shares_dir),
            ("db", &self.paths.db),
            ("socket", &self.paths.socket),
        ] {
            if p.as_os_str().is_empty() {
                return bad(key, "must not be empty".into());
            }
        }
        // sockaddr_un.sun_path holds 108 bytes including the NUL.
        if self.paths.socket.as_os_str().len() > 107 {
            return bad(
                "socket",
                "path is longer than 107 bytes (a Unix socket limit)".into(),
            );
        }
        if self.paths.shares_dir == self.paths.db.parent().unwrap_or(Path::new("")) {
            return bad(
                "shares_dir",
                "must differ from the database directory: the two shares must live in two stores"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// The files the daemon writes beside its stores (`jwks_file`,
    /// `metrics_file`) need a directory that exists and that it may
    /// write in: checked by `serve` before it opens the stores (so before
    /// a first key is made), and by a reload. Not part of the shape checks
    /// of [`Config::load`]: every command loads the config, and only the
    /// daemon writes these files.
    pub fn check_output_files(&self) -> Result<()> {
        for (key, file) in [
            ("jwks_file", &self.outputs.jwks_file),
            ("metrics_file", &self.outputs.metrics_file),
        ] {
            let Some(path) = file else { continue };
            let bad = |message: String| Err(Error::Setting { key, message });
            if path.file_name().is_none() {
                return bad(format!("{} names no file", path.display()));
            }
            let dir = dir_of(path);
            match std::fs::metadata(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return bad(format!(
                        "the directory of {}, {}, does not exist: create it, or set another path",
                        path.display(),
                        dir.display()
                    ));
                }
                Err(e) => {
                    return bad(format!(
                        "the directory of {}, {}: {e}",
                        path.display(),
                        dir.display()
                    ));
                }
                Ok(m) if !m.is_dir() => {
                    return bad(format!(
                        "the directory of {}, {}, is not a directory",
                        path.display(),
                        dir.display()
                    ));
                }
                Ok(_) => {}
            }
            if path.is_dir() {
                return bad(format!("{} is a directory", path.display()));
            }
            // The file is replaced by a rename from a temp file beside it.
            if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
                return bad(format!(
                    "the directory of {}, {}, is not writable by this process: {e}",
                    path.display(),
                    dir.display()
                ));
            }
        }
        Ok(())
    }
}
