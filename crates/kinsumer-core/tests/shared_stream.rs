//! Two applications on one stream share each shard's read budget: 5 reads a second, enforced
//! by `MemoryStream` over every reader of a shard, as Kinesis does. A consumer reads a shard
//! that is behind every `poll_interval` (200 ms: the whole budget) and a caught-up one every
//! `idle_poll_interval` (1 s), so once both applications caught up neither is throttled.
//!
//! Under the paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kinsumer_core::{Config, Consumer};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
use tokio::time::sleep;

/// A consumer of `app` that acks every record and counts it.
fn start(
    app: &str,
    client: &str,
    stream: &MemoryStream,
    store: &MemoryLeaseStore,
) -> (Consumer, Arc<AtomicUsize>) {
    let mut config = Config::new(app).with_client_id(client);
    config.rng_seed = Some(u64::from(client.as_bytes()[0]));
    let mut consumer =
        Consumer::new(config, stream.clone(), store.clone()).expect("a valid configuration");
    let mut records = consumer.records().expect("records");
    let delivered = Arc::new(AtomicUsize::new(0));
    let count = delivered.clone();
    tokio::spawn(async move {
        while let Some(Ok(record)) = records.next().await {
            count.fetch_add(1, Ordering::Relaxed);
            record.ack();
        }
    });
    (consumer, delivered)
}

#[tokio::test(start_paused = true)]
async fn two_applications_on_one_stream_are_not_throttled_once_caught_up() {
    let stream = MemoryStream::new("shared", 4);
    // A store per application, as each application has its own lease table.
    let (orders, audit) = (MemoryLeaseStore::new(), MemoryLeaseStore::new());
    // A backlog to catch up on, then a record every 100 ms for two minutes.
    for i in 0..2_000 {
        stream.put(&format!("k{i}"), "backlog").expect("put");
    }
    let producer = {
        let stream = stream.clone();
        tokio::spawn(async move {
            for i in 0..1_200 {
                stream.put(&format!("k{i}"), "live").expect("put");
                sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let fleet = [
        start("orders", "a", &stream, &orders),
        start("orders", "b", &stream, &orders),
        start("audit", "c", &stream, &audit),
        start("audit", "d", &stream, &audit),
    ];
    sleep(Duration::from_secs(30)).await;
    let before = stream.stats();
    sleep(Duration::from_secs(60)).await;
    let after = stream.stats();
    let reads = after.get_records_calls - before.get_records_calls;
    println!(
        "over 60 s at steady state: {reads} reads of 4 shards by two applications, {} throttled \
         (during the catch-up: {})",
        after.throttled - before.throttled,
        before.throttled
    );
    assert_eq!(
        after.throttled - before.throttled,
        0,
        "no read throttled at steady state"
    );
    // Each application reads each caught-up shard about once a second.
    assert!(
        (400..=500).contains(&reads),
        "two applications × 4 shards × 60 s at one read a second: {reads}"
    );
    producer.await.expect("producer");
    sleep(Duration::from_secs(5)).await;
    let orders: usize = fleet[..2]
        .iter()
        .map(|(_, d)| d.load(Ordering::Relaxed))
        .sum();
    let audit: usize = fleet[2..]
        .iter()
        .map(|(_, d)| d.load(Ordering::Relaxed))
        .sum();
    assert!(
        orders >= 3_200 && audit >= 3_200,
        "each application read every record: orders {orders}, audit {audit} of 3,200"
    );
    for (consumer, _) in fleet {
        consumer.shutdown().await.expect("shutdown");
    }
}
