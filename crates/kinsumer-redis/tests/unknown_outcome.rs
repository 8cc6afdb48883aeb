//! Writes whose reply is lost, on a real Redis: the conformance checks of
//! `kinsumer_testkit::conformance::unknown_outcome`, with a `FaultProxy` between the store and
//! the server.

mod common;

use std::net::ToSocketAddrs;

use kinsumer_redis::RedisLeaseStore;
use kinsumer_testkit::{FaultProxy, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lease_store_settles_unknown_outcomes_by_re_reading() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let authority = kinsumer_test_env::services::authority(&url).expect("host:port in the URL");
    let upstream = authority
        .to_socket_addrs()
        .expect("resolve the Redis address")
        .next()
        .expect("an address");
    let proxy = FaultProxy::start(upstream).expect("start the proxy");
    let app = common::unique_app("unknown-outcome");
    let through_proxy = url.replacen(&authority, &proxy.addr().to_string(), 1);
    let faulty = RedisLeaseStore::connect(&through_proxy, &app)
        .await
        .expect("connect through the proxy");
    let direct = RedisLeaseStore::connect(&url, &app).await.expect("connect");
    conformance::unknown_outcomes(&faulty, &direct, &proxy).await;
    common::cleanup(&url, &app).await;
}
