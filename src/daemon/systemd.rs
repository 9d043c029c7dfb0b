//! `systemd` speaks to the service manager: socket activation
//! (`LISTEN_FDS`), readiness, status, reload, stopping and the watchdog
//! (`NOTIFY_SOCKET`). Without systemd every call is a no-op and the daemon
//! binds its own socket.
//!
//! The `unsafe` here is the adoption of the fd systemd passed
//! (`from_raw_fd`); it is checked to be a listening Unix stream socket first.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::error::{Error, Result};

/// The `FileDescriptorName=` the daemon looks for in `LISTEN_FDNAMES`.
pub const FD_NAME: &str = "splitsign";

/// Take the listening socket passed by systemd, if any. It must be for this
/// process (`LISTEN_PID`), named [`FD_NAME`] (or be the only fd, unnamed),
/// and be a listening Unix stream socket. Anything else is an error: a
/// daemon that silently bound its own socket instead would not be reachable
/// where the unit says.
pub fn take_listener() -> Result<Option<std::os::unix::net::UnixListener>> {
    let bad = |m: String| Error::Usage(format!("socket activation: {m}"));
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(|e| bad(format!("invalid LISTEN_FDS/LISTEN_PID: {e}")))?
        .collect();
    if fds.is_empty() {
        return Ok(None);
    }
    let chosen = match fds.iter().find(|(_, name)| name == FD_NAME) {
        Some(&(fd, _)) => fd,
        None if fds.len() == 1 && matches!(fds[0].1.as_str(), "" | "unknown" | "stored") => {
            fds[0].0
        }
        None => {
            let names: Vec<&str> = fds.iter().map(|(_, n)| n.as_str()).collect();
            return Err(bad(format!(
                "{} fds passed ({}), none named {FD_NAME:?} (FileDescriptorName=)",
                fds.len(),
                names.join(", ")
            )));
        }
    };
    // SAFETY: systemd passed `chosen` to this process (LISTEN_PID matched);
    // it stays open for the life of the process and nothing else uses it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(chosen) };
    use rustix::net::sockopt;
    let is_unix =
        sockopt::socket_domain(borrowed).is_ok_and(|d| d == rustix::net::AddressFamily::UNIX);
    let is_stream =
        sockopt::socket_type(borrowed).is_ok_and(|t| t == rustix::net::SocketType::STREAM);
    let listening = sockopt::socket_acceptconn(borrowed).unwrap_or(false);
    if !(is_unix && is_stream && listening) {
        return Err(bad(format!(
            "fd {chosen} is not a listening Unix stream socket"
        )));
    }
    // SAFETY: checked above to be a listening AF_UNIX stream socket that this
    // process owns; ownership moves into the listener, which closes it.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(chosen) };
    listener
        .set_nonblocking(true)
        .map_err(|e| bad(format!("fd {chosen}: {e}")))?;
    Ok(Some(listener))
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// READY=1 with a STATUS line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Not ready yet: a STATUS line, and more time to get ready (so that
/// `TimeoutStartSec=` does not end a start that waits for a server).
pub fn waiting(status: &str, extend: Duration) {
    let usec = u32::try_from(extend.as_micros()).unwrap_or(u32::MAX);
    notify(&[
        NotifyState::Status(status),
        NotifyState::ExtendTimeoutUsec(usec),
    ]);
}

/// While it lives, a long start step: STATUS= says what it is, and
/// systemd is asked for more time every 10 s (30 s at a time), so
/// `TimeoutStartSec=` does not end it. Dropped when the step ends.
pub struct KeepStarting {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepStarting {
    pub fn new(status: String) -> KeepStarting {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("starting".into())
            .spawn(move || {
                loop {
                    waiting(&status, Duration::from_secs(30));
                    match stopped.recv_timeout(Duration::from_secs(10)) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })
            .ok();
        KeepStarting {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for KeepStarting {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// RELOADING=1 (with the monotonic timestamp newer systemd wants).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    notify(&states);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
