//! The controller's Raft storage: log, vote and state machine in sled, behind openraft's
//! `RaftLogStorage` and `RaftStateMachine` traits.
//!
//! Layout (one sled database per controller):
//! - tree `log`: big-endian index → JSON entry;
//! - tree `raft`: `vote`, `committed`, `last_purged`;
//! - tree `snapshot`: `current` (the last built or installed snapshot: its meta and the
//!   whole applied state — metadata, groups, committed offsets).
//!
//! Every append, vote, truncation and purge is flushed to disk before it is acknowledged. The
//! state machine itself lives in memory (see [`StateMachine`]).

// openraft's traits fix the error type (`StorageError`, ~224 bytes); helpers share it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, watch};

use crate::group::Groups;
use crate::metadata::{Command, Metadata, Outcome};
use crate::raft::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

fn get_json<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: &str,
) -> StorageResult<Option<T>> {
    match tree.get(key).map_err(read_err)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(read_err),
    }
}

fn json<T: Serialize>(value: &T) -> StorageResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(write_err)
}

/// Opens (or creates) the controller's sled database. A controller restarted in the same
/// process may find the previous instance's file lock still held for a moment while its last
/// tasks finish: that is retried for up to three seconds.
pub async fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::Other
                    && e.to_string().contains("could not acquire lock")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// The Raft log and vote.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    raft: sled::Tree,
}

