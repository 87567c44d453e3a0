//! One partition replica on this broker: its log and the owner task that alone changes it.
//!
//! The owner is the only writer of the replica's log (leader appends, follower copies,
//! truncation, resets, checkpoints, retention, config), its high watermark and its ISR
//! requests. It feeds what happens to the pure [`ReplicaState`] and performs the actions it
//! returns. Everyone else holds a [`Replica`] handle: it reads the log (fetches), and sends
//! the owner commands through two bounded mailboxes — appends, and control (leadership,
//! follower progress, replication steps), which the owner serves first so that a queue of
//! appends never delays the high watermark.
//!
//! Leader appends are pipelined: the owner writes a group of queued appends, hands the wait
//! for its fsync to the blocking pool and goes on writing the next group; groups are answered
//! in order as their fsyncs complete. A request handler that is dropped (client gone) never
//! leaves a half-done append: the owner finishes what it took.
//!
//! An fsync failure is fatal for the disk: the owner reports it through [`DiskHealth`], and
//! the broker stops leading and heartbeating (fail-stop), so the controller moves every
//! leadership to replicas that still have their data.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_faults::bugs::{self, Bug};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use weir_log::{AppendInfo, LogConfig, LogError, PartitionLog, RetentionOutcome, Ticket};
use weir_types::{BrokerId, LeaderEpoch, Offset, RecordBatch};

pub use crate::state::Leadership;
use crate::state::{Action, Event, ReplicaState};

/// Appends queued for one partition before producers are pushed back.
pub const MAILBOX_MAX: usize = 1024;
/// Control commands queued for one partition.
pub const CONTROL_MAX: usize = 256;
/// Appends written before one fsync wait.
pub const APPEND_GROUP_MAX: usize = 256;
/// Appends written but not yet answered (waiting for their fsync) before the owner stops
/// taking more.
pub const UNANSWERED_MAX: usize = 4 * APPEND_GROUP_MAX;

pub struct AppendRequest {
    pub batch: RecordBatch,
    pub epoch: LeaderEpoch,
    pub reply: oneshot::Sender<Result<AppendInfo, LogError>>,
}

/// An ISR change the owner wants the controller to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrRequest {
    pub isr: Vec<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: i32,
    pub current: Vec<BrokerId>,
}

/// What a follower's copy step wrote: the fsync to wait for (none if nothing new).
pub type Copied = Option<Ticket>;

enum Command {
    Leadership(Leadership, oneshot::Sender<()>),
    FollowerFetch {
        follower: BrokerId,
        fetch_offset: Offset,
        done: oneshot::Sender<()>,
    },
    /// Follower: write batches copied from the leader, without waiting for the fsync.
    Copy {
        batches: Vec<RecordBatch>,
        reply: oneshot::Sender<Result<Copied, LogError>>,
    },
    /// Follower: the copies are fsynced (or nothing was new); take the leader's high watermark.
    Copied {
        leader_hw: Offset,
    },
    Diverged {
        leader_epoch: LeaderEpoch,
        leader_end: Offset,
        reply: oneshot::Sender<Result<Offset, LogError>>,
    },
    ResetTo {
        offset: Offset,
        reply: oneshot::Sender<Result<Offset, LogError>>,
    },
    Tick {
        lag_max: Duration,
        reply: oneshot::Sender<Option<IsrRequest>>,
    },
    Checkpoint(oneshot::Sender<Result<(), LogError>>),
    Retention(oneshot::Sender<Result<RetentionOutcome, LogError>>),
    Config(LogConfig),
}

/// The broker's disk: healthy until an fsync (or a write) fails, then failed for good.
#[derive(Clone)]
pub struct DiskHealth(Arc<watch::Sender<Option<String>>>);

impl Default for DiskHealth {
    fn default() -> Self {
        DiskHealth(Arc::new(watch::channel(None).0))
    }
}

impl DiskHealth {
    pub fn fail(&self, reason: String) {
        self.0.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            tracing::error!(%reason, "disk failed: this broker stops leading and heartbeating");
            *r = Some(reason);
            true
        });
    }

    pub fn failure(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.0.subscribe()
    }
}

/// The owner stopped (the partition is closing here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the partition is closing on this broker")]
pub struct Closed;

