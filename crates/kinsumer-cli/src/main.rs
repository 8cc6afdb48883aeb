//! The `kinsumer` command.
//!
//! - `kinsumer demo` — a fleet of consumers on the in-memory stream and store, with a split, a
//!   join, a graceful leave and a crash; ends with a summary (lost must be 0).
//!
//! Logs go to stderr; set `RUST_LOG=kinsumer_core=info` to see every lease change.

use clap::{Parser, Subcommand};

mod demo;

#[derive(Parser, Debug)]
#[command(
    name = "kinsumer",
    version,
    about = "Consume sharded streams from a fleet of processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a fleet on the in-memory stream and store, with a split, a join, a graceful leave
    /// and a crash, and report what was delivered, lost (must be 0) and duplicated.
    #[command(
        after_help = "Examples:\n  kinsumer demo\n  kinsumer demo --short\n  kinsumer demo --shards 8 --consumers 4 --records 50000 --seed 7"
    )]
    Demo(demo::DemoArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kinsumer: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("kinsumer: {e}");
            std::process::exit(2);
        }
    }
}
