//! `daemon` wires the parts together for `splitsign serve`: config →
//! hardening → stores → manager (reconcile, unseal, schedule) → listener
//! (from systemd or bound here) → READY → serve, with the lifecycle timer,
//! the watchdog and the signal handlers beside it → STOPPING → exit. It
//! holds no logic of its own beyond ordering and logging.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::config::{Config, Env, Origin as ConfigOrigin, Overrides};
use crate::error::{Error, Result};
use crate::keys::jws::Policy;
use crate::manager::Manager;
use crate::server::{self, Limits};
use crate::service::Service;
use crate::store::Stores;
use crate::systemd;

/// Longest sleep of the lifecycle timer, so that a change of the system
/// clock is noticed within this long.
const MAX_TIMER: Duration = Duration::from_secs(30);

pub fn serve(cfg: Config, overrides: Overrides) -> Result<()> {
    let started = Instant::now();
    crate::keys::locked::harden_process()?;
    crate::memory::tune_allocator();
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
    // Check the access policies (user and group names) before anything else.
    Access::new(&cfg)?;
    // Adopt systemd's socket before anything else can open a descriptor.
    let activated = systemd::take_listener()?;

    let stores = Stores::open(&cfg, true)?;
    let manager = Manager::start(stores, cfg.clone()).inspect_err(|e| {
        // Store checks and unsealing come before any change (see
        // `Manager::start`), so a refusal here has changed nothing. Stores
        // that do not belong together say what to do in their own message.
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
    let manager = Arc::new(manager);

    let (std_listener, bound) = match activated {
        Some(l) => {
            tracing::info!("using the socket passed by systemd (LISTEN_FDS)");
            (l, None)
        }
        None => {
            let (l, b) = server::bind(&cfg.socket, cfg.socket_mode)?;
            (l, Some(b))
        }
    };
    let audit = if cfg.audit {
        Some(crate::audit::Writer::start(
            cfg.db.clone(),
            cfg.audit_sync,
            manager.db_identity(),
            cfg.audit_retention,
        )?)
    } else {
        tracing::warn!("the audit log is off (audit = false)");
        None
    };
    let service = Arc::new(Service::new(
        Arc::clone(&manager),
        Policy::new(&cfg),
        Access::new(&cfg)?,
        Limits::of(&cfg),
        started,
        audit,
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the async runtime", "tokio"))?;
    let stopping = Arc::clone(&manager);
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .map_err(Error::io("registering socket", &cfg.socket))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(
            Arc::clone(&service),
            overrides,
            cfg.clone(),
            shutdown.clone(),
        ));
        let timer = tokio::spawn(lifecycle_timer(Arc::clone(&manager), shutdown.clone()));
        tokio::spawn(health_monitor(Arc::clone(&service), shutdown.clone()));
        if let Some(interval) = systemd::watchdog_interval() {
            tokio::spawn(watchdog(Arc::clone(&service), interval, shutdown.clone()));
        }
        let status = manager.status_line();
        tracing::info!(
            status = %status,
            socket = %cfg.socket.display(),
            startup_ms = started.elapsed().as_millis() as u64,
            "ready"
        );
        systemd::ready(&status);
        server::run(listener, service, shutdown).await;
        let _ = timer.await;
        Ok::<_, Error>(())
    })?;
    drop(bound);
    // Every reply has left and every audit batch is committed: move the
    // WAL into the database file, so that the file alone is complete (a
    // copy of it, a backup tool that skips `-wal`).
    if stopping.fault().is_none()
        && let Err(e) = stopping.checkpoint()
    {
        tracing::warn!(error = %e, "could not checkpoint the database at stop");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How often the running daemon checks its health: that its stores are
/// still in place, the audit log can be written, a key signs, and the wall
/// clock did not jump.
const HEALTH_CHECK: Duration = Duration::from_millis(500);

/// Twice a second: check health (see [`Service::healthy`]; a store found
/// changed stops the signing for good, until a restart), keep `STATUS=`
/// saying what is wrong or, when all is well, the active key and the next
/// transition, and wake the key schedule when the wall clock jumps, so
/// that a key that can sign is there within a second.
async fn health_monitor(service: Arc<Service>, shutdown: CancellationToken) {
    let mono = Instant::now();
    let offset =
        |at: Instant| crate::lifecycle::wall_now_ms() - at.duration_since(mono).as_millis() as i64;
    let mut last_offset = offset(Instant::now());
    let mut last_status = String::new();
    let mut was_healthy = true;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_CHECK) => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(4) {
            // Every 2 s: memory freed by closed or idle connections goes
            // back to the OS, so RSS follows the load down.
            tokio::task::spawn_blocking(crate::memory::release_free_memory);
        }
        let svc = Arc::clone(&service);
        let Ok(health) = tokio::task::spawn_blocking(move || svc.healthy(HEALTH_CHECK)).await
        else {
            continue;
        };
        match &health {
            Err(why) if was_healthy => {
                tracing::error!(reason = %why, "unhealthy; withholding watchdog pings");
            }
            Ok(()) if !was_healthy => tracing::info!("healthy again; watchdog pings resume"),
            _ => {}
        }
        was_healthy = health.is_ok();
        let status = service.status_line(health.err());
        if status != last_status {
            systemd::status(&status);
            last_status = status;
        }
        let now_offset = offset(Instant::now());
        if (now_offset - last_offset).abs() > 1000 {
            tracing::warn!(
                jump_ms = now_offset - last_offset,
                "the wall clock jumped; running the key schedule"
            );
            service.manager.wake.notify_one();
        }
        last_offset = now_offset;
    }
}

/// Run the schedule: sleep until the next key event (at most
/// [`MAX_TIMER`], or until woken by a reload), then let the manager do what
/// is due. Failures (a locked database, a full disk) are logged and
/// retried; signing goes on with the keys in memory.
async fn lifecycle_timer(manager: Arc<Manager>, shutdown: CancellationToken) {
    // Run once right away: the schedule may have moved while starting.
    let mut next: Option<i64> = Some(0);
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = match next {
            Some(t) => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                Duration::from_millis(
                    t.saturating_mul(1000)
                        .saturating_sub(now_ms)
                        .clamp(0, MAX_TIMER.as_millis() as i64) as u64,
                )
            }
            None => MAX_TIMER,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = manager.wake.notified() => {}
        }
        let m = Arc::clone(&manager);
        match tokio::task::spawn_blocking(move || m.tick()).await {
            Ok(Ok(n)) => {
                retry = Duration::from_secs(1);
                next = n;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, retry_s = retry.as_secs(), "key schedule step failed; the current keys stay in use");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(60));
                next = Some(0);
            }
            Err(_) => {
                tracing::error!("key schedule step panicked");
                next = Some(0);
            }
        }
    }
}

