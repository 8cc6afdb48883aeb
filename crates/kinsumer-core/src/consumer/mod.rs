//! The public API — [`Consumer`]: how an application starts, watches and stops a member of the
//! fleet. The protocol itself runs in the supervisor (the `supervisor` module).
//!
//! A consumer is built from a [`Config`], a [`ShardSource`] and a [`LeaseStore`], then started
//! in one of two ways:
//! - [`Consumer::records`]: a `futures::Stream` of [`Record`](crate::Record)s, each acked by the caller
//!   (or on drop, with [`AckMode::OnDrop`](crate::AckMode::OnDrop));
//! - [`Consumer::run`]: a [`BatchHandler`] called concurrently across shards and in order within
//!   one; a batch is acked when the handler returns `Ok`, and retried when it fails.
//!
//! Once started, the supervisor heartbeats, watches who is alive, computes the shared
//! assignment, takes the leases assigned to it, hands off the ones assigned elsewhere, and runs
//! one tenure per held lease (the `tenure` module). [`Consumer::shutdown`] stops fetching, drains,
//! commits, releases every lease and deregisters, within `shutdown_timeout`. Dropping a started
//! consumer (or its record stream) without it does the same in the background, with a warning;
//! [`Consumer::abort`] is a crash: its leases expire after `lease_ttl` and the records since its
//! last commit are delivered again by the next owner. While it runs, work the application holds
//! but does not move is given up (see [`crate::stall`]), and the application can be told as
//! shards start and end ([`crate::lifecycle`]) and decide what happens to a batch its handler
//! keeps failing on ([`crate::failure`]).
//!
//! ```
//! use futures::StreamExt;
//! use kinsumer_core::{Config, Consumer};
//! use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = MemoryStream::new("orders", 2);
//! for i in 0..10 {
//!     stream.put(&format!("customer-{i}"), format!("order {i}"))?;
//! }
//! let config = Config::new("billing").with_client_id("worker-1");
//! let mut consumer = Consumer::new(config, stream.clone(), MemoryLeaseStore::new())?;
//! let mut records = consumer.records()?;
//! let mut seen = 0;
//! while let Some(record) = records.next().await {
//!     let record = record?;
//!     seen += 1;
//!     record.ack(); // after processing: the checkpoint only moves past acked records
//!     if seen == 10 {
//!         break;
//!     }
//! }
//! consumer.shutdown().await?; // drain, commit, release, deregister
//! # Ok(())
//! # }
//! ```

mod records;

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, info_span, warn};

pub use crate::handler::{BatchHandler, HandlerError};
pub use crate::shutdown::ShutdownHandle;
pub use crate::status::{ShardStatus, StatusHandle};
pub use records::Records;

use crate::config::{Config, ConfigError};
use crate::engine::{Delivery, Engine, StoppedBy};
use crate::error::ConsumerError;
use crate::failure::FailurePolicy;
use crate::health::Health;
use crate::layer::{Layered, Timeout, Traced};
use crate::lifecycle::ShardLifecycle;
use crate::membership::Beats;
use crate::metrics::Labels;
use crate::rng::{Rng, os_seed};
use crate::shutdown::Stop;
use crate::source::ShardSource;
use crate::stall::{PollClock, Watchdog};
use crate::store::{ClientId, LeaseStore};
use crate::supervisor::supervise;

/// Fetched batches waiting for the record stream (all shards together). Memory is bounded by
/// each tenure's tracker, which counts a record from its fetch; this only bounds the queue.
const RECORD_CHUNKS: usize = 64;

/// The supervisor's task. Aborted (a crash, as far as the fleet can tell) when dropped, unless
/// detached first.
type Running = AbortOnDropHandle<Result<(), ConsumerError>>;

/// A member of a consumer fleet. See the module docs.
pub struct Consumer {
    config: Config,
    source: Arc<dyn ShardSource>,
    store: Arc<dyn LeaseStore>,
    shutdown: Arc<watch::Sender<Stop>>,
    status: StatusHandle,
    running: Option<Running>,
    started: bool,
    lifecycle: Option<Arc<dyn ShardLifecycle>>,
    failure: Option<(u32, Arc<dyn FailurePolicy>)>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("application", &self.config.application)
            .field("client_id", &self.config.client_id)
            .field("stream", &self.source.stream_name())
            .field("started", &self.started)
            .finish()
    }
}

