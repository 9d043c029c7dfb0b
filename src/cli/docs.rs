//! `docs`: the shell completions and man pages, generated from the
//! command line's own definition (clap), so they never drift from it.

use std::path::Path;

use clap::CommandFactory;

use super::Cli;
use super::output::{CommandError, usage};

/// `completions SHELL`: the script, on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), CommandError> {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "splitsign",
        &mut std::io::stdout(),
    );
    Ok(())
}

/// `manpage [--out-dir DIR]`: splitsign.1 and splitsign-COMMAND.1 for every
/// command into DIR; without it, splitsign.1 on stdout.
pub fn manpages(out_dir: Option<&Path>) -> Result<(), CommandError> {
    let source = format!("splitsign {}", env!("CARGO_PKG_VERSION"));
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let io = |e: std::io::Error| usage(format!("writing the man pages: {e}"));
    let Some(dir) = out_dir else {
        return clap_mangen::Man::new(cmd)
            .source(source)
            .render(&mut std::io::stdout())
            .map_err(io);
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    for sub in cmd.get_subcommands() {
        clap_mangen::Man::new(sub.clone())
            .source(source.clone())
            .generate_to(dir)
            .map_err(io)?;
    }
    let main = clap_mangen::Man::new(cmd)
        .source(source)
        .generate_to(dir)
        .map_err(io)?;
    println!("wrote {} and a page per command", main.display());
    Ok(())
}
