//! Writes whose reply is lost, on a real PostgreSQL: the conformance checks of
//! `kinsumer_testkit::conformance::unknown_outcome`, with a `FaultProxy` between the store and
//! the server.

mod common;

use std::net::ToSocketAddrs;

use kinsumer_postgres::{PgLeaseStore, PgStoreConfig};
use kinsumer_testkit::{FaultProxy, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_lease_store_settles_unknown_outcomes_by_re_reading() {
    let Some(url) = common::url() else {
        return;
    };
    let authority = kinsumer_test_env::services::authority(&url).expect("host:port in the URL");
    let upstream = authority
        .to_socket_addrs()
        .expect("resolve the PostgreSQL address")
        .next()
        .expect("an address");
    let proxy = FaultProxy::start(upstream).expect("start the proxy");
    let schema = common::unique_schema("unknown");
    let direct = common::store(&url, &schema, "unknown-outcome").await;
    let through_proxy = url.replacen(&authority, &proxy.addr().to_string(), 1);
    let config = PgStoreConfig {
        migrate_on_connect: false,
        ..PgStoreConfig::new(through_proxy, "unknown-outcome").with_schema(&schema)
    };
    let faulty = PgLeaseStore::connect(config)
        .await
        .expect("connect through the proxy");
    conformance::unknown_outcomes(&faulty, &direct, &proxy).await;
    common::drop_schema(direct.pool(), &schema).await;
}
