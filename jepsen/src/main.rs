//! `weir-jepsen`: start a real Weir cluster, run Jepsen's Kafka workload against it while a
//! nemesis breaks it (`nemesis`: kills, pauses, partitions, clock skew, power loss,
//! corruption, membership changes; `workload`: the clients and their zombies), heal, drain
//! every key, check the history and plot it (`plot`).
//!
//! ```sh
//! weir-jepsen test --nemesis kill,pause,partition,clock --time-limit 60
//! weir-jepsen self-test
//! weir-jepsen check results/<run>/history.jsonl
//! ```

mod nemesis;
mod plot;
mod run;
mod workload;

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
    /// Draw a run's timeline.png again from its history and results.
    Plot { dir: PathBuf },
    /// List the faults the nemesis can inject.
    Faults,
    /// List the planted bugs and the self-test scenario of each.
    Bugs,
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
        Command::Plot { dir } => run::plot_dir(&dir),
        Command::Faults => {
            for (name, what) in nemesis::FAULTS {
                println!("{name:<22} {what}");
            }
            Ok(true)
        }
        Command::Bugs => {
            for bug in weir_faults::bugs::Bug::ALL {
                let case = run::CASES.iter().find(|c| c.bug == bug.name());
                match case {
                    Some(c) => println!(
                        "{:<24} self-test: --nemesis {} expects {}",
                        bug.name(),
                        c.nemesis,
                        c.expected.join(" or ")
                    ),
                    None => println!(
                        "{:<24} no self-test scenario (jepsen/README.md)",
                        bug.name()
                    ),
                }
            }
            Ok(true)
        }
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
