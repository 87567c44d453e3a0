//! Hand-built histories, one per anomaly, and a clean one.

use super::*;
use crate::history::Send;

/// A tiny history builder: completions only, indexes in order.
#[derive(Default)]
struct H(Vec<Op>);

impl H {
    fn push(&mut self, mut op: Op) -> &mut Self {
        op.index = self.0.len() as u64;
        self.0.push(op);
        self
    }
    fn send(&mut self, p: u64, kind: Type, key: u32, value: u64, offset: Option<i64>) -> &mut Self {
        let mut op = Op::new(p, kind, F::Send);
        op.sends = vec![Send { key, value, offset }];
        self.push(op)
    }
    fn poll(&mut self, p: u64, kind: Type, key: u32, read: &[(i64, u64)]) -> &mut Self {
        let mut op = Op::new(p, kind, F::Poll);
        op.polls.insert(key, read.to_vec());
        self.push(op)
    }
    fn assign(&mut self, p: u64, keys: &[u32]) -> &mut Self {
        let mut op = Op::new(p, Type::Ok, F::Assign);
        op.keys = keys.to_vec();
        self.push(op)
    }
    fn subscribe(&mut self, p: u64, keys: &[u32]) -> &mut Self {
        let mut op = Op::new(p, Type::Ok, F::Subscribe);
        op.keys = keys.to_vec();
        self.push(op)
    }
    fn commit(&mut self, p: u64, group: &str, key: u32, offset: i64) -> &mut Self {
        let mut op = Op::new(p, Type::Ok, F::Commit);
        op.group = Some(group.into());
        op.commits.insert(key, offset);
        self.push(op)
    }
    fn check(&self) -> Report {
        check(&self.0, Options::default())
    }
}

fn only(report: &Report) -> Vec<String> {
    report.counts.keys().cloned().collect()
}

#[test]
fn a_clean_history_is_valid() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(0))
        .send(1, Type::Ok, 0, 2, Some(1))
        .send(1, Type::Fail, 0, 3, None)
        // unknown outcome, never read: not lost, not unseen
        .send(2, Type::Info, 0, 4, None)
        .send(1, Type::Ok, 1, 1, Some(5))
        .assign(3, &[0, 1])
        .poll(3, Type::Ok, 0, &[(0, 1)])
        .poll(3, Type::Ok, 0, &[(1, 2)])
        .poll(3, Type::Ok, 1, &[(5, 1)])
        .commit(3, "g", 0, 2)
        .commit(3, "g", 0, 2);
    let r = h.check();
    assert!(r.valid, "{:?}", r.anomalies);
    assert!(r.counts.is_empty());
    assert_eq!(r.stats.sends_ok, 3);
    assert_eq!(r.stats.values_read, 3);
}

#[test]
fn an_unknown_send_that_was_read_must_have_committed() {
    let mut h = H::default();
    h.send(1, Type::Info, 0, 1, None)
        .send(1, Type::Ok, 0, 2, Some(1))
        .poll(2, Type::Ok, 0, &[(1, 2)])
        // value 1 shows up at offset 0 in a poll that failed, and was read ok by nobody
        .poll(3, Type::Info, 0, &[(0, 1)]);
    let r = h.check();
    // value 1 was never read by an ok poll, so it need not have committed: not lost
    assert!(r.valid, "{:?}", r.anomalies);

    let mut h = H::default();
    h.send(1, Type::Info, 0, 1, None)
        .send(1, Type::Ok, 0, 2, Some(1))
        .poll(2, Type::Ok, 0, &[(0, 1), (1, 2)]);
    assert!(h.check().valid);
}

#[test]
fn lost_writes_are_below_the_highest_read() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(0))
        .send(1, Type::Ok, 0, 2, Some(1))
        .poll(2, Type::Ok, 0, &[(1, 2)]);
    let r = h.check();
    assert!(!r.valid);
    assert_eq!(r.counts["lost-write"], 1);
    assert_eq!(r.anomalies["lost-write"][0]["value"], 1);
    // and never seen at all
    assert_eq!(r.counts["unseen"], 1);
}

#[test]
fn an_acknowledged_send_nobody_read_is_unseen_but_not_lost() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(0))
        .send(1, Type::Ok, 0, 2, Some(1))
        .poll(2, Type::Ok, 0, &[(0, 1)]);
    let r = h.check();
    assert_eq!(only(&r), vec!["unseen"]);
    assert!(!r.valid);
}

#[test]
fn inconsistent_offsets_duplicates_and_aborted_reads() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(0))
        .send(2, Type::Ok, 0, 2, Some(0))
        .send(1, Type::Fail, 0, 3, None)
        .poll(3, Type::Ok, 0, &[(0, 1), (1, 3), (2, 1)]);
    let r = h.check();
    assert!(
        r.counts.contains_key("inconsistent-offsets"),
        "{:?}",
        r.counts
    );
    assert!(r.counts.contains_key("duplicate"));
    assert!(r.counts.contains_key("G1a"));
    assert!(!r.valid);
}

#[test]
fn duplicates_fail_only_with_an_idempotent_producer() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(0))
        .poll(2, Type::Ok, 0, &[(0, 1), (1, 1)]);
    assert!(!check(&h.0, Options { idempotent: true }).valid);
    let r = check(&h.0, Options { idempotent: false });
    assert!(r.valid);
    assert_eq!(r.counts["duplicate"], 1);
}

