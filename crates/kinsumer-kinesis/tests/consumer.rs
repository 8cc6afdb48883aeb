//! Whole consumers on kinesis-local: resharding, injected faults, KPL aggregates.

use kinsumer_test_env::emulator::{InjectReplies, ReplaceReplies};
use kinsumer_test_env::kinesis_local as common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::primitives::Blob;
use bytes::Bytes;
use futures::StreamExt;
use kinsumer_core::{Config, Consumer, Records};
use kinsumer_kinesis::kpl::{UserRecord, aggregate};
use kinsumer_kinesis::{FanOutOptions, KinesisSource};
use kinsumer_testkit::MemoryLeaseStore;
use kinsumer_testkit::conformance::fleet_config;
use kinsumer_testkit::memory_store::{EventClock, StoreOp};

/// The fleet check's short intervals, so takeovers and reshards settle in seconds; the call
/// timeout stays the default (the emulator's reads may be slow, and were never cut short here).
fn config(client: &str) -> Config {
    let mut c = fleet_config("kinesis-tests", client);
    c.call_timeout = Config::new("kinesis-tests").call_timeout;
    c
}

#[derive(Clone, Debug)]
struct Seen {
    at: u64,
    shard: String,
    data: Bytes,
}

/// Drains `records` in a task, logging each record (stamped on `clock`) and acking it.
fn collect(
    mut records: Records,
    clock: EventClock,
    log: Arc<Mutex<Vec<Seen>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(r)) = records.next().await {
            log.lock().expect("lock").push(Seen {
                at: clock.tick(),
                shard: r.shard_id().to_string(),
                data: r.data().clone(),
            });
            r.ack();
        }
    })
}

