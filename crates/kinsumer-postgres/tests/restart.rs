//! Fault test: PostgreSQL is killed and restarted while a fleet runs; the consumers recover by
//! themselves and every produced record is acked. Uses a private instance, never the shared one.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinsumer_core::{Config, Consumer, ShardBatch};
use kinsumer_postgres::{PgLeaseStore, PgStoreConfig};
use kinsumer_testkit::MemoryStream;
use tokio::time::{Instant, sleep};

use common::private_pg::PrivatePg;

fn config(client: &str) -> Config {
    let mut c = common::fast_config("restart", client);
    c.max_backoff = Duration::from_millis(500);
    c.poll_interval = Duration::from_millis(50);
    c
}

fn acked(set: &Mutex<BTreeSet<u64>>) -> BTreeSet<u64> {
    set.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_recover_from_a_server_restart_and_lose_nothing() {
    // The shared server is not used, but a missing PostgreSQL must fail under CI like elsewhere.
    if common::url().is_none() {
        return;
    }
    let Some(pg) = PrivatePg::start() else { return };
    let url = pg.url();

    let stream = MemoryStream::new("orders", 6);
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut fleet = Vec::new();
    for client in ["a", "b", "c"] {
        let store_config = PgStoreConfig {
            statement_timeout: Duration::from_secs(1),
            acquire_timeout: Duration::from_millis(500),
            retry_backoff: Duration::from_millis(50),
            ..PgStoreConfig::new(&url, "restart")
        };
        let store = PgLeaseStore::connect(store_config).await.expect("connect");
        let consumer = Consumer::new(config(client), stream.clone(), store).expect("consumer");
        let shutdown = consumer.shutdown_handle();
        let seen = seen.clone();
        let handler = move |batch: ShardBatch| {
            let ids: Vec<u64> = batch
                .records
                .iter()
                .filter_map(|r| std::str::from_utf8(&r.data).ok()?.parse().ok())
                .collect();
            seen.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
            async { Ok(()) }
        };
        fleet.push((shutdown, tokio::spawn(consumer.run(handler))));
    }

    // Produce for ~6 s; kill the server at ~2 s, bring it back 3 s later (longer than the
    // lease TTL: every client self-fences and must come back on its own).
    let produced = {
        let stream = stream.clone();
        tokio::spawn(async move {
            let mut next = 0u64;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(6) {
                for _ in 0..10 {
                    stream
                        .put(&format!("key-{next}"), next.to_string())
                        .expect("put");
                    next += 1;
                }
                sleep(Duration::from_millis(50)).await;
            }
            next
        })
    };
    sleep(Duration::from_secs(2)).await;
    let before = acked(&seen).len();
    pg.kill();
    println!("server killed with {before} records acked");
    sleep(Duration::from_secs(3)).await;
    pg.up();
    println!("server restarted with {} records acked", acked(&seen).len());
    let produced = produced.await.expect("producer");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = acked(&seen);
        if (0..produced).all(|id| got.contains(&id)) {
            break;
        }
        for (_, task) in &fleet {
            assert!(
                !task.is_finished(),
                "a consumer stopped instead of recovering"
            );
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {produced} records acked after the restart",
            got.len()
        );
        sleep(Duration::from_millis(100)).await;
    }
    println!("all {produced} records acked after the restart");
    for (shutdown, task) in fleet {
        shutdown.shutdown();
        task.await.expect("join").expect("consumer stops cleanly");
    }
}
