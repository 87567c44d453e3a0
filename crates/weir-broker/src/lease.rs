//! The delivery state of one subscription in one partition, as a pure state machine: the
//! cursor (low mark + acknowledged ranges above it), leases with deadlines, messages waiting
//! for redelivery (with their attempt counts and retry backoff), and the next offset never
//! delivered. No I/O and no clock: time comes in with each call.
//!
//! Ordered subscriptions deliver a partition in offset order: nothing new goes out while a
//! message waits for redelivery, and a nack (or an expired deadline) hands back every later
//! lease of the partition too, so they are redelivered after it, in order — a nacked message
//! holds its ordering key (and the others hashed to its partition) until it is redelivered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weir_types::subscription::{CURSOR_RANGES_MAX, Cursor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    deadline: Instant,
    attempt: u32,
}

/// How a partition's messages are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ordered: bool,
    /// At most one message out at a time (ordered push: one in flight per key, whichever
    /// gateway pushes it).
    pub serial: bool,
    pub exactly_once: bool,
    pub retry_minimum_backoff: Duration,
    pub retry_maximum_backoff: Duration,
    /// Leased plus waiting messages at most; past it nothing new is delivered.
    pub outstanding_max: usize,
}

impl Policy {
    /// The pause before attempt `attempt + 1` of a message whose attempt `attempt` failed:
    /// doubling from the minimum, capped by the maximum.
    pub fn backoff(&self, attempt: u32) -> Duration {
        if self.retry_minimum_backoff.is_zero() && self.retry_maximum_backoff.is_zero() {
            return Duration::ZERO;
        }
        let shift = attempt.saturating_sub(1).min(20);
        self.retry_minimum_backoff
            .saturating_mul(1 << shift)
            .min(self.retry_maximum_backoff)
    }
}

/// One delivery: an offset and its attempt number (1 for the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub offset: i64,
    pub attempt: u32,
}

#[derive(Debug, Clone)]
pub struct Leases {
    policy: Policy,
    low: i64,
    /// Acknowledged ranges above `low`: start → end (exclusive), disjoint, never touching.
    acked: BTreeMap<i64, i64>,
    /// The next offset never delivered.
    next: i64,
    leases: BTreeMap<i64, Lease>,
    deadlines: BTreeSet<(Instant, i64)>,
    /// Offset → (attempts so far, redeliverable from).
    waiting: BTreeMap<i64, (u32, Instant)>,
    /// The cursor changed since it was last taken for storing.
    dirty: bool,
}

