//! `server` owns the Unix socket: binding, the accept loop with a connection
//! limit, and one task per connection that reads lines, answers them in
//! order and writes the answers in batches.
//!
//! A request crosses few hops: read → split line → parse → `Service::handle`
//! (sign or verify inline; ~20–40 µs of CPU, cheaper than a thread hop) →
//! append the response. Responses for everything already read are written
//! with one `write_all`; the connection reads no more until they are
//! written, which is the backpressure on pipelining clients.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::keyring;
use crate::manager::Manager;
use crate::protocol::{self, Code, Failure, Frame, LineSplitter, Op, Request};
use crate::token::{self, Policy, SignError, VerifyError};

/// What every connection shares: the keys (through the manager), the
/// policy, and who may use admin ops.
pub struct Service {
    pub manager: Arc<Manager>,
    /// Swapped as a whole on reload; requests clone the `Arc`.
    policy: RwLock<Arc<Policy>>,
    pub started: Instant,
    /// Peers with these uids may use admin ops (default: root and the
    /// daemon's own uid).
    pub admin_uids: Vec<u32>,
    pub health: Health,
}

/// What the watchdog looks at besides a test signature: whether the accept
/// loop is stuck failing (EMFILE and the like).
#[derive(Debug, Default)]
pub struct Health {
    /// Unix seconds since when accept() has failed without a success; 0
    /// when it is fine.
    accept_failing_since: AtomicI64,
}

impl Health {
    /// How long accept() has been failing, if it is.
    pub fn accept_failing_for(&self, now: i64) -> Option<i64> {
        match self.accept_failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now - since),
        }
    }
}

/// The connecting process, from SO_PEERCRED at accept time.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// An admin request, run off the connection's task on a blocking thread.
pub struct AdminJob {
    req: Request,
}

#[derive(Serialize)]
struct KeyStatus<'a> {
    kid: &'a str,
    state: &'static str,
    origin: &'static str,
    created_at: i64,
    activate_at: i64,
    deactivate_at: i64,
    retire_at: i64,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    version: &'static str,
    issuer: &'a str,
    alg: &'static str,
    active_kid: Option<&'a str>,
    uptime_s: u64,
    now: i64,
    next_transition: Option<i64>,
    keys: Vec<KeyStatus<'a>>,
}

#[derive(Serialize)]
struct RotateOk<'a> {
    kid: &'a str,
    previous: Option<&'a str>,
    emergency: bool,
}

#[derive(Serialize)]
struct ReshareKey<'a> {
    kid: &'a str,
    generation: u32,
}

#[derive(Serialize)]
struct ReshareOk<'a> {
    keys: Vec<ReshareKey<'a>>,
}

#[derive(Serialize)]
struct StatusOk<'a> {
    status: StatusBody<'a>,
}

