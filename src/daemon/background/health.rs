//! `health`: the health monitor (`STATUS=`, clock jumps, memory given
//! back) and systemd's watchdog, both on [`State::healthy`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::daemon::state::State;
use crate::daemon::systemd;

/// How often the running daemon checks its health: that its stores are
/// still in place, the audit log can be written, a key signs, and the wall
/// clock did not jump.
const HEALTH_CHECK: Duration = Duration::from_millis(500);

/// Twice a second: check health (see [`State::healthy`]; a store found
/// changed stops the signing for good, until a restart), keep `STATUS=`
/// saying what is wrong or, when all is well, the active key and the next
/// transition, and wake the key schedule when the wall clock jumps, so
/// that a key that can sign is there within a second.
pub(super) async fn health_monitor(state: Arc<State>, shutdown: CancellationToken) {
    let mono = Instant::now();
    let offset =
        |at: Instant| crate::clock::wall_now_ms() - at.duration_since(mono).as_millis() as i64;
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

/// Ping systemd's watchdog every half interval, but only while the daemon
/// is healthy: a stuck accept loop or a sign path that cannot sign stops
/// the pings, and systemd restarts the service.
pub(super) async fn watchdog(state: Arc<State>, interval: Duration, shutdown: CancellationToken) {
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
