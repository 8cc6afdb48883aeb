//! P8: the fleet at scale — 10,000 shards × 100 clients on the memory store in virtual time,
//! on a store model of 5 ms a call (a read of every lease paged 1,000 rows a page, 5 ms each),
//! as a real store answers. One run gives every figure of the scale goal:
//! - a cold start on a table without rows: rows created (≈ shards, not clients × shards), when
//!   the first lease was owned, when the fleet was balanced (max − min ≤ 1);
//! - the idle fleet: store writes/s and items read/s, GetRecords per caught-up shard;
//! - a rolling restart, one client at a time with graceful shutdown, records flowing: leases
//!   moved against the fewest any balanced handoff could move, and records delivered twice.
//!
//! Counted by the memory store and the memory stream; nothing is timed on the wall clock.
//!
//! On Redis and PostgreSQL (real time) the same fleet gives the cold start and the idle cost:
//! every call counted at the `LeaseStore` seam, and items read computed from the calls (a read
//! of every lease returns every lease row, of every client every client row, the others one).
//! With `KINSUMER_BENCH_TRACE` set, their cold start prints the leases owned and the calls
//! made every 2 s, to see where a slow start spends its time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kinsumer::dynamo::billing;
use kinsumer::testkit::conformance::fleet::start_acking;
use kinsumer::testkit::{MemoryLeaseStore, MemoryStream, StoreFaults, StoreOp, StoreStats};
use kinsumer::{Config, Consumer};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::idle::{Counting, WRITES, shut_down};
use super::services::{self, Backend};
use super::{BenchArgs, Row, on_own_runtime, unique};
use crate::Result;

const SHARDS: usize = 10_000;
const CLIENTS: usize = 100;
const STREAM: &str = "scale";
const MS: Duration = Duration::from_millis(1);
/// Rows per page of a read of every lease (the memory store counts each page as a call).
const PAGE: usize = 1_000;

/// How many times each record was handed to the application, by the id the producer wrote.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<HashMap<u64, u32>>>);

impl Deliveries {
    fn note(&self, data: &[u8]) {
        let Some(id) = data.get(..8).and_then(|b| b.try_into().ok()) else {
            return;
        };
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(u64::from_be_bytes(id))
            .or_default() += 1;
    }

    /// (distinct records delivered, deliveries beyond the first)
    fn counts(&self) -> (usize, u64) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let extra = map.values().map(|&n| u64::from(n.saturating_sub(1))).sum();
        (map.len(), extra)
    }
}

struct Member {
    id: String,
    consumer: Consumer,
    reader: JoinHandle<()>,
}

struct Fleet {
    stream: MemoryStream,
    store: MemoryLeaseStore,
    deliveries: Deliveries,
    members: Vec<Member>,
}

impl Fleet {
    fn start(&mut self, id: String, seed: u64) -> Result<()> {
        let mut config = Config::new("scale").with_client_id(id.clone());
        config.rng_seed = Some(seed);
        let mut consumer = Consumer::new(config, self.stream.clone(), self.store.clone())?;
        let mut records = consumer.records()?;
        let deliveries = self.deliveries.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(record)) = records.next().await {
                deliveries.note(record.data());
                record.ack();
            }
        });
        self.members.push(Member {
            id,
            consumer,
            reader,
        });
        Ok(())
    }

    /// Leases held by each member (by the store's rows, owned and not finished).
    fn held(&self) -> Vec<usize> {
        let mut by_owner: HashMap<String, usize> = HashMap::new();
        for lease in self.store.peek_leases(STREAM) {
            if let Some(owner) = lease.owner.filter(|_| !lease.finished) {
                *by_owner.entry(owner.to_string()).or_default() += 1;
            }
        }
        self.members
            .iter()
            .map(|m| by_owner.get(&m.id).copied().unwrap_or(0))
            .collect()
    }

    /// Every shard owned by a member, max − min ≤ 1.
    fn balanced(&self) -> bool {
        let held = self.held();
        let (min, max) = (held.iter().min(), held.iter().max());
        held.iter().sum::<usize>() == SHARDS
            && matches!((min, max), (Some(a), Some(b)) if b - a <= 1)
    }

    /// Waits (checking every 100 ms) until `done`, at most `limit`; how long it took.
    async fn until(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        while !done(self) {
            if started.elapsed() > limit {
                let held = self.held();
                return Err(format!(
                    "{what}: not within {limit:?} (held: min {:?}, max {:?}, total {})",
                    held.iter().min(),
                    held.iter().max(),
                    held.iter().sum::<usize>()
                )
                .into());
            }
            sleep(MS * 100).await;
        }
        Ok(started.elapsed())
    }

    async fn shutdown_all(self) {
        shut_down(self.members.into_iter().map(|m| (m.consumer, m.reader))).await;
    }
}

