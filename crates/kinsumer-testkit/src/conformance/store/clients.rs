//! The [`LeaseStore`] contract, client rows: heartbeats create and write them, `clients` lists
//! them, `deregister` removes them (idempotently).

use kinsumer_core::store::{ClientId, LeaseStore};
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
