//! Idempotent-producer state of one partition: for each producer id, its epoch and the
//! sequence ranges and offsets of its last [`BATCHES_REMEMBERED`] batches. Pure: the log
//! consults it under its write lock before appending a producer's batch, and records every
//! appended batch (leader and follower alike), so the state moves with the data.
//!
//! Rules (Kafka's): a batch whose sequence range equals a remembered one is a duplicate and
//! gets the original offsets back; otherwise its first sequence must follow the last one; a
//! new epoch must start at sequence 0 and fences the older epoch; an unknown producer must
//! start at sequence 0.

use std::collections::{HashMap, VecDeque};

use weir_types::{Offset, ProducerEpoch, ProducerId};

/// Batches remembered per producer (the client keeps at most this many in flight).
pub const BATCHES_REMEMBERED: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Remembered {
    first_seq: i32,
    last_seq: i32,
    base: Offset,
    last: Offset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Producer {
    epoch: ProducerEpoch,
    batches: VecDeque<Remembered>,
    last_timestamp: i64,
}

/// The idempotence fields of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer: ProducerId,
    pub epoch: ProducerEpoch,
    pub first_seq: i32,
    pub last_seq: i32,
}

/// What appending a producer's batch would mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    New,
    /// Already in the log at these offsets: answer with them, append nothing.
    Duplicate { base: Offset, last: Offset },
}

/// Why a producer's batch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("producer {producer}: sequence {got} does not follow {expected}")]
    OutOfOrder {
        producer: ProducerId,
        expected: i32,
        got: i32,
    },
    #[error("producer {producer}: epoch {got} is older than {current}")]
    Fenced {
        producer: ProducerId,
        got: ProducerEpoch,
        current: ProducerEpoch,
    },
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// The sequence of the last record of a batch starting at `first` with `count` records.
pub fn last_seq(first: i32, count: i32) -> i32 {
    ((i64::from(first) + i64::from(count) - 1) % (i64::from(i32::MAX) + 1)) as i32
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<ProducerId, Producer>,
}

impl ProducerTable {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn check(&self, batch: ProducerBatch) -> Result<Verdict, ProducerError> {
        let ProducerBatch {
            producer,
            epoch,
            first_seq,
            last_seq,
        } = batch;
        let Some(state) = self.producers.get(&producer) else {
            return if first_seq == 0 {
                Ok(Verdict::New)
            } else {
                Err(ProducerError::OutOfOrder {
                    producer,
                    expected: 0,
                    got: first_seq,
                })
            };
        };
        if epoch < state.epoch {
            return Err(ProducerError::Fenced {
                producer,
                got: epoch,
                current: state.epoch,
            });
        }
        if epoch > state.epoch {
            return if first_seq == 0 {
                Ok(Verdict::New)
            } else {
                Err(ProducerError::OutOfOrder {
                    producer,
                    expected: 0,
                    got: first_seq,
                })
            };
        }
        if let Some(dup) = state
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(Verdict::Duplicate {
                base: dup.base,
                last: dup.last,
            });
        }
        let expected = state.batches.back().map_or(0, |b| next_seq(b.last_seq));
        if first_seq != expected {
            return Err(ProducerError::OutOfOrder {
                producer,
                expected,
                got: first_seq,
            });
        }
        Ok(Verdict::New)
    }

    /// Records an appended batch (a new epoch forgets the older epoch's batches).
    pub fn record(&mut self, batch: ProducerBatch, base: Offset, last: Offset, timestamp: i64) {
        let ProducerBatch {
            producer,
            epoch,
            first_seq,
            last_seq,
        } = batch;
        let state = self.producers.entry(producer).or_insert(Producer {
            epoch,
            batches: VecDeque::new(),
            last_timestamp: timestamp,
        });
        if epoch > state.epoch {
            state.epoch = epoch;
            state.batches.clear();
        }
        if state.batches.len() == BATCHES_REMEMBERED {
            state.batches.pop_front();
        }
        state.batches.push_back(Remembered {
            first_seq,
            last_seq,
            base,
            last,
        });
        state.last_timestamp = state.last_timestamp.max(timestamp);
    }

    /// Forgets producers whose newest batch is older than `cutoff` (ms since the epoch).
    pub fn expire_before(&mut self, cutoff: i64) {
        self.producers.retain(|_, s| s.last_timestamp >= cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProducerId = ProducerId(7);
    const E0: ProducerEpoch = ProducerEpoch(0);
    const E1: ProducerEpoch = ProducerEpoch(1);

    fn pb(epoch: ProducerEpoch, first_seq: i32, last_seq: i32) -> ProducerBatch {
        ProducerBatch {
            producer: P,
            epoch,
            first_seq,
            last_seq,
        }
    }

    #[test]
    fn sequences_dedupe_and_order() {
        let mut t = ProducerTable::default();
        // (epoch, first, last) -> expected verdict; appended when New
        let steps: Vec<(ProducerEpoch, i32, i32, Result<Verdict, &str>)> = vec![
            (
                E0,
                1,
                1,
                Err("out of order: unknown producer must start at 0"),
            ),
            (E0, 0, 4, Ok(Verdict::New)),
            (
                E0,
                0,
                4,
                Ok(Verdict::Duplicate {
                    base: Offset(0),
                    last: Offset(4),
                }),
            ),
            (E0, 6, 6, Err("out of order: gap")),
            (E0, 5, 9, Ok(Verdict::New)),
            (
                E0,
                3,
                3,
                Err("out of order: overlaps but is no remembered batch"),
            ),
            (E1, 3, 3, Err("new epoch must start at 0")),
            (E1, 0, 0, Ok(Verdict::New)),
            (E0, 10, 10, Err("fenced")),
            (E1, 1, 1, Ok(Verdict::New)),
        ];
        let mut next = 0i64;
        for (epoch, first, last, expected) in steps {
            let got = t.check(pb(epoch, first, last));
            match (&got, &expected) {
                (Ok(g), Ok(e)) => assert_eq!(g, e, "{epoch:?} {first}..{last}"),
                (Err(ProducerError::Fenced { .. }), Err(why)) => assert!(why.contains("fenced")),
                (Err(ProducerError::OutOfOrder { .. }), Err(why)) => {
                    assert!(!why.contains("fenced"), "{why}")
                }
                _ => panic!("{epoch:?} {first}..{last}: got {got:?}, expected {expected:?}"),
            }
            if got == Ok(Verdict::New) {
                let count = i64::from(last - first + 1);
                t.record(
                    pb(epoch, first, last),
                    Offset(next),
                    Offset(next + count - 1),
                    0,
                );
                next += count;
            }
        }
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut t = ProducerTable::default();
        for i in 0..7 {
            t.record(pb(E0, i, i), Offset(i64::from(i)), Offset(i64::from(i)), 0);
        }
        assert!(matches!(
            t.check(pb(E0, 1, 1)),
            Err(ProducerError::OutOfOrder { .. })
        ));
        assert_eq!(
            t.check(pb(E0, 2, 2)),
            Ok(Verdict::Duplicate {
                base: Offset(2),
                last: Offset(2)
            })
        );
        assert_eq!(t.check(pb(E0, 7, 7)), Ok(Verdict::New));
        t.expire_before(1);
        assert!(t.is_empty());
        assert_eq!(last_seq(i32::MAX, 2), 0);
    }
}
