//! Crash test: a child process appends with fsync and reports each acknowledged batch on a
//! pipe; the parent SIGKILLs it at random moments, reopens the log and checks that every
//! acknowledged batch is present and intact and that nothing past the recovered end is served.
//!
//! The child is this same test binary, re-run with `WEIR_CRASH_CHILD_DIR` set.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_log::{LogConfig, LogError, ManualClock};
use weir_types::{LeaderEpoch, Offset};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 1024,
        batch_bytes_max: 16 * 1024,
        retention_ms: None,
        segment_ms_max: None,
        ..LogConfig::default()
    }
}

/// A tiny deterministic generator, so a failing round can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("WEIR_CRASH_CHILD_DIR") else {
        return; // only meaningful when spawned by the parent test
    };
    let seed: u64 = std::env::var("WEIR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let clock = Arc::new(ManualClock::new(0));
    let log = Arc::new(common::open(std::path::Path::new(&dir), config(), &clock));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let epoch = LeaderEpoch(1 + seed as i32);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (log, out) = (Arc::clone(&log), Arc::clone(&out));
            s.spawn(move || {
                let mut rng = Rng(seed * 1000 + t + 1);
                for n in 0.. {
                    let count = 1 + rng.below(8) as usize;
                    let value = rng.below(2000) as usize;
                    let batch = common::batch(seed << 32 | t << 24 | n, count, value, n as i64);
                    let info = log.append(&batch, epoch).expect("append");
                    let mut out = out.lock().expect("stdout");
                    writeln!(
                        out,
                        "ack {} {} {:08x}",
                        info.base_offset,
                        info.last_offset,
                        batch.stored_crc()
                    )
                    .expect("write ack");
                    out.flush().expect("flush ack");
                }
            });
        }
    });
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    base: Offset,
    last: Offset,
    crc: u32,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ack ")?.split_whitespace();
    Some(Ack {
        base: Offset(parts.next()?.parse().ok()?),
        last: Offset(parts.next()?.parse().ok()?),
        crc: u32::from_str_radix(parts.next()?, 16).ok()?,
    })
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let rounds: u64 = std::env::var("WEIR_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut all_acks: Vec<Ack> = Vec::new();
    let mut rng = Rng(0x5eed);
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("WEIR_CRASH_CHILD_DIR", dir.path())
            .env("WEIR_CRASH_SEED", (round + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let acks = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let acks = Arc::clone(&acks);
            move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(ack) = parse_ack(&line) {
                        acks.lock().expect("acks").push(ack);
                    }
                }
            }
        });
        // Let it run a random while, sometimes killing it while it is still opening the log.
        std::thread::sleep(Duration::from_millis(2 + rng.below(80)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        let acks = std::mem::take(&mut *acks.lock().expect("acks"));
        all_acks.extend(acks);

        let clock = Arc::new(ManualClock::new(0));
        let log = common::open(dir.path(), config(), &clock);
        let end = log.end_offset();
        for ack in &all_acks {
            assert!(
                ack.last < end,
                "round {round}: acknowledged batch {ack:?} is past the recovered end {end}"
            );
            let got = log
                .read(ack.base, 1, None)
                .expect("read acknowledged batch");
            let batch = got
                .first()
                .unwrap_or_else(|| panic!("round {round}: {ack:?} missing"));
            assert_eq!(
                (batch.base_offset(), batch.last_offset(), batch.stored_crc()),
                (ack.base, ack.last, ack.crc),
                "round {round}: acknowledged batch changed"
            );
            assert!(batch.crc_ok());
        }
        // the whole log reads back contiguous and intact, and nothing is served past the end
        let mut next = log.start_offset();
        while next < end {
            let batches = log.read(next, 1 << 20, None).expect("read");
            for b in batches {
                assert_eq!(b.base_offset(), next, "round {round}: gap or overlap");
                next = b.next_offset();
            }
        }
        assert_eq!(next, end);
        assert!(
            log.read(end, 1 << 20, None)
                .expect("read at end")
                .is_empty()
        );
        assert!(matches!(
            log.read(end.plus(1), 1 << 20, None),
            Err(LogError::OffsetOutOfRange { .. })
        ));
        log.close().expect("close");
    }
    assert!(
        all_acks.len() > rounds as usize,
        "the child acknowledged only {} appends in {rounds} rounds; the test proved little",
        all_acks.len()
    );
}
