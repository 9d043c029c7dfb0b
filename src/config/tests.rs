//! The config's own tests: loading, defaults, the checks' messages.

use super::*;

fn from_toml(text: &str) -> Result<Config> {
    let file: FileConfig = toml::from_str(text).map_err(|e| Error::Config {
        path: "t.toml".into(),
        message: e.to_string(),
    })?;
    Config::build(
        file,
        Source::File("t.toml".into()),
        &Overrides::default(),
        &Env::default(),
    )
}

#[test]
fn cluster_settings_are_checked() {
    let bad = |text: &str, key: &str, says: &str| match from_toml(text) {
        Err(Error::Setting { key: k, message }) => {
            assert_eq!(k, key, "{text}: {message}");
            assert!(message.contains(says), "{text}: {message}");
        }
        other => panic!("{text}: expected a refusal, got {other:?}"),
    };
    bad(
        "postgres = \"host=db.internal dbname=s user=u password=hunter2\"",
        "postgres",
        "password",
    );
    bad(
        "postgres = \"postgresql://u:hunter2@db.internal/s\"",
        "postgres",
        "password",
    );
    bad(
        "postgres = \"host=db.internal dbname=s user=u sslmode=disable\"",
        "postgres",
        "in clear",
    );
    bad(
        "postgres = \"host=db.internal port=x\"",
        "postgres",
        "connection string",
    );
    let pg = "postgres = \"host=/run/postgresql dbname=s user=u\"\n";
    bad(&format!("{pg}node = \"web 1\""), "node", "node name");
    bad(&format!("{pg}node = \"\""), "node", "node name");
    // This host (a Unix socket, loopback) may go without TLS.
    for ok in [
        "postgres = \"host=/run/postgresql dbname=s user=u sslmode=disable\"",
        "postgres = \"host=localhost dbname=s user=u sslmode=disable\"",
        "postgres = \"host=db.internal dbname=s user=u sslmode=verify-full\"\nnode = \"web-1.a_b\"",
        "postgres = \"host=db.internal dbname=s user=u sslmode = verify-ca\"",
        "postgres = \"postgresql://u@db.internal/s?sslmode=verify-full&application_name=x\"",
    ] {
        let c = from_toml(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(c.cluster.postgres.is_some());
    }
    let c = from_toml("node = \"not checked without postgres\"").unwrap();
    assert!(c.cluster.postgres.is_none());
}

#[test]
fn zero_config_uses_the_current_directory() {
    let c = Config::build(
        FileConfig::default(),
        Source::Defaults,
        &Overrides::default(),
        &Env::default(),
    )
    .unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.paths.shares_dir, cwd.join("keys"));
    assert_eq!(c.paths.db, cwd.join("var/splitsign.db"));
    assert_eq!(c.paths.socket, cwd.join("var/splitsign.sock"));
    assert_eq!(c.tokens.default_ttl, Duration::from_secs(900));
    assert_eq!(c.paths.socket_mode, 0o660);
}

#[test]
fn state_directories_are_told_apart_by_name_not_order() {
    // systemd sorts StateDirectory=: both orders must map the same way.
    for list in [
        "/var/lib/splitsign/shares:/var/lib/splitsign/db",
        "/var/lib/splitsign/db:/var/lib/splitsign/shares",
    ] {
        let env = Env {
            state_directory: Some(list.into()),
            runtime_directory: None,
        };
        let c = Config::build(
            FileConfig::default(),
            Source::Defaults,
            &Overrides::default(),
            &env,
        )
        .unwrap();
        assert_eq!(
            c.paths.shares_dir,
            PathBuf::from("/var/lib/splitsign/shares"),
            "{list}"
        );
        assert_eq!(
            c.paths.db,
            PathBuf::from("/var/lib/splitsign/db/splitsign.db"),
            "{list}"
        );
        assert!(!c.paths.legacy_layout);
    }
    let env = Env {
        state_directory: Some("/x/a:/x/b".into()),
        runtime_directory: None,
    };
    let e = Config::build(
        FileConfig::default(),
        Source::Defaults,
        &Overrides::default(),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("named `shares`"), "{e}");
}

