//! Every log line says whose it is: the consumer's tasks run in its span (application, client,
//! stream) and a tenure's in the tenure's (shard, token), spawned tasks included — so the
//! lines an application's handler writes carry the shard and token of the batch it handles.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinsumer_core::{Config, Consumer, ShardBatch};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
use tokio::time::sleep;
use tracing_subscriber::fmt::format::FmtSpan;

/// Stream `s` with `shards` shards and `records` records on them.
fn stream_of(shards: usize, records: u64) -> MemoryStream {
    let stream = MemoryStream::new("s", shards);
    for i in 0..records {
        let data = bytes::Bytes::from(i.to_be_bytes().to_vec());
        stream.put(&format!("k{i}"), data).expect("put");
    }
    stream
}

#[tokio::test(start_paused = true)]
async fn a_handlers_log_lines_carry_its_shard_and_token() {
    let (captured, _guard) = common::capture_logs(tracing::Level::INFO, FmtSpan::NONE);

    let stream = stream_of(3, 30);
    let mut config = Config::new("app").with_client_id("a");
    config.rng_seed = Some(1);
    let consumer = Consumer::new(config, stream, MemoryLeaseStore::new()).expect("valid");
    let stop = consumer.shutdown_handle();
    let handled = Arc::new(Mutex::new(0usize));
    let handler = {
        let handled = handled.clone();
        move |batch: ShardBatch| {
            let handled = handled.clone();
            async move {
                // What the application knows; the span must say the same.
                tracing::info!(
                    handled_shard = %batch.shard,
                    handled_token = batch.lease_token,
                    "handled a batch"
                );
                *handled.lock().expect("lock") += batch.records.len();
                Ok(())
            }
        }
    };
    let run = tokio::spawn(consumer.run(handler));
    while *handled.lock().expect("lock") < 30 {
        sleep(Duration::from_millis(100)).await;
    }
    stop.shutdown();
    run.await.expect("joined").expect("clean stop");

    let lines = captured.lines();
    let handler_lines: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("handled a batch"))
        .collect();
    assert!(
        handler_lines.len() >= 3,
        "one line per shard at least: {lines:#?}"
    );
    for line in handler_lines {
        let field = |name: &str| {
            let from = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
            line[from..]
                .split([' ', '}'])
                .next()
                .expect("value")
                .to_owned()
        };
        let (shard, token) = (field("handled_shard"), field("handled_token"));
        assert!(
            line.contains("consumer{app=app client=a stream=s}"),
            "the consumer's span: {line}"
        );
        assert!(
            line.contains(&format!("tenure{{shard={shard} token={token}}}")),
            "the tenure's span, with the batch's own shard and token: {line}"
        );
    }
    // The library's own lines from spawned tasks carry the consumer's span too.
    let ours: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("kinsumer_core"))
        .collect();
    assert!(
        !ours.is_empty(),
        "the consumer logged something: {lines:#?}"
    );
    for line in ours {
        assert!(line.contains("consumer{app=app"), "no context: {line}");
    }
}

/// Every store and source call is a `DEBUG` span naming the call and its shard, closed with
/// its outcome and duration, inside the span of whoever made it.
#[tokio::test(start_paused = true)]
async fn every_store_and_source_call_is_a_span_with_its_shard_and_outcome() {
    use futures::StreamExt;
    use kinsumer_testkit::StoreFaults;

    let (captured, _guard) = common::capture_logs(tracing::Level::DEBUG, FmtSpan::CLOSE);

    let stream = stream_of(2, 20);
    let store = MemoryLeaseStore::new();
    // Some calls fail, so some spans end with an error's kind.
    store.set_faults(StoreFaults {
        throttle_rate: 0.3,
        ..StoreFaults::default()
    });
    let mut config = Config::new("app").with_client_id("a");
    config.rng_seed = Some(1);
    let mut consumer = Consumer::new(config, stream, store).expect("valid");
    let mut records = consumer.records().expect("start");
    for _ in 0..20 {
        let record = tokio::time::timeout(Duration::from_secs(60), records.next())
            .await
            .expect("a record within a minute")
            .expect("open")
            .expect("no error");
        record.ack();
    }
    sleep(Duration::from_secs(5)).await; // a checkpoint or two
    consumer.shutdown().await.expect("shutdown");

    let lines = captured.lines();
    let closes = |call: &str, op: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| {
                l.contains(&format!("{call}{{op=\"{op}\"")) && l.contains(": close time.busy=")
            })
            .cloned()
            .collect()
    };
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let taken = closes("store_call", "take");
        assert!(
            taken
                .iter()
                .any(|l| l.contains(&format!("shard={shard} outcome=\"ok\""))
                    && l.contains("consumer{app=app client=a stream=s}")),
            "a take of {shard}, in the consumer's span: {taken:#?}"
        );
        let reads = closes("source_call", "read");
        assert!(
            reads.iter().any(
                |l| l.contains(&format!("shard={shard} outcome=\"ok\" millis="))
                    && l.contains(&format!("tenure{{shard={shard} token="))
            ),
            "a read of {shard}, in its tenure's span: {reads:#?}"
        );
        let checkpoints = closes("store_call", "checkpoint");
        assert!(
            checkpoints
                .iter()
                .any(|l| l.contains(&format!("shard={shard} outcome="))),
            "a checkpoint of {shard}: {checkpoints:#?}"
        );
    }
    let beats = closes("store_call", "heartbeat");
    assert!(
        beats.iter().all(|l| !l.contains("shard=")),
        "a heartbeat is about no shard: {beats:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("store_call{") && l.contains("outcome=\"throttled\"")),
        "a call that failed ends with its error's kind"
    );
}
