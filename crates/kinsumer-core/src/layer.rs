//! Layers: one place to wrap every call a consumer makes to its store and its source.
//!
//! A [`Layer`] sees each call as a future, with an [`Op`] saying which call it is and on what
//! shard, and decides how it runs: the engine uses [`Traced`]`(`[`Timeout`]`)` so every call is
//! a span and a hung connection cannot freeze rebalancing or shutdown; the testkit's `Gate`
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

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{Instrument, Span, debug_span, field};

use crate::position::Checkpoint;
use crate::source::{Batch, ShardId, ShardInfo, ShardReader, ShardSource, SourceError};
use crate::store::{ClientId, ClientRow, Lease, LeaseStore, Rows, StoreError, Tenure};

/// One call a consumer makes to its store or source: what it is, and the shard it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The call: the method's name (`"take"`, `"checkpoint"`, ...), or `"read"` for a
    /// reader's `next_batch`.
    pub name: &'static str,
    /// The shard the call is about; `None` for calls about a client or the whole stream
    /// (`"heartbeat"`, `"leases"`, `"list_shards"`, ...).
    pub shard: Option<ShardId>,
}

impl Op {
    /// A call about a client or the whole stream.
    pub fn new(name: &'static str) -> Self {
        Self { name, shard: None }
    }

    /// A call about `shard`.
    pub fn on(name: &'static str, shard: &ShardId) -> Self {
        Self {
            name,
            shard: Some(shard.clone()),
        }
    }
}

/// `take on shardId-000000000001`, or `heartbeat`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shard {
            Some(shard) => write!(f, "{} on {shard}", self.name),
            None => f.write_str(self.name),
        }
    }
}

/// Decides how each store and source call runs; `op` says which call it is.
pub trait Layer: Clone + Send + Sync + 'static {
    /// Runs one store call.
    fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'a;

    /// Runs one source call (a listing, an open, or a read).
    fn source_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, SourceError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, SourceError>> + Send + 'a;
}

/// Runs another layer's calls each in a `DEBUG` span — `store_call` or `source_call`, with the
/// call's `op` and `shard`, and once it returned its `outcome` (`ok`, or the error's
/// [`StoreError::kind`] / [`SourceError::kind`]) and `millis` — inside the span of whoever
/// made the call (a consumer's calls run in its `consumer` span, a tenure's in its `tenure`
/// span). A subscriber that shows span closes (`FmtSpan::CLOSE`) or exports spans
/// (OpenTelemetry) shows every call; the lines a backend logs during a call name it. Every
/// consumer runs its calls through `Traced(Timeout(Config::call_timeout))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traced<L>(pub L);

/// The `DEBUG` span of one call, named `$name` (a span's name is a literal): its `shard`,
/// `outcome` and `millis` are recorded by [`traced`].
macro_rules! call_span {
    ($name:literal, $op:expr) => {
        debug_span!(
            $name,
            op = $op.name,
            shard = field::Empty,
            outcome = field::Empty,
            millis = field::Empty
        )
    };
}

impl<L: Layer> Layer for Traced<L> {
    fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'a {
        let span = call_span!("store_call", op);
        traced(span, op, self.0.store_call(op, call), StoreError::kind)
    }

    fn source_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, SourceError>> + Send + 'a,
    ) -> impl Future<Output = Result<T, SourceError>> + Send + 'a {
        let span = call_span!("source_call", op);
        traced(span, op, self.0.source_call(op, call), SourceError::kind)
    }
}

/// Runs `call` in `span` and records how it ended; nothing when nobody listens at `DEBUG`.
async fn traced<T, E>(
    span: Span,
    op: &Op,
    call: impl Future<Output = Result<T, E>>,
    kind: fn(&E) -> &'static str,
) -> Result<T, E> {
    if span.is_disabled() {
        return call.await;
    }
    if let Some(shard) = &op.shard {
        span.record("shard", field::display(shard));
    }
    // The runtime's clock, so a simulation's spans show virtual time.
    let started = tokio::time::Instant::now();
    let output = call.instrument(span.clone()).await;
    span.record("outcome", output.as_ref().map_or_else(kind, |_| "ok"));
    span.record("millis", started.elapsed().as_secs_f64() * 1000.0);
    output
}

