//! The consumer's error: why a consumer as a whole stopped, or refused to start.
//!
//! Errors of one shard (throttling, transient failures, a lost lease) never reach the caller:
//! the engine retries, re-reads or restarts the shard with back-off. Only what no retry can fix
//! stops the consumer, and the error says why.
//!
//! ```
//! use kinsumer_core::error::ConsumerError;
//! use kinsumer_core::source::SourceError;
//!
//! let e = ConsumerError::from(SourceError::Fatal("stream orders does not exist".into()));
//! assert!(e.to_string().contains("stream orders does not exist"));
//! assert!(!e.is_retryable());
//! ```

use crate::config::ConfigError;
use crate::source::SourceError;
use crate::store::StoreError;

/// Why a consumer stopped or could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerError {
    /// The configuration broke a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The source failed in a way no retry fixes.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// The lease store failed in a way no retry fixes.
    #[error("lease store: {0}")]
    Store(#[from] StoreError),
    /// `records()` or `run()` was called on a consumer that already started.
    #[error("this consumer was already started; build a new one to consume again")]
    AlreadyStarted,
    /// An engine task panicked (a bug: please report it).
    #[error("an engine task panicked: {0}")]
    Panicked(String),
    /// The failure policy stopped the consumer on a batch the handler kept failing on (see
    /// [`crate::failure`]).
    #[error(
        "the batch handler failed {attempts} time(s) on shard {shard} and the failure policy stopped the consumer: {error}"
    )]
    HandlerGaveUp {
        /// The shard of the batch.
        shard: crate::source::ShardId,
        /// The attempts made.
        attempts: u32,
        /// The last attempt's error.
        error: String,
    },
}

impl ConsumerError {
    /// Whether the same call may succeed later. Errors that stop a consumer never are.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConsumerError::Source(e) => e.is_retryable(),
            ConsumerError::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}
