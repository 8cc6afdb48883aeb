//! The [`LeaseStore`] contract, rows that do not decode: `replace_corrupt` never touches a
//! healthy or missing row, and [`repair_of_a_corrupt_row`] repairs one a backend's [`Vandal`]
//! broke.

use crate::conformance::Vandal;
use futures::future::join_all;
use kinsumer_core::position::Checkpoint;
use kinsumer_core::store::{ClientId, Lease, LeaseStore, StoreError};

use super::support::{
    after, assert_lease_lost, assert_not_found, every_row, must, owned, row, shard,
};

pub(super) async fn replace_corrupt_never_touches_a_healthy_or_missing_row<S: LeaseStore>(
    store: &S,
) {
    const CHECK: &str = "replace_corrupt_never_touches_a_healthy_or_missing_row";
    let (stream, id) = ("conformance-repair-healthy", shard(1));
    let tenure = owned(CHECK, store, stream, &id, "a").await;
    must(
        CHECK,
        "checkpoint",
        store.checkpoint(stream, &tenure, &after("7", 0)).await,
    );
    let before = row(CHECK, store, stream, &id).await;
    let repair = Lease {
        token: before.token + 1_000,
        checkpoint: Some(Checkpoint::TrimHorizon),
        parents: vec![shard(0)],
        ..Lease::new(id.clone(), vec![])
    };
    assert_lease_lost(
        CHECK,
        "replace_corrupt of a row that decodes",
        store.replace_corrupt(stream, &repair).await,
    );
    assert_eq!(
        row(CHECK, store, stream, &id).await,
        before,
        "lease_store conformance [{CHECK}]: a refused repair leaves the healthy row as it was"
    );
    let missing = Lease::new(shard(9), vec![]);
    assert_not_found(
        CHECK,
        "replace_corrupt of a missing row",
        store.replace_corrupt(stream, &missing).await,
    );
    let none = must(CHECK, "lease", store.lease(stream, &missing.shard).await);
    assert!(
        none.is_none(),
        "lease_store conformance [{CHECK}]: a refused repair creates no row, got {none:?}"
    );
}

