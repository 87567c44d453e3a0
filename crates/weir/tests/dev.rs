//! `weir dev`: one process, one controller and one broker; produce, consume, stop with
//! SIGINT, start again, and the data is still there.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weir_testkit::free_port;

fn start_dev(data: &std::path::Path, controller: &str, broker: &str, threads: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--worker-threads", threads, "dev", "--data-dir"])
        .arg(data)
        .args([
            "--controller",
            controller,
            "--broker",
            broker,
            "--http",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(first.contains("single-node cluster ready"), "{first}");
    // keep draining so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    child
}

fn weir(bootstrap: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .args(["--bootstrap", bootstrap])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "weir dev exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "weir dev did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dev_serves_produce_and_consume_and_keeps_data_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = format!("127.0.0.1:{}", free_port());
    let broker = format!("127.0.0.1:{}", free_port());
    let dev = start_dev(dir.path(), &controller, &broker, "2");

    weir(
        &controller,
        &["topic", "create", "events", "--partitions", "2"],
        "",
    );
    let out = weir(
        &controller,
        &["produce", "events", "--key", "user-1"],
        "a\nb\nc\n",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("produced 3 records"));
    let read = |n: &str| {
        let out = weir(
            &controller,
            &["consume", "events", "--from-beginning", "--max-messages", n],
            "",
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(read("3"), "a\nb\nc\n");
    stop(dev);

    // again on a single runtime thread (as `weir-cluster` runs nodes sharing a small
    // machine): nothing may wait on a runtime thread for work queued behind it
    let dev = start_dev(dir.path(), &controller, &broker, "1");
    assert_eq!(read("3"), "a\nb\nc\n", "data lost across restart");
    weir(
        &controller,
        &["produce", "events", "--key", "user-1"],
        "d\n",
    );
    assert_eq!(read("4"), "a\nb\nc\nd\n");
    stop(dev);
}
