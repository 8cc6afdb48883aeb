//! The contracts of the two seams, written once and run by every backend against its real
//! server (the pattern of `object_store`'s `integration.rs`).
//!
//! - [`lease_store`] checks a [`LeaseStore`]: creation, the conditional `take`, fencing of
//!   every write, release/finish/delete/reset, exact checkpoint round trips, stream isolation
//!   and a race of concurrent takes.
//! - [`shard_source`] checks a [`ShardSource`] on a fresh two-shard stream, driven through a
//!   [`StreamAdmin`]: listing, read-back exactly once in order, `After`/`Latest` starts, and
//!   split and merge handing over to the children.
//! - [`consumer_fleet`] runs three whole consumers over a source and a store through a crash
//!   and a graceful leave, and judges every delivery: nothing lost, duplicates only from the
//!   crash and within its window, key order kept (see [`fleet`]).
//! - [`fleet_under_vandal`] runs two consumers while a backend's [`Vandal`] writes hostile
//!   values into rows of the real store: the other shards flow, nobody stops (see [`vandal`]).
//! - [`repair_of_a_corrupt_row`] has a backend's [`Vandal`] make a lease row undecodable, and
//!   checks that `replace_corrupt` repairs it — and never overwrites a healthy row.
//!
//! Each check panics with a message naming itself. Resharding and reads are polled a bounded
//! number of times with short sleeps, since emulators are eventually consistent.
//!
//! ```
//! use kinsumer_testkit::{conformance, MemoryLeaseStore, MemoryStream};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! conformance::lease_store(|| async { MemoryLeaseStore::new() }).await;
//!
//! let stream = MemoryStream::new("conformance", 2);
//! conformance::shard_source(&stream, &stream).await;
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::{
    HashRange, ShardId, ShardInfo, ShardReader, ShardSource, SourceError, SourceRecord,
};
use kinsumer_core::store::{ClientId, Lease, LeaseStore, Rows, StoreError, Tenure};

use crate::memory_stream::{MemoryStream, partition_hash_key};

pub mod fleet;
pub mod unknown_outcome;
pub mod vandal;
pub use fleet::{FleetReport, consumer_fleet, consumer_fleet_with, fleet_config};
pub use unknown_outcome::unknown_outcomes;
pub use vandal::{
    Vandal, VandalReport, fleet_under_vandal, hostile_number, hostile_text, lease_field,
};

// ---------------------------------------------------------------------------------------------
// LeaseStore
// ---------------------------------------------------------------------------------------------

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
    heartbeat_writes_the_value_and_creates_the_row(&new_store().await).await;
    clients_lists_every_row(&new_store().await).await;
    deregister_removes_and_is_idempotent(&new_store().await).await;
    create_if_absent_is_idempotent_and_preserves_the_row(&new_store().await).await;
    take_with_the_current_token_sets_owner_and_bumps_token(&new_store().await).await;
    take_with_a_stale_token_is_lease_lost(&new_store().await).await;
    take_of_a_finished_lease_is_lease_lost(&new_store().await).await;
    take_of_a_missing_row_is_not_found(&new_store().await).await;
    fenced_writes_by_a_wrong_tenure_are_lease_lost(&new_store().await).await;
    fenced_writes_of_a_missing_row_are_not_found(&new_store().await).await;
    release_clears_the_owner_and_keeps_the_token(&new_store().await).await;
    release_names_the_successor_and_take_clears_it(&new_store().await).await;
    finish_marks_shard_end_and_is_idempotent(&new_store().await).await;
    delete_finished_deletes_only_finished_rows(&new_store().await).await;
    reset_checkpoint_needs_an_unowned_lease_and_its_token(&new_store().await).await;
    checkpoints_round_trip_exactly(&new_store().await).await;
    streams_are_isolated(&new_store().await).await;
    lease_of_a_missing_row_is_none(&new_store().await).await;
    concurrent_takes_have_exactly_one_winner(&new_store().await).await;
    replace_corrupt_never_touches_a_healthy_or_missing_row(&new_store().await).await;
}

/// Unwraps a result the check needs, or panics naming the check and the call.
fn must<T, E: Debug>(check: &str, call: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("lease_store conformance [{check}]: {call} failed: {err:?}"),
    }
}

/// The rows of a read that must have decoded every row (the contract's own rows always do).
fn every_row<T, E: Debug>(check: &str, call: &str, result: Result<Rows<T>, E>) -> Vec<T> {
    let read = must(check, call, result);
    assert!(
        read.corrupt.is_empty(),
        "lease_store conformance [{check}]: {call} reported rows it wrote itself as corrupt: {:?}",
        read.corrupt
    );
    read.rows
}

fn assert_lease_lost<T: Debug>(check: &str, call: &str, result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost { .. })),
        "lease_store conformance [{check}]: {call} should fail with LeaseLost, got {result:?}"
    );
}

fn assert_not_found<T: Debug>(check: &str, call: &str, result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "lease_store conformance [{check}]: {call} should fail with NotFound, got {result:?}"
    );
}

async fn row<S: LeaseStore>(check: &str, store: &S, stream: &str, shard: &ShardId) -> Lease {
    let lease = must(check, "lease", store.lease(stream, shard).await);
    match lease {
        Some(lease) => lease,
        None => panic!("lease_store conformance [{check}]: the row of {shard} is missing"),
    }
}

