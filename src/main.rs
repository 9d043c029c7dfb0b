//! The `splitsign` binary: parse, dispatch, exit code. See `splitsign::cli`.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = splitsign::cli::Cli::parse();
    init_logging();
    match splitsign::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // One line, on stderr (under systemd, that is the journal too).
        Err(f) => {
            eprintln!("splitsign: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Log to journald when systemd gave us a journal stream, else to stderr.
/// Level from `SPLITSIGN_LOG` (default `info`).
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SPLITSIGN_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,rusqlite_migration=warn,tss_esapi=warn")
        });
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
