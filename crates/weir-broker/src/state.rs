//! The rules of one replica, as a pure state machine: events in, actions out. No I/O, no
//! clock (time comes in with the events), so every rule is tested without a disk, a network
//! or real time. The owner task in [`crate::replica`] feeds it and performs what it returns.
//!
//! Leader rules: follower progress per leader epoch ([`Progress`]), the high watermark (the
//! minimum fsynced end over the committed ISR, never backwards while leading), which ISR to
//! ask the controller for, asked at most once per partition epoch a second.
//! Follower rules: the high watermark is the leader's, capped by what this replica has
//! fsynced; on divergence, truncate to the last offset both logs share
//! ([`crate::progress::truncation_target`]).

use std::time::{Duration, Instant};

use weir_types::{BrokerId, LeaderEpoch, Offset};

use crate::progress::{Progress, truncation_target};

/// How long an unanswered ISR request is left before the same change is asked again.
pub const ISR_ASK_INTERVAL: Duration = Duration::from_secs(1);

/// What the controller says about this partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    pub isr: Vec<BrokerId>,
    pub replicas: Vec<BrokerId>,
    pub min_insync_replicas: u32,
    /// Fences ISR changes: the controller accepts one only for the current partition epoch.
    pub partition_epoch: i32,
    /// While a reassignment runs: how fast a replica outside the ISR may catch up (0: no
    /// limit).
    pub catch_up_bytes_per_s: u64,
}

impl Leadership {
    /// No leader known yet, no replicas.
    pub fn none() -> Leadership {
        Leadership {
            leader: None,
            leader_epoch: LeaderEpoch::NONE,
            isr: Vec::new(),
            replicas: Vec::new(),
            min_insync_replicas: 1,
            partition_epoch: 0,
            catch_up_bytes_per_s: 0,
        }
    }
}

/// Something that happened to the replica. Offsets are the log's at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The metadata changed this partition's leadership, ISR or replicas.
    Leadership {
        leadership: Leadership,
        durable_end: Offset,
        now: Instant,
    },
    /// Appends became durable here: fsynced data now ends at `durable_end`.
    Durable { durable_end: Offset },
    /// On the leader: a follower fetched at `fetch_offset` (which it has fsynced) while this
    /// log ended at `log_end`.
    FollowerFetch {
        follower: BrokerId,
        fetch_offset: Offset,
        log_end: Offset,
        durable_end: Offset,
        now: Instant,
    },
    /// On a follower: the leader's high watermark arrived with a fetch response.
    LeaderHighWatermark {
        leader_hw: Offset,
        durable_end: Offset,
    },
    /// On a follower: the leader said this log diverged; its `epoch` ends at `leader_end`.
    /// `mine` is where this log's own largest epoch at or below it ends.
    Diverged {
        leader_end: Offset,
        mine: Option<(LeaderEpoch, Offset)>,
        log_start: Offset,
    },
    /// The log was cut back or restarted: it now ends at `log_end`.
    Truncated { log_end: Offset },
    /// Periodic: is an ISR change due?
    Tick { lag_max: Duration, now: Instant },
}

/// What the owner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Record and announce a new high watermark.
    HighWatermark(Offset),
    /// Cut the log back to this offset.
    Truncate(Offset),
    /// Ask the controller for this ISR (fenced by the epochs).
    AlterIsr {
        isr: Vec<BrokerId>,
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
    },
}

/// One replica's state.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    me: BrokerId,
    leadership: Leadership,
    progress: Progress,
    high_watermark: Offset,
    /// The partition epoch and time of the last ISR request.
    isr_asked: Option<(i32, Instant)>,
}

impl ReplicaState {
    pub fn new(me: BrokerId, high_watermark: Offset, now: Instant) -> ReplicaState {
        ReplicaState {
            me,
            leadership: Leadership::none(),
            progress: Progress::new(now),
            high_watermark,
            isr_asked: None,
        }
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.leader == Some(self.me)
    }