/// Checks `replace_corrupt` on rows that `vandal` made undecodable in `store` (fresh; writes
/// stream `conformance-repair`): the bad row is reported by name, the repair writes exactly the
/// given lease (which then works like any other: it can be taken), a second repair of the now
/// healthy row is refused and changes nothing, the rows around it are untouched, and of two
/// concurrent repairs of one bad row exactly one wins.
///
/// # Panics
///
/// On the first violation, naming the check.
pub async fn repair_of_a_corrupt_row<S: LeaseStore>(store: &S, vandal: &dyn Vandal) {
    const CHECK: &str = "repair_of_a_corrupt_row";
    let stream = "conformance-repair";
    let (parent, child, neighbour, raced) = (shard(0), shard(1), shard(2), shard(3));
    must(
        CHECK,
        "create_if_absent",
        store
            .create_if_absent(stream, &child, std::slice::from_ref(&parent))
            .await,
    );
    let tenure = owned(CHECK, store, stream, &neighbour, "a").await;
    must(
        CHECK,
        "checkpoint",
        store.checkpoint(stream, &tenure, &after("42", 0)).await,
    );
    let untouched = row(CHECK, store, stream, &neighbour).await;

    vandal.corrupt_lease(stream, &child).await;
    let read = must(CHECK, "leases", store.leases(stream).await);
    assert!(
        read.corrupt
            .iter()
            .any(|c| c.id.as_deref() == Some(child.as_str())),
        "lease_store conformance [{CHECK}]: the spoiled row must be reported as corrupt, got {read:?}"
    );
    assert_eq!(
        read.rows,
        vec![untouched.clone()],
        "lease_store conformance [{CHECK}]: the other rows read as before"
    );
    let spoiled = store.lease(stream, &child).await;
    assert!(
        matches!(spoiled, Err(StoreError::Corrupt { .. })),
        "lease_store conformance [{CHECK}]: lease() of the spoiled row must be Corrupt, got {spoiled:?}"
    );

    // As `kinsumer reset` writes it: unowned, a token above any the row held, its parents.
    let repaired = Lease {
        token: 1_795_676_400_000,
        checkpoint: Some(after(
            "49590338271490256608559692538361571095921575989136588898",
            3,
        )),
        ..Lease::new(child.clone(), vec![parent.clone()])
    };
    must(
        CHECK,
        "replace_corrupt",
        store.replace_corrupt(stream, &repaired).await,
    );
    assert_eq!(
        row(CHECK, store, stream, &child).await,
        repaired,
        "lease_store conformance [{CHECK}]: the row must read back exactly as repaired"
    );
    let read = every_row(CHECK, "leases", store.leases(stream).await);
    assert_eq!(
        read,
        vec![repaired.clone(), untouched.clone()],
        "lease_store conformance [{CHECK}]: after the repair every row decodes, the others unchanged"
    );

    let again = Lease {
        token: repaired.token + 5,
        checkpoint: Some(Checkpoint::TrimHorizon),
        ..repaired.clone()
    };
    assert_lease_lost(
        CHECK,
        "replace_corrupt of the repaired (now healthy) row",
        store.replace_corrupt(stream, &again).await,
    );
    assert_eq!(
        row(CHECK, store, stream, &child).await,
        repaired,
        "lease_store conformance [{CHECK}]: a refused repair leaves the row as it was"
    );

    let taken = must(
        CHECK,
        "take of the repaired row",
        store
            .take(stream, &child, &ClientId::from("b"), repaired.token)
            .await,
    );
    assert_eq!(
        (taken.owner.as_ref().map(ClientId::as_str), taken.token),
        (Some("b"), repaired.token + 1),
        "lease_store conformance [{CHECK}]: the repaired lease is taken like any other"
    );

    // Two operators repair the same bad row at once: one wins, the other is refused.
    must(
        CHECK,
        "create_if_absent",
        store.create_if_absent(stream, &raced, &[]).await,
    );
    vandal.corrupt_lease(stream, &raced).await;
    let candidates: Vec<Lease> = (0..2)
        .map(|i| Lease {
            token: 1_795_676_400_000 + i,
            checkpoint: Some(Checkpoint::TrimHorizon),
            ..Lease::new(raced.clone(), vec![])
        })
        .collect();
    let results = join_all(candidates.iter().map(|l| store.replace_corrupt(stream, l))).await;
    let winners: Vec<&Lease> = candidates
        .iter()
        .zip(&results)
        .filter_map(|(l, r)| r.is_ok().then_some(l))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "lease_store conformance [{CHECK}]: exactly one of two concurrent repairs may win, got {results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(StoreError::LeaseLost { .. }))),
        "lease_store conformance [{CHECK}]: the losing repair must be LeaseLost, got {results:?}"
    );
    assert_eq!(
        &row(CHECK, store, stream, &raced).await,
        winners[0],
        "lease_store conformance [{CHECK}]: the row is the winner's"
    );

    // A row that decodes but whose token no take can move again is repaired the same way,
    // and its token goes down to the one the repair chose.
    let stuck = shard(4);
    owned(CHECK, store, stream, &stuck, "c").await;
    vandal.exhaust_token(stream, &stuck).await;
    let exhausted = row(CHECK, store, stream, &stuck).await;
    assert!(
        exhausted.token_exhausted(),
        "lease_store conformance [{CHECK}]: the vandal's token reads back, got {exhausted:?}"
    );
    let freed = Lease {
        token: 1_795_676_400_000,
        checkpoint: Some(Checkpoint::TrimHorizon),
        ..Lease::new(stuck.clone(), vec![])
    };
    must(
        CHECK,
        "replace_corrupt of a row with an exhausted token",
        store.replace_corrupt(stream, &freed).await,
    );
    assert_eq!(
        row(CHECK, store, stream, &stuck).await,
        freed,
        "lease_store conformance [{CHECK}]: the row must read back exactly as repaired"
    );
}
