//! `daemon` wires the parts together for `splitsign serve`: config →
//! hardening → stores → manager (reconcile, unseal, schedule) → socket →
//! serve, with the lifecycle timer beside it → shutdown. It holds no logic
//! of its own beyond ordering and logging.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Origin as ConfigOrigin};
use crate::error::{Error, Result};
use crate::manager::Manager;
use crate::server::{self, Limits, Service};
use crate::stores::Stores;
use crate::token::Policy;

/// Longest sleep of the lifecycle timer, so that a change of the system
/// clock is noticed within this long.
const MAX_TIMER: Duration = Duration::from_secs(30);

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

    let stores = Stores::open(&cfg, true)?;
    let manager = Manager::start(stores, cfg.clone()).inspect_err(|e| {
        if e.exit_code() == crate::error::exit::KEY_STORE {
            tracing::error!(
                "the keys cannot be unsealed; nothing was changed. To get back: \
                 `splitsign recover --recovery-share FILE` rebuilds a lost share from the \
                 offline recovery share; without one, `splitsign rotate` (offline) makes a \
                 new key and keeps the old public key published until its tokens expire"
            );
        }
    })?;
    let manager = Arc::new(manager);
    let now = manager.clock.now();
    let active = manager
        .keyring
        .snapshot()
        .signer_at(now)
        .map(|s| s.kid.clone())
        .ok_or_else(|| Error::KeyStore("no active key after unsealing".into()))?;

    let (std_listener, bound) = server::bind(&cfg.socket, cfg.socket_mode)?;
    let own_uid = rustix::process::geteuid().as_raw();
    let service = Arc::new(Service {
        manager: Arc::clone(&manager),
        policy: Policy::new(&cfg),
        started,
        admin_uids: if own_uid == 0 {
            vec![0]
        } else {
            vec![0, own_uid]
        },
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
        let timer = tokio::spawn(lifecycle_timer(Arc::clone(&manager), shutdown.clone()));
        tracing::info!(
            kid = %active,
            socket = %socket_path.display(),
            startup_ms = started.elapsed().as_millis() as u64,
            "ready"
        );
        server::run(listener, service, limits, shutdown).await;
        let _ = timer.await;
        Ok::<_, Error>(())
    })?;
    drop(bound);
    tracing::info!("stopped");
    Ok(())
}

/// Run the schedule: sleep until the next key event (at most
/// [`MAX_TIMER`]), then let the manager do what is due. Failures (a locked
/// database, a full disk) are logged and retried; signing goes on with the
/// keys in memory.
async fn lifecycle_timer(manager: Arc<Manager>, shutdown: CancellationToken) {
    let mut next: Option<i64> = None;
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = match next {
            Some(t) => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                Duration::from_millis(
                    (t * 1000 - now_ms).clamp(0, MAX_TIMER.as_millis() as i64) as u64
                )
            }
            None => Duration::ZERO,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let m = Arc::clone(&manager);
        match tokio::task::spawn_blocking(move || m.tick()).await {
            Ok(Ok(n)) => {
                retry = Duration::from_secs(1);
                // With no event ahead, look again after MAX_TIMER.
                next = Some(n.unwrap_or(i64::MAX / 2000));
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, retry_s = retry.as_secs(), "key schedule step failed; the current keys stay in use");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(60));
                next = None;
            }
            Err(_) => {
                tracing::error!("key schedule step panicked");
                next = None;
            }
        }
    }
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
