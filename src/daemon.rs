//! `daemon` wires the parts together for `splitsign serve`: config →
//! hardening → stores → reconcile → unseal → socket → serve → shutdown.
//! It holds no logic of its own beyond ordering and logging.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Origin as ConfigOrigin};
use crate::error::{Error, Result};
use crate::keyring::Keyring;
use crate::lifecycle;
use crate::server::{self, Limits, Service};
use crate::store::Origin;
use crate::stores::Stores;
use crate::token::Policy;

pub fn serve(cfg: Config) -> Result<()> {
    let started = Instant::now();
    crate::secmem::harden_process()
        .map_err(|e| Error::KeyStore(format!("cannot make the process non-dumpable: {e}")))?;
    match &cfg.origin {
        ConfigOrigin::File(p) => tracing::info!(config = %p.display(), "loaded config"),
        ConfigOrigin::Defaults => tracing::info!("no config file; using built-in defaults"),
    }
    tracing::info!(
        shares = %cfg.shares_dir.display(),
        db = %cfg.db.display(),
        socket = %cfg.socket.display(),
        issuer = %cfg.issuer,
        "stores and socket"
    );

    let mut stores = Stores::open(&cfg, true)?;
    let now = lifecycle::now();
    stores.reconcile(now)?;

    if stores.store.is_empty()? {
        let seed = lifecycle::random_seed()?;
        let row = lifecycle::create_key(
            &mut stores.store,
            &stores.dir,
            &cfg,
            &seed,
            Origin::Generated,
            now,
            None,
        )?;
        tracing::info!(kid = %row.kid, "first start: created the first signing key");
    }

    let (mut keys, mut unlocked) = lifecycle::load_keyset(&stores.store, &stores.dir, &cfg, now)?;
    if keys.signer.is_none() {
        // Every key's signing period ended while the daemon was down: this
        // is the scheduled rotation, late. (A key whose shares are broken
        // never gets here: load_keyset failed above.)
        let seed = lifecycle::random_seed()?;
        let row = lifecycle::create_key(
            &mut stores.store,
            &stores.dir,
            &cfg,
            &seed,
            Origin::Generated,
            now,
            None,
        )?;
        tracing::info!(kid = %row.kid, "no key was active (rotation overdue); created a new signing key");
        (keys, unlocked) = lifecycle::load_keyset(&stores.store, &stores.dir, &cfg, now)?;
    }
    for (kid, e) in &unlocked {
        tracing::warn!(%kid, error = %e, "could not mlock the key page (raise LimitMEMLOCK / RLIMIT_MEMLOCK); the key may be swapped");
    }
    let active = keys
        .signer
        .as_ref()
        .map(|s| s.kid.clone())
        .ok_or_else(|| Error::KeyStore("no active key after unsealing".into()))?;

    let (std_listener, bound) = server::bind(&cfg.socket, cfg.socket_mode)?;
    let service = Arc::new(Service {
        keyring: Keyring::new(keys),
        policy: Policy::new(&cfg),
        started,
    });
    let limits = Limits {
        max_connections: cfg.max_connections,
        max_frame_bytes: cfg.max_frame_bytes,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the async runtime", "tokio"))?;
    let socket_path = bound.path.clone();
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .map_err(Error::io("registering socket", &cfg.socket))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        tracing::info!(
            kid = %active,
            socket = %socket_path.display(),
            startup_ms = started.elapsed().as_millis() as u64,
            "ready"
        );
        server::run(listener, service, limits, shutdown).await;
        Ok::<_, Error>(())
    })?;
    drop(bound);
    drop(stores);
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
