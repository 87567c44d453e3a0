//! The leader's side of replication: `ReplicaFetch`. Checks the follower's leader epoch,
//! answers a diverged follower where its epoch really ends (KIP-320), reports the follower's
//! fsynced offset to the replica's owner (which moves the high watermark), and long-polls on
//! broker-wide append activity when nothing is new. See `docs/replication.md`.

use std::sync::Arc;
use std::time::Duration;

use weir_proto::internal::v1 as ipb;
use weir_types::{BrokerId, ErrorCode, LeaderEpoch, Offset};

use crate::error::BrokerError;
use crate::registry::Registry;
use crate::replica::Replica;
use weir_proto::internal::v1::replication_server::Replication;

/// Bytes one replica fetch returns across its partitions.
pub const REPLICA_FETCH_BYTES_MAX: usize = 8 << 20;

fn answer(replica: &Replica, req: &ipb::ReplicaFetchPartition) -> ipb::ReplicaFetchPartitionData {
    ipb::ReplicaFetchPartitionData {
        topic: req.topic.clone(),
        partition: req.partition,
        high_watermark: replica.high_watermark().0,
        log_start_offset: replica.log.start_offset().0,
        ..Default::default()
    }
}

fn failed(req: &ipb::ReplicaFetchPartition, code: ErrorCode) -> ipb::ReplicaFetchPartitionData {
    ipb::ReplicaFetchPartitionData {
        topic: req.topic.clone(),
        partition: req.partition,
        error_code: code.as_i32(),
        ..Default::default()
    }
}

/// Whether a held fetch must be answered now for this partition: it has records past the
/// follower's offset, or it is no longer this broker's at the follower's epoch (which a full
/// pass answers with an error). Cheap: no message to the replica's owner, no read.
fn has_news(registry: &Registry, req: &ipb::ReplicaFetchPartition) -> bool {
    let Some(replica) = registry.get(&req.topic, req.partition) else {
        return true;
    };
    let lead = replica.leadership();
    lead.leader != Some(registry.me())
        || lead.leader_epoch.0 != req.leader_epoch
        || replica.log.end_offset() > Offset(req.fetch_offset)
}

/// The leader's answer for one partition; `None` batches means "nothing new". `record`
/// reports the follower's offset to the replica's owner (once per request: the offset a
/// request carries does not change while it is held).
async fn fetch_one(
    registry: &Registry,
    follower: BrokerId,
    req: &ipb::ReplicaFetchPartition,
    budget: usize,
    record: bool,
) -> ipb::ReplicaFetchPartitionData {
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
    if record
        && replica
            .record_follower_fetch(follower, fetch)
            .await
            .is_err()
    {
        return failed(req, ErrorCode::NotLeader);
    }
    let mut out = answer(&replica, req);
    if fetch < log.end_offset() {
        // a follower at or above the high watermark reads what was written moments ago, from
        // the page cache: in place, without the hop to a blocking thread; one catching up, or
        // behind the log's cached tail, may read from the disk, on the blocking pool
        let read = if fetch >= replica.high_watermark() && log.reads_from_memory(fetch) {
            Ok(log.read(fetch, budget, None))
        } else {
            let log = Arc::clone(&replica.log);
            tokio::task::spawn_blocking(move || log.read(fetch, budget, None)).await
        };
        match read {
            Ok(Ok(batches)) => out.batches = batches.into_iter().map(Into::into).collect(),
            Ok(Err(e)) => out.error_code = e.code().as_i32(),
            Err(_) => out.error_code = ErrorCode::Unknown.as_i32(),
        }
    }
    out
}

/// `weir.internal.v1.Replication`, served on the broker's internal listener.
#[derive(Clone)]
pub struct ReplicationService {
    pub registry: Arc<Registry>,
    /// Longest a replica fetch may wait for data.
    pub fetch_wait_ms_max: u32,
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn replica_fetch(
        &self,
        request: tonic::Request<ipb::ReplicaFetchRequest>,
    ) -> Result<tonic::Response<ipb::ReplicaFetchResponse>, tonic::Status> {
        let started = std::time::Instant::now();
        // over mutual TLS the follower is who its certificate says, whatever it claims
        weir_proto::tls::check_peer(&request, request.get_ref().follower_id)?;
        let result = serve_fetch(self, request.into_inner()).await;
        crate::server::record("replica_fetch", started, &result);
        result
            .map(tonic::Response::new)
            .map_err(tonic::Status::from)
    }
}

/// The leader side of `ReplicaFetch`: answers at once when any partition has news, otherwise
/// waits (up to the request's wait) for an append on this broker. The first pass reports the
/// follower's offsets; a wake-up only looks at the logs' ends (every append on the broker wakes
/// every held fetch, and most have nothing for it) and makes a full pass when one has news.
async fn serve_fetch(
    service: &ReplicationService,
    req: ipb::ReplicaFetchRequest,
) -> Result<ipb::ReplicaFetchResponse, BrokerError> {
    if req.follower_id == 0 {
        return Err(BrokerError::invalid("follower_id", "must be positive"));
    }
    let follower = BrokerId(req.follower_id);
    let budget = (req.max_bytes as usize).clamp(1, REPLICA_FETCH_BYTES_MAX);
    let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(service.fetch_wait_ms_max)));
    let deadline = tokio::time::Instant::now() + wait;
    let mut activity = service.registry.activity.subscribe();
    let mut first = true;
    loop {
        activity.borrow_and_update();
        let expired = tokio::time::Instant::now() >= deadline;
        if first
            || expired
            || req
                .partitions
                .iter()
                .any(|p| has_news(&service.registry, p))
        {
            let mut partitions = Vec::with_capacity(req.partitions.len());
            let mut left = budget;
            for p in &req.partitions {
                let data = fetch_one(&service.registry, follower, p, left.max(1), first).await;
                let bytes: usize = data.batches.iter().map(|b| b.data.len()).sum();
                left = left.saturating_sub(bytes);
                partitions.push(data);
            }
            let has_data_or_error = partitions
                .iter()
                .any(|d| !d.batches.is_empty() || d.error_code != 0 || d.diverged);
            if has_data_or_error || expired {
                return Ok(ipb::ReplicaFetchResponse { partitions });
            }
            first = false;
        }
        // a timeout loops once more: the last pass answers with the high watermarks as they
        // are then
        let _ = tokio::time::timeout_at(deadline, activity.changed()).await;
    }
}
