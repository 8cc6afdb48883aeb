//! The end-to-end check: a fleet of three consumers over one source and one store, through a
//! crash and a graceful leave, with every delivery logged and judged afterwards.
//!
//! 1. `a`, `b` and `c` start; batch 1 is written and delivered.
//! 2. After a quiet spell longer than the duplicate window, batch 2 is written; once it is
//!    delivered, `c` is aborted — a crash: no commit, no release — and
//!    batch 3 is written. `a` and `b` take `c`'s shards after its lease expires.
//! 3. `b` shuts down gracefully (drains, commits, releases) and batch 4 is written; `a` takes
//!    over at once and reads it.
//!
//! Judged: every record delivered; per partition key, first deliveries in the order written;
//! a record delivered twice was first delivered by the crashed `c`, no earlier than the
//! duplicate window before the crash (the records acked since its last commit), and again only
//! after the crash; nothing `b` delivered is delivered again after its graceful leave.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use kinsumer_core::source::ShardSource;
use kinsumer_core::store::LeaseStore;
use kinsumer_core::{Config, Consumer, Records};

use super::StreamAdmin;

/// Partition keys written per batch.
const KEYS: usize = 20;
/// Records per key per batch.
const PER_KEY: usize = 8;
/// How long each wait for deliveries may take before the check fails.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// The fleet's configuration for `client`: short intervals, so a crash is noticed in seconds.
pub fn fleet_config(application: &str, client: &str) -> Config {
    let mut c = Config::new(application).with_client_id(client);
    c.heartbeat_interval = Duration::from_millis(500);
    c.lease_ttl = Duration::from_secs(3);
    c.safety_margin = Duration::from_millis(500);
    c.commit_interval = Duration::from_millis(250);
    c.poll_interval = Duration::from_millis(100);
    c.membership_poll_interval = Duration::from_millis(100);
    c.rebalance_interval = Duration::from_secs(1);
    c.shard_sync_interval = Duration::from_secs(1);
    c.call_timeout = Duration::from_secs(3);
    c
}

/// Starts a consumer that acks every record it is handed, as a production fleet drains its
/// stream, and returns it with the task reading its records (which ends at shutdown). For
/// fleets whose cost or balance is measured, not their deliveries.
pub fn start_acking(
    config: Config,
    source: impl ShardSource,
    store: impl LeaseStore,
) -> (Consumer, tokio::task::JoinHandle<()>) {
    let mut consumer =
        Consumer::new(config, source, store).expect("start_acking: the configuration is valid");
    let mut records = consumer
        .records()
        .expect("start_acking: a new consumer hands out its records");
    let reader = tokio::spawn(async move {
        while let Some(Ok(record)) = records.next().await {
            record.ack();
        }
    });
    (consumer, reader)
}

/// One delivery, as the handler saw it.
#[derive(Clone, Debug)]
struct Delivery {
    consumer: &'static str,
    data: String,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Delivery>>>;

/// What [`consumer_fleet`] measured, for the caller to print or report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetReport {
    /// Records written (each delivered at least once).
    pub records: usize,
    /// Deliveries in all (records + duplicates).
    pub deliveries: usize,
    /// Records delivered more than once (all of them re-deliveries after the crash).
    pub duplicates: usize,
    /// The duplicate window: the records acked in this span before the crash may come again.
    pub duplicate_window: Duration,
}

/// Runs the fleet check (see the [module docs](self)) with `source` and `store`, which must be
/// fresh for application `application`; `admin` writes to the same stream. Use a stream of a
/// few shards (2–8). Panics with a message naming the broken rule.
pub async fn consumer_fleet<S, St>(
    source: S,
    admin: &dyn StreamAdmin,
    store: St,
    application: &str,
) -> FleetReport
where
    S: ShardSource + Clone,
    St: LeaseStore + Clone,
{
    consumer_fleet_with(source, admin, store, application, |c| c).await
}

