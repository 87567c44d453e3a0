//! The replicas this broker hosts, kept in line with the controller's metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::task::JoinHandle;
use weir_log::{Flusher, LogConfig, PartitionLog, SystemClock};
use weir_types::BrokerId;
use weir_types::metadata::{ClusterView, MetadataUpdate, PartitionInfo, TopicInfo};

use crate::replica::{DiskHealth, Leadership, Replica};

type Key = (String, u32);

/// Everything the broker knows about the cluster and its own replicas.
pub struct Registry {
    id: BrokerId,
    partitions_dir: PathBuf,
    /// The broker's part of every log's settings (the topic's come from the metadata).
    log_base: LogConfig,
    flusher: Arc<Flusher>,
    replicas: RwLock<HashMap<Key, Arc<Replica>>>,
    owners: Mutex<HashMap<Key, JoinHandle<()>>>,
    /// The full metadata as of the last applied update (for leader hints and versions).
    metadata: RwLock<ClusterView>,
    /// Serializes snapshot application.
    applying: tokio::sync::Mutex<()>,
    /// Bumped by every replica after each fsynced group of appends.
    pub activity: Arc<tokio::sync::watch::Sender<u64>>,
    /// Assigned partitions that failed to open (corruption, I/O): the broker is not ready.
    failed: Mutex<std::collections::HashSet<Key>>,
    /// This process's registration (0 before it registered). Leadership in metadata is
    /// acted on only once the metadata shows this incarnation: until then it may be the
    /// previous process's, granted to data this process's disk may no longer hold.
    incarnation: std::sync::atomic::AtomicU64,
    /// Failed on the first fsync or write error: nothing is led here after that.
    pub disk: DiskHealth,
}

pub fn dir_name(topic: &str, partition: u32, topic_id: &str) -> String {
    format!("{topic}-{partition}-{topic_id}")
}

fn leadership(p: &PartitionInfo, min_isr: u32) -> Leadership {
    Leadership {
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        isr: p.isr.clone(),
        replicas: p.replicas.clone(),
        min_insync_replicas: min_isr,
        partition_epoch: p.partition_epoch,
        catch_up_bytes_per_s: p.catch_up_bytes_per_s,
    }
}

fn log_config(t: &TopicInfo, base: &LogConfig) -> LogConfig {
    LogConfig {
        segment_bytes_max: t.segment_bytes,
        retention_ms: t.retention_ms,
        retention_bytes: t.retention_bytes,
        batch_bytes_max: base.batch_bytes_max.min(t.segment_bytes as u32),
        ..base.clone()
    }
}

impl Registry {
    pub fn new(
        id: BrokerId,
        data_dir: &Path,
        log_base: LogConfig,
        flusher: Arc<Flusher>,
    ) -> Registry {
        Registry {
            id,
            partitions_dir: data_dir.join("partitions"),
            log_base,
            flusher,
            replicas: RwLock::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            metadata: RwLock::new(ClusterView::default()),
            applying: tokio::sync::Mutex::new(()),
            failed: Mutex::new(std::collections::HashSet::new()),
            activity: Arc::new(tokio::sync::watch::channel(0).0),
            incarnation: std::sync::atomic::AtomicU64::new(0),
            disk: DiskHealth::default(),
        }
    }

    /// The controller registered this process as `incarnation` (0: the registration was
    /// lost, e.g. fenced). Leaderships are re-evaluated against the current metadata.
    pub async fn registered(&self, incarnation: u64) -> Result<(), weir_log::LogError> {
        self.incarnation
            .store(incarnation, std::sync::atomic::Ordering::SeqCst);
        let _serial = self.applying.lock().await;
        let view = self.view();
        if view.version == 0 {
            return Ok(()); // no metadata yet: the first update applies it
        }
        self.reconcile(&view, false).await
    }

    /// The ACLs as last applied.
    pub fn acls(&self) -> Arc<Vec<weir_types::acl::Acl>> {
        Arc::clone(&self.metadata.read().unwrap_or_else(|p| p.into_inner()).acls)
    }

    /// The metadata as last applied.
    pub fn view(&self) -> ClusterView {
        self.metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `view` reflects this process's own registration (not a predecessor's).
    fn registered_in(&self, view: &ClusterView) -> bool {
        let mine = self.incarnation.load(std::sync::atomic::Ordering::SeqCst);
        mine != 0
            && view
                .broker(self.id)
                .is_some_and(|b| b.incarnation == mine && !b.fenced)
    }

