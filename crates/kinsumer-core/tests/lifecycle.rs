//! Lifecycle hooks and the handler failure policy, under the paused clock.
//!
//! - An application that keeps state per shard is told when each tenure starts and why it
//!   ends, and a flush in `ending` is covered by the final checkpoint: with graceful handoffs,
//!   a split and shutdowns, every record is counted exactly once.
//! - A failure policy skips a poison batch to a dead-letter sink, retries, or stops the
//!   consumer with an error that names the shard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kinsumer_core::{
    Config, Consumer, ConsumerError, EndReason, FailedBatch, FailureAction, HandlerError, Record,
    ShardBatch, ShardEnding, ShardId, ShardLifecycle, ShardStarted,
};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
use tokio::time::sleep;

fn config(client: &str) -> Config {
    let mut c = Config::new("app").with_client_id(client);
    c.rng_seed = Some(u64::from(client.as_bytes()[0]));
    c
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn id_of(data: &[u8]) -> u64 {
    u64::from_be_bytes(data[..8].try_into().expect("8 bytes"))
}

/// A tenure: (shard, token).
type TenureKey = (ShardId, u64);

/// Per-shard counts kept by the application, flushed by the `ending` hook.
#[derive(Default)]
struct Counter {
    /// Open tenures and what they counted so far.
    open: Mutex<BTreeMap<TenureKey, u64>>,
    /// Flushed: (shard, token, count, reason).
    flushed: Mutex<Vec<(ShardId, u64, u64, EndReason)>>,
    started: Mutex<Vec<TenureKey>>,
    /// Batches handled while their tenure was not open.
    late: Mutex<Vec<TenureKey>>,
}

#[async_trait]
impl ShardLifecycle for Counter {
    async fn started(&self, s: ShardStarted) {
        self.started
            .lock()
            .expect("lock")
            .push((s.shard.clone(), s.token));
        let old = self
            .open
            .lock()
            .expect("lock")
            .insert((s.shard, s.token), 0);
        assert!(old.is_none(), "started twice");
    }

    async fn ending(&self, e: ShardEnding) {
        let count = self
            .open
            .lock()
            .expect("lock")
            .remove(&(e.shard.clone(), e.token))
            .expect("ending without a start");
        self.flushed
            .lock()
            .expect("lock")
            .push((e.shard, e.token, count, e.reason));
    }
}

/// A batch handler keeps a count per shard; the hooks open and flush it. Through a handoff
/// (b joins), a split (the parent is finished) and two shutdowns, every tenure that started
/// ends exactly once, with its reason, and the flushed counts add up to exactly the records
/// written: nothing counted twice, nothing lost.
#[tokio::test(start_paused = true)]
async fn per_shard_state_is_opened_and_flushed_by_the_hooks() {
    let stream = MemoryStream::new("s", 2);
    let store = MemoryLeaseStore::new();
    let counter = Arc::new(Counter::default());
    let start = |id: &str| {
        let counter = counter.clone();
        let handler = {
            let counter = counter.clone();
            move |batch: ShardBatch| {
                let counter = counter.clone();
                async move {
                    // A batch takes a while: a hook that ran before it was done would flush
                    // without it (and the count below would find no open tenure).
                    sleep(Duration::from_millis(300)).await;
                    let key = (batch.shard.clone(), batch.lease_token);
                    let mut open = counter.open.lock().expect("lock");
                    match open.get_mut(&key) {
                        Some(count) => *count += batch.records.len() as u64,
                        // Handled outside a started (or after an ended) tenure: its count
                        // would be lost.
                        None => counter.late.lock().expect("lock").push(key),
                    }
                    Ok::<(), HandlerError>(())
                }
            }
        };
        let consumer = Consumer::new(config(id), stream.clone(), store.clone())
            .expect("valid")
            .with_lifecycle(counter);
        let stop = consumer.shutdown_handle();
        (stop, tokio::spawn(consumer.run(handler)))
    };
    // A record every 20 ms all along, so batches are in the handler's hands at every handoff
    // and shutdown.
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (stream, producing) = (stream.clone(), producing.clone());
        tokio::spawn(async move {
            let mut written = 0u64;
            while producing.load(std::sync::atomic::Ordering::SeqCst) {
                // Every shard may be closed for an instant during the split.
                if stream
                    .put(&format!("k{written}"), written.to_be_bytes().to_vec())
                    .is_ok()
                {
                    written += 1;
                }
                sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };
    let (a_stop, a) = start("a");
    sleep(secs(3)).await;
    let (b_stop, b) = start("b"); // a hands one shard to b
    sleep(secs(3)).await;
    let parent = stream.shards()[0].id.clone();
    let range = stream.shards()[0].hash_range;
    stream
        .split(&parent, range.start + (range.end - range.start) / 2 + 1)
        .expect("split");
    sleep(secs(10)).await;
    a_stop.shutdown();
    a.await.expect("joined").expect("a stopped cleanly");
    sleep(secs(3)).await;
    producing.store(false, std::sync::atomic::Ordering::SeqCst);
    let written = producer.await.expect("produced");
    sleep(secs(3)).await;
    b_stop.shutdown();
    b.await.expect("joined").expect("b stopped cleanly");

    let started: BTreeSet<TenureKey> = counter
        .started
        .lock()
        .expect("lock")
        .iter()
        .cloned()
        .collect();
    let flushed = counter.flushed.lock().expect("lock").clone();
    let ended: BTreeSet<TenureKey> = flushed.iter().map(|f| (f.0.clone(), f.1)).collect();
    assert_eq!(started, ended, "every tenure that started ended, once");
    assert_eq!(flushed.len(), started.len(), "no tenure ended twice");
    assert!(counter.open.lock().expect("lock").is_empty());
    let late = counter.late.lock().expect("lock").clone();
    assert!(
        late.is_empty(),
        "batches handled after their tenure's ending: {late:?}"
    );
    let reasons: BTreeSet<String> = flushed.iter().map(|f| format!("{:?}", f.3)).collect();
    for reason in ["HandedOff", "Finished", "ShuttingDown"] {
        assert!(reasons.contains(reason), "{reason} in {reasons:?}");
    }
    let total: u64 = flushed.iter().map(|f| f.2).sum();
    assert_eq!(
        total, written,
        "each record counted exactly once: {flushed:?}"
    );
}

/// An application that acks only when it flushes: it buffers records per shard un-acked and
/// acks them in `ending`. Because the hook runs before the final checkpoint, a handoff and a
/// shutdown commit what it flushed: the next owner delivers none of it again.
#[tokio::test(start_paused = true)]
async fn a_flush_in_the_ending_hook_is_covered_by_the_final_checkpoint() {
    #[derive(Clone, Default)]
    struct Buffers(Arc<Mutex<BTreeMap<ShardId, Vec<Record>>>>);

    #[async_trait]
    impl ShardLifecycle for Buffers {
        async fn ending(&self, e: ShardEnding) {
            let records = self.0.lock().expect("lock").remove(&e.shard);
            if e.reason != EndReason::Lost {
                for r in records.into_iter().flatten() {
                    r.ack(); // flushed: covered by the checkpoint written after this returns
                }
            }
        }
    }

    let stream = MemoryStream::new("s", 2);
    let store = MemoryLeaseStore::new();
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let start = |id: &str| {
        let buffers = Buffers::default();
        let mut c = Consumer::new(config(id), stream.clone(), store.clone())
            .expect("valid")
            .with_lifecycle(buffers.clone());
        let mut records = c.records().expect("start");
        let delivered = delivered.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = records.next().await {
                delivered.lock().expect("lock").push(id_of(r.data()));
                let mut buffers = buffers.0.lock().expect("lock");
                let buffer = buffers.entry(r.shard_id().clone()).or_default();
                buffer.push(r);
                if buffer.len() == 25 {
                    for r in buffer.drain(..) {
                        r.ack();
                    }
                }
            }
        });
        c
    };
    let a = start("a");
    for i in 0..110u64 {
        stream
            .put(&format!("k{i}"), i.to_be_bytes().to_vec())
            .expect("put");
    }
    sleep(secs(3)).await;
    let b = start("b"); // a hands a shard to b, with un-acked records in its buffer
    sleep(secs(3)).await;
    a.shutdown().await.expect("a shuts down"); // the rest goes to b, buffers flushed again
    sleep(secs(3)).await;
    b.shutdown().await.expect("b shuts down");
    let delivered = delivered.lock().expect("lock").clone();
    let unique: BTreeSet<u64> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), 110, "every record delivered");
    assert_eq!(delivered.len(), 110, "none delivered twice: {delivered:?}");
    let checkpoints: Vec<_> = store
        .peek_leases("s")
        .into_iter()
        .map(|l| l.checkpoint)
        .collect();
    assert!(
        checkpoints.iter().all(Option::is_some),
        "every shard checkpointed: {checkpoints:?}"
    );
}

