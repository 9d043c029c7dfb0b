//! `conninfo`: libpq connection strings and URLs, parsed as the driver
//! reads them (config refuses a bad one when it loads; the PostgreSQL
//! store connects with it).

/// Parse a libpq connection string or URL. `sslmode=verify-full` and
/// `verify-ca` (which the driver does not name) are read as TLS with the
/// certificate checked against the CA and the host name: splitsign always
/// checks both, so `verify-ca` is as strict as `verify-full`.
pub fn parse_conninfo(conninfo: &str) -> std::result::Result<tokio_postgres::Config, String> {
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
pub fn is_local_host(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(name) => {
            matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        }
    }
}
