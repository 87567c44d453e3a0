//! `weir topic ...` and `weir cluster ...`: the admin API from the command line.

use anyhow::bail;
use clap::{Args, Subcommand};
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;

use std::time::Duration;

use weir_proto::call::{CallError, parse_bootstrap};

/// How long the CLI keeps trying while no controller is active.
const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) async fn with_controller<T, F, Fut>(
    bootstrap: &[String],
    call: F,
) -> Result<T, CallError>
where
    F: FnMut(weir_proto::call::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    weir_proto::call::with_controller(bootstrap, PATIENCE, call).await
}

#[derive(Debug, Args)]
pub struct Bootstrap {
    /// Controller addresses, comma separated.
    #[arg(
        long,
        env = "WEIR_BOOTSTRAP",
        default_value = "127.0.0.1:9093",
        global = true
    )]
    pub(crate) bootstrap: String,
}

#[derive(Debug, Args, Default)]
pub struct ConfigArgs {
    /// Delete data older than this many milliseconds.
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Keep data forever (no time-based retention).
    #[arg(long, conflicts_with = "retention_ms")]
    no_retention_ms: bool,
    /// Delete the oldest data while a partition is larger than this.
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// No size-based retention.
    #[arg(long, conflicts_with = "retention_bytes")]
    no_retention_bytes: bool,
    /// Roll a segment at this size.
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// `delete` (log compaction is not implemented yet).
    #[arg(long)]
    cleanup_policy: Option<String>,
    /// Replicas that must hold a write before acks=all succeeds.
    #[arg(long)]
    min_insync_replicas: Option<u32>,
}

