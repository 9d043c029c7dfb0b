//! Integration tests: each runs the real `splitsign` binary against a temp
//! directory and speaks the wire protocol. Shared helpers are in `util`
//! (and what the benches use too, in the `splitsign-testkit` crate).
//!
//! - `end_to_end`: init → serve → sign → verify against the JWKS, restart,
//!   import, the CLI, pipelining.
//! - `es256`: a single-host ES256 (P-256) deployment end to end: init,
//!   the EC JWK, independent verifiers, rotation to and from EdDSA,
//!   reshare, recover, damaged shares, import, check and backup.
//! - `protocol_input`: hostile request lines.
//! - `cli`: the command line's promises: exit codes, flag values, where it
//!   looked, start checks, log fields.
//! - `access`: client policies, revocation, token binding, the audit log,
//!   locked key memory.
//! - `growth`: pipelined admin sessions, mass revocation, the schema 6
//!   upgrade of stores made by schema 5.
//! - `fairness`: one peer uid cannot starve others, exhaust memory or fill
//!   the disk (run as other uids).
//! - `lifecycle`: scheduled rotations, admin rotate/reshare/recover/check.
//! - `store_damage`: damaged or unsafe stores are refused, nothing invented.
//! - `store_integrity`: operator mistakes, clock jumps, stores swapped under
//!   a running daemon, backups, upgrades.
//! - `crash`: kill -9 at every store system call of a key change.
//! - `systemd`: the units, socket activation, sd_notify, watchdog, reload.
//! - `examples`: the client examples against the real daemon.
//! - `interop`: third-party verifiers (npm jsonwebtoken + jwks-rsa, jose,
//!   PyJWT, the JDK) on ES256 tokens from a mixed EdDSA/ES256 JWKS.
//! - `docs`: every runnable command of the client docs, as written.
//! - `operators`: completions, man pages, metrics, the Debian package.
//! - `container`: the package installed and run under a real systemd
//!   (systemd-nspawn, a cached Debian 12 root).
//! - `cluster`: the PostgreSQL store and clusters of nodes, against a real
//!   server started per test (`pg`).
//! - `cluster_trust`: a node's login in an attacker's hands, a node
//!   removed, a restored dump: what one node can do to the others.
//! - `es256_cluster`: ES256 keys beside EdDSA ones in a cluster, moved from
//!   SQLite, re-split, and kill -9 during an ES256 rotation.
//! - `tpm`: file shares sealed to a TPM 2.0 (`--features tpm2`, a swtpm
//!   per test); `tpm_absent`: without the feature, sealing is refused.
mod access;
mod cli;
mod cluster;
mod cluster_trust;
mod container;
mod crash;
mod docs;
mod end_to_end;
mod es256;
mod es256_cluster;
mod examples;
mod fairness;
mod growth;
mod interop;
mod lifecycle;
mod operators;
mod pg;
mod protocol_input;
mod store_damage;
mod store_integrity;
mod systemd;
#[cfg(feature = "tpm2")]
mod tpm;
#[cfg(not(feature = "tpm2"))]
mod tpm_absent;
mod util;
