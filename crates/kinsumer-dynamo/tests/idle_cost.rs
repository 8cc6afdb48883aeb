//! What an idle fleet costs DynamoDB: 10 clients × 1,000 shards (a `MemoryStream`: the
//! Kinesis emulator is too slow for that many), each client with its own store on one moto
//! table, counted by the stores' own counters (moto has no server-side ones). Idle writes are
//! one heartbeat per client per `heartbeat_interval`, whatever the shard count; reads are the
//! membership polls (`clients()`) and the periodic full lease reads (`leases()`). On moto (one
//! Python process, ~0.4 s to serve a 1,000-item Query) the reads are bounded by moto's speed,
//! not by what the engine asks for: the engine paces its full reads by their duration.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use kinsumer_core::{Config, LeaseStore, ShardSource};
use kinsumer_dynamo::aws_sdk_dynamodb::Client;
use kinsumer_dynamo::{DynamoConfig, DynamoLeaseStore, DynamoStats};
use kinsumer_test_env::fleet::wait_until_balanced;
use kinsumer_testkit::MemoryStream;
use kinsumer_testkit::conformance::fleet::start_acking;
use tokio::time::sleep;

const CLIENTS: usize = 10;
const SHARDS: usize = 1_000;
const WINDOW: Duration = Duration::from_secs(10);

/// A store of its own for application "idle" on `table`, which the first one opened creates.
/// Its requests wait up to 20 s: ten clients reading 1,000 leases keep moto (one Python
/// process) busy enough that a reply can take longer than the default 5 s, and a timed-out
/// open fails this test without saying anything about what it measures.
async fn open_store(client: &Client, table: &str) -> DynamoLeaseStore {
    let config = DynamoConfig::new("idle")
        .with_table(table)
        .with_attempt_timeout(Duration::from_secs(20))
        .create_table_if_missing(true);
    DynamoLeaseStore::open(client.clone(), config)
        .await
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_store_cost_of_10_clients_and_1000_leases() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let client = common::client(&endpoint);
    let table = common::unique_table("idle");
    let stream = MemoryStream::new("idle", SHARDS);
    let config = Config::new("idle"); // the defaults: heartbeat 2 s, membership poll 200 ms, ...
    let heartbeat = config.heartbeat_interval;

    // Set-up, not measured: the 1,000 lease rows, written 16 at a time (otherwise all ten
    // clients race to create them, which moto, one Python process, serves slowly).
    let setup = open_store(&client, &table).await;
    let shards: Vec<_> = stream
        .list_shards()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    futures::stream::iter(
        shards
            .iter()
            .map(|id| setup.create_if_absent("idle", id, &[])),
    )
    .buffer_unordered(16)
    .for_each(|r| async move {
        r.expect("create_if_absent");
    })
    .await;

    let mut fleet = Vec::new();
    let mut stores = Vec::new();
    for n in 0..CLIENTS {
        let store = open_store(&client, &table).await;
        stores.push(store.clone());
        let config = config.clone().with_client_id(format!("client-{n}"));
        fleet.push(start_acking(config, stream.clone(), store));
    }
    let total = |stores: &[DynamoLeaseStore]| {
        stores
            .iter()
            .fold(DynamoStats::default(), |acc, s| acc.plus(&s.stats()))
    };

    // Settle: every lease taken and balanced, then a little longer.
    let settled_in = wait_until_balanced(
        fleet.iter().map(|(c, _)| c),
        SHARDS,
        Duration::from_secs(240),
    )
    .await;
    let settle_cost = total(&stores);
    sleep(Duration::from_secs(3)).await;

    let before = total(&stores);
    let window_start = Instant::now();
    sleep(WINDOW).await;
    let d = total(&stores).since(&before);
    let secs = window_start.elapsed().as_secs_f64();
    let per_s = |n: u64| n as f64 / secs;
    let expected_writes = CLIENTS as f64 / heartbeat.as_secs_f64();

    println!(
        "idle cost, {CLIENTS} clients x {SHARDS} leases, default intervals (heartbeat \
         {heartbeat:?}, membership poll 200 ms, lease read 5 s or paced), settled in {:.1} s \
         ({} requests: {} creates, {} takes), measured over {secs:.1} s:",
        settled_in.as_secs_f64(),
        settle_cost.requests(),
        settle_cost.create_if_absent,
        settle_cost.take,
    );
    println!("  requests/s total  {:8.1}", per_s(d.requests()));
    println!(
        "  writes/s          {:8.1}   (heartbeats {:.1}/s, lease writes {:.1}/s, expected {expected_writes:.1}/s)",
        per_s(d.writes()),
        per_s(d.heartbeat),
        per_s(d.writes() - d.heartbeat)
    );
    println!(
        "  reads/s           {:8.1}   (GetItem of the change counter {:.1}/s, of a watched client {:.1}/s, of a lease {:.1}/s; Query pages of clients() {:.1}/s, of leases() {:.1}/s)",
        per_s(d.reads()),
        per_s(d.changes),
        per_s(d.client),
        per_s(d.lease + d.rereads),
        per_s(d.clients),
        per_s(d.leases)
    );
    println!("  items read/s      {:8.0}", per_s(d.items_read));
    println!(
        "  read units/s      {:8.1}   (strongly consistent: 4 KB a unit per request or page, at \
         least 1; ${:.2} a month at $0.125 per million)",
        per_s(d.read_units),
        per_s(d.read_units) * 30.0 * 86_400.0 * 0.125 / 1e6
    );
    println!("  window counters: {d:?}");

    // Idle writes are the heartbeats and nothing else: one per client per interval.
    assert_eq!(d.writes() - d.heartbeat, 0, "lease writes in an idle fleet");
    let rate = per_s(d.heartbeat);
    assert!(
        (expected_writes * 0.8..=expected_writes * 1.2).contains(&rate),
        "heartbeats {rate:.2}/s, expected {expected_writes:.2}/s"
    );
    assert!(per_s(d.writes()) <= 5.0 * 1.2, "goal: ≤ 5 writes/s total");
    // Every read request is billed at least one unit, and the store counted them.
    assert!(
        d.read_units >= d.reads(),
        "read units {} for {} reads",
        d.read_units,
        d.reads()
    );

    for (consumer, reader) in fleet {
        consumer.shutdown().await.expect("clean shutdown");
        reader.await.expect("reader");
    }
    common::drop_table(&client, &table).await;
}