async fn wait_for(log: &Arc<Mutex<Vec<Seen>>>, distinct: usize, what: &str) {
    for _ in 0..600 {
        let n = log
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.data.clone())
            .collect::<BTreeSet<_>>()
            .len();
        if n >= distinct {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: fewer than {distinct} distinct records after 60 s");
}

/// `key:counter` payloads, `per_key` per key for `keys` keys, in counter order per key.
fn payloads(keys: usize, from: usize, to: usize) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .flat_map(|n| {
            (0..keys).map(move |k| (format!("key-{k}"), format!("key-{k}:{n:06}").into_bytes()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_load_loses_nothing_and_keeps_key_order() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    reshard_under_load(&endpoint, "reshard", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_reshards_and_resubscribes_without_loss() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let mut options = FanOutOptions::new(common::unique_name("app"));
    // Resubscribe every 6 s instead of every 5 minutes, so the test sees some. (Kinesis
    // refuses a new subscription to a shard for a few seconds after the last one ended.)
    options.resubscribe_after = Duration::from_secs(6);
    let source = reshard_under_load(&endpoint, "fan-out", Some(options)).await;
    let subscriptions = source.stats().subscriptions.load(Ordering::Relaxed);
    assert!(
        subscriptions > 8,
        "only {subscriptions} subscriptions: no resubscription happened"
    );
    assert_eq!(
        source.stats().get_records_calls.load(Ordering::Relaxed),
        0,
        "no polling"
    );
}

/// Two consumers on a 4-shard stream while one shard splits and two others merge; checks that
/// every record is delivered, per-key order holds across the reshard, and no child record comes
/// before its parents finished. Returns the source, for its counters.
async fn reshard_under_load(
    endpoint: &str,
    prefix: &str,
    fan_out: Option<FanOutOptions>,
) -> KinesisSource {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let client = common::client(endpoint);
    let stream = common::TestStream::create(&client, prefix, 4).await;
    let mut source = KinesisSource::new(client.clone(), &stream.name);
    if let Some(options) = fan_out {
        source = source.with_fan_out(options);
    }
    let clock = EventClock::new();
    let store = MemoryLeaseStore::with_clock(clock.clone());
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut consumers = Vec::new();
    let mut tasks = Vec::new();
    for id in ["a", "b"] {
        let mut c = Consumer::new(config(id), source.clone(), store.clone()).expect("valid");
        tasks.push(collect(
            c.records().expect("start"),
            clock.clone(),
            log.clone(),
        ));
        consumers.push(c);
    }
    let keys = 40;
    stream.put_all(&payloads(keys, 0, 15)).await;
    let open = stream.open_shards().await;
    let (id, start, end) = open[0].clone();
    stream
        .split(&id, start + (end - start) / 2 + 1)
        .await
        .expect("split");
    stream.put_all(&payloads(keys, 15, 30)).await;
    let open = stream.open_shards().await;
    // Two adjacent open shards that were not just split.
    let pair = open
        .windows(2)
        .find(|w| w[0].0 != id && !w[0].0.is_empty() && w[0].2 + 1 == w[1].1 && w[1].1 > end)
        .map(|w| (w[0].0.clone(), w[1].0.clone()))
        .expect("two adjacent shards to merge");
    stream.merge(&pair.0, &pair.1).await.expect("merge");
    stream.put_all(&payloads(keys, 30, 45)).await;
    let total = keys * 45;
    wait_for(&log, total, "resharding").await;
    for c in consumers {
        c.shutdown().await.expect("clean shutdown");
    }
    for t in tasks {
        let _ = t.await;
    }
    // Retiring the application removes its stream consumer (a no-op when polling).
    source
        .deregister_fan_out()
        .await
        .expect("deregister the stream consumer");

    let log = log.lock().expect("lock").clone();
    let distinct: BTreeSet<Bytes> = log.iter().map(|s| s.data.clone()).collect();
    assert_eq!(distinct.len(), total, "every record delivered");
    // Per key, first deliveries come in the order the producer wrote them — across the split
    // and the merge.
    let mut first_seen = BTreeSet::new();
    let mut last_per_key: BTreeMap<String, String> = BTreeMap::new();
    for s in &log {
        if !first_seen.insert(s.data.clone()) {
            continue;
        }
        let text = String::from_utf8(s.data.to_vec()).expect("utf-8");
        let (key, counter) = text.split_once(':').expect("key:counter");
        if let Some(prev) = last_per_key.insert(key.to_string(), counter.to_string()) {
            assert!(prev.as_str() < counter, "{key}: {counter} after {prev}");
        }
    }
    // No child record before its parents finished.
    let history = store.history();
    let finished: BTreeMap<String, u64> = history
        .iter()
        .filter(|e| e.op == StoreOp::Finish)
        .map(|e| (e.shard.to_string(), e.at))
        .collect();
    let parents: BTreeMap<String, Vec<String>> = store
        .peek_leases(&stream.name)
        .into_iter()
        .map(|l| {
            (
                l.shard.to_string(),
                l.parents.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    assert!(
        finished.len() >= 3,
        "the split and merged parents finished: {finished:?}"
    );
    for s in &log {
        for p in parents.get(&s.shard).into_iter().flatten() {
            let done = finished.get(p).copied().unwrap_or(u64::MAX);
            assert!(
                done < s.at,
                "{} delivered before its parent {p} finished",
                s.shard
            );
        }
    }
    source
}

/// Replaces some GetRecords responses with an error, as the service would send it.
#[derive(Debug, Default)]
struct InjectFaults {
    calls: AtomicU64,
    expired: AtomicU64,
    throttled: AtomicU64,
}

impl ReplaceReplies for InjectFaults {
    fn replace(&self, operation: &str) -> Option<(u16, String)> {
        if operation != "GetRecords" {
            return None;
        }
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let code = if n.is_multiple_of(7) {
            self.expired.fetch_add(1, Ordering::Relaxed);
            "ExpiredIteratorException"
        } else if n.is_multiple_of(5) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            "ProvisionedThroughputExceededException"
        } else {
            return None;
        };
        Some((
            400,
            format!(r#"{{"__type":"{code}","message":"injected by the test"}}"#),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterators_and_throttling_lose_and_repeat_nothing() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let faults = Arc::new(InjectFaults::default());
    let plain = common::client(&endpoint);
    let stream = common::TestStream::create(&plain, "faults", 2).await;
    stream.put_all(&payloads(10, 0, 60)).await;
    let faulty = common::client_with(&endpoint, |b| {
        // Let every fault reach the consumer instead of the SDK's own retries.
        b.retry_config(RetryConfig::disabled())
            .interceptor(InjectReplies(faults.clone()))
    });
    let source = KinesisSource::new(faulty, &stream.name);
    let stats_source = source.clone();
    let clock = EventClock::new();
    let mut c = config("a");
    c.max_records_per_read = 25; // many reads, so many faults
    let mut consumer = Consumer::new(c, source, MemoryLeaseStore::new()).expect("valid");
    let log = Arc::new(Mutex::new(Vec::new()));
    let task = collect(consumer.records().expect("start"), clock, log.clone());
    wait_for(&log, 600, "faults").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.shutdown().await.expect("shutdown");
    let _ = task.await;
    let log = log.lock().expect("lock").clone();
    let distinct: BTreeSet<Bytes> = log.iter().map(|s| s.data.clone()).collect();
    assert_eq!(distinct.len(), 600, "nothing lost");
    assert_eq!(log.len(), 600, "nothing delivered twice");
    let stats = stats_source.stats();
    assert!(
        stats.expired_iterators.load(Ordering::Relaxed) > 0,
        "no expiry was provoked"
    );
    assert!(
        stats.throttled.load(Ordering::Relaxed) > 0,
        "no throttling was provoked"
    );
    assert!(
        faults.expired.load(Ordering::Relaxed) > 0 && faults.throttled.load(Ordering::Relaxed) > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_split_resume_mid_aggregate_and_survive_corruption() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let stream = common::TestStream::create(&client, "kpl", 1).await;
    // 10 aggregates of 5 user records, then one corrupted aggregate, then a plain record.
    for a in 0..10 {
        let users: Vec<UserRecord> = (0..5)
            .map(|u| UserRecord {
                partition_key: format!("user-{u}"),
                explicit_hash_key: None,
                data: Bytes::from(format!("agg-{a:02}-rec-{u}")),
            })
            .collect();
        stream_put(&stream, "aggregate", aggregate(&users)).await;
    }
    let mut corrupt = aggregate(&[UserRecord {
        partition_key: "x".into(),
        explicit_hash_key: None,
        data: Bytes::from("lost?"),
    }])
    .to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    stream_put(&stream, "corrupt", Bytes::from(corrupt.clone())).await;
    stream_put(&stream, "plain", Bytes::from("plain record")).await;

    // First consumer: acks everything up to the 3rd user record of aggregate 4, then leaves.
    let store = MemoryLeaseStore::new();
    let source = KinesisSource::new(client.clone(), &stream.name);
    let mut first = Consumer::new(config("first"), source.clone(), store.clone()).expect("valid");
    let mut records = first.records().expect("start");
    let mut resume_at = None;
    for i in 0..25 {
        let r = records.next().await.expect("open").expect("ok");
        assert_eq!(
            r.position().sub_sequence,
            (i % 5) as u64,
            "sub-sequence numbers"
        );
        assert_eq!(
            r.partition_key(),
            format!("user-{}", i % 5),
            "each user record's own key"
        );
        if i < 23 {
            r.ack();
        } else if i == 23 {
            resume_at = Some(r.position().clone()); // not acked: processing was interrupted
        }
    }
    first.shutdown().await.expect("shutdown");
    drop(records);
    let resume_at = resume_at.expect("set");
    assert_eq!(resume_at.sub_sequence, 3);

    // Second consumer: resumes inside aggregate 4, at its 4th user record.
    let mut second = Consumer::new(config("second"), source.clone(), store.clone()).expect("valid");
    let mut records = second.records().expect("start");
    let mut got = Vec::new();
    while got.len() < 29 {
        let r = tokio::time::timeout(Duration::from_secs(30), records.next())
            .await
            .expect("more records")
            .expect("open")
            .expect("ok");
        got.push((r.position().clone(), r.data().clone()));
        r.ack();
    }
    second.shutdown().await.expect("shutdown");
    assert_eq!(
        got[0].0, resume_at,
        "resumed at the first user record not acked"
    );
    assert_eq!(&got[0].1[..], b"agg-04-rec-3");
    assert_eq!(
        &got[27].1[..],
        &corrupt[..],
        "the corrupted aggregate, delivered raw"
    );
    assert_eq!(&got[28].1[..], b"plain record");
    assert_eq!(
        source.stats().malformed_aggregates.load(Ordering::Relaxed),
        2,
        "seen by both consumers"
    );
}

async fn stream_put(stream: &common::TestStream, key: &str, data: Bytes) {
    stream
        .client
        .put_record()
        .stream_name(&stream.name)
        .partition_key(key)
        .data(Blob::new(data.to_vec()))
        .send()
        .await
        .expect("PutRecord");
}

/// A stream deleted and created again under the same name (its shards have the same ids) —
/// as after an emulator restart and re-provisioning: GetRecords answers the old iterator with
/// ResourceNotFound and the stream is missing for a while. Before, the lease was finished
/// (SHARD_END for good: the new records were never read) or a listing stopped the consumer as
/// fatal; now the shard is finished only if a listing agrees it is gone, and the consumer
/// reads on in the new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_and_created_again_is_read_on_not_finished() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let stream = common::TestStream::create(&client, "recreate", 1).await;
    let first: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("k{i}"), format!("first-{i}").into_bytes()))
        .collect();
    stream.put_all(&first).await;
    let store = MemoryLeaseStore::new();
    let mut consumer = Consumer::new(
        config("a"),
        KinesisSource::new(client.clone(), &stream.name),
        store.clone(),
    )
    .expect("valid");
    let log = Arc::new(Mutex::new(Vec::new()));
    let task = collect(
        consumer.records().expect("start"),
        EventClock::new(),
        log.clone(),
    );
    wait_for(&log, 5, "the first stream's records").await;

    client
        .delete_stream()
        .stream_name(&stream.name)
        .enforce_consumer_deletion(true)
        .send()
        .await
        .expect("DeleteStream");
    // Gone for a while: listings and reads fail meanwhile.
    for _ in 0..100 {
        let described = client
            .describe_stream_summary()
            .stream_name(&stream.name)
            .send()
            .await;
        if described.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    client
        .create_stream()
        .stream_name(&stream.name)
        .shard_count(1)
        .send()
        .await
        .expect("CreateStream again");
    stream.wait_active().await;
    let second: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("k{i}"), format!("second-{i}").into_bytes()))
        .collect();
    stream.put_all(&second).await;
    wait_for(&log, 10, "the records of the stream created again").await;
    let leases = store.peek_leases(&stream.name);
    assert!(
        leases.iter().all(|l| !l.finished),
        "no lease was finished on a guess: {leases:?}"
    );
    consumer.shutdown().await.expect("shutdown");
    task.abort();
}
