//! splitsign: a local daemon that signs JSON Web Tokens with an Ed25519 or
//! P-256 key that is never stored whole. The key is split with Shamir's scheme into a
//! file share and a database share; the daemon rebuilds it in locked memory
//! at start and answers sign/verify requests on a Unix socket.
//!
//! # Layout
//!
//! Folders are the parts, in layers: a part uses the ones below it, never
//! one above (`tests/layout.rs` checks it on the source, and that no two
//! files import each other). One line per module:
//!
//! - [`cli`]: the command line; `mod.rs` is its table of contents.
//!   - `daemon_cmds`: the commands that go through the daemon (offline
//!     fallbacks where they make sense).
//!   - `offline`: the commands on the stores: init, import, recover, check,
//!     backup.
//!   - `cluster_cmds`: pg-schema, node, migrate-store.
//!   - `audit`: list, verify and prune the audit log.
//!   - `places`: where the CLI looked, for the errors that find nothing.
//!   - `output`: how commands fail (`CommandError`) and what they print.
//!   - `docs`: shell completions and man pages from the clap definition.
//! - [`daemon`]: `splitsign serve`; `mod.rs` only wires the parts.
//!   - `listener`: the socket (bound, or from systemd) and accept.
//!   - `admission`: per-uid caps, the admin reserve, eviction.
//!   - `connection`: one peer's lines, turns, reply batches, group commit.
//!   - `state`: what the listener, connections and tasks share.
//!   - `handler`: one request, parsed and authorized once, run to its end:
//!     `sign`, `verify`, `status` (and jwks, metrics), `admin`, `reload`.
//!   - `access`: client policies (`Denial` when one refuses).
//!   - `limits`: thread counts, admission's caps from the config's limits.
//!   - `key_manager`: keys and their schedule while running; `faults`
//!     (the running store checks), `revoking` (storing revocations).
//!   - `revocations`: the revocations in force, in memory.
//!   - `cluster`: the other nodes of a PostgreSQL deployment, re-read and
//!     judged.
//!   - `audit_writer`: group commit, aggregated refusals, retention, the
//!     reserve.
//!   - `metrics`: the counters and their Prometheus text.
//!   - `public_file`: the JWKS and metrics files, written whole.
//!   - `background`: one task per concern: `schedule`, `health`,
//!     `metrics_file`, `signals`, `follow` (the other nodes).
//!   - `systemd`: sd_notify and socket activation; `memory`: giving memory
//!     back.
//! - [`client`]: a blocking client for the CLI and Rust app servers.
//! - [`lifecycle`]: the sequences over both stores, for the daemon and the
//!   CLI.
//!   - `create`: new keys (first, scheduled, rotation).
//!   - `reshare`: re-splitting a key; resealing; recovering a lost share.
//!   - `reconcile`: prove the stores belong together, then clean up.
//!   - `unseal`: rebuild keys into memory, build the key set.
//!   - `migrate`: a host's keys from SQLite to PostgreSQL.
//! - [`store`]: what lives on disk, never a whole key; [`store::Stores`]
//!   opens them under one lock.
//!   - `share_dir`: the file shares (x = 1), sealed or in clear.
//!   - `tpm`: sealing a file share to the host's TPM 2.0 (cargo feature tpm2).
//!   - `keystore`: the `KeyStore` trait, its value types, row checks.
//!   - `sqlite`: key rows, database shares (x = 2), revocations on one host.
//!   - `postgres`: the same for a cluster: `connect`, `bridge`, `errors`,
//!     `node`, `schema`, its `keystore`, `revocations`, `listen`.
//!   - `membership`: the owner's members and bounds.
//!   - `seen`: the revocations a cluster node has seen.
//!   - `audit_log`: the hash chain.
//!   - `backup`: consistent copies of the database.
//!   - `lock`: one process per store, by identity.
//! - [`keys`]: pure key code, no I/O beyond locking memory.
//!   - `algorithm`: the two key types (Ed25519, P-256) and their JOSE.
//!   - `shamir`: split and recover, every `sharks` trap guarded.
//!   - `share_format`: the share file's bytes, kids, the deployment id.
//!   - `locked`: keys in locked, undumpable pages.
//!   - `keyring`: the keys held and the JWKS.
//!   - `jws`: building and checking tokens (`TokenRules`).
//!   - `schedule`: key states and what is due, from timestamps.
//! - [`protocol`]: wire format v1, in `mod.rs` (one parse function per op,
//!   `OpName` the one list of ops).
//!   - `fields`: the request field cursor.
//!   - `response`: codes and replies.
//!   - `lines`: request lines out of a read buffer.
//!   - `strict_json`: JSON without duplicate member names.
//! - [`config`]: TOML + environment + flags → one validated `Config`, in
//!   sections.
//!   - `file`: the TOML file, read bounded.
//!   - `values`: the setting types.
//!   - `places`: default store paths and socket; path helpers.
//!   - `check`: the shape checks; the output files' directories.
//!   - `restart`: what a reload cannot apply.
//!   - `conninfo`: libpq connection strings.
//! - [`clock`]: wall time, the lifecycle clock, the purge clock.
//! - [`snapshot`]: values readers snapshot and a writer replaces whole.
//! - [`error`]: errors named after the step that failed; exit codes.
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