/// Shared handle to a replica.
pub struct Replica {
    /// This broker.
    pub me: BrokerId,
    pub topic: String,
    pub topic_id: String,
    pub partition: u32,
    pub dir: PathBuf,
    /// For reads; only the owner writes.
    pub log: Arc<PartitionLog>,
    /// Published by the owner after every change.
    leadership: watch::Sender<Leadership>,
    /// Taken on close: once every sender is gone the owner drains its queues and stops.
    mailboxes: Mutex<Option<(mpsc::Sender<AppendRequest>, mpsc::Sender<Command>)>>,
    /// Consumers read below this offset. Announced whenever it moves.
    high_watermark: watch::Sender<Offset>,
}

/// The owner's side.
struct Owner {
    replica: Arc<Replica>,
    state: ReplicaState,
    /// Bumped after every fsynced group on any replica of this broker, so replica fetches
    /// waiting for data on several partitions wake up.
    activity: Arc<watch::Sender<u64>>,
    disk: DiskHealth,
    /// The periodic checkpoint being written: on the blocking pool, while this owner goes on
    /// serving appends; awaited before the next one and before the owner stops.
    checkpointing: Option<tokio::task::JoinHandle<()>>,
}

type Replies = Vec<(oneshot::Sender<Result<AppendInfo, LogError>>, AppendInfo)>;

impl Replica {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        me: BrokerId,
        topic: String,
        topic_id: String,
        partition: u32,
        dir: PathBuf,
        log: PartitionLog,
        activity: Arc<watch::Sender<u64>>,
        disk: DiskHealth,
    ) -> (Arc<Replica>, JoinHandle<()>) {
        let log = Arc::new(log);
        let (appends_tx, appends) = mpsc::channel(MAILBOX_MAX);
        let (control_tx, control) = mpsc::channel(CONTROL_MAX);
        let hw = log.high_watermark();
        let replica = Arc::new(Replica {
            me,
            topic,
            topic_id,
            partition,
            dir,
            leadership: watch::channel(Leadership::none()).0,
            high_watermark: watch::channel(hw).0,
            log,
            mailboxes: Mutex::new(Some((appends_tx, control_tx))),
        });
        let owner = Owner {
            replica: Arc::clone(&replica),
            state: ReplicaState::new(me, hw, Instant::now()),
            activity,
            disk,
            checkpointing: None,
        };
        let task = tokio::spawn(owner.run(appends, control));
        (replica, task)
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().leader == Some(self.me)
    }

    /// Consumers read below this offset: every record below it is fsynced on every ISR member.
    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    pub fn subscribe_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    /// Changes of leadership (a demotion, a drain, a new epoch).
    pub fn subscribe_leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// Where this replica's fsynced data ends: what it may count, and report, as held.
    pub fn durable_end(&self) -> Offset {
        durable_end(&self.log)
    }

    fn control(&self) -> Option<mpsc::Sender<Command>> {
        self.mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, c)| c.clone())
    }

    async fn send(&self, command: Command) -> Result<(), Closed> {
        match self.control() {
            Some(c) => c.send(command).await.map_err(|_| Closed),
            None => Err(Closed),
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Closed> {
        let (tx, rx) = oneshot::channel();
        self.send(command(tx)).await?;
        rx.await.map_err(|_| Closed)
    }

    /// Queues an append; `Err` gives the request back when the owner has stopped.
    pub async fn append(&self, request: AppendRequest) -> Result<(), AppendRequest> {
        let sender = self
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(a, _)| a.clone());
        match sender {
            Some(sender) => sender.send(request).await.map_err(|e| e.0),
            None => Err(request),
        }
    }

    /// Applies the controller's view; returns once the owner has taken it.
    pub async fn set_leadership(&self, leadership: Leadership) -> Result<(), Closed> {
        self.ask(|tx| Command::Leadership(leadership, tx)).await
    }

    /// On the leader: a follower fetched, reporting `fetch_offset` as fsynced on its side.
    /// Returns once the owner has moved the high watermark for it.
    pub async fn record_follower_fetch(
        &self,
        follower: BrokerId,
        fetch_offset: Offset,
    ) -> Result<(), Closed> {
        self.ask(|done| Command::FollowerFetch {
            follower,
            fetch_offset,
            done,
        })
        .await
    }

    /// On a follower: writes batches copied from the leader (those already here are
    /// skipped) without waiting for their fsync; wait on the returned ticket, then call
    /// [`Self::copied`].
    pub async fn copy(
        &self,
        batches: Vec<RecordBatch>,
    ) -> Result<Result<Copied, LogError>, Closed> {
        self.ask(|reply| Command::Copy { batches, reply }).await
    }

    /// On a follower: what was copied is fsynced; the leader's high watermark applies.
    pub async fn copied(&self, leader_hw: Offset) -> Result<(), Closed> {
        self.send(Command::Copied { leader_hw }).await
    }

    /// On a follower: the leader said this log diverged; truncates to the shared prefix and
    /// returns the new end.
    pub async fn diverged(
        &self,
        leader_epoch: LeaderEpoch,
        leader_end: Offset,
    ) -> Result<Result<Offset, LogError>, Closed> {
        self.ask(|reply| Command::Diverged {
            leader_epoch,
            leader_end,
            reply,
        })
        .await
    }

    /// On a follower entirely behind the leader's log start: empties the log at `offset`.
    pub async fn reset_to(&self, offset: Offset) -> Result<Result<Offset, LogError>, Closed> {
        self.ask(|reply| Command::ResetTo { offset, reply }).await
    }

    /// On the leader: the ISR change due now, if any (asked at most once a second per
    /// partition epoch).
    pub async fn tick(&self, lag_max: Duration) -> Result<Option<IsrRequest>, Closed> {
        self.ask(|reply| Command::Tick { lag_max, reply }).await
    }

    /// Persists the recovery point and high watermark.
    pub async fn checkpoint(&self) -> Result<Result<(), LogError>, Closed> {
        self.ask(Command::Checkpoint).await
    }

    pub async fn enforce_retention(&self) -> Result<Result<RetentionOutcome, LogError>, Closed> {
        self.ask(Command::Retention).await
    }

    pub async fn set_config(&self, config: LogConfig) -> Result<(), Closed> {
        self.send(Command::Config(config)).await
    }

    /// Stops accepting commands; the owner finishes what is queued, checkpoints and stops.
    pub fn close(&self) {
        self.mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

fn durable_end(log: &PartitionLog) -> Offset {
    if bugs::active(Bug::AckBeforeFsync) {
        return log.end_offset();
    }
    log.durable_end()
}

/// Runs `work` in place when `buffered` (page-cache writes only: no fsync, no disk wait),
/// else on the blocking pool. The hop to a blocking thread and back costs more than a
/// buffered write of a batch.
async fn append_io<T: Send + 'static>(
    log: &Arc<PartitionLog>,
    buffered: bool,
    work: impl FnOnce(&PartitionLog) -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    if buffered {
        work(log)
    } else {
        blocking(log, work).await
    }
}

/// Runs blocking log work on the blocking pool, owned by the calling task.
async fn blocking<T: Send + 'static>(
    log: &Arc<PartitionLog>,
    work: impl FnOnce(&PartitionLog) -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    let log = Arc::clone(log);
    tokio::task::spawn_blocking(move || work(&log))
        .await
        .unwrap_or_else(|e| Err(LogError::Config(format!("log task failed: {e}"))))
}

