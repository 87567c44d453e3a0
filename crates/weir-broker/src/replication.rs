//! Follower replication: followers pull from leaders (`ReplicaFetch`), leaders track what
//! each follower has fsynced, advance the high watermark over the ISR, and ask the
//! controller to shrink or expand the ISR. See `docs/replication.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_faults::bugs::{self, Bug};

use tokio::sync::watch;
use tonic::Status;
use weir_proto::status::status;
use weir_proto::v1 as pb;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::broker_registry_client::BrokerRegistryClient;
use weir_types::{BrokerId, ErrorCode, LeaderEpoch, Offset, RecordBatch};

use crate::config::BrokerConfig;
use crate::registry::Registry;
use crate::replica::Replica;
use crate::server::BrokerService;
use crate::session::SessionState;

/// Bytes one replica fetch returns across its partitions.
const REPLICA_FETCH_BYTES_MAX: usize = 8 << 20;
/// Pause after a failed replica fetch before trying again.
const FETCH_RETRY_PAUSE: Duration = Duration::from_millis(100);

fn answer(replica: &Replica, req: &pb::ReplicaFetchPartition) -> pb::ReplicaFetchPartitionData {
    pb::ReplicaFetchPartitionData {
        topic: req.topic.clone(),
        partition: req.partition,
        high_watermark: replica.high_watermark().0,
        log_start_offset: replica.log.start_offset().0,
        ..Default::default()
    }
}

fn failed(req: &pb::ReplicaFetchPartition, code: ErrorCode) -> pb::ReplicaFetchPartitionData {
    pb::ReplicaFetchPartitionData {
        topic: req.topic.clone(),
        partition: req.partition,
        error_code: code.as_i32(),
        ..Default::default()
    }
}

/// The leader's answer for one partition; `None` batches means "nothing new".
async fn fetch_one(
    registry: &Registry,
    follower: BrokerId,
    req: &pb::ReplicaFetchPartition,
    budget: usize,
) -> pb::ReplicaFetchPartitionData {
    let Some(replica) = registry.get(&req.topic, req.partition) else {
        return failed(req, ErrorCode::UnknownTopicOrPartition);
    };
    let lead = replica.leadership();
    if lead.leader != Some(registry.me()) {
        return failed(req, ErrorCode::NotLeader);
    }
    if req.leader_epoch < lead.leader_epoch.0 {
        return failed(req, ErrorCode::FencedLeaderEpoch);
    }
    if req.leader_epoch > lead.leader_epoch.0 {
        return failed(req, ErrorCode::UnknownLeaderEpoch);
    }
    if !lead.replicas.contains(&follower) {
        return failed(req, ErrorCode::UnknownTopicOrPartition);
    }
    let log = &replica.log;
    let fetch = Offset(req.fetch_offset);
    // Divergence (KIP-320): the follower's last epoch must end on the leader at or after the
    // follower's log end; otherwise tell it where that epoch really ends.
    if req.last_fetched_epoch >= 0 {
        let asked = LeaderEpoch(req.last_fetched_epoch);
        let diverged = match log.end_offset_for_epoch(asked) {
            Some((epoch, end)) if epoch == asked && end >= fetch => None,
            Some((epoch, end)) => Some((epoch, end)),
            None => {
                let first = log
                    .epochs()
                    .first()
                    .map_or(log.end_offset(), |(_, start)| *start);
                Some((LeaderEpoch::NONE, first))
            }
        };
        if let Some((epoch, end)) = diverged {
            let mut out = answer(&replica, req);
            out.diverged = true;
            out.diverging_epoch = epoch.0;
            out.diverging_end_offset = end.0;
            return out;
        }
    }
    if fetch < log.start_offset() || fetch > log.end_offset() {
        let mut out = failed(req, ErrorCode::OffsetOutOfRange);
        out.log_start_offset = log.start_offset().0;
        out.high_watermark = replica.high_watermark().0;
        return out;
    }
    replica.record_follower_fetch(follower, fetch);
    let mut out = answer(&replica, req);
    if fetch < log.end_offset() {
        let log = Arc::clone(&replica.log);
        let read = tokio::task::spawn_blocking(move || log.read(fetch, budget, None)).await;
        match read {
            Ok(Ok(batches)) => out.batches = batches.into_iter().map(Into::into).collect(),
            Ok(Err(e)) => out.error_code = e.code().as_i32(),
            Err(_) => out.error_code = ErrorCode::Unknown.as_i32(),
        }
    }
    out
}