/// Read units of each read call, were the rows in a DynamoDB table (`kinsumer_dynamo::billing`:
/// strongly consistent, 4 KB a unit per request or page, at least 1).
struct DynamoModel {
    full_lease_read: u64,
    client_rows_read: u64,
    lease_bytes: usize,
    client_bytes: usize,
}

impl DynamoModel {
    fn of(store: &MemoryLeaseStore) -> Self {
        let leases: Vec<usize> = store
            .peek_leases(STREAM)
            .iter()
            .map(|l| billing::lease_item_size("scale", STREAM, l))
            .collect();
        let clients: Vec<usize> = store
            .peek_clients()
            .iter()
            .map(|c| billing::client_item_size("scale", c, false))
            .collect();
        Self {
            full_lease_read: billing::query_read_units(leases.iter().copied()),
            client_rows_read: billing::query_read_units(clients.iter().copied()),
            lease_bytes: leases.iter().sum::<usize>() / leases.len().max(1),
            client_bytes: clients.iter().sum::<usize>() / clients.len().max(1),
        }
    }

    /// Read units per second on each partition key (changes, clients, leases) for these calls.
    fn units(&self, calls: &StoreStats, secs: f64) -> [f64; 3] {
        let per_s = |n: u64| n as f64 / secs;
        [
            per_s(calls.changes),
            per_s(calls.client) + per_s(calls.clients * self.client_rows_read),
            // The memory store counts pages (every full one, then the short one that ends the
            // read); DynamoDB bills a full read by its own pages.
            per_s(calls.leases) / (SHARDS / PAGE + 1) as f64 * self.full_lease_read as f64
                + per_s(calls.lease),
        ]
    }
}

/// On-demand prices (us-east-1, since November 2024), per million requests units.
const READ_UNIT_PRICE: f64 = 0.125;
const WRITE_UNIT_PRICE: f64 = 0.625;
const MONTH_SECS: f64 = 30.0 * 86_400.0;

/// One line on stderr: where a long run is (virtual time on tokio's clock).
fn progress(what: &str) {
    eprintln!("  P8: {what}");
}

/// Every figure of one run.
struct Scale {
    creates: u64,
    first_owned: Duration,
    balanced_in: Duration,
    idle_window: Duration,
    idle: StoreStats,
    /// The rows at the end of the idle window, as DynamoDB would bill reading them.
    dynamo: DynamoModel,
    idle_get_records: u64,
    restarts: usize,
    moves: usize,
    fewest_moves: usize,
    restart_took: Duration,
    /// The store calls during the restarts.
    restart_calls: StoreStats,
    produced: u64,
    delivered: usize,
    duplicates: u64,
}

fn delta(after: StoreStats, before: StoreStats) -> StoreStats {
    macro_rules! d {
        ($($f:ident),*) => { StoreStats { $($f: after.$f - before.$f,)* ..after } };
    }
    d!(
        heartbeat,
        clients,
        deregister,
        client,
        mark_dead,
        changes,
        announce,
        leases,
        lease,
        create_if_absent,
        take,
        checkpoint,
        release,
        finish,
        delete_finished,
        reset_checkpoint,
        replace_corrupt,
        items_read,
        injected_errors
    )
}

async fn run(quick: bool) -> Result<Scale> {
    let store = MemoryLeaseStore::new();
    store.set_faults(StoreFaults {
        latency: (MS * 5, MS * 5),
        leases_page: PAGE,
        ..StoreFaults::default()
    });
    let mut fleet = Fleet {
        stream: MemoryStream::new(STREAM, SHARDS),
        store,
        deliveries: Deliveries::default(),
        members: Vec::new(),
    };
    let result = measure(&mut fleet, quick).await;
    fleet.shutdown_all().await;
    result
}