/// [`consumer_fleet`] with each consumer's [`fleet_config`] passed through `configure` first
/// (to show that the check catches a broken engine).
pub async fn consumer_fleet_with<S, St>(
    source: S,
    admin: &dyn StreamAdmin,
    store: St,
    application: &str,
    configure: impl Fn(Config) -> Config,
) -> FleetReport
where
    S: ShardSource + Clone,
    St: LeaseStore + Clone,
{
    let log: Log = Arc::default();
    let start = |id: &'static str| {
        let mut consumer = Consumer::new(
            configure(fleet_config(application, id)),
            source.clone(),
            store.clone(),
        )
        .expect("consumer_fleet: the fleet's configuration is valid");
        let records = consumer
            .records()
            .expect("consumer_fleet: a new consumer hands out its records");
        let task = tokio::spawn(collect(id, records, log.clone()));
        (consumer, task)
    };
    let config = configure(fleet_config(application, "window"));
    // Acks since the last commit come again after a crash: the commit in flight at the crash
    // and the one before may each take up to `call_timeout`.
    let duplicate_window = config.commit_interval + config.call_timeout * 2;

    let (a, a_task) = start("a");
    let (b, b_task) = start("b");
    let (c, c_task) = start("c");

    write_batch(admin, 0).await;
    wait_for_all(&log, 1, "batch 1, three consumers").await;
    // Quiet longer than the window: batch 1 must never come again.
    tokio::time::sleep(duplicate_window + Duration::from_secs(1)).await;

    write_batch(admin, 1).await;
    wait_for_all(&log, 2, "batch 2, three consumers").await;
    let crash_at = Instant::now();
    c.abort();
    c_task.abort();
    let _ = c_task.await;

    write_batch(admin, 2).await;
    wait_for_all(&log, 3, "batch 3, after c crashed").await;

    b.shutdown()
        .await
        .expect("consumer_fleet: b leaves gracefully");
    let _ = b_task.await;
    let left_at = Instant::now();

    write_batch(admin, 3).await;
    wait_for_all(&log, 4, "batch 4, after b left").await;
    a.shutdown()
        .await
        .expect("consumer_fleet: a shuts down cleanly");
    let _ = a_task.await;

    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    judge(&log, crash_at, left_at, duplicate_window)
}

/// Applies the rules of the module docs to the log.
fn judge(
    log: &[Delivery],
    crash_at: Instant,
    left_at: Instant,
    duplicate_window: Duration,
) -> FleetReport {
    let mut by_record: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for d in log {
        by_record.entry(d.data.as_str()).or_default().push(d);
    }
    let records = KEYS * PER_KEY * 4;
    for batch in 0..4 {
        for (key, n) in payloads(batch) {
            let data = format!("{key}:{n:04}");
            assert!(
                by_record.contains_key(data.as_str()),
                "consumer_fleet [every record delivered]: {data} was never delivered"
            );
        }
    }
    assert_eq!(
        by_record.len(),
        records,
        "consumer_fleet [nothing unexpected delivered]"
    );

    let mut duplicates = 0;
    for (data, deliveries) in &by_record {
        if deliveries.len() > 1 {
            duplicates += 1;
            let first = deliveries[0];
            assert_eq!(
                first.consumer, "c",
                "consumer_fleet [duplicates only after the crash]: {data} was delivered by {} and again by {}",
                first.consumer, deliveries[1].consumer
            );
            assert!(
                first.at + duplicate_window >= crash_at,
                "consumer_fleet [duplicates bounded by the commit interval]: {data} was acked {:?} before the crash, outside the {duplicate_window:?} window, and came again",
                crash_at - first.at
            );
            for again in &deliveries[1..] {
                assert!(
                    again.at >= crash_at,
                    "consumer_fleet [duplicates only after the crash]: {data} came twice before it"
                );
            }
        }
        if let Some(by_b) = deliveries.iter().position(|d| d.consumer == "b") {
            let later: Vec<_> = deliveries[by_b + 1..]
                .iter()
                .filter(|d| d.at >= left_at)
                .collect();
            assert!(
                later.is_empty(),
                "consumer_fleet [a graceful leave duplicates nothing]: {data}, delivered by b, came again from {} after b left",
                later[0].consumer
            );
        }
    }

    // Per key, first deliveries come in the order written (also across the takeovers).
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for d in log {
        if !seen.insert(d.data.as_str()) {
            continue;
        }
        let (key, counter) = d.data.split_once(':').expect("key:counter");
        if let Some(prev) = last.insert(key, counter) {
            assert!(
                prev < counter,
                "consumer_fleet [per-key order]: {key}:{counter} first delivered after {key}:{prev}"
            );
        }
    }

    FleetReport {
        records,
        deliveries: log.len(),
        duplicates,
        duplicate_window,
    }
}

/// Batch `batch`'s `(partition key, counter)` pairs, in the order they are written.
fn payloads(batch: usize) -> impl Iterator<Item = (String, usize)> {
    (batch * PER_KEY..(batch + 1) * PER_KEY)
        .flat_map(|n| (0..KEYS).map(move |k| (format!("key-{k:02}"), n)))
}

async fn write_batch(admin: &dyn StreamAdmin, batch: usize) {
    for (key, n) in payloads(batch) {
        let data = format!("{key}:{n:04}");
        admin
            .put(&key, data.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("consumer_fleet: writing {data}: {e}"));
    }
}

/// Drains `records`, logging and acking each record at once.
async fn collect(consumer: &'static str, mut records: Records, log: Log) {
    while let Some(Ok(record)) = records.next().await {
        let data = String::from_utf8_lossy(record.data()).into_owned();
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Delivery {
                consumer,
                data,
                at: Instant::now(),
            });
        record.ack();
    }
}

/// Waits until every record of the first `batches` batches was delivered.
async fn wait_for_all(log: &Log, batches: usize, what: &str) {
    let wanted = KEYS * PER_KEY * batches;
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let distinct = {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.iter()
                .map(|d| d.data.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        if distinct >= wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumer_fleet [every record delivered]: {what}: {distinct} of {wanted} records delivered after {WAIT_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
