//! The package under a real systemd: a minimal Debian 12 root (debootstrap,
//! cached between runs, copied per run) booted with systemd-nspawn, the
//! `.deb` installed in it, and the running service checked from inside
//! (`nsenter` into the container's init).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::Started;

/// What the root holds besides minbase: systemd, and the TSS libraries
/// the package links (it is built `--features tpm2`; `dpkg -i` installs no
/// dependency). The cached root's name says which list made it: a change
/// here must change [`ROOT`], or an old root without them is reused.
const INCLUDE: &str = "--include=systemd,systemd-sysv,dbus,\
    libtss2-esys-3.0.2-0,libtss2-mu0,libtss2-sys1,libtss2-tctildr0";
const ROOT: &str = "bookworm-tss2-root";

/// The cached Debian 12 root: made once with debootstrap (about a minute,
/// from the Debian mirror), into a temporary name first so that an
/// interrupted run leaves no half root behind.
fn cached_root() -> PathBuf {
    let cache = std::env::var_os("SPLITSIGN_CI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/splitsign-ci"));
    let root = cache.join(ROOT);
    if root.join("usr/bin/systemctl").exists() {
        return root;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let partial = cache.join(format!("{ROOT}.partial-{}", std::process::id()));
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", INCLUDE, "bookworm"])
        .arg(&partial)
        .output()
        .expect("debootstrap (apt-get install debootstrap; .ci/run installs it)");
    assert!(
        out.status.success(),
        "debootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test run may have made it meanwhile: keep the first.
    if std::fs::rename(&partial, &root).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    root
}

/// A booted container; powered off (and its nspawn killed, if need be)
/// when dropped.
struct Container {
    nspawn: Started,
    init: u32,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Container {
    fn boot(image: &Path) -> Container {
        // Copies live on the same filesystem as /var/tmp inside: not /tmp,
        // where nspawn mounts a tmpfs.
        let dir = tempfile::Builder::new()
            .prefix("splitsign-ct")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path().join("root");
        let out = Command::new("cp")
            .arg("-a")
            .arg(image)
            .arg(&root)
            .output()
            .unwrap();
        assert!(out.status.success(), "cp -a the root");
        let log = std::fs::File::create(dir.path().join("nspawn.log")).unwrap();
        let nspawn = Started::spawn(
            Command::new("systemd-nspawn")
                .arg("-D")
                .arg(&root)
                .args([
                    "-b",
                    "--register=no",
                    "--keep-unit",
                    // nspawn's own filter lacks @memlock: give the container
                    // what a real host has (the daemon mlocks its keys).
                    "--system-call-filter=@memlock",
                    "--console=passive",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let children = format!("/proc/{0}/task/{0}/children", nspawn.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        let init = loop {
            if let Some(pid) = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "nspawn started no init");
            std::thread::sleep(Duration::from_millis(50));
        };
        let c = Container {
            nspawn,
            init,
            _dir: dir,
            root,
        };
        // Until its systemd answers (`offline` while it is not up yet; on
        // a loaded 2-core machine, booting took more than 60 s once).
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let state = c.run(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd: {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// Run a command inside (all of init's namespaces).
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run it, require success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn show(&self, property: &str) -> String {
        self.ok(&[
            "systemctl",
            "show",
            "-p",
            property,
            "--value",
            "splitsign.service",
        ])
        .trim()
        .to_owned()
    }

    fn status(&self) -> Value {
        let text = self.ok(&[
            "splitsign",
            "--config",
            "/etc/splitsign/config.toml",
            "status",
            "--json",
        ]);
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.run(&["systemctl", "poweroff"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Started's drop kills nspawn (this child, by its handle).
    }
}

#[test]
fn the_package_under_a_real_systemd_in_a_container() {
    assert!(
        rustix::process::geteuid().is_root(),
        "booting a container needs root (CI runs as root)"
    );
    let Some(deb) = crate::operators::debian_package() else {
        return;
    };
    let ct = Container::boot(&cached_root());
    let inside = "/var/tmp/splitsign.deb";
    std::fs::copy(&deb, ct.root.join(inside.trim_start_matches('/'))).unwrap();

    // Installed: the socket enabled, nothing started.
    ct.ok(&["dpkg", "-i", inside]);
    assert_eq!(
        ct.ok(&["systemctl", "is-enabled", "splitsign.socket"])
            .trim(),
        "enabled"
    );
    let active = ct.run(&["systemctl", "is-active", "splitsign.service"]);
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "inactive");

    // The first client starts the daemon through the socket (zero-config
    // first start: it creates the first key).
    ct.ok(&["systemctl", "start", "splitsign.socket"]);
    let token = ct.ok(&[
        "splitsign",
        "--config",
        "/etc/splitsign/config.toml",
        "sign",
        "--claim",
        "sub=alice",
    ]);
    assert!(token.starts_with("eyJ"), "{token}");
    let kid = ct.status()["active_kid"].as_str().unwrap().to_owned();
    assert!(
        ct.show("StatusText").contains(&format!("active key {kid}")),
        "STATUS= names the active kid: {}",
        ct.show("StatusText")
    );
    // The key page is locked.
    let pid = ct.show("MainPID");
    let status = ct.ok(&["cat", &format!("/proc/{pid}/status")]);
    let locked: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(locked > 0, "VmLck {locked} kB");
    // Each state directory holds what its name says.
    let shares = ct.ok(&["ls", "/var/lib/splitsign/shares"]);
    let db = ct.ok(&["ls", "/var/lib/splitsign/db"]);
    assert!(shares.contains(&format!("{kid}.1.share")), "{shares}");
    assert!(!shares.contains("splitsign.db"), "{shares}");
    assert!(db.lines().any(|l| l == "splitsign.db"), "{db}");
    assert!(!db.contains(".share"), "{db}");

    // `systemctl reload` works (no /bin/kill needed) and restarts nothing.
    let restarts = ct.show("NRestarts");
    ct.ok(&["systemctl", "reload", "splitsign.service"]);
    assert_eq!(ct.show("MainPID"), pid, "reloaded in place");
    assert_eq!(ct.show("NRestarts"), restarts);

    // Stopped, the next client starts it again, with the same key.
    ct.ok(&["systemctl", "stop", "splitsign.service"]);
    assert_eq!(ct.status()["active_kid"], kid.as_str());
    assert_ne!(ct.show("MainPID"), pid);

    // The sandbox of the running unit.
    let score = ct.ok(&["systemd-analyze", "security", "splitsign.service"]);
    let exposure: f64 = score
        .lines()
        .find_map(|l| l.split("splitsign.service: ").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{score}"));
    assert!(exposure <= 1.0, "exposure {exposure}");

    // A purge keeps the keys and the user; a reinstall serves the same key.
    ct.ok(&["dpkg", "--purge", "splitsign"]);
    let shares = ct.ok(&["ls", "/var/lib/splitsign/shares"]);
    assert!(shares.contains(&format!("{kid}.1.share")), "{shares}");
    ct.ok(&["id", "splitsign"]);
    ct.ok(&["dpkg", "-i", inside]);
    ct.ok(&["systemctl", "start", "splitsign.socket"]);
    assert_eq!(ct.status()["active_kid"], kid.as_str());
}