impl Service {
    pub fn new(
        manager: Arc<Manager>,
        policy: Policy,
        started: Instant,
        admin_uids: Vec<u32>,
    ) -> Service {
        Service {
            manager,
            policy: RwLock::new(Arc::new(policy)),
            started,
            admin_uids,
            health: Health::default(),
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub fn set_policy(&self, policy: Policy) {
        let policy = Arc::new(policy);
        match self.policy.write() {
            Ok(mut g) => *g = policy,
            Err(p) => *p.into_inner() = policy,
        }
    }

    /// The watchdog's check: accept() is not stuck failing for more than
    /// `grace`, and the key that should sign now signs a test token.
    pub fn healthy(&self, grace: Duration) -> bool {
        let now = self.manager.clock.now();
        if self
            .health
            .accept_failing_for(now)
            .is_some_and(|d| d as u64 >= grace.as_secs().max(1))
        {
            return false;
        }
        let keys = self.manager.keyring.snapshot();
        keys.signer_at(now).is_some_and(|s| {
            token::sign(s, &self.policy(), &serde_json::Map::new(), Some(1), now).is_ok()
        })
    }

    /// Answer one request line, appending the response to `out`. Admin
    /// ops are handed back as an [`AdminJob`] for [`Service::run_admin`].
    pub fn handle(&self, line: &[u8], peer: Peer, out: &mut Vec<u8>) -> Option<AdminJob> {
        let req = match protocol::parse_request(line) {
            Ok(r) => r,
            Err(f) => {
                protocol::write_error(out, &f);
                return None;
            }
        };
        let id = req.id.as_ref();
        let fail = |code, msg: String| Failure::new(req.id.clone(), code, msg);
        if req.op.is_admin() {
            if !self.admin_uids.contains(&peer.uid) {
                tracing::warn!(uid = peer.uid, pid = ?peer.pid, "admin op refused: not an admin uid");
                protocol::write_error(
                    out,
                    &fail(Code::Forbidden, "admin ops need an admin uid".into()),
                );
                return None;
            }
            return Some(AdminJob { req });
        }
        let now = self.manager.clock.now();
        let policy = self.policy();
        match &req.op {
            Op::Ping => protocol::write_ok(out, id, protocol::PingOk { pong: true }),
            Op::Sign { claims, ttl } => {
                let keys = self.manager.keyring.snapshot();
                let Some(signer) = keys.signer_at(now) else {
                    protocol::write_error(
                        out,
                        &fail(Code::Unavailable, "no key may sign now".into()),
                    );
                    return None;
                };
                match token::sign(signer, &policy, claims, *ttl, now) {
                    Ok(s) => protocol::write_ok(
                        out,
                        id,
                        protocol::SignOk {
                            token: &s.token,
                            kid: &signer.kid,
                            exp: s.exp,
                            jti: &s.jti,
                        },
                    ),
                    Err(e) => {
                        let (code, msg) = match e {
                            SignError::ReservedClaim(name) => (
                                Code::ReservedClaim,
                                format!("claim {name:?} is set by the daemon"),
                            ),
                            SignError::TtlTooLong { ttl, max } => (
                                Code::TtlTooLong,
                                format!("ttl {ttl}s exceeds max_ttl {max}s"),
                            ),
                            SignError::TokenTooLarge { size, max } => (
                                Code::TokenTooLarge,
                                format!("token would be {size} bytes; max_token_bytes is {max}"),
                            ),
                            SignError::Random => {
                                tracing::error!("the OS random generator failed");
                                (Code::Internal, "internal error".into())
                            }
                        };
                        protocol::write_error(out, &fail(code, msg));
                    }
                }
            }
            Op::Verify { token, aud } => {
                let keys = self.manager.keyring.snapshot();
                match token::verify(&keys, &policy, token, aud.as_deref(), now) {
                    Ok(v) => protocol::write_ok(
                        out,
                        id,
                        protocol::VerifyOk {
                            claims: &v.claims,
                            kid: &v.kid,
                        },
                    ),
                    Err(e) => {
                        let (code, msg) = match e {
                            VerifyError::Invalid(why) => (Code::InvalidToken, why.to_owned()),
                            VerifyError::UnknownKey => (
                                Code::UnknownKey,
                                "no published key with the token's kid verifies now".into(),
                            ),
                            VerifyError::Expired => {
                                (Code::TokenExpired, "token has expired".into())
                            }
                            VerifyError::NotYetValid => (
                                Code::TokenNotYetValid,
                                "token is not valid yet (nbf)".into(),
                            ),
                            VerifyError::AudienceMismatch => (
                                Code::AudienceMismatch,
                                "token is not issued for that audience".into(),
                            ),
                        };
                        protocol::write_error(out, &fail(code, msg));
                    }
                }
            }
            Op::Jwks => {
                let keys = self.manager.keyring.snapshot();
                protocol::write_ok(out, id, protocol::JwksOk { jwks: &keys.jwks });
            }
            Op::Status => {
                let keys = self.manager.keyring.snapshot();
                let rows: Vec<_> = keys.published.iter().map(|p| p.row.clone()).collect();
                let body = StatusBody {
                    version: env!("CARGO_PKG_VERSION"),
                    issuer: &policy.issuer,
                    alg: policy.alg.as_str(),
                    active_kid: keys.signer_at(now).map(|s| s.kid.as_str()),
                    uptime_s: self.started.elapsed().as_secs(),
                    now,
                    next_transition: crate::lifecycle::next_event(
                        &rows,
                        now,
                        &self.manager.config(),
                    ),
                    keys: keys
                        .published
                        .iter()
                        .map(|p| KeyStatus {
                            kid: &p.row.kid,
                            state: keyring::state(&p.row, now).as_str(),
                            origin: match p.row.origin {
                                crate::store::Origin::Generated => "generated",
                                crate::store::Origin::Imported => "imported",
                            },
                            created_at: p.row.created_at,
                            activate_at: p.row.activate_at,
                            deactivate_at: p.row.deactivate_at,
                            retire_at: p.row.retire_at,
                        })
                        .collect(),
                };
                protocol::write_ok(out, id, StatusOk { status: body });
            }
            Op::Rotate { .. } | Op::Reshare => unreachable!("admin ops return above"),
        }
        None
    }

    /// Run an admin op on a blocking thread and append its response.
    pub async fn run_admin(&self, job: AdminJob, peer: Peer, out: &mut Vec<u8>) {
        let manager = Arc::clone(&self.manager);
        let op = job.req.op.clone();
        tracing::info!(uid = peer.uid, pid = ?peer.pid, op = ?op, "admin op");
        let result = tokio::task::spawn_blocking(move || match op {
            Op::Rotate { emergency } => manager.rotate(emergency).map(|r| (Some(r), None)),
            Op::Reshare => manager.reshare().map(|r| (None, Some(r))),
            _ => unreachable!("only admin ops become jobs"),
        })
        .await;
        let id = job.req.id.as_ref();
        match result {
            Ok(Ok((Some(r), _))) => {
                let emergency = matches!(job.req.op, Op::Rotate { emergency: true });
                protocol::write_ok(
                    out,
                    id,
                    RotateOk {
                        kid: &r.kid,
                        previous: r.previous.as_deref(),
                        emergency,
                    },
                )
            }
            Ok(Ok((None, Some(keys)))) => protocol::write_ok(
                out,
                id,
                ReshareOk {
                    keys: keys
                        .iter()
                        .map(|(kid, generation)| ReshareKey {
                            kid,
                            generation: *generation,
                        })
                        .collect(),
                },
            ),
            Ok(Ok(_)) => unreachable!("each op returns its own result"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "admin op failed");
                let code = if matches!(e, Error::Usage(_)) {
                    Code::Refused
                } else {
                    Code::Internal
                };
                protocol::write_error(out, &Failure::new(job.req.id.clone(), code, e.to_string()));
            }
            Err(_) => protocol::write_error(
                out,
                &Failure::new(job.req.id.clone(), Code::Internal, "admin op panicked"),
            ),
        }
    }
}

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

/// Limits of the accept loop and connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_frame_bytes: usize,
}

