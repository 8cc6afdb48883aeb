//! # kinsumer-testkit
//!
//! Everything needed to test kinsumer without a cloud account, and to hold every backend to
//! the same contract:
//!
//! - [`memory_stream`] — [`MemoryStream`], an in-memory Kinesis stream (a
//!   [`ShardSource`](kinsumer_core::source::ShardSource)) with MD5 routing, split and merge,
//!   retention, read limits, expiring iterators and seeded faults;
//! - [`memory_store`] — [`MemoryLeaseStore`], the
//!   [`LeaseStore`](kinsumer_core::store::LeaseStore) contract in memory, with seeded faults
//!   (including *ambiguous* writes) and a history of every applied write;
//! - [`faults`] — a [`Gate`] that pauses one client's calls, to simulate a process stalled
//!   past its lease;
//! - [`latency`] — [`Latency`], a layer that delays one client's requests and replies (each
//!   way on its own, with a long tail), or exactly one call to build an interleaving;
//! - [`proxy`] — [`FaultProxy`], a TCP proxy on loopback that black-holes (one or both
//!   directions of) or cuts a client's connections to a real server, for partition tests —
//!   the one exception to determinism below: real sockets, real time;
//! - [`conformance`] — the contracts of both seams as plain async functions, which each
//!   backend's tests run against a real server;
//! - [`oracle`] — the checks on a run's history that judge takeovers (no theft from a live
//!   client, nothing handed out after a takeover), usable in any test;
//! - `sim` (feature `sim`, off by default) — the deterministic simulation of a whole fleet,
//!   with every invariant checked. It runs under tokio's paused clock, so the feature turns
//!   on tokio's `test-util`; nothing else here needs it.
//!
//! The plumbing that finds this repository's own services and emulators (for CI) is not here:
//! it is the unpublished `kinsumer-test-env` crate.
//!
//! Everything is deterministic: time is `tokio::time` (run under the paused clock), randomness
//! comes from a caller-seeded [`Rng`](kinsumer_core::rng::Rng), and no order depends on a
//! `HashMap`.
//!
//! ```
//! use kinsumer_core::position::Checkpoint;
//! use kinsumer_core::source::ShardSource;
//! use kinsumer_core::store::{ClientId, LeaseStore};
//! use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = MemoryStream::new("orders", 4);
//! let store = MemoryLeaseStore::new();
//! let (shard, position) = stream.put("customer-7", "order placed")?;
//!
//! // Take the shard's lease, read it, and checkpoint what was processed.
//! store.create_if_absent(stream.name(), &shard, &[]).await?;
//! let lease = store.take(stream.name(), &shard, &ClientId::from("worker-1"), 0).await?;
//! let tenure = lease.tenure().ok_or("a taken lease has an owner")?;
//!
//! let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await?;
//! let batch = reader.next_batch(100).await?;
//! assert_eq!(batch.records.len(), 1);
//! store.checkpoint(stream.name(), &tenure, &Checkpoint::After(position)).await?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod conformance;
pub mod faults;
pub mod latency;
pub mod memory_store;
pub mod memory_stream;
pub mod oracle;
pub mod proxy;
#[cfg(feature = "sim")]
pub mod sim;

pub use faults::{Gate, GatedSource, GatedStore};
pub use latency::{Latency, LatencyProfile};
pub use memory_store::{
    ClientEvent, ClientOp, EventClock, MemoryLeaseStore, StoreEvent, StoreFaults, StoreOp,
    StoreSnapshot, StoreStats,
};
pub use memory_stream::{
    MemoryShardReader, MemoryStream, MemoryStreamConfig, MemoryStreamError, ReadLimits,
    SourceFaults, SourceStats,
};
pub use proxy::{FaultProxy, ProxyControl, ProxyMode, ProxyStats, UnknownProxyMode};