#[test]
fn durations_and_values_parse() {
    let c = from_toml("issuer = \"https://a.example\"\ndefault_ttl = \"5m\"\nmax_ttl = \"2h\"\nalg = \"Ed25519\"\nsocket_mode = \"0600\"").unwrap();
    assert_eq!(c.tokens.default_ttl, Duration::from_secs(300));
    assert_eq!(c.tokens.max_ttl, Duration::from_secs(7200));
    assert_eq!(c.tokens.alg, AlgLabel::Ed25519);
    assert_eq!(c.paths.socket_mode, 0o600);
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_the_key() {
    let e = from_toml("isuer = \"x\"").unwrap_err().to_string();
    assert!(e.contains("isuer"), "{e}");
    let e = from_toml("default_ttl = \"2h\"").unwrap_err().to_string();
    assert!(e.contains("default_ttl"), "{e}");
    let e = from_toml("max_ttl = \"soon\"").unwrap_err().to_string();
    assert!(e.contains("max_ttl"), "{e}");
    let e = from_toml("socket_mode = \"0666\"").unwrap_err().to_string();
    assert!(e.contains("socket_mode") && e.contains("other"), "{e}");
    let e = from_toml("alg = \"HS256\"").unwrap_err().to_string();
    assert!(e.contains("alg"), "{e}");
    let e = from_toml("shares_dir = \"/d\"\ndb = \"/d/x.db\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("shares_dir"), "{e}");
}

#[test]
fn the_audit_reserve_is_a_size_or_a_share() {
    let gib = 1u64 << 30;
    // The default: 5%, at most 1 GiB.
    let d = from_toml("").unwrap().audit.keep_free;
    assert_eq!(d.bytes(100 << 20), 5 << 20);
    assert_eq!(d.bytes(100 * gib), gib);
    for (text, total, want) in [
        ("audit_keep_free = \"256MiB\"", 0, 256 << 20),
        ("audit_keep_free = \"1G\"", 0, gib),
        ("audit_keep_free = \"512K\"", 0, 512 << 10),
        ("audit_keep_free = 4096", 0, 4096),
        ("audit_keep_free = \"0\"", 1 << 40, 0),
        ("audit_keep_free = \"10%\"", 100 * gib, 10 * gib),
        ("audit_keep_free = \"2.5%\"", 1000, 25),
    ] {
        assert_eq!(
            from_toml(text).unwrap().audit.keep_free.bytes(total),
            want,
            "{text}"
        );
    }
    for bad in [
        "\"5 %%\"",
        "\"60%\"",
        "\"-1%\"",
        "\"12 parsecs\"",
        "\"MiB\"",
        "\"99999999T\"",
        "\"99999T\"",
        "18446744073709551615",
        "-5",
        "5.0",
    ] {
        let e = from_toml(&format!("audit_keep_free = {bad}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit_keep_free"), "{bad}: {e}");
        assert!(!e.contains("enum") && !e.contains("Raw"), "{bad}: {e}");
    }
}

#[test]
fn es256_and_the_tpm_settings_parse_and_are_checked() {
    let c = from_toml("alg = \"ES256\"").unwrap();
    assert_eq!(c.tokens.alg, AlgLabel::ES256);
    // Keys made before labels were stored are Ed25519's, whatever alg says.
    assert_eq!(c.tokens.alg.legacy(), AlgLabel::EdDSA);
    let d = from_toml("").unwrap();
    assert_eq!(d.sealing.seal, ShareSeal::None);
    assert_eq!(d.sealing.tcti, DEFAULT_TCTI);
    for bad in ["", ":x", "device:/dev/tpm rm0", "dev\u{1}ice:/x"] {
        let e = from_toml(&format!("tpm_tcti = {bad:?}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tpm_tcti"), "{bad:?}: {e}");
    }
    let t = from_toml("tpm_tcti = \"swtpm:host=127.0.0.1,port=2321\"").unwrap();
    assert_eq!(t.sealing.tcti, "swtpm:host=127.0.0.1,port=2321");
    // Sealing needs a restart to change, either way.
    assert_eq!(d.needs_restart(&t), Some("tpm_tcti"));
    let e = from_toml("share_seal = \"tpm3\"").unwrap_err().to_string();
    assert!(e.contains("share_seal"), "{e}");
    let sealed = from_toml("share_seal = \"tpm2\"");
    if cfg!(feature = "tpm2") {
        let s = sealed.unwrap();
        assert_eq!(s.sealing.seal, ShareSeal::Tpm2);
        assert_eq!(d.needs_restart(&s), Some("share_seal"));
    } else {
        let e = sealed.unwrap_err().to_string();
        assert!(e.contains("--features tpm2"), "{e}");
    }
}
