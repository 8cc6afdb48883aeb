//! Test support for kinesis-local, the Kinesis emulator `scripts/services/kinesis.sh` starts
//! (feature `kinesis-local`): a plain-HTTP client with dummy credentials, and [`TestStream`], a
//! fresh stream per test that is deleted when dropped.
//!
//! Shared by every crate whose tests read from Kinesis (the source's own tests, the stores'
//! end-to-end tests, the CLI's), so that no test suite carries its own copy.
//!
//! ```no_run
//! use kinsumer_test_env::kinesis_local;
//!
//! # async fn example() {
//! let Some(endpoint) = kinsumer_test_env::kinesis_local::endpoint() else {
//!     return; // skipped loudly outside CI; a failure under CI=true
//! };
//! let client = kinesis_local::client(&endpoint);
//! let stream = kinesis_local::TestStream::create(&client, "orders", 2).await;
//! stream.put_all(&[("customer-1".to_string(), b"order 1".to_vec())]).await;
//! # }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use kinsumer_testkit::conformance::StreamAdmin;

/// The emulator's endpoint, or `None` (after a loud notice) when it is not running outside CI.
pub fn endpoint() -> Option<String> {
    crate::services::require_service(
        "kinesis-local",
        "KINSUMER_KINESIS_ENDPOINT",
        "http://127.0.0.1:4567",
    )
}

/// A client for the emulator over plain HTTP, with dummy credentials.
pub fn client(endpoint: &str) -> Client {
    client_with(endpoint, |b| b)
}

/// [`client`] with extra configuration (interceptors for fault injection).
pub fn client_with(
    endpoint: &str,
    configure: impl FnOnce(aws_sdk_kinesis::config::Builder) -> aws_sdk_kinesis::config::Builder,
) -> Client {
    let builder = aws_sdk_kinesis::config::Builder::from(&crate::emulator::sdk_config(endpoint));
    Client::from_conf(configure(builder).build())
}

pub use crate::emulator::unique_name;

/// A fresh stream on the emulator, deleted when dropped.
pub struct TestStream {
    /// The client the stream was created with.
    pub client: Client,
    /// The stream's (unique) name.
    pub name: String,
    /// The stream's ARN.
    pub arn: String,
}

impl TestStream {
    /// Creates a stream of `shards` shards and waits until it is ACTIVE.
    pub async fn create(client: &Client, prefix: &str, shards: i32) -> Self {
        let name = unique_name(prefix);
        client
            .create_stream()
            .stream_name(&name)
            .shard_count(shards)
            .send()
            .await
            .expect("CreateStream");
        let mut stream = Self {
            client: client.clone(),
            name,
            arn: String::new(),
        };
        stream.arn = stream.wait_active().await;
        stream
    }

    /// Polls DescribeStreamSummary every 50 ms until ACTIVE (no SDK waiter: they wait ≥ 20 s).
    pub async fn wait_active(&self) -> String {
        for _ in 0..400 {
            let out = self
                .client
                .describe_stream_summary()
                .stream_name(&self.name)
                .send()
                .await
                .expect("DescribeStreamSummary");
            if let Some(s) = out.stream_description_summary()
                && *s.stream_status() == StreamStatus::Active
            {
                return s.stream_arn().to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("stream {} did not become ACTIVE in 20 s", self.name);
    }

    /// Writes records with PutRecords, 500 at a time, retrying failed entries.
    pub async fn put_all(&self, records: &[(String, Vec<u8>)]) {
        for chunk in records.chunks(500) {
            let mut pending: Vec<&(String, Vec<u8>)> = chunk.iter().collect();
            for _ in 0..50 {
                if pending.is_empty() {
                    break;
                }
                let entries: Vec<PutRecordsRequestEntry> = pending
                    .iter()
                    .map(|(key, data)| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(key)
                            .data(Blob::new(data.clone()))
                            .build()
                            .expect("entry")
                    })
                    .collect();
                let out = self
                    .client
                    .put_records()
                    .stream_name(&self.name)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .expect("PutRecords");
                // Keep order per key: retry only from the first failure on.
                let first_failed = out.records().iter().position(|r| r.error_code().is_some());
                pending = match first_failed {
                    Some(i) => pending.split_off(i),
                    None => Vec::new(),
                };
                if !pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            assert!(pending.is_empty(), "PutRecords kept failing");
        }
    }

    /// Writes one record `data` to the shard holding `hash_key` (PutRecord with an explicit
    /// hash key); returns its sequence number.
    pub async fn put_at(&self, hash_key: u128, data: &[u8]) -> String {
        self.client
            .put_record()
            .stream_name(&self.name)
            .partition_key("k")
            .explicit_hash_key(hash_key.to_string())
            .data(Blob::new(data.to_vec()))
            .send()
            .await
            .expect("PutRecord")
            .sequence_number()
            .to_owned()
    }

    /// Open shards with their hash ranges, sorted by range start.
    pub async fn open_shards(&self) -> Vec<(String, u128, u128)> {
        let out = self
            .client
            .list_shards()
            .stream_name(&self.name)
            .send()
            .await
            .expect("ListShards");
        let mut open: Vec<_> = out
            .shards()
            .iter()
            .filter(|s| {
                s.sequence_number_range()
                    .is_none_or(|r| r.ending_sequence_number().is_none())
            })
            .filter_map(|s| {
                let r = s.hash_key_range()?;
                Some((
                    s.shard_id().to_string(),
                    r.starting_hash_key().parse().ok()?,
                    r.ending_hash_key().parse().ok()?,
                ))
            })
            .collect();
        open.sort_by_key(|s| s.1);
        open
    }

    /// Splits `shard` at hash key `at` and waits until the stream is ACTIVE again.
    pub async fn split(&self, shard: &str, at: u128) -> Result<(), String> {
        self.client
            .split_shard()
            .stream_name(&self.name)
            .shard_to_split(shard)
            .new_starting_hash_key(at.to_string())
            .send()
            .await
            .map_err(|e| aws_sdk_kinesis::error::DisplayErrorContext(e).to_string())?;
        self.wait_active().await;
        Ok(())
    }

    /// Merges adjacent shards `a` and `b` and waits until the stream is ACTIVE again.
    pub async fn merge(&self, a: &str, b: &str) -> Result<(), String> {
        self.client
            .merge_shards()
            .stream_name(&self.name)
            .shard_to_merge(a)
            .adjacent_shard_to_merge(b)
            .send()
            .await
            .map_err(|e| aws_sdk_kinesis::error::DisplayErrorContext(e).to_string())?;
        self.wait_active().await;
        Ok(())
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // The emulator allows few shards per instance: give them back (best effort).
        let client = self.client.clone();
        let name = self.name.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client
                    .delete_stream()
                    .stream_name(name)
                    .enforce_consumer_deletion(true)
                    .send()
                    .await;
            });
        }
    }
}

#[async_trait]
impl StreamAdmin for TestStream {
    async fn put(&self, partition_key: &str, data: &[u8]) -> Result<(), String> {
        self.client
            .put_record()
            .stream_name(&self.name)
            .partition_key(partition_key)
            .data(Blob::new(data.to_vec()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_kinesis::error::DisplayErrorContext(e).to_string())
    }

    async fn split(&self, shard: &kinsumer_core::ShardId, at: u128) -> Result<(), String> {
        TestStream::split(self, shard.as_str(), at).await
    }

    async fn merge(
        &self,
        a: &kinsumer_core::ShardId,
        b: &kinsumer_core::ShardId,
    ) -> Result<(), String> {
        TestStream::merge(self, a.as_str(), b.as_str()).await
    }
}
