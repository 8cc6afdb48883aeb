//! Process pauses: a [`Gate`] that freezes one client's store and source calls.
//!
//! A garbage-collection pause or a `SIGSTOP` freezes a process mid-flight: calls it was about
//! to make are not sent, and replies that arrive are not seen until it wakes — by which time
//! its lease may have passed to someone else. [`GatedStore`] and [`GatedSource`] reproduce that
//! for one client while the others keep running: every call waits for the gate to be open
//! before it is sent *and* before its result is returned.
//!
//! ```
//! use std::time::Duration;
//! use kinsumer_core::store::{ClientId, LeaseStore};
//! use kinsumer_testkit::{Gate, GatedStore, MemoryLeaseStore};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryLeaseStore::new();
//! let gate = Gate::new();
//! let paused_client = GatedStore::new(store.clone(), gate.clone());
//!
//! gate.pause();
//! let heartbeat = tokio::spawn(async move {
//!     paused_client.heartbeat(&ClientId::from("sleepy")).await
//! });
//! tokio::time::sleep(Duration::from_secs(30)).await;
//! assert!(store.peek_clients().is_empty(), "nothing is sent while paused");
//!
//! gate.resume();
//! assert_eq!(heartbeat.await??, 1);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::{Batch, ShardId, ShardInfo, ShardReader, ShardSource, SourceError};
use kinsumer_core::store::{ClientId, ClientRow, Lease, LeaseStore, StoreError, Tenure};

/// A shared pause switch, open when created. Cheap to clone: clones share the switch.
///
/// Built on `Notify` rather than a `watch` channel on purpose: `watch` picks one of its
/// internal wait lists at random, so the order in which many waiters wake would differ from run
/// to run and a simulation would not replay.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug, Default)]
struct GateInner {
    paused: AtomicBool,
    opened: Notify,
}

impl Gate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes the gate: gated calls wait until [`Gate::resume`].
    pub fn pause(&self) {
        self.inner.paused.store(true, Ordering::SeqCst);
    }

    /// Opens the gate, waking every waiting call (in the order they started waiting).
    pub fn resume(&self) {
        self.inner.paused.store(false, Ordering::SeqCst);
        self.inner.opened.notify_waiters();
    }

    /// Whether the gate is closed.
    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(Ordering::SeqCst)
    }

    /// Returns once the gate is open (at once if it is).
    pub async fn wait_open(&self) {
        loop {
            let opened = self.inner.opened.notified();
            tokio::pin!(opened);
            // Register before checking, so a `resume` between the check and the wait is seen.
            opened.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            opened.await;
        }
    }

    /// Runs `call` between two waits for the gate: a paused process neither sends nor sees
    /// the reply.
    async fn around<F: Future>(&self, call: F) -> F::Output {
        self.wait_open().await;
        let output = call.await;
        self.wait_open().await;
        output
    }
}

/// A [`LeaseStore`] whose every call waits for a [`Gate`] before and after.
#[derive(Clone, Debug)]
pub struct GatedStore<S> {
    inner: S,
    gate: Gate,
}

impl<S: LeaseStore> GatedStore<S> {
    /// Wraps `inner` behind `gate`.
    pub fn new(inner: S, gate: Gate) -> Self {
        Self { inner, gate }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for GatedStore<S> {
    async fn heartbeat(&self, client: &ClientId) -> Result<u64, StoreError> {
        self.gate.around(self.inner.heartbeat(client)).await
    }

    async fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        self.gate.around(self.inner.clients()).await
    }

    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        self.gate.around(self.inner.deregister(client)).await
    }

    async fn leases(&self, stream: &str) -> Result<Vec<Lease>, StoreError> {
        self.gate.around(self.inner.leases(stream)).await
    }

    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        self.gate.around(self.inner.lease(stream, shard)).await
    }

    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        let call = self.inner.create_if_absent(stream, shard, parents);
        self.gate.around(call).await
    }

    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        let call = self.inner.take(stream, shard, owner, expected_token);
        self.gate.around(call).await
    }

    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let call = self.inner.checkpoint(stream, tenure, checkpoint);
        self.gate.around(call).await
    }

    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        let call = self.inner.release(stream, tenure, checkpoint);
        self.gate.around(call).await
    }

    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        self.gate.around(self.inner.finish(stream, tenure)).await
    }

    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        let call = self.inner.delete_finished(stream, shard);
        self.gate.around(call).await
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
        self.gate.around(call).await
    }
}

/// A [`ShardSource`] whose every call — and every read of the readers it opens — waits for a
/// [`Gate`] before and after.
#[derive(Clone, Debug)]
pub struct GatedSource<S> {
    inner: S,
    gate: Gate,
}

impl<S: ShardSource> GatedSource<S> {
    /// Wraps `inner` behind `gate`.
    pub fn new(inner: S, gate: Gate) -> Self {
        Self { inner, gate }
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

#[async_trait]
impl<S: ShardSource> ShardSource for GatedSource<S> {
    fn stream_name(&self) -> &str {
        self.inner.stream_name()
    }

    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        self.gate.around(self.inner.list_shards()).await
    }

    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        let reader = self.gate.around(self.inner.open(shard, from)).await?;
        Ok(Box::new(GatedReader::new(reader, self.gate.clone())))
    }
}

/// A [`ShardReader`] whose every read waits for a [`Gate`] before and after.
pub struct GatedReader {
    inner: Box<dyn ShardReader>,
    gate: Gate,
}

impl GatedReader {
    /// Wraps `inner` behind `gate`.
    pub fn new(inner: Box<dyn ShardReader>, gate: Gate) -> Self {
        Self { inner, gate }
    }
}

impl std::fmt::Debug for GatedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedReader")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ShardReader for GatedReader {
    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError> {
        self.gate.around(self.inner.next_batch(max_records)).await
    }
}
