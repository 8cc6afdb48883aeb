//! What happens to a batch the handler keeps failing on.
//!
//! By default a failed batch is retried with back-off, forever: a batch is never skipped, and
//! the checkpoint never passes a record the handler did not accept. Some applications would
//! rather move on — write the batch to a dead-letter sink and go on — or stop and page someone.
//! A [`FailurePolicy`] set with [`crate::Consumer::with_failure_policy`] decides, after a
//! number of failed attempts, with the batch and the error in hand:
//!
//! - [`FailureAction::Skip`]: the batch counts as handled (acked; the checkpoint moves past it),
//!   counted in `kinsumer_batches_skipped_total`;
//! - [`FailureAction::Retry`]: retry with back-off; the policy is asked again after the next
//!   failure;
//! - [`FailureAction::Stop`]: the consumer shuts down gracefully (the batch is not acked, so
//!   the next owner starts with it) and `run` returns [`crate::ConsumerError::HandlerGaveUp`].
//!
//! ```
//! use kinsumer_core::failure::{FailedBatch, FailureAction};
//!
//! // After 5 failed attempts: park the batch in a dead-letter sink, then skip it.
//! let policy = |failed: FailedBatch| async move {
//!     let parked = dead_letter(&failed).await;
//!     if parked { FailureAction::Skip } else { FailureAction::Retry }
//! };
//! # async fn dead_letter(_f: &FailedBatch) -> bool { true }
//! # fn takes(_p: impl kinsumer_core::failure::FailurePolicy) {}
//! # takes(policy);
//! // consumer.with_failure_policy(5, policy).run(handler).await
//! ```

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::record::ShardBatch;

/// What to do with a batch the handler failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureAction {
    /// Count the batch as handled: ack it, so the checkpoint moves past it.
    Skip,
    /// Retry it with back-off (the default without a policy).
    Retry,
    /// Shut the consumer down gracefully, with the batch not acked;
    /// `run` returns [`crate::ConsumerError::HandlerGaveUp`].
    Stop,
}

/// A batch the handler failed on, for a [`FailurePolicy`].
#[derive(Clone, Debug)]
pub struct FailedBatch {
    /// The batch (the same one every attempt was given).
    pub batch: ShardBatch,
    /// The error of the last attempt.
    pub error: Arc<dyn std::error::Error + Send + Sync>,
    /// The attempts made so far, all failed.
    pub attempts: u32,
}

/// Decides what happens to a batch the handler keeps failing on. See the module docs.
///
/// Any `Fn(FailedBatch) -> impl Future<Output = FailureAction>` is a policy.
#[async_trait]
pub trait FailurePolicy: Send + Sync + 'static {
    /// Called after a failed attempt (from the configured number of attempts on).
    async fn on_failure(&self, failed: FailedBatch) -> FailureAction;
}

#[async_trait]
impl<F, Fut> FailurePolicy for F
where
    F: Fn(FailedBatch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = FailureAction> + Send,
{
    async fn on_failure(&self, failed: FailedBatch) -> FailureAction {
        (self)(failed).await
    }
}