/// Creates a row and takes it for `owner`, returning the tenure.
async fn owned<S: LeaseStore>(
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

fn shard(n: u32) -> ShardId {
    ShardId::from(format!("shardId-{n:012}"))
}

fn after(sequence: &str, sub_sequence: u64) -> Checkpoint {
    match sequence.parse::<SequenceNumber>() {
        Ok(sequence) => Checkpoint::After(Position::new(sequence, sub_sequence)),
        Err(err) => panic!("lease_store conformance: bad test sequence number: {err}"),
    }
}

async fn heartbeat_writes_the_value_and_creates_the_row<S: LeaseStore>(store: &S) {
    const CHECK: &str = "heartbeat_writes_the_value_and_creates_the_row";
    let client = ClientId::from("client-a");
    // Values as the engine writes them: an incarnation in the high bits, a sequence below.
    let (first, second) = ((7u64 << 32) | 1, (7u64 << 32) | 2);
    must(CHECK, "heartbeat", store.heartbeat(&client, first).await);
    let rows = every_row(CHECK, "clients", store.clients().await);
    assert!(
        rows.iter().any(|r| r.id == client && r.counter == first),
        "lease_store conformance [{CHECK}]: the first heartbeat must create the row with its value, got {rows:?}"
    );
    must(CHECK, "heartbeat", store.heartbeat(&client, second).await);
    // The top of the contract's range (1..=i64::MAX) must round-trip.
    let high = ClientId::from("client-high");
    let top = i64::MAX as u64;
    must(CHECK, "heartbeat", store.heartbeat(&high, top).await);
    let rows = every_row(CHECK, "clients", store.clients().await);
    assert!(
        rows.iter().any(|r| r.id == client && r.counter == second),
        "lease_store conformance [{CHECK}]: clients() must show the last value written, got {rows:?}"
    );
    assert!(
        rows.iter().any(|r| r.id == high && r.counter == top),
        "lease_store conformance [{CHECK}]: a heartbeat value of i64::MAX must round-trip, got {rows:?}"
    );
    // A retried heartbeat writes the same value again: not an error.
    must(
        CHECK,
        "heartbeat again",
        store.heartbeat(&client, second).await,
    );
}

async fn clients_lists_every_row<S: LeaseStore>(store: &S) {
    const CHECK: &str = "clients_lists_every_row";
    let ids = ["client-a", "client-b", "client-c"].map(ClientId::from);
    for (n, id) in ids.iter().enumerate() {
        must(CHECK, "heartbeat", store.heartbeat(id, 10 + n as u64).await);
    }
    must(CHECK, "heartbeat", store.heartbeat(&ids[1], 20).await);
    let rows: BTreeMap<ClientId, u64> = every_row(CHECK, "clients", store.clients().await)
        .into_iter()
        .map(|r| (r.id, r.counter))
        .collect();
    let expected: BTreeMap<ClientId, u64> = [(&ids[0], 10), (&ids[1], 20), (&ids[2], 12)]
        .into_iter()
        .map(|(id, n)| (id.clone(), n))
        .collect();
    assert_eq!(
        rows, expected,
        "lease_store conformance [{CHECK}]: clients() must list every row with its last value"
    );
}

async fn deregister_removes_and_is_idempotent<S: LeaseStore>(store: &S) {
    const CHECK: &str = "deregister_removes_and_is_idempotent";
    let (gone, stays) = (ClientId::from("leaving"), ClientId::from("staying"));
    must(CHECK, "heartbeat", store.heartbeat(&gone, 1).await);
    must(CHECK, "heartbeat", store.heartbeat(&stays, 1).await);
    must(CHECK, "deregister", store.deregister(&gone).await);
    must(CHECK, "deregister again", store.deregister(&gone).await);
    must(
        CHECK,
        "deregister of a never-seen client",
        store.deregister(&ClientId::from("never-seen")).await,
    );
    let ids: Vec<ClientId> = every_row(CHECK, "clients", store.clients().await)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        ids,
        vec![stays.clone()],
        "lease_store conformance [{CHECK}]: only the other client's row must remain"
    );
    must(
        CHECK,
        "heartbeat after deregister",
        store.heartbeat(&gone, 5).await,
    );
    let rows = every_row(CHECK, "clients", store.clients().await);
    assert!(
        rows.iter().any(|r| r.id == gone && r.counter == 5),
        "lease_store conformance [{CHECK}]: a heartbeat after deregister creates the row again, got {rows:?}"
    );
}

