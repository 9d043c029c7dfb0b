//! `client` talks to a running daemon over its socket. The CLI uses it; a
//! Rust app server can too (see `examples/rust_client.rs`).
//!
//! A [`Client`] is blocking and holds one connection. Pipeline on it with
//! [`Client::send`] (many requests) then [`Client::receive`] (their
//! responses, in order). From many threads or tasks, share a [`Pool`]: each
//! call borrows an idle connection, or opens one. Errors carry the daemon's
//! stable error code ([`ClientError::code`], [`ClientError::kind`]).
//!
//! ```no_run
//! let mut c = splitsign::client::Client::connect("var/splitsign.sock")?;
//! let mut claims = serde_json::Map::new();
//! claims.insert("sub".into(), "alice".into());
//! let signed = c.sign(&claims, Some(300))?;
//! let verified = c.verify(&signed.token, None)?;
//! assert_eq!(verified.claims["sub"], "alice");
//! # Ok::<(), splitsign::client::ClientError>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Longest response line accepted from the daemon.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from the daemon at {path} within {}s", timeout.as_secs_f64())]
    Timeout {
        path: PathBuf,
        timeout: std::time::Duration,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an invalid response: {0}")]
    Protocol(String),
    /// The daemon answered with an error; `code` is one of the stable codes
    /// of `protocol::Code`.
    #[error("{message} ({code})")]
    Daemon { code: String, message: String },
}

impl ClientError {
    /// Whether no daemon listens at the socket (missing, or refused): the
    /// one case where admin commands fall back to working offline. Any
    /// other failure (permission denied…) is reported, never worked around.
    pub fn no_daemon(&self) -> bool {
        matches!(self, ClientError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }

    /// The daemon's error code, if the daemon answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Daemon { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The daemon's error code as a [`Code`](crate::protocol::Code), if it
    /// is one this client knows.
    pub fn kind(&self) -> Option<crate::protocol::Code> {
        self.code().and_then(crate::protocol::Code::parse)
    }
}

#[derive(Debug, Clone)]
pub struct SignedToken {
    pub token: String,
    pub kid: String,
    pub exp: i64,
    pub jti: String,
}

#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: Map<String, Value>,
    pub kid: String,
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    path: PathBuf,
    timeout: Option<std::time::Duration>,
}