impl LogStore {
    pub fn open(db: &sled::Db) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("log")?,
            raft: db.open_tree("raft")?,
        })
    }

    async fn flush(&self) -> StorageResult<()> {
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (key, value) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| read_err(std::io::Error::other("log key is not 8 bytes")))?,
            );
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&value).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = get_json(&self.raft, "last_purged")?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, value)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(&value).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.raft.insert("vote", json(vote)?).map_err(write_err)?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        get_json(&self.raft, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.raft
            .insert("committed", json(&committed)?)
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(get_json::<Option<LogId<NodeId>>>(&self.raft, "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&entry.log_id.index.to_be_bytes(), json(&entry)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        let flushed = self.db.flush_async().await;
        callback.log_io_completed(flushed.map(|_| ()).map_err(std::io::Error::other));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(log_id.index.to_be_bytes()..).keys() {
            batch.remove(key.map_err(read_err)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.raft
            .insert("last_purged", json(&log_id)?)
            .map_err(write_err)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=log_id.index.to_be_bytes()).keys() {
            batch.remove(key.map_err(read_err)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        self.flush().await
    }
}

/// Recent changes kept for metadata watchers (not persisted: after a restart watchers get a
/// snapshot first).
pub const CHANGES_MAX: usize = 4096;

/// What one applied command touched.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    pub version: u64,
    pub topics: Vec<String>,
    pub brokers: Vec<weir_types::BrokerId>,
}

/// The applied state, kept in memory and persisted after every apply.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, crate::raft::ControllerNode>,
    pub metadata: Metadata,
    #[serde(default)]
    pub groups: Groups,
    #[serde(default)]
    pub subscriptions: crate::subscription::Subscriptions,
    /// The access control lists.
    #[serde(default)]
    pub acls: std::collections::BTreeSet<weir_types::acl::Acl>,
    /// The version of the last change to `acls` (0: never changed).
    #[serde(default)]
    pub acls_version: u64,
    /// Changes after `changes_from`, oldest first, at most [`CHANGES_MAX`].
    #[serde(skip)]
    pub changes: std::collections::VecDeque<Change>,
    /// Every change after this version is in `changes`.
    #[serde(skip)]
    pub changes_from: u64,
}

impl Applied {
    /// Topics and brokers changed after `version`, or `None` when the history does not reach
    /// back that far (the watcher needs a snapshot).
    pub fn changed_since(&self, version: u64) -> Option<(Vec<String>, Vec<weir_types::BrokerId>)> {
        if version < self.changes_from {
            return None;
        }
        let mut topics = std::collections::BTreeSet::new();
        let mut brokers = std::collections::BTreeSet::new();
        for change in self.changes.iter().filter(|c| c.version > version) {
            topics.extend(change.topics.iter().cloned());
            brokers.extend(change.brokers.iter().copied());
        }
        Some((topics.into_iter().collect(), brokers.into_iter().collect()))
    }

    /// Applies one command to the metadata or the groups.
    pub fn apply(&mut self, command: Command, version: u64) -> Outcome {
        match command {
            Command::Group(gc) => {
                let topics = match &gc {
                    crate::group::GroupCommand::Heartbeat(_) => self.metadata.partition_counts(),
                    _ => Default::default(),
                };
                Outcome::Group(self.groups.apply(gc, &topics))
            }
            Command::Subscription(sc) => {
                Outcome::Subscription(self.subscriptions.apply(sc, version, &self.metadata))
            }
            Command::CreateAcls(acls) => {
                if let Some((field, reason)) = acls.iter().find_map(|a| a.validate().err()) {
                    return Outcome::Rejected(crate::metadata::Rejection::Invalid {
                        field: format!("acls.{field}"),
                        reason,
                    });
                }
                let before = self.acls.len();
                self.acls.extend(acls);
                let created = (self.acls.len() - before) as u32;
                if created > 0 {
                    self.acls_changed(version);
                }
                Outcome::AclsCreated { created }
            }
            Command::DeleteAcls(filter) => {
                let deleted: Vec<_> = self
                    .acls
                    .iter()
                    .filter(|a| filter.matches(a))
                    .cloned()
                    .collect();
                if !deleted.is_empty() {
                    self.acls.retain(|a| !filter.matches(a));
                    self.acls_changed(version);
                }
                Outcome::AclsDeleted { deleted }
            }
            command => {
                let outcome = self.metadata.apply(command.clone());
                if matches!(outcome, Outcome::Rejected(_)) {
                    return outcome;
                }
                if let Command::DeleteTopic { name } = &command {
                    self.groups.topic_deleted(name);
                    self.subscriptions.topic_deleted(name);
                }
                let (topics, brokers) = touched(&command, &self.metadata);
                self.record(Change {
                    version,
                    topics,
                    brokers,
                });
                outcome
            }
        }
    }

    /// Notes an ACL change: watchers are woken and get the whole list.
    fn acls_changed(&mut self, version: u64) {
        self.acls_version = version;
        self.record(Change {
            version,
            ..Default::default()
        });
    }

    fn record(&mut self, change: Change) {
        if self.changes.len() == CHANGES_MAX
            && let Some(dropped) = self.changes.pop_front()
        {
            self.changes_from = dropped.version;
        }
        self.changes.push_back(change);
    }
}

/// What `command` touched, judged after it was applied to `metadata`.
fn touched(
    command: &crate::metadata::Command,
    metadata: &Metadata,
) -> (Vec<String>, Vec<weir_types::BrokerId>) {
    use crate::metadata::Command;
    match command {
        Command::CreateTopic { name, .. }
        | Command::DeleteTopic { name }
        | Command::CreatePartitions { name, .. }
        | Command::AlterConfig { name, .. } => (vec![name.clone()], Vec::new()),
        Command::AlterIsr { topic, .. } => (vec![topic.clone()], Vec::new()),
        Command::AllocateProducerIds { .. } => (Vec::new(), Vec::new()),
        Command::ElectLeader { topic, .. } => (vec![topic.clone()], Vec::new()),
        Command::RebalanceLeaders | Command::CompleteReassignments => {
            (metadata.topics.keys().cloned().collect(), Vec::new())
        }
        Command::Reassign { topic, .. } => (vec![topic.clone()], Vec::new()),
        Command::Group(_)
        | Command::Subscription(_)
        | Command::CreateAcls(_)
        | Command::DeleteAcls(_) => (Vec::new(), Vec::new()),
        Command::RegisterBroker { id, .. }
        | Command::FenceBroker { id, .. }
        | Command::DrainBroker { id } => {
            let topics = metadata
                .topics
                .values()
                .filter(|t| t.partitions.iter().any(|p| p.replicas.contains(id)))
                .map(|t| t.name.clone())
                .collect();
            (topics, vec![*id])
        }
    }
}

impl Applied {
    /// The metadata version: the Raft index of the last applied entry.
    pub fn version(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }
}

/// The state machine: metadata and groups plus Raft's bookkeeping, in memory, and a watch
/// channel that announces newly applied metadata versions.
///
/// Durability comes from the Raft log and snapshots: applying an entry writes nothing (so it
/// never waits for a disk), every `snapshot_logs_max` entries a snapshot of the whole state is
/// written and flushed, and at start the state is the last snapshot with the log after it
/// replayed by openraft. The log is purged only up to a snapshot, so nothing is lost between.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: sled::Db,
    snapshot: sled::Tree,
    state: Arc<RwLock<Applied>>,
    versions: Arc<watch::Sender<u64>>,
}

impl StateMachine {
    pub fn open(db: &sled::Db) -> StorageResult<StateMachine> {
        let snapshot = db.open_tree("snapshot").map_err(read_err)?;
        let mut applied = match get_json::<StoredSnapshot>(&snapshot, "current")? {
            Some(stored) => Applied::from_snapshot(&stored.meta, &stored.data)?,
            None => Applied::default(),
        };
        applied.changes_from = applied.version();
        let (versions, _) = watch::channel(applied.version());
        Ok(StateMachine {
            db: db.clone(),
            snapshot,
            state: Arc::new(RwLock::new(applied)),
            versions: Arc::new(versions),
        })
    }

    /// The applied state, read-locked: applies wait while the guard lives, so do not hold it
    /// across an await.
    pub async fn read(&self) -> tokio::sync::RwLockReadGuard<'_, Applied> {
        self.state.read().await
    }

    /// Notified with the version after every apply that changed topics or brokers, and
    /// after a snapshot install (group changes do not wake metadata watchers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }
}