/// The leader side of `ReplicaFetch`: answers at once when any partition has news, otherwise
/// waits (up to the request's wait) for an append on this broker.
pub async fn serve_fetch(
    service: &BrokerService,
    req: pb::ReplicaFetchRequest,
) -> Result<pb::ReplicaFetchResponse, Status> {
    if req.follower_id == 0 {
        return Err(status(
            ErrorCode::InvalidArgument,
            "invalid follower_id: must be positive",
        ));
    }
    let follower = BrokerId(req.follower_id);
    let budget = (req.max_bytes as usize).clamp(1, REPLICA_FETCH_BYTES_MAX);
    let wait = Duration::from_millis(u64::from(
        req.max_wait_ms.min(service.config.fetch_wait_ms_max),
    ));
    let deadline = tokio::time::Instant::now() + wait;
    let mut activity = service.registry.activity.subscribe();
    loop {
        activity.borrow_and_update();
        let mut partitions = Vec::with_capacity(req.partitions.len());
        let mut left = budget;
        for p in &req.partitions {
            let data = fetch_one(&service.registry, follower, p, left.max(1)).await;
            let bytes: usize = data.batches.iter().map(|b| b.data.len()).sum();
            left = left.saturating_sub(bytes);
            partitions.push(data);
        }
        let has_data_or_error = partitions
            .iter()
            .any(|d| !d.batches.is_empty() || d.error_code != 0 || d.diverged);
        if has_data_or_error || tokio::time::Instant::now() >= deadline {
            return Ok(pb::ReplicaFetchResponse { partitions });
        }
        if tokio::time::timeout_at(deadline, activity.changed())
            .await
            .is_err()
        {
            return Ok(pb::ReplicaFetchResponse { partitions });
        }
    }
}

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

/// Pulls every partition this broker follows from `leader` until there are none left.
async fn fetch_from(
    leader: BrokerId,
    config: BrokerConfig,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client: Option<(String, BrokerClient<tonic::transport::Channel>)> = None;
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
        let Some(addr) = registry.broker_address(leader) else {
            tokio::time::sleep(FETCH_RETRY_PAUSE).await;
            continue;
        };
        if client.as_ref().is_none_or(|(a, _)| *a != addr) {
            match weir_proto::call::connect(&addr).await {
                Ok(ch) => client = Some((addr.clone(), BrokerClient::new(ch))),
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
        let request = pb::ReplicaFetchRequest {
            follower_id: me.0,
            partitions: followed
                .iter()
                .map(|r| pb::ReplicaFetchPartition {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    fetch_offset: r.durable_end().0,
                    last_fetched_epoch: r.log.latest_epoch().map_or(-1, |e| e.0),
                    leader_epoch: r.leadership().leader_epoch.0,
                })
                .collect(),
            max_wait_ms: config.replica_fetch_wait_ms,
            max_bytes: REPLICA_FETCH_BYTES_MAX as u32,
        };
        let response = tokio::select! {
            r = rpc.replica_fetch(request) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let response = match response {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::debug!(%leader, error = %e, "replica fetch failed");
                client = None;
                tokio::time::sleep(FETCH_RETRY_PAUSE).await;
                continue;
            }
        };
        let mut pause = false;
        for data in response.partitions {
            let Some(replica) = followed
                .iter()
                .find(|r| r.topic == data.topic && r.partition == data.partition)
            else {
                continue;
            };
            if replica.leadership().leader != Some(leader) {
                continue; // leadership moved while the fetch was out
            }
            if let Err(e) = apply(replica, data).await {
                tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "replication step failed");
                pause = true;
            }
        }
        if pause {
            tokio::time::sleep(FETCH_RETRY_PAUSE).await;
        }
    }
}

