//! The batch-handler worker of a tenure: the application's [`BatchHandler`] called on one
//! shard's batches, in order, one at a time.
//!
//! A batch is handed out (fence check and tracker) just before its first call, retried with
//! back-off while the handler fails — never skipped, unless the application's
//! [`FailurePolicy`](crate::failure::FailurePolicy) says so — and acked as a whole when the
//! handler accepts it. Every call is dated in the tracker, so a call that never returns is
//! found as a stall. Kept apart from the fetcher so that reading and handling run as two tasks
//! joined only by a channel of one batch.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};
use tracing::warn;

use crate::engine::Engine;
use crate::error::ConsumerError;
use crate::failure::{FailedBatch, FailureAction};
use crate::handler::BatchHandler;
use crate::metrics;
use crate::record::{AckTracker, ShardBatch};

/// Calls the batch handler for one tenure, in order, retrying a failed batch with back-off
/// (a batch is never skipped), and acks each batch the handler accepted.
pub(super) async fn handler_worker(
    engine: Arc<Engine>,
    handler: Arc<dyn BatchHandler>,
    tracker: Arc<AckTracker>,
    epoch: u64,
    mut rx: mpsc::Receiver<(u64, ShardBatch)>,
) {
    while let Some((entry, batch)) = rx.recv().await {
        if !engine.may_hand_out(epoch) || !tracker.hand_out(entry) {
            return;
        }
        let mut attempt: u32 = 0;
        loop {
            // Dated, so a call that never returns is found (`stall_timeout`).
            tracker.set_call_since(Some(Instant::now()));
            let result = handler.handle(batch.clone()).await;
            tracker.set_call_since(None);
            match result {
                Ok(()) => break,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let e: Arc<dyn std::error::Error + Send + Sync> = Arc::from(e);
                    match ask_policy(&engine, &tracker, &batch, e.clone(), attempt).await {
                        FailureAction::Retry => {}
                        FailureAction::Skip => {
                            warn!(shard = %batch.shard, attempts = attempt, records = batch.records.len(), "the failure policy skipped a batch the handler failed on");
                            engine
                                .labels
                                .client_counter(metrics::BATCHES_SKIPPED, &[])
                                .increment(1);
                            break;
                        }
                        FailureAction::Stop => {
                            engine.stop_with(ConsumerError::HandlerGaveUp {
                                shard: batch.shard.clone(),
                                attempts: attempt,
                                error: e.to_string(),
                            });
                            // Not acked: the next owner starts with this batch. Nothing more
                            // is handled here; the shutdown releases the lease.
                            std::future::pending::<()>().await;
                        }
                    }
                    let delay = engine.backoff(attempt);
                    warn!(shard = %batch.shard, error = %e, retry_in_ms = delay.as_millis() as u64, "batch handler failed; retrying the same batch");
                    sleep(delay).await;
                    // A retry is a new hand-out: not after a self-fence or once the tenure
                    // ended (the next owner delivers the batch).
                    if !engine.may_hand_out(epoch) || tracker.is_revoked() {
                        return;
                    }
                }
            }
        }
        tracker.ack(entry);
    }
}

/// Asks the failure policy, if there is one and `attempts` reached its threshold, what to do
/// with a batch the handler failed on; `Retry` otherwise. Dated as a call of the application.
async fn ask_policy(
    engine: &Engine,
    tracker: &AckTracker,
    batch: &ShardBatch,
    error: Arc<dyn std::error::Error + Send + Sync>,
    attempts: u32,
) -> FailureAction {
    let Some((after, policy)) = &engine.failure else {
        return FailureAction::Retry;
    };
    if attempts < *after {
        return FailureAction::Retry;
    }
    let failed = FailedBatch {
        batch: batch.clone(),
        error,
        attempts,
    };
    tracker.set_call_since(Some(Instant::now()));
    let action = policy.on_failure(failed).await;
    tracker.set_call_since(None);
    action
}
