//! P5: what an idle fleet costs its lease store — 10 consumers, 1,000 shards with nothing to
//! read, per store. Every call a consumer makes to its store passes through a counting
//! [`Layer`], so every backend is counted the same way, at the `LeaseStore` seam.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kinsumer::layer::{Layer, Layered, Op};
use kinsumer::testkit::conformance::fleet::start_acking;
use kinsumer::testkit::{MemoryLeaseStore, MemoryStream};
use kinsumer::{Config, Consumer, LeaseStore, ShardSource, SourceError, StoreError};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::services::{self, Backend};
use super::{BenchArgs, Row, on_own_runtime, unique};
use crate::Result;

const CLIENTS: usize = 10;
const SHARDS: usize = 1_000;
const GOAL: &str = "≤ 5 writes/s total";

/// The store calls that write.
pub(crate) const WRITES: [&str; 12] = [
    "heartbeat",
    "deregister",
    "mark_dead",
    "announce",
    "create_if_absent",
    "take",
    "checkpoint",
    "release",
    "finish",
    "delete_finished",
    "reset_checkpoint",
    "replace_corrupt",
];

/// Counts every store call by name (`heartbeat`, `leases`, …); passes source calls through.
#[derive(Clone, Default)]
pub(crate) struct Counting(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Counting {
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Layer for Counting {
    fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = std::result::Result<T, StoreError>> + Send + 'a,
    ) -> impl Future<Output = std::result::Result<T, StoreError>> + Send + 'a {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(op.name)
            .or_default() += 1;
        call
    }

    fn source_call<'a, T: Send + 'a>(
        &'a self,
        _op: &'a Op,
        call: impl Future<Output = std::result::Result<T, SourceError>> + Send + 'a,
    ) -> impl Future<Output = std::result::Result<T, SourceError>> + Send + 'a {
        call
    }
}

fn delta(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

struct Idle {
    settled_in: Duration,
    window: Duration,
    calls: BTreeMap<&'static str, u64>,
    /// GetRecords calls on the stream in the window.
    stream_reads: u64,
    /// Rows returned by the store's reads in the window (the memory store counts them).
    items_read: u64,
}

fn config(app: &str, n: usize) -> Config {
    let mut c = Config::new(app).with_client_id(format!("idle-{n:02}"));
    c.rng_seed = Some(n as u64 + 1);
    c
}

/// Starts the fleet, waits until it settles, counts the store calls over `window`.
async fn fleet(
    backend: Backend,
    args: BenchArgs,
    app: String,
    table: String,
    memory: MemoryLeaseStore,
    window: Duration,
) -> Result<Idle> {
    let stream = MemoryStream::new("idle", SHARDS);
    // Set-up, not counted: the 1,000 lease rows, 16 at a time (ten clients racing to create
    // them is slow on moto, one Python process).
    let setup = services::open(backend, &args, &app, &table, &memory).await?;
    let shards = stream.list_shards().await?;
    let created: Vec<std::result::Result<_, StoreError>> = futures::stream::iter(
        shards
            .iter()
            .map(|s| setup.create_if_absent("idle", &s.id, &[])),
    )
    .buffer_unordered(16)
    .collect()
    .await;
    created
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()?;

    let counting = Counting::default();
    let mut members = Vec::new();
    for n in 0..CLIENTS {
        let store = services::open(backend, &args, &app, &table, &memory).await?;
        let store: Arc<dyn LeaseStore> = Arc::new(Layered::new(store, counting.clone()));
        members.push(start_acking(config(&app, n), stream.clone(), store));
    }
    let result = async {
        let started = Instant::now();
        loop {
            let held: Vec<usize> = members
                .iter()
                .map(|(c, _)| c.status().shards().len())
                .collect();
            if held.iter().all(|&h| h == SHARDS / CLIENTS) {
                break;
            }
            if started.elapsed() > Duration::from_secs(180) {
                return Err(
                    format!("the fleet did not settle within 180 s (held: {held:?})").into(),
                );
            }
            sleep(Duration::from_millis(250)).await;
        }
        let settled_in = started.elapsed();
        // One more full lease read period, so the window sees the steady state.
        sleep(Duration::from_secs(6)).await;
        let before = counting.snapshot();
        let reads_before = stream.stats().get_records_calls;
        let items_before = memory.stats().items_read;
        let t = Instant::now();
        sleep(window).await;
        let after = counting.snapshot();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Idle {
            settled_in,
            window: t.elapsed(),
            calls: delta(&before, &after),
            stream_reads: stream.stats().get_records_calls - reads_before,
            items_read: memory.stats().items_read - items_before,
        })
    }
    .await;
    shut_down(members).await;
    result
}

/// Shuts a fleet down, every member at once (each given up to 30 s), and stops its readers.
/// At once, because 100 graceful shutdowns one after another took minutes on a real store.
pub(crate) async fn shut_down(members: impl IntoIterator<Item = (Consumer, JoinHandle<()>)>) {
    futures::future::join_all(members.into_iter().map(|(consumer, reader)| async move {
        let _ = tokio::time::timeout(Duration::from_secs(30), consumer.shutdown()).await;
        reader.abort();
    }))
    .await;
}