/// Records 0..60, one poison record (id 17) that the handler always fails on. The policy is
/// asked from the 3rd failed attempt on: it retries twice more, then parks the batch in a
/// dead-letter sink and skips it. Everything else is handled, and the checkpoint moves on.
#[tokio::test(start_paused = true)]
async fn a_failure_policy_parks_a_poison_batch_and_skips_it() {
    let stream = MemoryStream::new("s", 1);
    for i in 0..60u64 {
        stream.put("k", i.to_be_bytes().to_vec()).expect("put");
    }
    let store = MemoryLeaseStore::new();
    let handled = Arc::new(Mutex::new(BTreeSet::new()));
    let handler = {
        let handled = handled.clone();
        move |batch: ShardBatch| {
            let handled = handled.clone();
            async move {
                let ids: Vec<u64> = batch.records.iter().map(|r| id_of(&r.data)).collect();
                if ids.contains(&17) {
                    return Err::<(), HandlerError>("cannot parse record 17".into());
                }
                handled.lock().expect("lock").extend(ids);
                Ok(())
            }
        }
    };
    let asked = Arc::new(Mutex::new(Vec::new()));
    let dead_letters = Arc::new(Mutex::new(Vec::new()));
    let policy = {
        let (asked, dead_letters) = (asked.clone(), dead_letters.clone());
        move |failed: FailedBatch| {
            let (asked, dead_letters) = (asked.clone(), dead_letters.clone());
            async move {
                asked.lock().expect("lock").push(failed.attempts);
                assert_eq!(failed.error.to_string(), "cannot parse record 17");
                if failed.attempts < 5 {
                    return FailureAction::Retry;
                }
                let ids: Vec<u64> = failed
                    .batch
                    .records
                    .iter()
                    .map(|r| id_of(&r.data))
                    .collect();
                dead_letters.lock().expect("lock").extend(ids);
                FailureAction::Skip
            }
        }
    };
    let mut cfg = config("a");
    cfg.max_records_per_read = 10; // batches of 10: the poison batch is 10..20
    let consumer = Consumer::new(cfg, stream.clone(), store.clone())
        .expect("valid")
        .with_failure_policy(3, policy);
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(handler));
    sleep(secs(30)).await;
    stop.shutdown();
    run.await.expect("joined").expect("stopped cleanly");
    assert_eq!(*asked.lock().expect("lock"), vec![3, 4, 5]);
    let parked: BTreeSet<u64> = dead_letters.lock().expect("lock").iter().copied().collect();
    assert!(parked.contains(&17));
    let handled = handled.lock().expect("lock").clone();
    let all: BTreeSet<u64> = handled.union(&parked).copied().collect();
    assert_eq!(all, (0..60).collect(), "everything handled or parked");
    assert!(!handled.contains(&17));
    let lease = store.peek_leases("s").pop().expect("lease");
    assert!(
        lease
            .checkpoint
            .is_some_and(|c| c.to_string().contains("AFTER")),
        "the checkpoint moved past the skipped batch"
    );
}

