//! The `LeaseStore` contract and the store's own rules, against a real PostgreSQL.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, LeaseStore, StoreError, Tenure};
use kinsumer_postgres::sqlx::{self, AssertSqlSafe};
use kinsumer_postgres::{PgLeaseStore, TxCheckpoint};
use kinsumer_test_env::rows::client_counters;
use kinsumer_testkit::conformance;

fn pos(seq: &str, sub: u64) -> Position {
    let seq: SequenceNumber = seq.parse().expect("test sequence number");
    Position::new(seq, sub)
}

async fn owned(store: &PgLeaseStore, stream: &str, shard: &ShardId, owner: &str) -> Tenure {
    store
        .create_if_absent(stream, shard, &[])
        .await
        .expect("create");
    let lease = store
        .take(stream, shard, &ClientId::from(owner), 0)
        .await
        .expect("take");
    lease.tenure().expect("owned")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_lease_store() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("conf");
    let base = common::store(&url, &schema, "base").await;
    let next = AtomicU32::new(0);
    conformance::lease_store(|| {
        let app = format!("app-{}", next.fetch_add(1, Ordering::Relaxed));
        let store = PgLeaseStore::from_pool(base.pool().clone(), app, &schema).expect("store");
        async move { store }
    })
    .await;
    common::drop_schema(base.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_is_safe() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("mig");
    let config = kinsumer_postgres::PgStoreConfig {
        migrate_on_connect: false,
        ..kinsumer_postgres::PgStoreConfig::new(&url, "app").with_schema(&schema)
    };
    let store = PgLeaseStore::connect(config).await.expect("connect");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        // Separate pools, as separate processes would have.
        let url = url.clone();
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move {
            let config = kinsumer_postgres::PgStoreConfig {
                migrate_on_connect: false,
                max_connections: 1,
                ..kinsumer_postgres::PgStoreConfig::new(&url, "app").with_schema(&schema)
            };
            let store = PgLeaseStore::connect(config).await?;
            store.migrate().await?;
            store.migrate().await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("migrate");
    }
    let version: i32 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".schema_version"
    )))
    .fetch_one(store.pool())
    .await
    .expect("version");
    assert_eq!(version, kinsumer_postgres::SCHEMA_VERSION);
    // The table takes the whole range of heartbeat values.
    let c = ClientId::from("c");
    assert_eq!(store.heartbeat(&c, i64::MAX as u64).await, Ok(()));
    let clients = store.clients().await.expect("clients").rows;
    assert_eq!(
        clients
            .iter()
            .map(|r| (&r.id, r.counter))
            .collect::<Vec<_>>(),
        [(&c, i64::MAX as u64)]
    );
    common::drop_schema(store.pool(), &schema).await;
}

