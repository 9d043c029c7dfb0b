//! `follow`: in a PostgreSQL deployment, follow the other nodes: listen
//! for their notifications and have the cluster (`daemon::cluster`) re-read
//! what changed, then the key manager publish their keys and take their
//! revocations.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::daemon::cluster::{READ_GAP, Wanted};
use crate::daemon::key_manager::KeyManager;
use crate::error::Result;
use crate::store::postgres::Changed;

/// Follow the other nodes until shutdown: listen, and re-read what the
/// notifications say changed, at most once per [`READ_GAP`].
pub(super) async fn follow(manager: Arc<KeyManager>, shutdown: CancellationToken) {
    let Some(cluster) = manager.cluster() else {
        return;
    };
    let listener = cluster.pg.listen();
    // When the last read that brought nothing new was made: a flood of
    // forged notifications is one read per gap; one that brings a new
    // revocation or key is followed at once (a revocation only grown, which
    // a node can do without end to its own, is not).
    let mut last_idle: Option<Instant> = None;
    // A read that failed, to try again (1 s, doubling, at most 30 s).
    let mut failed = Wanted::default();
    let mut retry = Duration::from_secs(1);
    loop {
        let mut changed = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = listener.changed() => c,
            _ = tokio::time::sleep(retry), if failed.any() => Changed::default(),
        };
        if let Some(gap) = last_idle.map(|t| READ_GAP.saturating_sub(t.elapsed()))
            && !gap.is_zero()
        {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(gap) => {}
            }
            changed.merge(listener.take());
        }
        let (wanted, refused) = cluster.wanted(changed);
        if let Some(why) = refused {
            manager.refused(&why);
        }
        let wanted = wanted.or(failed);
        if !wanted.any() {
            continue;
        }
        if wanted.all {
            // Everything, beside the incremental reads (a full read of many
            // revocations takes a while; none of them waits for it).
            let m = Arc::clone(&manager);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = m.read_all_revocations() {
                    tracing::warn!(error = %e, "could not read every revocation; the schedule tries again");
                }
            });
        }
        let started = Instant::now();
        let m = Arc::clone(&manager);
        let done = tokio::task::spawn_blocking(move || follow_cluster(&m, wanted)).await;
        last_idle = match done {
            Ok(Ok(true)) => None,
            _ => Some(started),
        };
        match done {
            Ok(Ok(_)) => {
                failed = Wanted::default();
                retry = Duration::from_secs(1);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, retry_s = retry.as_secs(), "could not read the other nodes' changes; retrying");
                if failed.any() {
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
                failed = wanted;
            }
            Err(_) => failed = wanted,
        }
    }
}

/// Re-read what the other nodes changed (see [`follow`]).
/// Returns whether anything was new (a notification that brought
/// nothing may have been forged: the follower then waits before the
/// next read).
fn follow_cluster(m: &KeyManager, wanted: Wanted) -> Result<bool> {
    let Some(c) = m.cluster() else {
        return Ok(false);
    };
    let r = (|| {
        let mut news = false;
        if wanted.all || wanted.revocations {
            // After a reconnection the follower reads everything beside
            // (see [`follow`]); this catches up at once.
            news |= m.sync_revocations(c, false)? > 0;
        }
        if wanted.all || wanted.keys {
            let before = c.view();
            news |= !c.refresh_view(m.clock.now())?.same_as(&before);
            m.publish_others()?;
        }
        Ok(news)
    })();
    m.note(&r);
    if wanted.all && r.is_ok() {
        // Back in touch: catch up this node's own schedule too (a
        // rotation that could not be stored). A notification alone
        // never runs it (any role may send one).
        m.wake.notify_one();
    }
    r
}
