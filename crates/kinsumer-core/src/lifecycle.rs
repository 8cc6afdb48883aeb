//! Lifecycle hooks: the application is told when it starts reading a shard and when it stops,
//! so it can keep state per shard — an aggregation, an open file, a transaction.
//!
//! [`ShardLifecycle::started`] runs before the first record of a lease tenure is handed out;
//! [`ShardLifecycle::ending`] runs when the tenure ends, with the reason — and, where there is
//! a final checkpoint (a handoff, a shutdown, the end of a shard), *before* it: records the
//! hook acks are covered by that checkpoint, so a flush in the hook is never delivered again by
//! the next owner. Both consumption APIs call them, for every shard, from the shard's own task:
//! calls for one shard never overlap, calls for different shards may run at once.
//!
//! A hook call that does not return is a stall like a hung handler: after `stall_timeout` the
//! shard is released; during a release the `ending` hook gets `drain_timeout`.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use kinsumer_core::lifecycle::{EndReason, ShardEnding, ShardLifecycle, ShardStarted};
//! use kinsumer_core::ShardId;
//!
//! /// Counts records per shard, and flushes the count when the shard ends.
//! #[derive(Default)]
//! struct Counts(Mutex<HashMap<ShardId, u64>>);
//!
//! #[kinsumer_core::async_trait]
//! impl ShardLifecycle for Counts {
//!     async fn started(&self, shard: ShardStarted) {
//!         self.0.lock().unwrap().insert(shard.shard, 0);
//!     }
//!     async fn ending(&self, shard: ShardEnding) {
//!         let count = self.0.lock().unwrap().remove(&shard.shard);
//!         if shard.reason != EndReason::Lost {
//!             // flush `count` somewhere durable: the checkpoint is written after this returns
//!         }
//!     }
//! }
//! # let _ = Counts::default();
//! ```
//!
//! Set them with [`crate::Consumer::with_lifecycle`].

use async_trait::async_trait;

use crate::position::Checkpoint;
use crate::source::ShardId;
use crate::store::Tenure;

/// Why a lease tenure ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The assignment moved the shard to another client: it is released after this hook with
    /// the watermark as its checkpoint.
    HandedOff,
    /// The consumer is shutting down (or leaving the fleet): the shard is released after this
    /// hook with the watermark as its checkpoint.
    ShuttingDown,
    /// The shard was read to its end: once every record is acked it is finished, and its
    /// children start.
    Finished,
    /// The application stalled on this shard (see [`crate::stall`]): it is released with what
    /// is acked.
    Stalled,
    /// The tenure failed (a handler panic, a read error no retry fixes): the watermark is
    /// committed after this hook, and the shard starts again.
    Failed,
    /// The lease is no longer ours (another client took it, or this client fenced itself): no
    /// checkpoint follows, and what was not committed will be delivered again by the next
    /// owner. Discard, do not flush.
    Lost,
}

/// A lease tenure started: records of `shard` from `from` on are about to be handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStarted {
    /// The shard.
    pub shard: ShardId,
    /// The fencing token of this tenure (also [`crate::Record::lease_token`]).
    pub token: u64,
    /// The tenure (shard, owner, token).
    pub tenure: Tenure,
    /// Where reading starts: the checkpoint the lease was taken with.
    pub from: Checkpoint,
}

/// A lease tenure is ending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardEnding {
    /// The shard.
    pub shard: ShardId,
    /// The fencing token of the tenure that ends.
    pub token: u64,
    /// The tenure (shard, owner, token).
    pub tenure: Tenure,
    /// Why.
    pub reason: EndReason,
}

/// Called as lease tenures start and end. Both methods do nothing by default.
#[async_trait]
pub trait ShardLifecycle: Send + Sync + 'static {
    /// A tenure started; called before its first record is handed out.
    async fn started(&self, _shard: ShardStarted) {}

    /// A tenure is ending; called before its final checkpoint, where there is one.
    async fn ending(&self, _shard: ShardEnding) {}
}

/// Shared hooks: an application keeps an `Arc` of its state and hands the consumer a clone.
#[async_trait]
impl<T: ShardLifecycle + ?Sized> ShardLifecycle for std::sync::Arc<T> {
    async fn started(&self, shard: ShardStarted) {
        (**self).started(shard).await
    }

    async fn ending(&self, shard: ShardEnding) {
        (**self).ending(shard).await
    }
}
