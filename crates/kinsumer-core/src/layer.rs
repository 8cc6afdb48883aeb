//! Layers: one place to wrap every call a consumer makes to its store and its source.
//!
//! A [`Layer`] sees each call as a future and decides how it runs: the engine uses
//! [`Timeout`] so a hung connection cannot freeze rebalancing or shutdown; the testkit's `Gate`
//! freezes one client's calls to simulate a process pause. [`Layered`] applies a layer to a
//! whole [`LeaseStore`] or [`ShardSource`] (and to every reader the source opens), so a layer is
//! written once, not once per method.
//!
//! ```
//! use std::time::Duration;
//! use kinsumer_core::layer::{Layered, Timeout};
//! use kinsumer_core::store::{ClientId, LeaseStore};
//! use kinsumer_testkit::MemoryLeaseStore;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Layered::new(MemoryLeaseStore::new(), Timeout(Duration::from_secs(5)));
//! store.heartbeat(&ClientId::from("a"), 1).await?;
//! assert_eq!(store.clients().await?.rows.len(), 1);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::position::Checkpoint;
use crate::source::{Batch, ShardId, ShardInfo, ShardReader, ShardSource, SourceError};
use crate::store::{ClientId, ClientRow, Lease, LeaseStore, Rows, StoreError, Tenure};

/// Decides how each store and source call runs. `op` names the call (`"take"`, `"read"`, ...).
pub trait Layer: Clone + Send + Sync + 'static {
    /// Runs one store call.
    fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'a;

    /// Runs one source call (a listing, an open, or a read).
    fn source_call<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        call: impl Future<Output = Result<T, SourceError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, SourceError>> + Send + 'a;
}

/// Fails a call that takes longer than this as `Transient`: an unknown outcome, which the
/// engine already resolves by re-reading, and retries like any passing failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Layer for Timeout {
    async fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> Result<T, StoreError> {
        let limit = self.0;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(StoreError::Transient(format!(
                "{op} timed out after {limit:?}; its outcome is unknown"
            )))
        })
    }

    async fn source_call<'a, T: Send + 'a>(
        &'a self,
        op: &'static str,
        call: impl Future<Output = Result<T, SourceError>> + Send + 'a,
    ) -> Result<T, SourceError> {
        let limit = self.0;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(SourceError::Transient(format!(
                "{op} timed out after {limit:?}"
            )))
        })
    }
}

/// A store, source or reader with a [`Layer`] around every call.
#[derive(Clone, Debug)]
pub struct Layered<L, S> {
    inner: S,
    layer: L,
}

impl<L, S> Layered<L, S> {
    /// Wraps `inner` in `layer`.
    pub fn new(inner: S, layer: L) -> Self {
        Self { inner, layer }
    }

    /// The wrapped store, source or reader.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }
}

#[async_trait]
impl<L: Layer, S: LeaseStore> LeaseStore for Layered<L, S> {
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        let call = self.inner.heartbeat(client, beat);
        self.layer.store_call("heartbeat", call).await
    }
    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        self.layer.store_call("clients", self.inner.clients()).await
    }
    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        let call = self.inner.deregister(client);
        self.layer.store_call("deregister", call).await
    }
    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        let call = self.inner.client(client);
        self.layer.store_call("client", call).await
    }
    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        let call = self.inner.mark_dead(client, counter);
        self.layer.store_call("mark_dead", call).await
    }
    async fn changes(&self) -> Result<u64, StoreError> {
        self.layer.store_call("changes", self.inner.changes()).await
    }
    async fn announce(&self) -> Result<u64, StoreError> {
        self.layer
            .store_call("announce", self.inner.announce())
            .await
    }
    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        self.layer
            .store_call("leases", self.inner.leases(stream))
            .await
    }
    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        let call = self.inner.lease(stream, shard);
        self.layer.store_call("lease", call).await
    }
    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        let call = self.inner.create_if_absent(stream, shard, parents);
        self.layer.store_call("create_if_absent", call).await
    }
    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        let call = self.inner.take(stream, shard, owner, expected_token);
        self.layer.store_call("take", call).await
    }
    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let call = self.inner.checkpoint(stream, tenure, checkpoint);
        self.layer.store_call("checkpoint", call).await
    }
    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        let call = self.inner.release(stream, tenure, checkpoint, successor);
        self.layer.store_call("release", call).await
    }
    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        let call = self.inner.finish(stream, tenure);
        self.layer.store_call("finish", call).await
    }
    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        let call = self.inner.delete_finished(stream, shard);
        self.layer.store_call("delete_finished", call).await
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
        self.layer.store_call("reset_checkpoint", call).await
    }
    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        let call = self.inner.replace_corrupt(stream, lease);
        self.layer.store_call("replace_corrupt", call).await
    }
}

#[async_trait]
impl<L: Layer, S: ShardSource> ShardSource for Layered<L, S> {
    fn stream_name(&self) -> &str {
        self.inner.stream_name()
    }
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        let call = self.inner.list_shards();
        self.layer.source_call("list_shards", call).await
    }
    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        let call = self.inner.open(shard, from);
        let reader = self.layer.source_call("open", call).await?;
        Ok(Box::new(Layered::new(reader, self.layer.clone())))
    }
}

#[async_trait]
impl<L: Layer> ShardReader for Layered<L, Box<dyn ShardReader>> {
    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError> {
        let call = self.inner.next_batch(max_records);
        self.layer.source_call("read", call).await
    }

    fn is_pushed(&self) -> bool {
        self.inner.is_pushed()
    }
}