impl Client {
    /// Connect, waiting as long as it takes; no timeout on replies.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Client::on(stream, path, None)
    }

    /// Connect within `timeout` (a daemon whose listen backlog is full
    /// does not accept at once), and wait at most `timeout` for each reply
    /// (and each write). Running out is [`ClientError::Timeout`].
    pub fn connect_timeout(
        path: impl AsRef<Path>,
        timeout: std::time::Duration,
    ) -> Result<Client, ClientError> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let path = path.as_ref();
        let connect_err = |source: std::io::Error| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let addr = SocketAddrUnix::new(path).map_err(|e| connect_err(e.into()))?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let fd = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )
            .map_err(|e| connect_err(e.into()))?;
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => {
                    let stream = UnixStream::from(fd);
                    stream.set_nonblocking(false)?;
                    return Client::on(stream, path, Some(timeout));
                }
                // A Unix socket whose backlog is full says EAGAIN at once:
                // try again until the deadline.
                Err(rustix::io::Errno::AGAIN) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(ClientError::Timeout {
                        path: path.to_owned(),
                        timeout,
                    });
                }
                Err(e) => return Err(connect_err(e.into())),
            }
        }
    }

    fn on(
        stream: UnixStream,
        path: &Path,
        timeout: Option<std::time::Duration>,
    ) -> Result<Client, ClientError> {
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            path: path.to_owned(),
            timeout,
        })
    }

    /// An I/O error, or [`ClientError::Timeout`] when a timeout ran out.
    fn io(&self, e: std::io::Error) -> ClientError {
        match (e.kind(), self.timeout) {
            (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut, Some(timeout)) => {
                ClientError::Timeout {
                    path: self.path.clone(),
                    timeout,
                }
            }
            _ => ClientError::Io(e),
        }
    }

    /// Send one request without waiting; returns its id.
    pub fn send(&mut self, op: &str, mut fields: Map<String, Value>) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        fields.insert("id".into(), id.into());
        fields.insert("op".into(), op.into());
        let mut line = serde_json::to_vec(&fields).expect("a JSON map serializes");
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|e| self.io(e))?;
        Ok(id)
    }

    /// Read the next response; it must carry `id`. Returns its fields on
    /// `ok: true`, the daemon's error otherwise.
    pub fn receive(&mut self, id: u64) -> Result<Map<String, Value>, ClientError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_RESPONSE)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(ClientError::Protocol("connection closed".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol(
                "response line is truncated or too long".into(),
            ));
        }
        let Value::Object(mut obj) = serde_json::from_slice(&line)
            .map_err(|_| ClientError::Protocol("response is not JSON".into()))?
        else {
            return Err(ClientError::Protocol(
                "response is not a JSON object".into(),
            ));
        };
        if obj.get("ok") == Some(&Value::Bool(false)) {
            let err = obj.remove("error").unwrap_or_default();
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            return Err(ClientError::Daemon {
                code: field("code"),
                message: field("message"),
            });
        }
        if obj.get("id").and_then(Value::as_u64) != Some(id) {
            return Err(ClientError::Protocol(format!(
                "expected the response to request {id}"
            )));
        }
        Ok(obj)
    }

    /// Send one request and wait for its response.
    pub fn call(
        &mut self,
        op: &str,
        fields: Map<String, Value>,
    ) -> Result<Map<String, Value>, ClientError> {
        let id = self.send(op, fields)?;
        self.receive(id)
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.call("ping", Map::new()).map(|_| ())
    }

    /// Sign `claims` with an optional TTL in seconds.
    pub fn sign(
        &mut self,
        claims: &Map<String, Value>,
        ttl: Option<u64>,
    ) -> Result<SignedToken, ClientError> {
        self.sign_bound(claims, ttl, None)
    }

    /// [`Client::sign`], the token bound to a client `fingerprint` when
    /// one is given (`verify` then needs the same fingerprint).
    pub fn sign_bound(
        &mut self,
        claims: &Map<String, Value>,
        ttl: Option<u64>,
        fingerprint: Option<&str>,
    ) -> Result<SignedToken, ClientError> {
        let mut f = Map::new();
        f.insert("claims".into(), Value::Object(claims.clone()));
        if let Some(t) = ttl {
            f.insert("ttl".into(), t.into());
        }
        if let Some(fp) = fingerprint {
            f.insert("fingerprint".into(), fp.into());
        }
        let r = self.call("sign", f)?;
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ClientError::Protocol(format!("sign response lacks `{k}`")))
        };
        Ok(SignedToken {
            token: s("token")?,
            kid: s("kid")?,
            jti: s("jti")?,
            exp: r
                .get("exp")
                .and_then(Value::as_i64)
                .ok_or_else(|| ClientError::Protocol("sign response lacks `exp`".into()))?,
        })
    }

    /// Ask the daemon to verify `token` (optionally for audience `aud`).
    pub fn verify(&mut self, token: &str, aud: Option<&str>) -> Result<VerifiedToken, ClientError> {
        self.verify_bound(token, aud, None)
    }

    /// [`Client::verify`] with the client `fingerprint` a bound token
    /// needs (a bound token without it, or with another, is refused:
    /// `fingerprint_mismatch`).
    pub fn verify_bound(
        &mut self,
        token: &str,
        aud: Option<&str>,
        fingerprint: Option<&str>,
    ) -> Result<VerifiedToken, ClientError> {
        let mut f = Map::new();
        f.insert("token".into(), token.into());
        if let Some(a) = aud {
            f.insert("aud".into(), a.into());
        }
        if let Some(fp) = fingerprint {
            f.insert("fingerprint".into(), fp.into());
        }
        let mut r = self.call("verify", f)?;
        let Some(Value::Object(claims)) = r.remove("claims") else {
            return Err(ClientError::Protocol(
                "verify response lacks `claims`".into(),
            ));
        };
        let kid = r
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(VerifiedToken { claims, kid })
    }

    /// The published keys, as a JWKS object.
    pub fn jwks(&mut self) -> Result<Value, ClientError> {
        self.call("jwks", Map::new())?
            .remove("jwks")
            .ok_or_else(|| ClientError::Protocol("jwks response lacks `jwks`".into()))
    }

    /// The daemon's status object.
    pub fn status(&mut self) -> Result<Value, ClientError> {
        self.call("status", Map::new())?
            .remove("status")
            .ok_or_else(|| ClientError::Protocol("status response lacks `status`".into()))
    }
}

/// Connections shared by many threads (or blocking tasks): each call takes
/// an idle connection or opens one, and puts it back after a clean answer.
pub struct Pool {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<Client>>,
}

impl Pool {
    pub fn new(path: impl AsRef<Path>) -> Pool {
        Pool {
            path: path.as_ref().to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Run `f` on a connection. A connection that failed below the protocol
    /// (I/O, a bad response) is dropped, not reused.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut client = match taken {
            Some(c) => c,
            None => Client::connect(&self.path)?,
        };
        let result = f(&mut client);
        if matches!(result, Ok(_) | Err(ClientError::Daemon { .. })) {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(client);
        }
        result
    }

    pub fn sign(
        &self,
        claims: &Map<String, Value>,
        ttl: Option<u64>,
    ) -> Result<SignedToken, ClientError> {
        self.with(|c| c.sign(claims, ttl))
    }

    pub fn verify(&self, token: &str, aud: Option<&str>) -> Result<VerifiedToken, ClientError> {
        self.with(|c| c.verify(token, aud))
    }
}