async fn measure(fleet: &mut Fleet, quick: bool) -> Result<Scale> {
    // Cold start: every client at once, on a table without rows.
    let started = Instant::now();
    for n in 0..CLIENTS {
        fleet.start(format!("c{n:03}-0"), n as u64 + 1)?;
    }
    let first_owned = fleet
        .until(Duration::from_secs(60), "a first lease owned", |f| {
            f.held().iter().any(|&h| h > 0)
        })
        .await?;
    fleet
        .until(
            Duration::from_secs(300),
            "balanced after a cold start",
            Fleet::balanced,
        )
        .await?;
    let balanced_in = started.elapsed();
    let creates = fleet.store.stats().create_if_absent;
    progress(&format!(
        "cold start: {creates} creates, first lease at {first_owned:?}, balanced at {balanced_in:?}"
    ));

    // Idle: once the reads the cold start's announces asked for are done (they are paced: at
    // most 30 s apart), a window of whole heartbeat intervals.
    sleep(Duration::from_secs(40)).await;
    let window = Duration::from_secs(if quick { 30 } else { 100 });
    let (before, reads_before) = (fleet.store.stats(), fleet.stream.stats().get_records_calls);
    sleep(window).await;
    let idle = delta(fleet.store.stats(), before);
    let idle_get_records = fleet.stream.stats().get_records_calls - reads_before;
    let dynamo = DynamoModel::of(&fleet.store);
    progress("idle window measured");

    // Rolling restart with records flowing: each client in turn shut down gracefully, then
    // replaced by a new one (a new id, as a new pod), and the fleet balanced again.
    let restarts = if quick { 10 } else { CLIENTS };
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (stream, producing) = (fleet.stream.clone(), producing.clone());
        tokio::spawn(async move {
            let mut id: u64 = 0;
            while producing.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..20 {
                    let mut data = id.to_be_bytes().to_vec();
                    data.extend_from_slice(b" payload");
                    let _ = stream.put(&format!("key-{}", id % 65_537), data);
                    id += 1;
                }
                sleep(MS * 100).await;
            }
            id
        })
    };
    let history_from = fleet.store.history().len();
    let calls_before_restarts = fleet.store.stats();
    let restart_started = Instant::now();
    let mut fewest_moves = 0;
    for n in 0..restarts {
        let leaving = fleet.members.remove(0);
        let held: usize = fleet
            .store
            .peek_leases(STREAM)
            .iter()
            .filter(|l| l.owner.as_ref().is_some_and(|o| o.as_str() == leaving.id))
            .count();
        leaving.consumer.shutdown().await?;
        leaving.reader.abort();
        fleet.start(format!("c{n:03}-1"), 1_000 + n as u64)?;
        fleet
            .until(
                Duration::from_secs(120),
                "balanced after a restart",
                Fleet::balanced,
            )
            .await?;
        let joined_holds = fleet.held().last().copied().unwrap_or(0);
        if n % 10 == 9 {
            progress(&format!("{} restarts", n + 1));
        }
        // Its leases out (someone must read them while it is away), the newcomer's share in:
        // the fewest a stop-then-start restart moves, unless the newcomer takes a released
        // lease before its successor does (then one take does both).
        fewest_moves += held + joined_holds;
    }
    let restart_took = restart_started.elapsed();
    let restart_calls = delta(fleet.store.stats(), calls_before_restarts);
    producing.store(false, std::sync::atomic::Ordering::Relaxed);
    let produced = producer
        .await
        .map_err(|e| format!("the producer failed: {e}"))?;
    // Everything produced is delivered before the figures are read.
    let deliveries = fleet.deliveries.clone();
    fleet
        .until(
            Duration::from_secs(120),
            "every record delivered",
            move |_| deliveries.counts().0 as u64 >= produced,
        )
        .await?;
    let moves = fleet.store.history()[history_from..]
        .iter()
        .filter(|e| e.op == StoreOp::Take)
        .count();
    let (delivered, duplicates) = fleet.deliveries.counts();
    Ok(Scale {
        creates,
        first_owned,
        balanced_in,
        idle_window: window,
        idle,
        dynamo,
        idle_get_records,
        restarts,
        moves,
        fewest_moves,
        restart_took,
        restart_calls,
        produced,
        delivered,
        duplicates,
    })
}

const COLD_START_GOAL: &str = "≈ 1 create per row; balanced ≤ 30 s";

/// A cold start's row judged: rows created about once each, balanced within 30 s.
fn cold_start(row: Row, creates: u64, first_owned: Duration, balanced_in: Duration) -> Row {
    row.judged(
        format!(
            "{creates} creates ({:.2} per row); first lease owned at {:.1} s; balanced at {:.1} s",
            creates as f64 / SHARDS as f64,
            first_owned.as_secs_f64(),
            balanced_in.as_secs_f64()
        ),
        creates as f64 <= SHARDS as f64 * 1.1 && balanced_in <= Duration::from_secs(30),
        "more than 1.1 creates per row, or balanced after 30 s",
    )
}

