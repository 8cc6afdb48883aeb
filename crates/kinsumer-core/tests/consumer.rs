//! The consumer API end to end, on the in-memory stream and store under the paused clock.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kinsumer_core::position::{Checkpoint, InitialPosition};
use kinsumer_core::source::{Batch, ShardId, ShardInfo, ShardReader, ShardSource, SourceError};
use kinsumer_core::store::LeaseStore;
use kinsumer_core::{
    AckMode, Config, ConfigError, Consumer, ConsumerError, Record, Records, ShardBatch,
};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream, StoreFaults};
use tokio::time::sleep;

fn config(client: &str) -> Config {
    Config::new("app").with_client_id(client)
}

fn fill(stream: &MemoryStream, n: u64) {
    for i in 0..n {
        stream
            .put(&format!("key-{}", i % 13), i.to_be_bytes().to_vec())
            .expect("put");
    }
}

fn id_of(data: &[u8]) -> u64 {
    u64::from_be_bytes(data[..8].try_into().expect("8 bytes"))
}

/// A stream of `shards` shards holding `n` records, a fresh store, and a consumer of both
/// under `config`, not yet started.
fn consumer_over(
    shards: usize,
    n: u64,
    config: Config,
) -> (MemoryStream, MemoryLeaseStore, Consumer) {
    let stream = MemoryStream::new("s", shards);
    fill(&stream, n);
    let store = MemoryLeaseStore::new();
    let consumer = Consumer::new(config, stream.clone(), store.clone()).expect("valid");
    (stream, store, consumer)
}

/// The next record, which must come within a minute of the paused clock (`why` says what
/// its not coming would mean).
async fn next_within_a_minute(records: &mut Records, why: &str) -> Record {
    tokio::time::timeout(Duration::from_secs(60), records.next())
        .await
        .expect(why)
        .expect("open")
        .expect("ok")
}

/// Reads and acks records until `n` distinct ids have come (a record delivered again counts
/// once), each within a minute.
async fn ack_until_distinct(records: &mut Records, n: usize, why: &str) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    while ids.len() < n {
        let r = next_within_a_minute(records, why).await;
        ids.insert(id_of(r.data()));
        r.ack();
    }
    ids
}

/// Asserts that the lease of the stream's one shard is checkpointed just after its first
/// `n` records.
#[track_caller]
fn assert_checkpoint_covers_first(stream: &MemoryStream, store: &MemoryLeaseStore, n: usize) {
    let lease = &store.peek_leases("s")[0];
    let nth = stream.records(&lease.shard)[n - 1].position.clone();
    assert_eq!(lease.checkpoint, Some(Checkpoint::After(nth)));
}

