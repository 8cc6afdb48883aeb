//! The `LeaseStore` contract, against moto's DynamoDB server.

mod common;

use std::sync::{Arc, Mutex};

use kinsumer_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamo_lease_store_passes_the_conformance_suite() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let tables = Arc::new(Mutex::new(Vec::new()));
    conformance::lease_store(|| {
        let (client, tables) = (client.clone(), tables.clone());
        async move {
            let store = common::fresh_store(&client, "conf").await;
            tables.lock().expect("lock").push(store.table().to_owned());
            store
        }
    })
    .await;
    let tables = tables.lock().expect("lock").clone();
    for table in tables {
        common::drop_table(&client, &table).await;
    }
}
