//! `errors`: a driver error as this store's: the server could not be
//! reached ([`Error::PostgresUnreachable`], worth trying again) or it
//! refused ([`Error::Postgres`]), and the message without the server's
//! DETAIL.

use crate::error::Error;

use super::Postgres;

/// An error, for a message: the server's own words without their DETAIL
/// (which may quote a row, a share's bytes included), or the chain of
/// causes of a client-side error.
pub(in crate::store) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => crate::error::chain(e),
    }
}

/// Whether an error means the server could not be reached (and trying
/// again later may work), rather than that it refused something or that
/// the settings are wrong (a password, a certificate).
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        // 57P01-57P03: shutting down, starting up; 08: connection errors.
        let code = db.code().code();
        return code.starts_with("57P") || code.starts_with("08");
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return !matches!(io.kind(), InvalidData | InvalidInput | PermissionDenied);
        }
        source = s.source();
    }
    false
}

impl Postgres {
    pub(super) fn error(&self, what: &'static str, e: tokio_postgres::Error) -> Error {
        if unreachable(&e) {
            Error::PostgresUnreachable {
                node: self.node.clone(),
                reason: format!("{what}: {}", error_text(&e)),
            }
        } else {
            Error::Postgres {
                node: self.node.clone(),
                what,
                reason: error_text(&e),
                code: e.code().map(|c| c.code().to_owned()),
            }
        }
    }
}
