//! A fleet starting together on a stream whose lease rows do not exist yet: each row is
//! created by one client (the live client that ranks highest for it), not by every client,
//! and a row its writer never writes is written by the others after two `rebalance_interval`s.
//!
//! Under the paused clock, on a memory store that answers every call in 5 ms; calls are counted
//! by the store.

use std::time::Duration;

use kinsumer_core::faults::FaultSwitch;
use kinsumer_core::{Config, Consumer};
use kinsumer_testkit::conformance::fleet::start_acking;
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream, StoreFaults};
use tokio::time::{Instant, sleep};

const MS: Duration = Duration::from_millis(1);

fn config(n: usize) -> Config {
    let mut c = Config::new("app").with_client_id(format!("c{n:02}"));
    c.rng_seed = Some(n as u64 + 1);
    c
}

/// A store that takes 5 ms per call, `full_read` more for a read of every lease.
fn store_with_full_reads_of(full_read: Duration) -> MemoryLeaseStore {
    let store = MemoryLeaseStore::new();
    store.set_faults(StoreFaults {
        latency: (MS * 5, MS * 5),
        full_read_latency: full_read,
        ..StoreFaults::default()
    });
    store
}

fn slow_store() -> MemoryLeaseStore {
    store_with_full_reads_of(MS * 50)
}

/// How many leases each client owns.
fn owned(store: &MemoryLeaseStore, clients: usize) -> Vec<usize> {
    (0..clients)
        .map(|n| store.owned_by("s", &format!("c{n:02}")))
        .collect()
}

/// 20 clients start at once on 400 shards without rows. Before each row had one writer, every
/// client created every row from its own empty read: 20 × 400 = 8,000 conditional writes, and
/// each client owned nothing until it had made its 400 (2 s at 5 ms a call).
#[tokio::test(start_paused = true)]
async fn a_fleet_starting_on_no_rows_creates_each_row_about_once() {
    let (creates, _, _) = cold_start(slow_store(), Duration::from_secs(30)).await;
    assert!(
        creates <= SHARDS as u64 * 3 / 2,
        "each row is created about once, not by every client: {creates} creates for {SHARDS} rows"
    );
}

/// The same start on a store whose reads of every lease are slow (500 ms: a large table, a
/// busy store), so full reads are paced 2 × 20 clients × 500 ms = 20 s apart. Each client
/// learns of the rows the others create from reads of the rows its plan gives it (one by one,
/// when the change counter moves), and plans over the whole stream from its first sync. Before,
/// a client planned over the rows it had seen — its own creations, a quota of 1 of every 20 —
/// and found the rest at its next full read: 20 s and more, shard by shard.
#[tokio::test(start_paused = true)]
async fn a_fleet_starting_on_no_rows_balances_between_slow_full_reads() {
    let (_, _, balanced) =
        cold_start(store_with_full_reads_of(MS * 500), Duration::from_secs(60)).await;
    assert!(
        balanced <= Duration::from_secs(5),
        "balanced within a few polls, not at the pace of full reads: {balanced:?}"
    );
}

const SHARDS: usize = 400;
const CLIENTS: usize = 20;

/// Starts 20 clients at once on 400 shards without rows; returns the creates, when the first
/// lease was owned and when the fleet was balanced (each client holding 20), in virtual time.
async fn cold_start(store: MemoryLeaseStore, limit: Duration) -> (u64, Duration, Duration) {
    let stream = MemoryStream::new("s", SHARDS);
    let started = Instant::now();
    let fleet: Vec<Consumer> = (0..CLIENTS)
        .map(|n| start_acking(config(n), stream.clone(), store.clone()).0)
        .collect();
    let mut first_owned = None;
    let balanced = loop {
        let held = owned(&store, CLIENTS);
        if first_owned.is_none() && held.iter().any(|&h| h > 0) {
            first_owned = Some(started.elapsed());
        }
        if held.iter().all(|&h| h == SHARDS / CLIENTS) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not balanced within {limit:?}: {held:?}"
        );
        sleep(MS * 100).await;
    };
    let creates = store.stats().create_if_absent;
    let first_owned = first_owned.expect("a lease was owned");
    println!(
        "{CLIENTS} clients × {SHARDS} shards from no rows: {creates} creates, first lease owned \
         after {first_owned:?}, balanced after {balanced:?}"
    );
    assert_eq!(store.peek_leases("s").len(), SHARDS, "every row exists");
    assert!(
        first_owned <= Duration::from_secs(2),
        "the first lease is owned within a couple of polls: {first_owned:?}"
    );
    for c in fleet {
        c.shutdown().await.expect("shutdown");
    }
    (creates, first_owned, balanced)
}

/// One client of three is live (its heartbeats land) but its supervisor is stuck: the rows it
/// ranks highest for are written by the others once they have been due for two
/// `rebalance_interval`s, so no shard waits for a writer that never comes.
#[tokio::test(start_paused = true)]
async fn rows_a_stuck_client_should_write_are_written_by_the_others() {
    const SHARDS: usize = 60;
    let stream = MemoryStream::new("s", SHARDS);
    let store = slow_store();
    let stuck = FaultSwitch::default();
    stuck.set(true);
    let mut hung = config(0);
    hung.faults.stuck_supervisor = Some(stuck.clone());
    // The hung client registers first, so the others see it live from their first read.
    let hung = start_acking(hung, stream.clone(), store.clone()).0;
    sleep(MS * 100).await;
    let others: Vec<Consumer> = (1..3)
        .map(|n| start_acking(config(n), stream.clone(), store.clone()).0)
        .collect();
    sleep(Duration::from_secs(2)).await;
    let early = store.peek_leases("s").len();
    assert!(
        early < SHARDS,
        "the stuck client's share waits for it at first: {early} rows of {SHARDS}"
    );
    let grace = Config::new("x").rebalance_interval * 2;
    sleep(grace + Duration::from_secs(5)).await;
    assert_eq!(
        store.peek_leases("s").len(),
        SHARDS,
        "every row exists, the stuck client's share written by the others"
    );
    stuck.set(false);
    hung.abort();
    for c in others {
        c.shutdown().await.expect("shutdown");
    }
}
