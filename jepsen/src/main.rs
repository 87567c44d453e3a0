//! `weir-jepsen`: start a real Weir cluster, run Jepsen's Kafka workload against it while a
//! nemesis kills and pauses nodes, heal, drain every key, and check the history.
//!
//! ```sh
//! weir-jepsen test --nemesis kill,pause --time-limit 60
//! weir-jepsen check results/<run>/history.jsonl
//! ```

mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir-jepsen", about = "Fault-injection testing for Weir")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a test: cluster up, workload + nemesis, heal, drain, check. Exits 1 on anomalies.
    Test(run::TestArgs),
    /// Prove the suite finds bugs: a clean run must pass, and a run with each planted bug
    /// (a `weir` built with `--features jepsen-bugs`) must be flagged. Exits 1 otherwise.
    SelfTest(run::SelfTestArgs),
    /// Check a recorded history (JSON lines). Exits 1 on anomalies.
    Check {
        history: PathBuf,
        /// The producer was not idempotent: duplicates are not failures.
        #[arg(long)]
        not_idempotent: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => run::test(args),
        Command::SelfTest(args) => run::self_test(args),
        Command::Check {
            history,
            not_idempotent,
        } => run::check_file(&history, !not_idempotent),
    };
    match result {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("weir-jepsen: error: {e:#}");
            std::process::exit(2);
        }
    }
}
