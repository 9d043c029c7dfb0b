//! `admission` decides, right after `accept` and before a byte is read,
//! whether a connection may stay: every app server in the socket's group
//! shares one daemon, so no one peer uid may take it over.
//!
//! - A peer uid holds at most `max_connections_per_peer` connections; one
//!   more gets a `busy` line and is closed at once, never left waiting.
//! - `admin_connections` of the `max_connections` slots are kept for admin
//!   uids, so that `status`, `rotate --emergency` and `revoke` always get in.
//! - When the slots are all taken anyway (many uids), the longest-idle
//!   connection of the uid holding the most connections is closed to make
//!   room, rather than stalling the newcomer.
//!
//! The table is behind a std `Mutex`, held for a few hash-map operations at
//! accept and at close, never across an `.await`. A connection marks its
//! activity in an atomic it shares with its entry, without the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// The limits admission applies (from the config; they follow a reload).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_connections: usize,
    pub per_peer: usize,
    pub admin_reserve: usize,
}

struct Entry {
    uid: u32,
    admin: bool,
    activity: Arc<AtomicU64>,
    evict: CancellationToken,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    per_uid: HashMap<u32, usize>,
    /// Connections of peers that are not admin uids.
    others: usize,
}

pub struct Admission {
    table: Mutex<Table>,
    epoch: Instant,
}

/// A connection that was let in. Dropping it gives the slot back.
pub struct Ticket {
    id: u64,
    admission: Arc<Admission>,
    /// Cancelled when the connection is evicted to make room.
    pub evicted: CancellationToken,
    activity: Arc<AtomicU64>,
}

impl Ticket {
    /// Note that the connection did something (it is not idle).
    pub fn touch(&self) {
        self.activity
            .store(self.admission.millis(), Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.id);
    }
}

/// Why a connection was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Turnaway {
    /// Its uid already holds `per_peer` connections.
    PeerFull { uid: u32, held: usize },
    /// No slot, and no connection to evict for it.
    Full,
}

impl std::fmt::Display for Turnaway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Turnaway::PeerFull { uid, held } => write!(
                f,
                "uid {uid} already holds {held} connections, the most one peer may \
                 (max_connections_per_peer); closing"
            ),
            Turnaway::Full => f.write_str("the daemon has no free connection slot; closing"),
        }
    }
}

/// A connection closed to make room.
#[derive(Debug, PartialEq, Eq)]
pub struct Evicted {
    pub uid: u32,
    pub idle_ms: u64,
}