/// Accept and serve until `shutdown` is cancelled, then wait (bounded) for
/// open connections to finish what they have read.
pub async fn run(
    listener: UnixListener,
    service: Arc<Service>,
    limits: Limits,
    shutdown: CancellationToken,
) {
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
            connection(stream, &service, limits.max_frame_bytes, &shutdown).await;
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

async fn connection(
    mut stream: UnixStream,
    service: &Service,
    max_frame: usize,
    shutdown: &CancellationToken,
) {
    // SO_PEERCRED, read before any byte: who connected, as the kernel says.
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let (mut rd, mut wr) = stream.split();
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut splitter = LineSplitter::new(max_frame);
    loop {
        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
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
                Frame::Line(line) => {
                    if !line.trim_ascii().is_empty()
                        && let Some(job) = service.handle(line, peer, &mut out)
                    {
                        service.run_admin(job, peer, &mut out).await;
                    }
                }
                Frame::TooLong => {
                    protocol::write_error(
                        &mut out,
                        &Failure::new(
                            None,
                            Code::FrameTooLong,
                            format!("request line exceeds {max_frame} bytes; closing"),
                        ),
                    );
                    close = true;
                    break;
                }
            }
        }
        inbuf.advance(splitter.consumed());
        splitter.reset();
        // A last line without `\n` before EOF (e.g. `printf … | socat`).
        if eof
            && !inbuf.trim_ascii().is_empty()
            && let Some(job) = service.handle(&inbuf, peer, &mut out)
        {
            service.run_admin(job, peer, &mut out).await;
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if close {
            break;
        }
    }
    let _ = wr.shutdown().await;
}