    pub fn get(&self, topic: &str, partition: u32) -> Option<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Assigned partitions that could not be opened.
    pub fn failed_partitions(&self) -> usize {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn flusher_stats(&self) -> weir_log::FlushStats {
        self.flusher.stats()
    }

    pub fn me(&self) -> BrokerId {
        self.id
    }

    pub fn version(&self) -> u64 {
        self.metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .version
    }

    /// The address of `broker`, from metadata.
    pub fn broker_address(&self, broker: BrokerId) -> Option<String> {
        self.metadata
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .broker_address(broker)
            .map(str::to_string)
    }

    /// Where to replicate from `broker`: its internal listener, or its address.
    pub fn replication_address(&self, broker: BrokerId) -> Option<String> {
        let metadata = self.metadata.read().unwrap_or_else(|p| p.into_inner());
        let b = metadata.broker(broker)?;
        Some(
            b.internal_address
                .clone()
                .unwrap_or_else(|| b.address.clone()),
        )
    }

    /// The leader of a partition this broker does not host, for a redirect.
    pub fn leader_of(&self, topic: &str, partition: u32) -> Option<(BrokerId, Option<String>)> {
        let metadata = self.metadata.read().unwrap_or_else(|p| p.into_inner());
        let leader = metadata.partition(topic, partition)?.leader?;
        Some((leader, metadata.broker_address(leader).map(str::to_string)))
    }

    /// Merges `update` into the local view, then brings the hosted replicas in line with it:
    /// opens newly assigned partitions, updates leadership, and closes and deletes partitions
    /// no longer assigned here.
    pub async fn apply(&self, update: MetadataUpdate) -> Result<(), weir_log::LogError> {
        let _serial = self.applying.lock().await;
        let mut view = self.view();
        let first = view.version == 0;
        if !view.apply(update) {
            return Ok(()); // an older view from a lagging controller
        }
        self.reconcile(&view, first).await
    }

    /// Brings the hosted replicas in line with `view` and makes it the current view (hold
    /// `applying`).
    async fn reconcile(&self, view: &ClusterView, first: bool) -> Result<(), weir_log::LogError> {
        let mut wanted: BTreeMap<Key, (&TopicInfo, &PartitionInfo)> = BTreeMap::new();
        for t in view.topics.values() {
            for p in &t.partitions {
                if p.replicas.contains(&self.id) {
                    wanted.insert((t.name.clone(), p.partition), (t, p));
                }
            }
        }
        // Close what is no longer ours (or was re-created under a new id).
        let current: Vec<(Key, Arc<Replica>)> = self
            .replicas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, r)| (k.clone(), Arc::clone(r)))
            .collect();
        for (key, replica) in current {
            let keep = wanted
                .get(&key)
                .is_some_and(|(t, _)| t.topic_id == replica.topic_id);
            if !keep {
                self.remove(&key, &replica).await;
            }
        }
        // Open or update what is ours.
        let registered = self.registered_in(view);
        for (key, (t, p)) in &wanted {
            let mut lead = leadership(p, t.min_insync_replicas);
            if lead.leader == Some(self.id) && (!registered || self.disk.failure().is_some()) {
                // not yet ours to lead: the controller may be about to move it away (or this
                // disk failed, and the controller will once the lease runs out)
                lead.leader = None;
            }
            if let Some(replica) = self.get(&key.0, key.1) {
                // a closed owner is being removed; nothing to update
                let _ = replica.set_leadership(lead).await;
                let _ = replica.set_config(log_config(t, &self.log_base)).await;
                continue;
            }
            let dir = self
                .partitions_dir
                .join(dir_name(&t.name, p.partition, &t.topic_id));
            let config = log_config(t, &self.log_base);
            let flusher = Arc::clone(&self.flusher);
            let open_dir = dir.clone();
            let log = tokio::task::spawn_blocking(move || {
                PartitionLog::open(&open_dir, config, flusher, Arc::new(SystemClock))
            })
            .await
            .map_err(|e| weir_log::LogError::Config(format!("open task failed: {e}")))?;
            let log = match log {
                Ok(log) => log,
                Err(e) => {
                    tracing::error!(topic = %t.name, partition = p.partition, error = %e, "cannot open partition; not serving it");
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone());
                    continue;
                }
            };
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            tracing::info!(topic = %t.name, partition = p.partition, end = %log.end_offset(), "partition opened");
            let (replica, owner) = Replica::start(
                self.id,
                t.name.clone(),
                t.topic_id.clone(),
                p.partition,
                dir,
                log,
                Arc::clone(&self.activity),
                self.disk.clone(),
            );
            let _ = replica.set_leadership(lead).await;
            self.replicas
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), replica);
            self.owners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), owner);
        }
        if first {
            self.remove_strays(&wanted).await;
        }
        *self.metadata.write().unwrap_or_else(|p| p.into_inner()) = view.clone();
        Ok(())
    }

    async fn remove(&self, key: &Key, replica: &Arc<Replica>) {
        self.replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        replica.close();
        let owner = self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(owner) = owner {
            let _ = owner.await;
        }
        let dir = replica.dir.clone();
        tracing::info!(topic = %key.0, partition = key.1, dir = %dir.display(), "partition deleted");
        let shown = dir.display().to_string();
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(dir = %shown, error = %e, "could not delete a removed partition")
            }
            Err(e) => tracing::warn!(dir = %shown, error = %e, "partition deletion task failed"),
        }
    }

    /// Deletes partition directories left from topics deleted while this broker was down.
    async fn remove_strays(&self, wanted: &BTreeMap<Key, (&TopicInfo, &PartitionInfo)>) {
        let keep: Vec<String> = wanted
            .values()
            .map(|(t, p)| dir_name(&t.name, p.partition, &t.topic_id))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.partitions_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !keep.contains(&name) {
                tracing::info!(dir = %name, "deleting partition of a topic that no longer exists");
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %name, error = %e, "could not delete a stray partition");
                }
            }
        }
    }

    /// Closes every replica and waits for the owners to finish what they accepted.
    pub async fn close_all(&self) {
        for replica in self.all() {
            replica.close();
        }
        let owners: Vec<JoinHandle<()>> = self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        // each owner checkpoints before it stops
        for owner in owners {
            let _ = owner.await;
        }
    }
}
