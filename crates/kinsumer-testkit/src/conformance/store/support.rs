//! What the store checks share: unwrapping and asserting results with the check's name in
//! every panic, reading rows, and the shards and checkpoints the checks use.

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, Lease, LeaseStore, Rows, StoreError, Tenure};
use std::fmt::Debug;

/// Unwraps a result the check needs, or panics naming the check and the call.
pub(in crate::conformance) fn must<T, E: Debug>(
    check: &str,
    call: &str,
    result: Result<T, E>,
) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("lease_store conformance [{check}]: {call} failed: {err:?}"),
    }
}

/// The rows of a read that must have decoded every row (the contract's own rows always do).
pub(in crate::conformance) fn every_row<T, E: Debug>(
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

pub(in crate::conformance) fn assert_lease_lost<T: Debug>(
    check: &str,
    call: &str,
    result: Result<T, StoreError>,
) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost { .. })),
        "lease_store conformance [{check}]: {call} should fail with LeaseLost, got {result:?}"
    );
}

pub(in crate::conformance) fn assert_not_found<T: Debug>(
    check: &str,
    call: &str,
    result: Result<T, StoreError>,
) {
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "lease_store conformance [{check}]: {call} should fail with NotFound, got {result:?}"
    );
}

pub(in crate::conformance) async fn row<S: LeaseStore>(
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
pub(in crate::conformance) async fn owned<S: LeaseStore>(
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

pub(in crate::conformance) fn shard(n: u32) -> ShardId {
    ShardId::from(format!("shardId-{n:012}"))
}

pub(in crate::conformance) fn after(sequence: &str, sub_sequence: u64) -> Checkpoint {
    match sequence.parse::<SequenceNumber>() {
        Ok(sequence) => Checkpoint::After(Position::new(sequence, sub_sequence)),
        Err(err) => panic!("lease_store conformance: bad test sequence number: {err}"),
    }
}
