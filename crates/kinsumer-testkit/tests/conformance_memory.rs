//! Both conformance suites against the in-memory implementations — and proof that the suites
//! catch a broken store.

use kinsumer_core::config::EngineFaults;
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream, StoreFaults, conformance};

#[tokio::test(start_paused = true)]
async fn memory_lease_store_conforms() {
    conformance::lease_store(|| async { MemoryLeaseStore::new() }).await;
}

#[tokio::test(start_paused = true)]
async fn memory_stream_conforms() {
    let stream = MemoryStream::new("conformance", 2);
    conformance::shard_source(&stream, &stream).await;
    // The suite resharded it: one split and one merge.
    assert_eq!(stream.shards().len(), 5);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "lease_store conformance")]
async fn the_lease_store_suite_catches_a_store_that_ignores_fencing() {
    conformance::lease_store(|| async {
        let store = MemoryLeaseStore::new();
        store.set_faults(StoreFaults {
            ignore_fencing: true,
            ..StoreFaults::default()
        });
        store
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_memory_fleet_survives_a_crash_and_a_graceful_leave() {
    let stream = MemoryStream::new("fleet", 4);
    let report =
        conformance::consumer_fleet(stream.clone(), &stream, MemoryLeaseStore::new(), "fleet")
            .await;
    assert_eq!(report.records, 640);
    assert_eq!(report.deliveries, report.records + report.duplicates);
}

/// The fleet check on a memory stream and store, with one engine fault switched on.
async fn fleet_with_fault(fault: fn(&mut EngineFaults)) {
    let stream = MemoryStream::new("fleet", 4);
    conformance::consumer_fleet_with(
        stream.clone(),
        &stream,
        MemoryLeaseStore::new(),
        "fleet",
        |mut c| {
            fault(&mut c.faults);
            c
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "consumer_fleet [every record delivered]")]
async fn the_fleet_check_catches_a_consumer_that_skips_records() {
    fleet_with_fault(|f| f.skip_first_record = true).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "consumer_fleet [duplicates only after the crash]")]
async fn the_fleet_check_catches_handoffs_that_release_a_stale_checkpoint() {
    fleet_with_fault(|f| f.release_stale_checkpoint = true).await;
}
