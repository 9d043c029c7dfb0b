//! `daemon` is `splitsign serve`. This file only wires the parts together,
//! in order: hardening → config summary → stores → key manager (prove the
//! stores belong together, unseal, reconcile, schedule) → listener (from
//! systemd or bound here) → audit writer → shared state → READY → serve, with
//! the background tasks beside it → STOPPING → checkpoint → exit.
//!
//! The parts:
//! - `state`: what the listener, the connections and the background tasks
//!   share (key manager, policies and limits in force, audit writer,
//!   admission, metrics, the running config).
//! - `listener`: the socket, the accept loop, the admission of each peer.
//! - `admission`: per-uid caps, the admin reserve, eviction.
//! - `connection`: one peer's lines, turns, reply batches, backpressure.
//! - `handler`: answering a request with the state: sign, verify, status,
//!   the admin ops, reload.
//! - `access`: client policies. `limits`: threads, timeouts, caps.
//! - `key_manager`: key changes while running, the store checks,
//!   revoking.
//! - `revocations`: the revocations in force. `cluster`: what a node of a
//!   PostgreSQL deployment reads of the others.
//! - `audit_writer`: group commit, aggregation, retention.
//! - `metrics`: counters and their text. `public_file`: the JWKS and
//!   metrics files, written whole.
//! - `background`: the schedule timer, health and watchdog, the metrics
//!   file, signals, following the other nodes.
//! - `systemd`: socket activation, sd_notify. `memory`: allocator tuning.

pub mod access;
pub mod admission;
pub mod audit_writer;
mod background;
pub mod cluster;
pub mod connection;
pub mod handler;
pub mod key_manager;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod public_file;
pub mod revocations;
pub mod state;
pub mod systemd;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides, Source};
use crate::error::{Error, Result};
use crate::store::Stores;
use access::Access;
use audit_writer::Writer;
use key_manager::KeyManager;
use listener::BoundSocket;
use state::State;

pub fn serve(cfg: Config, overrides: Overrides) -> Result<()> {
    let started = Instant::now();
    crate::keys::locked::harden_process()?;
    memory::tune_allocator();
    log_config(&cfg);
    // Check the access policies (user and group names) and where the JWKS
    // and metrics files go before anything else: a refusal creates nothing.
    Access::new(&cfg)?;
    cfg.check_output_files()?;
    // Adopt systemd's socket before anything else can open a descriptor.
    let activated = systemd::take_listener()?;
    let manager = Arc::new(start_keys(&cfg)?);
    let (std_listener, bound) = listen(activated, &cfg)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let state = Arc::new(State::new(
        Arc::clone(&manager),
        state::Running::new(cfg.clone(), overrides),
        started,
        start_audit(&cfg, &manager, &metrics)?,
        metrics,
    )?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(limits::workers(cores))
        .max_blocking_threads(limits::MAX_BLOCKING)
        .enable_all()
        .build()
        .map_err(Error::io("starting the async runtime", "tokio"))?;
    runtime.block_on(run(std_listener, state, cfg, started))?;
    drop(bound);
    stop(&manager);
    Ok(())
}

fn log_config(cfg: &Config) {
    match &cfg.source {
        Source::File(p) => tracing::info!(config = %p.display(), "loaded config"),
        Source::Defaults => tracing::info!("no config file; using built-in defaults"),
    }
    tracing::info!(
        shares = %cfg.paths.shares_dir.display(),
        db = %cfg.paths.db.display(),
        socket = %cfg.paths.socket.display(),
        issuer = %cfg.tokens.issuer,
        "stores and socket"
    );
    if cfg.paths.legacy_layout {
        tracing::warn!(
            shares = %cfg.paths.shares_dir.display(),
            db = %cfg.paths.db.display(),
            "the stores are where splitsign 0.1 put them under systemd (the file shares in \
             …/db, the database in …/shares); keeping them there. Back up these paths, or move \
             them as docs/INSTALL.md says (Upgrading from 0.1)"
        );
    }
}

/// Open the stores and start the key manager. Store checks and unsealing
/// come before any change (see `KeyManager::start`), so a refusal here has
/// changed nothing; it says how to get back.
fn start_keys(cfg: &Config) -> Result<KeyManager> {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match open_and_start(cfg) {
            Err(Error::PostgresUnreachable { node, reason }) => {
                // Not ready: nothing was created (a key is never made that
                // cannot be stored). Say so, and keep systemd waiting.
                let status = format!(
                    "not ready: PostgreSQL is unreachable ({reason}); retrying in {}",
                    humantime::format_duration(backoff)
                );
                tracing::warn!(%node, %reason, retry_ms = backoff.as_millis() as u64, "PostgreSQL is unreachable at start; not ready, retrying");
                systemd::waiting(&status, backoff + std::time::Duration::from_secs(30));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
            }
            r => return r,
        }
    }
}

