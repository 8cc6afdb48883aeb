//! The `kinsumer` command.
//!
//! - `kinsumer demo` — a fleet of consumers on the in-memory stream and store, with a split, a
//!   join, a graceful leave and a crash; ends with a summary (lost must be 0).
//! - `kinsumer status` — clients and leases of an application, from any store.
//! - `kinsumer reset` — move checkpoints, through the store's fenced operations, and repair
//!   lease rows that do not decode.
//! - `kinsumer tail` — print a stream's records as they arrive, without taking leases.
//! - `kinsumer chaos-member` (hidden) — one process of the chaos test's fleet
//!   (`tests/chaos.rs`); see [`chaos_member`].
//!
//! Backends are chosen by URL (see [`backends`]). Exit codes: 0 success, 1 the operation was
//! refused or found a problem (a reset refused, a demo that lost records), 2 bad usage or an
//! unreachable backend. Logs go to stderr; set `RUST_LOG=kinsumer_core=info` to see every lease
//! change.

use clap::{Parser, Subcommand};

/// A boxed-error result: every subcommand reports one line and an exit code, no error crate.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `eprintln!` that never panics: a closed stderr (`kinsumer tail 2>&1 | head`) ends nothing of
/// ours badly — what could not be said is dropped.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`note!`]).
macro_rules! note_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut err = std::io::stderr();
        let _ = write!(err, $($arg)*);
        let _ = err.flush();
    }};
}

mod backends;
mod chaos_member;
mod demo;
mod reset;
mod sequence;
mod status;
mod tail;

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
    /// Show an application's clients and leases: owners, tokens, checkpoints, and how far
    /// behind the stream's tip each shard is when --source is given.
    Status(status::StatusArgs),
    /// Move checkpoints (to the horizon, the tip, a time or a sequence number) through the
    /// store's fenced operations; refuses while a live client owns the shard unless --force.
    /// Repairs lease rows that do not decode (with --source, for the shards' parents).
    Reset(reset::ResetArgs),
    /// Print a stream's records as they arrive, from a chosen position, without taking leases.
    Tail(tail::TailArgs),
    /// One member of the chaos test's fleet (crates/kinsumer-cli/tests/chaos.rs), which runs
    /// several as separate processes and kills, stops and partitions them: consumes --source
    /// with leases in --store, acks every record, and appends one JSON line per event (started,
    /// taken, dropped, handed, acked, error, stopped) to --log. Exits 0 after SIGTERM's graceful
    /// shutdown. Exists for that test only.
    #[command(
        hide = true,
        after_help = "Example:\n  kinsumer chaos-member --store redis://127.0.0.1:6379 \\\n      --source 'kinesis://orders?endpoint=http://127.0.0.1:4567&region=us-east-1' \\\n      --app chaos --client-id a --log /tmp/a.jsonl"
    )]
    ChaosMember(chaos_member::ChaosMemberArgs),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap echoes a rejected value whole, and a URL's password with it.
            let text = backends::redact_text(&e.render().to_string());
            if e.use_stderr() {
                note_inline!("{text}");
            } else {
                use std::io::Write as _;
                let _ = write!(std::io::stdout(), "{text}"); // `--help | head` is fine
            }
            std::process::exit(e.exit_code());
        }
    };
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
            note!("kinsumer: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Reset(args) => reset::run(args).await,
            Command::Tail(args) => tail::run(args).await,
            Command::ChaosMember(args) => chaos_member::run(args).await,
        }
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            note!("kinsumer: {e}");
            std::process::exit(2);
        }
    }
}
