//! End to end: three consumers reading kinesis-local with their leases in Redis, through a
//! crash and a graceful leave — the testkit's fleet check, which every store runs.

mod common;

use kinsumer_kinesis::KinesisSource;
use kinsumer_redis::RedisLeaseStore;
use kinsumer_test_env::kinesis_local;
use kinsumer_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_kinesis_and_redis_loses_nothing_through_a_crash_and_a_leave() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let Some(kinesis) = kinesis_local::endpoint() else {
        return;
    };
    let kinesis = kinesis_local::client(&kinesis);
    let stream = kinesis_local::TestStream::create(&kinesis, "redis-fleet", 4).await;
    let source = KinesisSource::new(kinesis.clone(), &stream.name);
    let application = common::unique_app("fleet");
    let store = RedisLeaseStore::connect(&url, &application)
        .await
        .expect("connect");

    let report = conformance::consumer_fleet(source, &stream, store, &application).await;
    eprintln!("redis fleet: {report:?}");
    assert_eq!(report.deliveries, report.records + report.duplicates);
    common::cleanup(&url, &application).await;
}
