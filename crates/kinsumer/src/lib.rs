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
//! The README follows (its examples are compiled as doctests with the `testkit` feature).
#![cfg_attr(feature = "testkit", doc = include_str!("../../../README.md"))]

pub use kinsumer_core::*;

/// In-memory stream and lease store, fault injection and conformance suites (the simulation is
/// behind `kinsumer-testkit`'s feature `sim`).
#[cfg(feature = "testkit")]
pub use kinsumer_testkit as testkit;

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
