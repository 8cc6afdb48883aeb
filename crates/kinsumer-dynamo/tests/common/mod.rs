//! Shared by the DynamoDB integration tests: moto's client from the testkit, and a store on a
//! fresh table.

#![allow(dead_code)] // each test binary uses a part of this

pub use kinsumer_test_env::moto::*;

use kinsumer_dynamo::aws_sdk_dynamodb::Client;
use kinsumer_dynamo::{DynamoConfig, DynamoLeaseStore};

/// A store on a fresh table of its own (created by the store).
pub async fn fresh_store(client: &Client, tag: &str) -> DynamoLeaseStore {
    let config = DynamoConfig::new("tests")
        .with_table(unique_table(tag))
        .create_table_if_missing(true);
    DynamoLeaseStore::open(client.clone(), config)
        .await
        .expect("open a fresh table")
}
