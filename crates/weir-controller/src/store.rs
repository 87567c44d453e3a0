//! The controller's Raft storage: log, vote and state machine in sled, behind openraft's
//! `RaftLogStorage` and `RaftStateMachine` traits.
//!
//! Layout (one sled database per controller):
//! - tree `log`: big-endian index → JSON entry;
//! - tree `raft`: `vote`, `committed`, `last_purged`;
//! - tree `sm`: `applied`, `membership`, `metadata` (written together in one batch);
//! - tree `snapshot`: `meta`, `data` (the last built or installed snapshot).
//!
//! Every append, vote, truncation and purge is flushed to disk before it is acknowledged.

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

use crate::metadata::{Metadata, Outcome};
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

/// Opens (or creates) the controller's sled database.
pub fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()
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
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub metadata: Metadata,
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
        Command::RegisterBroker { id, .. } | Command::FenceBroker { id, .. } => {
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

/// The state machine: metadata plus Raft's bookkeeping, and a watch channel that announces
/// every newly applied version.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: sled::Db,
    sm: sled::Tree,
    snapshot: sled::Tree,
    state: Arc<RwLock<Applied>>,
    versions: Arc<watch::Sender<u64>>,
}

impl StateMachine {
    pub fn open(db: &sled::Db) -> StorageResult<StateMachine> {
        let sm = db.open_tree("sm").map_err(read_err)?;
        let snapshot = db.open_tree("snapshot").map_err(read_err)?;
        let mut applied = Applied {
            last_applied: get_json::<Option<LogId<NodeId>>>(&sm, "applied")?.flatten(),
            membership: get_json(&sm, "membership")?.unwrap_or_default(),
            metadata: get_json(&sm, "metadata")?.unwrap_or_default(),
            ..Applied::default()
        };
        applied.changes_from = applied.version();
        let (versions, _) = watch::channel(applied.version());
        Ok(StateMachine {
            db: db.clone(),
            sm,
            snapshot,
            state: Arc::new(RwLock::new(applied)),
            versions: Arc::new(versions),
        })
    }

    /// A consistent copy of the applied state.
    pub async fn read(&self) -> Applied {
        self.state.read().await.clone()
    }

    /// Notified with the version after every apply or snapshot install.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    async fn persist(&self, state: &Applied) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        batch.insert("applied", json(&state.last_applied)?);
        batch.insert("membership", json(&state.membership)?);
        batch.insert("metadata", json(&state.metadata)?);
        self.sm.apply_batch(batch).map_err(write_err)?;
        self.db.flush_async().await.map_err(write_err)?;
        Ok(())
    }
}

/// A snapshot as stored: its metadata and the serialized [`Applied`] state.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let state = self.state.read().await.clone();
        let data = json(&state)?;
        let snapshot_id = match state.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
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
        StoredMembership<NodeId, openraft::BasicNode>,
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
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(None),
                EntryPayload::Normal(command) => {
                    let outcome = state.metadata.apply(command.clone());
                    if !matches!(outcome, Outcome::Rejected(_)) {
                        let (topics, brokers) = touched(&command, &state.metadata);
                        state.record(Change {
                            version: entry.log_id.index,
                            topics,
                            brokers,
                        });
                    }
                    outcomes.push(Some(outcome));
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    outcomes.push(None);
                }
            }
        }
        self.persist(&state).await?;
        let version = state.version();
        drop(state);
        self.versions.send_replace(version);
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
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let installed: Applied = serde_json::from_slice(&data).map_err(read_err)?;
        let version = meta.last_log_id.map_or(0, |l| l.index);
        let new_state = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            metadata: installed.metadata,
            changes: Default::default(),
            // history before an installed snapshot is unknown: watchers resync
            changes_from: version,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.snapshot
            .insert("current", json(&stored)?)
            .map_err(write_err)?;
        let mut state = self.state.write().await;
        *state = new_state;
        self.persist(&state).await?;
        let version = state.version();
        drop(state);
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
