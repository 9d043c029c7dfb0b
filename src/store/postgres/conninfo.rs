//! `conninfo`: the PostgreSQL connection string (libpq's keywords or a
//! URL), parsed for the driver and checked: no password in it, and TLS
//! for any host that is not this one. The config calls [`check_conninfo`]
//! when it loads, so a bad `postgres` setting is refused before anything
//! opens.

/// Why the connection string `conninfo` may not be used, if it may not:
/// it does not parse, holds a password, or turns TLS off for a host that
/// is not this one. The message is the `postgres` setting's.
pub fn check_conninfo(conninfo: &str) -> std::result::Result<(), String> {
    let parsed = parse_conninfo(conninfo)?;
    if parsed.get_password().is_some() {
        return Err(
            "holds a password; put it in postgres_password_file (mode 0600) or PGPASSFILE \
             instead"
                .into(),
        );
    }
    if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Disable
        && parsed.get_hosts().iter().any(|h| !is_local_host(h))
    {
        return Err(
            "sslmode=disable for a host that is not this one: the database shares would \
             cross the network in clear; use TLS (the default)"
                .into(),
        );
    }
    Ok(())
}

/// Parse a libpq connection string or URL. `sslmode=verify-full` and
/// `verify-ca` (which the driver does not name) are read as TLS with the
/// certificate checked against the CA and the host name: splitsign always
/// checks both, so `verify-ca` is as strict as `verify-full`.
pub(super) fn parse_conninfo(
    conninfo: &str,
) -> std::result::Result<tokio_postgres::Config, String> {
    let mut text = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while let Some(at) = rest.find("sslmode") {
        let (before, after) = rest.split_at(at + "sslmode".len());
        text.push_str(before);
        let trimmed = after.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let end = value
            .find(|c: char| c.is_whitespace() || c == '&')
            .unwrap_or(value.len());
        let mode = &value[..end];
        let mode = match mode {
            "verify-full" | "verify-ca" => "require",
            m => m,
        };
        text.push('=');
        text.push_str(mode);
        rest = &value[end..];
    }
    text.push_str(rest);
    text.parse()
        .map_err(|e| format!("not a connection string or URL: {e}"))
}

/// Whether `host` is this machine: a Unix socket directory, or loopback.
pub(super) fn is_local_host(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(name) => {
            matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        }
    }
}
