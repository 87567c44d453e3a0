//! Jepsen's Kafka checker, over a [`crate::history`].
//!
//! Definitions (see `FAULTS.md` in the design notes): per key, the log (offset → values) is
//! built from acknowledged sends with their offsets and from every completed poll. A value
//! "must have committed" when its send was acknowledged, or its outcome was unknown and an ok
//! poll read it. Positions are compared by *dense index*: a value's position among the
//! offsets that hold something, so gaps in offsets never count as skips.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Value, json};

use crate::history::{F, Op, Type};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The producer was idempotent: duplicates and non-monotonic sends are failures.
    pub idempotent: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { idempotent: true }
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// No anomaly that counts as a failure.
    pub valid: bool,
    /// Anomaly name → examples (at most [`EXAMPLES_MAX`] each).
    pub anomalies: BTreeMap<String, Vec<Value>>,
    /// Anomaly name → how many.
    pub counts: BTreeMap<String, usize>,
    /// Anomalies that are failures in this configuration.
    pub failures: Vec<String>,
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub sends_ok: usize,
    pub sends_info: usize,
    pub sends_fail: usize,
    pub polls_ok: usize,
    pub values_read: usize,
    pub keys: usize,
}

pub const EXAMPLES_MAX: usize = 8;

/// Anomalies that are failures whatever the producer.
const ALWAYS_FAILURES: &[&str] = &[
    "inconsistent-offsets",
    "G1a",
    "lost-write",
    "unseen",
    "poll-skip",
    "nonmonotonic-poll",
    "int-poll-skip",
    "int-nonmonotonic-poll",
    "committed-offset-backwards",
    "inconsistent-epochs",
    "nonmonotonic-epoch",
];
/// Failures only when the producer is idempotent.
const IDEMPOTENT_FAILURES: &[&str] = &["duplicate", "nonmonotonic-send"];

impl Report {
    fn add(&mut self, name: &str, example: Value) {
        *self.counts.entry(name.to_string()).or_default() += 1;
        let list = self.anomalies.entry(name.to_string()).or_default();
        if list.len() < EXAMPLES_MAX {
            list.push(example);
        }
    }
}

/// One key's log and what the clients did with it.
#[derive(Debug, Default)]
struct Key {
    /// offset → values seen there
    log: BTreeMap<i64, BTreeSet<u64>>,
    /// value → offset of acknowledged sends
    acked: BTreeMap<u64, Option<i64>>,
    unknown: BTreeSet<u64>,
    failed: BTreeSet<u64>,
    read_ok: BTreeSet<u64>,
    /// offset → dense index (offsets holding a value)
    dense: BTreeMap<i64, i64>,
    /// value → dense indexes where it appears, ascending
    positions: BTreeMap<u64, Vec<i64>>,
}

impl Key {
    fn index(&mut self) {
        self.dense = self
            .log
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .enumerate()
            .map(|(i, (o, _))| (*o, i as i64))
            .collect();
        for (o, values) in &self.log {
            for v in values {
                self.positions.entry(*v).or_default().push(self.dense[o]);
            }
        }
        for p in self.positions.values_mut() {
            p.sort_unstable();
            p.dedup();
        }
    }

    fn must_have_committed(&self, v: u64) -> bool {
        self.acked.contains_key(&v) || (self.unknown.contains(&v) && self.read_ok.contains(&v))
    }

    /// Dense index distance from offset `a` to offset `b`; 1 when either is unknown.
    fn delta(&self, a: i64, b: i64) -> i64 {
        match (self.dense.get(&a), self.dense.get(&b)) {
            (Some(x), Some(y)) => y - x,
            _ => 1,
        }
    }
}