pub(crate) async fn p5(args: &BenchArgs) -> Vec<Row> {
    let heartbeat = Config::new("x").heartbeat_interval;
    // A whole number of heartbeat intervals, so each client beats the same number of times;
    // in virtual time, two whole safety-net periods (50 s each here) as well.
    let window = heartbeat * if args.quick { 5 } else { 15 };
    let virtual_window = heartbeat * 50;
    let mut rows = Vec::new();
    for backend in Backend::ALL {
        let (setting, paused) = match backend {
            Backend::Memory => ("virtual time", true),
            _ => ("real time", false),
        };
        let row = Row::new(
            "P5",
            format!(
                "idle store calls, {SHARDS} shards × {CLIENTS} clients, {} ({setting})",
                backend.name()
            ),
            GOAL,
        )
        .with_command(args.command("P5"));
        if backend == Backend::Dynamo && args.quick {
            rows.push(
                row.not_measured("skipped by --quick (the fleet takes ~75 s to settle on moto)"),
            );
            continue;
        }
        if let Some(why) = backend.unreachable(args).await {
            rows.push(row.not_measured(why));
            continue;
        }
        let app = unique("bench-idle");
        let table = unique("kinsumer-bench-idle");
        let run = {
            let (args, app, table) = (args.clone(), app.clone(), table.clone());
            let window = if paused { virtual_window } else { window };
            move || fleet(backend, args, app, table, MemoryLeaseStore::new(), window)
        };
        let result = if paused {
            on_own_runtime(true, run).await.and_then(|r| r)
        } else {
            run().await
        };
        if backend == Backend::Dynamo {
            services::drop_table(args, &table).await;
        }
        let idle = match result {
            Ok(i) => i,
            Err(e) => {
                rows.push(row.not_measured(format!("the run failed: {e}")));
                continue;
            }
        };
        let secs = idle.window.as_secs_f64();
        let sum = |pred: &dyn Fn(&str) -> bool| -> u64 {
            idle.calls
                .iter()
                .filter(|(k, _)| pred(k))
                .map(|(_, v)| v)
                .sum()
        };
        let writes = sum(&|k| WRITES.contains(&k));
        let heartbeats = sum(&|k| k == "heartbeat");
        let reads = sum(&|k| !WRITES.contains(&k));
        let per_s = |n: u64| n as f64 / secs;
        rows.push(
            row.judged(
                if backend == Backend::Memory {
                    format!(
                        "{:.2} writes/s ({:.2} heartbeats/s), {:.1} reads/s, {:.1} items read/s",
                        per_s(writes),
                        per_s(heartbeats),
                        per_s(reads),
                        per_s(idle.items_read)
                    )
                } else {
                    format!(
                        "{:.2} writes/s ({:.2} heartbeats/s), {:.1} reads/s",
                        per_s(writes),
                        per_s(heartbeats),
                        per_s(reads)
                    )
                },
                per_s(writes) <= 5.0 + 1e-9,
                format!(
                    "{:.2} writes/s: {} lease writes in an idle fleet; only heartbeats (one per \
                     client per heartbeat_interval) should write",
                    per_s(writes),
                    writes - heartbeats
                ),
            )
            .detail(format!(
                "{CLIENTS} consumers (each with its own store client{}) on a `MemoryStream` of \
                 {SHARDS} empty shards; lease rows created first (not counted); settled — every \
                 client holding {} — in {:.1} s{}; then 6 s more, then every call on the \
                 `LeaseStore` seam counted by a counting layer over {:.1} s (a whole number of \
                 heartbeat intervals). Default store-facing settings: heartbeat 2 s, \
                 membership poll 200 ms (each poll reads the change counter; every other one \
                 the rows of the three clients watched), a safety-net read of every lease \
                 every max(5 s, live clients × leases / 200 rows/s) = 50 s here.{}",
                if backend == Backend::Memory {
                    ", one shared in-memory store"
                } else {
                    ""
                },
                SHARDS / CLIENTS,
                idle.settled_in.as_secs_f64(),
                if paused { " of virtual time" } else { "" },
                secs,
                if backend == Backend::Dynamo {
                    " Reads here are bounded by moto's speed (one Python process; a 1,000-item \
                     Query takes about 0.4 s), not by what the engine asks for: the clients \
                     poll more slowly while moto answers late, and pace their lease reads."
                } else {
                    ""
                }
            ))
            .detail(format!(
                "calls in the window: {}",
                idle.calls
                    .iter()
                    .map(|(k, v)| format!("{k} {v} ({:.2}/s)", per_s(*v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
        if backend == Backend::Memory {
            // The source side of the same idle fleet: reads of caught-up shards.
            let per_shard = per_s(idle.stream_reads) / SHARDS as f64;
            rows.push(
                Row::new(
                    "P5",
                    format!(
                        "GetRecords per idle shard, {SHARDS} shards × {CLIENTS} clients, default \
                         settings (virtual time)"
                    ),
                    "≤ 1 read/s per caught-up shard (Kinesis allows 5, shared by every \
                     application on the stream)",
                )
                .with_command(args.command("P5"))
                .judged(
                    format!("{per_shard:.2} reads/s per shard"),
                    per_shard <= 1.0 + 1e-9,
                    format!(
                        "{per_shard:.2} reads/s: a caught-up shard should be read once per \
                         idle_poll_interval (1 s)"
                    ),
                )
                .detail(format!(
                    "the fleet of the row above; GetRecords calls counted by the \
                     `MemoryStream` over the same {secs:.1} s window: {} calls on {SHARDS} \
                     empty shards. Before idle pacing (issue #18) a shard was read every \
                     poll_interval (200 ms): 5 reads/s.",
                    idle.stream_reads
                )),
            );
        }
    }
    rows
}