/// Ping systemd's watchdog every half interval, but only while the daemon
/// is healthy: a stuck accept loop or a sign path that cannot sign stops
/// the pings, and systemd restarts the service.
async fn watchdog(service: Arc<Service>, interval: Duration, shutdown: CancellationToken) {
    let period = interval / 2;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let svc = Arc::clone(&service);
        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || svc.healthy(period)).await {
            systemd::watchdog();
        }
    }
}

/// SIGTERM/SIGINT: stop. SIGHUP: reload the config.
async fn signals(
    service: Arc<Service>,
    overrides: Overrides,
    mut running: Config,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            _ = hup.recv() => {
                systemd::reloading();
                match reload(&service, &overrides, &running) {
                    Ok(cfg) => {
                        tracing::info!("SIGHUP: reloaded the config");
                        running = cfg;
                        service.manager.wake.notify_one();
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused; keeping the running config"),
                }
                systemd::ready(&service.status_line(None));
            }
        }
    }
    systemd::stopping();
    shutdown.cancel();
}

/// Load and validate the config again and apply what can change while
/// running. Paths and socket settings need a restart: a reload that
/// changes them is refused whole.
fn reload(service: &Service, overrides: &Overrides, running: &Config) -> Result<Config> {
    let new = Config::load(overrides, &Env::from_process())?;
    if let Some(key) = running.needs_restart(&new) {
        return Err(Error::Setting {
            key,
            message: "cannot change on reload; restart the daemon".into(),
        });
    }
    let access = Access::new(&new)?;
    service.set_policies(Policy::new(&new), access);
    service.set_limits(Limits::of(&new));
    if let Some(a) = &service.audit {
        a.set_retention(new.audit_retention);
    }
    service.manager.set_config(new.clone());
    Ok(new)
}
