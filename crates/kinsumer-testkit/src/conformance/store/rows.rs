//! The [`LeaseStore`] contract, what is read back: checkpoints round trip exactly, streams do
//! not see each other, a missing row reads as none; and a store bound to an application is
//! used by no consumer of another.

use kinsumer_core::position::Checkpoint;
use kinsumer_core::store::{Lease, LeaseStore};

use super::support::{after, assert_not_found, every_row, must, owned, row, shard};

pub(super) async fn checkpoints_round_trip_exactly<S: LeaseStore>(store: &S) {
    const CHECK: &str = "checkpoints_round_trip_exactly";
    let (stream, id) = ("conformance-round-trip", shard(0));
    let tenure = owned(CHECK, store, stream, &id, "a").await;
    let checkpoints = [
        after(
            "49590338271490256608559692538361571095921575989136588898",
            0,
        ),
        after(
            "49590338271490256608559692538361571095921575989136588898",
            u64::MAX,
        ),
        after("9", 3),
        after("10", 0),
        Checkpoint::TrimHorizon,
        Checkpoint::Latest,
        Checkpoint::AtTimestamp(1_700_000_000_123),
    ];
    for cp in checkpoints {
        must(
            CHECK,
            "checkpoint",
            store.checkpoint(stream, &tenure, &cp).await,
        );
        let stored = row(CHECK, store, stream, &id).await.checkpoint;
        assert_eq!(
            stored,
            Some(cp.clone()),
            "lease_store conformance [{CHECK}]: {cp} must read back exactly"
        );
    }
}

pub(super) async fn streams_are_isolated<S: LeaseStore>(store: &S) {
    const CHECK: &str = "streams_are_isolated";
    let (left, right, id) = ("conformance-left", "conformance-right", shard(0));
    let tenure = owned(CHECK, store, left, &id, "a").await;
    must(
        CHECK,
        "checkpoint",
        store.checkpoint(left, &tenure, &after("1", 0)).await,
    );
    let untouched = must(CHECK, "lease", store.lease(right, &id).await);
    assert!(
        untouched.is_none(),
        "lease_store conformance [{CHECK}]: a row of another stream leaked: {untouched:?}"
    );
    assert_not_found(
        CHECK,
        "checkpoint on the other stream",
        store.checkpoint(right, &tenure, &after("2", 0)).await,
    );
    must(
        CHECK,
        "create_if_absent",
        store.create_if_absent(right, &id, &[]).await,
    );
    assert_eq!(
        row(CHECK, store, right, &id).await,
        Lease::new(id.clone(), vec![]),
        "lease_store conformance [{CHECK}]: the same shard id on another stream is its own row"
    );
    let left_rows = every_row(CHECK, "leases", store.leases(left).await);
    assert_eq!(
        left_rows.len(),
        1,
        "lease_store conformance [{CHECK}]: leases(stream) lists that stream only"
    );
    assert_eq!(left_rows[0].checkpoint, Some(after("1", 0)));
}

pub(super) async fn lease_of_a_missing_row_is_none<S: LeaseStore>(store: &S) {
    const CHECK: &str = "lease_of_a_missing_row_is_none";
    let lease = must(
        CHECK,
        "lease",
        store.lease("conformance-none", &shard(0)).await,
    );
    assert!(
        lease.is_none(),
        "lease_store conformance [{CHECK}]: got {lease:?}"
    );
    let rows = every_row(CHECK, "leases", store.leases("conformance-none").await);
    assert!(
        rows.is_empty(),
        "lease_store conformance [{CHECK}]: an unknown stream has no rows, got {rows:?}"
    );
}

/// A store opened for one application says so, and a consumer configured for another refuses
/// it (naming both) instead of working in the other application's rows.
pub(super) async fn a_consumer_refuses_a_store_of_another_application<S: LeaseStore>(store: S) {
    const CHECK: &str = "a_consumer_refuses_a_store_of_another_application";
    let Some(bound) = store.application().map(str::to_owned) else {
        return; // not bound to an application (the in-memory store): nothing to check
    };
    let store: std::sync::Arc<dyn LeaseStore> = std::sync::Arc::new(store);
    let source = std::sync::Arc::new(crate::MemoryStream::new("conformance-application", 1));
    let same = kinsumer_core::Config::new(&bound);
    if let Err(e) = kinsumer_core::Consumer::from_shared(same, source.clone(), store.clone()) {
        panic!("{CHECK}: a consumer of {bound:?} refused its own store: {e}");
    }
    let other = format!("{bound}-other");
    match kinsumer_core::Consumer::from_shared(kinsumer_core::Config::new(&other), source, store) {
        Ok(_) => panic!("{CHECK}: a consumer of {other:?} took the store of {bound:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("application") && text.contains(&bound) && text.contains(&other),
                "{CHECK}: the error must name both applications: {text}"
            );
        }
    }
}