/// Fails a call that takes longer than this as `Transient`: an unknown outcome, which the
/// engine already resolves by re-reading, and retries like any passing failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Layer for Timeout {
    async fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
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
        op: &'a Op,
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
    fn application(&self) -> Option<&str> {
        self.inner.application()
    }
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        let call = self.inner.heartbeat(client, beat);
        self.layer.store_call(&Op::new("heartbeat"), call).await
    }
    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        self.layer
            .store_call(&Op::new("clients"), self.inner.clients())
            .await
    }
    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        let call = self.inner.deregister(client);
        self.layer.store_call(&Op::new("deregister"), call).await
    }
    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        let call = self.inner.client(client);
        self.layer.store_call(&Op::new("client"), call).await
    }
    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        let call = self.inner.mark_dead(client, counter);
        self.layer.store_call(&Op::new("mark_dead"), call).await
    }
    async fn changes(&self) -> Result<u64, StoreError> {
        self.layer
            .store_call(&Op::new("changes"), self.inner.changes())
            .await
    }
    async fn announce(&self) -> Result<u64, StoreError> {
        self.layer
            .store_call(&Op::new("announce"), self.inner.announce())
            .await
    }
    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        self.layer
            .store_call(&Op::new("leases"), self.inner.leases(stream))
            .await
    }
    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        let call = self.inner.lease(stream, shard);
        self.layer.store_call(&Op::on("lease", shard), call).await
    }
    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        let call = self.inner.create_if_absent(stream, shard, parents);
        self.layer
            .store_call(&Op::on("create_if_absent", shard), call)
            .await
    }
    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        let call = self.inner.take(stream, shard, owner, expected_token);
        self.layer.store_call(&Op::on("take", shard), call).await
    }
    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let call = self.inner.checkpoint(stream, tenure, checkpoint);
        self.layer
            .store_call(&Op::on("checkpoint", &tenure.shard), call)
            .await
    }
    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        let call = self.inner.release(stream, tenure, checkpoint, successor);
        self.layer
            .store_call(&Op::on("release", &tenure.shard), call)
            .await
    }
    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        let call = self.inner.finish(stream, tenure);
        self.layer
            .store_call(&Op::on("finish", &tenure.shard), call)
            .await
    }
    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        let call = self.inner.delete_finished(stream, shard);
        self.layer
            .store_call(&Op::on("delete_finished", shard), call)
            .await
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
        self.layer
            .store_call(&Op::on("reset_checkpoint", shard), call)
            .await
    }
    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        let call = self.inner.replace_corrupt(stream, lease);
        self.layer
            .store_call(&Op::on("replace_corrupt", &lease.shard), call)
            .await
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
        self.layer.source_call(&Op::new("list_shards"), call).await
    }
    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        let call = self.inner.open(shard, from);
        let reader = self.layer.source_call(&Op::on("open", shard), call).await?;
        Ok(Box::new(LayeredReader {
            inner: reader,
            layer: self.layer.clone(),
            read: Op::on("read", shard),
        }))
    }
}

/// A reader a [`Layered`] source opened: its reads go through the layer, as `"read"` on its
/// shard.
struct LayeredReader<L> {
    inner: Box<dyn ShardReader>,
    layer: L,
    read: Op,
}

#[async_trait]
impl<L: Layer> ShardReader for LayeredReader<L> {
    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError> {
        let call = self.inner.next_batch(max_records);
        self.layer.source_call(&self.read, call).await
    }

    fn is_pushed(&self) -> bool {
        self.inner.is_pushed()
    }
}
