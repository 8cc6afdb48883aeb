//! The [`LeaseStore`] contract, one theme per file: client rows ([`clients`]), creating and
//! taking leases ([`take`]), fencing of every write ([`fencing`]), release, finish, deletion and
//! reset ([`lifecycle`]), what is read back ([`rows`]), and the repair of rows that do not
//! decode ([`repair`]). [`lease_store`] runs them all, each on a fresh store; the helpers here
//! name the check in every panic.

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, Lease, LeaseStore, Rows, StoreError, Tenure};
use std::fmt::Debug;
use std::future::Future;

mod clients;
mod fencing;
mod lifecycle;
mod repair;
mod rows;
mod take;

pub use repair::repair_of_a_corrupt_row;

/// Runs the [`LeaseStore`] contract. `new_store` must return a fresh, empty store on every
/// call (a real backend gives each call its own application or key prefix).
///
/// # Panics
///
/// On the first violation, naming the check.
pub async fn lease_store<F, Fut, S>(new_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: LeaseStore,
{
    clients::heartbeat_writes_the_value_and_creates_the_row(&new_store().await).await;
    clients::clients_lists_every_row(&new_store().await).await;
    clients::deregister_removes_and_is_idempotent(&new_store().await).await;
    take::create_if_absent_is_idempotent_and_preserves_the_row(&new_store().await).await;
    take::take_with_the_current_token_sets_owner_and_bumps_token(&new_store().await).await;
    take::take_with_a_stale_token_is_lease_lost(&new_store().await).await;
    take::take_of_a_finished_lease_is_lease_lost(&new_store().await).await;
    take::take_of_a_missing_row_is_not_found(&new_store().await).await;
    fencing::fenced_writes_by_a_wrong_tenure_are_lease_lost(&new_store().await).await;
    fencing::fenced_writes_of_a_missing_row_are_not_found(&new_store().await).await;
    lifecycle::release_clears_the_owner_and_keeps_the_token(&new_store().await).await;
    lifecycle::release_names_the_successor_and_take_clears_it(&new_store().await).await;
    lifecycle::finish_marks_shard_end_and_is_idempotent(&new_store().await).await;
    lifecycle::delete_finished_deletes_only_finished_rows(&new_store().await).await;
    lifecycle::reset_checkpoint_needs_an_unowned_lease_and_its_token(&new_store().await).await;
    rows::checkpoints_round_trip_exactly(&new_store().await).await;
    rows::streams_are_isolated(&new_store().await).await;
    rows::lease_of_a_missing_row_is_none(&new_store().await).await;
    take::concurrent_takes_have_exactly_one_winner(&new_store().await).await;
    repair::replace_corrupt_never_touches_a_healthy_or_missing_row(&new_store().await).await;
}

/// Unwraps a result the check needs, or panics naming the check and the call.
pub(super) fn must<T, E: Debug>(check: &str, call: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("lease_store conformance [{check}]: {call} failed: {err:?}"),
    }
}

/// The rows of a read that must have decoded every row (the contract's own rows always do).
pub(super) fn every_row<T, E: Debug>(
    check: &str,
    call: &str,
    result: Result<Rows<T>, E>,
) -> Vec<T> {
    let read = must(check, call, result);
    assert!(
        read.corrupt.is_empty(),
        "lease_store conformance [{check}]: {call} reported rows it wrote itself as corrupt: {:?}",
        read.corrupt
    );
    read.rows
}

pub(super) fn assert_lease_lost<T: Debug>(check: &str, call: &str, result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost { .. })),
        "lease_store conformance [{check}]: {call} should fail with LeaseLost, got {result:?}"
    );
}

pub(super) fn assert_not_found<T: Debug>(check: &str, call: &str, result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "lease_store conformance [{check}]: {call} should fail with NotFound, got {result:?}"
    );
}

pub(super) async fn row<S: LeaseStore>(
    check: &str,
    store: &S,
    stream: &str,
    shard: &ShardId,
) -> Lease {
    let lease = must(check, "lease", store.lease(stream, shard).await);
    match lease {
        Some(lease) => lease,
        None => panic!("lease_store conformance [{check}]: the row of {shard} is missing"),
    }
}

/// Creates a row and takes it for `owner`, returning the tenure.
pub(super) async fn owned<S: LeaseStore>(
    check: &str,
    store: &S,
    stream: &str,
    shard: &ShardId,
    owner: &str,
) -> Tenure {
    must(
        check,
        "create_if_absent",
        store.create_if_absent(stream, shard, &[]).await,
    );
    let lease = must(
        check,
        "take",
        store.take(stream, shard, &ClientId::from(owner), 0).await,
    );
    match lease.tenure() {
        Some(tenure) => tenure,
        None => panic!("lease_store conformance [{check}]: take returned a row with no owner"),
    }
}

pub(super) fn shard(n: u32) -> ShardId {
    ShardId::from(format!("shardId-{n:012}"))
}

pub(super) fn after(sequence: &str, sub_sequence: u64) -> Checkpoint {
    match sequence.parse::<SequenceNumber>() {
        Ok(sequence) => Checkpoint::After(Position::new(sequence, sub_sequence)),
        Err(err) => panic!("lease_store conformance: bad test sequence number: {err}"),
    }
}
