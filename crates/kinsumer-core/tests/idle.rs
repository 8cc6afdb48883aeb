//! What an idle fleet reads, and how a death is learned without reading every row: each
//! client reads the change counter every poll and the rows of the clients it watches every
//! other poll; a watcher marks a client whose heartbeat stood still for `lease_ttl`, and the
//! rest of the fleet learns the death from the mark.
//!
//! Under the paused clock; calls are counted by the memory store.

use std::time::Duration;

use kinsumer_core::store::ClientId;
use kinsumer_core::{Config, Consumer};
use kinsumer_testkit::conformance::fleet::start_acking;
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream, StoreOp};
use tokio::time::{Instant, sleep};

fn config(client: &str) -> Config {
    let mut c = Config::new("app").with_client_id(client);
    c.rng_seed = Some(u64::from(client.as_bytes()[0]));
    c
}

fn start(client: &str, stream: &MemoryStream, store: &MemoryLeaseStore) -> Consumer {
    start_acking(config(client), stream.clone(), store.clone()).0
}

const CLIENTS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Five clients on 50 idle shards, settled: over 60 s each reads the change counter five times
/// a second and its three watched rows every other poll; every client row and every lease row
/// only in the safety-net read every 5 s. Before the change counter, every client read every
/// client row every poll (5 × 5 × 60 = 1,500 reads of every client row).
#[tokio::test(start_paused = true)]
async fn an_idle_fleet_reads_the_change_counter_and_a_few_rows() {
    let stream = MemoryStream::new("s", 50);
    let store = MemoryLeaseStore::new();
    let fleet: Vec<Consumer> = CLIENTS.iter().map(|c| start(c, &stream, &store)).collect();
    sleep(Duration::from_secs(30)).await;
    for client in CLIENTS {
        assert_eq!(store.owned_by("s", client), 10, "settled");
    }
    let before = store.stats();
    let window = Duration::from_secs(60);
    sleep(window).await;
    let after = store.stats();
    let n = |f: fn(&kinsumer_testkit::StoreStats) -> u64| f(&after) - f(&before);
    let (changes, client, clients, leases) = (
        n(|s| s.changes),
        n(|s| s.client),
        n(|s| s.clients),
        n(|s| s.leases),
    );
    println!("in 60 s: changes {changes}, client {client}, clients {clients}, leases {leases}");
    // Five polls a second each (a tick may be delayed, never added).
    assert!(
        (1_400..=1_500).contains(&changes),
        "the change counter is read every poll: {changes}"
    );
    // Three watched rows every other poll: 5 × 3 × 2.5 × 60.
    assert!(
        (2_000..=2_250).contains(&client),
        "the watched rows are read every other poll: {client}"
    );
    // The safety-net read every 5 s (each a read of every lease, then of every client).
    assert!(
        leases <= 5 * 13 && clients <= leases + 5,
        "every row is read only in the safety-net read: leases {leases}, clients {clients}"
    );
    assert_eq!(n(|s| s.announce), 0, "nothing changed, nothing announced");
    assert_eq!(
        n(|s| s.writes()) - n(|s| s.heartbeat),
        0,
        "an idle fleet writes only heartbeats"
    );
    for c in fleet {
        c.shutdown().await.expect("shutdown");
    }
}

/// A client crashes: a client watching it marks its row judged dead once its heartbeat stood
/// still for `lease_ttl` on the watcher's clock, announces, and its leases move — within
/// `lease_ttl` + 2 s of the crash, as P4 asks.
#[tokio::test(start_paused = true)]
async fn a_crashed_client_is_marked_dead_by_a_watcher_and_its_leases_move() {
    let stream = MemoryStream::new("s", 50);
    let store = MemoryLeaseStore::new();
    let mut fleet: Vec<Consumer> = CLIENTS.iter().map(|c| start(c, &stream, &store)).collect();
    sleep(Duration::from_secs(30)).await;
    assert_eq!(store.owned_by("s", "c"), 10, "settled");
    let from = store.history().len();
    let crashed = fleet.remove(2);
    let at = Instant::now();
    crashed.abort();
    let ttl = Config::new("x").lease_ttl;
    sleep(ttl + Duration::from_secs(2)).await;
    let rows = store.peek_clients();
    let c = rows
        .iter()
        .find(|r| r.id == ClientId::from("c"))
        .expect("c's row stays until reaped");
    assert!(c.is_judged_dead(), "c's row is marked: {c:?}");
    assert_eq!(store.owned_by("s", "c"), 0, "c's leases moved");
    let last_take = store.history()[from..]
        .iter()
        .filter(|e| e.op == StoreOp::Take)
        .map(|e| e.time)
        .max()
        .expect("takes");
    assert!(
        last_take - at <= ttl + Duration::from_secs(2),
        "taken over {:?} after the crash",
        last_take - at
    );
    for c in fleet {
        c.shutdown().await.expect("shutdown");
    }
}
