//! A build without the `tpm2` feature: `share_seal = "tpm2"` is refused at
//! start, and the message says how to build with it.

use crate::util::{Daemon, Dir};

#[test]
fn without_the_feature_share_seal_tpm2_is_refused_and_says_how_to_build_it() {
    let dir = Dir::new();
    let cfg = dir.write_config(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
         share_seal = \"tpm2\"\ntpm_tcti = \"swtpm:host=127.0.0.1,port=2321\"\n",
    );
    let e = Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()])
        .err()
        .expect("refused without TPM support");
    assert_eq!(e.status.code(), Some(2), "{}", e.stderr);
    for needle in ["share_seal", "--features tpm2", "libtss2-dev"] {
        assert!(e.stderr.contains(needle), "{needle}: {}", e.stderr);
    }
    assert!(
        !dir.keys().exists() || dir.share_files().is_empty(),
        "no key made"
    );
    assert!(!dir.socket().exists());
    // `init` refuses the same way, before writing anything.
    let out = dir
        .cmd()
        .args(["--config", cfg.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features tpm2"));
    assert!(!dir.keys().exists() || dir.share_files().is_empty());
}
