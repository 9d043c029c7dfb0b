//! What operators get besides the daemon: shell completions and man pages
//! generated from the command line's definition, metrics in Prometheus
//! text format, and the Debian package.

use std::process::Command;

use crate::util::{BIN, CARGO_DEB, Dir, assert_ok, optional_tool, runs};

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
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// Whether promtool is here (see [`optional_tool`]).
fn have_promtool() -> bool {
    optional_tool(
        runs(&promtool(), &["--version"]),
        "promtool (set PROMTOOL, or run .ci/run: it extracts it from the Debian prometheus \
         package)",
    )
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
    if !have_promtool() {
        return;
    }
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
    // By label: every label has its series, the default key's is 1.
    for (alg, n) in [("EdDSA", 1.0), ("Ed25519", 0.0), ("ES256", 0.0)] {
        assert_eq!(
            value(
                &after,
                "splitsign_published_keys_by_alg",
                &[&format!("alg=\"{alg}\"")]
            ),
            n,
            "{alg}"
        );
    }
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

/// Build the Debian package once for the tests that need it
/// (`packaging/build-deb`: a release build, the man pages and completions,
/// `cargo deb`). Returns its path, or `None` when cargo-deb is missing:
/// the test is skipped (see [`optional_tool`]).
pub fn debian_package() -> Option<std::path::PathBuf> {
    if !optional_tool(runs("cargo", &["deb", "--version"]), CARGO_DEB) {
        return None;
    }
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let deb = BUILT
        .get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new(root.join("packaging/build-deb"))
                .current_dir(root)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "packaging/build-deb: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let path = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .last()
                .unwrap()
                .to_owned();
            root.join(path)
        })
        .clone();
    Some(deb)
}

fn dpkg_deb(args: &[&str], deb: &std::path::Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_debian_package_holds_what_it_should_and_keeps_the_keys_on_purge() {
    let Some(deb) = debian_package() else {
        return;
    };
    let files = dpkg_deb(&["-c"], &deb);
    for want in [
        "./usr/bin/splitsign",
        "./usr/lib/systemd/system/splitsign.service",
        "./usr/lib/systemd/system/splitsign.socket",
        "./usr/lib/sysusers.d/splitsign.conf",
        "./usr/lib/tmpfiles.d/splitsign.conf",
        "./etc/splitsign/config.toml",
        "./usr/share/man/man1/splitsign.1.gz",
        "./usr/share/man/man1/splitsign-sign.1.gz",
        "./usr/share/man/man1/splitsign-metrics.1.gz",
        "./usr/share/bash-completion/completions/splitsign",
        "./usr/share/zsh/vendor-completions/_splitsign",
        "./usr/share/fish/vendor_completions.d/splitsign.fish",
        "./usr/share/doc/splitsign/copyright",
    ] {
        assert!(
            files.lines().any(|l| l.ends_with(want)),
            "{want} is not in the package:\n{files}"
        );
    }
    // Nothing under /var/lib: the stores are never the package's files.
    assert!(!files.contains("./var/lib/splitsign"), "{files}");
    let info = dpkg_deb(&["-I"], &deb);
    assert!(
        info.contains("Depends:") && info.contains("systemd"),
        "{info}"
    );
    let conffiles = dpkg_deb(&["-I"], &deb).contains("conffiles");
    assert!(conffiles, "{info}");
    let tmp = Dir::new();
    let control = tmp.path().join("control");
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(&control)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/splitsign/config.toml"
    );
    // The unit runs the packaged binary; the scripts never remove the
    // stores or the user, and postinst does not start the daemon.
    let unit = tmp.path().join("unit");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unit)
        .output()
        .unwrap();
    assert!(out.status.success());
    let service =
        std::fs::read_to_string(unit.join("usr/lib/systemd/system/splitsign.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/bin/splitsign "),
        "{service}"
    );
    assert!(
        service.contains("ExecReload=+/usr/bin/splitsign "),
        "{service}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(control.join(script)).unwrap();
        assert!(
            !text.contains("rm -"),
            "{script} removes something:\n{text}"
        );
        assert!(
            !text.contains("userdel") && !text.contains("deluser"),
            "{script}"
        );
        let starts = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| {
                (l.contains("deb-systemd-invoke") || l.contains("systemctl"))
                    && l.split_whitespace().any(|w| w == "start" || w == "restart")
            });
        assert!(!starts, "{script} starts the daemon:\n{text}");
    }
    // Unpacked into a throwaway root, the binary runs there.
    let root = tmp.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "--force-not-root", "--unpack"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg --unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(root.join("usr/bin/splitsign"))
        .arg("--version")
        .output()
        .unwrap();
    assert_ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("splitsign {}", env!("CARGO_PKG_VERSION"))
    );
}
