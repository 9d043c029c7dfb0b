//! Integration tests: each runs the real `splitsign` binary against a temp
//! directory and speaks the wire protocol.
mod access;
mod crash;
mod examples;
mod fairness;
mod foundation;
mod hostile_input;
mod integrity;
mod lifecycle;
mod stores;
mod systemd;
mod util;
