//! `weir subscription ...`: create, list, describe (backlog and oldest unacked message per
//! partition, from the partition leaders) and delete subscriptions.

use std::time::Duration;

use clap::Subcommand;
use weir_client::Metadata;
use weir_proto::call::parse_bootstrap;
use weir_proto::v1 as pb;
use weir_proto::v1::subscriptions_client::SubscriptionsClient;

use crate::admin_cmd::{Bootstrap, with_controller};

#[derive(Debug, Subcommand)]
pub enum SubscriptionCommand {
    /// Create a subscription on a topic, delivering from each partition's start (a Pub/Sub
    /// client's CreateSubscription starts at the end instead).
    Create {
        name: String,
        #[arg(long)]
        topic: String,
        /// Seconds a delivery is leased for (10 to 600).
        #[arg(long, default_value_t = 10)]
        ack_deadline_seconds: u32,
        /// Deliver each partition in order (ordering keys).
        #[arg(long)]
        ordered: bool,
        /// Which messages are delivered: Google Pub/Sub's syntax over attributes
        /// (`attributes.kind = "order"`), Knative Trigger filters as JSON
        /// (`[{"prefix": {"type": "order."}}]`) or `cesql: <CloudEvents SQL>`.
        #[arg(long, default_value = "")]
        filter: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// List subscriptions (optionally only those of a topic).
    List {
        #[arg(long, default_value = "")]
        topic: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Show a subscription's settings and, per partition, its cursor, backlog and the age of
    /// its oldest unacknowledged message.
    Describe {
        name: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Delete a subscription (its messages stay in the topic).
    Delete {
        name: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

fn summary(d: &pb::SubscriptionDescription) -> String {
    let Some(s) = &d.spec else {
        return "?".into();
    };
    let mut out = format!(
        "{}  topic {}{}  partitions {}  ack_deadline {}s",
        s.name,
        s.topic,
        if d.topic_deleted { " (deleted)" } else { "" },
        d.partitions,
        s.ack_deadline_seconds
    );
    if s.enable_message_ordering {
        out.push_str("  ordered");
    }
    if s.enable_exactly_once_delivery {
        out.push_str("  exactly-once");
    }
    if !s.filter.is_empty() {
        out.push_str(&format!("  filter {:?}", s.filter));
    }
    if let Some(p) = &s.push {
        out.push_str(&format!("  push {}", p.endpoint));
    }
    if !s.dead_letter_topic.is_empty() {
        out.push_str(&format!(
            "  dead-letter {} after {}",
            s.dead_letter_topic, s.max_delivery_attempts
        ));
    }
    if s.retry_maximum_backoff_ms > 0 {
        out.push_str(&format!(
            "  retry {}..{} ms",
            s.retry_minimum_backoff_ms, s.retry_maximum_backoff_ms
        ));
    }
    if s.expiration_ttl_seconds > 0 {
        out.push_str(&format!(
            "  expires after {}s idle",
            s.expiration_ttl_seconds
        ));
    }
    if s.detached {
        out.push_str("  detached");
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One partition's row: cursor low, acked ranges above it, high watermark, backlog, and the
/// age of the oldest unacknowledged message.
async fn partition_row(
    meta: &Metadata,
    sub: &str,
    topic: &str,
    partition: u32,
) -> anyhow::Result<String> {
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(10);
    let request = pb::GetCursorRequest {
        subscription: sub.to_string(),
        topic: topic.to_string(),
        partition,
    };
    let cursor = meta
        .call_leader(topic, partition, true, deadline(), |mut c| {
            let request = request.clone();
            async move { c.get_cursor(request).await }
        })
        .await?
        .cursor
        .unwrap_or_default();
    let latest = pb::ListOffsetsRequest {
        topic: topic.to_string(),
        partition,
        spec: pb::OffsetSpec::Latest as i32,
        timestamp_ms: 0,
    };
    let hw = meta
        .call_leader(topic, partition, true, deadline(), |mut c| {
            let latest = latest.clone();
            async move { c.list_offsets(latest).await }
        })
        .await?
        .offset;
    let acked: i64 = cursor
        .acked
        .iter()
        .map(|r| r.end.min(hw) - r.start.min(hw))
        .sum();
    let backlog = (hw - cursor.low).max(0) - acked;
    let oldest = if backlog > 0 {
        let fetch = pb::FetchRequest {
            topic: topic.to_string(),
            partition,
            offset: cursor.low,
            max_bytes: 1,
            max_wait_ms: 0,
            min_bytes: 0,
            leader_epoch: None,
            decode: true,
        };
        let r = meta
            .call_leader(topic, partition, true, deadline(), |mut c| {
                let fetch = fetch.clone();
                async move { c.fetch(fetch).await }
            })
            .await?;
        r.records
            .iter()
            .find(|s| s.offset >= cursor.low)
            .and_then(|s| s.record.as_ref())
            .map(|rec| format!("{:.1}s", (now_ms() - rec.timestamp_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    } else {
        "-".into()
    };
    Ok(format!(
        "{partition:>9} {:>12} {:>12} {:>14} {:>10} {:>12}",
        cursor.low,
        cursor.acked.len(),
        hw,
        backlog,
        oldest
    ))
}

pub async fn run(cmd: SubscriptionCommand) -> anyhow::Result<i32> {
    match cmd {
        SubscriptionCommand::Create {
            name,
            topic,
            ack_deadline_seconds,
            ordered,
            filter,
            bootstrap,
        } => {
            let request = pb::CreateSubscriptionRequest {
                spec: Some(pb::SubscriptionSpec {
                    name,
                    topic,
                    ack_deadline_seconds,
                    enable_message_ordering: ordered,
                    filter,
                    ..Default::default()
                }),
                start: Vec::new(),
            };
            let d = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let request = request.clone();
                async move {
                    SubscriptionsClient::new(ch)
                        .create_subscription(request)
                        .await
                }
            })
            .await?
            .into_inner();
            println!("created {}", summary(&d));
        }
        SubscriptionCommand::List { topic, bootstrap } => {
            let request = pb::ListSubscriptionsRequest {
                prefix: String::new(),
                topic,
            };
            let list = with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let request = request.clone();
                async move {
                    SubscriptionsClient::new(ch)
                        .list_subscriptions(request)
                        .await
                }
            })
            .await?
            .into_inner();
            if list.subscriptions.is_empty() {
                println!("no subscriptions");
            }
            for d in &list.subscriptions {
                println!("{}", summary(d));
            }
        }
        SubscriptionCommand::Describe { name, bootstrap } => {
            let controllers = parse_bootstrap(&bootstrap.bootstrap)?;
            let request = pb::GetSubscriptionRequest { name: name.clone() };
            let d = with_controller(&controllers, |ch| {
                let request = request.clone();
                async move { SubscriptionsClient::new(ch).get_subscription(request).await }
            })
            .await?
            .into_inner();
            println!("subscription {}", summary(&d));
            let topic = d.spec.as_ref().map(|s| s.topic.clone()).unwrap_or_default();
            if d.topic_deleted {
                return Ok(0);
            }
            let meta = Metadata::new(controllers);
            println!(
                "{:>9} {:>12} {:>12} {:>14} {:>10} {:>12}",
                "PARTITION",
                "CURSOR-LOW",
                "ACK-RANGES",
                "HIGH-WATERMARK",
                "BACKLOG",
                "OLDEST-UNACK"
            );
            for p in 0..d.partitions {
                match partition_row(&meta, &name, &topic, p).await {
                    Ok(row) => println!("{row}"),
                    Err(e) => println!("{p:>9}  unavailable: {e}"),
                }
            }
        }
        SubscriptionCommand::Delete { name, bootstrap } => {
            let request = pb::DeleteSubscriptionRequest { name: name.clone() };
            with_controller(&parse_bootstrap(&bootstrap.bootstrap)?, |ch| {
                let request = request.clone();
                async move {
                    SubscriptionsClient::new(ch)
                        .delete_subscription(request)
                        .await
                }
            })
            .await?;
            println!("deleted {name}");
        }
    }
    Ok(0)
}
