//! `node`: this host as a node of the cluster: opening the store as a
//! node (schema, role and membership checked), registering it with its
//! deployment id, and naming it in messages.

use crate::config::PostgresSettings;
use crate::error::{Error, Result};
use crate::keys::share_format;

use super::Postgres;

impl Postgres {
    /// Connect as `node` and bring the schema up to date (if this role
    /// may). The node need not be registered yet ([`Postgres::register`]).
    /// A server that cannot be reached is `PostgresUnreachable`.
    pub fn open(settings: &PostgresSettings, node: &str) -> Result<Postgres> {
        let opened = (|| {
            let mut pg = Postgres::connect(settings, node)?;
            pg.ensure_schema()?;
            pg.check_role()?;
            pg.check_member()?;
            pg.deployment = pg.read_deployment()?.unwrap_or_default();
            Ok(pg)
        })();
        opened.map_err(|e| match e {
            Error::Postgres { reason, .. } if e.is_refusal() => Error::NodeRefused {
                node: node.to_owned(),
                reason: format!(
                    "{reason}. The owner may have removed this node (`splitsign node list`), or \
                     not added it (`splitsign node add {node}`)"
                ),
            },
            e => e,
        })
    }

    /// Whether this node has a row (and so a deployment id).
    pub fn registered(&self) -> bool {
        !self.deployment.is_empty()
    }

    /// Register this node with `deployment` (a new id when `None`). A node
    /// registered meanwhile (another process) keeps its id.
    pub fn register(&mut self, deployment: Option<&str>) -> Result<()> {
        let id = match deployment {
            Some(d) => d.to_owned(),
            None => share_format::new_deployment()?,
        };
        let node = self.node.clone();
        self.with("registering the node", async |c| {
            c.execute(
                "INSERT INTO splitsign_nodes (node, deployment, created_at)
                 VALUES ($1, $2, extract(epoch FROM now())::bigint)
                 ON CONFLICT (node) DO NOTHING",
                &[&node, &id],
            )
            .await
        })?;
        self.deployment = self.read_deployment()?.unwrap_or_default();
        if !self.registered() {
            return Err(Error::KeyStore(format!(
                "PostgreSQL ({}): node {} could not be registered",
                self.connector.describe, self.node
            )));
        }
        Ok(())
    }

    /// This node's deployment id, if it is registered.
    fn read_deployment(&self) -> Result<Option<String>> {
        let node = self.node.clone();
        let found = self.with("reading the node", async |c| {
            let row = c
                .query_opt(
                    "SELECT deployment FROM splitsign_nodes WHERE node = $1",
                    &[&node],
                )
                .await?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        })?;
        match found {
            Some(d) if share_format::is_valid_deployment(&d) => Ok(Some(d)),
            Some(_) => Err(Error::KeyStore(format!(
                "PostgreSQL ({}): node {} has a malformed deployment id",
                self.connector.describe, self.node
            ))),
            None => Ok(None),
        }
    }

    /// "PostgreSQL node web-1 (host=db.internal dbname=splitsign tls)".
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL node {} ({})",
            self.node, self.connector.describe
        )
    }

    /// "host=db.internal dbname=splitsign tls".
    pub fn describe_server(&self) -> &str {
        &self.connector.describe
    }

    pub fn node(&self) -> &str {
        &self.node
    }
}
