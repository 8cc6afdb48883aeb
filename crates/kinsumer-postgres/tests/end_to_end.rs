//! End to end: three consumers reading kinesis-local with their leases in PostgreSQL, through a
//! crash and a graceful leave — the testkit's fleet check, which every store runs.

mod common;

use kinsumer_kinesis::KinesisSource;
use kinsumer_test_env::kinesis_local;
use kinsumer_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_kinesis_and_postgres_loses_nothing_through_a_crash_and_a_leave() {
    let Some(url) = common::url() else {
        return;
    };
    let Some(kinesis) = kinesis_local::endpoint() else {
        return;
    };
    let kinesis = kinesis_local::client(&kinesis);
    let stream = kinesis_local::TestStream::create(&kinesis, "pg-fleet", 4).await;
    let source = KinesisSource::new(kinesis.clone(), &stream.name);
    let schema = common::unique_schema("fleet");
    let store = common::store(&url, &schema, "fleet").await;

    let report = conformance::consumer_fleet(source, &stream, store.clone(), "fleet").await;
    eprintln!("postgres fleet: {report:?}");
    assert_eq!(report.deliveries, report.records + report.duplicates);
    common::drop_schema(store.pool(), &schema).await;
}
