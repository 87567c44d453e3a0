//! Push delivery throughput: a gateway (`weir dev`, or `weir gateway` beside a cluster)
//! pushes a backlog to a local HTTP endpoint that answers 204.
//!
//! 1. Starts the endpoint on 127.0.0.1 (it counts requests and answers `--status`).
//! 2. Creates a topic and publishes `--messages` records of `--value-bytes` (the backlog).
//! 3. Creates a push subscription from the log start; the gateways find it (within 2 s) and
//!    push. Prints deliveries/s between the first and the last push, and repeats.
//!
//! `cargo run --release -p weir-benches --bin push-bench -- --help`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use weir_proto::call::parse_bootstrap;
use weir_proto::v1 as pb;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9093")]
    bootstrap: String,
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    #[arg(long, default_value_t = 0)]
    replication_factor: u32,
    /// Deliver the bare data (`no_wrapper`) instead of Google's JSON envelope.
    #[arg(long)]
    no_wrapper: bool,
    /// How long to wait for the pushes at most, seconds.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

async fn endpoint(counts: Arc<Counts>, epoch: Instant) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |_body: Bytes| {
            let counts = Arc::clone(&counts);
            async move {
                let now = epoch.elapsed().as_nanos() as u64;
                let _ =
                    counts
                        .first_ns
                        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                counts.last_ns.fetch_max(now, Ordering::Relaxed);
                counts.requests.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

async fn publish(args: &Args, topic: &str) -> anyhow::Result<Duration> {
    weir_benches::publish(
        &args.bootstrap,
        topic,
        args.messages,
        args.partitions,
        args.value_bytes,
    )
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.partitions == 0 || args.messages == 0 {
        bail!("--partitions and --messages must be positive");
    }
    let bootstrap = parse_bootstrap(&args.bootstrap)?;
    let epoch = Instant::now();
    let counts = Arc::new(Counts::default());
    let addr = endpoint(Arc::clone(&counts), epoch).await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("push-bench-{stamp}");
    weir_benches::create_topic(&bootstrap, &topic, args.partitions, args.replication_factor)
        .await?;
    let took = publish(&args, &topic).await?;
    println!(
        "publish  {} messages of {} B in {:.2}s: {:.0} msg/s",
        args.messages,
        args.value_bytes,
        took.as_secs_f64(),
        args.messages as f64 / took.as_secs_f64()
    );
    let created = Instant::now();
    weir_benches::create_subscription(
        &bootstrap,
        pb::SubscriptionSpec {
            name: format!("{topic}-push"),
            topic: topic.clone(),
            push: Some(pb::PushSpec {
                endpoint: format!("http://{addr}/push"),
                no_wrapper: args.no_wrapper,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    while counts.requests.load(Ordering::Relaxed) < args.messages {
        if Instant::now() > deadline {
            bail!(
                "{} of {} pushed within {} s (is a gateway running for this cluster?)",
                counts.requests.load(Ordering::Relaxed),
                args.messages,
                args.timeout_seconds
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // pushes that come again (a slow ack) arrive shortly after
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = Duration::from_nanos(counts.first_ns.load(Ordering::Relaxed));
    let last = Duration::from_nanos(counts.last_ns.load(Ordering::Relaxed));
    let window = last.saturating_sub(first).as_secs_f64().max(1e-9);
    let requests = counts.requests.load(Ordering::Relaxed);
    println!(
        "push     {} messages ({}) to a 204 endpoint: {:.0} deliveries/s over {:.2}s; first push {:.2}s after the subscription was created; {} repeated",
        args.messages,
        if args.no_wrapper {
            "unwrapped"
        } else {
            "JSON envelope"
        },
        args.messages as f64 / window,
        window,
        first.saturating_sub(created - epoch).as_secs_f64(),
        requests.saturating_sub(args.messages)
    );
    Ok(())
}
