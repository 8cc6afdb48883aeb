//! `kinsumer-bench`: the performance scenarios of the project (P1–P8), side by side with their
//! goals, written to `BENCHMARKS.md`. Not published: it exists to measure this repository.
//!
//! ```sh
//! bash scripts/services.sh                                  # the stores and kinesis-local
//! cargo run --release -p kinsumer-bench                     # every scenario
//! cargo run --release -p kinsumer-bench -- --scenario P1,P6 --quick --out /tmp/bench.md
//! ```
//!
//! The machine this runs on is shared and noisy, so every speed is a **ratio to a baseline
//! measured in the same run** (a raw read loop over the same stream) or a **count** (store
//! requests, leases moved); latencies of the protocol are measured in the deterministic
//! simulation (virtual time) and, where a real store is involved, in real time over many
//! samples. A backend that is not reachable gives a row that says so — never a number.
//!
//! | id | measure | where |
//! |---|---|---|
//! | P1 | in-process pipeline vs raw reads of the same `MemoryStream`, one core | [`pipeline`] |
//! | P2 | end-to-end on kinesis-local vs a raw GetRecords loop, per store | [`kinesis`] |
//! | P3 | graceful handoff latency (simulation, Redis) | [`handoff`] |
//! | P4 | crash failover latency (simulation, Redis) | [`handoff`] |
//! | P5 | idle store requests at 1,000 shards × 10 clients, per store | [`idle`] |
//! | P6 | leases moved by one join or leave, and the balance | [`moves`] |
//! | P7 | peak RSS while a handler stalls, vs the byte bound | [`memory`] |
//! | P8 | 10,000 shards × 100 clients: cold start, idle cost, rolling restart (virtual time) | [`scale`] |

use clap::Parser;

/// A boxed-error result: a scenario that cannot run gives a "not measured" row or one line and
/// an exit code, no error crate.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `eprintln!` that never panics: a closed stderr (`kinsumer-bench 2>&1 | head`) ends nothing
/// badly — what could not be said is dropped.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod handoff;
mod idle;
mod kinesis;
mod memory;
mod moves;
mod pipeline;
mod report;
mod scale;
mod services;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use report::{Row, Verdict};

/// Every scenario, in order.
const ALL: [&str; 8] = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8"];

/// Flags of `kinsumer-bench`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "kinsumer-bench",
    version,
    about = "Run the performance scenarios of kinsumer and write BENCHMARKS.md",
    after_help = "Examples:\n  kinsumer-bench --quick\n  kinsumer-bench --scenario P1,P6 --out /tmp/bench.md\n  kinsumer-bench --scenario P5 --redis redis://10.0.0.5:6379\n\nBuild it with --release (cargo run --release -p kinsumer-bench -- …). Start the services first (bash scripts/services.sh): one that is not reachable gives a \"not measured\" row, never a number. Exit 0 when every measured row meets its goal, 1 when one misses, 2 on bad usage."
)]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated (default: all of P1–P8).
    #[arg(long, value_delimiter = ',', value_name = "P1,P3,...")]
    pub scenario: Vec<String>,
    /// Smaller sizes and fewer samples (minutes → seconds); skips the slow DynamoDB idle fleet.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// The Kinesis emulator (P2).
    #[arg(long, default_value = DEFAULT_KINESIS, value_name = "URL")]
    pub kinesis_endpoint: String,
    /// Redis (P2, P3, P4, P5).
    #[arg(long, default_value = DEFAULT_REDIS, value_name = "URL")]
    pub redis: String,
    /// PostgreSQL (P2, P5).
    #[arg(long, default_value = DEFAULT_POSTGRES, value_name = "URL")]
    pub postgres: String,
    /// The DynamoDB emulator (moto) (P2, P5).
    #[arg(long, default_value = DEFAULT_DYNAMO, value_name = "URL")]
    pub dynamo_endpoint: String,
    /// Internal: run P7's measured process (a fresh process, so its peak RSS is its own).
    #[arg(long, hide = true)]
    pub p7_child: bool,
}

const DEFAULT_KINESIS: &str = "http://127.0.0.1:4567";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";
const DEFAULT_POSTGRES: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";
const DEFAULT_DYNAMO: &str = "http://127.0.0.1:5000";

