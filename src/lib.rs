//! splitsign: a local daemon that signs JSON Web Tokens with an Ed25519 key
//! that is never stored whole. The key is split with Shamir's scheme into a
//! file share and a database share; the daemon rebuilds it in locked memory
//! at start and answers sign/verify requests on a Unix socket.
//!
//! # Layout
//! - [`access`]: client policies by peer uid/gid; claim rules.
//! - [`audit`]: the hash-chained audit log and its group-commit writer.
//! - [`cli`]: the command line; `main` only parses and maps exit codes.
//! - [`config`]: TOML + environment + flags → one validated `Config`.
//! - [`error`]: errors named after the step that failed; exit codes.
//! - [`shared`]: values snapshotted by readers, replaced whole by a writer.
//! - [`shares`]: split/recover with every `sharks` trap guarded; share file
//!   format; kid thumbprints. Pure.
//! - [`filestore`]: the file share directory (durable writes, strict reads).
//! - [`store`]: SQLite: key rows, database shares.
//! - [`stores`]: both stores opened together under one lock.
//! - [`lifecycle`]: creating, rotating, re-splitting and recovering keys;
//!   reconciling the stores; what the schedule asks for (pure).
//! - [`manager`]: key changes while the daemon runs; the JWKS file.
//! - [`secmem`]: non-dumpable process, locked key pages.
//! - [`keyring`]: keys in memory, key states, JWKS.
//! - [`token`]: JWS building and checking; the claims policy.
//! - [`protocol`]: wire format v1: requests, responses, error codes, lines.
//! - [`server`]: socket, accept loop, connections, limits.
//! - [`service`]: answering requests: policy, sign, verify, admin ops.
//! - [`systemd`]: socket activation, sd_notify, watchdog.
//! - [`client`]: a blocking client for the CLI and Rust app servers.
//! - [`daemon`]: wiring for `splitsign serve`.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod error;
pub mod keys;
pub mod lifecycle;
pub mod protocol;
pub mod shared;
pub mod store;
