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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::services::require_service;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

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
    let http = aws_smithy_http_client::Builder::new().build_http();
    let builder = aws_sdk_dynamodb::Config::builder()
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

/// Deletes a table (best effort).
pub async fn drop_table(client: &Client, table: &str) {
    let _ = client.delete_table().table_name(table).send().await;
}
