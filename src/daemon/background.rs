//! `background` runs beside the connections: the key schedule's timer,
//! the health monitor (`STATUS=`, clock jumps, memory given back), the
//! watchdog, and the signals (stop, reload).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::handler::reload;
use super::key_manager::KeyManager;
use super::state::State;
use super::systemd;

/// Longest sleep of the lifecycle timer, so that a change of the system
/// clock is noticed within this long.
const MAX_TIMER: Duration = Duration::from_secs(30);

/// Start the background tasks; returns the schedule timer's handle (the
/// others end with `shutdown` and need no waiting).
pub(super) fn spawn(state: &Arc<State>, shutdown: &CancellationToken) -> JoinHandle<()> {
    // The signal streams are made here, before the daemon says it is
    // ready, not when the task first runs: a SIGTERM sent right after
    // READY=1 (systemd, a test) was lost when it came while the task was
    // installing the handler, and the daemon never stopped.
    match Signals::register() {
        Ok(s) => {
            tokio::spawn(signals(s, Arc::clone(state), shutdown.clone()));
        }
        Err(e) => tracing::error!(error = %e, "cannot install signal handlers"),
    }
    tokio::spawn(health_monitor(Arc::clone(state), shutdown.clone()));
    tokio::spawn(metrics_file(Arc::clone(state), shutdown.clone()));
    if let Some(interval) = systemd::watchdog_interval() {
        tokio::spawn(watchdog(Arc::clone(state), interval, shutdown.clone()));
    }
    tokio::spawn(super::cluster::follow(
        Arc::clone(&state.manager),
        shutdown.clone(),
    ));
    tokio::spawn(lifecycle_timer(
        Arc::clone(&state.manager),
        shutdown.clone(),
    ))
}

/// How often the running daemon checks its health: that its stores are
/// still in place, the audit log can be written, a key signs, and the wall
/// clock did not jump.
const HEALTH_CHECK: Duration = Duration::from_millis(500);

/// Twice a second: check health (see [`State::healthy`]; a store found
/// changed stops the signing for good, until a restart), keep `STATUS=`
/// saying what is wrong or, when all is well, the active key and the next
/// transition, and wake the key schedule when the wall clock jumps, so
/// that a key that can sign is there within a second.
async fn health_monitor(state: Arc<State>, shutdown: CancellationToken) {
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
            tokio::task::spawn_blocking(crate::daemon::memory::release_free_memory);
        }
        let h = Arc::clone(&state);
        let Ok(health) = tokio::task::spawn_blocking(move || h.healthy(HEALTH_CHECK)).await else {
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
        let status = state.status_line(health.err());
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
            state.manager.wake.notify_one();
        }
        last_offset = now_offset;
    }
}

/// Every 15 s (at start, and after a reload): write the metrics to `metrics_file`, if it
/// is set (a reload may set, move or unset it), atomically and mode 0644,
/// so that a reader (node_exporter) never sees a partial file.
async fn metrics_file(state: Arc<State>, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        if let Some(path) = state.manager.config().metrics_file.clone() {
            let h = Arc::clone(&state);
            let written = tokio::task::spawn_blocking(move || {
                let text = h.metrics_text();
                super::public_file::write_exact(&path, text.as_bytes())
                    .map_err(|e| (path, crate::error::chain(&e)))
            })
            .await;
            match written {
                Ok(Err((path, e))) if !failing => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics file");
                    failing = true;
                }
                Ok(Ok(())) => failing = false,
                _ => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(super::metrics::FILE_INTERVAL) => {}
            // A reload writes it at once (its path may have changed).
            _ = state.reloaded.notified() => {}
        }
    }
}

/// Run the schedule: sleep until the next key event (at most
/// [`MAX_TIMER`], or until woken by a reload), then let the manager do what
/// is due. Failures (a locked database, a full disk) are logged and
/// retried; signing goes on with the keys in memory.
async fn lifecycle_timer(manager: Arc<KeyManager>, shutdown: CancellationToken) {
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
                    // PostgreSQL is back, a reload: try again now.
                    _ = manager.wake.notified() => {}
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
async fn watchdog(state: Arc<State>, interval: Duration, shutdown: CancellationToken) {
    let period = interval / 2;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let h = Arc::clone(&state);
        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || h.healthy(period)).await {
            systemd::watchdog();
        }
    }
}

/// The signals the daemon acts on, each a stream registered with the
/// runtime.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGTERM/SIGINT: stop. SIGHUP: reload the config (as `splitsign
/// reload` does through the socket).
async fn signals(s: Signals, state: Arc<State>, shutdown: CancellationToken) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = s;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
            _ = hup.recv() => {
                let h = Arc::clone(&state);
                let _ = tokio::task::spawn_blocking(move || reload::reload(&h, "SIGHUP")).await;
            }
        }
    }
    systemd::stopping();
    shutdown.cancel();
}