impl Admission {
    pub fn new() -> Arc<Admission> {
        Arc::new(Admission {
            table: Mutex::new(Table::default()),
            epoch: Instant::now(),
        })
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every change to the table is a few map operations that cannot
        // panic half-way; a poisoned lock still holds a consistent table.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let a connection of `uid` in, or say why not. May evict another
    /// connection to make room (returned, for the log).
    pub fn admit(
        self: &Arc<Self>,
        uid: u32,
        admin: bool,
        caps: Caps,
    ) -> Result<(Ticket, Option<Evicted>), Turnaway> {
        let mut t = self.table();
        let held = t.per_uid.get(&uid).copied().unwrap_or(0);
        if held >= caps.per_peer {
            return Err(Turnaway::PeerFull { uid, held });
        }
        let full = t.entries.len() >= caps.max_connections
            || (!admin && t.others >= caps.max_connections - caps.admin_reserve);
        let evicted = if full {
            let now = self.millis();
            let victim = Self::victim(&t, admin).ok_or(Turnaway::Full)?;
            let e = Self::remove(&mut t, victim).expect("the victim is in the table");
            e.evict.cancel();
            Some(Evicted {
                uid: e.uid,
                idle_ms: now.saturating_sub(e.activity.load(Ordering::Relaxed)),
            })
        } else {
            None
        };
        let id = t.next_id;
        t.next_id += 1;
        let activity = Arc::new(AtomicU64::new(self.millis()));
        let evict = CancellationToken::new();
        t.entries.insert(
            id,
            Entry {
                uid,
                admin,
                activity: Arc::clone(&activity),
                evict: evict.clone(),
            },
        );
        *t.per_uid.entry(uid).or_insert(0) += 1;
        if !admin {
            t.others += 1;
        }
        Ok((
            Ticket {
                id,
                admission: Arc::clone(self),
                evicted: evict,
                activity,
            },
            evicted,
        ))
    }

    /// The connection to close for a newcomer: of the uid holding the most
    /// connections, the one idle the longest. A newcomer that is not an
    /// admin only ever displaces a connection that is not an admin's; an
    /// admin newcomer takes one of another peer first.
    fn victim(t: &Table, admin_newcomer: bool) -> Option<u64> {
        let pick = |admins: bool| {
            let top = t
                .entries
                .values()
                .filter(|e| e.admin == admins)
                .map(|e| e.uid)
                .max_by_key(|uid| (t.per_uid.get(uid).copied().unwrap_or(0), *uid))?;
            t.entries
                .iter()
                .filter(|(_, e)| e.uid == top)
                .min_by_key(|(id, e)| (e.activity.load(Ordering::Relaxed), **id))
                .map(|(id, _)| *id)
        };
        pick(false).or_else(|| if admin_newcomer { pick(true) } else { None })
    }

    fn remove(t: &mut Table, id: u64) -> Option<Entry> {
        let e = t.entries.remove(&id)?;
        if let Some(n) = t.per_uid.get_mut(&e.uid) {
            *n -= 1;
            if *n == 0 {
                t.per_uid.remove(&e.uid);
            }
        }
        if !e.admin {
            t.others -= 1;
        }
        Some(e)
    }

    fn release(&self, id: u64) {
        let mut t = self.table();
        Self::remove(&mut t, id);
    }

    /// Open connections in all, and per uid.
    pub fn counts(&self) -> (usize, Vec<(u32, usize)>) {
        let t = self.table();
        let mut per: Vec<(u32, usize)> = t.per_uid.iter().map(|(u, n)| (*u, *n)).collect();
        per.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        (t.entries.len(), per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_connections: 10,
        per_peer: 4,
        admin_reserve: 2,
    };

    #[test]
    fn one_uid_is_capped_and_gets_its_slots_back() {
        let a = Admission::new();
        let held: Vec<_> = (0..4)
            .map(|_| a.admit(1000, false, CAPS).unwrap())
            .collect();
        assert_eq!(
            a.admit(1000, false, CAPS).err(),
            Some(Turnaway::PeerFull { uid: 1000, held: 4 })
        );
        assert!(a.admit(1001, false, CAPS).is_ok(), "another uid gets in");
        drop(held);
        assert!(a.admit(1000, false, CAPS).is_ok());
    }

    #[test]
    fn the_admin_reserve_and_eviction_of_the_busiest_uids_idlest_connection() {
        let a = Admission::new();
        let mut held = Vec::new();
        // Eight slots for non-admins: 4 for uid 1, 2 each for uids 2 and 3.
        for uid in [1, 1, 1, 1, 2, 2, 3, 3] {
            std::thread::sleep(std::time::Duration::from_millis(2));
            held.push(a.admit(uid, false, CAPS).unwrap().0);
        }
        // uid 1's third connection did something recently.
        std::thread::sleep(std::time::Duration::from_millis(5));
        held[2].touch();
        // A ninth non-admin peer: uid 1 (the most) loses its idlest, the first.
        let (t, ev) = a.admit(4, false, CAPS).unwrap();
        assert_eq!(ev.map(|e| e.uid), Some(1));
        assert!(held[0].evicted.is_cancelled());
        assert!(!held[2].evicted.is_cancelled());
        held.push(t);
        // Admins take the two reserved slots without evicting anyone…
        let (r1, ev) = a.admit(0, true, CAPS).unwrap();
        assert!(ev.is_none());
        let (r2, ev) = a.admit(0, true, CAPS).unwrap();
        assert!(ev.is_none());
        // …and a third admin connection displaces a peer's, never an admin's.
        let (r3, ev) = a.admit(0, true, CAPS).unwrap();
        assert!(ev.is_some_and(|e| e.uid != 0));
        assert!(!r1.evicted.is_cancelled() && !r2.evicted.is_cancelled());
        assert_eq!(a.counts().0, 10);
        drop((r1, r2, r3));
    }

    #[test]
    fn a_newcomer_never_evicts_an_admin() {
        let caps = Caps {
            max_connections: 3,
            per_peer: 3,
            admin_reserve: 1,
        };
        let a = Admission::new();
        let _r: Vec<_> = (0..3).map(|_| a.admit(0, true, caps).unwrap()).collect();
        assert_eq!(a.admit(7, false, caps).err(), Some(Turnaway::Full));
    }
}
