//! `server` owns the Unix socket: binding, the accept loop, admission of
//! each peer before a byte is read (its policy, its uid's share of the
//! connections: see `admission`), and one task per connection that reads
//! lines, answers them in order and writes the answers in batches.
//!
//! A request crosses few hops: read → split line → parse → authorize →
//! sign or verify inline (~20–40 µs of CPU, cheaper than a thread hop) →
//! append the response. Replies are written with one `write_all` once their
//! audit records are committed, as soon as [`REPLY_BATCH`] bytes of them
//! wait or the input read so far is answered; the connection reads nothing
//! more until they are written, which is the backpressure on pipelining
//! clients. So a connection holds at most one read chunk and one partial
//! line of input (`max_frame_bytes`) and about [`REPLY_BATCH`] of replies,
//! and an idle connection holds no buffer at all.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Caps, Ticket};
use crate::error::{Error, Result};
use crate::protocol::{self, Code, Failure, Frame, LineSplitter};
use crate::service::{Handled, Peer, Service};
use crate::store::audit_log::Record;

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

/// Limits of the accept loop and connections. All but `max_frame_bytes`
/// and `max_connections` follow a reload (each connection reads them at
/// every turn of its loop, admission at every accept).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub admin_connections: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            max_connections: cfg.max_connections,
            max_connections_per_peer: cfg.max_connections_per_peer,
            admin_connections: cfg.admin_connections,
            max_frame_bytes: cfg.max_frame_bytes,
            idle_timeout: cfg.idle_timeout,
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
        }
    }

    fn caps(&self) -> Caps {
        Caps {
            max_connections: self.max_connections,
            per_peer: self.max_connections_per_peer,
            admin_reserve: self.admin_connections,
        }
    }
}

/// Read at most this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Replies are written once this many bytes of them wait: with one read
/// chunk and one partial line, the bound on a connection's memory.
pub const REPLY_BATCH: usize = 32 * 1024;

/// How long a sign request that found no key able to sign waits for the
/// key schedule to make one (after a clock jump), before `unavailable`.
const AWAIT_KEY: Duration = Duration::from_secs(2);

/// Accept and serve until `shutdown` is cancelled, then wait (bounded) for
/// open connections to finish what they have read.
pub async fn run(listener: UnixListener, service: Arc<Service>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
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
                        crate::lifecycle::wall_now(),
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
        let Some((peer, ticket)) = admit(&service, &stream) else {
            continue;
        };
        let service = Arc::clone(&service);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            Connection::new(stream, &service, peer, ticket)
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
fn admit(service: &Service, stream: &UnixStream) -> Option<(Peer, Ticket)> {
    let cred = stream.peer_cred().ok()?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let access = service.access();
    let refuse = |code: Code, message: String| {
        let mut line = Vec::new();
        protocol::write_error(&mut line, &Failure::new(None, code, message));
        // A new connection's socket buffer is empty: this never blocks.
        let _ = stream.try_write(&line);
        service.tally_refusal(uid, pid, "connect", code.as_str());
    };
    let Some(policy) = access.for_peer(uid, gid) else {
        service.log_refusal(uid, "connection refused: no policy matches this peer");
        refuse(Code::Forbidden, "this peer may not use the daemon".into());
        return None;
    };
    match service
        .admission
        .admit(uid, access.is_admin(uid), service.limits().caps())
    {
        Ok((ticket, evicted)) => {
            if let Some(e) = evicted {
                tracing::info!(
                    uid = e.uid,
                    idle_ms = e.idle_ms,
                    newcomer = uid,
                    "connections full: closed the longest-idle connection of the busiest uid"
                );
                service.tally_refusal(e.uid, None, "connect", "evicted");
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
            service.log_refusal(uid, "connection refused: busy");
            refuse(Code::Busy, why.to_string());
            None
        }
    }
}

/// One response in a batch: where it is in the output buffer, and, for a
/// response that carries a token, the request's id (to answer
/// `audit_unavailable` in its place if the audit commit fails).
struct Segment {
    start: usize,
    end: usize,
    token_id: Option<Option<Value>>,
}

/// Replies waiting to be written, and the audit records that must be
/// committed before they leave.
#[derive(Default)]
struct Batch {
    out: Vec<u8>,
    segments: Vec<Segment>,
    records: Vec<Record>,
}

enum Read {
    Data,
    Eof,
    Close,
}

struct Connection<'a> {
    service: &'a Service,
    stream: UnixStream,
    peer: Peer,
    ticket: Ticket,
    input: BytesMut,
    splitter: LineSplitter,
    batch: Batch,
    last_request: Instant,
    /// Since when a started line waits for its end (slow clients).
    partial_since: Option<Instant>,
}

impl<'a> Connection<'a> {
    fn new(stream: UnixStream, service: &'a Service, peer: Peer, ticket: Ticket) -> Self {
        Connection {
            splitter: LineSplitter::new(service.limits().max_frame_bytes),
            service,
            stream,
            peer,
            ticket,
            input: BytesMut::new(),
            batch: Batch::default(),
            last_request: Instant::now(),
            partial_since: None,
        }
    }

    /// Read, answer, write, until the peer is done, times out, is evicted,
    /// or the daemon stops.
    async fn serve(mut self, shutdown: &CancellationToken) {
        loop {
            let limits = *self.service.limits();
            let read = self.read(&limits, shutdown).await;
            let eof = match read {
                Read::Close => break,
                Read::Eof => true,
                Read::Data => false,
            };
            if !self.answer_input(&limits, eof).await || eof {
                break;
            }
            self.release_buffers();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }

    /// Wait for bytes and append them to the input: until the read deadline
    /// of a started line (`read_timeout`) or the idle deadline
    /// (`idle_timeout`), the daemon's shutdown, or an eviction.
    async fn read(&mut self, limits: &Limits, shutdown: &CancellationToken) -> Read {
        let deadline = match self.partial_since {
            Some(t) => t + limits.read_timeout,
            None => self.last_request + limits.idle_timeout,
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Read::Close,
                _ = self.ticket.evicted.cancelled() => return Read::Close,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(uid = self.peer.uid, "closing a connection: read or idle timeout");
                    return Read::Close;
                }
                r = self.stream.readable() => if r.is_err() {
                    return Read::Close;
                },
            }
            if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
                self.input.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(&mut self.input) {
                Ok(0) => return Read::Eof,
                Ok(_) => return Read::Data,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Read::Close,
            }
        }
    }

    /// Answer every complete line of the input (and, at EOF, an
    /// unterminated last one), writing the replies whenever
    /// [`REPLY_BATCH`] bytes of them wait. Returns false to close.
    async fn answer_input(&mut self, limits: &Limits, eof: bool) -> bool {
        let Connection {
            service,
            stream,
            peer,
            input,
            splitter,
            batch,
            ..
        } = self;
        let mut answered = false;
        let mut close = false;
        while let Some(frame) = splitter.next(input) {
            match frame {
                Frame::Line(line) if line.trim_ascii().is_empty() => {}
                Frame::Line(line) => {
                    answer(service, line, peer, batch).await;
                    answered = true;
                    if batch.out.len() >= REPLY_BATCH
                        && !flush(service, stream, batch, limits).await
                    {
                        return false;
                    }
                }
                Frame::TooLong => {
                    batch.push_error(Failure::new(
                        None,
                        Code::FrameTooLong,
                        format!(
                            "request line exceeds {} bytes; closing",
                            limits.max_frame_bytes
                        ),
                    ));
                    close = true;
                    break;
                }
            }
        }
        input.advance(splitter.consumed());
        splitter.reset();
        // A last line without `\n` before EOF (e.g. `printf … | socat`).
        if eof && !close && !input.trim_ascii().is_empty() {
            answer(service, input, peer, batch).await;
            answered = true;
        }
        if answered {
            self.last_request = Instant::now();
            self.ticket.touch();
        }
        self.partial_since = if self.input.is_empty() {
            None
        } else {
            self.partial_since.or(Some(Instant::now()))
        };
        flush(self.service, &mut self.stream, &mut self.batch, limits).await && !close
    }

    /// Give the buffers back between requests: an idle connection holds
    /// none, and one large request leaves no large buffer behind.
    fn release_buffers(&mut self) {
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        self.batch = Batch::default();
    }
}

