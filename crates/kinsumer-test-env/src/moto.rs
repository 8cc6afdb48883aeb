//! Test support for moto's DynamoDB server, which `scripts/services/dynamo.sh` starts (feature
//! `moto`): a plain-HTTP client with dummy credentials and unique table names.
//!
//! ```no_run
//! # async fn example() {
//! let Some(endpoint) = kinsumer_test_env::moto::endpoint() else {
//!     return; // skipped loudly outside CI; a failure under CI=true
//! };
//! let client = kinsumer_test_env::moto::client(&endpoint);
//! let table = kinsumer_test_env::moto::unique_table("leases");
//! # let _ = (client, table);
//! # }
//! ```

use crate::services::require_service;
use aws_sdk_dynamodb::Client;

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
    configure: impl FnOnce(aws_sdk_dynamodb::config::Builder) -> aws_sdk_dynamodb::config::Builder,
) -> Client {
    let builder = aws_sdk_dynamodb::config::Builder::from(&crate::emulator::sdk_config(endpoint));
    Client::from_conf(configure(builder).build())
}

/// A table name no other test (or earlier run against the same moto) uses.
pub fn unique_table(tag: &str) -> String {
    crate::emulator::unique_name(&format!("kinsumer-test-{tag}"))
}

/// Deletes a table (best effort).
pub async fn drop_table(client: &Client, table: &str) {
    let _ = client.delete_table().table_name(table).send().await;
}
