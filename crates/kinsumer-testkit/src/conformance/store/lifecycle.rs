//! The [`LeaseStore`] contract, a lease's life after its take: release (and naming a
//! successor), finish at shard end, deletion of finished rows, and resetting a checkpoint.

use kinsumer_core::position::Checkpoint;
use kinsumer_core::store::{ClientId, Lease, LeaseStore, Tenure};

use super::support::{after, assert_lease_lost, every_row, must, owned, row, shard};

pub(super) async fn release_clears_the_owner_and_keeps_the_token<S: LeaseStore>(store: &S) {
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

pub(super) async fn release_names_the_successor_and_take_clears_it<S: LeaseStore>(store: &S) {
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

pub(super) async fn finish_marks_shard_end_and_is_idempotent<S: LeaseStore>(store: &S) {
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

pub(super) async fn delete_finished_deletes_only_finished_rows<S: LeaseStore>(store: &S) {
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

pub(super) async fn reset_checkpoint_needs_an_unowned_lease_and_its_token<S: LeaseStore>(
    store: &S,
) {
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