/// The fsync covering a write, awaited without a thread blocked on it: the flusher completes
/// it when its round ends.
pub struct Durable(oneshot::Receiver<Result<(), LogError>>);

impl std::future::Future for Durable {
    type Output = Result<(), LogError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(LogError::FlushFailed("the flusher stopped".into()))))
    }
}

/// The fsync covering `ticket`.
pub fn wait_for(log: &Arc<PartitionLog>, ticket: Ticket) -> Durable {
    let (tx, rx) = oneshot::channel();
    if bugs::active(Bug::AckBeforeFsync) {
        let _ = tx.send(Ok(()));
    } else {
        log.on_durable(ticket, move |result| {
            let _ = tx.send(result);
        });
    }
    Durable(rx)
}

impl Owner {
    async fn run(
        mut self,
        mut appends: mpsc::Receiver<AppendRequest>,
        mut control: mpsc::Receiver<Command>,
    ) {
        let log = Arc::clone(&self.replica.log);
        let mut group = Vec::with_capacity(APPEND_GROUP_MAX);
        // the fsync wait in flight and the groups it answers
        let mut in_flight: Option<(Durable, Replies)> = None;
        // groups written after it, answered by the next wait
        let mut queued: Option<(Ticket, Replies)> = None;
        let (mut appends_open, mut control_open) = (true, true);
        loop {
            let unanswered = in_flight.as_ref().map_or(0, |(_, r)| r.len())
                + queued.as_ref().map_or(0, |(_, r)| r.len());
            if !appends_open && !control_open && in_flight.is_none() {
                break;
            }
            tokio::select! {
                biased;
                command = control.recv(), if control_open => match command {
                    Some(command) => self.command(command).await,
                    None => control_open = false,
                },
                done = async { (&mut in_flight.as_mut().expect("guarded").0).await },
                    if in_flight.is_some() =>
                {
                    let (_, replies) = in_flight.take().expect("guarded");
                    self.answer(replies, done);
                    if let Some((ticket, replies)) = queued.take() {
                        in_flight = Some((wait_for(&log, ticket), replies));
                    }
                }
                n = appends.recv_many(&mut group, APPEND_GROUP_MAX),
                    if appends_open && unanswered < UNANSWERED_MAX =>
                {
                    if n == 0 {
                        appends_open = false;
                        continue;
                    }
                    let requests = std::mem::take(&mut group);
                    let Some((ticket, replies)) = self.write(requests).await else {
                        continue;
                    };
                    // followers may copy what is written before it is fsynced here (it
                    // counts only once both fsyncs cover it): wake their fetches now, so the
                    // leader's fsync and theirs overlap
                    self.activity.send_modify(|n| *n = n.wrapping_add(1));
                    if in_flight.is_none() {
                        in_flight = Some((wait_for(&log, ticket), replies));
                    } else {
                        let (t, r) = queued.get_or_insert_with(|| (ticket, Vec::new()));
                        *t = ticket;
                        r.extend(replies);
                    }
                }
            }
        }
        if let Some(running) = self.checkpointing.take() {
            let _ = running.await;
        }
        if let Err(e) = blocking(&log, |log| log.checkpoint()).await {
            tracing::warn!(topic = %self.replica.topic, partition = self.replica.partition, error = %e, "checkpoint on close");
        }
    }

