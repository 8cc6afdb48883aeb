//! The `ShardSource` contract, against kinesis-local.

mod common;

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
