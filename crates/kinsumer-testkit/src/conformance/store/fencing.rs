//! The [`LeaseStore`] contract, fencing: every write by a tenure that does not hold the lease
//! is `LeaseLost`, and every write of a missing row is `NotFound`.

use kinsumer_core::store::{ClientId, LeaseStore, Tenure};

use super::support::{after, assert_lease_lost, assert_not_found, must, owned, row, shard};

pub(super) async fn fenced_writes_by_a_wrong_tenure_are_lease_lost<S: LeaseStore>(store: &S) {
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

pub(super) async fn fenced_writes_of_a_missing_row_are_not_found<S: LeaseStore>(store: &S) {
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
