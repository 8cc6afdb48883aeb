//! The [`LeaseStore`] contract, client rows: heartbeats create and write them, `clients` lists
//! them and `client` reads one, `deregister` removes them (idempotently), and `mark_dead`
//! holds only while the row still shows the value the watcher judged.

use kinsumer_core::store::{ClientId, ClientRow, LeaseStore};
use std::collections::BTreeMap;

use super::support::{every_row, must};

pub(super) async fn heartbeat_writes_the_value_and_creates_the_row<S: LeaseStore>(store: &S) {
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

pub(super) async fn clients_lists_every_row<S: LeaseStore>(store: &S) {
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

pub(super) async fn deregister_removes_and_is_idempotent<S: LeaseStore>(store: &S) {
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

pub(super) async fn client_reads_one_row<S: LeaseStore>(store: &S) {
    const CHECK: &str = "client_reads_one_row";
    let (a, b) = (ClientId::from("client-a"), ClientId::from("client-b"));
    must(CHECK, "heartbeat", store.heartbeat(&a, 11).await);
    must(CHECK, "heartbeat", store.heartbeat(&b, 12).await);
    must(CHECK, "heartbeat", store.heartbeat(&a, 13).await);
    let row = must(CHECK, "client", store.client(&a).await);
    assert_eq!(
        row,
        Some(ClientRow::new(a.clone(), 13)),
        "lease_store conformance [{CHECK}]: client() must read the one row with its last value"
    );
    let missing = must(
        CHECK,
        "client of a missing row",
        store.client(&ClientId::from("never-seen")).await,
    );
    assert_eq!(
        missing, None,
        "lease_store conformance [{CHECK}]: client() of a missing row must be None"
    );
    must(CHECK, "deregister", store.deregister(&b).await);
    let gone = must(CHECK, "client after deregister", store.client(&b).await);
    assert_eq!(
        gone, None,
        "lease_store conformance [{CHECK}]: client() of a deregistered client must be None"
    );
}

pub(super) async fn mark_dead_holds_only_at_the_current_value<S: LeaseStore>(store: &S) {
    const CHECK: &str = "mark_dead_holds_only_at_the_current_value";
    let (a, other) = (ClientId::from("client-a"), ClientId::from("client-b"));
    must(CHECK, "heartbeat", store.heartbeat(&a, 5).await);
    must(CHECK, "heartbeat", store.heartbeat(&other, 9).await);
    let judged = |row: &Option<ClientRow>| row.as_ref().is_some_and(ClientRow::is_judged_dead);

    // A heartbeat landed after the watcher's read: the mark must not hold.
    let stale = must(
        CHECK,
        "mark_dead at an old value",
        store.mark_dead(&a, 4).await,
    );
    assert!(
        !stale,
        "lease_store conformance [{CHECK}]: mark_dead at a value the row no longer holds must be refused"
    );
    let row = must(CHECK, "client", store.client(&a).await);
    assert!(
        !judged(&row),
        "lease_store conformance [{CHECK}]: a refused mark must leave the row alive, got {row:?}"
    );

    let marked = must(CHECK, "mark_dead", store.mark_dead(&a, 5).await);
    assert!(
        marked,
        "lease_store conformance [{CHECK}]: mark_dead at the row's value must hold"
    );
    let row = must(CHECK, "client", store.client(&a).await);
    assert_eq!(
        row.as_ref().map(|r| (r.counter, r.judged_dead)),
        Some((5, Some(5))),
        "lease_store conformance [{CHECK}]: client() must show the mark"
    );
    let rows = every_row(CHECK, "clients", store.clients().await);
    assert!(
        rows.iter().any(|r| r.id == a && r.is_judged_dead())
            && rows.iter().any(|r| r.id == other && !r.is_judged_dead()),
        "lease_store conformance [{CHECK}]: clients() must show the mark on its row only, got {rows:?}"
    );
    let again = must(CHECK, "mark_dead again", store.mark_dead(&a, 5).await);
    assert!(
        again,
        "lease_store conformance [{CHECK}]: a repeated mark (a retry) must hold too"
    );

    // The client comes back: its next heartbeat makes it alive again.
    must(CHECK, "heartbeat", store.heartbeat(&a, 6).await);
    let row = must(CHECK, "client", store.client(&a).await);
    assert!(
        row.as_ref()
            .is_some_and(|r| r.counter == 6 && !r.is_judged_dead()),
        "lease_store conformance [{CHECK}]: a heartbeat after the mark must make the client alive, got {row:?}"
    );

    // A mark never creates a row, and a leave forgets the mark.
    let nobody = ClientId::from("never-seen");
    let absent = must(
        CHECK,
        "mark_dead of a missing row",
        store.mark_dead(&nobody, 1).await,
    );
    assert!(
        !absent && must(CHECK, "client", store.client(&nobody).await).is_none(),
        "lease_store conformance [{CHECK}]: mark_dead of a missing row must be refused and create nothing"
    );
    must(CHECK, "mark_dead", store.mark_dead(&a, 6).await);
    must(CHECK, "deregister", store.deregister(&a).await);
    must(CHECK, "heartbeat", store.heartbeat(&a, 6).await);
    let row = must(CHECK, "client", store.client(&a).await);
    assert!(
        row.as_ref().is_some_and(|r| !r.is_judged_dead()),
        "lease_store conformance [{CHECK}]: a row registered again after a leave must not carry the old mark, got {row:?}"
    );
}
