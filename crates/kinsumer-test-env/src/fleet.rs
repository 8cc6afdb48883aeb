//! Waiting on a fleet of real consumers over a real store.

use std::time::{Duration, Instant};

use kinsumer_core::Consumer;

/// Waits until `consumers` hold all `shards` leases between them, evenly, and returns how long
/// that took; panics with the split if it takes longer than `limit`. (The idle-cost tests
/// measure a settled fleet, not the initial rush of takes.)
pub async fn wait_until_balanced<'a>(
    consumers: impl Iterator<Item = &'a Consumer> + Clone,
    shards: usize,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let clients = consumers.clone().count();
    loop {
        let held: Vec<usize> = consumers
            .clone()
            .map(|c| c.status().shards().len())
            .collect();
        if held.iter().sum::<usize>() == shards && held.iter().all(|&n| n == shards / clients) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the fleet never settled: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
