//! # kinsumer-core
//!
//! The protocol of kinsumer, and nothing that talks to a server: the two seams
//! ([`ShardSource`], [`LeaseStore`]), the configuration, and the consumer engine.
//!
//! How the parts fit, one concept per module:
//! - [`position`] — sequence numbers, record positions, checkpoints, start positions;
//! - [`source`] — the `ShardSource` seam (where records come from);
//! - [`store`] — the `LeaseStore` seam (where ownership and progress live);
//! - [`membership`] — liveness from observed heartbeat counters, immune to clock skew;
//! - [`assignment`] — the pure, balanced, sticky shard → client function;
//! - `tenure` — one shard's lease tenure: take → read → deliver → ack/watermark → commit →
//!   release or finish; its files: `tenure/mod.rs` (the lifecycle), `tenure/fetch.rs` (the read
//!   loop), `tenure/handler.rs` (the batch-handler worker), `tenure/deliver.rs` (a fetched
//!   batch to the record stream or the handler);
//! - [`record`] — what the application acks ([`Record`], [`RecordRun`], [`ShardBatch`]); in
//!   `record/run.rs`, a fetched batch on its way through the record stream (handed out and
//!   acked by record or by stretch through counters, without a lock), and in
//!   `record/tracker.rs`, the tenure's ack book that makes the watermark;
//! - `engine` — what the supervisor and its tenures share (config, seams, back-off, heartbeat,
//!   stall reports), and `health` — self-fencing when our own heartbeat stops landing;
//! - `supervisor` — the task that runs all of the above: registers, reads, plans, takes, hands
//!   off, leaves;
//! - [`consumer`] — the public API: `Consumer` and its record stream; what the engine needs of
//!   it lives below it, so the engine never imports the API that starts it: `handler` (the
//!   `BatchHandler` trait), `shutdown` (`ShutdownHandle`), `status` (`StatusHandle`);
//! - [`lifecycle`] — hooks as a shard starts and ends (to keep and flush per-shard state);
//! - [`failure`] — what happens to a batch the handler keeps failing on;
//! - [`stall`] — work held but not moving (a record not acked, a hung handler, a stream not
//!   polled, a stuck supervisor), found within a bound and given up;
//! - [`metrics`] — what a consumer reports through the `metrics` facade;
//! - [`layer`] — one place to wrap every store and source call (timeouts, test faults);
//! - [`backoff`] — the one seeded back-off (capped exponential, jittered) of the engine and of
//!   every backend;
//! - [`outcome`] — "did my write land?": the one decision every store uses to settle a write
//!   whose reply was lost, from a re-read of the row;
//! - [`config`], [`error`]; and, hidden from the docs, `rng` (the seeded RNG and stable hash
//!   shared with the sibling crates) and `faults` (knobs that break the engine, for kinsumer's
//!   own tests, public only with the `engine-faults` feature).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod assignment;
pub mod backoff;
pub mod config;
pub mod consumer;
mod engine;
pub mod error;
pub mod failure;
// Public only for kinsumer's own tests (see its docs).
#[cfg(feature = "engine-faults")]
#[doc(hidden)]
pub mod faults;
// Without the feature nothing sets them (the switches' setters are unused): always off.
#[cfg(not(feature = "engine-faults"))]
#[allow(dead_code)]
mod faults;
mod handler;
mod health;
pub mod layer;
pub mod lifecycle;
pub mod membership;
pub mod metrics;
pub mod outcome;
pub mod position;
pub mod quarantine;
pub mod record;
// Shared with the sibling crates (the seeded RNG of simulations and back-off jitter, the
// stable hash of rendezvous ranks and KPL), not with applications: hidden, and free to change
// in any release.
#[doc(hidden)]
pub mod rng;
mod shutdown;
pub mod source;
pub mod stall;
mod status;
pub mod store;
mod supervisor;
mod tenure;

/// The attribute that implements [`ShardLifecycle`], [`FailurePolicy`] or [`BatchHandler`] for a
/// type of yours (`#[kinsumer::async_trait]`), so you need no dependency of your own for it.
pub use async_trait::async_trait;
pub use consumer::{
    BatchHandler, Consumer, HandlerError, Records, ShardStatus, ShutdownHandle, StatusHandle,
};
pub use error::ConsumerError;
pub use failure::{FailedBatch, FailureAction, FailurePolicy};
pub use lifecycle::{EndReason, ShardEnding, ShardLifecycle, ShardStarted};
pub use record::{BatchRecords, Record, RecordRun, ShardBatch};
pub use stall::{Stall, StallKind};

pub use config::{AckMode, Config, ConfigError, TrimmedPolicy};
pub use position::{Checkpoint, InitialPosition, Position, SequenceNumber};
pub use source::{
    Batch, HashRange, ShardId, ShardInfo, ShardReader, ShardSource, SourceError, SourceRecord,
};
pub use store::{ClientId, ClientRow, CorruptRow, Lease, LeaseStore, Rows, StoreError, Tenure};
