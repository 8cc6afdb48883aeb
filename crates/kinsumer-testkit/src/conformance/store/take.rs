//! The [`LeaseStore`] contract, creating rows and taking leases: `create_if_absent`, the
//! conditional `take` (current, stale or finished token, missing row), and a race of concurrent
//! takes with exactly one winner.

use futures::future::join_all;
use kinsumer_core::store::{ClientId, Lease, LeaseStore, StoreError};

use super::support::{after, assert_lease_lost, assert_not_found, must, owned, row, shard};

pub(super) async fn create_if_absent_is_idempotent_and_preserves_the_row<S: LeaseStore>(store: &S) {
    const CHECK: &str = "create_if_absent_is_idempotent_and_preserves_the_row";
    let stream = "conformance-create";
    let (id, parents) = (shard(5), vec![shard(1), shard(2)]);
    let created = must(
        CHECK,
        "create_if_absent",
        store.create_if_absent(stream, &id, &parents).await,
    );
    assert_eq!(
        created,
        Lease::new(id.clone(), parents.clone()),
        "lease_store conformance [{CHECK}]: a new row is unowned, token 0, no checkpoint, \
         with its parents"
    );
    let again = must(
        CHECK,
        "create_if_absent again",
        store.create_if_absent(stream, &id, &parents).await,
    );
    assert_eq!(again, created, "lease_store conformance [{CHECK}]: repeat");

    let lease = must(
        CHECK,
        "take",
        store.take(stream, &id, &ClientId::from("a"), 0).await,
    );
    let tenure = lease.tenure().unwrap_or_else(|| {
        panic!("lease_store conformance [{CHECK}]: take returned a row with no owner")
    });
    let cp = after("12345", 0);
    must(
        CHECK,
        "checkpoint",
        store.checkpoint(stream, &tenure, &cp).await,
    );
    let stored = row(CHECK, store, stream, &id).await;
    let after_create = must(
        CHECK,
        "create_if_absent over an owned row",
        store.create_if_absent(stream, &id, &[]).await,
    );
    assert_eq!(
        after_create, stored,
        "lease_store conformance [{CHECK}]: create_if_absent must return the existing row"
    );
    assert_eq!(
        row(CHECK, store, stream, &id).await,
        stored,
        "lease_store conformance [{CHECK}]: create_if_absent must not touch an existing row"
    );
    assert_eq!(
        (stored.owner, stored.token, stored.checkpoint),
        (Some(ClientId::from("a")), 1, Some(cp)),
        "lease_store conformance [{CHECK}]: owner, token and checkpoint survive"
    );
}

pub(super) async fn take_with_the_current_token_sets_owner_and_bumps_token<S: LeaseStore>(
    store: &S,
) {
    const CHECK: &str = "take_with_the_current_token_sets_owner_and_bumps_token";
    let (stream, id) = ("conformance-take", shard(0));
    must(
        CHECK,
        "create_if_absent",
        store.create_if_absent(stream, &id, &[]).await,
    );
    let a = must(
        CHECK,
        "take by a",
        store.take(stream, &id, &ClientId::from("a"), 0).await,
    );
    assert_eq!(
        (a.owner.clone(), a.token),
        (Some(ClientId::from("a")), 1),
        "lease_store conformance [{CHECK}]: take sets the owner and token + 1"
    );
    assert_eq!(a, row(CHECK, store, stream, &id).await);
    // Taking from a (live or dead) owner is the same conditional write.
    let b = must(
        CHECK,
        "take by b",
        store.take(stream, &id, &ClientId::from("b"), 1).await,
    );
    assert_eq!(
        (b.owner.clone(), b.token),
        (Some(ClientId::from("b")), 2),
        "lease_store conformance [{CHECK}]: a take from another owner sets token + 1"
    );
    assert_eq!(b, row(CHECK, store, stream, &id).await);
}

pub(super) async fn take_with_a_stale_token_is_lease_lost<S: LeaseStore>(store: &S) {
    const CHECK: &str = "take_with_a_stale_token_is_lease_lost";
    let (stream, id) = ("conformance-stale-take", shard(0));
    owned(CHECK, store, stream, &id, "a").await;
    let before = row(CHECK, store, stream, &id).await;
    let stale = store.take(stream, &id, &ClientId::from("b"), 0).await;
    assert_lease_lost(CHECK, "take with token 0 after a take", stale);
    let ahead = store.take(stream, &id, &ClientId::from("b"), 7).await;
    assert_lease_lost(CHECK, "take with a token from the future", ahead);
    assert_eq!(
        row(CHECK, store, stream, &id).await,
        before,
        "lease_store conformance [{CHECK}]: a failed take must not change the row"
    );
}

pub(super) async fn take_of_a_finished_lease_is_lease_lost<S: LeaseStore>(store: &S) {
    const CHECK: &str = "take_of_a_finished_lease_is_lease_lost";
    let (stream, id) = ("conformance-finished-take", shard(0));
    let tenure = owned(CHECK, store, stream, &id, "a").await;
    must(CHECK, "finish", store.finish(stream, &tenure).await);
    let again = store
        .take(stream, &id, &ClientId::from("b"), tenure.token)
        .await;
    assert_lease_lost(CHECK, "take of a finished lease", again);
}

pub(super) async fn take_of_a_missing_row_is_not_found<S: LeaseStore>(store: &S) {
    const CHECK: &str = "take_of_a_missing_row_is_not_found";
    let result = store
        .take("conformance-missing", &shard(0), &ClientId::from("a"), 0)
        .await;
    assert_not_found(CHECK, "take of a missing row", result);
}

pub(super) async fn concurrent_takes_have_exactly_one_winner<S: LeaseStore>(store: &S) {
    const CHECK: &str = "concurrent_takes_have_exactly_one_winner";
    let (stream, id) = ("conformance-race", shard(0));
    must(
        CHECK,
        "create_if_absent",
        store.create_if_absent(stream, &id, &[]).await,
    );
    let racers: Vec<ClientId> = (0..8)
        .map(|i| ClientId::from(format!("racer-{i}")))
        .collect();
    let results = join_all(racers.iter().map(|r| store.take(stream, &id, r, 0))).await;
    let winners: Vec<&Lease> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        winners.len(),
        1,
        "lease_store conformance [{CHECK}]: exactly one take may win, got {results:?}"
    );
    for result in &results {
        assert!(
            matches!(result, Ok(_) | Err(StoreError::LeaseLost { .. })),
            "lease_store conformance [{CHECK}]: a losing take must be LeaseLost, got {result:?}"
        );
    }
    let stored = row(CHECK, store, stream, &id).await;
    assert_eq!(
        (&stored.owner, stored.token),
        (&winners[0].owner, 1),
        "lease_store conformance [{CHECK}]: the row names the winner with token 1"
    );
}
