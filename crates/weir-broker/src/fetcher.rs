//! The follower's side of replication: one fetcher per leader broker, multiplexing every
//! partition this broker follows from it into one `ReplicaFetch` long poll.
//!
//! Each response is applied in one step: every partition's copies are written by its owner
//! without waiting, then one wait covers the fsync of all of them (the flusher fsyncs every
//! file of a round together), and only then does each owner count the copies as held and
//! take the leader's high watermark. The next fetch reports the fsynced ends.
//!
//! A partition catching up during a reassignment with a throttle is left out of the
//! requests until its byte budget allows more; the partitions in sync are never slowed by it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use weir_log::LogError;
use weir_proto::internal::v1 as ipb;
use weir_proto::internal::v1::replication_client::ReplicationClient;
use weir_types::{BrokerId, ErrorCode, LeaderEpoch, Offset, RecordBatch};

use crate::config::BrokerConfig;
use crate::leader::REPLICA_FETCH_BYTES_MAX;
use crate::registry::Registry;
use crate::replica::Replica;

/// Pause after a failed replica fetch before trying again.
const FETCH_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest a throttled partition is held back after one response.
const THROTTLE_PAUSE_MAX: Duration = Duration::from_secs(10);

/// Starts and restarts one fetcher per leader that this broker follows partitions from.
pub async fn run_fetchers(
    config: BrokerConfig,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut fetchers: HashMap<BrokerId, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        fetchers.retain(|_, task| !task.is_finished());
        let me = registry.me();
        for replica in registry.all() {
            let Some(leader) = replica.leadership().leader else {
                continue;
            };
            if leader == me || fetchers.contains_key(&leader) {
                continue;
            }
            let task = tokio::spawn(fetch_from(
                leader,
                config.clone(),
                Arc::clone(&registry),
                stop.clone(),
            ));
            fetchers.insert(leader, task);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, task) in fetchers {
        let _ = task.await;
    }
}

type Key = (String, u32);

fn key(replica: &Replica) -> Key {
    (replica.topic.clone(), replica.partition)
}

/// Pulls every partition this broker follows from `leader` until there are none left.
async fn fetch_from(
    leader: BrokerId,
    config: BrokerConfig,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client: Option<(String, ReplicationClient<weir_proto::call::Channel>)> = None;
    // partitions held back by a reassignment throttle, until when
    let mut throttled: HashMap<Key, Instant> = HashMap::new();
    // the leader's high watermark last handed to each owner with nothing copied, by epoch:
    // a response repeats every followed partition, and most have nothing new
    let mut told: HashMap<Key, (LeaderEpoch, i64)> = HashMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let me = registry.me();
        let followed: Vec<Arc<Replica>> = registry
            .all()
            .into_iter()
            .filter(|r| r.leadership().leader == Some(leader) && leader != me)
            .collect();
        if followed.is_empty() {
            return;
        }
        // forget partitions no longer followed from this leader (one lookup each)
        told.retain(|(topic, partition), _| {
            registry
                .get(topic, *partition)
                .is_some_and(|r| r.leadership().leader == Some(leader))
        });
        let now = Instant::now();
        throttled.retain(|_, until| *until > now);
        let asked: Vec<&Arc<Replica>> = followed
            .iter()
            .filter(|r| !throttled.contains_key(&key(r)))
            .collect();
        // with everything held back, wait for the first to be free; otherwise do not let the
        // long poll hold back a throttled partition past its time
        let next_free = throttled.values().min().copied();
        if asked.is_empty() {
            let until = next_free.unwrap_or(now + FETCH_RETRY_PAUSE);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let wait_ms = next_free.map_or(config.replica_fetch_wait_ms, |t| {
            (t.saturating_duration_since(now).as_millis() as u32).min(config.replica_fetch_wait_ms)
        });
        let Some(addr) = registry.replication_address(leader) else {
            tokio::time::sleep(FETCH_RETRY_PAUSE).await;
            continue;
        };
        if client.as_ref().is_none_or(|(a, _)| *a != addr) {
            let connected = match &config.internal_tls {
                // the files are read again per connection: renewed certificates take effect
                Some(files) => match files.load() {
                    Ok(tls) => weir_proto::call::connect_tls(&addr, tls.client(leader.0)).await,
                    Err(e) => Err(weir_proto::call::CallError::Bootstrap(e)),
                },
                None => weir_proto::call::connect(&addr).await,
            };
            match connected {
                Ok(ch) => {
                    // a full response is larger than tonic's 4 MiB default: without this a
                    // follower with more than that to catch up never could
                    let rpc = ReplicationClient::new(ch)
                        .max_decoding_message_size(2 * REPLICA_FETCH_BYTES_MAX);
                    client = Some((addr.clone(), rpc));
                }
                Err(e) => {
                    tracing::debug!(%leader, error = %e, "cannot reach leader");
                    tokio::time::sleep(FETCH_RETRY_PAUSE).await;
                    continue;
                }
            }
        }
        let Some((_, rpc)) = client.as_mut() else {
            continue;
        };
        let request = ipb::ReplicaFetchRequest {
            follower_id: me.0,
            partitions: asked
                .iter()
                .map(|r| ipb::ReplicaFetchPartition {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    fetch_offset: r.durable_end().0,
                    last_fetched_epoch: r.log.latest_epoch().map_or(-1, |e| e.0),
                    leader_epoch: r.leadership().leader_epoch.0,
                })
                .collect(),
            max_wait_ms: wait_ms,
            max_bytes: REPLICA_FETCH_BYTES_MAX as u32,
        };
        let response = tokio::select! {
            r = rpc.replica_fetch(request) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let received = std::time::Instant::now();
        let response = match response {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::debug!(%leader, error = %e, "replica fetch failed");
                client = None;
                tokio::time::sleep(FETCH_RETRY_PAUSE).await;
                continue;
            }
        };
        let mut step = Step::default();
        for data in response.partitions {
            let Some(replica) = asked
                .iter()
                .find(|r| r.topic == data.topic && r.partition == data.partition)
            else {
                continue;
            };
            let lead = replica.leadership();
            if lead.leader != Some(leader) {
                continue; // leadership moved while the fetch was out
            }
            let quiet = data.error_code == 0 && !data.diverged && data.batches.is_empty();
            let seen = (lead.leader_epoch, data.high_watermark);
            if quiet && told.get(&key(replica)) == Some(&seen) {
                continue; // nothing copied, and the owner has this high watermark already
            }
            if quiet {
                told.insert(key(replica), seen);
            } else {
                told.remove(&key(replica));
            }
            step.add(replica, data).await;
        }
        let copied = step.copied.iter().any(|(_, _, bytes)| *bytes > 0);
        let applied = received.elapsed();
        let failed = step.finish(&mut throttled).await;
        if copied {
            // where a follower's round goes: decoding and writing the copies, their fsync
            metrics::histogram!("weir_broker_replica_step_seconds", "phase" => "apply")
                .record(applied.as_secs_f64());
            metrics::histogram!("weir_broker_replica_step_seconds", "phase" => "fsync")
                .record((received.elapsed() - applied).as_secs_f64());
        }
        if failed {
            tokio::time::sleep(FETCH_RETRY_PAUSE).await;
        }
    }
}