pub(crate) async fn p8(args: &BenchArgs) -> Vec<Row> {
    let size = format!("{SHARDS} shards × {CLIENTS} clients");
    let setting = "memory store, 5 ms a call (virtual time)";
    let command = args.command("P8");
    let row = |measure: String, goal: &str| {
        Row::new("P8", format!("{measure}, {size}, {setting}"), goal).with_command(command.clone())
    };
    let quick = args.quick;
    let scale = match on_own_runtime(true, move || run(quick)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) | Err(e) => {
            return vec![row("scale".into(), "—").not_measured(format!("the run failed: {e}"))];
        }
    };
    let secs = scale.idle_window.as_secs_f64();
    let per_s = |n: u64| n as f64 / secs;
    let idle = &scale.idle;
    let writes = idle.writes();
    let items = per_s(idle.items_read);
    let get_records = per_s(scale.idle_get_records) / SHARDS as f64;
    let model = "every store call 5 ms; a read of every lease paged 1,000 rows a page";
    // What one membership change costs in reads: every client reads every lease about once.
    let restarts = scale.restarts.max(1) as f64;
    let restart_items = scale.restart_calls.items_read as f64 / restarts;
    let restart_full_reads =
        scale.restart_calls.leases as f64 / (SHARDS / PAGE + 1) as f64 / restarts / CLIENTS as f64;
    let restart_units = scale
        .dynamo
        .units(&scale.restart_calls, 1.0)
        .iter()
        .sum::<f64>()
        / restarts;
    vec![
        cold_start(
            row("cold start on no rows".into(), COLD_START_GOAL),
            scale.creates,
            scale.first_owned,
            scale.balanced_in,
        )
        .detail(format!(
            "{CLIENTS} consumers started at once on a `MemoryStream` of {SHARDS} shards and \
                 a store without rows; {model}; balanced = every shard owned, max − min ≤ 1"
        )),
        row(
            "idle store cost".into(),
            "≤ 60 writes/s; ≤ 2,000 items read/s",
        )
        .judged(
            format!(
                "{:.1} writes/s ({:.1} heartbeats/s); {:.0} items read/s",
                per_s(writes),
                per_s(idle.heartbeat),
                items
            ),
            per_s(writes) <= 60.0 && items <= 2_000.0,
            "above 60 writes/s or 2,000 items read/s",
        )
        .detail(format!(
            "the balanced fleet above, 40 s after balance (the reads the start's announces \
                 asked for are paced up to 30 s apart), counted over {secs:.0} s: changes \
                 {:.0}/s, client {:.0}/s, clients {:.2}/s, leases {:.2} pages/s, lease {:.2}/s, \
                 announce {:.2}/s",
            per_s(idle.changes),
            per_s(idle.client),
            per_s(idle.clients),
            per_s(idle.leases),
            per_s(idle.lease),
            per_s(idle.announce)
        )),
        {
            let [changes, clients, leases] = scale.dynamo.units(idle, secs);
            let total = changes + clients + leases;
            let hottest = changes.max(clients).max(leases);
            // Every write of these small items (< 1 KB) is one write unit.
            let write_units = per_s(writes);
            row(
                "idle read units on DynamoDB (model)".into(),
                "≤ 1,000 read units/s on any one partition key",
            )
            .judged(
                format!(
                    "{total:.0} RRU/s (changes key {changes:.0}, clients key {clients:.0}, \
                     leases key {leases:.0}); ${:.0}/month",
                    (total * READ_UNIT_PRICE + write_units * WRITE_UNIT_PRICE) * MONTH_SECS / 1e6
                ),
                hottest <= 1_000.0,
                "a partition key read above 1,000 units/s",
            )
            .detail(format!(
                "the idle window's calls billed as DynamoDB would bill the store's requests \
                 (kinsumer_dynamo::billing): a GetItem of the change counter or of a client row \
                 1 unit; a Query of the {} client rows (about {} B each) {} units; a Query of \
                 the {SHARDS} lease rows as they stand (about {} B each, paged by 1 MB) {} \
                 units. Monthly: read units at ${READ_UNIT_PRICE} and {write_units:.1} write \
                 units/s at ${WRITE_UNIT_PRICE} per million, on-demand (us-east-1 prices since \
                 November 2024)",
                CLIENTS,
                scale.dynamo.client_bytes,
                scale.dynamo.client_rows_read,
                scale.dynamo.lease_bytes,
                scale.dynamo.full_lease_read
            ))
        },
        row(
            "GetRecords per idle shard".into(),
            "≤ 1 read/s per caught-up shard",
        )
        .judged(
            format!("{get_records:.2} reads/s per shard"),
            get_records <= 1.0 + 1e-9,
            "a caught-up shard read more than once per idle_poll_interval",
        ),
        row(
            format!("rolling restart of {} clients", scale.restarts),
            "moves ≤ 1.1 × fewest; 0 duplicates",
        )
        .judged(
            format!(
                "{} moves ({:.2} × the fewest, {}); {} duplicates of {} records; {:.0} s",
                scale.moves,
                scale.moves as f64 / scale.fewest_moves.max(1) as f64,
                scale.fewest_moves,
                scale.duplicates,
                scale.produced,
                scale.restart_took.as_secs_f64()
            ),
            scale.moves as f64 <= scale.fewest_moves as f64 * 1.1
                && scale.duplicates == 0
                && scale.delivered as u64 >= scale.produced,
            "more moves than 1.1 × the fewest, a duplicate, or a record not delivered",
        )
        .detail(format!(
            "each client in turn shut down gracefully and replaced by a new one (a new id), \
             then the fleet balanced again before the next; 200 records/s written meanwhile. \
             Fewest moves for a stop-then-start restart: the leaver's leases out (each must \
             be taken by someone while it is away, or its shard stalls) plus the newcomer's \
             share in; fewer happen when the newcomer takes a released lease before its \
             successor does. {} distinct records delivered of {} produced. Store reads \
             per restart: {:.0} items ({:.1} reads of every lease per client), {:.0} DynamoDB \
             read units (model as above)",
            scale.delivered, scale.produced, restart_items, restart_full_reads, restart_units
        )),
    ]
}

