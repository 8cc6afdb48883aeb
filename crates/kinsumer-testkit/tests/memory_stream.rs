//! Focused tests of `MemoryStream`: routing, read limits, iterator expiry, retention, resharding
//! and reproducible faults.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::{Batch, ShardId, ShardReader, ShardSource, SourceError};
use kinsumer_testkit::memory_stream::{
    FIRST_SEQUENCE_NUMBER, MAX_BYTES_PER_READ, MAX_RECORDS_PER_READ, partition_hash_key,
};
use kinsumer_testkit::{
    MemoryStream, MemoryStreamConfig, MemoryStreamError, ReadLimits, SourceFaults,
};
use md5::{Digest, Md5};

async fn read_all(reader: &mut dyn ShardReader) -> Vec<Batch> {
    let mut batches = Vec::new();
    loop {
        let batch = reader.next_batch(MAX_RECORDS_PER_READ).await.unwrap();
        let done = batch.records.is_empty() || batch.end.is_some();
        batches.push(batch);
        if done {
            return batches;
        }
    }
}

fn data_of(batches: &[Batch]) -> Vec<Bytes> {
    batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.data.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn routes_by_md5_of_the_partition_key() {
    let stream = MemoryStream::new("routing", 4);
    for key in ["customer-1", "customer-2", "a", "Kinesis partition key"] {
        let digest: [u8; 16] = Md5::digest(key.as_bytes()).into();
        let hash_key = u128::from_be_bytes(digest);
        assert_eq!(partition_hash_key(key), hash_key);
        let (shard, _) = stream.put(key, "x").unwrap();
        assert!(
            stream.hash_range(&shard).unwrap().contains(hash_key),
            "{key}"
        );
    }
    // A known example: MD5("a") = 0cc175b9c0f1b6a831c399e269772661, in the first quarter.
    let (shard, _) = stream.put("a", "x").unwrap();
    assert_eq!(shard, ShardId::from("shardId-000000000000"));
    assert_eq!(partition_hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
}

#[tokio::test(start_paused = true)]
async fn shards_split_the_key_space_evenly() {
    let stream = MemoryStream::new("even", 3);
    let shards = stream.shards();
    let ids: Vec<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000002"
        ]
    );
    assert_eq!(shards[0].hash_range.start, 0);
    assert_eq!(shards[2].hash_range.end, u128::MAX);
    assert_eq!(shards[0].hash_range.end + 1, shards[1].hash_range.start);
    // The boundaries a real 3-shard Kinesis stream has.
    assert_eq!(
        shards[1].hash_range.start,
        113_427_455_640_312_821_154_458_202_477_256_070_485
    );
    assert_eq!(
        shards[2].hash_range.start,
        226_854_911_280_625_642_308_916_404_954_512_140_970
    );
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_are_long_and_increase_and_arrival_follows_tokio_time() {
    let stream = MemoryStream::new("seq", 1);
    let (_, first) = stream.put("k", "1").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (shard, second) = stream.put("k", "2").unwrap();
    assert_eq!(
        first.sequence,
        SequenceNumber::from_u128(FIRST_SEQUENCE_NUMBER)
    );
    assert!(first.sequence.as_str().len() > 20, "longer than a u64");
    assert!(first < second);
    assert_eq!(second.sub_sequence, 0);
    let records = stream.records(&shard);
    let base = MemoryStreamConfig::default().base_epoch_ms;
    assert_eq!(records[0].arrival_ms, base);
    assert_eq!(records[1].arrival_ms, base + 1500);
}

#[tokio::test(start_paused = true)]
async fn bad_producer_and_admin_input_is_a_typed_error() {
    let stream = MemoryStream::new("bad", 2);
    let [a, b] = [0, 1].map(|i| stream.shards()[i].id.clone());
    assert!(matches!(
        stream.put("", "x"),
        Err(MemoryStreamError::InvalidPartitionKey(_))
    ));
    assert!(matches!(
        stream.put(&"k".repeat(257), "x"),
        Err(MemoryStreamError::InvalidPartitionKey(_))
    ));
    assert!(matches!(
        stream.put("k", vec![0u8; 1024 * 1024]),
        Err(MemoryStreamError::RecordTooLarge { .. })
    ));
    let unknown = ShardId::from("shardId-999");
    assert_eq!(
        stream.split(&unknown, 5),
        Err(MemoryStreamError::UnknownShard(unknown.clone()))
    );
    let range = stream.hash_range(&a).unwrap();
    for key in [range.start, range.end + 1, u128::MAX] {
        assert!(matches!(
            stream.split(&a, key),
            Err(MemoryStreamError::HashKeyOutOfRange { .. })
        ));
    }
    assert!(matches!(
        stream.merge(&a, &a),
        Err(MemoryStreamError::NotAdjacent { .. })
    ));
    let child = stream.merge(&b, &a).unwrap();
    assert_eq!(
        stream.merge(&a, &b),
        Err(MemoryStreamError::ShardClosed(a.clone()))
    );
    assert!(matches!(
        stream.split(&a, range.end),
        Err(MemoryStreamError::ShardClosed(_))
    ));
    // Merged the other way round: parents in call order, range the union.
    let info = stream.shards().into_iter().find(|s| s.id == child).unwrap();
    assert_eq!(info.parents, vec![b, a]);
    assert_eq!(info.hash_range, kinsumer_core::source::HashRange::FULL);
}

#[tokio::test(start_paused = true)]
async fn reads_are_capped_at_ten_thousand_records() {
    let stream = MemoryStream::new("caps", 1);
    for i in 0..10_050u32 {
        stream.put("k", i.to_be_bytes().to_vec()).unwrap();
    }
    let shard = stream.shards()[0].id.clone();
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    let first = reader.next_batch(20_000).await.unwrap();
    assert_eq!(first.records.len(), 10_000);
    assert!(first.millis_behind_latest.is_some());
    let second = reader.next_batch(20_000).await.unwrap();
    assert_eq!(second.records.len(), 50);
    assert_eq!(second.millis_behind_latest, Some(0));
    let third = reader.next_batch(3).await.unwrap();
    assert!(third.records.is_empty() && third.end.is_none());
}

#[tokio::test(start_paused = true)]
async fn reads_are_capped_at_ten_mebibytes_and_at_max_records() {
    let stream = MemoryStream::without_read_limits("bytes", 1);
    let big = Bytes::from(vec![7u8; 1024 * 1024 - 100]);
    for _ in 0..12 {
        stream.put("k", big.clone()).unwrap();
    }
    let shard = stream.shards()[0].id.clone();
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    let first = reader.next_batch(100).await.unwrap();
    assert_eq!(first.records.len(), 10);
    let bytes: usize = first.records.iter().map(|r| r.data.len()).sum();
    assert!(bytes <= MAX_BYTES_PER_READ);
    assert_eq!(reader.next_batch(1).await.unwrap().records.len(), 1);
    assert_eq!(reader.next_batch(100).await.unwrap().records.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn millis_behind_latest_measures_to_the_tip() {
    let stream = MemoryStream::new("lag", 1);
    stream.put("k", "old").unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    stream.put("k", "new").unwrap();
    let shard = stream.shards()[0].id.clone();
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    assert_eq!(
        reader.next_batch(1).await.unwrap().millis_behind_latest,
        Some(60_000)
    );
    assert_eq!(
        reader.next_batch(1).await.unwrap().millis_behind_latest,
        Some(0)
    );
}

#[tokio::test(start_paused = true)]
async fn start_positions() {
    let stream = MemoryStream::without_read_limits("starts", 1);
    let shard = stream.shards()[0].id.clone();
    let mut positions = Vec::new();
    for i in 0..5 {
        positions.push(stream.put("k", format!("r{i}")).unwrap().1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let open = |from: Checkpoint| {
        let stream = stream.clone();
        let shard = shard.clone();
        async move { stream.open(&shard, &from).await.unwrap() }
    };

    let mut at_ts = open(Checkpoint::AtTimestamp(
        stream.records(&shard)[2].arrival_ms,
    ))
    .await;
    assert_eq!(data_of(&read_all(at_ts.as_mut()).await), ["r2", "r3", "r4"]);

    let mut after = open(Checkpoint::After(positions[1].clone())).await;
    assert_eq!(data_of(&read_all(after.as_mut()).await), ["r2", "r3", "r4"]);

    // A sub-sequence position skips everything at or before it, including its own record.
    let within = Position::new(positions[1].sequence.clone(), 4);
    let mut after_sub = open(Checkpoint::After(within)).await;
    assert_eq!(
        data_of(&read_all(after_sub.as_mut()).await),
        ["r2", "r3", "r4"]
    );

    let mut latest = open(Checkpoint::Latest).await;
    assert!(latest.next_batch(10).await.unwrap().records.is_empty());
    stream.put("k", "r5").unwrap();
    assert_eq!(data_of(&read_all(latest.as_mut()).await), ["r5"]);

    let mut end = open(Checkpoint::ShardEnd).await;
    let batch = end.next_batch(10).await.unwrap();
    assert!(batch.records.is_empty());
    assert_eq!(batch.end, Some(vec![]));
}

#[tokio::test(start_paused = true)]
async fn a_closed_shard_ends_with_its_children_and_latest_on_it_is_at_the_end() {
    let stream = MemoryStream::new("ends", 1);
    let shard = stream.shards()[0].id.clone();
    stream.put("k", "before").unwrap();
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    let (left, right) = stream.split(&shard, 1u128 << 127).unwrap();
    let batch = reader.next_batch(10).await.unwrap();
    assert_eq!(data_of(std::slice::from_ref(&batch)), ["before"]);
    assert_eq!(batch.end, Some(vec![left.clone(), right.clone()]));
    // The end stays reported.
    let again = reader.next_batch(10).await.unwrap();
    assert_eq!(again.end, Some(vec![left.clone(), right.clone()]));

    let mut latest = stream.open(&shard, &Checkpoint::Latest).await.unwrap();
    assert_eq!(
        latest.next_batch(10).await.unwrap().end,
        Some(vec![left.clone(), right.clone()])
    );
    let listed = stream.list_shards().await.unwrap();
    let parent = listed.iter().find(|s| s.id == shard).unwrap();
    assert!(!parent.open);
    let children: BTreeSet<_> = listed
        .iter()
        .filter(|s| s.parents == vec![shard.clone()])
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(children, BTreeSet::from([left, right]));
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_reopens_after_the_last_record_returned() {
    let stream = MemoryStream::new("expiry", 1);
    let shard = stream.shards()[0].id.clone();
    for i in 0..10 {
        stream.put("k", format!("r{i}")).unwrap();
    }
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    let mut seen = data_of(&[reader.next_batch(3).await.unwrap()]);
    // Sit past the 5-minute iterator TTL, and write more meanwhile.
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    stream.put("k", "r10").unwrap();
    seen.extend(data_of(&[reader.next_batch(3).await.unwrap()]));
    assert_eq!(stream.stats().expired_iterators, 1);
    seen.extend(data_of(&read_all(reader.as_mut()).await));
    let expected: Vec<String> = (0..=10).map(|i| format!("r{i}")).collect();
    assert_eq!(seen, expected, "no loss and no duplicate");
    // A re-open is a real `GetShardIterator`.
    assert_eq!(stream.stats().get_shard_iterator_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_that_returned_nothing_reopens_at_its_start() {
    let stream = MemoryStream::new("expiry-latest", 1);
    let shard = stream.shards()[0].id.clone();
    stream.put("k", "old").unwrap();
    let mut reader = stream.open(&shard, &Checkpoint::Latest).await.unwrap();
    stream.put("k", "new-1").unwrap();
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    stream.put("k", "new-2").unwrap();
    // Re-opening at "latest" now would lose new-1; the reader pinned its start instead.
    assert_eq!(
        data_of(&read_all(reader.as_mut()).await),
        ["new-1", "new-2"]
    );
    assert_eq!(stream.stats().expired_iterators, 1);
}

#[tokio::test(start_paused = true)]
async fn forced_expiry_under_faults_never_loses_or_repeats() {
    let stream = MemoryStream::with_config(
        "forced-expiry",
        1,
        MemoryStreamConfig {
            seed: 3,
            ..MemoryStreamConfig::default()
        },
    );
    let shard = stream.shards()[0].id.clone();
    for i in 0..200 {
        stream.put("k", format!("r{i}")).unwrap();
    }
    stream.set_faults(SourceFaults {
        iterator_expiry_rate: 0.5,
        error_rate: 0.2,
        throttle_rate: 0.2,
        latency: (Duration::from_millis(5), Duration::from_millis(50)),
    });
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await;
    while reader.is_err() {
        reader = stream.open(&shard, &Checkpoint::TrimHorizon).await;
    }
    let mut reader = reader.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 200 {
        match reader.next_batch(7).await {
            Ok(batch) => seen.extend(data_of(&[batch])),
            Err(err) => assert!(err.is_retryable(), "{err}"),
        }
    }
    let expected: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
    assert_eq!(seen, expected);
    let stats = stream.stats();
    assert!(stats.expired_iterators > 0 && stats.throttled > 0 && stats.injected_errors > 0);
}

#[tokio::test(start_paused = true)]
async fn trimmed_positions_and_gone_shards() {
    let stream = MemoryStream::with_config(
        "retention",
        1,
        MemoryStreamConfig {
            retention: Duration::from_secs(60 * 60),
            ..MemoryStreamConfig::default()
        },
    );
    let shard = stream.shards()[0].id.clone();
    let (_, old_1) = stream.put("k", "old-1").unwrap();
    stream.put("k", "old-2").unwrap();
    tokio::time::sleep(Duration::from_secs(2 * 60 * 60)).await;
    stream.put("k", "new").unwrap();

    let trimmed = stream.open(&shard, &Checkpoint::After(old_1)).await.err();
    assert!(
        matches!(trimmed, Some(SourceError::Trimmed { .. })),
        "{trimmed:?}"
    );
    let mut horizon = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    assert_eq!(data_of(&read_all(horizon.as_mut()).await), ["new"]);
    // Introspection still shows what was trimmed.
    assert_eq!(stream.records(&shard).len(), 3);

    // A reader left behind by retention is told, not silently moved.
    let mut lagging = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    let (left, _) = stream.split(&shard, 1u128 << 127).unwrap();
    stream.put_with_hash_key("k", 0, "child").unwrap();
    stream.trim_before(stream.now_ms() + 1);
    assert!(matches!(
        lagging.next_batch(10).await,
        Err(SourceError::ShardGone(_))
    ));
    // The closed parent left retention: gone from the listing, and opening it says so.
    let listed: Vec<ShardId> = stream
        .list_shards()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(!listed.contains(&shard) && listed.contains(&left));
    assert_eq!(
        stream.open(&shard, &Checkpoint::TrimHorizon).await.err(),
        Some(SourceError::ShardGone(shard.clone()))
    );
    assert_eq!(stream.shards().len(), 3, "shards() still lists it");
}

#[tokio::test(start_paused = true)]
async fn a_reader_whose_next_record_was_trimmed_reports_trimmed() {
    let stream = MemoryStream::with_config(
        "lagging",
        1,
        MemoryStreamConfig {
            retention: Duration::from_secs(60 * 60),
            ..MemoryStreamConfig::default()
        },
    );
    let shard = stream.shards()[0].id.clone();
    stream.put("k", "a").unwrap();
    stream.put("k", "b").unwrap();
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    assert_eq!(data_of(&[reader.next_batch(1).await.unwrap()]), ["a"]);
    stream.trim_before(stream.now_ms() + 1);
    assert!(matches!(
        reader.next_batch(1).await,
        Err(SourceError::Trimmed { .. })
    ));
}

/// The outcomes of a fixed workload of calls, under faults drawn from `seed`.
async fn fault_trace(seed: u64) -> Vec<String> {
    let stream = MemoryStream::with_config(
        "faults",
        2,
        MemoryStreamConfig {
            seed,
            ..MemoryStreamConfig::default()
        },
    );
    for i in 0..50 {
        stream.put(&format!("k{i}"), "x").unwrap();
    }
    stream.set_faults(SourceFaults {
        throttle_rate: 0.3,
        error_rate: 0.2,
        latency: (Duration::from_millis(1), Duration::from_millis(100)),
        iterator_expiry_rate: 0.1,
    });
    let shard = stream.shards()[0].id.clone();
    let start = tokio::time::Instant::now();
    let mut trace = Vec::new();
    let mut reader = None;
    for _ in 0..100 {
        let outcome = match &mut reader {
            None => match stream.open(&shard, &Checkpoint::TrimHorizon).await {
                Ok(r) => {
                    reader = Some(r);
                    "opened".to_owned()
                }
                Err(e) => format!("open: {e}"),
            },
            Some(r) => match r.next_batch(2).await {
                Ok(b) => format!("read {}", b.records.len()),
                Err(e) => format!("read: {e}"),
            },
        };
        trace.push(format!("{:?} {outcome}", start.elapsed()));
    }
    trace.push(format!("{:?}", stream.stats()));
    trace
}

#[tokio::test(start_paused = true)]
async fn faults_replay_exactly_for_the_same_seed() {
    let a = fault_trace(42).await;
    let b = fault_trace(42).await;
    let c = fault_trace(43).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().any(|l| l.contains("throttled")));
    assert!(a.iter().any(|l| l.contains("transient")));
}

/// Five reads a second per shard, over every reader of it: two readers (two applications)
/// share the budget, and a sixth read within the second is refused without being served.
#[tokio::test(start_paused = true)]
async fn a_shard_serves_five_reads_a_second_to_all_its_readers() {
    let stream = MemoryStream::new("limits", 2);
    let shard = stream.shards()[0].id.clone();
    let other = stream.shards()[1].id.clone();
    let mut a = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    let mut b = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    for _ in 0..3 {
        a.next_batch(10).await.unwrap();
    }
    for _ in 0..2 {
        b.next_batch(10).await.unwrap();
    }
    let refused = a.next_batch(10).await;
    assert!(
        matches!(refused, Err(SourceError::Throttled(_))),
        "the sixth read within a second: {refused:?}"
    );
    assert_eq!(stream.stats().throttled, 1);
    // Another shard has its own budget.
    let mut c = stream.open(&other, &Checkpoint::TrimHorizon).await.unwrap();
    c.next_batch(10).await.unwrap();
    // A second after the first read, the budget is back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.next_batch(10).await.unwrap();
}

/// 2 MiB a second per shard: after a 10 MiB read the shard refuses reads until the bytes are
/// served but a second's worth, about four seconds.
#[tokio::test(start_paused = true)]
async fn a_large_read_leaves_its_shard_refusing_reads_for_seconds() {
    let stream = MemoryStream::new("bytes", 1);
    let shard = stream.shards()[0].id.clone();
    for _ in 0..11 {
        stream.put("k", vec![7u8; 1_000_000]).unwrap();
    }
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    let batch = reader.next_batch(MAX_RECORDS_PER_READ).await.unwrap();
    assert_eq!(batch.records.len(), 10, "10 MiB at most per read");
    let mut refused_for = Duration::ZERO;
    while matches!(reader.next_batch(10).await, Err(SourceError::Throttled(_))) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused_for += Duration::from_millis(100);
    }
    assert!(
        (Duration::from_millis(3_500)..=Duration::from_millis(4_100)).contains(&refused_for),
        "refused for {refused_for:?}"
    );
}

/// Without limits (a benchmark of the pipeline's own speed), reads are never refused.
#[tokio::test(start_paused = true)]
async fn a_stream_without_read_limits_serves_every_read() {
    let stream = MemoryStream::without_read_limits("fast", 1);
    assert_eq!(stream.config().read_limits, None);
    assert_eq!(
        MemoryStream::new("x", 1).config().read_limits,
        Some(ReadLimits::KINESIS)
    );
    let shard = stream.shards()[0].id.clone();
    let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    for _ in 0..100 {
        reader.next_batch(10).await.unwrap();
    }
    assert_eq!(stream.stats().throttled, 0);
}