impl ConfigArgs {
    fn to_proto(&self) -> pb::TopicConfig {
        pb::TopicConfig {
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            segment_bytes: self.segment_bytes,
            cleanup_policy: self.cleanup_policy.clone(),
            min_insync_replicas: self.min_insync_replicas,
            clear_retention_ms: self.no_retention_ms,
            clear_retention_bytes: self.no_retention_bytes,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (default: 3 with at least 3 brokers, otherwise 1).
        #[arg(long)]
        replication_factor: Option<u32>,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// List topics.
    List {
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Show a topic's settings and, per partition, leader, epoch, replicas and ISR.
    Describe {
        name: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Delete a topic.
    Delete {
        name: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Change a topic's settings.
    Alter {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Elect a partition's leader now (the first live in-sync replica). With --unclean, when no
    /// in-sync replica is alive, elect an out-of-sync one: acknowledged records that only the
    /// lost replicas held are gone.
    ElectLeader {
        name: String,
        #[arg(long)]
        partition: u32,
        #[arg(long)]
        unclean: bool,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Move a partition to other brokers: the new replicas are added and catch up (at most
    /// --throttle-bytes-per-s each), then the partition keeps exactly --replicas.
    Reassign {
        name: String,
        #[arg(long)]
        partition: u32,
        /// Broker ids, comma separated; the first is the preferred leader.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u32>,
        #[arg(long, default_value_t = 0)]
        throttle_bytes_per_s: u64,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Grow a topic to a total number of partitions.
    AddPartitions {
        name: String,
        #[arg(long)]
        total: u32,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Controllers (Raft role, term, log) and brokers (liveness).
    Status {
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Add a controller as a voter (start it first, with the current voters).
    AddController {
        #[arg(long)]
        id: u64,
        /// Its `--listen` address (clients).
        #[arg(long)]
        address: String,
        /// Its `--internal-listen` address, if it has one (Raft and brokers go there).
        #[arg(long)]
        internal_address: Option<String>,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Remove a controller from the voters.
    RemoveController {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

/// A topic's description from the active controller.
pub(crate) async fn describe(
    bootstrap: &[String],
    name: &str,
) -> anyhow::Result<pb::TopicDescription> {
    let name = name.to_string();
    Ok(with_controller(bootstrap, |ch| {
        let name = name.clone();
        async move {
            AdminClient::new(ch)
                .describe_topic(pb::DescribeTopicRequest { name })
                .await
        }
    })
    .await?
    .into_inner())
}

/// `(log start, high watermark)` of each partition, asked of its leader; `None` where the
/// leader is offline or unreachable.
pub(crate) async fn partition_offsets(
    bootstrap: &[String],
    t: &pb::TopicDescription,
) -> anyhow::Result<Vec<Option<(i64, i64)>>> {
    use weir_proto::v1::broker_client::BrokerClient;
    let cluster = with_controller(bootstrap, |ch| async move {
        AdminClient::new(ch)
            .describe_cluster(pb::DescribeClusterRequest {})
            .await
    })
    .await?
    .into_inner();
    let mut out = Vec::new();
    for p in &t.partitions {
        let addr = cluster
            .brokers
            .iter()
            .find(|b| b.id == p.leader && !b.fenced);
        let offsets = match addr {
            None => None,
            Some(b) => {
                async {
                    let mut client =
                        BrokerClient::new(weir_proto::call::connect(&b.address).await.ok()?);
                    let ask = |spec: pb::OffsetSpec| pb::ListOffsetsRequest {
                        topic: t.name.clone(),
                        partition: p.partition,
                        spec: spec as i32,
                        timestamp_ms: 0,
                    };
                    let r = client
                        .list_offsets(ask(pb::OffsetSpec::Latest))
                        .await
                        .ok()?
                        .into_inner();
                    Some((r.log_start_offset, r.high_watermark))
                }
                .await
            }
        };
        out.push(offsets);
    }
    Ok(out)
}

fn print_topic(t: &pb::TopicDescription) {
    print_topic_with_offsets(t, &[]);
}

fn print_topic_with_offsets(t: &pb::TopicDescription, offsets: &[Option<(i64, i64)>]) {
    let retention = if t.retention_ms_unlimited {
        "forever".to_string()
    } else {
        format!("{}ms", t.retention_ms)
    };
    let size = if t.retention_bytes_unlimited {
        "unlimited".to_string()
    } else {
        format!("{}B", t.retention_bytes)
    };
    println!(
        "topic {}  id {}  partitions {}  retention {retention}  retention_bytes {size}  segment_bytes {}  cleanup {}  min_insync_replicas {}",
        t.name,
        t.topic_id,
        t.partitions.len(),
        t.segment_bytes,
        t.cleanup_policy,
        t.min_insync_replicas
    );
    for p in &t.partitions {
        let leader = if p.leader == 0 {
            "none (offline)".to_string()
        } else {
            p.leader.to_string()
        };
        let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let moving = if p.reassigning_to.is_empty() {
            String::new()
        } else {
            format!("  reassigning to [{}]", list(&p.reassigning_to))
        };
        let range = match offsets.get(p.partition as usize) {
            Some(Some((start, end))) => format!("  offsets [{start}, {end})"),
            Some(None) => "  offsets unavailable".to_string(),
            None => String::new(),
        };
        println!(
            "  partition {:<4} leader {leader:<4} epoch {:<4} replicas [{}]  isr [{}]{range}{moving}",
            p.partition,
            p.leader_epoch,
            list(&p.replicas),
            list(&p.isr)
        );
    }
}

pub async fn run_topic(cmd: TopicCommand) -> anyhow::Result<i32> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            config,
            bootstrap,
        } => {
            if partitions == 0 {
                bail!("--partitions must be at least 1");
            }
            if replication_factor == Some(0) {
                bail!("--replication-factor must be at least 1");
            }
            let req = pb::CreateTopicRequest {
                name,
                partitions,
                replication_factor: replication_factor.unwrap_or(0),
                config: Some(config.to_proto()),
            };
            let topic = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).create_topic(req).await }
            })
            .await?
            .into_inner();
            print_topic(&topic);
        }
        TopicCommand::List { bootstrap } => {
            let list = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| async move {
                AdminClient::new(ch)
                    .list_topics(pb::ListTopicsRequest {})
                    .await
            })
            .await?
            .into_inner();
            for t in &list.topics {
                println!("{}  partitions {}", t.name, t.partitions.len());
            }
        }
        TopicCommand::Describe { name, bootstrap } => {
            let bootstrap = parse_bootstrap(&bootstrap.bootstrap)?;
            let topic = describe(&bootstrap, &name).await?;
            let offsets = partition_offsets(&bootstrap, &topic).await?;
            print_topic_with_offsets(&topic, &offsets);
        }
        TopicCommand::Delete { name, bootstrap } => {
            let out = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let name = name.clone();
                async move {
                    AdminClient::new(ch)
                        .delete_topic(pb::DeleteTopicRequest { name })
                        .await
                }
            })
            .await?
            .into_inner();
            println!("deleted topic {name} (id {})", out.topic_id);
        }
        TopicCommand::Alter {
            name,
            config,
            bootstrap,
        } => {
            let req = pb::AlterTopicConfigRequest {
                name,
                config: Some(config.to_proto()),
            };
            let topic = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).alter_topic_config(req).await }
            })
            .await?
            .into_inner();
            print_topic(&topic);
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            throttle_bytes_per_s,
            bootstrap,
        } => {
            let req = pb::ReassignPartitionRequest {
                topic: name,
                partition,
                replicas,
                throttle_bytes_per_s,
            };
            let topic = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).reassign_partition(req).await }
            })
            .await?
            .into_inner();
            print_topic(&topic);
        }
        TopicCommand::ElectLeader {
            name,
            partition,
            unclean,
            bootstrap,
        } => {
            let bootstrap = parse_bootstrap(&bootstrap.bootstrap)?;
            let req = pb::ElectLeaderRequest {
                topic: name.clone(),
                partition,
                unclean,
            };
            let elected = with_controller(&bootstrap, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).elect_leader(req).await }
            })
            .await?
            .into_inner();
            println!(
                "{name}/{partition}: leader {} at epoch {}",
                elected.leader, elected.leader_epoch
            );
            if elected.unclean {
                let topic = describe(&bootstrap, &name).await?;
                let offsets = partition_offsets(&bootstrap, &topic).await?;
                let end = offsets.get(partition as usize).copied().flatten();
                match end {
                    Some((_, end)) => println!(
                        "WARNING: unclean election. The new leader's log ends at offset {end}; records acknowledged at or above it, which only the lost replicas held, are gone."
                    ),
                    None => println!(
                        "WARNING: unclean election. The new leader's log end is not known yet; records only the lost replicas held are gone."
                    ),
                }
            }
        }
        TopicCommand::AddPartitions {
            name,
            total,
            bootstrap,
        } => {
            let req = pb::CreatePartitionsRequest { name, total };
            let topic = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).create_partitions(req).await }
            })
            .await?
            .into_inner();
            print_topic(&topic);
        }
    }
    Ok(0)
}

