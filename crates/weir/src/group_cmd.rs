//! `weir group ...`: list, describe (with lag), reset offsets of and delete consumer groups.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use clap::{Args, Subcommand};
use weir_client::{Consumer, ConsumerConfig, SeekTo};
use weir_proto::call::parse_bootstrap;
use weir_proto::v1 as pb;
use weir_proto::v1::group_coordinator_client::GroupCoordinatorClient;

use crate::admin_cmd::{Bootstrap, describe, partition_offsets, with_controller};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups with their state and member count.
    List(Bootstrap),
    /// Show a group's members and, per partition, committed offset, log end and lag.
    Describe {
        group: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Set the committed offsets of a group that has no active members.
    ResetOffsets(ResetArgs),
    /// Delete a group that has no active members, with its committed offsets.
    Delete {
        group: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    group: String,
    /// The topic whose offsets to reset.
    #[arg(long)]
    topic: String,
    /// Only this partition (default: every partition of the topic).
    #[arg(long)]
    partition: Option<u32>,
    /// To the first retained record.
    #[arg(long, group = "to")]
    to_earliest: bool,
    /// To the log end (skip everything not yet read).
    #[arg(long, group = "to")]
    to_latest: bool,
    /// To this offset (clamped to the retained range).
    #[arg(long, group = "to")]
    to_offset: Option<i64>,
    /// To the first record at or after this time (ms since the epoch).
    #[arg(long, group = "to")]
    to_timestamp: Option<i64>,
    /// Move the committed offset by this many records (negative: back), clamped.
    #[arg(long, group = "to", allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// Print the new offsets without changing anything.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    bootstrap: Bootstrap,
}

async fn describe_group(bootstrap: &[String], group: &str) -> anyhow::Result<pb::GroupDescription> {
    let group = group.to_string();
    Ok(with_controller(bootstrap, |ch| {
        let group = group.clone();
        async move {
            GroupCoordinatorClient::new(ch)
                .describe_group(pb::DescribeGroupRequest { group })
                .await
        }
    })
    .await?
    .into_inner())
}

fn dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

async fn print_group(bootstrap: &[String], g: &pb::GroupDescription) -> anyhow::Result<()> {
    println!(
        "group {}  state {}  epoch {}  assignment epoch {}  assignor {}  members {}",
        g.group,
        g.state,
        g.group_epoch,
        g.assignment_epoch,
        g.assignor,
        g.members.len()
    );
    // partition → owner
    let mut owner: BTreeMap<(String, u32), &pb::GroupMember> = BTreeMap::new();
    for m in &g.members {
        for p in m.assigned.iter().chain(&m.revoking) {
            owner.insert((p.topic.clone(), p.partition), m);
        }
    }
    let committed: BTreeMap<(String, u32), i64> = g
        .offsets
        .iter()
        .map(|o| ((o.topic.clone(), o.partition), o.offset))
        .collect();
    let rows: BTreeSet<(String, u32)> = owner.keys().chain(committed.keys()).cloned().collect();
    let topics: BTreeSet<&String> = rows.iter().map(|(t, _)| t).collect();
    let mut log_end: BTreeMap<(String, u32), i64> = BTreeMap::new();
    for topic in topics {
        let Ok(t) = describe(bootstrap, topic).await else {
            continue;
        };
        for (p, o) in partition_offsets(bootstrap, &t)
            .await?
            .into_iter()
            .enumerate()
        {
            if let Some((_, end)) = o {
                log_end.insert((topic.clone(), p as u32), end);
            }
        }
    }
    println!(
        "{:<24} {:>9} {:>14} {:>14} {:>8}  {:<32} {:<15} CLIENT-ID",
        "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER-ID", "HOST"
    );
    for key in rows {
        let current = committed.get(&key).copied();
        let end = log_end.get(&key).copied();
        let lag = match (current, end) {
            (Some(c), Some(e)) => Some((e - c).max(0)),
            (None, Some(e)) => Some(e),
            _ => None,
        };
        let m = owner.get(&key);
        println!(
            "{:<24} {:>9} {:>14} {:>14} {:>8}  {:<32} {:<15} {}",
            key.0,
            key.1,
            dash(current),
            dash(end),
            dash(lag),
            m.map_or("-", |m| m.member_id.as_str()),
            m.map_or("-", |m| m.host.as_str()),
            m.map_or("-", |m| m.client_id.as_str()),
        );
    }
    Ok(())
}

pub async fn run(cmd: GroupCommand) -> anyhow::Result<i32> {
    match cmd {
        GroupCommand::List(bootstrap) => {
            let list = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| async move {
                GroupCoordinatorClient::new(ch)
                    .list_groups(pb::ListGroupsRequest {})
                    .await
            })
            .await?
            .into_inner();
            if list.groups.is_empty() {
                println!("no groups");
            }
            for g in list.groups {
                println!(
                    "{}  state {}  members {}  epoch {}",
                    g.group, g.state, g.members, g.group_epoch
                );
            }
        }
        GroupCommand::Describe { group, bootstrap } => {
            let bootstrap = parse_bootstrap(&bootstrap.bootstrap)?;
            let g = describe_group(&bootstrap, &group).await?;
            print_group(&bootstrap, &g).await?;
        }
        GroupCommand::Delete { group, bootstrap } => {
            with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let group = group.clone();
                async move {
                    GroupCoordinatorClient::new(ch)
                        .delete_group(pb::DeleteGroupRequest { group })
                        .await
                }
            })
            .await?;
            println!("deleted group {group}");
        }
        GroupCommand::ResetOffsets(args) => return reset(args).await,
    }
    Ok(0)
}

