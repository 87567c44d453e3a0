//! The leader's view of its followers, and the high-watermark rule. Pure: no I/O, time is
//! passed in.
//!
//! - A follower's `fetch_offset` counts as replicated: followers report only offsets they
//!   have fsynced.
//! - The high watermark is the minimum of the leader's durable end and every other ISR
//!   member's reported offset, and never moves backwards while this broker leads.
//! - A follower is caught up when a fetch reported an offset at or past the leader's log end
//!   at that moment; one that has not been caught up for `lag_max` leaves the ISR, and one
//!   that reaches the high watermark in the current leader epoch may join it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weir_types::{BrokerId, Offset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    pub fetch_offset: Offset,
    pub last_fetch: Instant,
    pub last_caught_up: Instant,
}

/// Follower progress for one partition led here, reset on every leader epoch.
#[derive(Debug, Clone)]
pub struct Progress {
    followers: BTreeMap<BrokerId, Follower>,
    /// When this broker started leading (followers not yet heard from count as caught up
    /// since then, so a new leader gives them `lag_max` to show up).
    since: Instant,
}

impl Progress {
    pub fn new(now: Instant) -> Progress {
        Progress {
            followers: BTreeMap::new(),
            since: now,
        }
    }

    /// Records a fetch from `follower` reporting `fetch_offset` while the leader's log ends at
    /// `leader_end`.
    pub fn record_fetch(
        &mut self,
        follower: BrokerId,
        fetch_offset: Offset,
        leader_end: Offset,
        now: Instant,
    ) {
        let since = self.since;
        let f = self.followers.entry(follower).or_insert(Follower {
            fetch_offset,
            last_fetch: now,
            last_caught_up: since,
        });
        f.fetch_offset = fetch_offset;
        f.last_fetch = now;
        if fetch_offset >= leader_end {
            f.last_caught_up = now;
        }
    }

    pub fn follower(&self, id: BrokerId) -> Option<Follower> {
        self.followers.get(&id).copied()
    }

    /// The high watermark given the current ISR: never below `current`, never above
    /// `leader_durable`.
    pub fn high_watermark(
        &self,
        leader: BrokerId,
        isr: &[BrokerId],
        leader_durable: Offset,
        current: Offset,
    ) -> Offset {
        let mut hw = leader_durable;
        for member in isr.iter().filter(|m| **m != leader) {
            let reported = self
                .followers
                .get(member)
                .map_or(Offset::ZERO, |f| f.fetch_offset);
            hw = hw.min(reported);
        }
        hw.max(current).min(leader_durable)
    }

    /// The ISR this leader should ask for, or `None` when the current one is right.
    pub fn wanted_isr(
        &self,
        leader: BrokerId,
        replicas: &[BrokerId],
        isr: &[BrokerId],
        high_watermark: Offset,
        lag_max: Duration,
        now: Instant,
    ) -> Option<Vec<BrokerId>> {
        let mut wanted: Vec<BrokerId> = Vec::with_capacity(replicas.len());
        for r in replicas {
            let keep = if *r == leader {
                true
            } else if isr.contains(r) {
                let last = self
                    .followers
                    .get(r)
                    .map_or(self.since, |f| f.last_caught_up);
                now.duration_since(last) <= lag_max
            } else {
                self.followers.get(r).is_some_and(|f| {
                    f.fetch_offset >= high_watermark
                        && now.duration_since(f.last_caught_up) <= lag_max
                })
            };
            if keep {
                wanted.push(*r);
            }
        }
        let mut current = isr.to_vec();
        current.sort();
        let mut sorted = wanted.clone();
        sorted.sort();
        (sorted != current).then_some(wanted)
    }
}

