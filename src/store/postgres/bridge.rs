//! `bridge`: the lifecycle code is synchronous, so the store runs
//! `tokio-postgres` on a small runtime of its own and blocks on it. A
//! statement runs on a connection that is made again when it was lost; a
//! second connection takes the long reads (every revocation).

use std::sync::Mutex;

use tokio_postgres::Client;

use crate::config::PostgresSettings;
use crate::error::{Error, Result};

use super::Postgres;
use super::connect::Connector;

/// The PostgreSQL client's runtime (a cluster node): one worker, and at
/// most this many threads for blocking work (name lookups). The daemon
/// counts them in its thread budget (`daemon::limits::MAX_THREADS`).
pub const PG_BLOCKING: usize = 2;

impl Postgres {
    /// Connect only (for `pg-schema`, which applies the schema itself).
    pub fn connect(settings: &PostgresSettings, node: &str) -> Result<Postgres> {
        let connector = Connector::new(settings)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(PG_BLOCKING)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(Error::io("starting the PostgreSQL runtime", "tokio"))?;
        Ok(Postgres {
            rt: Some(rt),
            connector,
            client: Mutex::new(None),
            bulk: Mutex::new(None),
            node: node.to_owned(),
            deployment: String::new(),
        })
    }

    pub(super) fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    /// Run `f` on the connection (reconnecting first if it was lost).
    pub(in crate::store) fn with<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(&mut Client) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.with_on(&self.client, what, f)
    }

    /// [`Postgres::with`], on the connection in `slot`.
    pub(super) fn with_on<T>(
        &self,
        slot: &Mutex<Option<Client>>,
        what: &'static str,
        f: impl AsyncFnOnce(&mut Client) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = self
                .rt()
                .block_on(self.connector.connect(None))
                .map_err(|e| self.error("connecting", e))?
                .0;
            *guard = Some(client);
        }
        let client = guard.as_mut().expect("connected above");
        let result = self.rt().block_on(f(client));
        if client.is_closed() {
            *guard = None;
        }
        result.map_err(|e| self.error(what, e))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The store may be dropped on an async thread, where blocking on
        // the runtime's shutdown is not allowed.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
