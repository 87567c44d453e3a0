//! The workload: Jepsen's Kafka clients (producers, assigned consumers, consumer-group
//! members and their zombies), recording every operation, and the final drain.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use weir_client::{
    Acks, ClientError, Consumer, ConsumerConfig, GroupConsumer, GroupConsumerConfig, OffsetReset,
    Producer, ProducerConfig, RebalanceListener, SeekTo, TopicPartition,
};
use weir_jepsen::history::{F, Op, Send, Type};
use weir_proto::v1 as pb;
use weir_proto::v1::group_coordinator_client::GroupCoordinatorClient;
use weir_types::ErrorCode;
use weir_types::error::Outcome;

/// The history being recorded, shared by every client.
#[derive(Default)]
pub struct Recorder {
    pub ops: Mutex<Vec<Op>>,
    pub started: Option<Instant>,
}

impl Recorder {
    pub fn record(&self, mut op: Op) {
        op.time_ns = self.now_ns();
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        op.index = ops.len() as u64;
        ops.push(op);
    }

    /// Nanoseconds since the test started.
    pub fn now_ns(&self) -> u64 {
        self.started.map_or(0, |s| s.elapsed().as_nanos() as u64)
    }
}

/// What every workload client shares: where the cluster is, the keys, the history, the stop
/// flag, the process-id counter, and whether group members turn into zombies.
#[derive(Clone)]
pub struct ClientContext {
    pub bootstrap: Vec<String>,
    pub keys: u32,
    pub recorder: Arc<Recorder>,
    pub stop: Arc<AtomicBool>,
    pub next_process: Arc<AtomicU64>,
    /// Now and then a group member crashes (stops heartbeating without leaving) and, once
    /// the group has moved on, commits its stale positions with its stale member id and
    /// epoch: the controller must refuse them.
    pub zombies: bool,
}

/// ok / fail / info for a client error.
fn classify(e: &ClientError) -> Type {
    match e {
        ClientError::Server { code, .. } if code.outcome() == Outcome::Definite => Type::Fail,
        ClientError::Invalid { .. } => Type::Fail,
        ClientError::Server {
            code: ErrorCode::InvalidArgument,
            ..
        } => Type::Fail,
        _ => Type::Info,
    }
}

/// Sends values 1, 2, 3, ... per key, one at a time, as an idempotent acks=all producer. A
/// client whose send ends `info` is replaced (new process id, new producer).
pub async fn producer_client(ctx: ClientContext, next_values: Arc<Vec<AtomicU64>>) {
    let ClientContext {
        bootstrap,
        keys,
        recorder,
        stop,
        next_process,
        ..
    } = ctx;
    'client: while !stop.load(Ordering::SeqCst) {
        let process = next_process.fetch_add(1, Ordering::SeqCst);
        let mut config = ProducerConfig::new(bootstrap.clone());
        config.acks = Acks::All;
        config.idempotence = true;
        config.linger_ms = 0;
        config.delivery_timeout = Duration::from_secs(5);
        let Ok(producer) = Producer::new(config) else {
            return;
        };
        while !stop.load(Ordering::SeqCst) {
            let key = rand::rng().random_range(0..keys);
            let value = next_values[key as usize].fetch_add(1, Ordering::SeqCst);
            let mut invoke = Op::new(process, Type::Invoke, F::Send);
            invoke.sends = vec![Send {
                key,
                value,
                offset: None,
            }];
            recorder.record(invoke.clone());
            let record = weir_types::Record {
                timestamp_ms: 0,
                key: None,
                value: Some(Bytes::from(value.to_string())),
                headers: Vec::new(),
            };
            let sent = match producer.send("jepsen", Some(key), record).await {
                Ok(delivery) => {
                    producer.flush().await;
                    delivery.await
                }
                Err(e) => Err(e),
            };
            let mut done = invoke;
            match sent {
                Ok(meta) => {
                    done.kind = Type::Ok;
                    done.sends[0].offset = meta.offset.map(|o| o.0);
                    recorder.record(done);
                }
                Err(e) => {
                    done.kind = classify(&e);
                    done.error = Some(e.to_string());
                    let replace = done.kind == Type::Info;
                    recorder.record(done);
                    if replace {
                        continue 'client;
                    }
                }
            }
        }
    }
}

/// Records a poll's completion: ok with what it read, or info. Returns whether it was ok
/// (a client whose poll failed is replaced).
fn record_poll(
    recorder: &Recorder,
    mut done: Op,
    polled: Result<Vec<weir_client::ConsumerRecord>, ClientError>,
) -> bool {
    let ok = polled.is_ok();
    match polled {
        Ok(records) => {
            done.kind = Type::Ok;
            decode(&mut done, records);
        }
        Err(e) => {
            done.kind = Type::Info;
            done.error = Some(e.to_string());
        }
    }
    recorder.record(done);
    ok
}

