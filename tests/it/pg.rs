//! The testkit's private PostgreSQL server (`splitsign_testkit::pg`),
//! started with this build's binary for the owner's commands.

pub use splitsign_testkit::pg::{OWNER, show, write_node_config};

/// A private PostgreSQL server for one test, stopped when dropped.
pub struct PgServer(splitsign_testkit::pg::PgServer);

impl PgServer {
    /// initdb, start, and create the `splitsign` database owned by
    /// [`OWNER`].
    pub fn start() -> PgServer {
        PgServer(splitsign_testkit::pg::PgServer::start(crate::util::BIN))
    }
}

impl std::ops::Deref for PgServer {
    type Target = splitsign_testkit::pg::PgServer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for PgServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
