//! Hostile values written into the rows of a running fleet's PostgreSQL tables (whatever the
//! column types let through): the other shards flow, no consumer stops, and every read names
//! the bad rows (the testkit's vandal check); and a row the vandal spoiled is repaired by
//! `replace_corrupt`, which never overwrites a healthy row (the testkit's repair check).

mod common;

use async_trait::async_trait;
use kinsumer_core::rng::Rng;
use kinsumer_core::source::ShardId;
use kinsumer_postgres::PgLeaseStore;
use kinsumer_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use kinsumer_testkit::conformance::{self, Vandal, hostile_text};

struct PgVandal {
    pool: PgPool,
    schema: String,
    application: String,
}

impl PgVandal {
    /// A vandal of the rows of `store` (schema `schema`, application `application`).
    fn of(store: &PgLeaseStore, schema: &str, application: &str) -> Self {
        Self {
            pool: store.pool().clone(),
            schema: schema.to_owned(),
            application: application.to_owned(),
        }
    }

    /// `UPDATE leases SET {set}` on the row of `shard`, which must exist (`what` names the
    /// statement if it fails).
    async fn update_lease(&self, stream: &str, shard: &ShardId, set: &str, what: &str) {
        let sql = format!(
            "UPDATE \"{}\".leases SET {set} WHERE application = $1 AND stream = $2 AND shard = $3",
            self.schema
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(&self.application)
            .bind(stream)
            .bind(shard.as_str())
            .execute(&self.pool)
            .await
            .expect(what);
        assert_eq!(done.rows_affected(), 1, "the row of {shard} exists");
    }
}

#[async_trait]
impl Vandal for PgVandal {
    async fn spoil_lease(&self, stream: &str, shard: &ShardId, rng: &mut Rng) {
        let s = format!("\"{}\"", self.schema);
        let (set, text): (&str, Option<String>) = match rng.below(7) {
            0 => ("checkpoint = $4", Some(hostile_text(rng))),
            1 => ("owner = $4", Some(hostile_text(rng))),
            2 => ("successor = $4", Some(hostile_text(rng))),
            3 => ("token = 9223372036854775807", None),
            4 => ("parents = ARRAY[NULL]::text[]", None),
            5 => ("owner = '', checkpoint = 'AFTER:1/+1'", None),
            _ => ("token = (random() * 1000)::bigint", None),
        };
        let sql = format!(
            "UPDATE {s}.leases SET {set} WHERE application = $1 AND stream = $2 AND shard = $3"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(&self.application)
            .bind(stream)
            .bind(shard.as_str());
        if let Some(text) = text {
            query = query.bind(text);
        }
        let _ = query.execute(&self.pool).await; // refused values are fine
    }

    async fn corrupt_lease(&self, stream: &str, shard: &ShardId) {
        // A sub-sequence with a sign: text the column takes, but no checkpoint.
        self.update_lease(
            stream,
            shard,
            "checkpoint = 'AFTER:1/+1'",
            "UPDATE of a corrupt lease row",
        )
        .await;
    }

    async fn exhaust_token(&self, stream: &str, shard: &ShardId) {
        self.update_lease(
            stream,
            shard,
            &format!("token = {}", i64::MAX),
            "UPDATE of the token",
        )
        .await;
    }

    async fn spoil_client(&self, client: &str, rng: &mut Rng) {
        let s = format!("\"{}\"", self.schema);
        let id = if rng.chance(0.5) {
            client.to_owned()
        } else {
            hostile_text(rng)
        };
        let sql = format!(
            "INSERT INTO {s}.clients (application, client_id, counter) VALUES ($1, $2, $3) \
             ON CONFLICT (application, client_id) DO UPDATE SET counter = EXCLUDED.counter"
        );
        let _ = sqlx::query(AssertSqlSafe(sql))
            .bind(&self.application)
            .bind(id)
            .bind(i64::MAX)
            .execute(&self.pool)
            .await;
        // A judgement of a value the row never held, or of one it holds now.
        let sql = format!(
            "UPDATE {s}.clients SET judged_dead = \
             CASE WHEN random() < 0.5 THEN counter ELSE -1 END \
             WHERE application = $1 AND client_id = $2"
        );
        let _ = sqlx::query(AssertSqlSafe(sql))
            .bind(&self.application)
            .bind(client)
            .execute(&self.pool)
            .await;
    }

    async fn spoil_changes(&self, rng: &mut Rng) {
        let value = [-1, i64::MIN, i64::MAX][rng.below(3) as usize];
        self.set_changes(value).await;
    }

    async fn corrupt_changes(&self) {
        self.set_changes(-7).await;
    }
}

impl PgVandal {
    /// Writes `value` as the change counter (no `CHECK` keeps a negative one out).
    async fn set_changes(&self, value: i64) {
        let sql = format!(
            "INSERT INTO \"{}\".changes (application, counter) VALUES ($1, $2) \
             ON CONFLICT (application) DO UPDATE SET counter = EXCLUDED.counter",
            self.schema
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(&self.application)
            .bind(value)
            .execute(&self.pool)
            .await
            .expect("a write of the change counter");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_goes_on_while_a_vandal_spoils_rows() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("vandal");
    let store = common::store(&url, &schema, "vandal").await;
    let vandal = PgVandal::of(&store, &schema, "vandal");
    let report = conformance::fleet_under_vandal(store.clone(), "vandal", &vandal, 11).await;
    eprintln!("postgres under a vandal: {report:?}");
    assert!(
        report.most_corrupt_seen > 0,
        "the vandal's rows were reported: {report:?}"
    );
    common::drop_schema(store.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_change_counter_is_written_afresh() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("changes");
    let store = common::store(&url, &schema, "changes").await;
    let vandal = PgVandal::of(&store, &schema, "changes");
    conformance::corrupt_change_counter(&store, &vandal).await;
    common::drop_schema(store.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_repaired_and_a_healthy_one_never_overwritten() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("repair");
    let store = common::store(&url, &schema, "repair").await;
    let vandal = PgVandal::of(&store, &schema, "repair");
    conformance::repair_of_a_corrupt_row(&store, &vandal).await;
    common::drop_schema(store.pool(), &schema).await;
}

/// `replace_corrupt` whose reply is lost (a `FaultProxy` between the store and PostgreSQL) is
/// settled by re-reading: see `conformance::unknown_outcome`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_whose_reply_was_lost_is_settled_by_re_reading() {
    let Some(url) = common::url() else { return };
    let authority = kinsumer_test_env::services::authority(&url).expect("host:port in the URL");
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&authority.as_str())
        .expect("resolve the PostgreSQL address")
        .next()
        .expect("an address");
    let proxy = kinsumer_testkit::FaultProxy::start(upstream).expect("start the proxy");
    let schema = common::unique_schema("repairlost");
    let direct = common::store(&url, &schema, "repair-lost").await;
    let vandal = PgVandal::of(&direct, &schema, "repair-lost");
    let through_proxy = url.replacen(&authority, &proxy.addr().to_string(), 1);
    let config = kinsumer_postgres::PgStoreConfig {
        migrate_on_connect: false,
        ..kinsumer_postgres::PgStoreConfig::new(through_proxy, "repair-lost").with_schema(&schema)
    };
    let faulty = PgLeaseStore::connect(config)
        .await
        .expect("connect through the proxy");
    conformance::unknown_outcome::replace_corrupt_whose_reply_was_lost_is_ok(
        &faulty, &direct, &proxy, &vandal,
    )
    .await;
    common::drop_schema(direct.pool(), &schema).await;
}