/// One response being applied: the copies written, waiting for one fsync.
#[derive(Default)]
struct Step {
    /// Partitions whose copies (if any) must be fsynced before the leader's high watermark
    /// applies: (replica, leader high watermark, bytes copied).
    copied: Vec<(Arc<Replica>, Offset, usize)>,
    /// The last write's fsync ticket, with a log to wait on (one wait covers every file of
    /// the round, and the rounds before it).
    wait: Option<(Arc<weir_log::PartitionLog>, weir_log::Ticket)>,
    failed: bool,
}

impl Step {
    async fn add(&mut self, replica: &Arc<Replica>, data: ipb::ReplicaFetchPartitionData) {
        let result = self.apply(replica, data).await;
        if let Err(e) = result {
            tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "replication step failed");
            self.failed = true;
        }
    }

    async fn apply(
        &mut self,
        replica: &Arc<Replica>,
        data: ipb::ReplicaFetchPartitionData,
    ) -> Result<(), String> {
        let closed = |e: crate::replica::Closed| e.to_string();
        if data.error_code != 0 {
            let code = ErrorCode::from_i32(data.error_code);
            if code == Some(ErrorCode::OffsetOutOfRange)
                && data.log_start_offset > replica.log.end_offset().0
            {
                // the leader no longer has what comes next here: start again at its log start
                replica
                    .reset_to(Offset(data.log_start_offset))
                    .await
                    .map_err(closed)?
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            return Err(format!(
                "leader answered {}",
                code.map_or("an unknown code", |c| c.name())
            ));
        }
        if data.diverged {
            replica
                .diverged(
                    LeaderEpoch(data.diverging_epoch),
                    Offset(data.diverging_end_offset),
                )
                .await
                .map_err(closed)?
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let bytes: usize = data.batches.iter().map(|b| b.data.len()).sum();
        let batches: Vec<RecordBatch> = data
            .batches
            .into_iter()
            .map(RecordBatch::try_from)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if !batches.is_empty()
            && let Some(ticket) = replica
                .copy(batches)
                .await
                .map_err(closed)?
                .map_err(|e: LogError| e.to_string())?
        {
            // the latest ticket of a log under the fsync policy covers every earlier round;
            // a relaxed log's wait returns at once, so it never replaces one
            let fsynced = replica.log.config().flush == weir_log::FlushPolicy::Fsync;
            if fsynced || self.wait.is_none() {
                self.wait = Some((Arc::clone(&replica.log), ticket));
            }
        }
        self.copied
            .push((Arc::clone(replica), Offset(data.high_watermark), bytes));
        Ok(())
    }

    /// Waits once for the fsync of everything copied, then lets each owner count it.
    /// Returns whether any partition failed.
    async fn finish(self, throttled: &mut HashMap<Key, Instant>) -> bool {
        let mut failed = self.failed;
        if let Some((log, ticket)) = self.wait
            && let Err(e) = crate::replica::wait_for(&log, ticket).await
        {
            // the disk failed: nothing copied counts; the owners report it
            tracing::error!(error = %e, "fsync of replicated data failed");
            return true;
        }
        let now = Instant::now();
        for (replica, leader_hw, bytes) in self.copied {
            if replica.copied(leader_hw).await.is_err() {
                failed = true;
                continue;
            }
            // A reassignment's throttle: a replica still catching up copies at most this rate.
            let lead = replica.leadership();
            if lead.catch_up_bytes_per_s > 0 && !lead.isr.contains(&replica.me) && bytes > 0 {
                let pause =
                    Duration::from_secs_f64(bytes as f64 / lead.catch_up_bytes_per_s as f64);
                throttled.insert(key(&replica), now + pause.min(THROTTLE_PAUSE_MAX));
            }
        }
        failed
    }
}
