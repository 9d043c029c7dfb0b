//! `metrics_file`: writes the metrics to `metrics_file` for readers that
//! scrape files (node_exporter's textfile collector).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::daemon::state::State;

/// Every 15 s (at start, and after a reload): write the metrics to `metrics_file`, if it
/// is set (a reload may set, move or unset it), atomically and mode 0644,
/// so that a reader (node_exporter) never sees a partial file.
pub(super) async fn metrics_file(state: Arc<State>, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        if let Some(path) = state.manager.config().outputs.metrics_file.clone() {
            let h = Arc::clone(&state);
            let written = tokio::task::spawn_blocking(move || {
                let text = h.metrics_text();
                crate::daemon::public_file::write_exact(&path, text.as_bytes())
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
            _ = tokio::time::sleep(crate::daemon::metrics::FILE_INTERVAL) => {}
            // A reload writes it at once (its path may have changed).
            _ = state.reloaded.notified() => {}
        }
    }
}
