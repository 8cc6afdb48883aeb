//! The `LeaseStore` contract, on a real Redis.

mod common;

use std::sync::{Arc, Mutex};

use kinsumer_redis::RedisLeaseStore;
use kinsumer_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_store_contract_holds_on_redis() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let apps = Arc::new(Mutex::new(Vec::new()));
    conformance::lease_store(|| {
        let (url, apps) = (url.clone(), apps.clone());
        async move {
            // Each check gets a fresh, empty store: its own application, so its own keys.
            let app = common::unique_app("conformance");
            apps.lock().expect("lock").push(app.clone());
            RedisLeaseStore::connect(&url, &app).await.expect("connect")
        }
    })
    .await;
    let apps = apps.lock().expect("lock").clone();
    for app in apps {
        common::cleanup(&url, &app).await;
    }
}
