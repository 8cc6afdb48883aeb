//! One bad row never stops the fleet: a lease row that does not decode, one the store refuses
//! to take, or a client row that does not decode is set aside by itself, and every other shard
//! keeps being taken, read and balanced. Under the paused clock, on the memory store (whose
//! `corrupt_lease`, `corrupt_client` and `put_lease` write what a hostile operator would);
//! the backends' own tests show that each real store reports such rows one by one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, Lease, LeaseStore};
use kinsumer_core::{Config, Consumer};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream, StoreOp};
use tokio::time::sleep;

type Seen = Arc<Mutex<BTreeSet<(String, String)>>>;

/// Starts a consumer that acks every record and notes (shard, sequence) of each.
fn start(client: &str, stream: &MemoryStream, store: &MemoryLeaseStore, seen: &Seen) -> Consumer {
    let mut config = Config::new("app").with_client_id(client);
    config.rng_seed = Some(u64::from(client.as_bytes()[0]));
    let mut consumer = Consumer::new(config, stream.clone(), store.clone()).expect("valid");
    let mut records = consumer.records().expect("start");
    let seen = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(r)) = records.next().await {
            seen.lock()
                .expect("lock")
                .insert((r.shard_id().to_string(), r.sequence_number().to_string()));
            r.ack();
        }
    });
    consumer
}

/// A 4-shard stream with 10 records in each shard, and its leases created.
async fn stream_and_store() -> (MemoryStream, MemoryLeaseStore, Vec<ShardId>) {
    let stream = MemoryStream::new("s", 4);
    let infos = stream.shards();
    for info in &infos {
        for i in 0..10 {
            stream
                .put_with_hash_key(&format!("key-{i}"), info.hash_range.start, b"x".to_vec())
                .expect("put");
        }
    }
    let shards: Vec<ShardId> = infos.into_iter().map(|i| i.id).collect();
    let store = MemoryLeaseStore::new();
    for shard in &shards {
        store
            .create_if_absent("s", shard, &[])
            .await
            .expect("create");
    }
    (stream, store, shards)
}

fn delivered_from(seen: &Seen, shard: &ShardId) -> usize {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|(s, _)| s == shard.as_str())
        .count()
}