async fn reset(args: ResetArgs) -> anyhow::Result<i32> {
    let bootstrap = parse_bootstrap(&args.bootstrap.bootstrap)?;
    let t = describe(&bootstrap, &args.topic).await?;
    let count = t.partitions.len() as u32;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= count => bail!("--partition {p}: {} has {count} partitions", args.topic),
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    let current: BTreeMap<u32, i64> = match describe_group(&bootstrap, &args.group).await {
        Ok(g) => {
            if !g.members.is_empty() {
                bail!(
                    "group {} has {} active member(s); stop them before resetting offsets",
                    args.group,
                    g.members.len()
                );
            }
            g.offsets
                .iter()
                .filter(|o| o.topic == args.topic)
                .map(|o| (o.partition, o.offset))
                .collect()
        }
        // a group that does not exist yet gets its first offsets
        Err(_) => BTreeMap::new(),
    };
    let consumer = Consumer::new(ConsumerConfig::new(bootstrap.clone()))?;
    let mut offsets = Vec::new();
    for p in partitions {
        let earliest = consumer.resolve(&args.topic, p, SeekTo::Beginning).await?;
        let latest = consumer.resolve(&args.topic, p, SeekTo::End).await?;
        let wanted = if args.to_earliest {
            earliest
        } else if args.to_latest {
            latest
        } else if let Some(o) = args.to_offset {
            o
        } else if let Some(ts) = args.to_timestamp {
            consumer
                .resolve(&args.topic, p, SeekTo::Timestamp(ts))
                .await?
        } else if let Some(n) = args.shift_by {
            let Some(c) = current.get(&p) else {
                bail!(
                    "--shift-by: {}/{p} has no committed offset in group {}",
                    args.topic,
                    args.group
                );
            };
            c.saturating_add(n)
        } else {
            bail!(
                "say where to: --to-earliest, --to-latest, --to-offset, --to-timestamp or --shift-by"
            );
        };
        let offset = wanted.clamp(earliest, latest);
        println!("{}/{p}: {} -> {offset}", args.topic, dash(current.get(&p)));
        offsets.push(pb::OffsetAndMetadata {
            topic: args.topic.clone(),
            partition: p,
            offset,
            metadata: String::new(),
            commit_time_ms: 0,
        });
    }
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(0);
    }
    let group = args.group.clone();
    with_controller(&bootstrap, |ch| {
        let request = pb::ResetOffsetsRequest {
            group: group.clone(),
            offsets: offsets.clone(),
        };
        async move { GroupCoordinatorClient::new(ch).reset_offsets(request).await }
    })
    .await?;
    println!("reset {} offset(s) of group {}", offsets.len(), args.group);
    Ok(0)
}