fn open_and_start(cfg: &Config) -> Result<KeyManager> {
    // A schema upgrade rewrites tables once (schema 6: the whole audit log,
    // about 2 s per million records): say so, and keep systemd waiting
    // while it runs, or `TimeoutStartSec=` would end the start, roll the
    // upgrade back, and the next start would begin it again.
    let _upgrading = crate::store::Database::pending_upgrade(&cfg.paths.db).map(|(from, to)| {
        tracing::info!(db = %cfg.paths.db.display(), from, to, "upgrading the database schema (a one-time rewrite; a long audit log takes a while)");
        systemd::KeepStarting::new(format!(
            "not ready: upgrading the database schema from version {from} to {to}"
        ))
    });
    let stores = Stores::open(cfg, true)?;
    let seals = stores.shares.seals();
    if seals {
        // New shares are sealed (rotations, reshares): a TPM that cannot be
        // reached is found now, not at the next rotation.
        let name = stores.shares.tpm().srk_name().map_err(|e| Error::Setting {
            key: "tpm_tcti",
            message: format!("share_seal = \"tpm2\", but {e}"),
        })?;
        tracing::info!(
            tcti = stores.shares.tpm().tcti(),
            storage_root_key = %crate::keys::share_format::describe_srk(&name),
            "new file shares are sealed to the TPM"
        );
    }
    let manager = KeyManager::start(stores, cfg.clone()).inspect_err(|e| {
        // Stores that do not belong together say what to do themselves.
        if e.exit_code() == crate::error::exit::KEY_STORE
            && !matches!(e, Error::StoresDisagree { .. })
        {
            tracing::error!(
                "the keys cannot be unsealed; nothing was changed. To get back: \
                 `splitsign recover --recovery-share FILE` rebuilds a lost share from the \
                 offline recovery share; without one, `splitsign rotate` (offline) makes a \
                 new key and keeps the old public key published until its tokens expire"
            );
        }
    })?;
    if seals {
        // Shares written before sealing was turned on stay in clear until
        // `reseal`: say so, rather than let the line above stand alone.
        for (kid, _) in manager
            .file_share_seals()
            .into_iter()
            .filter(|(_, to)| to.is_none())
        {
            tracing::warn!(
                %kid,
                "share_seal = \"tpm2\", but this key's file share is in clear (written before \
                 sealing was turned on): stop the daemon and run `splitsign reseal`"
            );
        }
    }
    Ok(manager)
}

/// The listening socket: systemd's, or one bound here (removed at stop).
fn listen(
    activated: Option<std::os::unix::net::UnixListener>,
    cfg: &Config,
) -> Result<(std::os::unix::net::UnixListener, Option<BoundSocket>)> {
    Ok(match activated {
        Some(l) => {
            tracing::info!("using the socket passed by systemd (LISTEN_FDS)");
            (l, None)
        }
        None => {
            let (l, b) = listener::bind(&cfg.paths.socket, cfg.paths.socket_mode)?;
            (l, Some(b))
        }
    })
}

fn start_audit(
    cfg: &Config,
    manager: &KeyManager,
    metrics: &Arc<metrics::Metrics>,
) -> Result<Option<Writer>> {
    if !cfg.audit.enabled {
        tracing::warn!("the audit log is off (audit = false)");
        return Ok(None);
    }
    Writer::start(
        cfg.paths.db.clone(),
        cfg.audit.sync,
        manager.db_identity(),
        cfg.audit.retention,
        cfg.audit.keep_free,
        Arc::clone(metrics),
    )
    .map(Some)
}

/// Serve until a signal says stop, with the background tasks beside.
async fn run(
    std_listener: std::os::unix::net::UnixListener,
    state: Arc<State>,
    cfg: Config,
    started: Instant,
) -> Result<()> {
    let socket = tokio::net::UnixListener::from_std(std_listener)
        .map_err(Error::io("registering socket", &cfg.paths.socket))?;
    let shutdown = CancellationToken::new();
    let timer = background::spawn(&state, &shutdown);
    let status = state.manager.status_line();
    tracing::info!(
        status = %status,
        socket = %cfg.paths.socket.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
    systemd::ready(&status);
    listener::run(socket, state, shutdown).await;
    let _ = timer.await;
    Ok(())
}

/// After the last reply: move the WAL into the database file, so that the
/// file alone is complete (a copy of it, a backup tool that skips `-wal`).
fn stop(manager: &KeyManager) {
    if manager.fault().is_none()
        && let Err(e) = manager.checkpoint()
    {
        tracing::warn!(error = %e, "could not checkpoint the database at stop");
    }
    tracing::info!("stopped");
}
