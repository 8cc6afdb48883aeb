//! The batch handler: what the application gives [`Consumer::run`](crate::Consumer::run).

use std::future::Future;

use async_trait::async_trait;

use crate::record::ShardBatch;

/// What a [`BatchHandler`] may fail with; the batch is retried with back-off.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Processes batches of one shard at a time. Called concurrently for different shards and in
/// order within one; a batch is acked when this returns `Ok` and retried when it fails.
///
/// Any `Fn(ShardBatch) -> impl Future<Output = Result<(), HandlerError>>` is a handler.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Processes one batch.
    async fn handle(&self, batch: ShardBatch) -> Result<(), HandlerError>;
}

#[async_trait]
impl<F, Fut> BatchHandler for F
where
    F: Fn(ShardBatch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn handle(&self, batch: ShardBatch) -> Result<(), HandlerError> {
        (self)(batch).await
    }
}