/// The policy says stop: the consumer shuts down gracefully — the poison batch not acked,
/// the lease released with the checkpoint before it — and `run` returns the error, naming the
/// shard and the handler's error.
#[tokio::test(start_paused = true)]
async fn a_failure_policy_that_stops_ends_the_consumer_with_an_error() {
    let stream = MemoryStream::new("s", 1);
    for i in 0..30u64 {
        stream.put("k", i.to_be_bytes().to_vec()).expect("put");
    }
    let store = MemoryLeaseStore::new();
    let handler = |batch: ShardBatch| async move {
        if batch.records.iter().any(|r| id_of(&r.data) == 12) {
            return Err::<(), HandlerError>("downstream rejected record 12".into());
        }
        Ok(())
    };
    let mut cfg = config("a");
    cfg.max_records_per_read = 10;
    let consumer = Consumer::new(cfg, stream.clone(), store.clone())
        .expect("valid")
        .with_failure_policy(2, |_failed: FailedBatch| async { FailureAction::Stop });
    let result = tokio::time::timeout(secs(60), consumer.run(handler))
        .await
        .expect("the consumer stopped by itself");
    match result {
        Err(ConsumerError::HandlerGaveUp {
            shard,
            attempts,
            error,
        }) => {
            assert_eq!(shard.as_str(), "shardId-000000000000");
            assert_eq!(attempts, 2);
            assert!(error.contains("record 12"), "{error}");
        }
        other => panic!("expected HandlerGaveUp, got {other:?}"),
    }
    let lease = store.peek_leases("s").pop().expect("lease");
    assert_eq!(lease.owner, None, "released");
    let checkpoint = lease.checkpoint.expect("checkpointed").to_string();
    let records = stream.all_records();
    let tenth = records.values().next().expect("one shard")[9]
        .position
        .to_string();
    assert!(
        checkpoint.ends_with(&tenth),
        "the checkpoint is right before the poison batch: {checkpoint} vs {tenth}"
    );
}