impl Consumer {
    /// A consumer of `source`'s stream with leases in `store`; checks the config first.
    pub fn new(
        config: Config,
        source: impl ShardSource,
        store: impl LeaseStore,
    ) -> Result<Self, ConsumerError> {
        Self::from_shared(config, Arc::new(source), Arc::new(store))
    }

    /// [`Consumer::new`] for a source and store already shared behind `Arc`s.
    pub fn from_shared(
        config: Config,
        source: Arc<dyn ShardSource>,
        store: Arc<dyn LeaseStore>,
    ) -> Result<Self, ConsumerError> {
        config.validate()?;
        // The application is named twice (here and when the store was opened): they must agree,
        // or this client would work in another application's rows.
        if let Some(bound) = store.application()
            && bound != config.application
        {
            return Err(ConfigError::Invalid {
                field: "application",
                rule: format!(
                    "must be the application the store was opened for: the config says {:?}, the store {bound:?}",
                    config.application
                ),
            }
            .into());
        }
        Ok(Self {
            config,
            source,
            store,
            shutdown: Arc::new(watch::channel(Stop::Run).0),
            status: StatusHandle::default(),
            running: None,
            started: false,
            lifecycle: None,
            failure: None,
        })
    }

    /// Calls `hooks` as each lease tenure starts and ends (see [`crate::lifecycle`]), with
    /// either way of consuming. Set before starting.
    pub fn with_lifecycle(mut self, hooks: impl ShardLifecycle) -> Self {
        self.lifecycle = Some(Arc::new(hooks));
        self
    }

    /// Asks `policy` what to do with a batch once the handler failed on it `after_attempts`
    /// times (at least 1), and after every failure from then on (see [`crate::failure`]).
    /// Without one, a failed batch is retried with back-off forever. For [`Consumer::run`].
    pub fn with_failure_policy(mut self, after_attempts: u32, policy: impl FailurePolicy) -> Self {
        self.failure = Some((after_attempts.max(1), Arc::new(policy)));
        self
    }

    /// This client's id.
    pub fn client_id(&self) -> &str {
        &self.config.client_id
    }

