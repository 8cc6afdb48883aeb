//! The `ShardSource` contract, against kinesis-local.

use kinsumer_test_env::kinesis_local as common;

use kinsumer_core::source::ShardSource;
use kinsumer_kinesis::KinesisSource;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_source_conforms_by_name() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let stream = common::TestStream::create(&client, "conformance", 2).await;
    let source = KinesisSource::new(client.clone(), &stream.name);
    kinsumer_testkit::conformance::shard_source(&source, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_source_conforms_by_arn() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let stream = common::TestStream::create(&client, "conformance-arn", 2).await;
    let source = KinesisSource::from_arn(client.clone(), &stream.arn).expect("a stream ARN");
    assert_eq!(source.stream_name(), stream.name);
    kinsumer_testkit::conformance::shard_source(&source, &stream).await;
}

#[test]
fn a_bad_arn_is_a_typed_error() {
    let client = common::client("http://127.0.0.1:1");
    for bad in [
        "",
        "orders",
        "arn:aws:s3:::bucket",
        "arn:aws:kinesis:us-east-1:123:stream/",
    ] {
        let err = KinesisSource::from_arn(client.clone(), bad).expect_err(bad);
        assert!(err.to_string().contains("invalid stream ARN"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_are_followed_to_the_end() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let stream = common::TestStream::create(&client, "paging", 5).await;
    let all = KinesisSource::new(client.clone(), &stream.name)
        .list_shards()
        .await
        .expect("one page");
    let paged = KinesisSource::new(client.clone(), &stream.name)
        .with_list_page_size(2)
        .list_shards()
        .await
        .expect("pages of two");
    assert_eq!(all.len(), 5);
    assert_eq!(
        paged, all,
        "three pages of at most two shards give the same listing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_timestamp_starts_at_the_first_record_at_or_after_it() {
    use kinsumer_core::position::Checkpoint;
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let stream = common::TestStream::create(&client, "timestamp", 1).await;
    stream.put_all(&[("k".into(), b"before".to_vec())]).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    stream.put_all(&[("k".into(), b"after".to_vec())]).await;
    let source = KinesisSource::new(client.clone(), &stream.name);
    let shard = source.list_shards().await.expect("list")[0].id.clone();
    // The cut is taken on the service's clock (the arrival stamps), not ours: an emulator's
    // clock can run seconds behind this host's, and refuses a time it has not reached.
    let mut all = source
        .open(&shard, &Checkpoint::TrimHorizon)
        .await
        .expect("open");
    let mut both = Vec::new();
    for _ in 0..20 {
        if both.len() >= 2 {
            break;
        }
        both.extend(all.next_batch(100).await.expect("read").records);
    }
    assert_eq!(both.len(), 2, "{both:?}");
    // Exactly at the second record's arrival ("at or after"); the first arrived over a second
    // before (the emulator compares whole seconds, so the gap must pass a second boundary).
    let cut = both[1].arrival_ms;
    assert!(
        both[0].arrival_ms + 1_000 < cut,
        "arrivals over a second apart: {both:?}"
    );
    let mut reader = source
        .open(&shard, &Checkpoint::AtTimestamp(cut))
        .await
        .expect("open");
    // A read may come back empty before the records: read until some arrive.
    let mut read = Vec::new();
    for _ in 0..20 {
        read.extend(reader.next_batch(100).await.expect("read").records);
        if !read.is_empty() {
            break;
        }
    }
    let data: Vec<&[u8]> = read.iter().map(|r| &r.data[..]).collect();
    assert_eq!(data, vec![&b"after"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_record_is_gone_reads_as_trimmed() {
    use kinsumer_core::position::{Checkpoint, Position};
    use kinsumer_core::source::SourceError;
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let stream = common::TestStream::create(&client, "trimmed", 1).await;
    stream
        .put_all(&[
            ("k".into(), b"first".to_vec()),
            ("k".into(), b"second".to_vec()),
        ])
        .await;
    let source = KinesisSource::new(client.clone(), &stream.name);
    let shard = source.list_shards().await.expect("list")[0].id.clone();
    let mut reader = source
        .open(&shard, &Checkpoint::TrimHorizon)
        .await
        .expect("open");
    let first = reader.next_batch(1).await.expect("read").records[0]
        .position
        .clone();
    // A checkpoint naming a record just before the first one retained: as if it had been
    // trimmed away, with whatever followed it.
    let gone = Position::new(
        minus_one(first.sequence.as_str()).parse().expect("digits"),
        0,
    );
    let outcome = match source.open(&shard, &Checkpoint::After(gone)).await {
        Ok(mut reader) => reader.next_batch(100).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        matches!(outcome, Err(SourceError::Trimmed { .. })),
        "expected Trimmed, got {outcome:?}"
    );
    assert_eq!(
        source
            .stats()
            .trimmed_checkpoints
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// `n - 1` for a positive decimal number of any length (sequence numbers exceed 128 bits).
fn minus_one(n: &str) -> String {
    let mut digits: Vec<u8> = n.bytes().collect();
    for d in digits.iter_mut().rev() {
        if *d == b'0' {
            *d = b'9';
        } else {
            *d -= 1;
            break;
        }
    }
    String::from_utf8(digits).expect("ascii digits")
}