/// Answer one request line (admin ops on a blocking thread) into the batch.
async fn answer(service: &Service, line: &[u8], peer: &Peer, batch: &mut Batch) {
    let start = batch.out.len();
    let mut handled = service.handle(line, peer, &mut batch.out, &mut batch.records, false);
    if let Handled::AwaitKey = handled {
        service.await_key(AWAIT_KEY).await;
        handled = service.handle(line, peer, &mut batch.out, &mut batch.records, true);
    }
    let token_id = match handled {
        Handled::Reply => None,
        Handled::Token { id } => Some(id),
        Handled::Admin(req) => {
            service
                .run_admin(req, peer, &mut batch.out, &mut batch.records)
                .await;
            None
        }
        Handled::AwaitKey => unreachable!("a retried line is answered"),
    };
    batch.segments.push(Segment {
        start,
        end: batch.out.len(),
        token_id,
    });
}

/// Commit the batch's audit records (group commit), then write its
/// replies, within `write_timeout`. If the records cannot be committed, no
/// token leaves: each token reply becomes an `audit_unavailable` error.
/// Returns false when the connection should close.
async fn flush(
    service: &Service,
    stream: &mut UnixStream,
    batch: &mut Batch,
    limits: &Limits,
) -> bool {
    if batch.out.is_empty() {
        return true;
    }
    if !batch.records.is_empty()
        && let Some(audit) = &service.audit
        && !audit.commit(std::mem::take(&mut batch.records)).await
    {
        batch.withhold_tokens();
    }
    batch.records.clear();
    let written = tokio::time::timeout(limits.write_timeout, stream.write_all(&batch.out)).await;
    batch.out.clear();
    batch.segments.clear();
    match written {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!("closing a connection that does not read its responses");
            false
        }
    }
}

impl Batch {
    fn push_error(&mut self, f: Failure) {
        let start = self.out.len();
        protocol::write_error(&mut self.out, &f);
        self.segments.push(Segment {
            start,
            end: self.out.len(),
            token_id: None,
        });
    }

    /// Replace every token-carrying reply with an `audit_unavailable` error
    /// for the same request id.
    fn withhold_tokens(&mut self) {
        let mut rebuilt = Vec::with_capacity(self.out.len());
        for s in &self.segments {
            match &s.token_id {
                Some(id) => protocol::write_error(
                    &mut rebuilt,
                    &Failure::new(
                        id.clone(),
                        Code::AuditUnavailable,
                        "the audit log cannot be written; no token was issued",
                    ),
                ),
                None => rebuilt.extend_from_slice(&self.out[s.start..s.end]),
            }
        }
        self.out = rebuilt;
    }
}
