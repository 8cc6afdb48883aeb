//! Reading a real store's rows in the shape the backends' tests compare.

use kinsumer_core::store::LeaseStore;

/// `(client id, counter)` of every row `store.clients()` reads, in its order; panics if any row
/// was corrupt (a heartbeat test expects none).
pub async fn client_counters(store: &impl LeaseStore) -> Vec<(String, u64)> {
    let read = store.clients().await.expect("clients");
    assert!(read.corrupt.is_empty(), "{:?}", read.corrupt);
    read.rows
        .into_iter()
        .map(|r| (r.id.as_str().to_owned(), r.counter))
        .collect()
}
