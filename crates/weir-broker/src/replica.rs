//! One partition replica on this broker: its log and the owner task that appends to it.
//!
//! Appends go through the owner's bounded mailbox, so the order of offsets is the order in
//! which requests reached the owner, and a request handler that is dropped (client gone) can
//! never leave a half-done append: the owner finishes what it took. The owner writes every
//! queued batch and then waits for one fsync that covers them all.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use weir_faults::bugs::{self, Bug};

use tokio::sync::{mpsc, oneshot, watch};
use weir_log::{AppendInfo, LogError, PartitionLog};
use weir_types::{BrokerId, LeaderEpoch, Offset, RecordBatch};

/// Appends queued for one partition before producers are pushed back.
pub const MAILBOX_MAX: usize = 1024;
/// Appends written before one fsync wait.
pub const APPEND_GROUP_MAX: usize = 256;

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

pub struct AppendRequest {
    pub batch: RecordBatch,
    pub epoch: LeaderEpoch,
    pub reply: oneshot::Sender<Result<AppendInfo, LogError>>,
}

/// Shared handle to a replica.
pub struct Replica {
    /// This broker.
    pub me: BrokerId,
    pub topic: String,
    pub topic_id: String,
    pub partition: u32,
    pub dir: PathBuf,
    pub log: Arc<PartitionLog>,
    leadership: RwLock<Leadership>,
    /// Taken on close: once every sender is gone the owner drains its queue and stops.
    mailbox: std::sync::Mutex<Option<mpsc::Sender<AppendRequest>>>,
    /// The durable end offset, announced after every fsynced group of appends.
    durable: watch::Sender<Offset>,
    /// Consumers read below this offset. Announced whenever it moves.
    high_watermark: watch::Sender<Offset>,
    /// Follower progress while this broker leads (reset on every leader epoch).
    progress: Mutex<crate::progress::Progress>,
    /// Bumped after every fsynced group on any replica of this broker, so replica fetches
    /// waiting for data on several partitions wake up.
    activity: Arc<watch::Sender<u64>>,
}

