//! `postgres` is the key store of a cluster: every node's key rows,
//! database shares (x = 2) and revocations in PostgreSQL, each node
//! changing only its own (row-level security keyed on its login role; see
//! `migrations/postgres/`). A host's file shares (x = 1) never go there.
//!
//! The lifecycle code is synchronous (it runs on blocking threads, as with
//! SQLite), so this store drives `tokio-postgres` on a small runtime of its
//! own and blocks on it. Calls reconnect when the connection was lost; a
//! server that cannot be reached is [`Error::PostgresUnreachable`]. A
//! second connection listens for the `NOTIFY`s of other nodes' changes
//! (see [`Postgres::listen`]).
//!
//! Another node's rows are never trusted as a whole: `membership` reads
//! the owner's list of members and bounds, and judges each key row of
//! another node on its own.
//!
//! The parts: `connect` (reaching the server: settings, TLS, passwords),
//! `bridge` (the runtime, and blocking calls on a connection that
//! reconnects), `errors` (a driver error as ours: unreachable or refused,
//! without the server's DETAIL), `node` (opening as a node, registering
//! it), `schema` (migrations, and the role row-level security binds),
//! `keystore` (the [`KeyStore`] of one node, and moving a host's keys in),
//! `revocations` (every node's revocations, read in order, and the marks
//! that tell a database that went back), `listen` (the other nodes'
//! `NOTIFY`s).
//!
//! [`Error::PostgresUnreachable`]: crate::error::Error::PostgresUnreachable
//! [`KeyStore`]: crate::store::KeyStore

mod bridge;
mod connect;
mod errors;
mod keystore;
mod listen;
mod node;
mod revocations;
mod schema;

use std::sync::Mutex;

use tokio_postgres::Client;

pub use bridge::PG_BLOCKING;
pub(in crate::store) use errors::error_text;
pub(in crate::store) use keystore::{KEY_COLUMNS, raw_key};
pub use listen::{Changed, Listener};
pub use revocations::{Marks, RevocationRow};

use connect::Connector;

pub struct Postgres {
    /// `Option` so that drop can shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    connector: Connector,
    client: Mutex<Option<Client>>,
    /// A second connection, for reading every revocation (long, with many):
    /// the statements of the first never wait for it.
    bulk: Mutex<Option<Client>>,
    node: String,
    deployment: String,
}