impl BenchArgs {
    /// The command that reproduces scenario `id` with the flags of this run.
    pub(crate) fn command(&self, id: &str) -> String {
        let mut cmd = format!("cargo run --release -p kinsumer-bench -- --scenario {id}");
        if self.quick {
            cmd.push_str(" --quick");
        }
        let flags = [
            (
                "--kinesis-endpoint",
                &self.kinesis_endpoint,
                DEFAULT_KINESIS,
            ),
            ("--redis", &self.redis, DEFAULT_REDIS),
            ("--postgres", &self.postgres, DEFAULT_POSTGRES),
            ("--dynamo-endpoint", &self.dynamo_endpoint, DEFAULT_DYNAMO),
        ];
        for (flag, value, default) in flags {
            if value != default {
                cmd.push_str(&format!(
                    " {flag} {}",
                    kinsumer::postgres::redact_url(value)
                ));
            }
        }
        cmd
    }

    /// Which scenarios to run, validated.
    fn scenarios(&self) -> std::result::Result<Vec<&'static str>, String> {
        if self.scenario.is_empty() {
            return Ok(ALL.to_vec());
        }
        let mut out = Vec::new();
        for s in &self.scenario {
            let s = s.trim().to_ascii_uppercase();
            match ALL.iter().find(|id| **id == s) {
                Some(id) if !out.contains(id) => out.push(*id),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "unknown scenario `{s}` (known: {})",
                        ALL.join(", ")
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn main() {
    let args = BenchArgs::parse();
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
            note!("kinsumer-bench: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            note!("kinsumer-bench: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the scenarios: exit 0 when every measured row meets its goal, 1 when one misses,
/// 2 on bad usage.
pub async fn run(args: BenchArgs) -> Result<i32> {
    if args.p7_child {
        return memory::child(&args).await;
    }
    let scenarios = match args.scenarios() {
        Ok(s) => s,
        Err(e) => {
            note!("kinsumer-bench: {e}");
            return Ok(2);
        }
    };
    if cfg!(debug_assertions) {
        note!(
            "kinsumer-bench: this is a debug build; speeds mean little (use cargo run --release)"
        );
    }
    let machine = report::Machine::detect();
    println!("{}", machine.one_line());
    let mut rows: Vec<Row> = Vec::new();
    for id in scenarios {
        note!("kinsumer-bench: running {id}…");
        let started = std::time::Instant::now();
        let new_rows = match id {
            "P1" => pipeline::p1(&args).await,
            "P2" => kinesis::p2(&args).await,
            "P3" => handoff::p3(&args).await,
            "P4" => handoff::p4(&args).await,
            "P5" => idle::p5(&args).await,
            "P6" => moves::p6(&args),
            "P7" => memory::p7(&args).await,
            "P8" => {
                let mut rows = scale::p8(&args).await;
                rows.extend(scale::p8_real(&args).await);
                rows
            }
            _ => Vec::new(),
        };
        note!(
            "kinsumer-bench: {id} took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        rows.extend(new_rows);
    }
    println!();
    print!("{}", report::table(&rows));
    let markdown = report::markdown(&machine, &args, &rows);
    std::fs::write(&args.out, markdown)
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!("\nwritten to {}", args.out.display());
    let missed = rows.iter().any(|r| matches!(r.verdict, Verdict::Missed(_)));
    Ok(i32::from(missed))
}

/// Runs `f` on a fresh current-thread runtime on its own OS thread: one core for P1, the
/// paused clock (virtual time) for the simulations.
pub(crate) async fn on_own_runtime<T, F, Fut>(paused: bool, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    tokio::task::spawn_blocking(move || {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        if paused {
            builder.start_paused(true);
        }
        let rt = builder.build()?;
        Ok(rt.block_on(f()))
    })
    .await
    .map_err(|e| format!("a benchmark thread panicked: {e}"))?
}

/// A name no earlier run used (stream, application, table).
pub(crate) use kinsumer_test_env::kinesis_local::unique_name as unique;

/// `fut`, or an error naming `what` after `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} did not finish within {limit:?}").into()),
    }
}

/// Nearest-rank percentile `p` (0–100) of sorted `v`.
pub(crate) fn percentile(v: &[Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v[..10], 99), Duration::from_millis(10));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