/// CPU time this process has used, user and system, every thread (`/proc/self/stat`; Linux
/// only, `None` elsewhere).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, so split after its `)`): utime and
    // stime are the 12th and 13th, in clock ticks of 1/100 s (USER_HZ, fixed at 100 on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The cold start and idle figures of the fleet on a real store, in real time.
struct RealScale {
    creates: u64,
    first_owned: Duration,
    balanced_in: Duration,
    /// CPU time this process spent from the start to balance (every thread).
    start_cpu: Option<Duration>,
    window: Duration,
    calls: std::collections::BTreeMap<&'static str, u64>,
    client_rows: u64,
}

async fn real(backend: Backend, args: BenchArgs, quick: bool) -> Result<RealScale> {
    let app = unique("bench-scale");
    let store = services::open(backend, &args, &app, "", &MemoryLeaseStore::new()).await?;
    let counting = Counting::default();
    let store: Arc<dyn kinsumer::LeaseStore> =
        Arc::new(kinsumer::layer::Layered::new(store, counting.clone()));
    let stream: Arc<dyn kinsumer::ShardSource> = Arc::new(MemoryStream::new(STREAM, SHARDS));
    let mut members = Vec::new();
    let started = Instant::now();
    let cpu_at_start = process_cpu();
    for n in 0..CLIENTS {
        let mut config = Config::new(app.clone()).with_client_id(format!("c{n:03}"));
        config.rng_seed = Some(n as u64 + 1);
        members.push(start_acking(config, stream.clone(), store.clone()));
    }
    let result = async {
        let held = |members: &[(Consumer, JoinHandle<()>)]| -> Vec<usize> {
            members
                .iter()
                .map(|(c, _)| c.status().shards().len())
                .collect()
        };
        let mut first_owned = None;
        let mut told = Duration::ZERO;
        let balanced_in = loop {
            let h = held(&members);
            if std::env::var_os("KINSUMER_BENCH_TRACE").is_some() && started.elapsed() > told {
                told += Duration::from_secs(2);
                progress(&format!(
                    "{:?}: owned {}, min {:?}, max {:?}, calls {:?}",
                    started.elapsed(),
                    h.iter().sum::<usize>(),
                    h.iter().min(),
                    h.iter().max(),
                    counting.snapshot()
                ));
            }
            if first_owned.is_none() && h.iter().any(|&n| n > 0) {
                first_owned = Some(started.elapsed());
            }
            let (min, max) = (h.iter().min().copied(), h.iter().max().copied());
            if h.iter().sum::<usize>() == SHARDS
                && matches!((min, max), (Some(a), Some(b)) if b - a <= 1)
            {
                break started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!("not balanced within 300 s (min {min:?}, max {max:?})").into());
            }
            sleep(MS * 250).await;
        };
        let start_cpu = process_cpu()
            .zip(cpu_at_start)
            .map(|(now, then)| now.saturating_sub(then));
        progress(&format!(
            "{}: balanced at {balanced_in:?} ({start_cpu:?} of CPU)",
            backend.name()
        ));
        let creates = counting
            .snapshot()
            .get("create_if_absent")
            .copied()
            .unwrap_or(0);
        sleep(Duration::from_secs(40)).await;
        let window = Duration::from_secs(if quick { 30 } else { 60 });
        let before = counting.snapshot();
        let t = Instant::now();
        sleep(window).await;
        let after = counting.snapshot();
        let calls = after
            .iter()
            .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(RealScale {
            creates,
            first_owned: first_owned.unwrap_or_default(),
            balanced_in,
            start_cpu,
            window: t.elapsed(),
            calls,
            client_rows: CLIENTS as u64,
        })
    }
    .await;
    shut_down(members).await;
    result
}

