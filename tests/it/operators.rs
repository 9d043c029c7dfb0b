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

/// promtool (Debian package `prometheus`): `PROMTOOL`, or on PATH. `.ci/run`
/// extracts it from the package without installing the server.
fn promtool() -> String {
    if let Ok(p) = std::env::var("PROMTOOL") {
        return p;
    }
    let on_path = Command::new("promtool").arg("--version").output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "this test needs promtool: set PROMTOOL, or run .ci/run (it extracts it from the \
         Debian prometheus package)"
    );
    "promtool".into()
}

/// `promtool check metrics` on `text`: it must parse, with no lint.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the series `name{labels}` (labels as written, sorted as
/// the text has them), summed over series whose labels contain every
/// `k="v"` of `want`.
fn value(text: &str, name: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name && want.iter().all(|w| labels.contains(w)))
                .then(|| v.parse::<f64>().unwrap())
        })
        .sum()
}

#[test]
fn metrics_parse_with_promtool_count_what_happens_and_the_file_is_replaced_whole() {
    use serde_json::json;
    let dir = Dir::new();
    let prom = dir.path().join("splitsign.prom");
    let cfg = dir.write_config(&format!(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
         metrics_file = \"{}\"\n",
        prom.display()
    ));
    let cfg = cfg.to_str().unwrap();
    let d = crate::util::Daemon::start_with(&dir, &["--config", cfg]).unwrap();
    let metrics = || {
        let out = dir.run(&["--config", cfg, "metrics"]);
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let before = metrics();
    promtool_check(&before);
    let mut c = d.conn();
    let kid = crate::util::ok(c.sign(json!({"sub":"secret-subject-xyz"})))["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = crate::util::ok(c.sign(json!({})))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        crate::util::code(&c.request(json!({"op":"sign","claims":{"iat":1}}))),
        "reserved_claim"
    );
    crate::util::ok(c.request(json!({"op":"verify","token":token})));
    assert_eq!(
        crate::util::code(&c.request(json!({"op":"verify","token":"x.y.z"}))),
        "invalid_token"
    );
    assert_eq!(
        crate::util::code(&c.request(json!({"op":"nope"}))),
        "unknown_op"
    );
    let after = metrics();
    promtool_check(&after);
    let tokens = |t: &str| {
        value(
            t,
            "splitsign_tokens_issued_total",
            &[&format!("kid=\"{kid}\"")],
        )
    };
    assert_eq!(tokens(&after) - tokens(&before), 2.0, "{after}");
    assert_eq!(
        value(
            &after,
            "splitsign_refusals_total",
            &["op=\"sign\"", "code=\"reserved_claim\""]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "splitsign_verifications_total", &["outcome=\"ok\""]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "splitsign_verifications_total",
            &["outcome=\"invalid_token\""]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "splitsign_refusals_total", &["code=\"unknown_op\""]),
        1.0
    );
    assert!(
        value(
            &after,
            "splitsign_request_duration_seconds_count",
            &["op=\"sign\""]
        ) >= 3.0
    );
    assert!(value(&after, "splitsign_audit_batches_total", &[]) >= 2.0);
    assert_eq!(value(&after, "splitsign_published_keys", &[]), 1.0);
    assert!(
        value(&after, "splitsign_connections", &["uid=\"0\""]) >= 1.0 || !crate::util::is_root()
    );
    assert!(value(&after, "splitsign_active_key_age_seconds", &[]) >= 0.0);
    assert!(value(&after, "splitsign_next_transition_seconds", &[]) > 0.0);
    assert!(after.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))));
    assert!(!after.contains("secret-subject-xyz"), "no claim in a label");
    assert!(!after.contains(&token[..20]), "no token in a label");

    // The file: written at start, mode 0644, replaced whole (a new inode by
    // rename) on every write; a reader never sees a partial file.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&prom).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o644);
    promtool_check(&std::fs::read_to_string(&prom).unwrap());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (reads, replaced) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0;
            // How often the file read was another file than the read
            // before (inode numbers are reused, so count the changes).
            let (mut last, mut replaced) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = std::fs::File::open(&prom).unwrap();
                let ino = f.metadata().unwrap().ino();
                if ino != last {
                    replaced += 1;
                    last = ino;
                }
                let text = std::io::read_to_string(f).unwrap();
                // Families come in any order (and one with no series yet
                // is left out): a whole file ends with a newline, every
                // line is whole, and the metrics that are always there are.
                let whole = text.ends_with('\n')
                    && text.lines().all(|l| {
                        l.starts_with("# ")
                            || l.rsplit_once(' ')
                                .is_some_and(|(_, v)| v.parse::<f64>().is_ok())
                    })
                    && [
                        "splitsign_build_info{",
                        "splitsign_nodes ",
                        "splitsign_published_keys ",
                    ]
                    .iter()
                    .all(|m| text.contains(m));
                assert!(whole, "a partial file: {text:?}");
                reads += 1;
            }
            (reads, replaced)
        });
        // Each reload rewrites the file at once.
        for _ in 0..20 {
            assert_ok(&dir.run(&["--config", cfg, "reload"]));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(
        reads > 20 && replaced > 10,
        "{reads} reads, replaced {replaced} times"
    );
    d.stop();
}
