//! Testing your consumer with the testkit: an in-memory stream and lease store, under tokio's
//! paused clock, so minutes of consumer time (lease TTLs, a crash and its takeover) run in
//! milliseconds and the same way every time.
//!
//! The application below totals order amounts per customer, and keys each record by its shard
//! and sequence number so that a redelivery — kinsumer delivers at least once, and after a crash
//! the records acked since the last checkpoint come again — is counted once.
//!
//! ```sh
//! cargo run -p kinsumer --features testkit --example testing_your_consumer
//! cargo test -p kinsumer --features testkit --example testing_your_consumer   # its tests
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinsumer::testkit::{MemoryLeaseStore, MemoryStream};
use kinsumer::{Config, Consumer, ShardBatch};

/// Your application's state: the total per customer, and the records already applied.
#[derive(Default)]
struct Billing {
    totals: BTreeMap<String, u64>,
    applied: std::collections::BTreeSet<(String, String)>,
    /// Records seen twice (redeliveries), for the test to look at.
    redelivered: usize,
}

/// Your application's handler: applies every order of a batch once.
fn billing_handler(
    state: Arc<Mutex<Billing>>,
) -> impl Fn(ShardBatch) -> std::future::Ready<Result<(), kinsumer::HandlerError>> + Send + Sync + 'static
{
    move |batch: ShardBatch| {
        let mut s = state.lock().expect("lock");
        for record in batch.records.iter() {
            let key = (
                batch.shard.to_string(),
                record.position.sequence.as_str().to_owned(),
            );
            if !s.applied.insert(key) {
                s.redelivered += 1;
                continue;
            }
            let amount = u64::from_be_bytes(record.data[..8].try_into().expect("8 bytes"));
            *s.totals.entry(record.partition_key.clone()).or_default() += amount;
        }
        std::future::ready(Ok(()))
    }
}

/// `n` orders of amount 1..=n, spread over customers `c0`..`c9`.
fn orders(stream: &MemoryStream, n: u64) {
    for amount in 1..=n {
        let customer = format!("c{}", amount % 10);
        stream
            .put(&customer, amount.to_be_bytes().to_vec())
            .expect("put");
    }
}

/// Waits (in paused time) until `done` holds.
async fn until(state: &Arc<Mutex<Billing>>, done: impl Fn(&Billing) -> bool) {
    while !done(&state.lock().expect("lock")) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(client: &str) -> Config {
    Config::new("billing").with_client_id(client)
}

/// One consumer sees every order once: the totals add up.
async fn every_order_is_counted_once() {
    let stream = MemoryStream::new("orders", 4);
    orders(&stream, 100);
    let state = Arc::new(Mutex::new(Billing::default()));
    let consumer = Consumer::new(config("a"), stream, MemoryLeaseStore::new()).expect("valid");
    let stop = consumer.shutdown_handle();
    let running = tokio::spawn(consumer.run(billing_handler(state.clone())));
    until(&state, |s| s.applied.len() == 100).await;
    stop.shutdown();
    running.await.expect("joined").expect("a clean stop");
    let s = state.lock().expect("lock");
    assert_eq!(s.totals.values().sum::<u64>(), (1..=100).sum::<u64>());
    assert_eq!(s.totals["c0"], (10..=100).step_by(10).sum::<u64>());
}

/// Two clients share the shards; one crashes (no commit, no release). After its lease TTL the
/// other takes its shards over from their last checkpoints: nothing is lost, and what comes
/// again is applied once.
async fn a_crash_loses_nothing_and_counts_nothing_twice() {
    let stream = MemoryStream::new("orders", 4);
    let store = MemoryLeaseStore::new();
    let state = Arc::new(Mutex::new(Billing::default()));
    let a = Consumer::new(config("a"), stream.clone(), store.clone()).expect("valid");
    let b = Consumer::new(config("b"), stream.clone(), store.clone()).expect("valid");
    let (crash_a, stop_b) = (a.shutdown_handle(), b.shutdown_handle());
    let run_a = tokio::spawn(a.run(billing_handler(state.clone())));
    let run_b = tokio::spawn(b.run(billing_handler(state.clone())));
    orders(&stream, 100);
    until(&state, |s| s.applied.len() >= 50).await;
    crash_a.abort(); // as kill -9 would
    let _ = run_a.await;
    orders(&stream, 100); // amounts 1..=100 again, new records
    until(&state, |s| s.applied.len() == 200).await;
    stop_b.shutdown();
    run_b.await.expect("joined").expect("a clean stop");
    let s = state.lock().expect("lock");
    assert_eq!(s.totals.values().sum::<u64>(), 2 * (1..=100).sum::<u64>());
    println!(
        "after the crash: 200 orders applied once each, {} redeliveries skipped",
        s.redelivered
    );
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    every_order_is_counted_once().await;
    println!("one consumer: every order counted once");
    a_crash_loses_nothing_and_counts_nothing_twice().await;
}

// In your crate these are ordinary tests: `#[tokio::test(start_paused = true)]`.
#[cfg(test)]
mod tests {
    #[tokio::test(start_paused = true)]
    async fn every_order_is_counted_once() {
        super::every_order_is_counted_once().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loses_nothing_and_counts_nothing_twice() {
        super::a_crash_loses_nothing_and_counts_nothing_twice().await;
    }
}
