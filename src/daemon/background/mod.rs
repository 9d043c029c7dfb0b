//! `background` runs beside the connections, one task per concern:
//! `schedule` (the key schedule's timer), `health` (the health monitor:
//! `STATUS=`, clock jumps, memory given back; and the watchdog),
//! `metrics_file`, `signals` (stop, reload) and `follow` (the other nodes
//! of a PostgreSQL deployment).

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod follow;
mod health;
mod metrics_file;
mod schedule;
mod signals;

use super::state::State;
use super::systemd;
use signals::Signals;

/// Start the background tasks; returns the schedule timer's handle (the
/// others end with `shutdown` and need no waiting).
pub(super) fn spawn(state: &Arc<State>, shutdown: &CancellationToken) -> JoinHandle<()> {
    // The signal streams are made here, before the daemon says it is
    // ready, not when the task first runs: a SIGTERM sent right after
    // READY=1 (systemd, a test) was lost when it came while the task was
    // installing the handler, and the daemon never stopped.
    match Signals::register() {
        Ok(s) => {
            tokio::spawn(signals::signals(s, Arc::clone(state), shutdown.clone()));
        }
        Err(e) => tracing::error!(error = %e, "cannot install signal handlers"),
    }
    tokio::spawn(health::health_monitor(Arc::clone(state), shutdown.clone()));
    tokio::spawn(metrics_file::metrics_file(
        Arc::clone(state),
        shutdown.clone(),
    ));
    if let Some(interval) = systemd::watchdog_interval() {
        tokio::spawn(health::watchdog(
            Arc::clone(state),
            interval,
            shutdown.clone(),
        ));
    }
    tokio::spawn(follow::follow(Arc::clone(&state.manager), shutdown.clone()));
    tokio::spawn(schedule::lifecycle_timer(
        Arc::clone(&state.manager),
        shutdown.clone(),
    ))
}
