//! The cluster metadata as brokers and clients hold it: brokers, topics and their
//! partitions' leadership, kept current by applying the controllers' `WatchMetadata` updates
//! (a snapshot, then deltas). Plain data: the protobuf form is converted at the edge
//! (`weir-proto`'s `convert`), and both the broker and the client library keep a
//! [`ClusterView`].

use std::collections::BTreeMap;

use crate::{BrokerId, LeaderEpoch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: BrokerId,
    /// Where clients reach its produce and fetch service.
    pub address: String,
    /// Where other brokers replicate from it; `None`: at `address`.
    pub internal_address: Option<String>,
    pub rack: Option<String>,
    /// Bumped by every registration: tells one process of this broker from the next.
    pub incarnation: u64,
    /// Its lease ran out; it leads nothing until it registers again.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    /// `None` while the partition is offline.
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// Fences ISR changes.
    pub partition_epoch: i32,
    /// While a reassignment runs: how fast a replica outside the ISR may catch up (0: no
    /// limit).
    pub catch_up_bytes_per_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// Changes when a topic is deleted and created again under the same name.
    pub topic_id: String,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub min_insync_replicas: u32,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionInfo>,
}

/// One update from the controllers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataUpdate {
    /// The Raft log index of the last command it reflects.
    pub version: u64,
    /// True: the whole metadata (replace what you have). False: what changed.
    pub snapshot: bool,
    pub topics: Vec<TopicInfo>,
    pub brokers: Vec<BrokerInfo>,
    pub deleted_topics: Vec<String>,
    /// The whole ACL list when it is part of this update; `None`: unchanged.
    pub acls: Option<Vec<crate::acl::Acl>>,
}

/// The metadata as of `version` (0: nothing received yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub version: u64,
    pub topics: BTreeMap<String, TopicInfo>,
    pub brokers: BTreeMap<BrokerId, BrokerInfo>,
    /// The access control lists, sorted.
    pub acls: std::sync::Arc<Vec<crate::acl::Acl>>,
}

impl ClusterView {
    /// Applies a snapshot or a delta. An update older than this view (from a lagging
    /// controller) is ignored; returns whether the view changed.
    pub fn apply(&mut self, update: MetadataUpdate) -> bool {
        if update.version < self.version || (update.version == self.version && !update.snapshot) {
            return false;
        }
        if update.snapshot {
            self.topics.clear();
            self.brokers.clear();
        }
        self.version = update.version;
        for name in &update.deleted_topics {
            self.topics.remove(name);
        }
        for t in update.topics {
            self.topics.insert(t.name.clone(), t);
        }
        for b in update.brokers {
            self.brokers.insert(b.id, b);
        }
        if let Some(acls) = update.acls {
            self.acls = std::sync::Arc::new(acls);
        }
        true
    }

    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionInfo> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    pub fn broker(&self, id: BrokerId) -> Option<&BrokerInfo> {
        self.brokers.get(&id)
    }

    /// The address of `broker`, if known.
    pub fn broker_address(&self, id: BrokerId) -> Option<&str> {
        self.brokers.get(&id).map(|b| b.address.as_str())
    }

    /// The leader of a partition and its address while it is not fenced.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<(BrokerId, Option<&str>)> {
        let leader = self.partition(topic, partition)?.leader?;
        let address = self
            .brokers
            .get(&leader)
            .filter(|b| !b.fenced)
            .map(|b| b.address.as_str());
        Some((leader, address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: u32) -> TopicInfo {
        TopicInfo {
            name: name.into(),
            topic_id: format!("{name}-id"),
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: 1 << 20,
            min_insync_replicas: 1,
            partitions: (0..partitions)
                .map(|p| PartitionInfo {
                    partition: p,
                    leader: Some(BrokerId(1)),
                    leader_epoch: LeaderEpoch(0),
                    replicas: vec![BrokerId(1)],
                    isr: vec![BrokerId(1)],
                    partition_epoch: 0,
                    catch_up_bytes_per_s: 0,
                })
                .collect(),
        }
    }

    fn broker(id: u32, fenced: bool) -> BrokerInfo {
        BrokerInfo {
            id: BrokerId(id),
            address: format!("127.0.0.1:90{id:02}"),
            internal_address: None,
            rack: None,
            incarnation: 1,
            fenced,
        }
    }

    #[test]
    fn snapshots_replace_deltas_upsert_and_delete_and_old_updates_are_ignored() {
        let mut view = ClusterView::default();
        assert!(view.apply(MetadataUpdate {
            version: 5,
            snapshot: true,
            topics: vec![topic("a", 1), topic("b", 1)],
            brokers: vec![broker(1, false)],
            deleted_topics: vec![],
            acls: None,
        }));
        assert!(view.apply(MetadataUpdate {
            version: 7,
            snapshot: false,
            topics: vec![topic("b", 3), topic("c", 1)],
            brokers: vec![broker(2, true)],
            deleted_topics: vec!["a".into()],
            acls: None,
        }));
        assert_eq!(view.version, 7);
        let names: Vec<(&str, usize)> = view
            .topics
            .values()
            .map(|t| (t.name.as_str(), t.partitions.len()))
            .collect();
        assert_eq!(names, vec![("b", 3), ("c", 1)]);
        assert_eq!(view.brokers.len(), 2);
        // a lagging controller's older view changes nothing
        assert!(!view.apply(MetadataUpdate {
            version: 6,
            snapshot: true,
            ..Default::default()
        }));
        assert_eq!(view.topics.len(), 2);
        // a snapshot replaces everything
        assert!(view.apply(MetadataUpdate {
            version: 9,
            snapshot: true,
            topics: vec![topic("d", 2)],
            brokers: vec![broker(1, false)],
            deleted_topics: vec![],
            acls: None,
        }));
        assert_eq!(view.topics.keys().collect::<Vec<_>>(), vec!["d"]);
        assert_eq!(
            view.leader("d", 1),
            Some((BrokerId(1), Some("127.0.0.1:9001")))
        );
        assert_eq!(view.leader("d", 2), None);
    }

    #[test]
    fn a_fenced_leader_has_no_address() {
        let mut view = ClusterView::default();
        view.apply(MetadataUpdate {
            version: 1,
            snapshot: true,
            topics: vec![topic("a", 1)],
            brokers: vec![broker(1, true)],
            deleted_topics: vec![],
            acls: None,
        });
        assert_eq!(view.leader("a", 0), Some((BrokerId(1), None)));
    }
}
