//! A complete consumer with exactly-once effects: every batch's rows and the checkpoint after
//! its last record are committed in one PostgreSQL transaction.
//!
//! ```text
//! bash scripts/services/postgres.sh   # or point KINSUMER_POSTGRES_URL at your server
//! cargo run -p kinsumer-postgres --example exactly_once
//! ```
//!
//! The source is an in-memory stream so the example runs anywhere; with Kinesis, pass a
//! `kinsumer-kinesis` source instead — nothing else changes.

use std::time::Duration;

use kinsumer_core::consumer::HandlerError;
use kinsumer_core::store::StoreError;
use kinsumer_core::{Config, Consumer, ShardBatch};
use kinsumer_postgres::sqlx;
use kinsumer_postgres::{PgLeaseStore, PgStoreConfig, TxCheckpoint};
use kinsumer_testkit::MemoryStream;

/// Applies one batch: the rows and the checkpoint commit together, or not at all.
async fn apply(store: &PgLeaseStore, stream: &str, batch: ShardBatch) -> Result<(), HandlerError> {
    let Some(last) = batch.records.last() else {
        return Ok(());
    };
    let mut tx = store.begin().await?;
    for record in &batch.records {
        sqlx::query(
            "INSERT INTO example_orders (shard, sequence, body) VALUES ($1, $2::numeric, $3)",
        )
        .bind(batch.shard.as_str())
        .bind(record.position.sequence.as_str())
        .bind(String::from_utf8_lossy(&record.data).into_owned())
        .execute(&mut *tx)
        .await?;
    }
    // Fenced by the tenure that delivered the batch: a client that lost the lease commits
    // nothing. Returning Ok acks the batch to the engine.
    match store
        .commit_with_checkpoint(tx, stream, &batch.tenure, &last.position)
        .await
    {
        // Committed now, or by an earlier attempt whose commit reply was lost.
        Ok(TxCheckpoint::Advanced | TxCheckpoint::AlreadyCommitted) => Ok(()),
        // Rolled back: the next owner of the shard applies these records.
        Err(StoreError::LeaseLost { .. }) => Ok(()),
        // Rolled back: the engine retries the batch.
        Err(e) => Err(e.into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KINSUMER_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned());
    // A fresh application per run: the in-memory stream starts from scratch every time.
    let application = format!("example-billing-{}", std::process::id());
    let store = PgLeaseStore::connect(PgStoreConfig::new(&url, &application)).await?;
    sqlx::query("DROP TABLE IF EXISTS example_orders")
        .execute(store.pool())
        .await?;
    sqlx::query(
        "CREATE TABLE example_orders \
         (shard text NOT NULL, sequence numeric NOT NULL, body text NOT NULL)",
    )
    .execute(store.pool())
    .await?;

    let stream = MemoryStream::new("orders", 4);
    for i in 0..100 {
        stream.put(&format!("customer-{i}"), format!("order {i}"))?;
    }
    let name = stream.name().to_owned();

    let mut config = Config::new(application);
    config.heartbeat_interval = Duration::from_millis(500);
    let consumer = Consumer::new(config, stream, store.clone())?;
    let shutdown = consumer.shutdown_handle();
    let handler = {
        let store = store.clone();
        move |batch: ShardBatch| {
            let (store, name) = (store.clone(), name.clone());
            async move { apply(&store, &name, batch).await }
        }
    };
    let running = tokio::spawn(consumer.run(handler));
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.shutdown();
    running.await??;

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM example_orders")
        .fetch_one(store.pool())
        .await?;
    println!("example_orders holds {rows} rows for 100 records: each applied exactly once");
    Ok(())
}
