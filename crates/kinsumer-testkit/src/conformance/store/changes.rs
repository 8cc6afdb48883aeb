//! The [`LeaseStore`] contract, the change counter: it starts at 0, every `announce` moves it
//! (concurrent ones each to a value of their own), and [`corrupt_change_counter`] checks that
//! one a backend's [`Vandal`] broke reads as `Corrupt` and is written afresh by the next
//! announce.

use crate::conformance::Vandal;
use futures::future::join_all;
use kinsumer_core::store::{LeaseStore, StoreError};
use std::collections::BTreeSet;

use super::support::must;

pub(super) async fn every_announce_moves_the_change_counter<S: LeaseStore>(store: &S) {
    const CHECK: &str = "every_announce_moves_the_change_counter";
    let start = must(CHECK, "changes", store.changes().await);
    assert_eq!(
        start, 0,
        "lease_store conformance [{CHECK}]: a fresh store's change counter must be 0"
    );
    let first = must(CHECK, "announce", store.announce().await);
    assert_eq!(
        (first, must(CHECK, "changes", store.changes().await)),
        (1, 1),
        "lease_store conformance [{CHECK}]: the first announce must return and store 1"
    );
    // Concurrent announces: each gets a value of its own, and the counter counts them all.
    const N: u64 = 16;
    let values: Vec<u64> = join_all((0..N).map(|_| store.announce()))
        .await
        .into_iter()
        .map(|r| must(CHECK, "concurrent announce", r))
        .collect();
    let distinct: BTreeSet<u64> = values.iter().copied().collect();
    assert_eq!(
        distinct,
        (2..2 + N).collect(),
        "lease_store conformance [{CHECK}]: concurrent announces must each move the counter by one, got {values:?}"
    );
    assert_eq!(
        must(CHECK, "changes", store.changes().await),
        1 + N,
        "lease_store conformance [{CHECK}]: the counter must show the last announce"
    );
}

/// Checks that a change counter `vandal` made unreadable reads as `Corrupt` (never as a value
/// no announce wrote), and that the next announce writes it afresh as 1, readable again.
///
/// # Panics
///
/// On the first violation, naming the check.
pub async fn corrupt_change_counter<S: LeaseStore>(store: &S, vandal: &dyn Vandal) {
    const CHECK: &str = "corrupt_change_counter";
    must(CHECK, "announce", store.announce().await);
    vandal.corrupt_changes().await;
    let read = store.changes().await;
    assert!(
        matches!(read, Err(StoreError::Corrupt { .. })),
        "lease_store conformance [{CHECK}]: a change counter that does not decode must read as Corrupt, got {read:?}"
    );
    let fresh = must(
        CHECK,
        "announce over a corrupt counter",
        store.announce().await,
    );
    assert_eq!(
        (fresh, must(CHECK, "changes", store.changes().await)),
        (1, 1),
        "lease_store conformance [{CHECK}]: an announce must write a corrupt counter afresh as 1"
    );
    assert_eq!(
        must(CHECK, "announce", store.announce().await),
        2,
        "lease_store conformance [{CHECK}]: the counter must count on from its fresh value"
    );
}
