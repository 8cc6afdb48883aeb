//! A consumer fleet on Redis keeps going across `kill -9` and a restart of the server (AOF on,
//! `appendfsync always`), on its own, and loses no record.
//!
//! The server is a private `redis-server` child on a free port (never the shared one on 6379,
//! which other tests use at the same time), killed when the test ends.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kinsumer_core::{Config, Consumer};
use kinsumer_redis::RedisLeaseStore;
use kinsumer_testkit::MemoryStream;
use tokio::time::sleep;

const SHARDS: usize = 4;
const RECORDS: u64 = 1_200;

fn config(app: &str, client: &str) -> Config {
    let mut c = Config::new(app).with_client_id(client);
    c.heartbeat_interval = Duration::from_millis(200);
    c.lease_ttl = Duration::from_secs(2);
    c.safety_margin = Duration::from_millis(400);
    c.membership_poll_interval = Duration::from_millis(100);
    c.rebalance_interval = Duration::from_secs(1);
    c.commit_interval = Duration::from_millis(200);
    c.poll_interval = Duration::from_millis(50);
    c.call_timeout = Duration::from_secs(1);
    c.drain_timeout = Duration::from_secs(1);
    c.max_backoff = Duration::from_secs(1);
    c
}

fn id_of(data: &[u8]) -> u64 {
    data.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(u64::MAX, u64::from_be_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_survives_a_redis_restart_and_loses_no_record() {
    // The shared server tells whether Redis is installed here at all (skip, or fail under CI).
    if common::redis_url().is_none() {
        return;
    }
    let mut server =
        common::PrivateRedis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = server.url();
    let app = common::unique_app("restart");
    let stream = MemoryStream::new("events", SHARDS);

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut fleet = Vec::new();
    for id in ["c1", "c2", "c3"] {
        let store = RedisLeaseStore::connect(&url, &app).await.expect("connect");
        let mut consumer =
            Consumer::new(config(&app, id), stream.clone(), store).expect("valid config");
        let mut records = consumer.records().expect("start");
        let (acked, errors) = (acked.clone(), errors.clone());
        let reader = tokio::spawn(async move {
            while let Some(record) = records.next().await {
                match record {
                    Ok(record) => {
                        acked.lock().expect("lock").insert(id_of(record.data()));
                        record.ack();
                    }
                    Err(err) => errors.lock().expect("lock").push(format!("{id}: {err}")),
                }
            }
        });
        fleet.push((consumer, reader));
    }

    // Produce for ~6 s, 200 records/s, while Redis is killed at ~2 s and restarted at ~4.5 s.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (stream, producing) = (stream.clone(), producing.clone());
        tokio::spawn(async move {
            for i in 0..RECORDS {
                stream
                    .put(&format!("key-{}", i % 17), i.to_be_bytes().to_vec())
                    .expect("put");
                if i % 20 == 19 {
                    sleep(Duration::from_millis(100)).await;
                }
            }
            producing.store(false, Ordering::SeqCst);
        })
    };
    sleep(Duration::from_secs(2)).await;
    let before_kill = acked.lock().expect("lock").len();
    tokio::task::block_in_place(|| server.kill());
    // Down longer than lease_ttl - safety_margin: every client self-fences and must retake.
    sleep(Duration::from_millis(2_500)).await;
    tokio::task::block_in_place(|| server.restart());
    let restarted = Instant::now();
    producer.await.expect("producer");
    assert!(!producing.load(Ordering::SeqCst));

    // Every record produced is acked at least once, with nobody's help.
    let deadline = Instant::now() + Duration::from_secs(40);
    let missing = loop {
        let missing: Vec<u64> = {
            let acked = acked.lock().expect("lock");
            (0..RECORDS).filter(|i| !acked.contains(i)).collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        sleep(Duration::from_millis(100)).await;
    };
    let recovered_in = restarted.elapsed();
    assert!(
        missing.is_empty(),
        "{} records never acked (first: {:?}); errors: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        errors.lock().expect("lock")
    );

    // And the fleet holds every shard again, balanced.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let held: Vec<usize> = fleet
            .iter()
            .map(|(c, _)| c.status().shards().len())
            .collect();
        if held.iter().sum::<usize>() == SHARDS && held.iter().all(|&n| n >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shards held after restart: {held:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
    println!(
        "restart: {before_kill} records acked before kill -9; all {RECORDS} acked {:.1} s after \
         the restart (the producer ran until about then)",
        recovered_in.as_secs_f64()
    );
    assert!(
        errors.lock().expect("lock").is_empty(),
        "a consumer stopped: {:?}",
        errors.lock().expect("lock")
    );

    for (consumer, reader) in fleet {
        tokio::time::timeout(Duration::from_secs(10), consumer.shutdown())
            .await
            .expect("shutdown in time")
            .expect("clean shutdown");
        reader.await.expect("reader");
    }
    // Graceful shutdown released every lease and deregistered every client, on the
    // restarted server.
    let store = RedisLeaseStore::connect(&url, &app).await.expect("connect");
    use kinsumer_core::store::LeaseStore;
    assert!(store.clients().await.expect("clients").rows.is_empty());
    let leases = store.leases("events").await.expect("leases").rows;
    assert_eq!(leases.len(), SHARDS);
    assert!(
        leases
            .iter()
            .all(|l| l.owner.is_none() && l.checkpoint.is_some()),
        "{leases:?}"
    );
    // Every client self-fenced during the outage and took its leases again afterwards: the
    // tokens kept on disk grew past the first tenure.
    assert!(leases.iter().all(|l| l.token >= 2), "{leases:?}");
}
