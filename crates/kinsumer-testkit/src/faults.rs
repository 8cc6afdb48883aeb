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
//!     paused_client.heartbeat(&ClientId::from("sleepy"), 1).await
//! });
//! tokio::time::sleep(Duration::from_secs(30)).await;
//! assert!(store.peek_clients().is_empty(), "nothing is sent while paused");
//!
//! gate.resume();
//! heartbeat.await??;
//! assert_eq!(store.peek_clients().len(), 1);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kinsumer_core::layer::{Layer, Layered, Op};
use kinsumer_core::source::SourceError;
use kinsumer_core::store::StoreError;
use tokio::sync::Notify;

/// A shared pause switch, open when created. Cheap to clone: clones share the switch.
///
/// Built on `Notify` rather than a `watch` channel on purpose: `watch` picks one of its
/// internal wait lists at random, so the order in which many waiters wake would differ from run
/// to run and a simulation would not replay.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
    /// Gate only the calls of these names (`"heartbeat"`, `"read"`, ...); all when `None`.
    only: Option<&'static [&'static str]>,
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

    /// A gate that holds only the calls named in `ops` — `Gate::for_ops(&["heartbeat"])`
    /// stalls a client's heartbeats while everything else it does goes on. The names are those
    /// a [`Layer`] sees: the `LeaseStore` and `ShardSource` method names, and `"read"`.
    pub fn for_ops(ops: &'static [&'static str]) -> Self {
        Self {
            only: Some(ops),
            ..Self::default()
        }
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
}

impl Gate {
    async fn around<F: Future>(&self, op: &'static str, call: F) -> F::Output {
        if self.only.is_some_and(|only| !only.contains(&op)) {
            return call.await;
        }
        self.wait_open().await;
        let output = call.await;
        self.wait_open().await;
        output
    }
}

/// A gate is a [`Layer`]: every call waits for it to be open before it is sent and before
/// its result is seen — a paused process neither sends nor sees the reply.
impl Layer for Gate {
    async fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> Result<T, StoreError> {
        self.around(op.name, call).await
    }

    /// A source call waits only before it is sent. Reading a stream changes nothing on the
    /// server, so holding the request is the same as holding the reply; and a reader moves its
    /// position in the same step that returns the batch (a Kinesis iterator is replaced only
    /// when the reply is parsed), which a wait after the in-memory reader moved would split —
    /// a timeout there would drop a batch the reader had already passed.
    async fn source_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, SourceError>> + Send + 'a,
    ) -> Result<T, SourceError> {
        if self.only.is_none_or(|only| only.contains(&op.name)) {
            self.wait_open().await;
        }
        call.await
    }
}

/// A [`LeaseStore`](kinsumer_core::store::LeaseStore) whose every call waits for a [`Gate`]
/// before and after: `GatedStore::new(store, gate)`.
pub type GatedStore<S> = Layered<Gate, S>;

/// A [`ShardSource`](kinsumer_core::source::ShardSource) whose every call, and every read of
/// its readers, waits for a [`Gate`] before it is sent: `GatedSource::new(source, gate)`.
pub type GatedSource<S> = Layered<Gate, S>;
