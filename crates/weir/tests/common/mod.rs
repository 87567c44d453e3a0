//! Helpers shared by the multi-process tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use weir_cluster::{Cluster, Spec};

pub fn weir_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

/// A cluster that is stopped however the test ends.
pub struct Running(pub Cluster);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.down(Duration::from_secs(3));
    }
}

pub fn up(controllers: u32, brokers: u32, lease_ms: u64, dir: &tempfile::TempDir) -> Running {
    let spec = Spec {
        controllers,
        brokers,
        combined: false,
        dir: dir.path().to_path_buf(),
        weir: weir_bin(),
        broker_lease_ms: lease_ms,
        env: Vec::new(),
        tls: false,
    };
    Running(Cluster::up(&spec, Duration::from_secs(60)).expect("cluster up"))
}

/// Runs the `weir` CLI against `bootstrap` with `stdin` as input.
pub fn weir(bootstrap: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(weir_bin())
        .args(args)
        .env("WEIR_BOOTSTRAP", bootstrap)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("weir output")
}

/// The stdout of a successful run; fails the test with stderr otherwise.
pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weir failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Polls `probe` every 100 ms until it answers, failing the test after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `partition -> (leader, epoch, isr)` from `weir topic describe`.
pub fn partitions(bootstrap: &str, topic: &str) -> Vec<(u32, i32, String)> {
    ok(weir(bootstrap, &["topic", "describe", topic], None))
        .lines()
        .filter(|l| l.trim_start().starts_with("partition"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let leader = words[3].parse().unwrap_or(0);
            let epoch_at = words.iter().position(|w| *w == "epoch").expect("epoch");
            let epoch = words[epoch_at + 1].parse().expect("epoch number");
            let isr_at = words.iter().position(|w| *w == "isr").expect("isr");
            (leader, epoch, words[isr_at + 1].to_string())
        })
        .collect()
}