#[tokio::test(start_paused = true)]
async fn a_record_stream_delivers_everything_in_shard_order_and_shutdown_releases() {
    let (stream, store, mut consumer) = consumer_over(3, 300, config("a"));
    let mut records = consumer.records().expect("first start");
    let mut seen = BTreeSet::new();
    let mut last: std::collections::BTreeMap<ShardId, _> = Default::default();
    while seen.len() < 300 {
        let r = records.next().await.expect("open").expect("no error");
        if let Some(prev) = last.insert(r.shard_id().clone(), r.position().clone()) {
            assert!(prev < *r.position(), "shard order");
        }
        seen.insert(id_of(r.data()));
        r.ack();
    }
    consumer.shutdown().await.expect("clean shutdown");
    // Every lease released at its last record, and the client deregistered.
    for lease in store.peek_leases("s") {
        assert_eq!(lease.owner, None, "{lease:?}");
        let last = stream
            .records(&lease.shard)
            .last()
            .map(|r| r.position.clone());
        assert_eq!(lease.checkpoint, last.map(Checkpoint::After), "{lease:?}");
    }
    assert!(store.peek_clients().is_empty());
    assert!(
        records.next().await.is_none(),
        "the stream ends after shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn the_checkpoint_never_passes_an_unacked_record() {
    let (stream, store, mut consumer) = consumer_over(1, 10, config("a"));
    let mut records = consumer.records().expect("start");
    let mut held = Vec::new();
    for i in 0..10 {
        let r = records.next().await.expect("open").expect("ok");
        if i == 3 {
            held.push(r); // processed later
        } else {
            r.ack();
        }
    }
    sleep(Duration::from_secs(3)).await; // several commit intervals
    assert_checkpoint_covers_first(&stream, &store, 3);
    held.pop().expect("held").ack();
    sleep(Duration::from_secs(2)).await;
    assert_checkpoint_covers_first(&stream, &store, 10);
    consumer.shutdown().await.expect("shutdown");
}

/// Runs and single records mix on one stream: every record comes once, in shard order, and
/// shutdown releases each lease at its last record.
#[tokio::test(start_paused = true)]
async fn runs_and_records_mix_on_one_stream() {
    let small_reads = Config {
        max_records_per_read: 7,
        ..config("a")
    };
    let (stream, store, mut consumer) = consumer_over(3, 300, small_reads);
    let mut records = consumer.records().expect("start");
    let mut seen = BTreeSet::new();
    let mut last: std::collections::BTreeMap<ShardId, _> = Default::default();
    let mut in_order = |shard: &ShardId, position: &kinsumer_core::Position, id: u64| {
        if let Some(prev) = last.insert(shard.clone(), position.clone()) {
            assert!(prev < *position, "shard order");
        }
        assert!(seen.insert(id), "record {id} came twice");
        seen.len()
    };
    let mut count = 0;
    while count < 300 {
        // One record on its own, then the rest of its read as a run.
        let r = next_within_a_minute(&mut records, "a record comes").await;
        count = in_order(r.shard_id(), r.position(), id_of(r.data()));
        r.ack();
        if count == 300 {
            break;
        }
        let run = records.next_run().await.expect("open").expect("ok");
        assert!(!run.is_empty() && run.len() <= 7, "{} records", run.len());
        for record in run.records() {
            count = in_order(run.shard_id(), &record.position, id_of(&record.data));
        }
        run.ack();
    }
    consumer.shutdown().await.expect("clean shutdown");
    for lease in store.peek_leases("s") {
        let last = stream
            .records(&lease.shard)
            .last()
            .map(|r| r.position.clone());
        assert_eq!(lease.checkpoint, last.map(Checkpoint::After), "{lease:?}");
    }
}

/// A run held unacked holds the checkpoint at its first record, although later runs are
/// acked; acked, it lets the checkpoint through them.
#[tokio::test(start_paused = true)]
async fn a_run_held_unacked_holds_the_checkpoint() {
    let small_reads = Config {
        max_records_per_read: 4,
        ..config("a")
    };
    let (stream, store, mut consumer) = consumer_over(1, 12, small_reads);
    let mut records = consumer.records().expect("start");
    let first = records.next_run().await.expect("open").expect("ok");
    assert_eq!(first.len(), 4);
    let held = records.next_run().await.expect("open").expect("ok");
    assert_eq!(held.len(), 4);
    records.next_run().await.expect("open").expect("ok").ack();
    first.ack();
    sleep(Duration::from_secs(3)).await; // several commit intervals
    assert_checkpoint_covers_first(&stream, &store, 4);
    held.ack();
    sleep(Duration::from_secs(2)).await;
    assert_checkpoint_covers_first(&stream, &store, 12);
    consumer.shutdown().await.expect("shutdown");
}

/// In `AckMode::OnDrop` a run acks itself when dropped — never when it was not handed out.
#[tokio::test(start_paused = true)]
async fn a_run_acks_itself_on_drop_and_only_what_it_holds() {
    let on_drop = Config {
        ack_mode: AckMode::OnDrop,
        max_records_per_read: 5,
        ..config("a")
    };
    let (stream, store, mut consumer) = consumer_over(1, 500, on_drop);
    {
        let mut records = consumer.records().expect("start");
        for _ in 0..2 {
            let run = records.next_run().await.expect("open").expect("ok");
            assert_eq!(run.len(), 5);
            drop(run); // processed
        }
        sleep(Duration::from_millis(500)).await; // more runs wait in the channel
    } // dropped with runs in it: they were never processed
    consumer.shutdown().await.expect("shutdown");
    assert_checkpoint_covers_first(&stream, &store, 10);
}

#[tokio::test(start_paused = true)]
async fn ack_on_drop_acks_after_processing() {
    let on_drop = Config {
        ack_mode: AckMode::OnDrop,
        ..config("a")
    };
    let (stream, store, mut consumer) = consumer_over(1, 5, on_drop);
    let mut records = consumer.records().expect("start");
    for _ in 0..5 {
        let r = records.next().await.expect("open").expect("ok");
        drop(r);
    }
    sleep(Duration::from_secs(2)).await;
    assert_checkpoint_covers_first(&stream, &store, 5);
    consumer.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_batch_handler_runs_in_order_and_retries_a_failed_batch() {
    let (_stream, store, consumer) = consumer_over(2, 200, config("a"));
    let stop = consumer.shutdown_handle();
    let seen = Arc::new(Mutex::new(Vec::<(ShardId, u64)>::new()));
    let failed_once = Arc::new(Mutex::new(false));
    let handler = {
        let seen = seen.clone();
        let failed_once = failed_once.clone();
        move |batch: ShardBatch| {
            let seen = seen.clone();
            let failed_once = failed_once.clone();
            async move {
                let mut f = failed_once.lock().expect("lock");
                if !*f {
                    *f = true;
                    return Err("the first batch fails once".into());
                }
                let mut s = seen.lock().expect("lock");
                for r in &batch.records {
                    s.push((batch.shard.clone(), id_of(&r.data)));
                }
                Ok(())
            }
        }
    };
    let run = tokio::spawn(consumer.run(handler));
    while seen.lock().expect("lock").len() < 200 {
        sleep(Duration::from_millis(100)).await;
    }
    stop.shutdown();
    run.await.expect("joined").expect("clean stop");
    let seen = seen.lock().expect("lock").clone();
    let ids: BTreeSet<u64> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), 200, "every record, the failed batch included");
    assert_eq!(
        seen.len(),
        200,
        "a failed batch is retried, not delivered twice on success"
    );
    for lease in store.peek_leases("s") {
        assert!(lease.owner.is_none());
        assert!(lease.checkpoint.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn bad_config_is_a_typed_error_and_a_consumer_starts_once() {
    let stream = MemoryStream::new("s", 1);
    let mut c = config("a");
    c.lease_ttl = Duration::from_secs(3);
    let err = Consumer::new(c, stream.clone(), MemoryLeaseStore::new()).expect_err("invalid");
    assert!(matches!(
        err,
        ConsumerError::Config(ConfigError::Invalid {
            field: "heartbeat_interval",
            ..
        })
    ));
    let mut consumer = Consumer::new(config("a"), stream, MemoryLeaseStore::new()).expect("valid");
    let _records = consumer.records().expect("first");
    assert!(matches!(
        consumer.records(),
        Err(ConsumerError::AlreadyStarted)
    ));
}

#[tokio::test(start_paused = true)]
async fn initial_position_latest_skips_old_records_but_children_start_at_their_horizon() {
    let stream = MemoryStream::new("s", 1);
    fill(&stream, 50); // before the consumer: skipped under LATEST
    sleep(Duration::from_millis(5)).await; // LATEST has millisecond resolution
    let store = MemoryLeaseStore::new();
    let mut c = config("a");
    c.initial_position = InitialPosition::Latest;
    c.shard_sync_interval = Duration::from_secs(1);
    let mut consumer = Consumer::new(c, stream.clone(), store.clone()).expect("valid");
    let mut records = consumer.records().expect("start");
    sleep(Duration::from_secs(3)).await;
    for i in 100..110u64 {
        stream.put("k", i.to_be_bytes().to_vec()).expect("put");
    }
    let parent = stream.shards()[0].clone();
    let mid = parent.hash_range.end / 2;
    stream.split(&parent.id, mid).expect("split");
    for i in 200..260u64 {
        stream
            .put(&format!("k{i}"), i.to_be_bytes().to_vec())
            .expect("put");
    }
    let ids = ack_until_distinct(&mut records, 70, "records keep coming").await;
    assert!(
        ids.iter().all(|i| *i >= 100),
        "nothing from before the start"
    );
    assert_eq!(
        ids.len(),
        70,
        "every record after the start, children included"
    );
    consumer.shutdown().await.expect("shutdown");
}

/// The records of a memory stream, each shard read through `wrap` around the stream's own
/// reader: a source that differs from the stream only in how it reads.
struct WrappedReaders<W> {
    inner: MemoryStream,
    wrap: W,
}

impl<W> WrappedReaders<W>
where
    W: Fn(&ShardId, Box<dyn ShardReader>) -> Box<dyn ShardReader> + Send + Sync + 'static,
{
    fn new(inner: MemoryStream, wrap: W) -> Self {
        Self { inner, wrap }
    }
}

#[async_trait]
impl<W> ShardSource for WrappedReaders<W>
where
    W: Fn(&ShardId, Box<dyn ShardReader>) -> Box<dyn ShardReader> + Send + Sync + 'static,
{
    fn stream_name(&self) -> &str {
        self.inner.stream_name()
    }
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        self.inner.list_shards().await
    }
    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        Ok((self.wrap)(shard, self.inner.open(shard, from).await?))
    }
}

/// A source whose readers panic on their first read, once per shard.
fn panics_once(stream: MemoryStream) -> impl ShardSource {
    let panicked: Arc<Mutex<BTreeSet<ShardId>>> = Default::default();
    WrappedReaders::new(stream, move |shard, inner| {
        Box::new(PanickyReader {
            inner,
            shard: shard.clone(),
            panicked: panicked.clone(),
        })
    })
}

struct PanickyReader {
    inner: Box<dyn ShardReader>,
    shard: ShardId,
    panicked: Arc<Mutex<BTreeSet<ShardId>>>,
}

#[async_trait]
impl ShardReader for PanickyReader {
    async fn next_batch(&mut self, max: usize) -> Result<Batch, SourceError> {
        if self
            .panicked
            .lock()
            .expect("lock")
            .insert(self.shard.clone())
        {
            panic!("a bug in a reader");
        }
        self.inner.next_batch(max).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_shard_is_restarted_not_left_dead() {
    let stream = MemoryStream::new("s", 2);
    fill(&stream, 40);
    let source = panics_once(stream.clone());
    let store = MemoryLeaseStore::new();
    let mut consumer = Consumer::new(config("a"), source, store.clone()).expect("valid");
    let mut records = consumer.records().expect("start");
    ack_until_distinct(&mut records, 40, "the shards recover").await;
    // Each restart took the lease again, so the token moved past the first tenure.
    assert!(store.peek_leases("s").iter().all(|l| l.token >= 2));
    consumer.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn fetching_pauses_at_the_unacked_bound() {
    let bounded = Config {
        max_unacked_records: 100,
        ..config("a")
    };
    let (stream, store, mut consumer) = consumer_over(1, 5_000, bounded);
    let mut records = consumer.records().expect("start");
    let first = records.next().await.expect("open").expect("ok");
    sleep(Duration::from_secs(10)).await; // a stalled handler
    let fetched = stream.stats().records_returned;
    assert!(
        fetched <= 100,
        "fetched {fetched} with 100 allowed un-acked"
    );
    drop(first);
    consumer.shutdown().await.expect("shutdown");
    let _ = store.leases("s").await.expect("readable");
}

/// A source whose stream was deleted: every call is fatal.
struct Deleted;

#[async_trait]
impl ShardSource for Deleted {
    fn stream_name(&self) -> &str {
        "gone"
    }
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        Err(SourceError::Fatal("stream gone does not exist".into()))
    }
    async fn open(&self, _: &ShardId, _: &Checkpoint) -> Result<Box<dyn ShardReader>, SourceError> {
        Err(SourceError::Fatal("stream gone does not exist".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_stops_the_consumer_and_says_why() {
    let store = MemoryLeaseStore::new();
    let mut consumer = Consumer::new(config("a"), Deleted, store.clone()).expect("valid");
    let mut records = consumer.records().expect("start");
    let item = tokio::time::timeout(Duration::from_secs(60), records.next())
        .await
        .expect("the stream ends");
    match item {
        Some(Err(ConsumerError::Source(SourceError::Fatal(why)))) => {
            assert!(why.contains("does not exist"), "{why}")
        }
        other => panic!("expected the fatal error, got {other:?}"),
    }
    assert!(records.next().await.is_none());
    let err = consumer.shutdown().await.expect_err("the same error");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(
        store.peek_clients().is_empty(),
        "deregistered on the way out"
    );
}

/// Reads `records` in a task, logging (time, id) of each record handed out, acking each.
/// How a test takes records off the stream.
#[derive(Clone, Copy, Debug)]
enum Take {
    /// One by one (`StreamExt::next`), each acked.
    Records,
    /// A run at a time (`Records::next_run`), each acked whole.
    Runs,
}

fn drain_into(
    mut records: kinsumer_core::Records,
    take: Take,
    log: Arc<Mutex<Vec<(tokio::time::Instant, u64)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let ids: Vec<u64> = match take {
                Take::Records => match records.next().await {
                    Some(Ok(r)) => {
                        let id = id_of(r.data());
                        r.ack();
                        vec![id]
                    }
                    _ => return,
                },
                Take::Runs => match records.next_run().await {
                    Some(Ok(run)) => {
                        let ids = run.records().iter().map(|r| id_of(&r.data)).collect();
                        run.ack();
                        ids
                    }
                    _ => return,
                },
            };
            let now = tokio::time::Instant::now();
            let mut log = log.lock().expect("lock");
            log.extend(ids.into_iter().map(|id| (now, id)));
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_client_cut_off_from_its_store_stops_before_anyone_takes_over() {
    cut_off_client_stops_before_anyone_takes_over(Take::Records).await;
}

/// The same through runs: a run is handed out only while the client is not fenced either.
#[tokio::test(start_paused = true)]
async fn a_client_cut_off_from_its_store_hands_out_no_run_once_fenced() {
    cut_off_client_stops_before_anyone_takes_over(Take::Runs).await;
}

async fn cut_off_client_stops_before_anyone_takes_over(take: Take) {
    use kinsumer_testkit::{Gate, GatedStore};
    let stream = MemoryStream::new("s", 1);
    let store = MemoryLeaseStore::new();
    let gate = Gate::new();
    let mut a = Consumer::new(
        config("a"),
        stream.clone(),
        GatedStore::new(store.clone(), gate.clone()),
    )
    .expect("valid");
    let a_log = Arc::new(Mutex::new(Vec::new()));
    let a_task = drain_into(a.records().expect("start"), take, a_log.clone());
    sleep(Duration::from_secs(3)).await; // a holds the shard
    let mut b = Consumer::new(config("b"), stream.clone(), store.clone()).expect("valid");
    let b_log = Arc::new(Mutex::new(Vec::new()));
    let b_task = drain_into(b.records().expect("start"), take, b_log.clone());

    // a's store calls hang from now on; its reader keeps fetching.
    let cut = tokio::time::Instant::now();
    gate.pause();
    for i in 0..400u64 {
        stream.put("k", i.to_be_bytes().to_vec()).expect("put");
        sleep(Duration::from_millis(100)).await;
    }
    sleep(Duration::from_secs(5)).await;

    let a_log = a_log.lock().expect("lock").clone();
    let b_log = b_log.lock().expect("lock").clone();
    let a_last = a_log
        .last()
        .map(|(t, _)| *t)
        .expect("a delivered before the cut");
    let b_first = b_log.first().map(|(t, _)| *t).expect("b took over");
    // a stops within lease_ttl - safety_margin (8 s) of its last heartbeat, before b starts.
    assert!(
        a_last < cut + Duration::from_secs(8),
        "a handed out records too late"
    );
    assert!(
        a_last < b_first,
        "a and b overlapped: {a_last:?} vs {b_first:?}"
    );
    let all: BTreeSet<u64> = a_log.iter().chain(&b_log).map(|(_, id)| *id).collect();
    assert_eq!(all.len(), 400, "nothing lost across the takeover");

    gate.resume();
    b.shutdown().await.expect("b shuts down");
    a.abort();
    a_task.abort();
    let _ = b_task.await;
}

#[tokio::test(start_paused = true)]
async fn a_finished_lease_is_deleted_once_its_shard_leaves_retention() {
    use kinsumer_testkit::MemoryStreamConfig;
    let stream = MemoryStream::with_config(
        "s",
        1,
        MemoryStreamConfig {
            retention: Duration::from_secs(120),
            ..MemoryStreamConfig::default()
        },
    );
    fill(&stream, 20);
    let parent = stream.shards()[0].clone();
    let (left, right) = stream
        .split(&parent.id, parent.hash_range.end / 2)
        .expect("split");
    let store = MemoryLeaseStore::new();
    let mut c = config("a");
    c.shard_sync_interval = Duration::from_secs(5);
    let mut consumer = Consumer::new(c, stream.clone(), store.clone()).expect("valid");
    let mut records = consumer.records().expect("start");
    for _ in 0..20 {
        records.next().await.expect("open").expect("ok").ack();
    }
    sleep(Duration::from_secs(10)).await;
    let parent_lease = store
        .peek_leases("s")
        .into_iter()
        .find(|l| l.shard == parent.id)
        .expect("the parent's lease stays while the shard is retained");
    assert!(parent_lease.finished);
    // Past retention the parent leaves the stream, and its lease goes with it.
    sleep(Duration::from_secs(180)).await;
    let shards: BTreeSet<ShardId> = store
        .peek_leases("s")
        .into_iter()
        .map(|l| l.shard)
        .collect();
    assert_eq!(shards, BTreeSet::from([left.clone(), right.clone()]));
    // The children are still read.
    stream.put("k", 99u64.to_be_bytes().to_vec()).expect("put");
    let r = records.next().await.expect("open").expect("ok");
    assert_eq!(id_of(r.data()), 99);
    r.ack();
    consumer.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn ack_on_drop_never_acks_records_that_were_not_handed_out() {
    let on_drop = Config {
        ack_mode: AckMode::OnDrop,
        ..config("a")
    };
    let (stream, store, mut consumer) = consumer_over(1, 500, on_drop);
    {
        let mut records = consumer.records().expect("start");
        for _ in 0..10 {
            drop(records.next().await.expect("open").expect("ok")); // processed
        }
        sleep(Duration::from_millis(500)).await; // more records wait in the channel
    } // the stream is dropped with records in it: they were never processed
    consumer.shutdown().await.expect("shutdown");
    assert_checkpoint_covers_first(&stream, &store, 10);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_batch_handler_restarts_its_shard_and_skips_nothing() {
    let (_stream, store, consumer) = consumer_over(1, 50, config("a"));
    let stop = consumer.shutdown_handle();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let panicked = Arc::new(Mutex::new(false));
    let handler = {
        let (seen, panicked) = (seen.clone(), panicked.clone());
        move |batch: ShardBatch| {
            let (seen, panicked) = (seen.clone(), panicked.clone());
            async move {
                if !std::mem::replace(&mut *panicked.lock().expect("lock"), true) {
                    panic!("a bug in the handler");
                }
                let mut s = seen.lock().expect("lock");
                s.extend(batch.records.iter().map(|r| id_of(&r.data)));
                Ok(())
            }
        }
    };
    let run = tokio::spawn(consumer.run(handler));
    for _ in 0..600 {
        if seen.lock().expect("lock").len() == 50 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.lock().expect("lock").len(), 50, "the shard recovered");
    stop.shutdown();
    run.await.expect("joined").expect("clean stop");
    assert!(
        store.peek_leases("s")[0].token >= 2,
        "restarted under a new tenure"
    );
}

/// A handler that panics on every third batch: each panic restarts the shard, and what was
/// handled before it is committed first — so only the batch that panicked comes again, never
/// batches already handled (before, the shard restarted from the last periodic commit: 1,648
/// duplicates of 2,000 records, and with panics often enough the checkpoint never moved).
#[tokio::test(start_paused = true)]
async fn a_handler_that_panics_often_redelivers_only_the_batches_that_panicked() {
    let (stream, _store, consumer) = consumer_over(1, 0, config("a"));
    let stop = consumer.shutdown_handle();
    // (ids handled, ids of batches that panicked)
    type Log = Arc<Mutex<(Vec<u64>, Vec<u64>)>>;
    let log: Log = Arc::default();
    let calls = Arc::new(Mutex::new(0u64));
    let handler = {
        let (log, calls) = (log.clone(), calls.clone());
        move |batch: ShardBatch| {
            let (log, calls) = (log.clone(), calls.clone());
            async move {
                let ids: Vec<u64> = batch.records.iter().map(|r| id_of(&r.data)).collect();
                let call = {
                    let mut c = calls.lock().expect("lock");
                    *c += 1;
                    *c
                };
                if call % 3 == 0 {
                    log.lock().expect("lock").1.extend(&ids);
                    panic!("a bug in the handler");
                }
                log.lock().expect("lock").0.extend(&ids);
                Ok(())
            }
        }
    };
    let run = tokio::spawn(consumer.run(handler));
    for round in 0..30u64 {
        for i in 0..10 {
            let id = round * 10 + i;
            stream
                .put(&format!("key-{id}"), id.to_be_bytes().to_vec())
                .expect("put");
        }
        sleep(Duration::from_millis(300)).await;
    }
    for _ in 0..600 {
        let handled: BTreeSet<u64> = log.lock().expect("lock").0.iter().copied().collect();
        if handled.len() == 300 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    stop.shutdown();
    run.await.expect("joined").expect("clean stop");
    let (handled, panicked) = log.lock().expect("lock").clone();
    let distinct: BTreeSet<u64> = handled.iter().copied().collect();
    assert_eq!(distinct.len(), 300, "nothing skipped");
    assert!(!panicked.is_empty(), "the handler did panic");
    assert_eq!(
        handled.len(),
        300,
        "no batch handled twice: only the {} records of panicked batches came again",
        panicked.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_takeover_before_the_first_commit_at_latest_loses_nothing() {
    let stream = MemoryStream::new("s", 1);
    fill(&stream, 5); // before anyone started: not wanted under LATEST
    sleep(Duration::from_millis(5)).await;
    let store = MemoryLeaseStore::new();
    let latest = |id: &str| {
        let mut c = config(id);
        c.initial_position = InitialPosition::Latest;
        c
    };
    let mut a = Consumer::new(latest("a"), stream.clone(), store.clone()).expect("valid");
    let mut a_records = a.records().expect("start");
    sleep(Duration::from_millis(500)).await; // a opened the shard at LATEST
    stream.put("k", 100u64.to_be_bytes().to_vec()).expect("put");
    let r = a_records.next().await.expect("open").expect("ok");
    assert_eq!(id_of(r.data()), 100);
    a.abort(); // a crashes before acking or committing anything
    drop((r, a_records));
    let mut b = Consumer::new(latest("b"), stream.clone(), store.clone()).expect("valid");
    let mut b_records = b.records().expect("start");
    sleep(Duration::from_secs(1)).await;
    stream.put("k", 101u64.to_be_bytes().to_vec()).expect("put");
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let r = next_within_a_minute(&mut b_records, "b takes over").await;
        ids.push(id_of(r.data()));
        r.ack();
    }
    assert_eq!(
        ids,
        vec![100, 101],
        "b resumes where a started, not at b's own LATEST"
    );
    b.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_record_never_acked_bounds_what_is_fetched_behind_it() {
    let bounded = Config {
        max_unacked_records: 100,
        ..config("a")
    };
    let (stream, _store, mut consumer) = consumer_over(1, 3_000, bounded);
    let mut records = consumer.records().expect("start");
    drop(records.next().await.expect("open").expect("ok")); // dropped, never acked
    for _ in 0..99 {
        records.next().await.expect("open").expect("ok").ack();
    }
    sleep(Duration::from_secs(30)).await;
    let fetched = stream.stats().records_returned;
    assert!(
        fetched <= 100,
        "fetched {fetched} behind one un-acked record"
    );
    consumer.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn rows_of_long_dead_clients_are_removed() {
    let stream = MemoryStream::new("s", 2);
    let store = MemoryLeaseStore::new();
    let mut a = Consumer::new(config("a"), stream.clone(), store.clone()).expect("valid");
    let _a_records = a.records().expect("start");
    let mut b = Consumer::new(config("b"), stream.clone(), store.clone()).expect("valid");
    let _b_records = b.records().expect("start");
    sleep(Duration::from_secs(5)).await;
    assert_eq!(store.peek_clients().len(), 2);
    a.abort(); // crash: its row stays behind
    sleep(Duration::from_secs(15)).await;
    assert_eq!(
        store.peek_clients().len(),
        2,
        "dead, but not yet for three TTLs"
    );
    sleep(Duration::from_secs(25)).await;
    let rows: Vec<String> = store
        .peek_clients()
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(rows, vec!["b".to_string()]);
    b.shutdown().await.expect("shutdown");
}

/// Idle store writes are one heartbeat per client per interval, whatever the shard count: no
/// per-lease renewal. Counted on the memory store, under the paused clock.
#[tokio::test(start_paused = true)]
async fn idle_store_writes_grow_with_clients_not_shards() {
    for shards in [10, 200] {
        let stream = MemoryStream::new("s", shards);
        let store = MemoryLeaseStore::new();
        let mut fleet = Vec::new();
        for id in ["a", "b", "c"] {
            let mut c = Consumer::new(config(id), stream.clone(), store.clone()).expect("valid");
            let records = c.records().expect("start");
            fleet.push((c, records));
        }
        sleep(Duration::from_secs(60)).await; // settle: every lease taken, nothing to read
        let before = store.stats();
        sleep(Duration::from_secs(100)).await;
        let after = store.stats();
        let writes = after.writes() - before.writes();
        let heartbeats = after.heartbeat - before.heartbeat;
        // 3 clients, one heartbeat each every 2 s, over 100 s.
        assert!((147..=153).contains(&heartbeats), "{heartbeats} heartbeats");
        assert_eq!(
            writes, heartbeats,
            "{shards} shards: idle writes besides heartbeats"
        );
        for (c, _) in fleet {
            c.shutdown().await.expect("shutdown");
        }
    }
}

/// Full lease reads back off on a store that serves them slowly, instead of queueing behind
/// each other; on a fast store they come every `rebalance_interval`. Both counted in one run.
#[tokio::test(start_paused = true)]
async fn full_lease_reads_are_paced_by_their_duration() {
    let mut per_client = Vec::new();
    for slow in [Duration::ZERO, Duration::from_secs(2)] {
        let stream = MemoryStream::new("s", 12);
        let store = MemoryLeaseStore::new();
        store.set_faults(StoreFaults {
            full_read_latency: slow,
            ..StoreFaults::default()
        });
        let mut fleet = Vec::new();
        for id in ["a", "b", "c"] {
            let mut config = config(id);
            // No shard listing in the window: it reads every lease too, at its own interval.
            config.shard_sync_interval = Duration::from_secs(600);
            let mut c = Consumer::new(config, stream.clone(), store.clone()).expect("valid");
            let records = c.records().expect("start");
            fleet.push((c, records));
        }
        sleep(Duration::from_secs(60)).await; // settle
        let held: Vec<usize> = fleet
            .iter()
            .map(|(c, _)| c.status().shards().len())
            .collect();
        assert_eq!(
            held,
            vec![4, 4, 4],
            "settled with full reads {slow:?} slower"
        );
        let before = store.stats().leases;
        sleep(Duration::from_secs(120)).await;
        per_client.push((store.stats().leases - before) as f64 / 3.0);
        for (c, _) in fleet {
            c.shutdown().await.expect("shutdown");
        }
    }
    let (fast, slow) = (per_client[0], per_client[1]);
    // Fast: one read per client every 5 s (`rebalance_interval`), 24 in 120 s.
    assert!(
        (22.0..=25.0).contains(&fast),
        "fast store: {fast} reads per client"
    );
    // Slow: 2 s per read, 3 clients: no sooner than 2 × 3 × 2 s = 12 s apart, 10 in 120 s
    // (without pacing, 24: every 5 s, each read starting 3 s after the last ended).
    assert!(
        (9.0..=11.0).contains(&slow),
        "slow store: {slow} reads per client"
    );
}

/// A consumer, its record stream and its records can move between tasks and threads.
#[test]
fn the_public_types_are_send() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Consumer>();
    send::<kinsumer_core::Records>();
    send::<kinsumer_core::Record>();
    send::<kinsumer_core::RecordRun>();
    send_sync::<kinsumer_core::ShutdownHandle>();
    send_sync::<kinsumer_core::StatusHandle>();
    send_sync::<ConsumerError>();
}

/// A reader that hands out one record at a time from each read of the stream, as a Kinesis
/// reader does with the user records of an aggregate, saying `more_ready` while it holds more.
struct OneAtATimeReader {
    inner: Box<dyn ShardReader>,
    held: std::collections::VecDeque<kinsumer_core::source::SourceRecord>,
}

#[async_trait]
impl ShardReader for OneAtATimeReader {
    async fn next_batch(&mut self, _max: usize) -> Result<Batch, SourceError> {
        if self.held.is_empty() {
            let read = self.inner.next_batch(10_000).await?;
            self.held.extend(read.records);
        }
        let records: Vec<_> = self.held.pop_front().into_iter().collect();
        Ok(Batch {
            records,
            millis_behind_latest: Some(0),
            end: None,
            more_ready: !self.held.is_empty(),
        })
    }
}

/// Records a reader already holds are not paced like reads of the stream: 50 records read in
/// one call and handed out one per batch all come within one `poll_interval` (they would
/// take 49 of them if each batch waited its turn).
#[tokio::test(start_paused = true)]
async fn records_a_reader_holds_are_not_paced_like_reads() {
    let stream = MemoryStream::new("s", 1);
    fill(&stream, 50);
    let cfg = config("a");
    let poll_interval = cfg.poll_interval;
    let source = WrappedReaders::new(stream.clone(), |_, inner| {
        Box::new(OneAtATimeReader {
            inner,
            held: Default::default(),
        })
    });
    let mut consumer = Consumer::new(cfg, source, MemoryLeaseStore::new()).expect("valid");
    let mut records = consumer.records().expect("start");
    let mut first_at = None;
    for n in 0..50u64 {
        let r = records.next().await.expect("open").expect("no error");
        assert_eq!(id_of(r.data()), n, "in order");
        first_at.get_or_insert_with(tokio::time::Instant::now);
        r.ack();
    }
    let took = first_at.expect("a first record").elapsed();
    assert!(
        took < poll_interval,
        "50 held records took {took:?} of the paused clock"
    );
    consumer.shutdown().await.expect("clean shutdown");
}

/// A shard that is behind is read as fast as `poll_interval` allows (5 reads/s); once it is
/// caught up, once per `idle_poll_interval` (1 s): an idle fleet leaves most of each shard's
/// read budget to the other applications on the stream.
#[tokio::test(start_paused = true)]
async fn a_caught_up_shard_is_read_once_a_second_and_a_busy_one_five_times() {
    let small_reads = Config {
        max_records_per_read: 10,
        max_unacked_records: 1_000,
        ..config("a")
    };
    let (stream, _store, mut consumer) = consumer_over(1, 200, small_reads);
    let mut records = consumer.records().expect("start");
    // Twenty reads of ten: the shard is behind until the last, so one read every 200 ms.
    let started = tokio::time::Instant::now();
    let ids = ack_until_distinct(&mut records, 200, "the backlog is read").await;
    assert_eq!(ids.len(), 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(20 * 200 + 500),
        "a shard behind is read at poll_interval: 200 records in {took:?}"
    );
    // Caught up: ten seconds of an idle shard.
    let before = stream.stats().get_records_calls;
    sleep(Duration::from_secs(10)).await;
    let idle_reads = stream.stats().get_records_calls - before;
    assert!(
        (9..=11).contains(&idle_reads),
        "{idle_reads} reads of an idle shard in 10 s (once a second expected, 50 at the busy pace)"
    );
    // A record put now is delivered within the idle pause.
    stream.put("k", 200u64.to_be_bytes().to_vec()).expect("put");
    let put_at = tokio::time::Instant::now();
    let r = next_within_a_minute(&mut records, "the new record comes").await;
    assert!(
        put_at.elapsed() <= Duration::from_secs(1),
        "{:?}",
        put_at.elapsed()
    );
    r.ack();
    consumer.shutdown().await.expect("shutdown");
}