/// Checks a history (invocations are ignored; completions carry the data).
pub fn check(history: &[Op], options: Options) -> Report {
    let mut report = Report::default();
    let mut keys: BTreeMap<u32, Key> = BTreeMap::new();
    let completions: Vec<&Op> = history.iter().filter(|o| o.kind != Type::Invoke).collect();

    for op in &completions {
        match op.f {
            F::Send => {
                for s in &op.sends {
                    let k = keys.entry(s.key).or_default();
                    match op.kind {
                        Type::Ok => {
                            report.stats.sends_ok += 1;
                            k.acked.insert(s.value, s.offset);
                            if let Some(o) = s.offset {
                                k.log.entry(o).or_default().insert(s.value);
                            }
                        }
                        Type::Info => {
                            report.stats.sends_info += 1;
                            k.unknown.insert(s.value);
                        }
                        Type::Fail => {
                            report.stats.sends_fail += 1;
                            k.failed.insert(s.value);
                        }
                        Type::Invoke => {}
                    }
                }
            }
            F::Poll => {
                if op.kind == Type::Ok {
                    report.stats.polls_ok += 1;
                }
                for (key, read) in &op.polls {
                    let k = keys.entry(*key).or_default();
                    for (o, v) in read {
                        k.log.entry(*o).or_default().insert(*v);
                        if op.kind == Type::Ok {
                            report.stats.values_read += 1;
                            k.read_ok.insert(*v);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    report.stats.keys = keys.len();
    for k in keys.values_mut() {
        k.index();
    }

    for (key, k) in &keys {
        for (o, values) in &k.log {
            if values.len() > 1 {
                report.add(
                    "inconsistent-offsets",
                    json!({"key": key, "offset": o, "values": values}),
                );
            }
        }
        for (v, at) in &k.positions {
            if at.len() > 1 {
                // only for the rare duplicate: a scan of the key's whole log
                let offsets: Vec<&i64> = k
                    .log
                    .iter()
                    .filter(|(_, vs)| vs.contains(v))
                    .map(|(o, _)| o)
                    .collect();
                report.add(
                    "duplicate",
                    json!({"key": key, "value": v, "offsets": offsets}),
                );
            }
        }
        for v in k.read_ok.intersection(&k.failed) {
            report.add("G1a", json!({"key": key, "value": v}));
        }
        // lost: committed, below the highest first appearance of anything read, never read
        let bound = k
            .read_ok
            .iter()
            .filter_map(|v| k.positions.get(v).and_then(|p| p.first()))
            .max()
            .copied()
            .unwrap_or(-1);
        for (v, at) in &k.positions {
            let last = at.last().copied().unwrap_or(i64::MAX);
            if k.must_have_committed(*v) && last <= bound && !k.read_ok.contains(v) {
                report.add(
                    "lost-write",
                    json!({"key": key, "value": v, "index": last, "bound": bound}),
                );
            }
        }
        for (v, offset) in &k.acked {
            if !k.read_ok.contains(v) {
                report.add("unseen", json!({"key": key, "value": v, "offset": offset}));
            }
        }
    }

    check_polls(&completions, &keys, &mut report);
    check_sends(&completions, &keys, &mut report);
    check_commits(&completions, &mut report);
    check_epochs(&completions, &mut report);

    report.failures = report
        .counts
        .keys()
        .filter(|name| {
            ALWAYS_FAILURES.contains(&name.as_str())
                || (options.idempotent && IDEMPOTENT_FAILURES.contains(&name.as_str()))
        })
        .cloned()
        .collect();
    report.valid = report.failures.is_empty();
    report
}

/// Poll skips and non-monotonic polls, across a client's operations and inside one poll.
fn check_polls(completions: &[&Op], keys: &BTreeMap<u32, Key>, report: &mut Report) {
    // process → (subscribed, key → last offset read)
    let mut clients: BTreeMap<u64, (bool, BTreeMap<u32, i64>)> = BTreeMap::new();
    for op in completions.iter().filter(|o| o.kind == Type::Ok) {
        let (subscribed, last) = clients.entry(op.process).or_default();
        match op.f {
            F::Assign => {
                *subscribed = false;
                let keep: BTreeSet<u32> = op.keys.iter().copied().collect();
                last.retain(|k, _| keep.contains(k));
            }
            F::Subscribe => {
                *subscribed = true;
                last.clear();
            }
            F::Poll => {
                for (key, read) in &op.polls {
                    let Some(k) = keys.get(key) else { continue };
                    if let (Some(prev), Some((first, _))) = (last.get(key), read.first()) {
                        let d = k.delta(*prev, *first);
                        let example = || json!({"process": op.process, "key": key, "from": prev, "to": first, "delta": d, "op": op.index});
                        // a group member may be handed a partition another member advanced
                        if d > 1 && !*subscribed {
                            report.add("poll-skip", example());
                        } else if d < 1 {
                            report.add("nonmonotonic-poll", example());
                        }
                    }
                    for w in read.windows(2) {
                        let d = k.delta(w[0].0, w[1].0);
                        let example = || json!({"process": op.process, "key": key, "from": w[0].0, "to": w[1].0, "delta": d, "op": op.index});
                        if d > 1 {
                            report.add("int-poll-skip", example());
                        } else if d < 1 {
                            report.add("int-nonmonotonic-poll", example());
                        }
                    }
                    if let Some((o, _)) = read.last() {
                        last.insert(*key, *o);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A client's sends to a key must land in the order it sent them.
fn check_sends(completions: &[&Op], keys: &BTreeMap<u32, Key>, report: &mut Report) {
    let mut last: BTreeMap<(u64, u32), i64> = BTreeMap::new();
    for op in completions
        .iter()
        .filter(|o| o.kind == Type::Ok && o.f == F::Send)
    {
        let mut firsts: BTreeMap<u32, i64> = BTreeMap::new();
        for s in &op.sends {
            if let Some(o) = s.offset {
                firsts.entry(s.key).or_insert(o);
            }
        }
        for (key, first) in &firsts {
            if let (Some(prev), Some(k)) = (last.get(&(op.process, *key)), keys.get(key))
                && k.delta(*prev, *first) < 1
            {
                report.add(
                    "nonmonotonic-send",
                    json!({"process": op.process, "key": key, "from": prev, "to": first, "op": op.index}),
                );
            }
        }
        for s in &op.sends {
            if let Some(o) = s.offset {
                last.insert((op.process, s.key), o);
            }
        }
    }
}

/// A group's committed offset for a key never moves backwards.
fn check_commits(completions: &[&Op], report: &mut Report) {
    let mut committed: BTreeMap<(String, u32), i64> = BTreeMap::new();
    for op in completions
        .iter()
        .filter(|o| o.kind == Type::Ok && o.f == F::Commit)
    {
        let Some(group) = &op.group else { continue };
        for (key, offset) in &op.commits {
            let slot = committed.entry((group.clone(), *key)).or_insert(*offset);
            if *offset < *slot {
                report.add(
                    "committed-offset-backwards",
                    json!({"group": group, "key": key, "from": *slot, "to": offset, "op": op.index}),
                );
            }
            *slot = (*slot).max(*offset);
        }
    }
}

/// Leader epochs only increase along a key's log: one offset is read with one epoch, and a
/// later offset never carries an earlier epoch.
fn check_epochs(completions: &[&Op], report: &mut Report) {
    let mut seen: BTreeMap<u32, BTreeMap<i64, BTreeSet<i32>>> = BTreeMap::new();
    for op in completions.iter().filter(|o| o.f == F::Poll) {
        for (key, read) in &op.epochs {
            for (offset, epoch) in read {
                seen.entry(*key)
                    .or_default()
                    .entry(*offset)
                    .or_default()
                    .insert(*epoch);
            }
        }
    }
    for (key, log) in &seen {
        let mut previous: Option<(i64, i32)> = None;
        for (offset, epochs) in log {
            if epochs.len() > 1 {
                report.add(
                    "inconsistent-epochs",
                    json!({"key": key, "offset": offset, "epochs": epochs}),
                );
            }
            let (Some(&lowest), Some(&highest)) = (epochs.first(), epochs.last()) else {
                continue;
            };
            if let Some((at, epoch)) = previous
                && lowest < epoch
            {
                report.add(
                    "nonmonotonic-epoch",
                    json!({"key": key, "offset": offset, "epoch": lowest, "earlier_offset": at, "earlier_epoch": epoch}),
                );
            }
            previous = Some((*offset, highest));
        }
    }
}

#[cfg(test)]
mod tests;
