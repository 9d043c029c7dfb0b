//! What operators get besides the daemon: shell completions and man pages
//! generated from the command line's definition, metrics in Prometheus
//! text format, and the Debian package.

use std::process::Command;

use crate::util::{BIN, Dir, assert_ok};

#[test]
fn bash_sources_the_completion_script_and_it_completes_commands() {
    let dir = Dir::new();
    let out = dir.run(&["completions", "bash"]);
    assert_ok(&out);
    let script = dir.path().join("splitsign.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Source it, then ask the completion function what `splitsign re…`
    // completes to, as bash would.
    let probe = format!(
        "set -e; source {}; complete -p splitsign; \
         COMP_WORDS=(splitsign re); COMP_CWORD=1; COMP_LINE='splitsign re'; COMP_POINT=12; \
         _splitsign splitsign re splitsign; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("complete -o bashdefault -o default"),
        "{text}"
    );
    for cmd in ["reload", "reshare", "revoke", "recover", "rotate"] {
        // "rotate" starts with "ro", not "re".
        let want = cmd != "rotate";
        assert_eq!(text.lines().any(|l| l == cmd), want, "{cmd}: {text}");
    }
    let out = dir.run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is refused");
}

#[test]
fn man_pages_render_without_warnings_and_cover_every_command() {
    let dir = Dir::new();
    let pages = dir.path().join("man");
    let out = dir.run(&["manpage", "--out-dir", pages.to_str().unwrap()]);
    assert_ok(&out);
    let help = String::from_utf8(dir.run(&["--help"]).stdout).unwrap();
    // Every command in --help has its page.
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 15, "{help}");
    for c in &commands {
        assert!(
            pages.join(format!("splitsign-{c}.1")).exists(),
            "no page for {c}"
        );
    }
    for entry in std::fs::read_dir(&pages).unwrap() {
        let page = entry.unwrap().path();
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(&page)
            .output()
            .expect("man (apt-get install man-db; .ci/run installs it)");
        assert!(out.status.success(), "{}", page.display());
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The main page names the commands and the version.
    let main = std::fs::read_to_string(pages.join("splitsign.1")).unwrap();
    assert!(main.contains("splitsign\\-sign(1)"), "{main}");
    assert!(main.contains(env!("CARGO_PKG_VERSION")));
    // Without --out-dir: the main page on stdout.
    let out = Command::new(BIN).arg("manpage").output().unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(".ie"));
}
