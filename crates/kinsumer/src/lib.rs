//! # kinsumer
//!
//! Consume a sharded stream — Amazon Kinesis Data Streams first — from a fleet of processes:
//! each shard is read by one live process at a time, progress is checkpointed in a pluggable
//! lease store, and nothing is lost on crashes, deploys or resharding.
//!
//! This facade re-exports [`kinsumer_core`] and, behind Cargo features, the backends:
//! `testkit` (in-memory stream and store, fault injection, conformance suites — without the
//! simulation, which is `kinsumer-testkit`'s own feature `sim`, so enabling `testkit` never
//! turns on tokio's `test-util`), `kinesis`, `dynamo`, `redis`, `postgres` (and `redis-tls`,
//! `postgres-tls` for TLS to the store).
//!
//! Start with the repository's README (on crates.io, this crate's page): it walks from an
//! in-memory demo to a fleet on Kinesis with each store, and its examples are compiled and run
//! as this crate's doctests. The [`Consumer`] docs show both ways to take records.
//!
//! ```
//! use futures::StreamExt;
//! use kinsumer::{Config, Consumer};
//! use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = MemoryStream::new("orders", 2);
//! stream.put("customer-1", &b"hello"[..])?;
//! let mut consumer = Consumer::new(Config::new("billing"), stream, MemoryLeaseStore::new())?;
//! let mut records = consumer.records()?;
//! let record = records.next().await.expect("a record")?;
//! assert_eq!(&record.data()[..], b"hello");
//! record.ack(); // the checkpoint may pass it now
//! consumer.shutdown().await?; // the last checkpoint written, the leases released
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use kinsumer_core::*;

/// In-memory stream and lease store, fault injection and conformance suites (the simulation is
/// behind `kinsumer-testkit`'s feature `sim`).
#[cfg(feature = "testkit")]
pub use kinsumer_testkit as testkit;

#[cfg(feature = "aws")]
pub mod aws;

/// Amazon Kinesis as a source: polling or enhanced fan-out, KPL de-aggregation.
#[cfg(feature = "kinesis")]
pub use kinsumer_kinesis as kinesis;

/// DynamoDB lease store (one table per application, one conditional request per operation).
#[cfg(feature = "dynamo")]
pub use kinsumer_dynamo as dynamo;

/// Redis lease store (Lua scripts, one hash per application and stream).
#[cfg(feature = "redis")]
pub use kinsumer_redis as redis;

/// PostgreSQL lease store, with checkpoints inside your own transaction.
#[cfg(feature = "postgres")]
pub use kinsumer_postgres as postgres;

/// The README's examples, compiled (and those that need no server, run) as doctests; they use
/// every backend and the testkit. Only under `cfg(doctest)`: the README sits outside the
/// packaged crate.
#[cfg(all(
    doctest,
    feature = "testkit",
    feature = "kinesis",
    feature = "dynamo",
    feature = "redis",
    feature = "postgres"
))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
