//! `listen`: the other nodes' `NOTIFY`s of changed keys and revocations,
//! heard on a connection of their own and gathered (as flags, never a
//! queue) until the follower takes them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{AsyncMessage, Connection};

use super::Postgres;
use super::errors::error_text;

/// What the other nodes changed, as their `NOTIFY`s say (hints only: the
/// node re-reads), gathered until the follower takes them. A flood of
/// notifications sets a flag; it never grows a queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    pub keys: bool,
    pub revocations: bool,
    /// The listening connection was (re)established: anything may have
    /// been missed; re-read everything.
    pub connected: bool,
    /// The listening connection was lost (the latest reason); the node
    /// works on what it knows.
    pub lost: Option<String>,
    /// The server refuses this node's login (the latest reason).
    pub refused: Option<String>,
    /// Notifications received since the last take.
    pub notifications: u64,
}

impl Changed {
    /// What `later` adds to what changed before it.
    pub fn merge(&mut self, later: Changed) {
        self.keys |= later.keys;
        self.revocations |= later.revocations;
        self.connected |= later.connected;
        if later.connected {
            self.lost = None;
            self.refused = None;
        }
        if later.lost.is_some() {
            self.lost = later.lost;
        }
        if later.refused.is_some() {
            self.refused = later.refused;
        }
        self.notifications += later.notifications;
    }

    fn any(&self) -> bool {
        self.keys
            || self.revocations
            || self.connected
            || self.lost.is_some()
            || self.refused.is_some()
    }
}

/// Where the listening connection leaves what it heard.
#[derive(Default)]
pub struct Listener {
    state: Mutex<Changed>,
    ready: tokio::sync::Notify,
}

impl Listener {
    pub(super) fn update(&self, f: impl FnOnce(&mut Changed)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.ready.notify_one();
    }

    /// Wait until something changed, and take it all.
    pub async fn changed(&self) -> Changed {
        loop {
            let wait = self.ready.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.any() {
                    return std::mem::take(&mut *s);
                }
            }
            wait.await;
        }
    }

    /// Take what changed meanwhile, without waiting.
    pub fn take(&self) -> Changed {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Postgres {
    /// Listen for other nodes' changes on a connection of its own, kept up
    /// with backoff (50 ms, doubling, at most 1 s), for as long as the
    /// listener lives. `Changed::connected` follows each (re)connection.
    pub fn listen(&self) -> Arc<Listener> {
        let listener = Arc::new(Listener::default());
        let weak = Arc::downgrade(&listener);
        let connector = self.connector.clone();
        self.rt().spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let Some(l) = weak.upgrade() else {
                    return;
                };
                let listening = async {
                    let (client, driver) = connector.connect(Some(Arc::clone(&l))).await?;
                    client
                        .batch_execute("LISTEN splitsign_keys; LISTEN splitsign_revocations")
                        .await?;
                    Ok::<_, tokio_postgres::Error>((client, driver))
                };
                match listening.await {
                    Ok((client, driver)) => {
                        backoff = Duration::from_millis(50);
                        l.update(|c| {
                            c.connected = true;
                            c.lost = None;
                            c.refused = None;
                        });
                        drop(l);
                        // Until the connection ends (the driver says so).
                        let _ = driver.await;
                        drop(client);
                    }
                    Err(e) => {
                        let why = error_text(&e);
                        let refused = e
                            .code()
                            .is_some_and(|c| crate::error::is_refusal_code(c.code()));
                        l.update(|c| {
                            if refused {
                                c.refused = Some(why);
                            } else {
                                c.lost = Some(why);
                            }
                        });
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
        listener
    }
}

/// Drive a connection until it ends, noting which table each `NOTIFY`
/// names (its payload is not read: any role may send any).
pub(super) async fn drive<S, T>(mut conn: Connection<S, T>, notes: Option<Arc<Listener>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(l) = &notes {
                    let keys = n.channel() == "splitsign_keys";
                    l.update(|c| {
                        c.notifications += 1;
                        if keys {
                            c.keys = true;
                        } else {
                            c.revocations = true;
                        }
                    });
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    if let Some(l) = &notes {
        l.update(|c| c.lost = Some("the listening connection closed".into()));
    }
}