impl Applied {
    fn from_snapshot(
        meta: &SnapshotMeta<NodeId, crate::raft::ControllerNode>,
        data: &[u8],
    ) -> StorageResult<Applied> {
        let installed: Applied = serde_json::from_slice(data).map_err(read_err)?;
        let version = meta.last_log_id.map_or(0, |l| l.index);
        Ok(Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            metadata: installed.metadata,
            groups: installed.groups,
            subscriptions: installed.subscriptions,
            acls: installed.acls,
            // watchers resync from a snapshot, which carries the ACLs
            acls_version: installed.acls_version,
            changes: Default::default(),
            // history before a snapshot is unknown: watchers resync
            changes_from: version,
        })
    }
}

/// A snapshot as stored: its metadata and the serialized [`Applied`] state.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, crate::raft::ControllerNode>,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let state = self.state.read().await;
        let data = json(&*state)?;
        let (last_applied, membership) = (state.last_applied, state.membership.clone());
        drop(state);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.snapshot
            .insert("current", json(&stored)?)
            .map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, crate::raft::ControllerNode>,
    )> {
        let state = self.state.read().await;
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Option<Outcome>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state.write().await;
        let mut outcomes = Vec::new();
        let changes_before = state.changes.back().map(|c| c.version);
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(None),
                EntryPayload::Normal(command) => {
                    outcomes.push(Some(state.apply(command, entry.log_id.index)));
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    outcomes.push(None);
                }
            }
        }
        let version = state.version();
        let metadata_changed = state.changes.back().map(|c| c.version) != changes_before;
        drop(state);
        if metadata_changed {
            self.versions.send_replace(version);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, crate::raft::ControllerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let new_state = Applied::from_snapshot(meta, &data)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.snapshot
            .insert("current", json(&stored)?)
            .map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        let version = new_state.version();
        *self.state.write().await = new_state;
        self.versions.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(stored) = get_json::<StoredSnapshot>(&self.snapshot, "current")? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
