//! Bad input gets a documented error code and the daemon keeps serving.

use serde_json::json;

use crate::util::{Daemon, Dir, code, ok};

#[test]
fn each_bad_line_gets_its_code_and_the_connection_signs_again() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{\"op\":\"sign\",\n", "invalid_json"),
        (b"hello\n", "invalid_json"),
        (b"{\"op\":\"fly\"}\n", "unknown_op"),
        (b"{\"op\":\"sign\",\"ttl\":\"five\"}\n", "invalid_request"),
        (
            b"{\"op\":\"sign\",\"claims\":\"sub=alice\"}\n",
            "invalid_request",
        ),
        (b"{\"op\":\"sign\",\"claims\":[1,2]}\n", "invalid_request"),
        (b"{\"op\":\"verify\",\"token\":42}\n", "invalid_request"),
        (b"{\"op\":\"sign\",\"bogus\":1}\n", "invalid_request"),
        (b"[\"sign\"]\n", "invalid_request"),
        (
            b"{\"op\":\"sign\",\"claims\":{\"sub\":\"\xff\xfe\"}}\n",
            "invalid_utf8",
        ),
        (b"\xef\xbb\xbf{\"op\":\"ping\"}\n", "invalid_json"),
        (
            b"{\"op\":\"sign\",\"claims\":{\"sub\":\"\\ud800\"}}\n",
            "invalid_json",
        ),
        (b"{\"op\":\"ping\",\"id\":{\"a\":1}}\n", "invalid_request"),
        (b"\x00\x00\x00\n", "invalid_json"),
    ];
    let deep = format!("{}{}\n", "[".repeat(20_000), "]".repeat(20_000));
    let mut cases = cases;
    cases.push((deep.as_bytes(), "invalid_json"));
    for (line, want) in cases {
        c.send_raw(line);
        let r = c.recv().expect("a response");
        let shown: String = String::from_utf8_lossy(line).chars().take(60).collect();
        assert_eq!(code(&r), want, "for {shown:?}");
        // The message never echoes what was sent.
        assert!(!r["error"]["message"].as_str().unwrap().contains("alice"));
        ok(c.sign(json!({"sub":"after"})));
    }
    // Blank lines are ignored; ids of bad requests are echoed when known.
    c.send_raw(b"\n\r\n{\"id\":7,\"op\":\"fly\"}\n");
    assert_eq!(c.recv().unwrap()["id"], 7);
}

#[test]
fn an_over_long_line_gets_an_error_then_the_connection_closes() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    ok(c.sign(json!({"sub":"before"})));
    let mut line = br#"{"op":"sign","claims":{"pad":""#.to_vec();
    line.extend(std::iter::repeat_n(b'a', 70 * 1024));
    line.extend(b"\"}}\n");
    // The daemon may close before we finish writing; that is the point.
    let _ = std::io::Write::write_all(&mut c.writer, &line);
    let r = c.recv().expect("an error before the close");
    assert_eq!(code(&r), "frame_too_long");
    assert!(c.is_closed(), "connection must be closed");
    // A new connection is served.
    ok(d.conn().sign(json!({"sub":"after"})));

    // Without any newline at all, the same.
    let mut c = d.conn();
    let _ = std::io::Write::write_all(&mut c.writer, &vec![b'x'; 100 * 1024]);
    assert_eq!(code(&c.recv().unwrap()), "frame_too_long");
    assert!(c.is_closed());
    ok(d.conn().sign(json!({"sub":"after"})));
}

#[test]
fn a_line_just_under_the_limit_is_served() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    // 64 KiB limit: a 60 KiB verify request (a long bogus token) is parsed
    // and answered, and the connection stays open.
    let r = c.request(json!({"op":"verify","token":"a".repeat(60 * 1024)}));
    assert_eq!(code(&r), "invalid_token");
    ok(c.sign(json!({})));
}

#[test]
fn a_client_that_hangs_up_mid_line_does_not_hurt_others() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    {
        let mut c = d.conn();
        c.send_raw(b"{\"op\":\"sign\",\"claims\":{\"sub\"");
    }
    ok(d.conn().sign(json!({"sub":"x"})));
}