/// P8's rows on Redis and PostgreSQL.
pub(crate) async fn p8_real(args: &BenchArgs) -> Vec<Row> {
    let mut rows = Vec::new();
    for backend in [Backend::Redis, Backend::Postgres] {
        let row = |measure: &str, goal: &str| {
            Row::new(
                "P8",
                format!(
                    "{measure}, {SHARDS} shards × {CLIENTS} clients, {} (real time)",
                    backend.name()
                ),
                goal,
            )
            .with_command(args.command("P8"))
        };
        if let Some(why) = backend.unreachable(args).await {
            rows.push(
                row("idle store cost", "≤ 60 writes/s; ≤ 2,000 items read/s").not_measured(why),
            );
            continue;
        }
        let r = match real(backend, args.clone(), args.quick).await {
            Ok(r) => r,
            Err(e) => {
                rows.push(
                    row("idle store cost", "≤ 60 writes/s; ≤ 2,000 items read/s")
                        .not_measured(format!("the run failed: {e}")),
                );
                continue;
            }
        };
        let secs = r.window.as_secs_f64();
        let get = |k: &str| r.calls.get(k).copied().unwrap_or(0);
        let writes: u64 = r
            .calls
            .iter()
            .filter(|(k, _)| WRITES.contains(k))
            .map(|(_, v)| v)
            .sum();
        let items = get("changes")
            + get("client")
            + get("lease")
            + get("clients") * r.client_rows
            + get("leases") * SHARDS as u64;
        let per_s = |n: u64| n as f64 / secs;
        rows.push(
            cold_start(
                row("cold start on no rows", COLD_START_GOAL),
                r.creates,
                r.first_owned,
                r.balanced_in,
            )
            .detail(format!(
                "{CLIENTS} consumers started at once in this one process (on this machine's \
                 cores), sharing one store client, on a `MemoryStream` of {SHARDS} shards and \
                 an application without rows; the process used {} of CPU from the start to \
                 balance ({} of {} cores busy on average)",
                r.start_cpu
                    .map_or("?".into(), |c| format!("{:.1} s", c.as_secs_f64())),
                r.start_cpu.map_or("?".into(), |c| format!(
                    "{:.2}",
                    c.as_secs_f64() / r.balanced_in.as_secs_f64()
                )),
                std::thread::available_parallelism().map_or(1, |n| n.get())
            )),
        );
        rows.push(
            row("idle store cost", "≤ 60 writes/s; ≤ 2,000 items read/s")
                .judged(
                    format!(
                        "{:.1} writes/s ({:.1} heartbeats/s); {:.0} items read/s",
                        per_s(writes),
                        per_s(get("heartbeat")),
                        per_s(items)
                    ),
                    per_s(writes) <= 60.0 && per_s(items) <= 2_000.0,
                    "above 60 writes/s or 2,000 items read/s",
                )
                .detail(format!(
                    "{CLIENTS} consumers sharing one store client, 40 s after balance, every call \
                     on the `LeaseStore` seam counted over {secs:.0} s; items read = the calls × \
                     the rows each returns. Calls: {}",
                    r.calls
                        .iter()
                        .map(|(k, v)| format!("{k} {:.2}/s", per_s(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
        );
    }
    rows
}