    /// Feeds one event; returns what to do, in order.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Leadership {
                leadership,
                durable_end,
                now,
            } => {
                // A new term restarts follower progress: offsets reported to an earlier
                // leader prove nothing to this one.
                let new_term = leadership.leader == Some(self.me)
                    && (!self.is_leader()
                        || self.leadership.leader_epoch != leadership.leader_epoch);
                if new_term {
                    self.progress = Progress::new(now);
                    self.isr_asked = None;
                }
                self.leadership = leadership;
                // a shrunk ISR may let the high watermark move
                self.advance(durable_end)
            }
            Event::Durable { durable_end } => self.advance(durable_end),
            Event::FollowerFetch {
                follower,
                fetch_offset,
                log_end,
                durable_end,
                now,
            } => {
                if !self.is_leader() {
                    return Vec::new();
                }
                self.progress
                    .record_fetch(follower, fetch_offset, log_end, now);
                self.advance(durable_end)
            }
            Event::LeaderHighWatermark {
                leader_hw,
                durable_end,
            } => {
                if self.is_leader() {
                    return Vec::new();
                }
                self.set_high_watermark(leader_hw.min(durable_end))
            }
            Event::Diverged {
                leader_end,
                mine,
                log_start,
            } => vec![Action::Truncate(truncation_target(
                leader_end, mine, log_start,
            ))],
            Event::Truncated { log_end } => {
                if self.high_watermark > log_end {
                    self.high_watermark = log_end;
                }
                Vec::new()
            }
            Event::Tick { lag_max, now } => self.isr_wish(lag_max, now).into_iter().collect(),
        }
    }

    /// On the leader: the high watermark over the ISR's reported offsets.
    fn advance(&mut self, durable_end: Offset) -> Vec<Action> {
        if !self.is_leader() {
            return Vec::new();
        }
        let hw = self.progress.high_watermark(
            self.me,
            &self.leadership.isr,
            durable_end,
            self.high_watermark,
        );
        self.set_high_watermark(hw)
    }

    fn set_high_watermark(&mut self, hw: Offset) -> Vec<Action> {
        if hw == self.high_watermark {
            return Vec::new();
        }
        self.high_watermark = hw;
        vec![Action::HighWatermark(hw)]
    }

    fn isr_wish(&mut self, lag_max: Duration, now: Instant) -> Option<Action> {
        if !self.is_leader() {
            return None;
        }
        let lead = &self.leadership;
        let isr = self.progress.wanted_isr(
            self.me,
            &lead.replicas,
            &lead.isr,
            self.high_watermark,
            lag_max,
            now,
        )?;
        // the same change is asked at most once a second while the controller's answer
        // travels back as metadata
        if self.isr_asked.is_some_and(|(epoch, at)| {
            epoch == lead.partition_epoch && now.duration_since(at) < ISR_ASK_INTERVAL
        }) {
            return None;
        }
        self.isr_asked = Some((lead.partition_epoch, now));
        Some(Action::AlterIsr {
            isr,
            leader_epoch: lead.leader_epoch,
            partition_epoch: lead.partition_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: BrokerId = BrokerId(1);
    const F2: BrokerId = BrokerId(2);
    const F3: BrokerId = BrokerId(3);

    fn lead(leader: BrokerId, epoch: i32, isr: &[BrokerId]) -> Leadership {
        Leadership {
            leader: Some(leader),
            leader_epoch: LeaderEpoch(epoch),
            isr: isr.to_vec(),
            replicas: vec![L, F2, F3],
            min_insync_replicas: 2,
            partition_epoch: epoch,
            catch_up_bytes_per_s: 0,
        }
    }

    /// The metadata makes `leadership` current (nothing fsynced yet counts).
    fn elect(s: &mut ReplicaState, leadership: Leadership, now: Instant) -> Vec<Action> {
        s.step(Event::Leadership {
            leadership,
            durable_end: Offset(0),
            now,
        })
    }

    fn fetch(follower: BrokerId, offset: i64, end: i64, now: Instant) -> Event {
        Event::FollowerFetch {
            follower,
            fetch_offset: Offset(offset),
            log_end: Offset(end),
            durable_end: Offset(end),
            now,
        }
    }

    #[test]
    fn the_leader_moves_the_high_watermark_only_over_the_isr() {
        let t = Instant::now();
        let mut s = ReplicaState::new(L, Offset(0), t);
        elect(&mut s, lead(L, 1, &[L, F2, F3]), t);
        // the leader's own fsync alone does not move it
        assert_eq!(
            s.step(Event::Durable {
                durable_end: Offset(10)
            }),
            vec![]
        );
        assert_eq!(s.step(fetch(F2, 10, 10, t)), vec![]);
        assert_eq!(
            s.step(fetch(F3, 6, 10, t)),
            vec![Action::HighWatermark(Offset(6))]
        );
        // F3 leaves the ISR: the high watermark follows F2 and the leader
        elect(&mut s, lead(L, 1, &[L, F2]), t);
        assert_eq!(
            s.step(Event::Durable {
                durable_end: Offset(10)
            }),
            vec![Action::HighWatermark(Offset(10))]
        );
        // a lagging report never moves it back
        assert_eq!(s.step(fetch(F2, 3, 10, t)), vec![]);
        assert_eq!(s.high_watermark(), Offset(10));
    }

    #[test]
    fn a_new_term_forgets_progress_reported_to_the_old_one() {
        let t = Instant::now();
        let mut s = ReplicaState::new(L, Offset(0), t);
        elect(&mut s, lead(L, 1, &[L, F2]), t);
        assert_eq!(
            s.step(fetch(F2, 5, 5, t)),
            vec![Action::HighWatermark(Offset(5))]
        );
        // another broker led epoch 2 and this one leads again in epoch 3
        elect(&mut s, lead(F2, 2, &[L, F2]), t);
        elect(&mut s, lead(L, 3, &[L, F2]), t);
        // F2's old report does not count: the log grew, the high watermark waits for F2
        assert_eq!(
            s.step(Event::Durable {
                durable_end: Offset(9)
            }),
            vec![]
        );
        assert_eq!(
            s.step(fetch(F2, 9, 9, t)),
            vec![Action::HighWatermark(Offset(9))]
        );
    }

    #[test]
    fn followers_take_the_leaders_high_watermark_capped_by_their_own_data() {
        let t = Instant::now();
        let mut s = ReplicaState::new(F2, Offset(0), t);
        elect(&mut s, lead(L, 1, &[L, F2]), t);
        let cases = [
            (10, 4, Some(4)),
            (10, 10, Some(10)),
            (10, 12, None),
            (15, 12, Some(12)),
        ];
        for (leader_hw, durable, expected) in cases {
            let out = s.step(Event::LeaderHighWatermark {
                leader_hw: Offset(leader_hw),
                durable_end: Offset(durable),
            });
            assert_eq!(
                out,
                expected
                    .map(|o| vec![Action::HighWatermark(Offset(o))])
                    .unwrap_or_default(),
                "{leader_hw} {durable}"
            );
        }
        // follower progress is ignored when not leading
        assert_eq!(s.step(fetch(F3, 20, 20, t)), vec![]);
        // truncation pulls the high watermark down with the log
        s.step(Event::Truncated { log_end: Offset(7) });
        assert_eq!(s.high_watermark(), Offset(7));
    }

    #[test]
    fn divergence_truncates_to_the_shared_prefix_never_the_high_watermark() {
        let t = Instant::now();
        let mut s = ReplicaState::new(F2, Offset(9), t);
        let out = s.step(Event::Diverged {
            leader_end: Offset(5),
            mine: Some((LeaderEpoch(2), Offset(8))),
            log_start: Offset(0),
        });
        assert_eq!(out, vec![Action::Truncate(Offset(5))]);
    }

    #[test]
    fn isr_changes_are_asked_once_per_epoch_a_second() {
        let t = Instant::now();
        let lag = Duration::from_millis(1000);
        let at = |ms| t + Duration::from_millis(ms);
        let mut s = ReplicaState::new(L, Offset(0), t);
        elect(&mut s, lead(L, 1, &[L, F2, F3]), t);
        assert_eq!(
            s.step(Event::Tick {
                lag_max: lag,
                now: at(500)
            }),
            vec![]
        );
        s.step(fetch(F2, 0, 0, at(900)));
        let shrink = Action::AlterIsr {
            isr: vec![L, F2],
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 1,
        };
        assert_eq!(
            s.step(Event::Tick {
                lag_max: lag,
                now: at(1500)
            }),
            vec![shrink.clone()]
        );
        // not asked again while the answer travels
        assert_eq!(
            s.step(Event::Tick {
                lag_max: lag,
                now: at(1600)
            }),
            vec![]
        );
        s.step(fetch(F2, 0, 0, at(2400)));
        // asked again after the interval
        assert_eq!(
            s.step(Event::Tick {
                lag_max: lag,
                now: at(2600)
            }),
            vec![shrink]
        );
        // a follower never asks
        let mut f = ReplicaState::new(F2, Offset(0), t);
        elect(&mut f, lead(L, 1, &[L, F2, F3]), t);
        assert_eq!(
            f.step(Event::Tick {
                lag_max: lag,
                now: at(5000)
            }),
            vec![]
        );
    }
}