/// Fills a poll's values and leader epochs from the records read.
fn decode(op: &mut Op, records: Vec<weir_client::ConsumerRecord>) {
    for r in records {
        let value = r
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok());
        if let Some(v) = value {
            op.polls
                .entry(r.partition)
                .or_default()
                .push((r.offset.0, v));
            op.epochs
                .entry(r.partition)
                .or_default()
                .push((r.offset.0, r.leader_epoch.0));
        }
    }
}

/// Assigns every key from the beginning and polls; a client whose poll fails is replaced.
pub async fn consumer_client(ctx: ClientContext) {
    let ClientContext {
        bootstrap,
        keys,
        recorder,
        stop,
        next_process,
        ..
    } = ctx;
    while !stop.load(Ordering::SeqCst) {
        let process = next_process.fetch_add(1, Ordering::SeqCst);
        let mut config = ConsumerConfig::new(bootstrap.clone());
        config.fetch_wait_ms = 200;
        let Ok(mut consumer) = Consumer::new(config) else {
            return;
        };
        let all: Vec<u32> = (0..keys).collect();
        let mut assign = Op::new(process, Type::Invoke, F::Assign);
        assign.keys = all.clone();
        recorder.record(assign.clone());
        match tokio::time::timeout(
            Duration::from_secs(10),
            consumer.assign("jepsen", &all, SeekTo::Beginning),
        )
        .await
        {
            Ok(Ok(())) => {
                assign.kind = Type::Ok;
                recorder.record(assign);
            }
            outcome => {
                assign.kind = Type::Info;
                assign.error = Some(match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                });
                recorder.record(assign);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        while !stop.load(Ordering::SeqCst) {
            let invoke = Op::new(process, Type::Invoke, F::Poll);
            recorder.record(invoke.clone());
            let polled = consumer.poll(Duration::from_millis(300)).await;
            if !record_poll(&recorder, invoke, polled) {
                break;
            }
        }
    }
}

/// Collects partitions taken away inside `poll`.
struct Revocations(Arc<Mutex<Vec<u32>>>);

impl RebalanceListener for Revocations {
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.extend(partitions.iter().map(|p| p.partition));
    }
}

/// A consumer-group member: subscribes, polls, and commits its positions after every poll.
/// Rebalances are recorded as assign operations (first without the revoked keys, then with
/// the current assignment), so the checker forgets what the member gave up. A member whose
/// poll fails is replaced by a new member.
pub async fn group_client(ctx: ClientContext) {
    let ClientContext {
        bootstrap,
        recorder,
        stop,
        next_process,
        zombies,
        ..
    } = ctx;
    'client: while !stop.load(Ordering::SeqCst) {
        let process = next_process.fetch_add(1, Ordering::SeqCst);
        // a zombie-to-be crashes after a random number of polls
        let mut polls_left: Option<u32> = zombies.then(|| rand::rng().random_range(20..200));
        let mut config = GroupConsumerConfig::new(bootstrap.clone(), GROUP, &["jepsen"]);
        config.auto_commit = None;
        config.offset_reset = OffsetReset::Earliest;
        config.session_timeout = GROUP_SESSION_TIMEOUT;
        config.consumer.fetch_wait_ms = 200;
        let Ok(mut consumer) = GroupConsumer::new(config) else {
            return;
        };
        let revoked = Arc::new(Mutex::new(Vec::new()));
        consumer.set_listener(Box::new(Revocations(Arc::clone(&revoked))));
        recorder.record(Op::new(process, Type::Ok, F::Subscribe));
        let mut owned: Vec<u32> = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let invoke = Op::new(process, Type::Invoke, F::Poll);
            recorder.record(invoke.clone());
            let polled = consumer.poll(Duration::from_millis(300)).await;
            let now: Vec<u32> = consumer.assignment().iter().map(|p| p.partition).collect();
            let gone: Vec<u32> =
                std::mem::take(&mut *revoked.lock().unwrap_or_else(|p| p.into_inner()));
            if !gone.is_empty() || now != owned {
                let mut forget = Op::new(process, Type::Ok, F::Assign);
                forget.keys = now.iter().copied().filter(|k| !gone.contains(k)).collect();
                recorder.record(forget);
                let mut assign = Op::new(process, Type::Ok, F::Assign);
                assign.keys = now.clone();
                recorder.record(assign);
                owned = now;
            }
            if !record_poll(&recorder, invoke, polled) {
                break;
            }
            let positions = consumer.positions();
            if positions.is_empty() {
                continue;
            }
            if let Some(n) = polls_left.as_mut() {
                *n = n.saturating_sub(1);
                if *n == 0 && !consumer.member_id().is_empty() {
                    let stale = StaleMember {
                        member_id: consumer.member_id().to_string(),
                        member_epoch: consumer.member_epoch(),
                        positions: positions.iter().map(|(tp, o)| (tp.partition, *o)).collect(),
                    };
                    drop(consumer); // a crash: no commit, no leave, heartbeats stop
                    zombie_commit(&bootstrap, &recorder, &stop, process, stale).await;
                    continue 'client;
                }
            }
            let mut commit = Op::new(process, Type::Invoke, F::Commit);
            commit.group = Some(GROUP.into());
            commit.commits = positions.iter().map(|(tp, o)| (tp.partition, *o)).collect();
            recorder.record(commit.clone());
            match consumer.commit().await {
                Ok(()) => {
                    commit.kind = Type::Ok;
                    recorder.record(commit);
                }
                Err(e) => {
                    commit.kind = classify(&e);
                    commit.error = Some(e.to_string());
                    recorder.record(commit);
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), consumer.close()).await;
    }
}

