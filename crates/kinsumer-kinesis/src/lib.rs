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
//! - The pace — at least `Config::poll_interval` (200 ms) between reads of a shard that is
//!   behind and `Config::idle_poll_interval` (1 s) once it is caught up, as Kinesis allows 5
//!   reads per second per shard shared by every application — is the consumer's; a fan-out
//!   reader says it is pushed its records (`ShardReader::is_pushed`), so it is not slowed.
//! - **Retries.** Two layers, not three: the caller's client keeps the SDK's own retry policy
//!   (by default 3 attempts, with the SDK's back-off and retry token bucket), and the engine
//!   backs off (the core's seeded [`kinsumer_core::backoff`]) only once a call failed after
//!   those. Unlike a lease store, this source never retries on its own (apart from fan-out
//!   resubscriptions, which are its reader's job) — and nothing it calls can land twice: reads,
//!   and an idempotent consumer registration. Leaving the SDK's retries on is deliberate: a
//!   throttled or dropped GetRecords is retried within the call, sooner than the engine's
//!   back-off would, at no risk. Turn them off in the client if the engine alone should pace
//!   retries.
//!
//! The modules form a DAG: `source` (the [`KinesisSource`] and its polling reader) and
//! `fan_out` (the subscription reader) both build on `stream` (the client, the stream and its
//! listing), `cursor` (records to user records), `errors` (classification) and `stats`, and
//! neither imports the other's internals.
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
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cursor;
mod errors;
pub mod fan_out;
pub mod kpl;
mod source;
mod stats;
mod stream;

/// The AWS SDK this source takes a client of (`aws_sdk_kinesis::Client`).
pub use aws_sdk_kinesis;
pub use errors::KinesisError;
pub use fan_out::FanOutOptions;
pub use source::KinesisSource;
pub use stats::{
    ALL as METRICS, EXPIRED, GET_RECORDS, KinesisStats, MALFORMED, SUBSCRIPTIONS, THROTTLED,
    TRIMMED,
};
