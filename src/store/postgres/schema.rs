//! `schema`: the tables, applied in order by the migrations under
//! `migrations/postgres/` (by the owner, or a node allowed to), and the
//! role a node logs in as, which row-level security binds to the node of
//! its name.

use crate::error::{Error, Result};

use super::Postgres;

/// The schema, in order; `splitsign_schema` records how far it is applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../migrations/postgres/0002_trust.sql"),
    include_str!("../../../migrations/postgres/0003_es256.sql"),
];

/// The advisory lock that serializes schema changes between nodes.
const SCHEMA_LOCK: i64 = 0x7370_6c69_7473_6731; // "splitsg1"

impl Postgres {
    /// Refuse a node name that row-level security would not let this role
    /// write: a role bound by it changes only the rows of the node of its
    /// own name.
    pub(super) fn check_role(&self) -> Result<()> {
        let (role, exempt) = self.with("reading the role", async |c| {
            let r = c
                .query_one(
                    "SELECT current_user::text,
                            coalesce((SELECT rolsuper OR rolbypassrls FROM pg_roles
                                      WHERE rolname = current_user), false)
                            OR pg_has_role(current_user, c.relowner, 'USAGE')
                     FROM pg_class c WHERE c.oid = 'splitsign_keys'::regclass",
                    &[],
                )
                .await?;
            Ok((r.get::<_, String>(0), r.get::<_, bool>(1)))
        })?;
        if exempt {
            tracing::warn!(
                %role,
                node = %self.node,
                "this role owns the splitsign tables (or bypasses row-level security): it could \
                 change every node's keys; give each node a role of its own (docs/CLUSTER.md)"
            );
            return Ok(());
        }
        if role != self.node {
            return Err(Error::Setting {
                key: "node",
                message: format!(
                    "node {:?} logs in to PostgreSQL as role {role:?}, and row-level security \
                     lets a role change only the rows of the node of the same name: set \
                     `node = \"{role}\"`, or log in as role {:?}",
                    self.node, self.node
                ),
            });
        }
        Ok(())
    }

    /// The schema version applied, 0 if none.
    pub fn schema_version(&self) -> Result<usize> {
        self.with("reading the schema version", async |c| {
            let row = c
                .query_one("SELECT to_regclass('splitsign_schema') IS NOT NULL", &[])
                .await?;
            if !row.get::<_, bool>(0) {
                return Ok(0);
            }
            let row = c
                .query_one("SELECT version FROM splitsign_schema", &[])
                .await?;
            Ok(row.get::<_, i32>(0) as usize)
        })
    }

    /// Apply the migrations this schema lacks, in one transaction (nodes
    /// or owners starting together apply them once): under the version
    /// row's lock, which only the owner may take, or, before the schema
    /// exists, an advisory lock. Returns the version now applied.
    pub fn migrate(&self) -> Result<usize> {
        self.with("applying the schema", async |c| {
            let tx = c.transaction().await?;
            let exists: bool = tx
                .query_one("SELECT to_regclass('splitsign_schema') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                    .await?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS splitsign_schema (version INTEGER NOT NULL)",
                )
                .await?;
            }
            let version: i32 = match tx
                .query_opt("SELECT version FROM splitsign_schema FOR UPDATE", &[])
                .await?
            {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO splitsign_schema (version) VALUES (0)", &[])
                        .await?;
                    0
                }
            };
            if version as usize >= MIGRATIONS.len() {
                tx.commit().await?;
                return Ok(version as usize);
            }
            // A schema change waits for the tables' locks a while longer.
            tx.batch_execute("SET LOCAL lock_timeout = '30s'").await?;
            for sql in &MIGRATIONS[version as usize..] {
                tx.batch_execute(sql).await?;
            }
            tx.execute(
                "UPDATE splitsign_schema SET version = $1",
                &[&(MIGRATIONS.len() as i32)],
            )
            .await?;
            tx.commit().await?;
            Ok(MIGRATIONS.len())
        })
    }

    pub(super) fn ensure_schema(&self) -> Result<()> {
        let version = self.schema_version()?;
        if version == MIGRATIONS.len() {
            return Ok(());
        }
        if version > MIGRATIONS.len() {
            return Err(Error::KeyStore(format!(
                "PostgreSQL ({}) has schema version {version}; this splitsign knows {}",
                self.connector.describe,
                MIGRATIONS.len()
            )));
        }
        self.migrate().map(|_| ()).map_err(|e| match e {
            Error::Postgres { .. } => Error::KeyStore(format!(
                "PostgreSQL ({}) has schema version {version}, this splitsign needs {}, and \
                 node {} may not apply it ({}). Apply it as the tables' owner: \
                 `splitsign --config OWNER.toml pg-schema`",
                self.connector.describe,
                MIGRATIONS.len(),
                self.node,
                crate::error::chain(&e)
            )),
            e => e,
        })
    }

    /// The role this node logs in as (row-level security keys on it).
    pub fn role(&self) -> Result<String> {
        self.with("reading the role", async |c| {
            Ok(c.query_one("SELECT current_user::text", &[]).await?.get(0))
        })
    }
}