/// Reads every key from offset 0 up to its high watermark with a fresh client. Returns the
/// keys it could not read to the end within `patience` (an offline partition): their values
/// stay unread, and the checker reports them.
pub async fn drain(
    bootstrap: Vec<String>,
    keys: u32,
    recorder: Arc<Recorder>,
    patience: Duration,
) -> anyhow::Result<Vec<String>> {
    let process = u64::MAX / 2;
    let deadline = Instant::now() + patience;
    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap))?;
    let mut ends = BTreeMap::new();
    let mut incomplete = Vec::new();
    for key in 0..keys {
        loop {
            match consumer.resolve("jepsen", key, SeekTo::End).await {
                Ok(end) => {
                    ends.insert(key, end);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    incomplete.push(format!("key {key}: no high watermark ({e})"));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    let all: Vec<u32> = ends.keys().copied().collect();
    let mut assign = Op::new(process, Type::Ok, F::Assign);
    assign.keys = all.clone();
    recorder.record(assign);
    consumer.assign("jepsen", &all, SeekTo::Beginning).await?;
    let mut reached: BTreeMap<u32, i64> = BTreeMap::new();
    while ends
        .iter()
        .any(|(k, end)| reached.get(k).copied().unwrap_or(0) < *end)
    {
        if Instant::now() > deadline {
            for (k, end) in &ends {
                let at = reached.get(k).copied().unwrap_or(0);
                if at < *end {
                    incomplete.push(format!("key {k}: read to {at} of {end}"));
                }
            }
            break;
        }
        let mut op = Op::new(process, Type::Ok, F::Poll);
        match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => decode(&mut op, records),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        for (k, read) in &op.polls {
            if let Some((o, _)) = read.last() {
                reached.insert(*k, o + 1);
            }
        }
        if !op.polls.is_empty() {
            recorder.record(op);
        }
    }
    Ok(incomplete)
}

/// The consumer group the members join.
pub const GROUP: &str = "jepsen-group";
/// Members' session timeout: a crashed member's partitions move after it.
const GROUP_SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// What a crashed member knew: enough to commit as it.
struct StaleMember {
    member_id: String,
    member_epoch: i32,
    positions: BTreeMap<u32, i64>,
}

/// The zombie: waits until the group has surely expired the crashed member (session timeout
/// plus slack) and moved its partitions on, then commits the member's stale positions under
/// its old id and epoch. A correct controller refuses (`UNKNOWN_MEMBER_ID` or
/// `FENCED_MEMBER_EPOCH`, a definite failure); accepting moves committed offsets back.
async fn zombie_commit(
    bootstrap: &[String],
    recorder: &Recorder,
    stop: &AtomicBool,
    process: u64,
    stale: StaleMember,
) {
    let wake = Instant::now() + GROUP_SESSION_TIMEOUT + Duration::from_secs(3);
    while Instant::now() < wake {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut commit = Op::new(process, Type::Invoke, F::Commit);
    commit.group = Some(GROUP.into());
    commit.commits = stale.positions.clone();
    recorder.record(commit.clone());
    let request = pb::CommitOffsetsRequest {
        group: GROUP.into(),
        member_id: stale.member_id,
        member_epoch: stale.member_epoch,
        offsets: stale
            .positions
            .iter()
            .map(|(key, offset)| pb::OffsetAndMetadata {
                topic: "jepsen".into(),
                partition: *key,
                offset: *offset,
                metadata: "zombie".into(),
                commit_time_ms: 0,
            })
            .collect(),
    };
    let answer = weir_proto::call::with_controller(bootstrap, Duration::from_secs(2), |ch| {
        let request = request.clone();
        async move {
            GroupCoordinatorClient::new(ch)
                .commit_offsets(request)
                .await
        }
    })
    .await;
    match answer {
        Ok(_) => commit.kind = Type::Ok,
        Err(weir_proto::call::CallError::Status(status)) => {
            let definite = weir_proto::status::error_code(&status)
                .is_some_and(|c| c.outcome() == Outcome::Definite);
            commit.kind = if definite { Type::Fail } else { Type::Info };
            commit.error = Some(format!("zombie commit: {}", status.message()));
        }
        Err(other) => {
            commit.kind = Type::Info;
            commit.error = Some(format!("zombie commit: {other}"));
        }
    }
    recorder.record(commit);
}
