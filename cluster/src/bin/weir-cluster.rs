//! `weir-cluster`: start, inspect, disturb and stop a multi-process Weir cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_cluster::{Cluster, Spec, alive};

#[derive(Debug, Parser)]
#[command(
    name = "weir-cluster",
    about = "Run a real multi-process Weir cluster on loopback addresses"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start controllers and brokers; returns when the cluster is ready.
    Up {
        #[arg(long, default_value_t = 3)]
        controllers: u32,
        #[arg(long, default_value_t = 3)]
        brokers: u32,
        /// Run N nodes that each hold a controller and a broker (`weir node`) instead of
        /// separate controllers and brokers.
        #[arg(long, value_name = "N", conflicts_with_all = ["controllers", "brokers"])]
        nodes: Option<u32>,
        #[arg(long)]
        dir: PathBuf,
        /// The weir binary (default: next to this one).
        #[arg(long, env = "WEIR_BIN")]
        weir: Option<PathBuf>,
        #[arg(long, default_value_t = 6000)]
        broker_lease_ms: u64,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// TLS everywhere: a CA and node certificates are made in `<dir>/tls`.
        #[arg(long)]
        tls: bool,
        /// Runtime threads per process (default: this machine's cores shared out among the
        /// processes, at least one each; every node on one host with a thread per core
        /// spends its time handing work between threads).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
    /// Nodes, pids, liveness and the controllers' view of the cluster.
    Status {
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGKILL a node.
    Kill {
        node: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGSTOP a node.
    Pause {
        node: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGCONT a node.
    Resume {
        node: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Kill (if running) and start a node again with its data.
    Restart {
        node: String,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop every node (SIGTERM, then SIGKILL after the grace period).
    Down {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10)]
        grace_s: u64,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("weir-cluster: error: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Up {
            controllers,
            brokers,
            nodes,
            dir,
            weir,
            broker_lease_ms,
            timeout_s,
            tls,
            worker_threads,
        } => {
            let weir = match weir {
                Some(w) => w,
                None => std::env::current_exe()?
                    .parent()
                    .context("binary directory")?
                    .join("weir"),
            };
            let (controllers, brokers) = match nodes {
                Some(n) => (n, 0),
                None => (controllers, brokers),
            };
            let threads = worker_threads.map_or_else(
                || {
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                    (cores / (controllers + brokers).max(1) as usize).max(1)
                },
                usize::from,
            );
            let cluster = Cluster::up(
                &Spec {
                    controllers,
                    brokers,
                    combined: nodes.is_some(),
                    dir,
                    weir,
                    broker_lease_ms,
                    env: vec![("WEIR_WORKER_THREADS".into(), threads.to_string())],
                    tls,
                },
                Duration::from_secs(timeout_s),
            )?;
            println!(
                "cluster ready; state in {}",
                cluster.dir.join("cluster.json").display()
            );
            print_nodes(&cluster);
            println!("bootstrap: {}", cluster.bootstrap());
        }
        Cmd::Status { dir } => {
            let cluster = Cluster::load(&dir)?;
            print_nodes(&cluster);
            match cluster.describe() {
                Ok(d) => println!(
                    "active controller {}  term {}  applied {}  brokers live {}/{}",
                    d.leader_id,
                    d.term,
                    d.applied_index,
                    d.brokers.iter().filter(|b| !b.fenced).count(),
                    d.brokers.len()
                ),
                Err(e) => println!("controllers unreachable: {e:#}"),
            }
        }
        Cmd::Kill { node, dir } => Cluster::load(&dir)?.kill(&node)?,
        Cmd::Pause { node, dir } => Cluster::load(&dir)?.pause(&node)?,
        Cmd::Resume { node, dir } => Cluster::load(&dir)?.resume(&node)?,
        Cmd::Restart { node, dir } => Cluster::load(&dir)?.restart(&node)?,
        Cmd::Down { dir, grace_s } => Cluster::load(&dir)?.down(Duration::from_secs(grace_s))?,
    }
    Ok(())
}

fn print_nodes(cluster: &Cluster) {
    for n in &cluster.nodes {
        let state = match n.pid {
            Some(pid) if alive(pid) => format!("running (pid {pid})"),
            Some(pid) => format!("stopped (was pid {pid})"),
            None => "never started".to_string(),
        };
        println!(
            "  {:<14} {:<22} {state}  log {}",
            n.name,
            n.addr,
            n.log_file.display()
        );
    }
}
