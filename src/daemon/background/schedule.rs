//! `schedule`: the key schedule's timer. It sleeps until the next key
//! event and has the key manager do what is due then.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::daemon::key_manager::KeyManager;

/// Longest sleep of the lifecycle timer, so that a change of the system
/// clock is noticed within this long.
const MAX_TIMER: Duration = Duration::from_secs(30);

/// Run the schedule: sleep until the next key event (at most
/// [`MAX_TIMER`], or until woken by a reload), then let the manager do what
/// is due. Failures (a locked database, a full disk) are logged and
/// retried; signing goes on with the keys in memory.
pub(super) async fn lifecycle_timer(manager: Arc<KeyManager>, shutdown: CancellationToken) {
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