impl Leases {
    pub fn new(cursor: &Cursor, policy: Policy) -> Leases {
        let mut l = Leases {
            policy,
            low: cursor.low,
            acked: BTreeMap::new(),
            next: cursor.low,
            leases: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            waiting: BTreeMap::new(),
            dirty: false,
        };
        for (s, e) in &cursor.acked {
            l.acked.insert(*s, *e);
        }
        l.advance_low();
        l
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn low(&self) -> i64 {
        self.low
    }

    pub fn outstanding(&self) -> usize {
        self.leases.len() + self.waiting.len()
    }

    pub fn is_acked(&self, offset: i64) -> bool {
        if offset < self.low {
            return true;
        }
        self.acked
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, e)| offset < *e)
    }

    /// Hands expired leases back for redelivery.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, offset)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.nack(offset, now);
        }
    }

    /// Takes the lease of `offset` back for redelivery (after the backoff); in ordered mode
    /// every later lease goes back with it.
    fn nack(&mut self, offset: i64, now: Instant) {
        let Some(lease) = self.leases.remove(&offset) else {
            return;
        };
        self.deadlines.remove(&(lease.deadline, offset));
        let ready = now + self.policy.backoff(lease.attempt);
        self.waiting.insert(offset, (lease.attempt, ready));
        if self.policy.ordered {
            let later: Vec<(i64, Lease)> = self
                .leases
                .range(offset + 1..)
                .map(|(o, l)| (*o, *l))
                .collect();
            for (o, l) in later {
                self.leases.remove(&o);
                self.deadlines.remove(&(l.deadline, o));
                self.waiting.insert(o, (l.attempt, ready));
            }
        }
    }

    /// Redeliveries due now, at most `max`, leased until `deadline`.
    pub fn take_redeliveries(
        &mut self,
        now: Instant,
        max: usize,
        deadline: Instant,
    ) -> Vec<Delivered> {
        let mut out = Vec::new();
        if self.policy.serial && !self.leases.is_empty() {
            return out;
        }
        let max = if self.policy.serial { max.min(1) } else { max };
        if self.policy.ordered && !self.leases.is_empty() {
            // in order: the waiting ones go out only once nothing earlier is outstanding
            if let (Some((w, _)), Some((l, _))) = (
                self.waiting.first_key_value(),
                self.leases.first_key_value(),
            ) && l < w
            {
                return out;
            }
        }
        let due: Vec<(i64, u32)> = self
            .waiting
            .iter()
            .take_while(|(_, (_, ready))| !self.policy.ordered || *ready <= now)
            .filter(|(_, (_, ready))| *ready <= now)
            .take(max)
            .map(|(o, (a, _))| (*o, *a))
            .collect();
        for (offset, attempts) in due {
            self.waiting.remove(&offset);
            let attempt = attempts + 1;
            self.lease(offset, attempt, deadline);
            out.push(Delivered { offset, attempt });
        }
        out
    }

    fn lease(&mut self, offset: i64, attempt: u32, deadline: Instant) {
        self.leases.insert(offset, Lease { deadline, attempt });
        self.deadlines.insert((deadline, offset));
    }

    /// Where reading new messages starts, if new ones may go out now.
    pub fn fresh_from(&self) -> Option<i64> {
        if self.outstanding() >= self.policy.outstanding_max {
            return None;
        }
        if self.policy.serial && self.outstanding() > 0 {
            return None;
        }
        if self.policy.ordered && !self.waiting.is_empty() {
            return None;
        }
        Some(self.next)
    }

    /// How many new messages may be leased now.
    pub fn fresh_room(&self) -> usize {
        let room = self
            .policy
            .outstanding_max
            .saturating_sub(self.outstanding());
        if self.policy.serial {
            room.min(1)
        } else {
            room
        }
    }

    /// Leases the new messages read from `from` (offsets ascending; `read_end` is one past
    /// the last offset the read covered). `None` when another pull moved `next` meanwhile: the
    /// read is stale and nothing is leased.
    pub fn lease_fresh(
        &mut self,
        from: i64,
        offsets: &[i64],
        read_end: i64,
        deadline: Instant,
    ) -> Option<Vec<Delivered>> {
        let read: Vec<(i64, bool)> = offsets.iter().map(|o| (*o, true)).collect();
        self.lease_read(from, &read, read_end, deadline)
            .map(|(delivered, _)| delivered)
    }

    /// As `lease_fresh`, for offsets marked whether they pass the subscription's filter: the
    /// others are acknowledged without being delivered. Returns the deliveries and how many
    /// were filtered out.
    pub fn lease_read(
        &mut self,
        from: i64,
        offsets: &[(i64, bool)],
        read_end: i64,
        deadline: Instant,
    ) -> Option<(Vec<Delivered>, usize)> {
        if from != self.next || self.fresh_from().is_none() {
            return None;
        }
        let mut out = Vec::new();
        let mut filtered = 0;
        for &(offset, passes) in offsets {
            if offset < self.next || self.is_acked(offset) {
                continue;
            }
            if !passes {
                self.mark_acked(offset);
                filtered += 1;
                continue;
            }
            if self.outstanding() >= self.policy.outstanding_max
                || (self.policy.serial && self.outstanding() > 0)
            {
                // full: the rest is read again later
                self.next = offset;
                return Some((out, filtered));
            }
            self.lease(offset, 1, deadline);
            out.push(Delivered { offset, attempt: 1 });
        }
        self.next = self.next.max(read_end);
        Some((out, filtered))
    }

    /// Whether the lease `offset`/`attempt` is the current one (deadline not passed).
    fn current(&self, offset: i64, attempt: u32, now: Instant) -> bool {
        self.leases
            .get(&offset)
            .is_some_and(|l| l.attempt == attempt && l.deadline > now)
    }

    /// Acknowledges; false when the lease no longer held (with exactly-once delivery such an
    /// ack is refused, otherwise it still counts).
    pub fn ack(&mut self, offset: i64, attempt: u32, now: Instant) -> bool {
        let current = self.current(offset, attempt, now);
        if self.is_acked(offset) || offset >= self.next {
            return false;
        }
        if !current && self.policy.exactly_once {
            return false;
        }
        if let Some(l) = self.leases.remove(&offset) {
            self.deadlines.remove(&(l.deadline, offset));
        }
        self.waiting.remove(&offset);
        self.mark_acked(offset);
        current
    }

    /// A new deadline for a lease; 0 hands it back (a nack). False when the lease no longer
    /// held (nothing changes).
    pub fn modify(&mut self, offset: i64, attempt: u32, seconds: u32, now: Instant) -> bool {
        if !self.current(offset, attempt, now) {
            return false;
        }
        if seconds == 0 {
            self.nack(offset, now);
        } else if let Some(l) = self.leases.get_mut(&offset) {
            let old = l.deadline;
            l.deadline = now + Duration::from_secs(u64::from(seconds));
            let new = l.deadline;
            self.deadlines.remove(&(old, offset));
            self.deadlines.insert((new, offset));
        }
        true
    }

    fn mark_acked(&mut self, offset: i64) {
        self.dirty = true;
        let mut start = offset;
        let mut end = offset + 1;
        if let Some((&s, &e)) = self.acked.range(..=offset).next_back()
            && e >= offset
        {
            start = s;
            end = end.max(e);
            self.acked.remove(&s);
        }
        if let Some(&e) = self.acked.get(&end) {
            self.acked.remove(&end);
            end = e;
        }
        self.acked.insert(start, end);
        self.advance_low();
    }

    fn advance_low(&mut self) {
        while let Some((&s, &e)) = self.acked.first_key_value() {
            if s > self.low {
                break;
            }
            self.acked.remove(&s);
            self.low = self.low.max(e);
        }
        self.next = self.next.max(self.low);
    }

    /// The cursor to store (at most `CURSOR_RANGES_MAX` ranges: acks above them are stored
    /// once the low mark reaches them).
    pub fn cursor(&self) -> Cursor {
        Cursor {
            low: self.low,
            acked: self
                .acked
                .iter()
                .take(CURSOR_RANGES_MAX)
                .map(|(s, e)| (*s, *e))
                .collect(),
        }
    }

    /// The cursor if it changed since the last call.
    pub fn take_dirty(&mut self) -> Option<Cursor> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.cursor())
    }

    /// Puts the cursor back as dirty (storing it failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Replaces the cursor (seek): every lease and wait is dropped.
    pub fn seek(&mut self, cursor: &Cursor) {
        let policy = self.policy;
        *self = Leases::new(cursor, policy);
        self.dirty = true;
    }

    /// Messages below `end` not acknowledged.
    pub fn backlog(&self, end: i64) -> i64 {
        let acked: i64 = self
            .acked
            .iter()
            .map(|(s, e)| (*e).min(end) - (*s).min(end))
            .sum();
        (end - self.low).max(0) - acked
    }

    /// When something next becomes deliverable again or expires.
    pub fn next_wake(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(d, _)| *d);
        let ready = self.waiting.values().map(|(_, r)| *r).min();
        match (deadline, ready) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether something can be delivered now given the log's high watermark.
    pub fn deliverable(&self, now: Instant, high_watermark: i64) -> bool {
        let redeliver = self.waiting.values().any(|(_, r)| *r <= now);
        let fresh = self.fresh_from().is_some_and(|n| n < high_watermark);
        redeliver || fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            ordered: false,
            serial: false,
            exactly_once: false,
            retry_minimum_backoff: Duration::ZERO,
            retry_maximum_backoff: Duration::ZERO,
            outstanding_max: 1000,
        }
    }

    fn offsets(d: &[Delivered]) -> Vec<i64> {
        d.iter().map(|d| d.offset).collect()
    }

    #[test]
    fn acks_advance_the_cursor_and_ranges_above_it_are_kept() {
        let t0 = Instant::now();
        let dl = t0 + Duration::from_secs(10);
        let mut l = Leases::new(&Cursor::at(0), policy());
        let got = l.lease_fresh(0, &[0, 1, 2, 3, 4], 5, dl).expect("fresh");
        assert_eq!(offsets(&got), vec![0, 1, 2, 3, 4]);
        assert!(l.ack(1, 1, t0));
        assert!(l.ack(3, 1, t0));
        assert_eq!(
            l.cursor(),
            Cursor {
                low: 0,
                acked: vec![(1, 2), (3, 4)]
            }
        );
        assert!(l.ack(0, 1, t0));
        assert!(l.ack(2, 1, t0));
        assert_eq!(l.cursor(), Cursor::at(4));
        assert_eq!(l.backlog(5), 1);
        // a second ack of the same offset does not count
        assert!(!l.ack(2, 1, t0));
        // a stale read (next moved) leases nothing
        assert_eq!(l.lease_fresh(0, &[0], 1, dl), None);
    }

    #[test]
    fn expiry_and_nack_redeliver_with_attempts_and_backoff() {
        let t0 = Instant::now();
        let mut p = policy();
        p.retry_minimum_backoff = Duration::from_secs(1);
        p.retry_maximum_backoff = Duration::from_secs(3);
        let mut l = Leases::new(&Cursor::at(10), p);
        l.lease_fresh(10, &[10, 11], 12, t0 + Duration::from_secs(10))
            .expect("fresh");
        // nack 10 now: redeliverable after 1 s
        assert!(l.modify(10, 1, 0, t0));
        assert!(l.take_redeliveries(t0, 10, t0).is_empty());
        let t1 = t0 + Duration::from_secs(1);
        let again = l.take_redeliveries(t1, 10, t1 + Duration::from_secs(10));
        assert_eq!(
            again,
            vec![Delivered {
                offset: 10,
                attempt: 2
            }]
        );
        // 11 expires at t0+10 s, redelivered as attempt 2; backoffs double up to the cap
        l.expire(t0 + Duration::from_secs(10));
        let t2 = t0 + Duration::from_secs(11);
        assert_eq!(
            l.take_redeliveries(t2, 10, t2 + Duration::from_secs(10)),
            vec![Delivered {
                offset: 11,
                attempt: 2
            }]
        );
        assert_eq!(p.backoff(1), Duration::from_secs(1));
        assert_eq!(p.backoff(2), Duration::from_secs(2));
        assert_eq!(p.backoff(5), Duration::from_secs(3));
        // the old lease of 10 no longer holds for modify; with exactly-once an ack of it
        // would be refused
        assert!(!l.modify(10, 1, 30, t2));
    }

    #[test]
    fn exactly_once_refuses_acks_of_expired_leases() {
        let t0 = Instant::now();
        let mut p = policy();
        p.exactly_once = true;
        let mut l = Leases::new(&Cursor::at(0), p);
        l.lease_fresh(0, &[0, 1], 2, t0 + Duration::from_secs(10))
            .expect("fresh");
        let late = t0 + Duration::from_secs(11);
        l.expire(late);
        assert!(!l.ack(0, 1, late));
        assert_eq!(l.low(), 0);
        let again = l.take_redeliveries(late, 10, late + Duration::from_secs(10));
        assert_eq!(again.len(), 2);
        assert!(l.ack(0, 2, late));
        assert_eq!(l.low(), 1);
    }

    #[test]
    fn ordered_partitions_redeliver_in_order_before_anything_new() {
        let t0 = Instant::now();
        let mut p = policy();
        p.ordered = true;
        let dl = t0 + Duration::from_secs(10);
        let mut l = Leases::new(&Cursor::at(0), p);
        l.lease_fresh(0, &[0, 1, 2, 3], 4, dl).expect("fresh");
        assert!(l.ack(0, 1, t0));
        // nack 1: 2 and 3 go back with it
        assert!(l.modify(1, 1, 0, t0));
        assert_eq!(l.fresh_from(), None);
        assert_eq!(offsets(&l.take_redeliveries(t0, 10, dl)), vec![1, 2, 3]);
        assert_eq!(l.fresh_from(), Some(4));
    }

    #[test]
    fn serial_partitions_have_one_message_out_at_a_time() {
        let t0 = Instant::now();
        let mut p = policy();
        p.ordered = true;
        p.serial = true;
        let dl = t0 + Duration::from_secs(10);
        let mut l = Leases::new(&Cursor::at(0), p);
        assert_eq!(l.fresh_room(), 1);
        let got = l.lease_fresh(0, &[0, 1, 2], 3, dl).expect("fresh");
        assert_eq!(offsets(&got), vec![0]);
        // nothing more while 0 is out, whoever asks
        assert_eq!(l.fresh_from(), None);
        // 0 nacked: it alone comes again, then 1 only once 0 is acked
        assert!(l.modify(0, 1, 0, t0));
        assert_eq!(offsets(&l.take_redeliveries(t0, 10, dl)), vec![0]);
        assert_eq!(l.fresh_from(), None);
        assert!(l.take_redeliveries(t0, 10, dl).is_empty());
        assert!(l.ack(0, 2, t0));
        assert_eq!(l.fresh_from(), Some(1));
    }

    #[test]
    fn filtered_out_messages_are_acked_without_delivery() {
        let t0 = Instant::now();
        let mut l = Leases::new(&Cursor::at(0), policy());
        let read = [(0, false), (1, true), (2, false), (3, false)];
        let (got, filtered) = l
            .lease_read(0, &read, 4, t0 + Duration::from_secs(10))
            .expect("fresh");
        assert_eq!(offsets(&got), vec![1]);
        assert_eq!(filtered, 3);
        assert_eq!(
            l.cursor(),
            Cursor {
                low: 1,
                acked: vec![(2, 4)]
            }
        );
        assert!(l.ack(1, 1, t0));
        assert_eq!(l.cursor(), Cursor::at(4));
    }

    #[test]
    fn outstanding_is_bounded_and_seek_resets() {
        let t0 = Instant::now();
        let mut p = policy();
        p.outstanding_max = 2;
        let dl = t0 + Duration::from_secs(10);
        let mut l = Leases::new(&Cursor::at(0), p);
        assert_eq!(l.fresh_room(), 2);
        l.lease_fresh(0, &[0, 1], 2, dl).expect("fresh");
        assert_eq!(l.fresh_from(), None);
        l.seek(&Cursor {
            low: 5,
            acked: vec![(7, 8)],
        });
        assert_eq!(l.fresh_from(), Some(5));
        let got = l.lease_fresh(5, &[5, 6, 7, 8], 9, dl).expect("fresh");
        // room for two: the rest is read again
        assert_eq!(offsets(&got), vec![5, 6]);
        assert!(l.ack(5, 1, t0));
        // 7 was acked in the cursor sought to: reading goes on at 8
        assert_eq!(l.fresh_from(), Some(8));
        let got = l.lease_fresh(8, &[8], 9, dl).expect("fresh");
        assert_eq!(offsets(&got), vec![8]);
        assert_eq!(l.take_dirty().map(|c| c.low), Some(6));
        assert_eq!(l.take_dirty(), None);
    }
}
