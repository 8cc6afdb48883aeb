//! Time limits on every call the engine makes to its store and source.
//!
//! A call that hangs (a half-open connection, a stuck server) would otherwise freeze the
//! supervisor's rebalancing or a shutdown while the separate heartbeat task keeps the client's
//! leases alive. Past `Config::call_timeout` a call fails as `Transient` — an unknown outcome,
//! which the engine already resolves by re-reading — and is retried like any passing failure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::position::Checkpoint;
use crate::source::{Batch, ShardId, ShardInfo, ShardReader, ShardSource, SourceError};
use crate::store::{ClientId, ClientRow, Lease, LeaseStore, StoreError, Tenure};

async fn store_call<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(StoreError::Transient(format!(
            "{what} timed out after {limit:?}; its outcome is unknown"
        )))
    })
}

async fn source_call<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(SourceError::Transient(format!(
            "{what} timed out after {limit:?}"
        )))
    })
}

/// A store whose every call fails as `Transient` after a time limit.
pub(crate) struct TimedStore {
    pub(crate) inner: Arc<dyn LeaseStore>,
    pub(crate) limit: Duration,
}

#[async_trait]
impl LeaseStore for TimedStore {
    async fn heartbeat(&self, client: &ClientId) -> Result<u64, StoreError> {
        store_call(self.limit, "heartbeat", self.inner.heartbeat(client)).await
    }
    async fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        store_call(self.limit, "clients", self.inner.clients()).await
    }
    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        store_call(self.limit, "deregister", self.inner.deregister(client)).await
    }
    async fn leases(&self, stream: &str) -> Result<Vec<Lease>, StoreError> {
        store_call(self.limit, "leases", self.inner.leases(stream)).await
    }
    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        store_call(self.limit, "lease", self.inner.lease(stream, shard)).await
    }
    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        let call = self.inner.create_if_absent(stream, shard, parents);
        store_call(self.limit, "create_if_absent", call).await
    }
    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        let call = self.inner.take(stream, shard, owner, expected_token);
        store_call(self.limit, "take", call).await
    }
    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let call = self.inner.checkpoint(stream, tenure, checkpoint);
        store_call(self.limit, "checkpoint", call).await
    }
    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        let call = self.inner.release(stream, tenure, checkpoint);
        store_call(self.limit, "release", call).await
    }
    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        store_call(self.limit, "finish", self.inner.finish(stream, tenure)).await
    }
    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        let call = self.inner.delete_finished(stream, shard);
        store_call(self.limit, "delete_finished", call).await
    }
    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let call = self
            .inner
            .reset_checkpoint(stream, shard, expected_token, checkpoint);
        store_call(self.limit, "reset_checkpoint", call).await
    }
}

/// A source whose every call, and every read of its readers, fails as `Transient` after a
/// time limit.
pub(crate) struct TimedSource {
    pub(crate) inner: Arc<dyn ShardSource>,
    pub(crate) limit: Duration,
}

struct TimedReader {
    inner: Box<dyn ShardReader>,
    limit: Duration,
}

#[async_trait]
impl ShardReader for TimedReader {
    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError> {
        source_call(self.limit, "read", self.inner.next_batch(max_records)).await
    }
}

#[async_trait]
impl ShardSource for TimedSource {
    fn stream_name(&self) -> &str {
        self.inner.stream_name()
    }
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        source_call(self.limit, "list_shards", self.inner.list_shards()).await
    }
    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        let inner = source_call(self.limit, "open", self.inner.open(shard, from)).await?;
        Ok(Box::new(TimedReader {
            inner,
            limit: self.limit,
        }))
    }
}