/// A schema left at version 1 by an earlier release (no `successor` column), with a lease in
/// it, is upgraded in place: the row reads on (naming no successor), and a release can name one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_schema_is_upgraded_in_place() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("v1");
    let s = format!("\"{schema}\"");
    let config = kinsumer_postgres::PgStoreConfig {
        migrate_on_connect: false,
        ..kinsumer_postgres::PgStoreConfig::new(&url, "app").with_schema(&schema)
    };
    let store = PgLeaseStore::connect(config).await.expect("connect");
    // Version 1 as it was released (the leases table without `successor`).
    for stmt in [
        format!("CREATE SCHEMA {s}"),
        format!(
            "CREATE TABLE {s}.schema_version (singleton boolean PRIMARY KEY DEFAULT true \
             CHECK (singleton), version integer NOT NULL)"
        ),
        format!("INSERT INTO {s}.schema_version VALUES (true, 1)"),
        format!(
            "CREATE TABLE {s}.clients (application text NOT NULL, client_id text NOT NULL, \
             counter bigint NOT NULL CHECK (counter > 0), updated_at timestamptz NOT NULL \
             DEFAULT now(), PRIMARY KEY (application, client_id))"
        ),
        format!(
            "CREATE TABLE {s}.leases (application text NOT NULL, stream text NOT NULL, \
             shard text NOT NULL, parents text[] NOT NULL DEFAULT '{{}}', owner text, \
             token bigint NOT NULL DEFAULT 0 CHECK (token >= 0), checkpoint text, \
             cp_kind smallint CHECK (cp_kind BETWEEN 0 AND 4), cp_seq numeric(64,0), \
             cp_sub numeric(20,0), monotonic boolean NOT NULL DEFAULT false, \
             finished boolean NOT NULL DEFAULT false, updated_at timestamptz NOT NULL \
             DEFAULT now(), PRIMARY KEY (application, stream, shard))"
        ),
        format!(
            "INSERT INTO {s}.leases (application, stream, shard, owner, token, checkpoint, \
             cp_kind, cp_seq, cp_sub) VALUES ('app', 's', 'shard-0', 'old', 3, 'AFTER:42/0', \
             3, 42, 0)"
        ),
    ] {
        sqlx::query(AssertSqlSafe(stmt))
            .execute(store.pool())
            .await
            .expect("version 1 DDL");
    }
    store.migrate().await.expect("migrate 1 -> current");
    let version: i32 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {s}.schema_version"
    )))
    .fetch_one(store.pool())
    .await
    .expect("version");
    assert_eq!(version, kinsumer_postgres::SCHEMA_VERSION);
    let shard = ShardId::from("shard-0");
    let row = store.lease("s", &shard).await.expect("read").expect("row");
    assert_eq!(
        (row.owner.clone(), row.token, row.successor.clone()),
        (Some(ClientId::from("old")), 3, None)
    );
    assert_eq!(row.checkpoint, Some(Checkpoint::After(pos("42", 0))));
    let tenure = row.tenure().expect("owned");
    let heir = ClientId::from("new");
    store
        .release("s", &tenure, None, Some(&heir))
        .await
        .expect("release naming a successor");
    let row = store.lease("s", &shard).await.expect("read").expect("row");
    assert_eq!((row.owner, row.successor), (None, Some(heir)));
    common::drop_schema(store.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_values_are_written_as_they_are_and_old_counters_still_read() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("beats");
    let s = format!("\"{schema}\"");
    let store = common::store(&url, &schema, "app").await;
    // A row as the previous version left it: a counter bumped by one per heartbeat.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {s}.clients (application, client_id, counter) VALUES ('app', 'old', 17)"
    )))
    .execute(store.pool())
    .await
    .expect("insert");
    assert_eq!(client_counters(&store).await, [("old".to_owned(), 17)]);
    // Values are written, not added: a lower one replaces a higher one; a repeat is fine.
    for (id, beat) in [("old", 5), ("max", i64::MAX as u64), ("mid", (7 << 32) | 1)] {
        store
            .heartbeat(&ClientId::from(id), beat)
            .await
            .expect("heartbeat");
    }
    store
        .heartbeat(&ClientId::from("mid"), (7 << 32) | 1)
        .await
        .expect("a repeated heartbeat");
    assert_eq!(
        client_counters(&store).await,
        [
            ("max".to_owned(), i64::MAX as u64),
            ("mid".to_owned(), (7 << 32) | 1),
            ("old".to_owned(), 5),
        ]
    );
    // Outside the contract's range: a typed error naming the value, nothing written.
    for beat in [0, u64::MAX] {
        match store.heartbeat(&ClientId::from("bad"), beat).await {
            Err(StoreError::Fatal(msg)) => assert!(msg.contains(&beat.to_string()), "{msg}"),
            other => panic!("expected Fatal for {beat}, got {other:?}"),
        }
    }
    assert_eq!(store.clients().await.expect("clients").rows.len(), 3);
    common::drop_schema(store.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_in_is_fenced_strictly_forward_and_makes_the_lease_monotonic() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("txcp");
    let store = common::store(&url, &schema, "app").await;
    let (stream, shard) = ("s", ShardId::from("shard-0"));
    let tenure = owned(&store, stream, &shard, "a").await;

    // Sequence numbers compare as integers, not text: 9 < 10.
    store
        .checkpoint(stream, &tenure, &Checkpoint::After(pos("9", 0)))
        .await
        .expect("plain checkpoint");
    let mut tx = store.begin().await.expect("begin");
    let got = store
        .checkpoint_in(&mut tx, stream, &tenure, &pos("10", 0))
        .await;
    assert_eq!(got, Ok(TxCheckpoint::Advanced));
    tx.commit().await.expect("commit");

    // The same position again (a retried batch whose commit landed): already committed.
    let tx = store.begin().await.expect("begin");
    let got = store
        .commit_with_checkpoint(tx, stream, &tenure, &pos("10", 0))
        .await;
    assert_eq!(got, Ok(TxCheckpoint::AlreadyCommitted));
    let tx = store.begin().await.expect("begin");
    let got = store
        .commit_with_checkpoint(tx, stream, &tenure, &pos("9", u64::MAX))
        .await;
    assert_eq!(got, Ok(TxCheckpoint::AlreadyCommitted));

    // Now monotonic: the engine's lagging watermark is a successful no-op ...
    store
        .checkpoint(stream, &tenure, &Checkpoint::After(pos("9", 5)))
        .await
        .expect("backwards checkpoint is a no-op success");
    store
        .checkpoint(stream, &tenure, &Checkpoint::TrimHorizon)
        .await
        .expect("backwards checkpoint is a no-op success");
    let lease = store
        .lease(stream, &shard)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(lease.checkpoint, Some(Checkpoint::After(pos("10", 0))));
    // ... and a forward one is written.
    store
        .checkpoint(stream, &tenure, &Checkpoint::After(pos("10", 1)))
        .await
        .expect("forward checkpoint");
    let lease = store
        .lease(stream, &shard)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(lease.checkpoint, Some(Checkpoint::After(pos("10", 1))));
    // release keeps the higher checkpoint too.
    store
        .release(stream, &tenure, Some(&Checkpoint::After(pos("3", 0))), None)
        .await
        .expect("release");
    let lease = store
        .lease(stream, &shard)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        (lease.owner, lease.checkpoint),
        (None, Some(Checkpoint::After(pos("10", 1))))
    );
    // An operator's reset moves it anywhere and clears the mark.
    store
        .reset_checkpoint(stream, &shard, tenure.token, &Checkpoint::TrimHorizon)
        .await
        .expect("reset");
    let lease = store
        .lease(stream, &shard)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(lease.checkpoint, Some(Checkpoint::TrimHorizon));

    // A stale tenure and a missing row.
    let mut tx = store.begin().await.expect("begin");
    let got = store
        .checkpoint_in(&mut tx, stream, &tenure, &pos("11", 0))
        .await;
    assert!(matches!(got, Err(StoreError::LeaseLost { .. })), "{got:?}");
    drop(tx);
    let missing = Tenure {
        shard: ShardId::from("missing"),
        ..tenure.clone()
    };
    let tx = store.begin().await.expect("begin");
    let got = store
        .commit_with_checkpoint(tx, stream, &missing, &pos("1", 0))
        .await;
    assert!(matches!(got, Err(StoreError::NotFound { .. })), "{got:?}");
    common::drop_schema(store.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_commits_nothing_after_the_lease_moved() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("zombie");
    let store = common::store(&url, &schema, "app").await;
    let table = format!("\"{schema}\".effects");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .expect("create table");
    let (stream, shard) = ("s", ShardId::from("shard-0"));
    let old = owned(&store, stream, &shard, "old").await;

    // The old owner starts its unit of work ...
    let mut tx = store.begin().await.expect("begin");
    for id in 0..5_i64 {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (id) VALUES ($1)"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    // ... is presumed dead, and another client takes the lease meanwhile.
    let new = store
        .take(stream, &shard, &ClientId::from("new"), old.token)
        .await
        .expect("take by the new owner")
        .tenure()
        .expect("owned");
    assert_eq!(new.token, old.token + 1);
    // The zombie's commit fails and rolls everything back.
    let got = store
        .commit_with_checkpoint(tx, stream, &old, &pos("5", 0))
        .await;
    assert!(matches!(got, Err(StoreError::LeaseLost { .. })), "{got:?}");
    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(rows, 0, "a zombie's effects must not be committed");
    let lease = store
        .lease(stream, &shard)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(lease.checkpoint, None);
    assert_eq!(lease.owner, Some(ClientId::from("new")));

    // And the other order: the checkpoint locks the lease row, so a take waits for the commit
    // and then sees the committed checkpoint.
    let mut tx = store.begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (id) VALUES (7)"
    )))
    .execute(&mut *tx)
    .await
    .expect("insert");
    let got = store
        .checkpoint_in(&mut tx, stream, &new, &pos("7", 0))
        .await;
    assert_eq!(got, Ok(TxCheckpoint::Advanced));
    let racer = {
        let store = store.clone();
        let shard = shard.clone();
        tokio::spawn(async move {
            store
                .take(stream, &shard, &ClientId::from("third"), new.token)
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !racer.is_finished(),
        "the take must wait for the transaction"
    );
    tx.commit().await.expect("commit");
    let taken = racer.await.expect("join").expect("take after commit");
    assert_eq!(taken.checkpoint, Some(Checkpoint::After(pos("7", 0))));
    common::drop_schema(store.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_reported_by_itself_and_the_others_read_on() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("corrupt");
    let s = format!("\"{schema}\"");
    let store = common::store(&url, &schema, "app").await;
    // One bad value per row, each of a shape an operator's UPDATE could leave behind.
    let bad = [
        ("checkpoint = 'AFTER:banana/1'", "checkpoint"),
        ("checkpoint = 'AFTER:5/+1'", "checkpoint"),
        ("checkpoint = 'AT_TIMESTAMP:-5'", "checkpoint"),
        ("checkpoint = 'AFTER:5/18446744073709551616'", "checkpoint"),
        ("checkpoint = E'\\x1b[31mred'", "checkpoint"),
        ("owner = ''", "owner"),
        ("successor = ''", "successor"),
        ("parents = ARRAY[NULL]::text[]", "parents"),
    ];
    let good = ShardId::from("good");
    store
        .create_if_absent("s", &good, &[])
        .await
        .expect("create");
    for (n, (set, field)) in bad.iter().enumerate() {
        let shard = ShardId::from(format!("shard-{n}"));
        store
            .create_if_absent("s", &shard, &[])
            .await
            .expect("create");
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {s}.leases SET {set} WHERE shard = $1"
        )))
        .bind(shard.as_str())
        .execute(store.pool())
        .await
        .expect("corrupt it");
        let key = format!("app/s/{shard}");
        match store.lease("s", &shard).await {
            Err(StoreError::Corrupt { key: k, reason }) => {
                assert_eq!(k, key);
                assert!(reason.contains(field), "{set}: {reason}");
            }
            other => panic!("{set}: expected Corrupt, got {other:?}"),
        }
        let read = store
            .leases("s")
            .await
            .expect("the read of every lease succeeds");
        assert_eq!(
            read.rows.iter().map(|l| &l.shard).collect::<Vec<_>>(),
            [&good],
            "{set}"
        );
        assert_eq!(read.corrupt.len(), 1, "{set}: {:?}", read.corrupt);
        assert_eq!(read.corrupt[0].key, key, "{set}");
        assert_eq!(read.corrupt[0].id.as_deref(), Some(shard.as_str()));
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {s}.leases WHERE shard = $1"
        )))
        .bind(shard.as_str())
        .execute(store.pool())
        .await
        .expect("delete");
    }
    // A token at the largest bigint decodes, but cannot be taken: a typed error naming the
    // row, not a numeric overflow from the server.
    let full = ShardId::from("full");
    store
        .create_if_absent("s", &full, &[])
        .await
        .expect("create");
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {s}.leases SET token = 9223372036854775807 WHERE shard = 'full'"
    )))
    .execute(store.pool())
    .await
    .expect("max token");
    match store
        .take("s", &full, &ClientId::from("a"), i64::MAX as u64)
        .await
    {
        Err(StoreError::Corrupt { key, reason }) => {
            assert_eq!(key, "app/s/full");
            assert!(reason.contains("cannot grow"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    common::drop_schema(store.pool(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_schema_is_fatal_and_says_what_to_do() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("absent");
    let config = kinsumer_postgres::PgStoreConfig {
        migrate_on_connect: false,
        ..kinsumer_postgres::PgStoreConfig::new(&url, "app").with_schema(&schema)
    };
    let store = PgLeaseStore::connect(config).await.expect("connect");
    match store.clients().await {
        Err(StoreError::Fatal(msg)) => assert!(msg.contains("migrate"), "{msg}"),
        other => panic!("expected Fatal, got {other:?}"),
    }
    let shown = format!("{store:?}");
    assert!(!shown.contains("postgres:postgres@"), "{shown}");
}
