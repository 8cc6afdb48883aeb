//! Focused tests of `MemoryLeaseStore`: injected and ambiguous failures, broken fencing, the
//! history and the request counters.

use std::time::Duration;

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, LeaseStore, StoreError, Tenure};
use kinsumer_testkit::{EventClock, MemoryLeaseStore, StoreFaults, StoreOp};

const STREAM: &str = "orders";

fn shard() -> ShardId {
    ShardId::from("shardId-000000000000")
}

async fn taken(store: &MemoryLeaseStore, owner: &str, expected_token: u64) -> Tenure {
    store.create_if_absent(STREAM, &shard(), &[]).await.unwrap();
    let lease = store
        .take(STREAM, &shard(), &ClientId::from(owner), expected_token)
        .await
        .unwrap();
    lease.tenure().unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_write_is_applied_but_reported_failed() {
    let store = MemoryLeaseStore::new();
    let tenure = taken(&store, "a", 0).await;
    store.set_faults(StoreFaults {
        ambiguous_rate: 1.0,
        ..StoreFaults::default()
    });
    let result = store
        .checkpoint(STREAM, &tenure, &Checkpoint::TrimHorizon)
        .await;
    assert!(matches!(result, Err(StoreError::Transient(ref m)) if m.contains("ambiguous")));
    let row = store.peek_leases(STREAM).remove(0);
    assert_eq!(row.checkpoint, Some(Checkpoint::TrimHorizon), "applied");
    let last = store.history().pop().unwrap();
    assert_eq!(last.op, StoreOp::Checkpoint);
    assert!(last.ambiguous);
    // Reads are never ambiguous.
    assert!(store.lease(STREAM, &shard()).await.is_ok());
    assert_eq!(store.stats().ambiguous_writes, 1);
}

#[tokio::test(start_paused = true)]
async fn an_injected_error_is_not_applied() {
    let store = MemoryLeaseStore::new();
    let tenure = taken(&store, "a", 0).await;
    let events = store.history().len();
    store.set_faults(StoreFaults {
        error_rate: 1.0,
        ..StoreFaults::default()
    });
    let result = store.finish(STREAM, &tenure).await;
    assert!(matches!(result, Err(StoreError::Transient(_))));
    assert!(matches!(
        store.heartbeat(&ClientId::from("a"), 1).await,
        Err(StoreError::Transient(_))
    ));
    let row = store.peek_leases(STREAM).remove(0);
    assert!(!row.finished && row.checkpoint.is_none());
    assert!(store.peek_clients().is_empty());
    assert_eq!(
        store.history().len(),
        events,
        "nothing applied, nothing recorded"
    );
    assert_eq!(store.stats().injected_errors, 2);
}

#[tokio::test(start_paused = true)]
async fn ignoring_fencing_lets_a_stale_tenure_write_and_the_history_shows_it() {
    let store = MemoryLeaseStore::new();
    let stale = taken(&store, "a", 0).await;
    let current = taken(&store, "b", 1).await;
    assert_eq!(current.token, 2);

    let refused = store
        .checkpoint(STREAM, &stale, &Checkpoint::TrimHorizon)
        .await;
    assert!(matches!(refused, Err(StoreError::LeaseLost { .. })));

    store.set_faults(StoreFaults {
        ignore_fencing: true,
        ..StoreFaults::default()
    });
    store
        .checkpoint(STREAM, &stale, &Checkpoint::Latest)
        .await
        .unwrap();
    // Even a stale take goes through, bumping the stored token.
    let stolen = store
        .take(STREAM, &shard(), &ClientId::from("c"), 0)
        .await
        .unwrap();
    assert_eq!(stolen.token, 3);

    let history = store.history();
    let write = history
        .iter()
        .find(|e| e.op == StoreOp::Checkpoint)
        .unwrap();
    let claimed = write.claimed.as_ref().unwrap();
    let before = write.before.as_ref().unwrap();
    assert_eq!((claimed.owner.as_str(), claimed.token), ("a", 1));
    assert_eq!(
        (before.owner.as_ref().map(ClientId::as_str), before.token),
        (Some("b"), 2)
    );
    let take = history.last().unwrap();
    assert_eq!(take.op, StoreOp::Take);
    assert_eq!(take.claimed.as_ref().unwrap().token, 0);
    assert_eq!(take.before.as_ref().unwrap().token, 2);
}

#[tokio::test(start_paused = true)]
async fn the_history_shares_a_clock_and_records_only_applied_writes() {
    let clock = EventClock::new();
    let store = MemoryLeaseStore::with_clock(clock.clone());
    assert_eq!(clock.tick(), 1, "another component ticks first");
    let tenure = taken(&store, "a", 0).await;
    store.create_if_absent(STREAM, &shard(), &[]).await.unwrap();
    let _ = store.take(STREAM, &shard(), &ClientId::from("b"), 0).await;
    store.release(STREAM, &tenure, None, None).await.unwrap();
    store.heartbeat(&ClientId::from("a"), 1).await.unwrap();
    let events: Vec<(u64, StoreOp)> = store.history().iter().map(|e| (e.at, e.op)).collect();
    assert_eq!(
        events,
        [
            (2, StoreOp::Create),
            (3, StoreOp::Take),
            (4, StoreOp::Release)
        ]
    );
    let release = store.history().pop().unwrap();
    assert_eq!(release.after.unwrap().owner, None);
}

#[tokio::test(start_paused = true)]
async fn stats_count_reads_and_writes_per_operation() {
    let store = MemoryLeaseStore::new();
    let tenure = taken(&store, "a", 0).await;
    store.heartbeat(&ClientId::from("a"), 1).await.unwrap();
    store.clients().await.unwrap();
    store.leases(STREAM).await.unwrap();
    store.lease(STREAM, &shard()).await.unwrap();
    store
        .checkpoint(STREAM, &tenure, &Checkpoint::TrimHorizon)
        .await
        .unwrap();
    let stats = store.stats();
    assert_eq!(
        (
            stats.create_if_absent,
            stats.take,
            stats.checkpoint,
            stats.heartbeat
        ),
        (1, 1, 1, 1)
    );
    assert_eq!((stats.reads(), stats.writes(), stats.requests()), (3, 4, 7));
}

#[tokio::test(start_paused = true)]
async fn latency_is_drawn_in_range_and_faults_replay_for_a_seed() {
    async fn trace(seed: u64) -> Vec<(Duration, bool)> {
        let store = MemoryLeaseStore::new().with_seed(seed);
        store.set_faults(StoreFaults {
            error_rate: 0.3,
            ambiguous_rate: 0.3,
            latency: (Duration::from_millis(10), Duration::from_millis(20)),
            ..StoreFaults::default()
        });
        let mut out = Vec::new();
        for _ in 0..50 {
            let start = tokio::time::Instant::now();
            let ok = store.heartbeat(&ClientId::from("a"), 1).await.is_ok();
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(10) && took <= Duration::from_millis(21));
            out.push((took, ok));
        }
        out
    }
    let a = trace(9).await;
    assert_eq!(a, trace(9).await);
    assert_ne!(a, trace(10).await);
    assert!(a.iter().any(|(_, ok)| *ok) && a.iter().any(|(_, ok)| !*ok));
}