/// Where a follower truncates when the leader answers that its log diverged: the leader said
/// its largest epoch at or below the follower's last one ends at `leader_end`. `mine` is where
/// this follower's own largest epoch at or below that one ends (`None`: it has none). Never
/// the follower's high watermark: that could keep records the leader does not have.
pub fn truncation_target(
    leader_end: Offset,
    mine: Option<(weir_types::LeaderEpoch, Offset)>,
    log_start: Offset,
) -> Offset {
    match mine {
        Some((_, my_end)) => my_end.min(leader_end),
        // every batch here comes from a later epoch than any the leader shares: keep nothing
        None => leader_end.min(log_start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: BrokerId = BrokerId(1);
    const F2: BrokerId = BrokerId(2);
    const F3: BrokerId = BrokerId(3);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn high_watermark_is_the_isr_minimum_and_never_goes_back() {
        let t = Instant::now();
        let mut p = Progress::new(t);
        let isr = [L, F2, F3];
        // table: (fetch by F2, fetch by F3, leader durable, expected hw)
        let cases = [
            (None, None, 10, 0),
            (Some(4), None, 10, 0),
            (Some(4), Some(7), 10, 4),
            (Some(9), Some(7), 10, 7),
            (Some(12), Some(12), 10, 10),
            (Some(3), Some(3), 12, 10),
        ];
        let mut hw = Offset::ZERO;
        for (f2, f3, durable, expected) in cases {
            if let Some(o) = f2 {
                p.record_fetch(F2, Offset(o), Offset(durable), t);
            }
            if let Some(o) = f3 {
                p.record_fetch(F3, Offset(o), Offset(durable), t);
            }
            hw = p.high_watermark(L, &isr, Offset(durable), hw);
            assert_eq!(hw, Offset(expected), "{f2:?} {f3:?} {durable}");
        }
        // with the ISR shrunk to the leader, only the leader's durable end counts
        assert_eq!(p.high_watermark(L, &[L], Offset(15), hw), Offset(15));
        // never above what the leader has fsynced
        assert_eq!(
            p.high_watermark(L, &[L], Offset(14), Offset(20)),
            Offset(14)
        );
    }

    #[test]
    fn truncation_goes_to_the_last_common_point() {
        use weir_types::LeaderEpoch as E;
        // (leader's end of the epoch, follower's own (epoch, end), follower log start, target)
        let cases = [
            // the follower has more of the same epoch than the leader: cut to the leader's end
            (Offset(10), Some((E(3), Offset(15))), Offset(0), Offset(10)),
            // the follower's copy of that epoch ends earlier: keep only what both have
            (Offset(10), Some((E(3), Offset(7))), Offset(0), Offset(7)),
            // the follower has an older epoch only; it ended before the leader's
            (Offset(10), Some((E(2), Offset(4))), Offset(0), Offset(4)),
            // the follower shares no epoch with the leader: keep nothing
            (Offset(10), None, Offset(0), Offset(0)),
            (Offset(10), None, Offset(6), Offset(6)),
        ];
        for (leader_end, mine, start, expected) in cases {
            assert_eq!(
                truncation_target(leader_end, mine, start),
                expected,
                "{leader_end} {mine:?} {start}"
            );
        }
    }

    #[test]
    fn lagging_followers_leave_and_caught_up_ones_return() {
        let t = Instant::now();
        let lag = Duration::from_millis(1000);
        let replicas = [L, F2, F3];
        let mut p = Progress::new(t);
        // nobody heard from yet: within the grace period the ISR stays
        assert_eq!(
            p.wanted_isr(L, &replicas, &replicas, Offset(0), lag, at(t, 500)),
            None
        );
        // F2 keeps up, F3 never fetches: after the lag F3 goes
        p.record_fetch(F2, Offset(10), Offset(10), at(t, 900));
        assert_eq!(
            p.wanted_isr(L, &replicas, &replicas, Offset(10), lag, at(t, 1500)),
            Some(vec![L, F2])
        );
        // F3 fetches but is behind the high watermark: not yet back
        let isr = [L, F2];
        p.record_fetch(F3, Offset(4), Offset(12), at(t, 1600));
        assert_eq!(
            p.wanted_isr(L, &replicas, &isr, Offset(10), lag, at(t, 1600)),
            None
        );
        // F3 reaches the high watermark: it returns
        p.record_fetch(F3, Offset(12), Offset(12), at(t, 1700));
        p.record_fetch(F2, Offset(12), Offset(12), at(t, 1700));
        assert_eq!(
            p.wanted_isr(L, &replicas, &isr, Offset(12), lag, at(t, 1700)),
            Some(vec![L, F2, F3])
        );
        // a follower that keeps fetching but never catches up to the log end still leaves
        p.record_fetch(F2, Offset(12), Offset(50), at(t, 2000));
        p.record_fetch(F2, Offset(13), Offset(60), at(t, 2800));
        p.record_fetch(F3, Offset(60), Offset(60), at(t, 2800));
        assert_eq!(
            p.wanted_isr(L, &replicas, &[L, F2, F3], Offset(12), lag, at(t, 2800)),
            Some(vec![L, F3])
        );
    }
}
