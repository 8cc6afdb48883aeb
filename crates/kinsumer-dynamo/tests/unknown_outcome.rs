//! Writes whose reply is lost, on moto's DynamoDB: the conformance checks of
//! `kinsumer_testkit::conformance::unknown_outcome`, with a `FaultProxy` between the store and
//! the server.

mod common;

use std::net::ToSocketAddrs;

use kinsumer_dynamo::{DynamoConfig, DynamoLeaseStore};
use kinsumer_testkit::{FaultProxy, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamo_lease_store_settles_unknown_outcomes_by_re_reading() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let authority =
        kinsumer_test_env::services::authority(&endpoint).expect("host:port in the endpoint");
    let upstream = authority
        .to_socket_addrs()
        .expect("resolve moto's address")
        .next()
        .expect("an address");
    let proxy = FaultProxy::start(upstream).expect("start the proxy");
    let client = common::client(&endpoint);
    let direct = common::fresh_store(&client, "unknown").await;
    let through_proxy = endpoint.replacen(&authority, &proxy.addr().to_string(), 1);
    let config = DynamoConfig::new("tests").with_table(direct.table());
    let faulty = DynamoLeaseStore::open(common::client(&through_proxy), config)
        .await
        .expect("open through the proxy");
    conformance::unknown_outcomes(&faulty, &direct, &proxy).await;
    common::drop_table(&client, direct.table()).await;
}
