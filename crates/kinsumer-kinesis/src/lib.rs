//! # kinsumer-kinesis
//!
//! Amazon Kinesis Data Streams as a kinsumer [`ShardSource`](kinsumer_core::ShardSource):
//! [`KinesisSource`] lists shards with ListShards (paging hidden, by stream name or ARN) and
//! reads them with GetShardIterator + GetRecords, splitting KPL aggregates into user records
//! ([`kpl`]).
//!
//! How a reader behaves:
//! - **Start and resume.** `TRIM_HORIZON`, `LATEST` and `AT_TIMESTAMP` map to the iterator types
//!   of the same name. A checkpoint `After(seq/sub)` opens `AT_SEQUENCE_NUMBER seq` and skips
//!   what is at or before `seq/sub`, so a restart in the middle of a KPL aggregate resumes at
//!   its next user record.
//! - **Expired iterators** (`ExpiredIteratorException`) are replaced by re-opening right after
//!   the last record returned — or where the reader started, if it returned none — never at the
//!   horizon by accident.
//! - **Trimmed checkpoints.** When the record a checkpoint names is no longer retained (the first
//!   record read is a later one, or Kinesis rejects the sequence number), the read fails with
//!   `SourceError::Trimmed` and the consumer's `TrimmedPolicy` decides: resume at
//!   `TRIM_HORIZON` with a warning (the default), or stop.
//! - **Shard end.** A closed shard read to its end reports the end and its `ChildShards`.
//! - **Errors** are classified: `ProvisionedThroughputExceeded` and KMS throttling →
//!   `Throttled` (the consumer backs off with jitter); a missing shard → `ShardGone`, but only
//!   once a listing agrees it is gone (a shard still listed — a stream deleted and created
//!   again, a restarted service — is re-opened after the last record read, and a stream that
//!   was listed before and is missing now is retried, not fatal); access, KMS and argument
//!   errors → `Fatal`; network failures and 5xx → `Transient`.
//! - The pace — at least `Config::poll_interval` (200 ms) between reads of a shard, as Kinesis
//!   allows 5 reads per second per shard shared by every application — is the consumer's.
//!
//! ```no_run
//! use kinsumer_core::{Config, Consumer};
//! use kinsumer_kinesis::KinesisSource;
//! # async fn run(store: impl kinsumer_core::LeaseStore) -> Result<(), Box<dyn std::error::Error>> {
//! // Build the client as usual (credentials, region and HTTP client from your setup), e.g.
//! // `aws_sdk_kinesis::Client::new(&aws_config::load_from_env().await)`.
//! # let client: aws_sdk_kinesis::Client = unimplemented!();
//! let source = KinesisSource::new(client, "orders");
//! let mut consumer = Consumer::new(Config::new("billing"), source, store)?;
//! let mut records = consumer.records()?;
//! # Ok(())
//! # }
//! ```

pub mod fan_out;
pub mod kpl;
mod source;

pub use fan_out::FanOutOptions;
pub use source::{
    EXPIRED, GET_RECORDS, KinesisError, KinesisSource, KinesisStats, MALFORMED, SUBSCRIPTIONS,
    THROTTLED, TRIMMED,
};