fn owners(store: &MemoryLeaseStore) -> Vec<Option<ClientId>> {
    store
        .peek_leases("s")
        .into_iter()
        .map(|l| l.owner)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_lease_row_that_does_not_decode_is_set_aside_and_the_other_shards_flow() {
    let (stream, store, shards) = stream_and_store().await;
    store.corrupt_lease("s", &shards[0], "not a lease row: garbage");
    let seen = Seen::default();
    let a = start("a", &stream, &store, &seen);
    let b = start("b", &stream, &store, &seen);
    sleep(Duration::from_secs(10)).await;
    for shard in &shards[1..] {
        assert_eq!(delivered_from(&seen, shard), 10, "{shard} flows");
    }
    assert_eq!(
        delivered_from(&seen, &shards[0]),
        0,
        "never read from a guessed position"
    );
    assert!(
        !store
            .history()
            .iter()
            .any(|e| e.shard == shards[0] && e.op == StoreOp::Take),
        "the bad row was never taken"
    );
    // The other three are balanced over the two clients.
    let held: Vec<Option<ClientId>> = owners(&store)[1..].to_vec();
    let of = |c: &str| {
        held.iter()
            .filter(|o| **o == Some(ClientId::from(c)))
            .count()
    };
    assert_eq!(
        (of("a") + of("b"), of("a").abs_diff(of("b"))),
        (3, 1),
        "{held:?}"
    );

    // Repaired (as it was): the next read of every lease takes it, from its checkpoint.
    store.repair_lease("s", &shards[0]);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(delivered_from(&seen, &shards[0]), 10, "read once repaired");
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_lease_the_store_refuses_to_take_is_tried_once_and_the_rest_of_the_plan_goes_on() {
    let (stream, store, shards) = stream_and_store().await;
    // A token at the largest value: decodes, but no take can bump it.
    store.put_lease(
        "s",
        Lease {
            token: u64::MAX,
            ..Lease::new(shards[0].clone(), vec![])
        },
    );
    let seen = Seen::default();
    let a = start("a", &stream, &store, &seen);
    sleep(Duration::from_secs(12)).await;
    for shard in &shards[1..] {
        assert_eq!(delivered_from(&seen, shard), 10, "{shard} flows");
    }
    assert_eq!(delivered_from(&seen, &shards[0]), 0);
    // Three takes that succeeded and one refused: not one per tick, nor one per full read.
    assert_eq!(store.stats().take, 4, "{:?}", store.stats());

    // An operator resets the row: it reads differently, so it is tried again and taken.
    store.put_lease("s", Lease::new(shards[0].clone(), vec![]));
    sleep(Duration::from_secs(10)).await;
    assert_eq!(delivered_from(&seen, &shards[0]), 10, "taken once reset");
    a.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_live_clients_row_that_does_not_decode_for_a_moment_costs_it_no_lease() {
    let (stream, store, _) = stream_and_store().await;
    let seen = Seen::default();
    let a = start("a", &stream, &store, &seen);
    let b = start("b", &stream, &store, &seen);
    sleep(Duration::from_secs(12)).await;
    let before = store.peek_leases("s");
    assert!(
        before.iter().all(|l| l.owner.is_some()),
        "settled: {before:?}"
    );
    // Something keeps writing garbage into b's row; b's heartbeats keep rewriting it. Reads
    // of the clients see it bad most of the time: the fleet goes on, and nobody takes b's
    // leases (before, one such row failed every read of the clients: nothing moved at all).
    let infos = stream.shards();
    for second in 0..20 {
        store.corrupt_client(
            &ClientId::from("b"),
            "the heartbeat value \"lots\" is no number",
        );
        let hash = infos[second % 4].hash_range.start;
        stream
            .put_with_hash_key(&format!("late-{second}"), hash, b"y".to_vec())
            .expect("put");
        sleep(Duration::from_secs(1)).await;
    }
    sleep(Duration::from_secs(2)).await;
    let moves = |leases: &[Lease]| -> Vec<(Option<ClientId>, u64)> {
        leases.iter().map(|l| (l.owner.clone(), l.token)).collect()
    };
    assert_eq!(
        moves(&store.peek_leases("s")),
        moves(&before),
        "no lease moved: b was alive throughout"
    );
    assert_eq!(
        seen.lock().expect("lock").len(),
        60,
        "every record, the late ones too"
    );
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}

/// A checkpoint the source refuses to start at (a timestamp in the future, as a mistaken
/// `reset` could write): before, the source's error was fatal and every consumer that took
/// the shard stopped in turn. Now the shard is set aside by the client that holds it — which
/// keeps the lease, so no other client tries and fails — and every other shard goes on.
#[tokio::test(start_paused = true)]
async fn a_checkpoint_the_source_refuses_sets_its_shard_aside_not_the_fleet() {
    use kinsumer_core::position::Checkpoint;
    let (stream, store, shards) = stream_and_store().await;
    let in_a_year = stream.now_ms() + 365 * 24 * 3600 * 1000;
    store
        .reset_checkpoint("s", &shards[0], 0, &Checkpoint::AtTimestamp(in_a_year))
        .await
        .expect("reset");
    let seen = Seen::default();
    let a = start("a", &stream, &store, &seen);
    let b = start("b", &stream, &store, &seen);
    sleep(Duration::from_secs(15)).await;
    for shard in &shards[1..] {
        assert_eq!(delivered_from(&seen, shard), 10, "{shard} flows");
    }
    assert_eq!(delivered_from(&seen, &shards[0]), 0);
    let takes_of_0 = || {
        store
            .history()
            .iter()
            .filter(|e| e.shard == shards[0] && e.op == StoreOp::Take)
            .count()
    };
    assert_eq!(takes_of_0(), 1, "one client tried it once, and keeps it");

    // An operator moves it (as `kinsumer reset --force` does: take, release at a position).
    let row = store
        .lease("s", &shards[0])
        .await
        .expect("read")
        .expect("row");
    let op = store
        .take("s", &shards[0], &ClientId::from("operator"), row.token)
        .await
        .expect("take");
    let tenure = op.tenure().expect("owned");
    store
        .release("s", &tenure, Some(&Checkpoint::TrimHorizon), None)
        .await
        .expect("release");
    sleep(Duration::from_secs(10)).await;
    assert_eq!(delivered_from(&seen, &shards[0]), 10, "read once reset");
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}