    /// Writes a group of appends (no fsync wait); answers failures at once and returns the
    /// written ones with the ticket that covers them.
    async fn write(&mut self, requests: Vec<AppendRequest>) -> Option<(Ticket, Replies)> {
        let log = &self.replica.log;
        let buffered = log.appends_are_buffered(requests.iter().map(|r| (&r.batch, r.epoch)));
        let written = append_io(log, buffered, move |log| {
            let mut out = Vec::with_capacity(requests.len());
            for request in requests {
                let result = log.append_nowait(&request.batch, request.epoch);
                out.push((request.reply, result));
            }
            Ok(out)
        })
        .await;
        let Ok(written) = written else {
            return None; // the blocking task died; its replies are dropped (answered as closed)
        };
        let mut replies = Vec::with_capacity(written.len());
        let mut last = None;
        for (reply, result) in written {
            match result {
                Ok((info, ticket)) => {
                    last = Some(ticket);
                    replies.push((reply, info));
                }
                Err(e) => {
                    if matches!(e, LogError::FlushFailed(_)) {
                        self.disk.fail(e.to_string());
                    }
                    let _ = reply.send(Err(e));
                }
            }
        }
        last.map(|ticket| (ticket, replies))
    }

    fn answer(&mut self, replies: Replies, durable: Result<(), LogError>) {
        if let Err(e) = &durable {
            self.disk.fail(e.to_string());
        }
        for (reply, info) in replies {
            let _ = reply.send(match &durable {
                Ok(()) => Ok(info),
                Err(e) => Err(LogError::FlushFailed(e.to_string())),
            });
        }
        self.durable_moved();
    }

