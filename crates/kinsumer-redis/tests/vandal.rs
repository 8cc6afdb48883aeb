//! Hostile values written into the rows of a running fleet's Redis: the other shards flow,
//! no consumer stops, and every read names the bad rows (the testkit's vandal check); and a
//! row the vandal spoiled is repaired by `replace_corrupt`, which never overwrites a healthy
//! row (the testkit's repair check).

mod common;

use async_trait::async_trait;
use kinsumer_core::rng::Rng;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::TOKEN_LIMIT;
use kinsumer_redis::RedisLeaseStore;
use kinsumer_testkit::conformance::{self, Vandal, hostile_number, hostile_text, lease_field};

struct RedisVandal {
    conn: redis::aio::MultiplexedConnection,
    store: RedisLeaseStore,
}

#[async_trait]
impl Vandal for RedisVandal {
    async fn spoil_lease(&self, stream: &str, shard: &ShardId, rng: &mut Rng) {
        // Raw bytes, or a lease-shaped JSON object with one hostile field.
        let value: Vec<u8> = match rng.below(3) {
            0 => (0..rng.below(60)).map(|_| rng.below(256) as u8).collect(),
            1 => hostile_text(rng).into_bytes(),
            _ => {
                let field = lease_field(rng);
                let hostile = match rng.below(4) {
                    0 => serde_json::json!(hostile_number(rng)),
                    1 => serde_json::json!(rng.below(u64::MAX)),
                    2 => serde_json::json!([hostile_text(rng)]),
                    _ => serde_json::json!({ "nested": hostile_text(rng) }),
                };
                let mut row = serde_json::json!({ "token": "1", "checkpoint": "TRIM_HORIZON" });
                row[field] = hostile;
                row.to_string().into_bytes()
            }
        };
        let mut conn = self.conn.clone();
        let _: Result<i64, _> = redis::cmd("HSET")
            .arg(self.store.leases_key(stream))
            .arg(shard.as_str())
            .arg(value)
            .query_async(&mut conn)
            .await;
    }

    async fn corrupt_lease(&self, stream: &str, shard: &ShardId) {
        // A token with a leading zero: valid JSON, but not a token the scripts could compare.
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HSET")
            .arg(self.store.leases_key(stream))
            .arg(shard.as_str())
            .arg(r#"{"token":"01","checkpoint":"TRIM_HORIZON"}"#)
            .query_async(&mut conn)
            .await
            .expect("HSET of a corrupt lease row");
    }

    async fn exhaust_token(&self, stream: &str, shard: &ShardId) {
        let mut conn = self.conn.clone();
        let key = self.store.leases_key(stream);
        let raw: Vec<u8> = redis::cmd("HGET")
            .arg(&key)
            .arg(shard.as_str())
            .query_async(&mut conn)
            .await
            .expect("HGET of the lease row");
        let mut row: serde_json::Value = serde_json::from_slice(&raw).expect("a JSON row");
        row["token"] = serde_json::Value::String(TOKEN_LIMIT.to_string());
        let _: i64 = redis::cmd("HSET")
            .arg(&key)
            .arg(shard.as_str())
            .arg(row.to_string())
            .query_async(&mut conn)
            .await
            .expect("HSET of the exhausted token");
    }

    async fn spoil_client(&self, client: &str, rng: &mut Rng) {
        let mut conn = self.conn.clone();
        // The heartbeat value, or the judged-dead mark beside it.
        let key = if rng.chance(0.5) {
            self.store.clients_key()
        } else {
            self.store.judged_dead_key()
        };
        let _: Result<i64, _> = redis::cmd("HSET")
            .arg(key)
            .arg(client)
            .arg(hostile_number(rng))
            .query_async(&mut conn)
            .await;
    }

    async fn spoil_changes(&self, rng: &mut Rng) {
        let mut conn = self.conn.clone();
        let key = self.store.changes_key();
        // A hostile string, or a key of another type.
        let _: Result<(), _> = if rng.chance(0.5) {
            redis::cmd("SET")
                .arg(&key)
                .arg(hostile_text(rng))
                .query_async(&mut conn)
                .await
        } else {
            redis::pipe()
                .cmd("DEL")
                .arg(&key)
                .ignore()
                .cmd("HSET")
                .arg(&key)
                .arg("x")
                .arg("1")
                .ignore()
                .query_async(&mut conn)
                .await
        };
    }

    async fn corrupt_changes(&self) {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(self.store.changes_key())
            .arg("01")
            .query_async(&mut conn)
            .await
            .expect("SET of a corrupt change counter");
    }
}

/// A store of a new application, and a vandal of its rows.
async fn store_and_vandal(url: &str, tag: &str) -> (String, RedisLeaseStore, RedisVandal) {
    let application = common::unique_app(tag);
    let store = RedisLeaseStore::connect(url, &application)
        .await
        .expect("connect");
    let vandal = RedisVandal {
        conn: common::raw_connection(url).await,
        store: store.clone(),
    };
    (application, store, vandal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_goes_on_while_a_vandal_spoils_rows() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let (application, store, vandal) = store_and_vandal(&url, "vandal").await;
    let report = conformance::fleet_under_vandal(store, &application, &vandal, 7).await;
    eprintln!("redis under a vandal: {report:?}");
    assert!(
        report.most_corrupt_seen > 0,
        "the vandal's rows were reported: {report:?}"
    );
    common::cleanup(&url, &application).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_repaired_and_a_healthy_one_never_overwritten() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let (application, store, vandal) = store_and_vandal(&url, "repair").await;
    conformance::repair_of_a_corrupt_row(&store, &vandal).await;
    common::cleanup(&url, &application).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_change_counter_is_written_afresh() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let (application, store, vandal) = store_and_vandal(&url, "changes").await;
    conformance::corrupt_change_counter(&store, &vandal).await;
    common::cleanup(&url, &application).await;
}

/// `replace_corrupt` whose reply is lost (a `FaultProxy` between the store and Redis) is
/// settled by re-reading: see `conformance::unknown_outcome`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_whose_reply_was_lost_is_settled_by_re_reading() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let authority = kinsumer_test_env::services::authority(&url).expect("host:port in the URL");
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&authority.as_str())
        .expect("resolve the Redis address")
        .next()
        .expect("an address");
    let proxy = kinsumer_testkit::FaultProxy::start(upstream).expect("start the proxy");
    let (application, direct, vandal) = store_and_vandal(&url, "repair-lost").await;
    let through_proxy = url.replacen(&authority, &proxy.addr().to_string(), 1);
    let faulty = RedisLeaseStore::connect(&through_proxy, &application)
        .await
        .expect("connect through the proxy");
    conformance::unknown_outcome::replace_corrupt_whose_reply_was_lost_is_ok(
        &faulty, &direct, &proxy, &vandal,
    )
    .await;
    common::cleanup(&url, &application).await;
}
