//! splitsign: a local daemon that signs JSON Web Tokens with an Ed25519 key
//! that is never stored whole. The key is split with Shamir's scheme into a
//! file share and a database share; the daemon rebuilds it in locked memory
//! at start and answers sign/verify requests on a Unix socket.
//!
//! # Layout
//!
//! Folders are the parts; dependencies point down this list (a part uses
//! the ones below it, never the ones above).
//!
//! - [`cli`]: the command line. `cli/mod.rs` is the table of contents;
//!   `daemon_cmds` (through the daemon), `offline` (on the stores:
//!   init, import, recover, check, backup), `audit`, `output`.
//! - [`daemon`]: `splitsign serve`. `mod.rs` only wires the parts:
//!   - where a request goes: `listener` (socket, accept) → `admission`
//!     (per-uid caps, admin reserve, eviction) → `connection` (lines,
//!     batches, backpressure) → `handler` (policy check, then `sign`,
//!     `verify`, `status`, `admin`);
//!   - beside it: `access` (client policies), `revocations`, `limits`,
//!     `key_manager` (key changes while running, store checks, the JWKS
//!     file), `audit_writer` (group commit, aggregated failures,
//!     retention), `background` (schedule timer, health, watchdog,
//!     signals), `cluster` (following the other nodes), `systemd`,
//!     `memory`.
//! - [`lifecycle`]: the sequences that touch both stores, shared by the
//!   daemon and the offline commands: `create`, `reshare` (and recover),
//!   `reconcile` (prove the stores belong together, then clean up),
//!   `unseal`, `clock`.
//! - [`store`]: what lives on disk, never a whole key: `share_files` (the
//!   file shares), `keystore` (the trait both key stores implement, and the
//!   values it takes), `sqlite` (key rows, database shares, revocations),
//!   `postgres` (the same for a cluster: `connect`, `bridge`, `errors`,
//!   `node`, `schema`, its `keystore`, `revocations`, `listen`),
//!   `membership` (the owner's members and bounds; other nodes' rows judged
//!   one by one), `seen` (revocations a cluster node has seen), `audit_log`
//!   (the hash chain), `backup`, `lock`; [`store::Stores`] opens both under
//!   one lock.
//! - [`keys`]: pure key code, no I/O beyond locking memory: `shamir`
//!   (split/recover, every `sharks` trap guarded), `share_format` (the share
//!   file, kids), `locked` (keys in locked, undumpable pages), `keyset` (the
//!   keys held and the JWKS), `jws` (building and checking tokens),
//!   `schedule` (key states and what is due, from timestamps).
//! - [`protocol`]: wire format v1: `parse_request` (a `fields` cursor, one
//!   parse function per op, `OpName` the one list of ops), `response` (codes,
//!   replies), `lines`, `strict_json`.
//! - [`client`]: a blocking client for the CLI and Rust app servers.
//! - [`config`]: TOML + environment + flags → one validated, plain
//!   `Config`; it knows only `error` and `protocol`.
//! - [`error`]: errors named after the step that failed; exit codes.
//! - [`snapshot`]: values readers snapshot and a writer replaces whole.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod error;
pub mod keys;
pub mod lifecycle;
pub mod protocol;
pub mod snapshot;
pub mod store;
