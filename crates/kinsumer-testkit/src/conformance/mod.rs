//! The contracts of the two seams, written once and run by every backend against its real
//! server (the pattern of `object_store`'s `integration.rs`).
//!
//! - [`lease_store`] checks a [`LeaseStore`](kinsumer_core::store::LeaseStore): creation, the
//!   conditional `take`, fencing of every write, release/finish/delete/reset, exact checkpoint
//!   round trips, stream isolation and a race of concurrent takes.
//! - [`shard_source`] checks a [`ShardSource`](kinsumer_core::source::ShardSource) on a fresh
//!   two-shard stream, driven through a [`StreamAdmin`]: listing, read-back exactly once in
//!   order, `After`/`Latest` starts, and split and merge handing over to the children.
//! - [`consumer_fleet`] runs three whole consumers over a source and a store through a crash
//!   and a graceful leave, and judges every delivery: nothing lost, duplicates only from the
//!   crash and within its window, key order kept (see [`fleet`]).
//! - [`fleet_under_vandal`] runs two consumers while a backend's [`Vandal`] writes hostile
//!   values into rows of the real store: the other shards flow, nobody stops (see [`vandal`]).
//! - [`repair_of_a_corrupt_row`] has a backend's [`Vandal`] make a lease row undecodable, and
//!   checks that `replace_corrupt` repairs it — and never overwrites a healthy row.
//!
//! Each check panics with a message naming itself. Resharding and reads are polled a bounded
//! number of times with short sleeps, since emulators are eventually consistent.
//!
//! The store contract lives in `store/` (one theme per file: client rows, take, fencing, the
//! lease's life after a take, what is read back, repair), the source contract in `source.rs`;
//! this module only re-exports them, so every path stays `conformance::…`.
//!
//! ```
//! use kinsumer_testkit::{conformance, MemoryLeaseStore, MemoryStream};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! conformance::lease_store(|| async { MemoryLeaseStore::new() }).await;
//!
//! let stream = MemoryStream::new("conformance", 2);
//! conformance::shard_source(&stream, &stream).await;
//! # }
//! ```

pub mod fleet;
mod source;
mod store;
pub mod unknown_outcome;
pub mod vandal;

pub use fleet::{FleetReport, consumer_fleet, consumer_fleet_with, fleet_config};
pub use source::{StreamAdmin, shard_source};
pub use store::{corrupt_change_counter, lease_store, repair_of_a_corrupt_row};
pub use unknown_outcome::unknown_outcomes;
pub use vandal::{
    Vandal, VandalReport, fleet_under_vandal, hostile_number, hostile_text, lease_field,
};
