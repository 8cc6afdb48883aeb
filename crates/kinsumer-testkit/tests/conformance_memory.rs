//! Both conformance suites against the in-memory implementations — and proof that the suites
//! catch a broken store.

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