impl Replica {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        me: BrokerId,
        topic: String,
        topic_id: String,
        partition: u32,
        dir: PathBuf,
        log: PartitionLog,
        leadership: Leadership,
        activity: Arc<watch::Sender<u64>>,
    ) -> (Arc<Replica>, tokio::task::JoinHandle<()>) {
        let log = Arc::new(log);
        let (tx, rx) = mpsc::channel(MAILBOX_MAX);
        let (durable, _) = watch::channel(log.durable_end());
        let (high_watermark, _) = watch::channel(log.high_watermark());
        let replica = Arc::new(Replica {
            me,
            high_watermark,
            progress: Mutex::new(crate::progress::Progress::new(Instant::now())),
            activity,
            topic,
            topic_id,
            partition,
            dir,
            log: Arc::clone(&log),
            leadership: RwLock::new(leadership),
            mailbox: std::sync::Mutex::new(Some(tx)),
            durable,
        });
        let owner = tokio::spawn(run_owner(Arc::clone(&replica), rx));
        (replica, owner)
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies the controller's view. Becoming leader (or a new epoch) restarts follower
    /// progress: offsets reported to an earlier leader prove nothing to this one.
    pub fn set_leadership(&self, leadership: Leadership) {
        let mut current = self.leadership.write().unwrap_or_else(|p| p.into_inner());
        let new_term = leadership.leader == Some(self.me)
            && (current.leader != Some(self.me) || current.leader_epoch != leadership.leader_epoch);
        *current = leadership;
        drop(current);
        if new_term {
            *self.progress.lock().unwrap_or_else(|p| p.into_inner()) =
                crate::progress::Progress::new(Instant::now());
        }
        self.advance_high_watermark();
    }

    pub fn is_leader(&self) -> bool {
        self.leadership().leader == Some(self.me)
    }

    /// A follower fetched, reporting `fetch_offset` as fsynced on its side.
    pub fn record_follower_fetch(&self, follower: BrokerId, fetch_offset: Offset) {
        let end = self.log.end_offset();
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_fetch(follower, fetch_offset, end, Instant::now());
        self.advance_high_watermark();
    }

    /// The ISR this leader should ask the controller for, if it differs from the current one.
    pub fn wanted_isr(&self, lag_max: std::time::Duration) -> Option<Vec<BrokerId>> {
        let lead = self.leadership();
        if lead.leader != Some(self.me) {
            return None;
        }
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wanted_isr(
                self.me,
                &lead.replicas,
                &lead.isr,
                self.high_watermark(),
                lag_max,
                Instant::now(),
            )
    }

    /// On the leader: recomputes the high watermark from the ISR's reported offsets.
    pub fn advance_high_watermark(&self) {
        let lead = self.leadership();
        if lead.leader != Some(self.me) {
            return;
        }
        let current = self.high_watermark();
        let hw = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .high_watermark(self.me, &lead.isr, self.durable_end(), current);
        if hw != current {
            self.log.set_high_watermark(hw);
            self.high_watermark.send_replace(hw);
        }
    }

    /// On a follower: the leader's high watermark, capped by what this replica holds.
    pub fn set_follower_high_watermark(&self, leader_hw: Offset) {
        let hw = leader_hw.min(self.durable_end());
        if hw != self.high_watermark() {
            self.log.set_high_watermark(hw);
            self.high_watermark.send_replace(hw);
        }
    }

    /// Where this replica's fsynced data ends: what it may count, and report, as held.
    pub fn durable_end(&self) -> Offset {
        if bugs::active(Bug::AckBeforeFsync) {
            return self.log.end_offset();
        }
        self.log.durable_end()
    }

    pub fn subscribe_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    /// Queues an append; `Err` gives the request back when the owner has stopped.
    pub async fn append(&self, request: AppendRequest) -> Result<(), AppendRequest> {
        let sender = self
            .mailbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match sender {
            Some(sender) => sender.send(request).await.map_err(|e| e.0),
            None => Err(request),
        }
    }

    pub fn subscribe_durable(&self) -> watch::Receiver<Offset> {
        self.durable.subscribe()
    }

    /// Consumers read below this offset: every record below it is fsynced on every ISR member.
    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// Stops accepting appends; the owner finishes what is queued and stops.
    pub fn close(&self) {
        self.mailbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

async fn run_owner(replica: Arc<Replica>, mut mailbox: mpsc::Receiver<AppendRequest>) {
    let mut group = Vec::with_capacity(APPEND_GROUP_MAX);
    while mailbox.recv_many(&mut group, APPEND_GROUP_MAX).await > 0 {
        let requests = std::mem::take(&mut group);
        let log = Arc::clone(&replica.log);
        // Writes and the fsync wait block; they run on the blocking pool, owned by this task.
        let outcome = tokio::task::spawn_blocking(move || {
            let mut written = Vec::with_capacity(requests.len());
            let mut last_ticket = None;
            for request in requests {
                match log.append_nowait(&request.batch, request.epoch) {
                    Ok((info, ticket)) => {
                        last_ticket = Some(ticket);
                        written.push((request.reply, Ok(info)));
                    }
                    Err(e) => written.push((request.reply, Err(e))),
                }
            }
            let durable = match last_ticket {
                Some(_) if bugs::active(Bug::AckBeforeFsync) => Ok(()),
                Some(ticket) => log.wait_durable(ticket),
                None => Ok(()),
            };
            (written, durable)
        })
        .await;
        let Ok((written, durable)) = outcome else {
            tracing::error!(topic = %replica.topic, partition = replica.partition, "append task panicked");
            return;
        };
        for (reply, result) in written {
            let result = match (&durable, result) {
                (Err(e), Ok(_)) => Err(LogError::FlushFailed(e.to_string())),
                (_, r) => r,
            };
            let _ = reply.send(result);
        }
        replica.durable.send_replace(replica.log.durable_end());
        replica.advance_high_watermark();
        replica.activity.send_modify(|n| *n = n.wrapping_add(1));
    }
}
