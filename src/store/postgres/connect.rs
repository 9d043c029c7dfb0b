//! `connect`: how to reach the server, from the settings: the connection
//! string (parsed by `config`, which checks it when it loads) with this
//! store's timeouts and keepalives, the password (`postgres_password_file`,
//! or libpq's `PGPASSFILE`), and TLS (the server's certificate checked
//! against `postgres_ca_file` or the system's roots).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::{PostgresSettings, is_local_host, parse_conninfo};
use crate::error::{Error, Result};

use super::listen::{Listener, drive};

/// How long a statement may wait for a lock, and run, before it fails
/// (and is retried) rather than hang: no session of another node can hold
/// this node's work up for longer.
const LOCK_TIMEOUT_MS: u32 = 5_000;
const STATEMENT_TIMEOUT_MS: u32 = 60_000;

/// How to reach the server: parsed settings, password, TLS.
#[derive(Clone)]
pub(super) struct Connector {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Host and database, for messages (never the password).
    pub(super) describe: String,
}

impl Connector {
    pub(super) fn new(settings: &PostgresSettings) -> Result<Connector> {
        let bad = |message: String| Error::Setting {
            key: "postgres",
            message,
        };
        let mut config = parse_conninfo(&settings.conninfo).map_err(bad)?;
        if config.get_application_name().is_none() {
            config.application_name("splitsign");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A half-open connection stays silent: keepalives notice.
        config.keepalives(true);
        // No lock another session holds, and no statement, may stall this
        // node for long: it fails, and is retried.
        let options = format!(
            "{} -c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
            config.get_options().unwrap_or("")
        );
        config.options(options.trim_start());
        config.keepalives_idle(Duration::from_secs(30));
        if let Some(pw) = password(settings, &config)? {
            config.password(pw);
        }
        let local = config.get_hosts().iter().all(is_local_host);
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            // Over a Unix socket or to this host, TLS only when asked for.
            tokio_postgres::config::SslMode::Prefer if local && settings.ca_file.is_none() => None,
            _ => Some(tls_connector(settings.ca_file.as_deref())?),
        };
        if tls.is_some() {
            // "prefer" would fall back to clear text: TLS is required.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(n) => n.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let describe = format!(
            "host={} dbname={}{}",
            hosts.join(","),
            config.get_dbname().unwrap_or("-"),
            if tls.is_some() { " tls" } else { "" }
        );
        Ok(Connector {
            config,
            tls,
            describe,
        })
    }

    /// A connection; its driver runs on the current runtime and reports
    /// notifications to `notes`.
    pub(super) async fn connect(
        &self,
        notes: Option<Arc<Listener>>,
    ) -> std::result::Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await?;
                Ok((client, tokio::spawn(drive(conn, notes))))
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(drive(conn, notes))))
            }
        }
    }
}

/// The TLS connector: the server's certificate must chain to `ca_file`'s
/// certificates, or to the system's roots, and name the host.
fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |key: &'static str, message: String| Error::Setting { key, message };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad("postgres_ca_file", format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| bad("postgres_ca_file", format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("postgres_ca_file", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(bad(
            "postgres_ca_file",
            "no CA certificate to check the server with: set postgres_ca_file".into(),
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("postgres", format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The password: `postgres_password_file`, else the `PGPASSFILE` (or
/// `~/.pgpass`) line that matches, as libpq reads it. Never argv, never
/// the config file.
fn password(
    settings: &PostgresSettings,
    config: &tokio_postgres::Config,
) -> Result<Option<Vec<u8>>> {
    if let Some(path) = &settings.password_file {
        let text = read_secret_file(path, "postgres_password_file")?;
        let pw = text.lines().next().unwrap_or("").to_owned();
        if pw.is_empty() {
            return Err(Error::Setting {
                key: "postgres_password_file",
                message: format!("{} is empty", path.display()),
            });
        }
        return Ok(Some(pw.into_bytes()));
    }
    let pgpass = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
    let Some(path) = pgpass.filter(|p| p.exists()) else {
        return Ok(None);
    };
    let text = read_secret_file(&path, "PGPASSFILE")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or("").to_owned();
    let db = config.get_dbname().unwrap_or(&user).to_owned();
    Ok(pgpass_lookup(&text, [&host, &port, &db, &user]).map(String::into_bytes))
}

/// The password of the first `host:port:database:user:password` line whose
/// fields match (`*` matches anything; `\\:` and `\\\\` are escapes).
fn pgpass_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(want)
                .all(|(f, w)| f == "*" || f == w)
        {
            return fields.pop();
        }
    }
    None
}

/// A file holding a secret: a regular file that others cannot read.
fn read_secret_file(path: &Path, key: &'static str) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let bad = |message: String| Error::Setting { key, message };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.mode() & 0o007 != 0 {
        return Err(bad(format!(
            "{} must be a regular file that other users cannot read (mode 0600 or 0640)",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        let text = "# comment\ndb.internal:5432:splitsign:node_a:s3cr\\:et\n*:*:*:node_b:pw-b\n";
        assert_eq!(
            pgpass_lookup(text, ["db.internal", "5432", "splitsign", "node_a"]).as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            pgpass_lookup(text, ["x", "1", "y", "node_b"]).as_deref(),
            Some("pw-b")
        );
        assert_eq!(pgpass_lookup(text, ["x", "1", "y", "node_c"]), None);
    }
}