/// Applies the leader's answer for one partition on this follower.
async fn apply(replica: &Arc<Replica>, data: pb::ReplicaFetchPartitionData) -> Result<(), String> {
    let log = Arc::clone(&replica.log);
    if data.error_code != 0 {
        let code = ErrorCode::from_i32(data.error_code);
        if code == Some(ErrorCode::OffsetOutOfRange) && data.log_start_offset > log.end_offset().0 {
            // the leader no longer has what comes next here: start again at its log start
            let start = Offset(data.log_start_offset);
            tokio::task::spawn_blocking(move || log.reset_to(start))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        return Err(format!(
            "leader answered {}",
            code.map_or("an unknown code", |c| c.name())
        ));
    }
    if data.diverged {
        let leader_epoch = LeaderEpoch(data.diverging_epoch);
        let leader_end = Offset(data.diverging_end_offset);
        let mut target = crate::progress::truncation_target(
            leader_end,
            log.end_offset_for_epoch(leader_epoch),
            log.start_offset(),
        );
        if bugs::active(Bug::TruncateToHighWatermark) {
            // KIP-101's bug: the follower's own high watermark, which may lag the leader's
            target = replica.high_watermark().max(log.start_offset());
        }
        tracing::info!(topic = %replica.topic, partition = replica.partition, %target, epoch = %leader_epoch, "log diverged from the leader; truncating");
        tokio::task::spawn_blocking(move || log.truncate_to(target))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let copied: usize = data.batches.iter().map(|b| b.data.len()).sum();
    let batches: Vec<RecordBatch> = data
        .batches
        .into_iter()
        .map(RecordBatch::try_from)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if !batches.is_empty() {
        let log = Arc::clone(&replica.log);
        tokio::task::spawn_blocking(move || {
            let mut last = None;
            for batch in &batches {
                if batch.next_offset() <= log.end_offset() {
                    continue; // already here (a retried fetch)
                }
                let (_, ticket) = log
                    .append_replicated_nowait(batch)
                    .map_err(|e| e.to_string())?;
                last = Some(ticket);
            }
            match last {
                Some(_) if bugs::active(Bug::AckBeforeFsync) => Ok(()),
                Some(ticket) => log.wait_durable(ticket).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    replica.set_follower_high_watermark(Offset(data.high_watermark));
    // A reassignment's throttle: a replica still catching up copies at most this rate.
    let lead = replica.leadership();
    if lead.catch_up_bytes_per_s > 0 && !lead.isr.contains(&replica.me) && copied > 0 {
        let pause = Duration::from_secs_f64(copied as f64 / lead.catch_up_bytes_per_s as f64);
        tokio::time::sleep(pause.min(Duration::from_secs(10))).await;
    }
    Ok(())
}

/// On every partition this broker leads: asks the controller to change the ISR when
/// followers fell behind or caught up, and checkpoints high watermarks.
pub async fn run_isr_manager(
    config: BrokerConfig,
    registry: Arc<Registry>,
    session: watch::Receiver<SessionState>,
    mut stop: watch::Receiver<bool>,
) {
    let lag = Duration::from_millis(config.replica_lag_ms_max);
    let tick = (lag / 8).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut last_checkpoint = Instant::now();
    // (topic, partition) -> (partition epoch, when) of the last request: the same change is
    // asked at most once a second while the controller's answer travels back as metadata
    let mut asked: HashMap<(String, u32), (i32, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(incarnation) = session.borrow().incarnation else {
            continue;
        };
        for replica in registry.all() {
            let Some(isr) = replica.wanted_isr(lag) else {
                continue;
            };
            let lead = replica.leadership();
            let key = (replica.topic.clone(), replica.partition);
            if asked.get(&key).is_some_and(|(epoch, at)| {
                *epoch == lead.partition_epoch && at.elapsed() < Duration::from_secs(1)
            }) {
                continue;
            }
            asked.insert(key, (lead.partition_epoch, Instant::now()));
            let request = pb::AlterPartitionRequest {
                broker_id: registry.me().0,
                incarnation,
                topic: replica.topic.clone(),
                partition: replica.partition,
                leader_epoch: lead.leader_epoch.0,
                partition_epoch: lead.partition_epoch,
                isr: isr.iter().map(|b| b.0).collect(),
            };
            tracing::info!(topic = %replica.topic, partition = replica.partition, from = ?lead.isr, to = ?isr, "asking to change the ISR");
            let result = weir_proto::call::with_controller(
                &config.controllers,
                Duration::from_secs(2),
                |ch| {
                    let request = request.clone();
                    async move { BrokerRegistryClient::new(ch).alter_partition(request).await }
                },
            )
            .await;
            if let Err(e) = result {
                tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "ISR change refused");
            }
        }
        if last_checkpoint.elapsed() >= Duration::from_secs(5) {
            last_checkpoint = Instant::now();
            for replica in registry.all() {
                let log = Arc::clone(&replica.log);
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || log.checkpoint()).await {
                    tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "high-watermark checkpoint failed");
                }
            }
        }
    }
}
