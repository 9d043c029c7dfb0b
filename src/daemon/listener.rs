//! `listener` owns the Unix socket: binding it, the accept loop, and the
//! admission of each peer before a byte is read (its policy, its uid's
//! share of the connections: see `admission`). Each admitted peer gets a
//! task running a `connection`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Ticket;
use super::connection::Connection;
use super::state::{Peer, State};
use crate::error::{Error, Result};
use crate::protocol::{self, Code, Failure};

/// A socket this process bound, removed again on drop if it is still ours.
pub struct BoundSocket {
    pub path: PathBuf,
    ino: u64,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind the listening socket at `path` with `mode`. A stale socket left by
/// a killed daemon is replaced; a live one, or any other file, is refused.
pub fn bind(path: &Path, mode: u32) -> Result<(std::os::unix::net::UnixListener, BoundSocket)> {
    use std::os::unix::fs::MetadataExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(Error::io("creating socket directory", parent))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::Usage(format!(
                "socket path {} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::Usage(format!(
                    "another daemon is already listening on {}",
                    path.display()
                )));
            }
            Err(_) => {
                std::fs::remove_file(path).map_err(Error::io("removing stale socket", path))?;
            }
        }
    }
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(Error::io("binding socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("setting socket mode", path))?;
    listener
        .set_nonblocking(true)
        .map_err(Error::io("configuring socket", path))?;
    let ino = std::fs::symlink_metadata(path)
        .map_err(Error::io("examining socket", path))?
        .ino();
    Ok((
        listener,
        BoundSocket {
            path: path.to_owned(),
            ino,
        },
    ))
}

/// Accept and serve until `shutdown` is cancelled, then wait (bounded) for
/// open connections to finish what they have read.
pub async fn run(listener: UnixListener, state: Arc<State>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff = Duration::from_millis(5);
                    state.health.accept_failing_since.store(0, Ordering::Relaxed);
                    s
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin, and let
                    // the watchdog know if it lasts.
                    let _ = state.health.accept_failing_since.compare_exchange(
                        0,
                        crate::clock::wall_now(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Some((peer, ticket)) = admit(&state, &stream) else {
            continue;
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            Connection::new(stream, &state, peer, ticket)
                .serve(&shutdown)
                .await;
        });
    }
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10s; closing them");
    }
}

/// Decide about a new connection before reading a byte: who it is
/// (SO_PEERCRED), whether a policy lets it in, and whether its uid may hold
/// another connection. A refused peer gets one error line, is closed at
/// once, and is counted in the audit log (in aggregate).
fn admit(state: &State, stream: &UnixStream) -> Option<(Peer, Ticket)> {
    let cred = stream.peer_cred().ok()?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let access = state.access();
    let refuse = |code: Code, message: String| {
        let mut line = Vec::new();
        protocol::write_error(&mut line, &Failure::new(None, code, message));
        // A new connection's socket buffer is empty: this never blocks.
        let _ = stream.try_write(&line);
        state.tally_refusal(uid, pid, "connect", code.as_str());
    };
    let Some(policy) = access.for_peer(uid, gid) else {
        state.log_refusal(uid, "connection refused: no policy matches this peer");
        refuse(Code::Forbidden, "this peer may not use the daemon".into());
        return None;
    };
    match state.admission.admit(
        uid,
        access.is_admin(uid),
        super::limits::caps(&state.limits()),
    ) {
        Ok((ticket, evicted)) => {
            if let Some(e) = evicted {
                tracing::info!(
                    uid = e.uid,
                    idle_ms = e.idle_ms,
                    newcomer = uid,
                    "connections full: closed the longest-idle connection of the busiest uid"
                );
                state.tally_refusal(e.uid, None, "connect", "evicted");
            }
            Some((
                Peer {
                    uid,
                    gid,
                    pid,
                    policy,
                },
                ticket,
            ))
        }
        Err(why) => {
            state.log_refusal(uid, "connection refused: busy");
            refuse(Code::Busy, why.to_string());
            None
        }
    }
}