fn print_cluster(c: &pb::DescribeClusterResponse) {
    println!(
        "controllers (answered by {}): leader {}  term {}  last log index {}  applied {}",
        c.answered_by,
        if c.leader_id == 0 {
            "none".to_string()
        } else {
            c.leader_id.to_string()
        },
        c.term,
        c.last_log_index,
        c.applied_index
    );
    for ctl in &c.controllers {
        let internal = if ctl.internal_address.is_empty() {
            String::new()
        } else {
            format!("internal {:<22} ", ctl.internal_address)
        };
        println!(
            "  controller {:<3} {:<22} {internal}{:<11} {}",
            ctl.id,
            ctl.address,
            ctl.role,
            if ctl.voter { "voter" } else { "learner" },
        );
    }
    println!("brokers: {}", c.brokers.len());
    for b in &c.brokers {
        println!(
            "  broker {:<4} {:<22} rack {:<8} incarnation {:<4} {}",
            b.id,
            b.address,
            if b.rack.is_empty() { "-" } else { &b.rack },
            b.incarnation,
            if b.fenced { "FENCED" } else { "alive" }
        );
    }
}

pub async fn run_cluster(cmd: ClusterCommand) -> anyhow::Result<i32> {
    let out = match cmd {
        ClusterCommand::Status { bootstrap } => {
            with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| async move {
                AdminClient::new(ch)
                    .describe_cluster(pb::DescribeClusterRequest {})
                    .await
            })
            .await?
        }
        ClusterCommand::AddController {
            id,
            address,
            internal_address,
            bootstrap,
        } => {
            let req = pb::AddControllerRequest {
                id,
                address,
                internal_address: internal_address.unwrap_or_default(),
            };
            with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let req = req.clone();
                async move { AdminClient::new(ch).add_controller(req).await }
            })
            .await?
        }
        ClusterCommand::RemoveController { id, bootstrap } => {
            with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| async move {
                AdminClient::new(ch)
                    .remove_controller(pb::RemoveControllerRequest { id })
                    .await
            })
            .await?
        }
    };
    print_cluster(&out.into_inner());
    Ok(0)
}
