//! `signals`: SIGTERM and SIGINT stop the daemon, SIGHUP reloads its
//! config.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::daemon::handler::reload;
use crate::daemon::state::State;
use crate::daemon::systemd;

/// The signals the daemon acts on, each a stream registered with the
/// runtime.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn register() -> std::io::Result<Signals> {
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
pub(super) async fn signals(s: Signals, state: Arc<State>, shutdown: CancellationToken) {
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
