//! `server` owns the Unix socket: binding, the accept loop with a connection
//! limit, and one task per connection that checks the peer, reads lines,
//! answers them in order and writes the answers in batches.
//!
//! A request crosses few hops: read → split line → parse → authorize →
//! sign or verify inline (~20–40 µs of CPU, cheaper than a thread hop) →
//! append the response. Responses for everything already read are written
//! with one `write_all` once their audit records are committed; the
//! connection reads no more until they are written, which is the
//! backpressure on pipelining clients.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Record;
use crate::error::{Error, Result};
use crate::protocol::{self, Code, Failure, Frame, LineSplitter};
use crate::service::{Handled, Peer, Service};

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

/// Limits of the accept loop and connections. The timeouts follow a
/// reload (each connection reads them at every turn of its loop); the
/// others are fixed while the daemon runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            max_connections: cfg.max_connections,
            max_frame_bytes: cfg.max_frame_bytes,
            idle_timeout: cfg.idle_timeout,
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
        }
    }
}

/// Accept and serve until `shutdown` is cancelled, then wait (bounded) for
/// open connections to finish what they have read.
pub async fn run(listener: UnixListener, service: Arc<Service>, shutdown: CancellationToken) {
    let limits = *service.limits();
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        // Take a permit before accepting: at the limit, new clients wait in
        // the kernel's backlog instead of costing us a descriptor.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff = Duration::from_millis(5);
                    service.health.accept_failing_since.store(0, Ordering::Relaxed);
                    s
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin, and let
                    // the watchdog know if it lasts.
                    let _ = service.health.accept_failing_since.compare_exchange(
                        0,
                        service.manager.clock.now(),
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
        let service = Arc::clone(&service);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            connection(stream, &service, &shutdown).await;
            drop(permit);
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

const READ_CHUNK: usize = 16 * 1024;

/// How long a sign request that found no key able to sign waits for the
/// key schedule to make one (after a clock jump), before `unavailable`.
const AWAIT_KEY: Duration = Duration::from_secs(2);

/// One response in a batch: where it is in the output buffer, and whether
/// it carries a token (withheld if the audit commit fails).
struct Segment {
    start: usize,
    end: usize,
    token: bool,
}

/// Answer one request line (admin ops on a blocking thread) and note where
/// its response sits in `out`.
async fn answer(
    service: &Service,
    line: &[u8],
    peer: &Peer,
    out: &mut Vec<u8>,
    records: &mut Vec<Record>,
) -> Segment {
    let start = out.len();
    let mut handled = service.handle(line, peer, out, records, false);
    if let Handled::AwaitKey = handled {
        service.await_key(AWAIT_KEY).await;
        handled = service.handle(line, peer, out, records, true);
    }
    let token = match handled {
        Handled::Done { token } => token,
        Handled::Admin(req) => {
            service.run_admin(req, peer, out, records).await;
            false
        }
        Handled::AwaitKey => unreachable!("a retried line is answered"),
    };
    Segment {
        start,
        end: out.len(),
        token,
    }
}

async fn connection(mut stream: UnixStream, service: &Service, shutdown: &CancellationToken) {
    let mut limits = *service.limits();
    // SO_PEERCRED, read before any byte: who connected, as the kernel says.
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let Some(policy) = service.access().for_peer(uid, gid) else {
        tracing::warn!(uid, gid, pid = ?pid, "connection refused: no policy matches this peer");
        let now = service.manager.clock.now();
        if let Some(a) = &service.audit {
            a.commit(vec![Record {
                at: now,
                uid: Some(uid),
                pid,
                op: "connect",
                result: Code::Forbidden.as_str(),
                ..Record::default()
            }])
            .await;
        }
        let mut out = Vec::new();
        protocol::write_error(
            &mut out,
            &Failure::new(None, Code::Forbidden, "this peer may not use the daemon"),
        );
        let _ = tokio::time::timeout(limits.write_timeout, stream.write_all(&out)).await;
        let _ = stream.shutdown().await;
        return;
    };
    let peer = Peer {
        uid,
        gid,
        pid,
        policy,
    };
    let (mut rd, mut wr) = stream.split();
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut splitter = LineSplitter::new(limits.max_frame_bytes);
    let mut segments: Vec<Segment> = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    let mut last_request = Instant::now();
    let mut partial_since: Option<Instant> = None;
    loop {
        limits = *service.limits();
        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        // A started line must finish within read_timeout (slow clients);
        // an idle connection closes after idle_timeout.
        let deadline = match partial_since {
            Some(t) => t + limits.read_timeout,
            None => last_request + limits.idle_timeout,
        };
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(uid, "closing a connection: read or idle timeout");
                break;
            }
            r = rd.read_buf(&mut inbuf) => r,
        };
        let eof = match read {
            Ok(0) => true,
            Ok(_) => false,
            Err(_) => break,
        };
        let mut close = eof;
        while let Some(frame) = splitter.next(&inbuf) {
            match frame {
                Frame::Line(line) if line.trim_ascii().is_empty() => {}
                Frame::Line(line) => {
                    segments.push(answer(service, line, &peer, &mut out, &mut records).await);
                }
                Frame::TooLong => {
                    let start = out.len();
                    protocol::write_error(
                        &mut out,
                        &Failure::new(
                            None,
                            Code::FrameTooLong,
                            format!(
                                "request line exceeds {} bytes; closing",
                                limits.max_frame_bytes
                            ),
                        ),
                    );
                    segments.push(Segment {
                        start,
                        end: out.len(),
                        token: false,
                    });
                    close = true;
                    break;
                }
            }
        }
        inbuf.advance(splitter.consumed());
        splitter.reset();
        // A last line without `\n` before EOF (e.g. `printf … | socat`).
        if eof && !inbuf.trim_ascii().is_empty() {
            segments.push(answer(service, &inbuf, &peer, &mut out, &mut records).await);
        }
        if !segments.is_empty() {
            last_request = Instant::now();
        }
        partial_since = if inbuf.is_empty() {
            None
        } else {
            partial_since.or(Some(Instant::now()))
        };
        // Group commit: the records of this batch are durable before any
        // reply they cover leaves. If they cannot be written, no token does.
        if !records.is_empty()
            && let Some(audit) = &service.audit
            && !audit.commit(std::mem::take(&mut records)).await
        {
            out = withhold_tokens(&out, &segments);
        }
        records.clear();
        segments.clear();
        if !out.is_empty() {
            match tokio::time::timeout(limits.write_timeout, wr.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::debug!(uid, "closing a connection that does not read its responses");
                    break;
                }
            }
            out.clear();
        }
        if close {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

/// Rebuild a batch's output with every token-carrying response replaced by
/// an `audit_unavailable` error (the id is read back from the response).
fn withhold_tokens(out: &[u8], segments: &[Segment]) -> Vec<u8> {
    let mut rebuilt = Vec::with_capacity(out.len());
    for s in segments {
        if s.token {
            let id = serde_json::from_slice::<Value>(&out[s.start..s.end])
                .ok()
                .and_then(|v| v.get("id").cloned());
            protocol::write_error(
                &mut rebuilt,
                &Failure::new(
                    id,
                    Code::AuditUnavailable,
                    "the audit log cannot be written; no token was issued",
                ),
            );
        } else {
            rebuilt.extend_from_slice(&out[s.start..s.end]);
        }
    }
    rebuilt
}
