//! Store cost of an idle fleet: 10 clients × 1,000 leases, measured from the store's own
//! statement counters and from the server's counters of a dedicated database. Idle writes must
//! stay at about clients / heartbeat_interval: they must not grow with the number of shards.

mod common;

use std::time::Duration;

use kinsumer_core::{Config, Consumer, ShardBatch};
use kinsumer_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use kinsumer_postgres::{PgLeaseStore, PgStoreConfig, PgStoreStats};
use kinsumer_testkit::MemoryStream;
use tokio::time::{Instant, sleep};

const CLIENTS: usize = 10;
const SHARDS: usize = 1_000;
const HEARTBEAT: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(10);

fn config(client: &str) -> Config {
    let mut c = Config::new("idle").with_client_id(client);
    c.heartbeat_interval = HEARTBEAT;
    c.lease_ttl = Duration::from_secs(4);
    c.safety_margin = Duration::from_secs(1);
    c.poll_interval = Duration::from_secs(1); // spare the CPU: 1,000 in-memory readers
    c.call_timeout = Duration::from_secs(5);
    c
}

/// (transactions committed, rows inserted + updated + deleted) of database `db`.
async fn server_counters(admin: &PgPool, db: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted \
         FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .expect("pg_stat_database")
}

fn sum(stores: &[PgLeaseStore]) -> PgStoreStats {
    stores
        .iter()
        .map(PgLeaseStore::stats)
        .fold(PgStoreStats::default(), |a, s| PgStoreStats {
            reads: a.reads + s.reads,
            writes: a.writes + s.writes,
            retries: a.retries + s.retries,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_fleet_writes_grow_with_clients_not_shards() {
    let Some(url) = common::url() else { return };
    // A dedicated database, so the server's counters are this fleet's alone.
    let admin = common::store(&url, &common::unique_schema("idle_admin"), "admin").await;
    let db = common::unique_schema("idle_db");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(admin.pool())
        .await
        .expect("create database");
    let base = url.split('?').next().unwrap_or(&url);
    let db_url = match base.rsplit_once('/') {
        Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
            format!("{server}/{db}")
        }
        _ => format!("{}/{db}", base.trim_end_matches('/')),
    };

    let stream = MemoryStream::new("idle", SHARDS);
    let mut stores = Vec::new();
    let mut fleet = Vec::new();
    for i in 0..CLIENTS {
        let store_config = PgStoreConfig {
            max_connections: 3,
            ..PgStoreConfig::new(&db_url, "idle")
        };
        let store = PgLeaseStore::connect(store_config).await.expect("connect");
        stores.push(store.clone());
        let consumer =
            Consumer::new(config(&format!("client-{i}")), stream.clone(), store).expect("consumer");
        let (shutdown, status) = (consumer.shutdown_handle(), consumer.status());
        let handler = |_batch: ShardBatch| async { Ok(()) };
        fleet.push((shutdown, status, tokio::spawn(consumer.run(handler))));
    }

    // Settle: every shard held, the balance reached, no take for a while.
    let start = Instant::now();
    let mut stable_since = Instant::now();
    let mut last = Vec::new();
    loop {
        let held: Vec<usize> = fleet.iter().map(|(_, s, _)| s.shards().len()).collect();
        if held != last {
            last = held.clone();
            stable_since = Instant::now();
        }
        let total: usize = held.iter().sum();
        let balanced = held.iter().all(|&n| n.abs_diff(SHARDS / CLIENTS) <= 1);
        if total == SHARDS && balanced && stable_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the fleet did not settle: held {held:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
    let settle = start.elapsed();
    sleep(Duration::from_secs(2)).await; // past the server's ~1 s stats flush delay

    let (s0, (x0, t0), w0) = (
        sum(&stores),
        server_counters(admin.pool(), &db).await,
        Instant::now(),
    );
    sleep(WINDOW).await;
    let (s1, (x1, t1), secs) = (
        sum(&stores),
        server_counters(admin.pool(), &db).await,
        w0.elapsed().as_secs_f64(),
    );
    let reads = (s1.reads - s0.reads) as f64 / secs;
    let writes = (s1.writes - s0.writes) as f64 / secs;
    let xacts = (x1 - x0) as f64 / secs;
    let rows = (t1 - t0) as f64 / secs;
    let expected = CLIENTS as f64 / HEARTBEAT.as_secs_f64();
    println!(
        "idle fleet: {CLIENTS} clients x {SHARDS} leases (heartbeat {HEARTBEAT:?}), settled in \
         {settle:.1?}; over {secs:.1} s:\n  \
         store counters: {reads:.1} reads/s + {writes:.1} writes/s = {:.1} statements/s \
         ({} retries)\n  \
         server counters: {xacts:.1} transactions/s, {rows:.1} rows written/s\n  \
         expected writes: about {expected:.1}/s (clients / heartbeat_interval)",
        reads + writes,
        s1.retries - s0.retries,
    );

    for (shutdown, _, task) in fleet {
        shutdown.shutdown();
        task.await.expect("join").expect("consumer stops cleanly");
    }
    for store in &stores {
        store.pool().close().await;
    }
    let drop_db = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
    if let Err(e) = sqlx::query(AssertSqlSafe(drop_db))
        .execute(admin.pool())
        .await
    {
        eprintln!("could not drop database {db}: {e}");
    }
    common::drop_schema(admin.pool(), admin.schema()).await;

    assert!(
        writes <= expected * 1.5 + 1.0,
        "idle writes {writes:.1}/s exceed clients/heartbeat ({expected:.1}/s): they must not \
         grow with shards"
    );
    assert!(
        rows <= expected * 2.0 + 2.0,
        "the server saw {rows:.1} rows written/s while idle (expected about {expected:.1}/s)"
    );
    assert!(
        writes >= expected * 0.5,
        "heartbeats stalled: {writes:.1}/s"
    );
}