    /// A handle that shuts this consumer down gracefully (for use with [`Consumer::run`]).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// A live view of the leases this consumer holds.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    fn start(&mut self, delivery: Delivery) -> Result<Started, ConsumerError> {
        if self.started {
            return Err(ConsumerError::AlreadyStarted);
        }
        self.started = true;
        let health = Arc::new(Health::new(&self.config));
        let poll_clock = Arc::new(PollClock::new());
        let stopped_by = Arc::new(Mutex::new(None));
        let seed = self.config.rng_seed.unwrap_or_else(os_seed);
        let mut rng = Rng::new(seed);
        let incarnation = (rng.next_u64() >> 32) as u32;
        let engine = Arc::new(Engine {
            config: self.config.clone(),
            source: Arc::new(Layered::new(
                self.source.clone(),
                Traced(Timeout(self.config.call_timeout)),
            )),
            store: Arc::new(Layered::new(
                self.store.clone(),
                Traced(Timeout(self.config.call_timeout)),
            )),
            stream: self.source.stream_name().into(),
            me: ClientId::from(self.config.client_id.as_str()),
            delivery,
            health: health.clone(),
            stopped_by: stopped_by.clone(),
            status: self.status.clone(),
            rng: Mutex::new(rng),
            beats: Mutex::new(Beats::new(incarnation)),
            heartbeat_fatal: Mutex::new(None),
            watchdog: Arc::new(Watchdog::new(
                self.config.lease_ttl - self.config.safety_margin - self.config.heartbeat_interval,
            )),
            poll_clock: poll_clock.clone(),
            lifecycle: self.lifecycle.clone(),
            failure: self.failure.clone(),
            shutdown: self.shutdown.clone(),
            stop_error: Mutex::new(None),
            labels: Labels::new(
                &self.config.application,
                self.source.stream_name(),
                &self.config.client_id,
            ),
        });
        let span = info_span!("consumer", app = %self.config.application, client = %self.config.client_id, stream = %engine.stream);
        let task = tokio::spawn(supervise(engine, self.shutdown.subscribe()).instrument(span));
        self.running = Some(AbortOnDropHandle::new(task));
        Ok(Started {
            health,
            stopped_by,
            poll_clock,
        })
    }

    /// Starts the consumer and returns its records as a stream. The stream ends after
    /// [`Consumer::shutdown`], or with one `Err` if the consumer stopped on a fatal error.
    /// Must be called inside a tokio runtime.
    pub fn records(&mut self) -> Result<Records, ConsumerError> {
        let (tx, rx) = mpsc::channel(RECORD_CHUNKS);
        let started = self.start(Delivery::Stream(tx))?;
        Ok(Records {
            rx,
            run: None,
            next: 0,
            polls: 0,
            health: started.health,
            stopped_by: started.stopped_by,
            poll_clock: started.poll_clock,
            shutdown: self.shutdown.clone(),
            silent_drop: self.config.faults.silent_drops,
        })
    }

    /// Starts the consumer with a batch handler and runs until a [`ShutdownHandle`] stops it
    /// (then `Ok`) or a fatal error does (then that error).
    pub async fn run(mut self, handler: impl BatchHandler) -> Result<(), ConsumerError> {
        self.start(Delivery::Handler(Arc::new(handler)))?;
        self.join().await
    }

    /// Stops fetching, waits up to `drain_timeout` for handed-out records to be acked, commits,
    /// releases every lease and deregisters. Returns the error that stopped the consumer, if one
    /// did.
    ///
    /// Bounded by `shutdown_timeout` (25 s by default) whatever the store does.
    ///
    /// You need not poll the record stream while it runs: no record is handed out once
    /// shutdown starts (the next owner delivers what was not), and the stream ends. Do ack the
    /// records you hold — from another task if this one awaits `shutdown` — or they are
    /// delivered again by the next owner after `drain_timeout`. Dropping `Records` during
    /// shutdown is fine.
    pub async fn shutdown(mut self) -> Result<(), ConsumerError> {
        self.shutdown_handle().shutdown();
        self.join().await
    }

    /// Stops at once, as a crash (`kill -9`) would: nothing is committed or released, the
    /// leases move to other clients after `lease_ttl`, and the records acked since the last
    /// commit are delivered again. For tests and emergencies; use [`Consumer::shutdown`].
    pub fn abort(mut self) {
        self.shutdown.send_replace(Stop::Abort);
        self.running = None; // aborts the supervisor, and with it every tenure
    }

    async fn join(&mut self) -> Result<(), ConsumerError> {
        let Some(task) = self.running.as_mut() else {
            return Ok(());
        };
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(ConsumerError::Panicked(e.to_string())),
        };
        if let Some(running) = self.running.take() {
            drop(running.detach()); // it ended
        }
        result
    }
}

/// Dropping a started consumer without [`Consumer::shutdown`] shuts it down gracefully in the
/// background (bounded by `shutdown_timeout`), with a warning: its supervisor runs on as a task
/// of the runtime it was started on. If that runtime is shut down too (the end of `main`), the
/// task goes with it and the consumer ends as a crash: nothing more is released, its leases
/// move after `lease_ttl`. Call `shutdown().await` to be sure the release happened.
impl Drop for Consumer {
    fn drop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        if self.config.faults.silent_drops || *self.shutdown.borrow() == Stop::Abort {
            return; // dropping `running` aborts the supervisor: a crash
        }
        if *self.shutdown.borrow() == Stop::Run {
            warn!(
                client = %self.config.client_id,
                "a started Consumer was dropped without shutdown(): shutting it down in the background"
            );
            self.shutdown_handle().shutdown();
        }
        drop(running.detach()); // runs on by itself
    }
}

/// What a started consumer shares with its record stream.
struct Started {
    health: Arc<Health>,
    stopped_by: StoppedBy,
    poll_clock: Arc<PollClock>,
}
