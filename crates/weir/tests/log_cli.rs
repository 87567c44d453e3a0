//! `weir log append|inspect|verify` run as a real process.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn weir(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn append_inspect_verify_and_detect_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let part = dir.path().join("orders-0");
    let part = part.to_str().expect("utf-8 path");
    let lines: String = (0..250).map(|i| format!("order-{i}\n")).collect();

    let out = weir(
        &[
            "log",
            "append",
            part,
            "--key",
            "k1",
            "--header",
            "src=test",
            "--batch-records",
            "100",
            "--codec",
            "zstd",
        ],
        &lines,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("appended 250 records at offsets [0, 250)"));

    let out = weir(&["log", "inspect", part, "--records"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("offsets 0..=99"), "{stdout}");
    assert!(stdout.contains("offsets 200..=249"), "{stdout}");
    assert!(stdout.contains("codec zstd  crc ok"), "{stdout}");
    assert!(stdout.contains("offset 249  timestamp"), "{stdout}");
    assert!(
        stdout.contains("value \"order-249\"  headers [src=\"test\"]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 segments, offsets [0, 250), 0 problems"),
        "{stdout}"
    );

    let out = weir(&["log", "verify", part], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("ok: 1 segments, 3 batches, offsets [0, 250) verified"));

    // flip one byte inside the second batch's records
    let seg = std::path::Path::new(part).join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).expect("read");
    let len = bytes.len();
    bytes[len / 2] ^= 0xff;
    std::fs::write(&seg, bytes).expect("write");
    let out = weir(&["log", "verify", part], "");
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("fails its CRC"), "{stdout}");
    let out = weir(&["log", "inspect", part], "");
    assert!(text(&out.stdout).contains("crc BAD"));
}

#[test]
fn bad_input_gets_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let out = weir(&["log", "inspect", missing.to_str().expect("path")], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a directory"),
        "{}",
        text(&out.stderr)
    );

    let part = dir.path().join("p");
    let out = weir(
        &[
            "log",
            "append",
            part.to_str().expect("path"),
            "--header",
            "novalue",
        ],
        "x\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--header \"novalue\""),
        "{}",
        text(&out.stderr)
    );

    let out = weir(
        &[
            "log",
            "append",
            part.to_str().expect("path"),
            "--batch-records",
            "0",
        ],
        "",
    );
    assert!(
        text(&out.stderr).contains("--batch-records"),
        "{}",
        text(&out.stderr)
    );
}
