//! The [`LeaseStore`] contract, one theme per file: client rows ([`clients`]), the change
//! counter ([`changes`]), creating and
//! taking leases ([`take`]), fencing of every write ([`fencing`]), release, finish, deletion and
//! reset ([`lifecycle`]), what is read back ([`rows`]), and the repair of rows that do not
//! decode ([`repair`]). [`lease_store`] runs them all, each on a fresh store; the helpers in [`support`]
//! name the check in every panic.

use kinsumer_core::store::LeaseStore;
use std::future::Future;

mod changes;
mod clients;
mod fencing;
mod lifecycle;
mod repair;
mod rows;
pub(super) mod support;
mod take;

pub use changes::corrupt_change_counter;
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
    clients::client_reads_one_row(&new_store().await).await;
    clients::mark_dead_holds_only_at_the_current_value(&new_store().await).await;
    changes::every_announce_moves_the_change_counter(&new_store().await).await;
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
    rows::a_consumer_refuses_a_store_of_another_application(new_store().await).await;
    take::concurrent_takes_have_exactly_one_winner(&new_store().await).await;
    repair::replace_corrupt_never_touches_a_healthy_or_missing_row(&new_store().await).await;
}
