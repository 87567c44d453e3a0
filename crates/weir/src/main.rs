//! `weir`: every role of a Weir cluster and its command-line tools, in one binary.

mod admin_cmd;
mod broker_cmd;
mod controller_cmd;
mod data_cmd;
mod faults;
mod file_config;
mod gateway_cmd;
mod group_cmd;
mod http;
mod k8s;
mod log_cmd;
mod logging;
mod node_cmd;
mod security_cmd;
mod stall;
mod subscription_cmd;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "Weir: a distributed replicated log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    tls: security_cmd::TlsArgs,
    /// Threads running the async runtime (default: one per core). Several processes sharing
    /// a machine's cores each run faster with their share than with one thread per core.
    #[arg(long, global = true, env = "WEIR_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a single-node cluster (one controller, one broker, a Pub/Sub gateway) in this
    /// process.
    Dev(broker_cmd::DevArgs),
    /// Run a broker: stores and serves the partitions assigned to it.
    Broker(broker_cmd::BrokerArgs),
    /// Run a controller: a member of the Raft quorum that holds the cluster metadata.
    Controller(controller_cmd::ControllerArgs),
    /// Run a controller and a broker in one process (one machine of a small cluster).
    Node(node_cmd::NodeArgs),
    /// Serve Google Pub/Sub's gRPC API (Publisher, Subscriber) over the cluster; stateless.
    Gateway(gateway_cmd::GatewayArgs),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(admin_cmd::TopicCommand),
    /// Inspect and change the cluster (controllers, brokers).
    #[command(subcommand)]
    Cluster(admin_cmd::ClusterCommand),
    /// List, describe (with lag), reset offsets of and delete consumer groups.
    #[command(subcommand)]
    Group(group_cmd::GroupCommand),
    /// Create, list, describe (backlog, oldest unacked) and delete subscriptions.
    #[command(subcommand)]
    Subscription(subscription_cmd::SubscriptionCommand),
    /// Exit 0 when the process serving `--http` is ready (its /readyz answers 200): a probe
    /// for container health checks.
    Ready(http::ReadyArgs),
    /// Add, remove and list access control lists.
    #[command(subcommand)]
    Acl(security_cmd::AclCommand),
    /// Send lines as records to a topic.
    Produce(data_cmd::ProduceArgs),
    /// Print records from a topic.
    Consume(data_cmd::ConsumeArgs),
    /// Work with a partition directory on local disk.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = security_cmd::init(&cli.tls) {
        eprintln!("weir: error: {err:#}");
        std::process::exit(2);
    }
    let threads = cli.worker_threads;
    let result = match cli.command {
        Command::Log(cmd) => log_cmd::run(cmd),
        Command::Dev(args) => server(threads, broker_cmd::run_dev(args)),
        Command::Broker(args) => server(threads, broker_cmd::run_broker(args)),
        Command::Produce(args) => {
            runtime(threads).and_then(|rt| rt.block_on(data_cmd::run_produce(args)))
        }
        Command::Consume(args) => {
            runtime(threads).and_then(|rt| rt.block_on(data_cmd::run_consume(args)))
        }
        Command::Controller(args) => server(threads, controller_cmd::run(args)),
        Command::Node(args) => server(threads, node_cmd::run(args)),
        Command::Gateway(args) => server(threads, gateway_cmd::run(args)),
        Command::Topic(cmd) => {
            runtime(threads).and_then(|rt| rt.block_on(admin_cmd::run_topic(cmd)))
        }
        Command::Group(cmd) => runtime(threads).and_then(|rt| rt.block_on(group_cmd::run(cmd))),
        Command::Subscription(cmd) => {
            runtime(threads).and_then(|rt| rt.block_on(subscription_cmd::run(cmd)))
        }
        Command::Ready(args) => runtime(threads).and_then(|rt| rt.block_on(http::probe(args))),
        Command::Acl(cmd) => runtime(threads).and_then(|rt| rt.block_on(security_cmd::run(cmd))),
        Command::Cluster(cmd) => {
            runtime(threads).and_then(|rt| rt.block_on(admin_cmd::run_cluster(cmd)))
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("weir: error: {err:#}");
            std::process::exit(2);
        }
    }
}

/// Runs a server role: its runtime, with the stall detectors beside it.
fn server(
    threads: Option<u16>,
    role: impl std::future::Future<Output = anyhow::Result<i32>>,
) -> anyhow::Result<i32> {
    runtime(threads).and_then(|rt| {
        rt.block_on(async {
            stall::spawn();
            role.await
        })
    })
}

fn runtime(threads: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(usize::from(n));
    }
    Ok(builder.enable_all().thread_name("weir").build()?)
}
