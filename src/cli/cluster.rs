//! `cluster`: the commands of a PostgreSQL deployment. `pg-schema` applies
//! the schema (as the tables' owner) and grants node roles their rights;
//! `migrate-store --to-postgres` moves this host's keys from its SQLite
//! database into PostgreSQL.

use super::output::{Failure, usage};
use super::{Ctx, MigrateStoreArgs, PgSchemaArgs};
use crate::config::PostgresSettings;
use crate::lifecycle;
use crate::store::{LocalStores, Postgres};

fn settings(cx: &Ctx) -> Result<&PostgresSettings, Failure> {
    cx.cfg.postgres.as_ref().ok_or_else(|| {
        usage(
            "`postgres` is not set in the config: set it to the cluster's connection string \
             (docs/CLUSTER.md)"
                .into(),
        )
    })
}

/// `pg-schema [--grant ROLE]...`: bring the schema up to date, then let
/// each ROLE (a node's login role, named like the node) use the tables;
/// row-level security limits it to its own node's rows.
pub fn pg_schema(cx: &Ctx, a: PgSchemaArgs) -> Result<(), Failure> {
    let pg = Postgres::connect(settings(cx)?, &cx.cfg.node)?;
    let before = pg.schema_version()?;
    let now = pg.migrate()?;
    if before == now {
        println!(
            "schema version {now}: up to date ({})",
            pg.describe_server()
        );
    } else {
        println!(
            "applied schema version {now} (was {before}) in {}",
            pg.describe_server()
        );
    }
    for role in &a.grant {
        pg.grant(role)?;
        println!(
            "granted role {role} the splitsign tables (row-level security: it changes only node \
             {role}'s rows)"
        );
    }
    Ok(())
}

/// `migrate-store --to-postgres`: see [`lifecycle::move_to_postgres`].
pub fn migrate_store(cx: &Ctx, a: MigrateStoreArgs) -> Result<(), Failure> {
    if !a.to_postgres {
        return Err(usage("say where to: --to-postgres".into()));
    }
    let settings = settings(cx)?;
    if !cx.daemon().is_err_and(|e| e.no_daemon()) {
        return Err(usage(
            "a daemon is running on these stores: stop it first (the move is offline)".into(),
        ));
    }
    crate::keys::locked::harden_process()?;
    // Held (with the stores' lock) until the move is done.
    let mut stores = LocalStores::open(&cx.cfg, false)?;
    if let Some((node, store)) = stores.local.moved_to_postgres()? {
        println!("already moved: the keys of this host are in {store} as node {node}");
        return Ok(());
    }
    let pg = Postgres::open(settings, &cx.cfg.node)?;
    let now = lifecycle::wall_now();
    let m = lifecycle::move_to_postgres(&mut stores.local, &stores.shares, pg, now)?;
    println!(
        "moved {} key(s), {} database share(s) and {} revocation(s) to PostgreSQL as node {} \
         (deployment {}); the kids are unchanged, so issued tokens keep verifying",
        m.keys, m.shares, m.revocations, m.node, m.deployment
    );
    println!(
        "{} now keeps only the audit log; start the daemon with this config",
        cx.cfg.db.display()
    );
    Ok(())
}
