//! The services the benchmarks use, reached the way a user would, with a short probe first so
//! an unreachable one gives a "not measured" row instead of a hang.

use std::sync::Arc;
use std::time::Duration;

use kinsumer::LeaseStore;
use kinsumer::dynamo::aws_sdk_dynamodb;
use kinsumer::dynamo::{DynamoConfig, DynamoLeaseStore};
use kinsumer::postgres::{PgLeaseStore, PgStoreConfig};
use kinsumer::redis::RedisLeaseStore;
use kinsumer::testkit::MemoryLeaseStore;

use super::BenchArgs;
use crate::Result;
use kinsumer::postgres::redact_url as redact;

/// The schema the PostgreSQL benchmarks write to (their rows stay, under unique applications).
const PG_SCHEMA: &str = "kinsumer_bench";

/// A lease store backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Redis,
    Postgres,
    Dynamo,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::Memory,
        Backend::Redis,
        Backend::Postgres,
        Backend::Dynamo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory store",
            Backend::Redis => "Redis",
            Backend::Postgres => "PostgreSQL",
            Backend::Dynamo => "DynamoDB (moto)",
        }
    }

    fn service(self, args: &BenchArgs) -> (&'static str, String) {
        match self {
            Backend::Memory => ("memory", "memory://".into()),
            Backend::Redis => ("Redis", redact(&args.redis)),
            Backend::Postgres => ("PostgreSQL", redact(&args.postgres)),
            Backend::Dynamo => ("moto (DynamoDB)", args.dynamo_endpoint.clone()),
        }
    }

    async fn probe(self, args: &BenchArgs) -> Result<()> {
        match self {
            Backend::Memory => {}
            Backend::Redis => {
                let store = RedisLeaseStore::connect(&args.redis, "bench-probe").await?;
                store.clients().await?;
            }
            Backend::Postgres => {
                let store = pg(&args.postgres, "bench-probe").await?;
                store.clients().await?;
            }
            Backend::Dynamo => {
                dynamo_client(&args.dynamo_endpoint)
                    .list_tables()
                    .limit(1)
                    .send()
                    .await
                    .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
            }
        }
        Ok(())
    }

    /// `None` when reachable, else the reason for the row.
    pub async fn unreachable(self, args: &BenchArgs) -> Option<String> {
        let result = match tokio::time::timeout(Duration::from_secs(8), self.probe(args)).await {
            Ok(r) => r,
            Err(_) => Err("no answer within 8 s".into()),
        };
        result.err().map(|e| {
            let (service, url) = self.service(args);
            format!("{service} not reachable at {url} ({e})")
        })
    }
}

async fn pg(url: &str, app: &str) -> Result<PgLeaseStore> {
    let config = PgStoreConfig {
        max_connections: 3,
        ..PgStoreConfig::new(url, app).with_schema(PG_SCHEMA)
    };
    Ok(PgLeaseStore::connect(config).await?)
}

/// One store of `backend` for application `app` (each call a new connection / client, as each
/// process of a fleet would have). `table` names the DynamoDB table (created if missing).
pub(crate) async fn open(
    backend: Backend,
    args: &BenchArgs,
    app: &str,
    table: &str,
    memory: &MemoryLeaseStore,
) -> Result<Arc<dyn LeaseStore>> {
    Ok(match backend {
        Backend::Memory => Arc::new(memory.clone()),
        Backend::Redis => Arc::new(RedisLeaseStore::connect(&args.redis, app).await?),
        Backend::Postgres => Arc::new(pg(&args.postgres, app).await?),
        Backend::Dynamo => Arc::new(
            DynamoLeaseStore::open(
                dynamo_client(&args.dynamo_endpoint),
                DynamoConfig::new(app)
                    .with_table(table)
                    .create_table_if_missing(true),
            )
            .await?,
        ),
    })
}

/// Deletes a DynamoDB table the benchmarks created (best effort).
pub(crate) async fn drop_table(args: &BenchArgs, table: &str) {
    kinsumer_test_env::moto::drop_table(&dynamo_client(&args.dynamo_endpoint), table).await;
}

/// A client for moto's DynamoDB (the tests', with dummy credentials, over plain HTTP: the
/// flag names an emulator).
pub(crate) fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    kinsumer_test_env::moto::client(endpoint)
}

/// A client for kinesis-local (the tests', with dummy credentials, over plain HTTP: the flag
/// names an emulator).
pub(crate) fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    kinsumer_test_env::kinesis_local::client(endpoint)
}
