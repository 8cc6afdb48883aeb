//! Exactly-once effects through a real consumer: rows and checkpoint in one transaction; one
//! consumer crashes mid-batch (in every phase of the unit of work), another takes over, and
//! every record's row exists exactly once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kinsumer_core::consumer::HandlerError;
use kinsumer_core::store::StoreError;
use kinsumer_core::{Config, Consumer, ShardBatch};
use kinsumer_postgres::sqlx::{self, AssertSqlSafe};
use kinsumer_postgres::{PgLeaseStore, TxCheckpoint};
use kinsumer_testkit::MemoryStream;
use tokio::time::{Instant, sleep};

const RECORDS: i64 = 400;

fn config(client: &str) -> Config {
    let mut c = common::fast_config("exactly-once", client);
    c.poll_interval = Duration::from_millis(20);
    c.max_records_per_read = 10;
    c
}

/// Where a crashing handler stops: the three phases of a unit of work.
#[derive(Clone, Copy, Debug)]
enum CrashBefore {
    /// Rows inserted, no checkpoint yet.
    Checkpoint,
    /// Rows inserted and checkpoint written (the lease row is locked), not committed.
    Commit,
    /// Committed, not yet acked to the engine.
    Ack,
}

/// Inserts the batch's rows and commits them with the checkpoint; with `crash`, stops forever
/// at that point instead of finishing.
async fn handle(
    store: &PgLeaseStore,
    table: &str,
    stream: &str,
    client: &str,
    batch: ShardBatch,
    crash: Option<CrashBefore>,
) -> Result<(), HandlerError> {
    let Some(last) = batch.records.last() else {
        return Ok(());
    };
    let mut tx = store.begin().await?;
    for record in &batch.records {
        let id: i64 = std::str::from_utf8(&record.data)?.parse()?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (id, shard, client) VALUES ($1, $2, $3)"
        )))
        .bind(id)
        .bind(batch.shard.as_str())
        .bind(client)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(CrashBefore::Checkpoint) = crash {
        std::future::pending::<()>().await;
    }
    if let Some(CrashBefore::Commit) = crash {
        let got = store
            .checkpoint_in(&mut tx, stream, &batch.tenure, &last.position)
            .await;
        assert_eq!(got, Ok(TxCheckpoint::Advanced));
        std::future::pending::<()>().await;
    }
    match store
        .commit_with_checkpoint(tx, stream, &batch.tenure, &last.position)
        .await
    {
        Ok(TxCheckpoint::Advanced | TxCheckpoint::AlreadyCommitted) => {}
        Err(StoreError::LeaseLost { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if let Some(CrashBefore::Ack) = crash {
        std::future::pending::<()>().await;
    }
    Ok(())
}

async fn counts(store: &PgLeaseStore, table: &str) -> BTreeMap<i64, i64> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, count(*) FROM {table} GROUP BY id"
    )))
    .fetch_all(store.pool())
    .await
    .expect("count rows");
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_is_applied_exactly_once_across_a_crash_and_takeover() {
    let Some(url) = common::url() else { return };
    let schema = common::unique_schema("eo");
    // Two processes: two stores, two pools.
    let store_a = common::store(&url, &schema, "exactly-once").await;
    let store_b = common::store(&url, &schema, "exactly-once").await;
    let table = format!("\"{schema}\".effects");
    // No unique constraint on purpose: a duplicate would show as a second row.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id bigint NOT NULL, shard text NOT NULL, client text NOT NULL)"
    )))
    .execute(store_a.pool())
    .await
    .expect("create table");

    let stream = MemoryStream::new("orders", 4);
    for id in 0..RECORDS {
        stream
            .put(&format!("key-{id}"), id.to_string())
            .expect("put");
    }
    let name = stream.name().to_owned();

    // Consumer A processes a few batches normally, then "crashes" in the middle of its next
    // units of work: one in each phase.
    let batches = Arc::new(AtomicU32::new(0));
    let stuck = Arc::new(AtomicU32::new(0));
    let handler_a = {
        let (store, table, name) = (store_a.clone(), table.clone(), name.clone());
        let (batches, stuck) = (batches.clone(), stuck.clone());
        move |batch: ShardBatch| {
            let (store, table, name) = (store.clone(), table.clone(), name.clone());
            let (batches, stuck) = (batches.clone(), stuck.clone());
            async move {
                let n = batches.fetch_add(1, Ordering::SeqCst);
                let crash = match n {
                    0..8 => None,
                    _ => {
                        stuck.fetch_add(1, Ordering::SeqCst);
                        Some(match n % 3 {
                            0 => CrashBefore::Checkpoint,
                            1 => CrashBefore::Commit,
                            _ => CrashBefore::Ack,
                        })
                    }
                };
                handle(&store, &table, &name, "a", batch, crash).await
            }
        }
    };
    let consumer_a = Consumer::new(config("a"), stream.clone(), store_a.clone()).expect("a");
    let task_a = tokio::spawn(consumer_a.run(handler_a));
    let deadline = Instant::now() + Duration::from_secs(20);
    while stuck.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "consumer a never got stuck");
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_millis(300)).await; // let the engine commit its (lagging) watermarks
    task_a.abort(); // the crash: no drain, no release, transactions dropped mid-way
    let _ = task_a.await;
    let before = counts(&store_a, &table).await;
    println!(
        "a crashed after {} batches with {} rows committed",
        batches.load(Ordering::SeqCst),
        before.values().sum::<i64>()
    );

    let handler_b = {
        let (store, table, name) = (store_b.clone(), table.clone(), name.clone());
        move |batch: ShardBatch| {
            let (store, table, name) = (store.clone(), table.clone(), name.clone());
            async move { handle(&store, &table, &name, "b", batch, None).await }
        }
    };
    let consumer_b = Consumer::new(config("b"), stream.clone(), store_b.clone()).expect("b");
    let shutdown_b = consumer_b.shutdown_handle();
    let task_b = tokio::spawn(consumer_b.run(handler_b));
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let seen = counts(&store_b, &table).await;
        if seen.len() as i64 == RECORDS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b applied only {} of {RECORDS} records",
            seen.len()
        );
        sleep(Duration::from_millis(100)).await;
    }
    sleep(Duration::from_millis(500)).await; // a duplicate, if any, has time to land
    shutdown_b.shutdown();
    task_b.await.expect("join b").expect("b stops cleanly");

    let after = counts(&store_b, &table).await;
    let duplicated: Vec<(&i64, &i64)> = after.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        duplicated.is_empty(),
        "ids applied more than once: {duplicated:?}"
    );
    assert_eq!(after.len() as i64, RECORDS, "every record applied");
    assert!((0..RECORDS).all(|id| after.get(&id) == Some(&1)));
    common::drop_schema(store_b.pool(), &schema).await;
}