#[test]
fn poll_skips_and_nonmonotonic_polls_across_and_within_operations() {
    let mut h = H::default();
    for (o, v) in [(0, 1), (1, 2), (2, 3), (3, 4)] {
        h.send(1, Type::Ok, 0, v, Some(o));
    }
    h.assign(2, &[0])
        .poll(2, Type::Ok, 0, &[(0, 1), (1, 2)])
        .poll(2, Type::Ok, 0, &[(3, 4)]) // skipped offset 2
        .poll(2, Type::Ok, 0, &[(2, 3)]) // went back
        .poll(3, Type::Ok, 0, &[(0, 1), (2, 3)]) // skip inside one poll
        .poll(3, Type::Ok, 0, &[(3, 4), (1, 2)]); // back inside one poll
    let r = h.check();
    assert_eq!(r.counts["poll-skip"], 1, "{:?}", r.anomalies);
    assert!(r.counts["nonmonotonic-poll"] >= 1);
    assert_eq!(r.counts["int-poll-skip"], 1);
    assert_eq!(r.counts["int-nonmonotonic-poll"], 1);
}

#[test]
fn gaps_in_offsets_are_not_skips_and_reassignment_forgets() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(0))
        .send(1, Type::Ok, 0, 2, Some(7)) // offsets 1..6 hold nothing we know of
        .send(1, Type::Ok, 1, 1, Some(0))
        .send(1, Type::Ok, 1, 2, Some(1))
        .send(1, Type::Ok, 1, 3, Some(2))
        .assign(2, &[0, 1])
        .poll(2, Type::Ok, 0, &[(0, 1), (7, 2)])
        .poll(2, Type::Ok, 1, &[(0, 1)])
        .assign(2, &[0])
        .assign(2, &[0, 1])
        // key 1 was forgotten when unassigned: starting over later is no skip
        .poll(2, Type::Ok, 1, &[(2, 3)])
        .poll(3, Type::Ok, 1, &[(1, 2)]);
    let r = h.check();
    assert!(r.valid, "{:?}", r.anomalies);
}

#[test]
fn subscribed_members_may_skip_across_rebalances_but_not_go_back() {
    let mut h = H::default();
    for (o, v) in [(0, 1), (1, 2), (2, 3)] {
        h.send(1, Type::Ok, 0, v, Some(o));
    }
    h.subscribe(2, &[0])
        .poll(2, Type::Ok, 0, &[(0, 1)])
        .poll(2, Type::Ok, 0, &[(2, 3)])
        .poll(3, Type::Ok, 0, &[(1, 2)]);
    assert!(h.check().valid);
    h.poll(2, Type::Ok, 0, &[(0, 1)]);
    assert_eq!(only(&h.check()), vec!["nonmonotonic-poll"]);
}

#[test]
fn nonmonotonic_sends_and_committed_offsets_moving_back() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(5))
        .send(1, Type::Ok, 0, 2, Some(3))
        .poll(2, Type::Ok, 0, &[(3, 2), (5, 1)])
        .commit(2, "g", 0, 6)
        .commit(2, "g", 0, 4);
    let r = h.check();
    assert_eq!(
        only(&r),
        vec!["committed-offset-backwards", "nonmonotonic-send"],
        "{:?}",
        r.anomalies
    );
    assert!(!r.valid);
}

#[test]
fn histories_round_trip_as_json_lines() {
    let mut h = H::default();
    h.send(1, Type::Ok, 0, 1, Some(0))
        .poll(2, Type::Info, 0, &[(0, 1)])
        .commit(2, "g", 0, 1);
    let mut buf = Vec::new();
    crate::history::write(&mut buf, &h.0).expect("write");
    let back = crate::history::read(std::io::Cursor::new(buf)).expect("read");
    assert_eq!(back, h.0);
    let err = crate::history::read(std::io::Cursor::new(b"{}\n".to_vec())).expect_err("bad line");
    assert!(err.starts_with("line 1"), "{err}");
}

#[test]
fn leader_epochs_only_increase_along_a_key() {
    let epochs = |h: &mut H, p: u64, read: &[(i64, u64, i32)]| {
        let mut op = Op::new(p, Type::Ok, F::Poll);
        op.polls
            .insert(0, read.iter().map(|(o, v, _)| (*o, *v)).collect());
        op.epochs
            .insert(0, read.iter().map(|(o, _, e)| (*o, *e)).collect());
        h.push(op);
    };
    let mut clean = H::default();
    clean
        .send(1, Type::Ok, 0, 1, Some(0))
        .send(1, Type::Ok, 0, 2, Some(1));
    epochs(&mut clean, 2, &[(0, 1, 3), (1, 2, 5)]);
    epochs(&mut clean, 3, &[(1, 2, 5)]);
    assert!(clean.check().valid, "{:?}", clean.check().anomalies);

    let mut backwards = H::default();
    backwards
        .send(1, Type::Ok, 0, 1, Some(0))
        .send(1, Type::Ok, 0, 2, Some(1));
    epochs(&mut backwards, 2, &[(0, 1, 5), (1, 2, 4)]);
    let r = backwards.check();
    assert_eq!(only(&r), vec!["nonmonotonic-epoch"], "{:?}", r.anomalies);

    let mut two = H::default();
    two.send(1, Type::Ok, 0, 1, Some(0));
    epochs(&mut two, 2, &[(0, 1, 5)]);
    epochs(&mut two, 3, &[(0, 1, 6)]);
    let r = two.check();
    assert_eq!(only(&r), vec!["inconsistent-epochs"], "{:?}", r.anomalies);
    assert!(!r.valid);
}