async fn create_if_absent_is_idempotent_and_preserves_the_row<S: LeaseStore>(store: &S) {
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

async fn take_with_the_current_token_sets_owner_and_bumps_token<S: LeaseStore>(store: &S) {
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

async fn take_with_a_stale_token_is_lease_lost<S: LeaseStore>(store: &S) {
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

async fn take_of_a_finished_lease_is_lease_lost<S: LeaseStore>(store: &S) {
    const CHECK: &str = "take_of_a_finished_lease_is_lease_lost";
    let (stream, id) = ("conformance-finished-take", shard(0));
    let tenure = owned(CHECK, store, stream, &id, "a").await;
    must(CHECK, "finish", store.finish(stream, &tenure).await);
    let again = store
        .take(stream, &id, &ClientId::from("b"), tenure.token)
        .await;
    assert_lease_lost(CHECK, "take of a finished lease", again);
}

async fn take_of_a_missing_row_is_not_found<S: LeaseStore>(store: &S) {
    const CHECK: &str = "take_of_a_missing_row_is_not_found";
    let result = store
        .take("conformance-missing", &shard(0), &ClientId::from("a"), 0)
        .await;
    assert_not_found(CHECK, "take of a missing row", result);
}

async fn fenced_writes_by_a_wrong_tenure_are_lease_lost<S: LeaseStore>(store: &S) {
    const CHECK: &str = "fenced_writes_by_a_wrong_tenure_are_lease_lost";
    let (stream, id) = ("conformance-fencing", shard(0));
    let mine = owned(CHECK, store, stream, &id, "a").await;
    must(
        CHECK,
        "checkpoint",
        store.checkpoint(stream, &mine, &after("100", 0)).await,
    );
    let before = row(CHECK, store, stream, &id).await;
    let wrong_owner = Tenure {
        owner: ClientId::from("intruder"),
        ..mine.clone()
    };
    let wrong_token = Tenure {
        token: mine.token + 1,
        ..mine.clone()
    };
    let old_token = Tenure {
        token: mine.token.wrapping_sub(1),
        ..mine.clone()
    };
    let cp = after("200", 0);
    for (name, tenure) in [
        ("a wrong owner", &wrong_owner),
        ("a newer token", &wrong_token),
        ("an older token", &old_token),
    ] {
        let call = format!("checkpoint by {name}");
        assert_lease_lost(CHECK, &call, store.checkpoint(stream, tenure, &cp).await);
        let call = format!("release by {name}");
        assert_lease_lost(
            CHECK,
            &call,
            store.release(stream, tenure, Some(&cp), None).await,
        );
        let call = format!("finish by {name}");
        assert_lease_lost(CHECK, &call, store.finish(stream, tenure).await);
        assert_eq!(
            row(CHECK, store, stream, &id).await,
            before,
            "lease_store conformance [{CHECK}]: writes by {name} must leave the row unchanged"
        );
    }

    // A released lease fences its former owner too.
    must(
        CHECK,
        "release",
        store.release(stream, &mine, None, None).await,
    );
    let released = row(CHECK, store, stream, &id).await;
    assert_lease_lost(
        CHECK,
        "checkpoint after release",
        store.checkpoint(stream, &mine, &cp).await,
    );
    assert_lease_lost(
        CHECK,
        "release after release",
        store.release(stream, &mine, None, None).await,
    );
    assert_lease_lost(
        CHECK,
        "finish after release",
        store.finish(stream, &mine).await,
    );
    assert_eq!(
        row(CHECK, store, stream, &id).await,
        released,
        "lease_store conformance [{CHECK}]: writes after release must leave the row unchanged"
    );
}

async fn fenced_writes_of_a_missing_row_are_not_found<S: LeaseStore>(store: &S) {
    const CHECK: &str = "fenced_writes_of_a_missing_row_are_not_found";
    let stream = "conformance-missing-fenced";
    let tenure = Tenure {
        shard: shard(9),
        owner: ClientId::from("a"),
        token: 1,
    };
    let cp = after("1", 0);
    assert_not_found(
        CHECK,
        "checkpoint",
        store.checkpoint(stream, &tenure, &cp).await,
    );
    assert_not_found(
        CHECK,
        "release",
        store.release(stream, &tenure, Some(&cp), None).await,
    );
    assert_not_found(CHECK, "finish", store.finish(stream, &tenure).await);
    assert_not_found(
        CHECK,
        "reset_checkpoint",
        store.reset_checkpoint(stream, &tenure.shard, 0, &cp).await,
    );
}

async fn release_clears_the_owner_and_keeps_the_token<S: LeaseStore>(store: &S) {
    const CHECK: &str = "release_clears_the_owner_and_keeps_the_token";
    let (stream, id) = ("conformance-release", shard(0));
    let first = owned(CHECK, store, stream, &id, "a").await;
    let cp = after("4242", 0);
    must(
        CHECK,
        "release with a checkpoint",
        store.release(stream, &first, Some(&cp), None).await,
    );
    let released = row(CHECK, store, stream, &id).await;
    assert_eq!(
        (released.owner, released.token, released.checkpoint.clone()),
        (None, first.token, Some(cp.clone())),
        "lease_store conformance [{CHECK}]: release clears the owner, keeps the token, \
         stores the checkpoint"
    );

    let second = must(
        CHECK,
        "take after release",
        store
            .take(stream, &id, &ClientId::from("b"), first.token)
            .await,
    );
    let second = second.tenure().unwrap_or_else(|| {
        panic!("lease_store conformance [{CHECK}]: take returned a row with no owner")
    });
    assert_eq!(second.token, first.token + 1);
    must(
        CHECK,
        "release without a checkpoint",
        store.release(stream, &second, None, None).await,
    );
    let released = row(CHECK, store, stream, &id).await;
    assert_eq!(
        (released.owner, released.token, released.checkpoint),
        (None, second.token, Some(cp)),
        "lease_store conformance [{CHECK}]: release without a checkpoint keeps the old one"
    );
}

async fn release_names_the_successor_and_take_clears_it<S: LeaseStore>(store: &S) {
    const CHECK: &str = "release_names_the_successor_and_take_clears_it";
    let (stream, id) = ("conformance-successor", shard(0));
    let first = owned(CHECK, store, stream, &id, "a").await;
    assert_eq!(
        row(CHECK, store, stream, &id).await.successor,
        None,
        "lease_store conformance [{CHECK}]: a taken lease names no successor"
    );
    // Any client id, however odd, round-trips.
    let heir = ClientId::from("wörker-β #1 \"quoted\" {app}");
    let cp = after("17", 2);
    must(
        CHECK,
        "release naming a successor",
        store.release(stream, &first, Some(&cp), Some(&heir)).await,
    );
    let released = row(CHECK, store, stream, &id).await;
    assert_eq!(
        (
            released.owner.clone(),
            released.token,
            released.successor.clone()
        ),
        (None, first.token, Some(heir.clone())),
        "lease_store conformance [{CHECK}]: release clears the owner and names the successor"
    );
    assert_eq!(released.checkpoint, Some(cp.clone()));
    let listed = every_row(CHECK, "leases", store.leases(stream).await);
    assert_eq!(
        listed
            .iter()
            .find(|l| l.shard == id)
            .map(|l| l.successor.clone()),
        Some(Some(heir.clone())),
        "lease_store conformance [{CHECK}]: leases() shows the successor too"
    );

    // Whoever takes it (the successor or not) clears the name.
    let taken = must(
        CHECK,
        "take by another client",
        store
            .take(stream, &id, &ClientId::from("c"), first.token)
            .await,
    );
    assert_eq!(
        (taken.owner.clone(), taken.successor.clone()),
        (Some(ClientId::from("c")), None),
        "lease_store conformance [{CHECK}]: take clears the successor in the row it returns"
    );
    assert_eq!(row(CHECK, store, stream, &id).await, taken);
    let second = taken.tenure().unwrap_or_else(|| {
        panic!("lease_store conformance [{CHECK}]: take returned a row with no owner")
    });
    must(
        CHECK,
        "release naming nobody",
        store.release(stream, &second, None, None).await,
    );
    let released = row(CHECK, store, stream, &id).await;
    assert_eq!(
        (released.owner, released.successor, released.checkpoint),
        (None, None, Some(cp)),
        "lease_store conformance [{CHECK}]: a release naming nobody leaves no successor"
    );
}

async fn finish_marks_shard_end_and_is_idempotent<S: LeaseStore>(store: &S) {
    const CHECK: &str = "finish_marks_shard_end_and_is_idempotent";
    let (stream, id) = ("conformance-finish", shard(0));
    let tenure = owned(CHECK, store, stream, &id, "a").await;
    must(
        CHECK,
        "checkpoint",
        store.checkpoint(stream, &tenure, &after("77", 0)).await,
    );
    must(CHECK, "finish", store.finish(stream, &tenure).await);
    let finished = row(CHECK, store, stream, &id).await;
    assert_eq!(
        (
            finished.finished,
            finished.checkpoint.clone(),
            finished.owner.clone(),
            finished.token
        ),
        (
            true,
            Some(Checkpoint::ShardEnd),
            Some(tenure.owner.clone()),
            tenure.token
        ),
        "lease_store conformance [{CHECK}]: finish sets finished and SHARD_END, keeping owner \
         and token"
    );
    must(
        CHECK,
        "finish again by the same tenure",
        store.finish(stream, &tenure).await,
    );
    assert_eq!(
        row(CHECK, store, stream, &id).await,
        finished,
        "lease_store conformance [{CHECK}]: a repeated finish changes nothing"
    );
    let other = Tenure {
        owner: ClientId::from("b"),
        ..tenure.clone()
    };
    assert_lease_lost(
        CHECK,
        "finish by another owner",
        store.finish(stream, &other).await,
    );
    // A finished lease is final: not even its own tenure may move it off SHARD_END.
    assert_lease_lost(
        CHECK,
        "checkpoint after finish",
        store.checkpoint(stream, &tenure, &after("78", 0)).await,
    );
    assert_lease_lost(
        CHECK,
        "release after finish",
        store
            .release(stream, &tenure, Some(&after("78", 0)), None)
            .await,
    );
    assert_eq!(
        row(CHECK, store, stream, &id).await,
        finished,
        "lease_store conformance [{CHECK}]: writes after finish change nothing"
    );
}

async fn delete_finished_deletes_only_finished_rows<S: LeaseStore>(store: &S) {
    const CHECK: &str = "delete_finished_deletes_only_finished_rows";
    let stream = "conformance-delete";
    let (unfinished, done) = (shard(0), shard(1));
    must(
        CHECK,
        "create_if_absent",
        store.create_if_absent(stream, &unfinished, &[]).await,
    );
    let before = row(CHECK, store, stream, &unfinished).await;
    assert_lease_lost(
        CHECK,
        "delete_finished of an unfinished row",
        store.delete_finished(stream, &unfinished).await,
    );
    assert_eq!(
        row(CHECK, store, stream, &unfinished).await,
        before,
        "lease_store conformance [{CHECK}]: a refused delete leaves the row"
    );

    let tenure = owned(CHECK, store, stream, &done, "a").await;
    must(CHECK, "finish", store.finish(stream, &tenure).await);
    must(
        CHECK,
        "delete_finished",
        store.delete_finished(stream, &done).await,
    );
    let gone = must(CHECK, "lease", store.lease(stream, &done).await);
    assert!(
        gone.is_none(),
        "lease_store conformance [{CHECK}]: the finished row must be gone, got {gone:?}"
    );
    must(
        CHECK,
        "delete_finished of a missing row",
        store.delete_finished(stream, &done).await,
    );
    let rows = every_row(CHECK, "leases", store.leases(stream).await);
    assert_eq!(
        rows,
        vec![before],
        "lease_store conformance [{CHECK}]: only the unfinished row remains"
    );
}

async fn reset_checkpoint_needs_an_unowned_lease_and_its_token<S: LeaseStore>(store: &S) {
    const CHECK: &str = "reset_checkpoint_needs_an_unowned_lease_and_its_token";
    let (stream, id) = ("conformance-reset", shard(0));
    let tenure = owned(CHECK, store, stream, &id, "a").await;
    let reset_to = Checkpoint::AtTimestamp(1_700_000_000_000);
    assert_lease_lost(
        CHECK,
        "reset_checkpoint of an owned lease",
        store
            .reset_checkpoint(stream, &id, tenure.token, &reset_to)
            .await,
    );
    must(
        CHECK,
        "release",
        store
            .release(stream, &tenure, Some(&after("5", 0)), None)
            .await,
    );
    let before = row(CHECK, store, stream, &id).await;
    assert_lease_lost(
        CHECK,
        "reset_checkpoint with a wrong token",
        store
            .reset_checkpoint(stream, &id, tenure.token + 1, &reset_to)
            .await,
    );
    assert_eq!(
        row(CHECK, store, stream, &id).await,
        before,
        "lease_store conformance [{CHECK}]: a refused reset leaves the row"
    );
    must(
        CHECK,
        "reset_checkpoint",
        store
            .reset_checkpoint(stream, &id, tenure.token, &reset_to)
            .await,
    );
    let reset = row(CHECK, store, stream, &id).await;
    assert_eq!(
        reset,
        Lease {
            checkpoint: Some(reset_to),
            ..before
        },
        "lease_store conformance [{CHECK}]: reset changes only the checkpoint"
    );
}

async fn checkpoints_round_trip_exactly<S: LeaseStore>(store: &S) {
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

async fn streams_are_isolated<S: LeaseStore>(store: &S) {
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

async fn lease_of_a_missing_row_is_none<S: LeaseStore>(store: &S) {
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

async fn concurrent_takes_have_exactly_one_winner<S: LeaseStore>(store: &S) {
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

async fn replace_corrupt_never_touches_a_healthy_or_missing_row<S: LeaseStore>(store: &S) {
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

// ---------------------------------------------------------------------------------------------
// ShardSource
// ---------------------------------------------------------------------------------------------

/// What a test needs to drive a stream besides reading it: produce and reshard.
///
/// [`MemoryStream`] implements it; `kinsumer-kinesis` implements it against an emulator.
#[async_trait]
pub trait StreamAdmin: Send + Sync {
    /// Writes one record, routed by the MD5 of `partition_key`.
    async fn put(&self, partition_key: &str, data: &[u8]) -> Result<(), String>;

    /// Splits an open shard: the children own `start ..= key - 1` and `key ..= end`.
    async fn split(&self, shard: &ShardId, new_starting_hash_key: u128) -> Result<(), String>;

    /// Merges two adjacent open shards.
    async fn merge(&self, shard: &ShardId, adjacent: &ShardId) -> Result<(), String>;
}

#[async_trait]
impl StreamAdmin for MemoryStream {
    async fn put(&self, partition_key: &str, data: &[u8]) -> Result<(), String> {
        MemoryStream::put(self, partition_key, data.to_vec())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn split(&self, shard: &ShardId, new_starting_hash_key: u128) -> Result<(), String> {
        MemoryStream::split(self, shard, new_starting_hash_key)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn merge(&self, shard: &ShardId, adjacent: &ShardId) -> Result<(), String> {
        MemoryStream::merge(self, shard, adjacent)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// How many times an eventually consistent outcome is polled, and how long apart.
const POLL_ATTEMPTS: usize = 100;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The batch size the checks ask for.
const BATCH: usize = 1000;

/// Runs the [`ShardSource`] contract on a **fresh stream of two open shards**, which the check
/// reshards (the stream is left split and merged).
///
/// # Panics
///
/// On the first violation, naming the check.
pub async fn shard_source(source: &dyn ShardSource, admin: &dyn StreamAdmin) {
    let mut model = StreamModel::default();
    let roots = listing_shows_two_open_root_shards(source).await;
    model.track(&roots);
    records_are_read_back_exactly_once_in_order(source, admin, &mut model).await;
    open_after_starts_after_the_position(source, &model).await;
    a_timestamp_in_the_future_is_a_bad_position(source, &model).await;
    latest_sees_only_later_records(source, admin, &mut model).await;
    split_closes_the_parent_and_hands_over_to_its_children(source, admin, &mut model).await;
    merge_closes_both_parents_and_hands_over_to_the_child(source, admin, &mut model).await;
}

/// What the checks know of the stream: shards, and the records put into each.
#[derive(Default)]
struct StreamModel {
    shards: BTreeMap<ShardId, ShardInfo>,
    /// Per shard, the (partition key, data) put into it, in order.
    written: BTreeMap<ShardId, Vec<(String, Vec<u8>)>>,
    /// Per shard, the records read back from its horizon.
    read: BTreeMap<ShardId, Vec<SourceRecord>>,
}

impl StreamModel {
    fn track(&mut self, shards: &[ShardInfo]) {
        for info in shards {
            self.shards.insert(info.id.clone(), info.clone());
        }
    }

    /// The open shard owning `partition_key`'s hash key.
    fn route(&self, check: &str, partition_key: &str) -> ShardId {
        let hash_key = partition_hash_key(partition_key);
        match self
            .shards
            .values()
            .find(|s| s.open && s.hash_range.contains(hash_key))
        {
            Some(info) => info.id.clone(),
            None => panic!("shard_source conformance [{check}]: no open shard owns {hash_key}"),
        }
    }

    async fn put(&mut self, check: &str, admin: &dyn StreamAdmin, key: &str, data: &str) {
        if let Err(err) = admin.put(key, data.as_bytes()).await {
            panic!("shard_source conformance [{check}]: put {key:?} failed: {err}");
        }
        let shard = self.route(check, key);
        self.written
            .entry(shard)
            .or_default()
            .push((key.to_owned(), data.as_bytes().to_vec()));
    }

    /// A partition key (with this prefix) that routes to `shard`.
    fn key_for(&self, check: &str, shard: &ShardId, prefix: &str) -> String {
        for i in 0..10_000 {
            let key = format!("{prefix}-{i}");
            if self.route(check, &key) == *shard {
                return key;
            }
        }
        panic!("shard_source conformance [{check}]: no key routes to {shard}")
    }
}

async fn open(
    check: &str,
    source: &dyn ShardSource,
    shard: &ShardId,
    from: &Checkpoint,
) -> Box<dyn ShardReader> {
    for _ in 0..POLL_ATTEMPTS {
        match source.open(shard, from).await {
            Ok(reader) => return reader,
            Err(err) if err.is_retryable() => tokio::time::sleep(POLL_INTERVAL).await,
            Err(err) => panic!("shard_source conformance [{check}]: open {shard} at {from}: {err}"),
        }
    }
    panic!("shard_source conformance [{check}]: open {shard} at {from} kept failing")
}

async fn list(check: &str, source: &dyn ShardSource) -> Vec<ShardInfo> {
    for _ in 0..POLL_ATTEMPTS {
        match source.list_shards().await {
            Ok(shards) => return shards,
            Err(err) if err.is_retryable() => tokio::time::sleep(POLL_INTERVAL).await,
            Err(err) => panic!("shard_source conformance [{check}]: list_shards: {err}"),
        }
    }
    panic!("shard_source conformance [{check}]: list_shards kept failing")
}

/// Reads until `want` records arrived or the shard ended, within the poll budget. Returns the
/// records and the end, if reached.
async fn read_some(
    check: &str,
    reader: &mut dyn ShardReader,
    want: usize,
    until_end: bool,
) -> (Vec<SourceRecord>, Option<Vec<ShardId>>) {
    let mut records = Vec::new();
    for _ in 0..POLL_ATTEMPTS {
        match reader.next_batch(BATCH).await {
            Ok(batch) => {
                records.extend(batch.records);
                if batch.end.is_some() {
                    return (records, batch.end);
                }
                if records.len() >= want && !until_end {
                    return (records, None);
                }
            }
            Err(err) if err.is_retryable() => {}
            Err(err) => panic!("shard_source conformance [{check}]: next_batch: {err}"),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    if until_end {
        panic!(
            "shard_source conformance [{check}]: the shard never reported its end \
             (read {} records)",
            records.len()
        );
    }
    (records, None)
}

/// Reads once more (retrying transient errors) and asserts nothing new is there.
async fn assert_caught_up(check: &str, reader: &mut dyn ShardReader, what: &str) {
    for _ in 0..POLL_ATTEMPTS {
        match reader.next_batch(BATCH).await {
            Ok(batch) => {
                assert!(
                    batch.records.is_empty(),
                    "shard_source conformance [{check}]: {what}: expected an empty batch, got \
                     {:?}",
                    batch.records
                );
                return;
            }
            Err(err) if err.is_retryable() => tokio::time::sleep(POLL_INTERVAL).await,
            Err(err) => panic!("shard_source conformance [{check}]: next_batch: {err}"),
        }
    }
    panic!("shard_source conformance [{check}]: next_batch kept failing")
}

fn assert_strictly_increasing(check: &str, shard: &ShardId, records: &[SourceRecord]) {
    for pair in records.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "shard_source conformance [{check}]: positions of {shard} must strictly increase: \
             {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
}

fn assert_records_match(
    check: &str,
    shard: &ShardId,
    records: &[SourceRecord],
    written: &[(String, Vec<u8>)],
) {
    let got: Vec<(&str, &[u8])> = records
        .iter()
        .map(|r| (r.partition_key.as_str(), &r.data[..]))
        .collect();
    let want: Vec<(&str, &[u8])> = written
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_slice()))
        .collect();
    assert_eq!(
        got, want,
        "shard_source conformance [{check}]: {shard} must yield exactly what was put into it, \
         once each, in order"
    );
}

fn assert_covers_key_space(check: &str, shards: &[&ShardInfo]) {
    let mut ranges: Vec<HashRange> = shards.iter().map(|s| s.hash_range).collect();
    ranges.sort();
    let covers = ranges.first().is_some_and(|r| r.start == 0)
        && ranges.last().is_some_and(|r| r.end == u128::MAX)
        && ranges
            .windows(2)
            .all(|w| w[0].end.checked_add(1) == Some(w[1].start));
    assert!(
        covers,
        "shard_source conformance [{check}]: open shards must cover the key space without gaps \
         or overlaps: {ranges:?}"
    );
}

async fn listing_shows_two_open_root_shards(source: &dyn ShardSource) -> Vec<ShardInfo> {
    const CHECK: &str = "listing_shows_two_open_root_shards";
    let shards = list(CHECK, source).await;
    assert_eq!(
        shards.len(),
        2,
        "shard_source conformance [{CHECK}]: the stream must be fresh with 2 shards, got \
         {shards:?}"
    );
    let ids: BTreeSet<&ShardId> = shards.iter().map(|s| &s.id).collect();
    assert_eq!(
        ids.len(),
        shards.len(),
        "shard_source conformance [{CHECK}]: shard ids must be unique"
    );
    assert!(
        shards.iter().all(|s| s.open && s.parents.is_empty()),
        "shard_source conformance [{CHECK}]: all shards open with no parents: {shards:?}"
    );
    assert_covers_key_space(CHECK, &shards.iter().collect::<Vec<_>>());
    shards
}

async fn records_are_read_back_exactly_once_in_order(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "records_are_read_back_exactly_once_in_order";
    for i in 0..24 {
        let (key, data) = (format!("key-{i}"), format!("record-{i}"));
        model.put(CHECK, admin, &key, &data).await;
    }
    let shards: Vec<ShardId> = model.shards.keys().cloned().collect();
    for shard in shards {
        let written = model.written.get(&shard).cloned().unwrap_or_default();
        let mut reader = open(CHECK, source, &shard, &Checkpoint::TrimHorizon).await;
        let (records, end) = read_some(CHECK, reader.as_mut(), written.len(), false).await;
        assert!(
            end.is_none(),
            "shard_source conformance [{CHECK}]: open shard {shard} reported an end"
        );
        assert_caught_up(CHECK, reader.as_mut(), "a caught-up reader").await;
        assert_records_match(CHECK, &shard, &records, &written);
        assert_strictly_increasing(CHECK, &shard, &records);
        model.read.insert(shard, records);
    }
}

async fn open_after_starts_after_the_position(source: &dyn ShardSource, model: &StreamModel) {
    const CHECK: &str = "open_after_starts_after_the_position";
    let Some((shard, records)) = model.read.iter().find(|(_, records)| records.len() >= 3) else {
        panic!("shard_source conformance [{CHECK}]: no shard got 3 records to test with")
    };
    let (first, second) = (&records[0], &records[1]);
    let sub_sequence_after = Position::new(
        first.position.sequence.clone(),
        first.position.sub_sequence + 1,
    );
    for (what, position) in [
        ("a record's position", first.position.clone()),
        ("a sub-sequence after a record", sub_sequence_after),
    ] {
        let from = Checkpoint::After(position);
        let mut reader = open(CHECK, source, shard, &from).await;
        let (read, _) = read_some(CHECK, reader.as_mut(), records.len() - 1, false).await;
        assert_eq!(
            read.first().map(|r| &r.position),
            Some(&second.position),
            "shard_source conformance [{CHECK}]: After({what}) must start at the next record"
        );
        assert_eq!(
            read.len(),
            records.len() - 1,
            "shard_source conformance [{CHECK}]: After({what}) must yield every later record"
        );
    }
    let Some(last) = records.last() else { return };
    let mut reader = open(
        CHECK,
        source,
        shard,
        &Checkpoint::After(last.position.clone()),
    )
    .await;
    assert_caught_up(CHECK, reader.as_mut(), "After(the last record)").await;
}

/// A position the source refuses is `BadPosition` — that shard's problem — never `Fatal`,
/// which would stop a consumer (and, in turn, every consumer that takes the shard).
async fn a_timestamp_in_the_future_is_a_bad_position(
    source: &dyn ShardSource,
    model: &StreamModel,
) {
    const CHECK: &str = "a_timestamp_in_the_future_is_a_bad_position";
    let Some(shard) = model.shards.keys().next() else {
        panic!("shard_source conformance [{CHECK}]: no shard to test with")
    };
    let in_a_day = Checkpoint::AtTimestamp(source.now_ms() + 24 * 3600 * 1000);
    match source.open(shard, &in_a_day).await {
        Err(SourceError::BadPosition { shard: s, .. }) => assert_eq!(&s, shard),
        Err(other) => {
            panic!("shard_source conformance [{CHECK}]: expected BadPosition, got {other:?}")
        }
        Ok(_) => {
            panic!("shard_source conformance [{CHECK}]: expected BadPosition, the open succeeded")
        }
    }
}

async fn latest_sees_only_later_records(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "latest_sees_only_later_records";
    let Some((shard, _)) = model.read.iter().find(|(_, r)| !r.is_empty()) else {
        panic!("shard_source conformance [{CHECK}]: no shard got a record")
    };
    let shard = shard.clone();
    let mut reader = open(CHECK, source, &shard, &Checkpoint::Latest).await;
    assert_caught_up(CHECK, reader.as_mut(), "a Latest reader before any put").await;
    let key = model.key_for(CHECK, &shard, "latest");
    model.put(CHECK, admin, &key, "after-latest").await;
    let (records, _) = read_some(CHECK, reader.as_mut(), 1, false).await;
    let got: Vec<(&str, &[u8])> = records
        .iter()
        .map(|r| (r.partition_key.as_str(), &r.data[..]))
        .collect();
    assert_eq!(
        got,
        vec![(key.as_str(), &b"after-latest"[..])],
        "shard_source conformance [{CHECK}]: a Latest reader sees exactly the later record"
    );
}

/// Polls the listing until `done` holds for it.
async fn await_listing(
    check: &str,
    source: &dyn ShardSource,
    what: &str,
    done: impl Fn(&[ShardInfo]) -> bool,
) -> Vec<ShardInfo> {
    let mut shards = Vec::new();
    for _ in 0..POLL_ATTEMPTS {
        shards = list(check, source).await;
        if done(&shards) {
            return shards;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("shard_source conformance [{check}]: the listing never showed {what}: {shards:?}")
}

/// Reads `parent` from its horizon to its end; checks its records and that the end names
/// exactly `children`.
async fn assert_reads_to_end(
    check: &str,
    source: &dyn ShardSource,
    model: &StreamModel,
    parent: &ShardId,
    children: &BTreeSet<ShardId>,
) {
    let mut reader = open(check, source, parent, &Checkpoint::TrimHorizon).await;
    let (records, end) = read_some(check, reader.as_mut(), 0, true).await;
    let written = model.written.get(parent).cloned().unwrap_or_default();
    assert_records_match(check, parent, &records, &written);
    assert_strictly_increasing(check, parent, &records);
    let end: BTreeSet<ShardId> = end.unwrap_or_default().into_iter().collect();
    assert_eq!(
        &end, children,
        "shard_source conformance [{check}]: the end of {parent} must name its children"
    );
}

/// Puts a record routed into `child` and reads it back from the child's horizon.
async fn assert_child_takes_writes(
    check: &str,
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
    child: &ShardId,
) {
    let key = model.key_for(check, child, "child");
    model.put(check, admin, &key, "into-child").await;
    let written = model.written.get(child).cloned().unwrap_or_default();
    let mut reader = open(check, source, child, &Checkpoint::TrimHorizon).await;
    let (records, _) = read_some(check, reader.as_mut(), written.len(), false).await;
    assert_records_match(check, child, &records, &written);
}

async fn split_closes_the_parent_and_hands_over_to_its_children(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "split_closes_the_parent_and_hands_over_to_its_children";
    let Some(parent) = model
        .shards
        .values()
        .filter(|s| s.open)
        .max_by_key(|s| model.written.get(&s.id).map_or(0, Vec::len))
        .cloned()
    else {
        panic!("shard_source conformance [{CHECK}]: no open shard")
    };
    let range = parent.hash_range;
    let key = range.start + (range.end - range.start) / 2 + 1;
    if let Err(err) = admin.split(&parent.id, key).await {
        panic!(
            "shard_source conformance [{CHECK}]: split {} failed: {err}",
            parent.id
        );
    }
    let shards = await_listing(CHECK, source, "the split", |shards| {
        let closed = shards.iter().any(|s| s.id == parent.id && !s.open);
        let children = shards.iter().filter(|s| s.parents == [parent.id.clone()]);
        closed && children.count() == 2
    })
    .await;
    let mut children: Vec<&ShardInfo> = shards
        .iter()
        .filter(|s| s.parents == [parent.id.clone()])
        .collect();
    children.sort_by_key(|s| s.hash_range);
    let ranges: Vec<HashRange> = children.iter().map(|s| s.hash_range).collect();
    assert_eq!(
        ranges,
        vec![
            HashRange {
                start: range.start,
                end: key - 1
            },
            HashRange {
                start: key,
                end: range.end
            },
        ],
        "shard_source conformance [{CHECK}]: the children split the parent's range at the key"
    );
    assert!(
        children.iter().all(|s| s.open),
        "shard_source conformance [{CHECK}]: the children are open"
    );
    let open: Vec<&ShardInfo> = shards.iter().filter(|s| s.open).collect();
    assert_covers_key_space(CHECK, &open);
    model.track(&shards);

    let child_ids: BTreeSet<ShardId> = children.iter().map(|s| s.id.clone()).collect();
    assert_reads_to_end(CHECK, source, model, &parent.id, &child_ids).await;
    for child in &child_ids {
        assert_child_takes_writes(CHECK, source, admin, model, child).await;
    }
}

async fn merge_closes_both_parents_and_hands_over_to_the_child(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "merge_closes_both_parents_and_hands_over_to_the_child";
    let mut open: Vec<ShardInfo> = model.shards.values().filter(|s| s.open).cloned().collect();
    open.sort_by_key(|s| s.hash_range);
    let Some((a, b)) = open
        .windows(2)
        .find(|w| w[0].hash_range.end.checked_add(1) == Some(w[1].hash_range.start))
        .map(|w| (w[0].clone(), w[1].clone()))
    else {
        panic!("shard_source conformance [{CHECK}]: no two adjacent open shards: {open:?}")
    };
    for parent in [&a, &b] {
        let key = model.key_for(CHECK, &parent.id, "before-merge");
        model.put(CHECK, admin, &key, "before-merge").await;
    }
    if let Err(err) = admin.merge(&a.id, &b.id).await {
        panic!(
            "shard_source conformance [{CHECK}]: merge {} + {} failed: {err}",
            a.id, b.id
        );
    }
    let parents: BTreeSet<ShardId> = [a.id.clone(), b.id.clone()].into();
    let is_child = |s: &ShardInfo| s.parents.iter().cloned().collect::<BTreeSet<_>>() == parents;
    let shards = await_listing(CHECK, source, "the merge", |shards| {
        let closed = shards
            .iter()
            .filter(|s| parents.contains(&s.id) && !s.open)
            .count();
        closed == 2 && shards.iter().any(is_child)
    })
    .await;
    let children: Vec<&ShardInfo> = shards.iter().filter(|s| is_child(s)).collect();
    assert_eq!(
        children.len(),
        1,
        "shard_source conformance [{CHECK}]: a merge has one child: {children:?}"
    );
    let child = children[0];
    assert_eq!(
        (child.hash_range, child.parents.len(), child.open),
        (
            HashRange {
                start: a.hash_range.start,
                end: b.hash_range.end
            },
            2,
            true
        ),
        "shard_source conformance [{CHECK}]: the child is open, owns the union and names both \
         parents"
    );
    let open: Vec<&ShardInfo> = shards.iter().filter(|s| s.open).collect();
    assert_covers_key_space(CHECK, &open);
    model.track(&shards);

    let child_id: BTreeSet<ShardId> = [child.id.clone()].into();
    for parent in [&a, &b] {
        assert_reads_to_end(CHECK, source, model, &parent.id, &child_id).await;
    }
    assert_child_takes_writes(CHECK, source, admin, model, &child.id).await;
}
