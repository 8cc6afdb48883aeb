//! Shared by the DynamoDB integration tests: a client for moto's server and unique table names.

#![allow(dead_code)] // each test binary uses a part of this

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kinsumer_dynamo::aws_sdk_dynamodb::Client;
use kinsumer_dynamo::aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use kinsumer_dynamo::{DynamoConfig, DynamoLeaseStore};
use kinsumer_testkit::services::require_service;

/// moto's DynamoDB endpoint, or `None` (skip, after a loud notice) outside CI.
pub fn endpoint() -> Option<String> {
    require_service(
        "moto (DynamoDB)",
        "KINSUMER_DYNAMO_ENDPOINT",
        "http://127.0.0.1:5000",
    )
}

/// A client for the emulator over plain HTTP, with dummy credentials.
pub fn client(endpoint: &str) -> Client {
    client_with(endpoint, |b| b)
}

/// [`client`] with extra configuration (interceptors, retry policy).
pub fn client_with(
    endpoint: &str,
    configure: impl FnOnce(
        kinsumer_dynamo::aws_sdk_dynamodb::config::Builder,
    ) -> kinsumer_dynamo::aws_sdk_dynamodb::config::Builder,
) -> Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    let builder = kinsumer_dynamo::aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "kinsumer-tests",
        ))
        .http_client(http);
    Client::from_conf(configure(builder).build())
}

/// A table name no other test (or earlier run against the same moto) uses.
pub fn unique_table(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("kinsumer-test-{tag}-{}-{nanos:x}-{n}", std::process::id())
}

/// A store on a fresh table of its own (created by the store).
pub async fn fresh_store(client: &Client, tag: &str) -> DynamoLeaseStore {
    let config = DynamoConfig::new("tests")
        .with_table(unique_table(tag))
        .create_table_if_missing(true);
    DynamoLeaseStore::open(client.clone(), config)
        .await
        .expect("open a fresh table")
}

/// Deletes a table (best effort).
pub async fn drop_table(client: &Client, table: &str) {
    let _ = client.delete_table().table_name(table).send().await;
}
