//! `weir`: the command line. Today it carries the storage tools (`weir log ...`); the cluster
//! roles are wired in here as they arrive.

mod log_cmd;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "Weir: a distributed replicated log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with a partition directory on local disk.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(cmd) => log_cmd::run(cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("weir: error: {err:#}");
            std::process::exit(2);
        }
    }
}
