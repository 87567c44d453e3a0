//! Property test: random sequences of append / read / truncate / roll / retention / reopen
//! against an in-memory model of the log.

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use weir_log::{LogConfig, ManualClock, PartitionLog};
use weir_types::{LeaderEpoch, Offset, RecordBatch};

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: usize,
        value_bytes: usize,
        ts_step: i64,
        new_epoch: bool,
    },
    Read {
        from_pick: usize,
        max_bytes: usize,
    },
    Truncate {
        pick: usize,
    },
    Roll,
    Retention,
    Reopen {
        clean: bool,
    },
    TimestampLookup {
        ts_pick: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6, 0usize..300, -50i64..200, proptest::bool::weighted(0.1))
            .prop_map(|(count, value_bytes, ts_step, new_epoch)| Op::Append { count, value_bytes, ts_step, new_epoch }),
        4 => (any::<usize>(), 1usize..5000).prop_map(|(from_pick, max_bytes)| Op::Read { from_pick, max_bytes }),
        1 => any::<usize>().prop_map(|pick| Op::Truncate { pick }),
        1 => Just(Op::Roll),
        1 => Just(Op::Retention),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => (-100i64..5000).prop_map(|ts_pick| Op::TimestampLookup { ts_pick }),
    ]
}

#[derive(Default)]
struct Model {
    /// Stored batches (as the log stamped them), in offset order.
    batches: Vec<RecordBatch>,
    start: Offset,
    end: Offset,
    epochs: Vec<(LeaderEpoch, Offset)>,
    epoch: i32,
    ts: i64,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 2048,
        index_interval_bytes: 200,
        batch_bytes_max: 2048,
        decompressed_bytes_max: 1 << 20,
        retention_ms: None,
        retention_bytes: Some(3000),
        segment_ms_max: None,
        ..LogConfig::default()
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let mut log: Option<PartitionLog> = Some(common::open(dir.path(), config(), &clock));
    let mut m = Model {
        epoch: 1,
        ..Model::default()
    };
    let mut tag = 0u64;
    for op in ops {
        let l = log.as_ref().expect("open");
        match op {
            Op::Append {
                count,
                value_bytes,
                ts_step,
                new_epoch,
            } => {
                tag += 1;
                if new_epoch {
                    m.epoch += 1;
                }
                m.ts += ts_step;
                let b = common::batch(tag, count, value_bytes, m.ts);
                let info = l.append(&b, LeaderEpoch(m.epoch)).expect("append");
                prop_assert_eq!(info.base_offset, m.end);
                if m.epochs.last().is_none_or(|(e, _)| e.0 < m.epoch) {
                    m.epochs.push((LeaderEpoch(m.epoch), m.end));
                }
                m.batches.push(b.stamped(m.end, LeaderEpoch(m.epoch)));
                m.end = info.last_offset.plus(1);
            }
            Op::Read {
                from_pick,
                max_bytes,
            } => {
                let span = (m.end.0 - m.start.0 + 1) as usize;
                let from = m.start.plus((from_pick % span) as i64);
                let got = l.read(from, max_bytes, None).expect("read");
                let expected: Vec<&RecordBatch> = m
                    .batches
                    .iter()
                    .filter(|b| b.last_offset() >= from)
                    .collect();
                prop_assert!(got.len() <= expected.len());
                prop_assert_eq!(got.is_empty(), expected.is_empty());
                let mut bytes = 0;
                for (g, e) in got.iter().zip(&expected) {
                    prop_assert_eq!(g, *e);
                    bytes += g.size_bytes();
                }
                prop_assert!(got.len() <= 1 || bytes <= max_bytes, "over the byte limit");
                if let Some(next) = expected.get(got.len()) {
                    prop_assert!(bytes + next.size_bytes() > max_bytes, "stopped early");
                }
            }
            Op::Truncate { pick } => {
                let span = (m.end.0 - m.start.0 + 1) as usize;
                let at = m.start.plus((pick % span) as i64);
                let new_end = l.truncate_to(at).expect("truncate");
                let keep: Vec<RecordBatch> = m
                    .batches
                    .iter()
                    .filter(|b| b.last_offset() < at)
                    .cloned()
                    .collect();
                let expected_end = if at >= m.end {
                    m.end
                } else if at <= m.start {
                    at
                } else {
                    keep.last().map_or(m.start, |b| b.next_offset())
                };
                prop_assert_eq!(new_end, expected_end);
                if at <= m.start && at < m.end {
                    // the log restarts at `at` with no history
                    m.start = at;
                    m.epochs.clear();
                }
                m.batches = keep;
                m.end = new_end;
                m.epochs.retain(|(_, s)| *s < new_end);
            }
            Op::Roll => l.roll().expect("roll"),
            Op::Retention => {
                let outcome = l.enforce_retention().expect("retention");
                prop_assert!(outcome.log_start >= m.start);
                prop_assert!(outcome.log_start <= m.end);
                prop_assert!(
                    outcome.log_start == m.end
                        || m.batches
                            .iter()
                            .any(|b| b.base_offset() == outcome.log_start)
                        || outcome.log_start == m.start,
                    "log start {} is not a batch boundary",
                    outcome.log_start
                );
                m.start = outcome.log_start;
                m.batches.retain(|b| b.base_offset() >= outcome.log_start);
            }
            Op::Reopen { clean } => {
                let l = log.take().expect("open");
                if clean {
                    l.close().expect("close");
                } else {
                    drop(l);
                }
                log = Some(common::open(dir.path(), config(), &clock));
            }
            Op::TimestampLookup { ts_pick } => {
                let expected = m
                    .batches
                    .iter()
                    .flat_map(|b| b.records().expect("records"))
                    .find(|(_, r)| r.timestamp_ms >= ts_pick)
                    .map(|(o, r)| (o, r.timestamp_ms));
                prop_assert_eq!(l.offset_for_timestamp(ts_pick).expect("lookup"), expected);
            }
        }
        let l = log.as_ref().expect("open");
        prop_assert_eq!(l.start_offset(), m.start);
        prop_assert_eq!(l.end_offset(), m.end);
        prop_assert_eq!(l.durable_end(), m.end);
        prop_assert_eq!(l.epochs(), m.epochs.clone());
        let size: u64 = m.batches.iter().map(|b| b.size_bytes() as u64).sum();
        prop_assert_eq!(l.size_bytes(), size);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // WEIR_MODEL_CASES raises this for long local campaigns.
        cases: std::env::var("WEIR_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