    /// Fsynced data grew: the high watermark may follow; wake waiting replica fetches.
    fn durable_moved(&mut self) {
        let durable_end = durable_end(&self.replica.log);
        let actions = self.state.step(Event::Durable { durable_end });
        self.perform_hw(actions);
        self.activity.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Performs high-watermark actions (the only kind the non-truncating events return).
    fn perform_hw(&mut self, actions: Vec<Action>) {
        for action in actions {
            if let Action::HighWatermark(hw) = action {
                self.replica.log.set_high_watermark(hw);
                self.replica.high_watermark.send_replace(hw);
            }
        }
    }

    async fn command(&mut self, command: Command) {
        let log = Arc::clone(&self.replica.log);
        match command {
            Command::Leadership(leadership, done) => {
                let actions = self.state.step(Event::Leadership {
                    leadership: leadership.clone(),
                    durable_end: durable_end(&log),
                    now: Instant::now(),
                });
                self.replica.leadership.send_replace(leadership);
                self.perform_hw(actions);
                let _ = done.send(());
            }
            Command::FollowerFetch {
                follower,
                fetch_offset,
                done,
            } => {
                let actions = self.state.step(Event::FollowerFetch {
                    follower,
                    fetch_offset,
                    log_end: log.end_offset(),
                    durable_end: durable_end(&log),
                    now: Instant::now(),
                });
                self.perform_hw(actions);
                let _ = done.send(());
            }
            Command::Copy { batches, reply } => {
                let buffered =
                    log.appends_are_buffered(batches.iter().map(|b| (b, b.leader_epoch())));
                let result = append_io(&log, buffered, move |log| {
                    let mut last = None;
                    for batch in &batches {
                        if batch.next_offset() <= log.end_offset() {
                            continue; // already here (a retried fetch)
                        }
                        let (_, ticket) = log.append_replicated_nowait(batch)?;
                        last = Some(ticket);
                    }
                    Ok(last)
                })
                .await;
                if let Err(LogError::FlushFailed(e)) = &result {
                    self.disk.fail(e.clone());
                }
                let _ = reply.send(result);
            }
            Command::Copied { leader_hw } => {
                let durable_end = durable_end(&log);
                let actions = self.state.step(Event::LeaderHighWatermark {
                    leader_hw,
                    durable_end,
                });
                self.perform_hw(actions);
            }
            Command::Diverged {
                leader_epoch,
                leader_end,
                reply,
            } => {
                let mut actions = self.state.step(Event::Diverged {
                    leader_end,
                    mine: log.end_offset_for_epoch(leader_epoch),
                    log_start: log.start_offset(),
                });
                if bugs::active(Bug::TruncateToHighWatermark) {
                    // KIP-101's bug: the follower's own high watermark, which may lag the
                    // leader's
                    actions = vec![Action::Truncate(
                        self.state.high_watermark().max(log.start_offset()),
                    )];
                }
                let mut result = Ok(log.end_offset());
                for action in actions {
                    if let Action::Truncate(target) = action {
                        tracing::info!(topic = %self.replica.topic, partition = self.replica.partition, %target, epoch = %leader_epoch, "log diverged from the leader; truncating");
                        result = blocking(&log, move |log| log.truncate_to(target)).await;
                    }
                }
                self.truncated(&result);
                let _ = reply.send(result);
            }
            Command::ResetTo { offset, reply } => {
                let result = blocking(&log, move |log| log.reset_to(offset)).await;
                self.truncated(&result);
                let _ = reply.send(result);
            }
            Command::Tick { lag_max, reply } => {
                let current = self.state.leadership().isr.clone();
                let wish = self
                    .state
                    .step(Event::Tick {
                        lag_max,
                        now: Instant::now(),
                    })
                    .into_iter()
                    .find_map(|a| match a {
                        Action::AlterIsr {
                            isr,
                            leader_epoch,
                            partition_epoch,
                        } => Some(IsrRequest {
                            isr,
                            leader_epoch,
                            partition_epoch,
                            current: current.clone(),
                        }),
                        _ => None,
                    });
                let _ = reply.send(wish);
            }
            Command::Checkpoint(reply) => {
                if let Some(running) = self.checkpointing.take() {
                    let _ = running.await;
                }
                if log.checkpoint_is_current() {
                    let _ = reply.send(Ok(()));
                } else {
                    // two fsyncs: not in this task, where this replica's appends wait; the
                    // log's file lock orders it with rolls and truncations
                    let log = Arc::clone(&log);
                    self.checkpointing = Some(tokio::spawn(async move {
                        let _ = reply.send(blocking(&log, |log| log.checkpoint()).await);
                    }));
                }
            }
            Command::Retention(reply) => {
                let _ = reply.send(blocking(&log, |log| log.enforce_retention()).await);
            }
            Command::Config(config) => {
                if log.config() != config
                    && let Err(e) = log.set_config(config)
                {
                    tracing::warn!(topic = %self.replica.topic, partition = self.replica.partition, error = %e, "topic config not applied");
                }
            }
        }
    }

    /// After a truncation or reset: the high watermark follows the log.
    fn truncated(&mut self, result: &Result<Offset, LogError>) {
        match result {
            Ok(end) => {
                self.state.step(Event::Truncated { log_end: *end });
                let hw = self.state.high_watermark();
                self.replica.high_watermark.send_replace(hw);
            }
            Err(LogError::FlushFailed(e)) => self.disk.fail(e.clone()),
            Err(_) => {}
        }
    }
}
