//! The public API — [`Consumer`] — and the supervisor that runs the protocol for it.
//!
//! A consumer is built from a [`Config`], a [`ShardSource`] and a [`LeaseStore`], then started
//! in one of two ways:
//! - [`Consumer::records`]: a `futures::Stream` of [`Record`]s, each acked by the caller
//!   (or on drop, with [`AckMode::OnDrop`](crate::AckMode::OnDrop));
//! - [`Consumer::run`]: a [`BatchHandler`] called concurrently across shards and in order within
//!   one; a batch is acked when the handler returns `Ok`, and retried when it fails.
//!
//! Once started, the supervisor heartbeats, watches who is alive, computes the shared
//! assignment, takes the leases assigned to it, hands off the ones assigned elsewhere, and runs
//! one tenure per held lease (the `shard` module). [`Consumer::shutdown`] stops fetching, drains,
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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, sleep};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::assignment::assign;
use crate::config::Config;
use crate::error::ConsumerError;
use crate::failure::FailurePolicy;
use crate::layer::{Layered, Timeout};
use crate::lifecycle::{EndReason, ShardEnding, ShardLifecycle};
use crate::membership::{Beats, Membership};
use crate::metrics::{self, Labels};
use crate::position::{Checkpoint, Position};
use crate::quarantine::Quarantine;
use crate::record::{AckTracker, Record, ShardBatch};
use crate::rng::{Rng, os_seed};
use crate::shard::{Ask, Outcome, backoff_delay, run_tenure};
use crate::source::{ShardId, ShardSource, SourceError};
use crate::stall::{PollClock, Stall, StallKind, StallLog, Watchdog, Watched};
use crate::store::{ClientId, CorruptRow, Lease, LeaseStore, StoreError, Tenure};

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

/// How records leave the engine.
pub(crate) enum Delivery {
    /// Each fetched batch goes as one chunk: one channel slot per batch, not per record.
    Stream(mpsc::Sender<Vec<Record>>),
    Handler(Arc<dyn BatchHandler>),
}

/// This client's own heartbeat health, shared with the record stream so a self-fenced client
/// stops handing out records even while its supervisor is stuck.
///
/// Fencing advances an *epoch*: records fetched in an older epoch are never handed out, and
/// the supervisor drops every tenure started before it. So once a client noticed it may have
/// been declared dead, nothing it fetched before reaches the caller.
#[derive(Debug)]
pub(crate) struct Health {
    ttl_minus_margin: std::time::Duration,
    /// `EngineFaults::no_self_fencing`: a broken engine, for tests.
    never_fence: bool,
    /// The wall clock, which — unlike the monotonic clock on Linux — runs on while the host is
    /// suspended. (A function, so a test can move it.)
    wall: fn() -> SystemTime,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// When the last successful heartbeat was *sent* (the earliest it could have been applied).
    last_ok: Option<Instant>,
    /// The same moment on the wall clock.
    last_ok_wall: Option<SystemTime>,
    epoch: u64,
    /// Fencing was observed and the epoch advanced for it; cleared by a fresh heartbeat.
    fenced: bool,
}

impl Health {
    fn new(config: &Config) -> Self {
        Self {
            ttl_minus_margin: config.lease_ttl - config.safety_margin,
            never_fence: config.faults.no_self_fencing,
            wall: SystemTime::now,
            state: Mutex::new(HealthState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether our last good heartbeat is too old. By the monotonic clock, and by the wall
    /// clock too: after a host suspend the monotonic clock has not moved (Linux stops it), so a
    /// client waking up would think it was fine while its leases were taken. A wall clock
    /// stepped forward by NTP can fence us once for nothing — safe; stepped back, it is ignored.
    fn expired(&self, s: &HealthState, now: Instant) -> bool {
        let Some(ok) = s.last_ok else {
            return true;
        };
        let wall_elapsed = s
            .last_ok_wall
            .and_then(|w| (self.wall)().duration_since(w).ok())
            .unwrap_or_default();
        now.saturating_duration_since(ok).max(wall_elapsed) >= self.ttl_minus_margin
    }

    /// Checks for fencing at `now`, advancing the epoch the first time it is seen.
    fn check(&self, s: &mut HealthState, now: Instant) -> bool {
        if self.never_fence {
            return s.last_ok.is_none();
        }
        if s.last_ok.is_some() && self.expired(s, now) {
            if !s.fenced {
                s.fenced = true;
                s.epoch += 1;
                warn!("self-fenced: own heartbeat has not succeeded for lease_ttl - safety_margin");
            }
            return true;
        }
        s.last_ok.is_none()
    }

    /// The wall clock now (see `wall`).
    fn wall_now(&self) -> SystemTime {
        (self.wall)()
    }

    /// Records a heartbeat that succeeded and was sent at `sent` (`sent_wall` on the wall clock).
    fn heartbeat_ok(&self, sent: Instant, sent_wall: SystemTime) {
        let mut s = self.lock();
        // A success learned after a gap long enough to have fenced us counts as fencing too:
        // judged now, when we learn of it, not at its sending — heartbeats overlap, so one sent
        // just before a pause ended says nothing about the pause.
        self.check(&mut s, Instant::now());
        if s.last_ok.is_none_or(|prev| sent >= prev) {
            s.last_ok = Some(sent);
            s.last_ok_wall = Some(sent_wall);
        }
        if !self.expired(&s, Instant::now()) {
            s.fenced = false;
        }
    }

    fn is_fenced(&self, now: Instant) -> bool {
        let mut s = self.lock();
        self.check(&mut s, now)
    }

    fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Whether a record fetched in `epoch` may be handed out now.
    pub(crate) fn may_hand_out(&self, epoch: u64) -> bool {
        self.may_hand_out_at(epoch, Instant::now())
    }

    /// [`Self::may_hand_out`] as of `now` (read once for several checks).
    pub(crate) fn may_hand_out_at(&self, epoch: u64, now: Instant) -> bool {
        let mut s = self.lock();
        !self.check(&mut s, now) && s.epoch == epoch
    }
}

/// What one held shard looks like, for [`StatusHandle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub shard: ShardId,
    /// The fencing token of this tenure.
    pub token: u64,
    /// Records fetched in this tenure.
    pub fetched: u64,
    /// The last `millis_behind_latest` the source reported.
    pub millis_behind_latest: Option<u64>,
    /// The watermark (the last record up to which all are acked).
    pub watermark: Option<Position>,
    /// A handoff is draining this shard.
    pub releasing: bool,
}

/// A live view of one consumer: the leases it holds and how they are doing.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle {
    board: Arc<Mutex<BTreeMap<ShardId, ShardStatus>>>,
    trackers: Arc<Mutex<BTreeMap<ShardId, Arc<AckTracker>>>>,
    stalls: Arc<StallLog>,
    /// Out of the fleet because its application stalled (see [`Supervisor::leave_until`]).
    left_fleet: Arc<std::sync::atomic::AtomicBool>,
}

impl StatusHandle {
    /// The last stalls this consumer found (up to 32, oldest first): what stalled, on which
    /// shard, the record that held it and for how long. See [`crate::stall`].
    pub fn stalls(&self) -> Vec<Stall> {
        self.stalls.all()
    }

    /// Whether the consumer released everything and left the fleet because its application
    /// stalled: its record stream was not polled (it rejoins on the next poll), or its handler
    /// hung twice within 2 × `stall_timeout` (it rejoins after `stall_timeout`).
    pub fn has_left_fleet(&self) -> bool {
        self.left_fleet.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The shards this consumer holds now, with their progress.
    pub fn shards(&self) -> Vec<ShardStatus> {
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        let trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        board
            .values()
            .map(|s| {
                let mut s = s.clone();
                s.watermark = trackers.get(&s.shard).and_then(|t| t.watermark());
                s
            })
            .collect()
    }

    fn update(&self, shard: &ShardId, f: impl FnOnce(&mut ShardStatus)) {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = board.get_mut(shard) {
            f(s);
        }
    }

    fn insert(&self, tenure: &Tenure, tracker: Arc<AckTracker>) {
        let status = ShardStatus {
            shard: tenure.shard.clone(),
            token: tenure.token,
            fetched: 0,
            millis_behind_latest: None,
            watermark: None,
            releasing: false,
        };
        self.board
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenure.shard.clone(), status);
        self.trackers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenure.shard.clone(), tracker);
    }

    fn remove(&self, shard: &ShardId) {
        self.board
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(shard);
        self.trackers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(shard);
    }
}

/// Where the supervisor leaves the fatal error that stopped it, for the record stream.
type StoppedBy = Arc<Mutex<Option<ConsumerError>>>;

/// Everything the supervisor and its tenures share.
pub(crate) struct Engine {
    pub(crate) config: Config,
    pub(crate) source: Arc<dyn ShardSource>,
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) stream: Arc<str>,
    pub(crate) me: ClientId,
    pub(crate) delivery: Delivery,
    pub(crate) health: Arc<Health>,
    /// The fatal error that stopped the consumer, for the record stream to yield.
    stopped_by: StoppedBy,
    pub(crate) labels: Labels,
    status: StatusHandle,
    rng: Mutex<Rng>,
    /// The values our heartbeats write: never the same twice, not even after a restart.
    beats: Mutex<Beats>,
    /// A heartbeat failed with a fatal error: the supervisor stops on it.
    heartbeat_fatal: Mutex<Option<StoreError>>,
    /// Stops heartbeats when the supervisor is stuck.
    watchdog: Arc<Watchdog>,
    /// When the record stream was last polled (record-stream consumers).
    poll_clock: Arc<PollClock>,
    /// The application's lifecycle hooks.
    pub(crate) lifecycle: Option<Arc<dyn ShardLifecycle>>,
    /// The failure policy, and after how many failed attempts it is asked.
    pub(crate) failure: Option<(u32, Arc<dyn FailurePolicy>)>,
    /// Asks the supervisor to stop (a failure policy that gave up).
    shutdown: Arc<watch::Sender<Stop>>,
    /// Why the application asked to stop, if it was an error.
    stop_error: Mutex<Option<ConsumerError>>,
}

impl Engine {
    /// The delay before retry number `attempt`, with seeded jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> std::time::Duration {
        let jitter = self.rng.lock().unwrap_or_else(|e| e.into_inner()).unit();
        backoff_delay(attempt, self.config.max_backoff, jitter)
    }

    pub(crate) fn may_hand_out(&self, epoch: u64) -> bool {
        self.health.may_hand_out(epoch)
    }

    /// Sends one heartbeat, and records it in our health if it landed.
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let beat = self
            .beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_beat();
        let (sent, sent_wall) = (Instant::now(), self.health.wall_now());
        match self.store.heartbeat(&self.me, beat).await {
            Ok(()) => {
                self.health.heartbeat_ok(sent, sent_wall);
                Ok(())
            }
            Err(e) => {
                if matches!(e, StoreError::Fatal(_)) {
                    *self
                        .heartbeat_fatal
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    /// The fatal error a heartbeat met, if one did.
    fn heartbeat_fatal(&self) -> Option<StoreError> {
        self.heartbeat_fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the consumer gracefully, returning `error` (a failure policy gave up).
    pub(crate) fn stop_with(&self, error: ConsumerError) {
        warn!(error = %error, "stopping the consumer");
        self.stop_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
        ShutdownHandle(self.shutdown.clone()).shutdown();
    }

    /// Calls the `ending` hook of `tenure`, if there is one, dated as an application call (a
    /// hook that hangs is a stall) and bounded by `limit`.
    pub(crate) async fn hook_ending(
        &self,
        tenure: &Tenure,
        tracker: &AckTracker,
        reason: EndReason,
        limit: Duration,
    ) {
        let Some(hooks) = &self.lifecycle else {
            return;
        };
        if !tracker.claim_ending() {
            return; // told already (a tenure dropped while its own hook ran)
        }
        let ending = ShardEnding {
            shard: tenure.shard.clone(),
            token: tenure.token,
            tenure: tenure.clone(),
            reason,
        };
        tracker.set_call_since(Some(Instant::now()));
        if tokio::time::timeout(limit, hooks.ending(ending))
            .await
            .is_err()
        {
            warn!(tenure = %tenure, reason = ?reason, limit_ms = limit.as_millis() as u64, "the ending hook did not return in time; going on without it");
        }
        tracker.set_call_since(None);
    }

    /// Logs, counts and lists a stall.
    pub(crate) fn report_stall(&self, stall: Stall) {
        warn!(
            kind = stall.kind.label(),
            shard = ?stall.shard.as_ref().map(|s| s.as_str()),
            record = ?stall.record,
            stalled_s = stall.stalled_for.as_secs_f64(),
            "stalled: {}",
            match stall.kind {
                StallKind::RecordNotAcked => "a record handed out was not acked within stall_timeout; releasing its shard",
                StallKind::HandlerHung => "the batch handler did not return within stall_timeout; cancelling it and releasing the shard",
                StallKind::NotPolled => "the record stream was not polled within stall_timeout while records waited; releasing every lease and leaving the fleet until it is polled again",
                StallKind::SupervisorStuck => "the supervisor has not completed a step; heartbeats stop, so this client fences itself",
            }
        );
        self.labels
            .client_counter(metrics::STALLS, &[("kind", stall.kind.label())])
            .increment(1);
        self.status.stalls.push(stall);
    }

    pub(crate) fn note_fetch(&self, shard: &ShardId, records: usize, behind: Option<u64>) {
        self.status.update(shard, |s| {
            s.fetched += records as u64;
            if behind.is_some() {
                s.millis_behind_latest = behind;
            }
        });
    }
}

/// What the application asked of a running consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Nothing: run.
    Run,
    /// Shut down gracefully.
    Graceful,
    /// Stop at once, as a crash would.
    Abort,
}

/// Asks a running consumer to shut down gracefully; cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<Stop>>);

impl ShutdownHandle {
    /// Starts a graceful shutdown: stop fetching, drain, commit, release, deregister.
    pub fn shutdown(&self) {
        self.0.send_if_modified(|s| {
            let run = *s == Stop::Run;
            if run {
                *s = Stop::Graceful;
            }
            run
        });
    }

    /// Stops the consumer at once, as a crash (`kill -9`) would: nothing is committed or
    /// released, its leases move after `lease_ttl`, and the records acked since its last commit
    /// are delivered again. For tests and emergencies; [`ShutdownHandle::shutdown`] otherwise.
    pub fn abort(&self) {
        self.0.send_replace(Stop::Abort);
    }
}

/// The supervisor's task. Aborted (a crash, as far as the fleet can tell) when dropped, unless
/// detached first.
struct Running(Option<tokio::task::JoinHandle<Result<(), ConsumerError>>>);

impl Running {
    /// Lets the task run on by itself (dropping a `JoinHandle` detaches it).
    fn detach(mut self) {
        self.0.take();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

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
                Timeout(self.config.call_timeout),
            )),
            store: Arc::new(Layered::new(
                self.store.clone(),
                Timeout(self.config.call_timeout),
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
        self.running = Some(Running(Some(task)));
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
            chunk: Vec::new().into_iter(),
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
        let Some(task) = self.running.as_mut().and_then(|r| r.0.as_mut()) else {
            return Ok(());
        };
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(ConsumerError::Panicked(e.to_string())),
        };
        if let Some(running) = self.running.take() {
            running.detach(); // it ended
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
        running.detach();
    }
}

/// What a started consumer shares with its record stream.
struct Started {
    health: Arc<Health>,
    stopped_by: StoppedBy,
    poll_clock: Arc<PollClock>,
}

/// The records of a started consumer. See [`Consumer::records`].
pub struct Records {
    rx: mpsc::Receiver<Vec<Record>>,
    /// The rest of the chunk being handed out.
    chunk: std::vec::IntoIter<Record>,
    health: Arc<Health>,
    stopped_by: StoppedBy,
    poll_clock: Arc<PollClock>,
    shutdown: Arc<watch::Sender<Stop>>,
    /// `EngineFaults::silent_drops`.
    silent_drop: bool,
}

/// Dropping the record stream of a running consumer shuts the consumer down gracefully (with a
/// warning): nobody will take its records any more, so its leases go to clients that will.
impl Drop for Records {
    fn drop(&mut self) {
        if self.silent_drop || *self.shutdown.borrow() != Stop::Run || self.rx.is_closed() {
            return;
        }
        warn!("the record stream of a running consumer was dropped: shutting the consumer down");
        ShutdownHandle(self.shutdown.clone()).shutdown();
    }
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").finish_non_exhaustive()
    }
}

impl Stream for Records {
    type Item = Result<Record, ConsumerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_clock.polled(Instant::now());
        loop {
            // Hand out only records whose tenure is still ours: after a handoff or a self-fence,
            // the next owner delivers them. Checked record by record, as each is handed out.
            while let Some(mut record) = self.chunk.next() {
                // One clock read for both checks: this is the per-record path.
                let now = Instant::now();
                if self.health.may_hand_out_at(record.from.epoch, now)
                    && record.from.tracker.hand_out_range_at(record.index, 1, now)
                {
                    record.done = false;
                    self.poll_clock.set_holding(self.chunk.len() > 0);
                    return Poll::Ready(Some(Ok(record)));
                }
            }
            self.poll_clock.set_holding(false);
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.chunk = chunk.into_iter(),
                Poll::Ready(None) => {
                    let fatal = self
                        .stopped_by
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    return Poll::Ready(fatal.map(Err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One held lease.
struct Held {
    tenure: Tenure,
    /// The row as the take left it: what a read shows while nobody else changed it.
    taken: Lease,
    tracker: Arc<AckTracker>,
    ask: watch::Sender<Ask>,
    task: AbortHandle,
}

/// The supervisor's view of the world between ticks.
struct Supervisor {
    engine: Arc<Engine>,
    /// The engine's store and source, as the watchdog sees the supervisor's calls.
    store: Arc<dyn LeaseStore>,
    source: Arc<dyn ShardSource>,
    /// `None` while out of the fleet (and after shutdown began).
    heartbeat: Option<Heartbeat>,
    membership: Membership,
    leases: BTreeMap<ShardId, Lease>,
    held: BTreeMap<ShardId, Held>,
    /// Task id → shard, to attribute a panicked tenure.
    task_shard: BTreeMap<tokio::task::Id, ShardId>,
    /// Shards assigned to us but still held by a live client that is handing them off.
    waiting: BTreeSet<ShardId>,
    /// Shards whose tenure failed: not before this instant, after this many failures.
    retry: BTreeMap<ShardId, (Instant, u32)>,
    last_full: Option<Instant>,
    /// How long the last few full reads took: the store's own report of how busy it is.
    full_read_took: std::collections::VecDeque<Duration>,
    /// When the read that gave each row of `leases` arrived. A takeover rests on a read of the
    /// clients sent after it (DESIGN §4.1).
    row_read_at: BTreeMap<ShardId, Instant>,
    /// The shards of the stream's last listing (`None` before the first): a parent without a
    /// lease row is gone only if the stream no longer lists it — a paged, non-snapshot read of
    /// the leases may simply have missed its row.
    listed: Option<BTreeSet<ShardId>>,
    last_sync: Option<Instant>,
    /// A full read is wanted (a lost race, a tenure ended, an error): paced, see `full_read_due`.
    need_full: bool,
    /// A full read is needed at once: the live set changed, so the plan did.
    urgent_full: bool,
    need_sync: bool,
    /// The rest of the last plan's takes, carried out a burst per tick between full reads.
    backlog: Vec<ShardId>,
    epoch_seen: u64,
    /// The live clients at the last tick, to notice deaths without waiting for a full read.
    last_alive: Vec<ClientId>,
    /// Leases we have seen owned by another client: free now, they were handed off.
    seen_owned: BTreeSet<ShardId>,
    /// Shards we gave up for a stall to another client, until when: not taken back meanwhile
    /// unless handed to us by name — our plan may still give them to us, and the client we
    /// named must get there first (it learns of them at its next full read, within a
    /// `rebalance_interval` or two). Given up to nobody (we are alone), a shard is taken back
    /// at once: a new tenure, with the hung call cancelled.
    gave_up: BTreeMap<ShardId, Instant>,
    /// When the application last hung ([`StallKind::HandlerHung`]).
    last_hang: Option<Instant>,
    /// Lease rows set aside: they do not decode, or the store refused to take them.
    bad_leases: Quarantine,
    /// Client rows set aside: they do not decode (the client counts as having no row).
    bad_clients: Quarantine,
    /// A fatal error met inside a tick (a take the store refused for good): stops the consumer.
    fatal: Option<ConsumerError>,
    /// Our last plan gave free leases to other clients. They should take them within a poll;
    /// if a lease is still free two polls later, the plans disagree — two clients read the
    /// rows around one's takes, each planned the lease for the other — so we read again.
    handed_to_others: bool,
}

type Tenures = JoinSet<(ShardId, Outcome)>;

/// Fetched batches waiting for the record stream (all shards together). Memory is bounded by
/// each tenure's tracker, which counts a record from its fetch; this only bounds the queue.
const RECORD_CHUNKS: usize = 64;

/// Up to this many awaited leases are polled one by one between full reads.
const WAITING_POLL_LIMIT: usize = 8;

/// At most this many takes per tick; the rest of the plan waits for the next tick.
const TAKES_PER_TICK: usize = 64;

/// A wanted full read waits until the fleet's full reads, each as slow as our last, would keep
/// the store busy at most half the time: `FULL_READ_PACE × live clients × a typical read's
/// duration` — the median of the last `FULL_READ_SAMPLES`, so one slow read (a partition that
/// healed just in time) does not stall a client for minutes.
const FULL_READ_PACE: u32 = 2;

/// How many full reads the pace looks back on.
const FULL_READ_SAMPLES: usize = 5;

/// The pace never exceeds this many `rebalance_interval`s: a bound on how long a change the
/// client cannot see any other way (a shard freed without a change of the live set) waits.
const FULL_READ_PACE_CAP: u32 = 6;

fn is_fatal(e: &ConsumerError) -> bool {
    matches!(
        e,
        ConsumerError::Source(SourceError::Fatal(_))
            | ConsumerError::Source(SourceError::Trimmed { .. })
            | ConsumerError::Store(StoreError::Fatal(_))
    )
}

/// Registers (a first heartbeat), retrying until it lands; `false` if asked to stop first.
/// Before anything else, so others see us before we take a lease.
async fn register(
    engine: &Engine,
    shutdown: &mut watch::Receiver<Stop>,
) -> Result<bool, ConsumerError> {
    let mut attempt: u32 = 0;
    loop {
        if *shutdown.borrow() != Stop::Run {
            return Ok(false);
        }
        match engine.heartbeat().await {
            Ok(()) => break,
            Err(StoreError::Fatal(m)) => return Err(StoreError::Fatal(m).into()),
            Err(e) => {
                attempt = attempt.saturating_add(1);
                warn!(error = %e, "registering failed; retrying");
                sleep(engine.backoff(attempt)).await;
            }
        }
    }
    info!("registered");
    Ok(true)
}

/// The supervisor: register, then tick until shutdown or a fatal error.
async fn supervise(
    engine: Arc<Engine>,
    mut shutdown: watch::Receiver<Stop>,
) -> Result<(), ConsumerError> {
    let cfg = engine.config.clone();
    if !register(&engine, &mut shutdown).await? {
        return Ok(());
    }
    // The supervisor's own calls tell the watchdog it waits for a call, not that it is stuck.
    let watched = Watched(engine.watchdog.clone());
    let mut sup = Supervisor {
        store: Arc::new(Layered::new(engine.store.clone(), watched.clone())),
        source: Arc::new(Layered::new(engine.source.clone(), watched)),
        heartbeat: Some(Heartbeat::start(&engine)),
        membership: Membership::new(if cfg.faults.hasty_death {
            cfg.lease_ttl / 2
        } else {
            cfg.lease_ttl
        }),
        leases: BTreeMap::new(),
        held: BTreeMap::new(),
        task_shard: BTreeMap::new(),
        waiting: BTreeSet::new(),
        retry: BTreeMap::new(),
        last_full: None,
        full_read_took: std::collections::VecDeque::new(),
        row_read_at: BTreeMap::new(),
        listed: None,
        last_sync: None,
        need_full: true,
        urgent_full: true,
        need_sync: true,
        backlog: Vec::new(),
        epoch_seen: engine.health.epoch(),
        last_alive: Vec::new(),
        seen_owned: BTreeSet::new(),
        gave_up: BTreeMap::new(),
        last_hang: None,
        bad_leases: Quarantine::new("lease"),
        bad_clients: Quarantine::new("client"),
        fatal: None,
        handed_to_others: false,
        engine,
    };
    let mut tasks: Tenures = JoinSet::new();
    let mut tick = tokio::time::interval(cfg.membership_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        sup.engine.watchdog.pet();
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                let stop = if changed.is_err() { Stop::Graceful } else { *shutdown.borrow() };
                match stop {
                    Stop::Run => {}
                    Stop::Graceful => {
                        let error = sup.engine.stop_error.lock().unwrap_or_else(|e| e.into_inner()).take();
                        break error.map_or(Ok(()), Err);
                    }
                    Stop::Abort => {
                        sup.abort();
                        return Ok(());
                    }
                }
            }
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                if let Err(e) = sup.on_tenure_end(joined) {
                    break Err(e);
                }
            }
            _ = tick.tick() => {
                sup.stuck_on_purpose().await;
                let rejoin = if sup.not_polled() {
                    Some(Rejoin::WhenPolled)
                } else if sup.release_stalled() {
                    cfg.stall_timeout.map(Rejoin::After)
                } else {
                    None
                };
                if let Some(rejoin) = rejoin {
                    match sup.leave_until(&mut tasks, &mut shutdown, rejoin).await {
                        Ok(true) => continue,
                        Ok(false) => return Ok(()),
                        Err(e) => break Err(e),
                    }
                }
                if let Err(e) = sup.step(&mut tasks).await {
                    break Err(e);
                }
            }
        }
    };
    sup.shutdown(&mut tasks, EndReason::ShuttingDown).await;
    if let Err(e) = &result {
        warn!(error = %e, "stopped on a fatal error");
        *sup.engine
            .stopped_by
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
    }
    result
}

/// When a client that left the fleet for a stall comes back.
#[derive(Clone, Copy, Debug)]
enum Rejoin {
    /// On the next poll of the record stream ([`StallKind::NotPolled`]).
    WhenPolled,
    /// After this long (a handler that hung twice: the application looks unhealthy).
    After(Duration),
}

/// The heartbeat task; aborted when dropped.
struct Heartbeat(Option<tokio::task::JoinHandle<()>>);

impl Heartbeat {
    fn start(engine: &Arc<Engine>) -> Self {
        Self(Some(tokio::spawn(heartbeat_loop(engine.clone()))))
    }

    /// Stops it, and waits until it stopped (so no later heartbeat re-creates our row).
    async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// `live` with `me` in it, sorted: a client always counts itself.
fn with_me(mut live: Vec<ClientId>, me: &ClientId) -> Vec<ClientId> {
    if !live.contains(me) {
        live.push(me.clone());
        live.sort();
    }
    live
}

/// Heartbeats every `heartbeat_interval`, on its own task so a slow handler never delays it.
/// A heartbeat does not wait for the one before: one call stuck in the network (up to
/// `call_timeout`, which may be longer than `lease_ttl`) must not silence a client that can
/// still reach its store, or it fences itself and the fleet moves its leases for nothing.
async fn heartbeat_loop(engine: Arc<Engine>) {
    let mut in_flight = JoinSet::new();
    let mut tick = tokio::time::interval(engine.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = tick.tick() => {
                let now = Instant::now();
                let stuck = engine.watchdog.stuck_for(now).filter(|_| !engine.config.faults.no_watchdog);
                if let Some(stalled_for) = stuck {
                    // Not a beat while nothing we own is managed: we fence ourselves, and the
                    // fleet takes our leases after `lease_ttl`.
                    if engine.watchdog.first_warning() {
                        engine.report_stall(Stall {
                            kind: StallKind::SupervisorStuck,
                            shard: None,
                            record: None,
                            stalled_for,
                            at: now,
                        });
                    }
                } else {
                    let engine = engine.clone();
                    in_flight.spawn(async move {
                        if let Err(e) = engine.heartbeat().await {
                            warn!(error = %e, "heartbeat failed");
                        }
                    });
                }
            }
        }
    }
}

impl Supervisor {
    fn now_alive(&self) -> Vec<ClientId> {
        with_me(self.membership.alive(), &self.engine.me)
    }

    /// The shared assignment of `eligible` over `live`, sticky to the owners in the last read.
    fn plan(&self, live: &[ClientId], eligible: &[ShardId]) -> BTreeMap<ShardId, ClientId> {
        if self.engine.config.faults.greedy {
            let me = &self.engine.me;
            return eligible.iter().map(|s| (s.clone(), me.clone())).collect();
        }
        let current: BTreeMap<ShardId, ClientId> = eligible
            .iter()
            .filter_map(|s| {
                let owner = self.leases.get(s)?.owner.clone()?;
                live.contains(&owner).then(|| (s.clone(), owner))
            })
            .collect();
        assign(live, eligible, &current)
    }

    /// Whether we are fenced now, dropping every held lease (without a write) the first time a
    /// fence is seen. Checked before acting on anything read, since a read may have taken long.
    fn fenced(&mut self) -> bool {
        let health = self.engine.health.clone();
        let fenced = health.is_fenced(Instant::now());
        let epoch = health.epoch();
        if fenced || epoch != self.epoch_seen {
            if !self.held.is_empty() {
                warn!(
                    held = self.held.len(),
                    "self-fenced: own heartbeat failing; dropping every lease without writing"
                );
                self.engine
                    .labels
                    .client_counter(metrics::SELF_FENCED, &[])
                    .increment(1);
                for shard in self.held.keys().cloned().collect::<Vec<_>>() {
                    self.drop_held(&shard);
                }
            }
            self.waiting.clear();
            self.epoch_seen = epoch;
            // Back from a fence, what we knew is stale: read everything at once, not at the
            // pace of full reads (which may be slow after a read that hung in a partition).
            self.urgent_full = true;
        }
        fenced
    }

    /// One tick: check our own health, read the lease rows we need, then the client rows,
    /// then act.
    ///
    /// The order is the protocol's: a lease row is acted on only after a read of the clients
    /// *sent after* that row was read (DESIGN §4.1). Judging an owner dead from an older read
    /// could rob a client that heartbeated and re-took the lease in between.
    async fn step(&mut self, tasks: &mut Tenures) -> Result<(), ConsumerError> {
        // Checked even while fenced: a store that came back broken (table gone, access
        // revoked) fails every heartbeat, and must stop the consumer, not leave it idle.
        if let Some(e) = self.engine.heartbeat_fatal() {
            return Err(e.into());
        }
        if self.fenced() {
            return Ok(());
        }
        let cfg = self.engine.config.clone();
        let now = Instant::now();
        if self.need_sync
            || self
                .last_sync
                .is_none_or(|t| now.duration_since(t) >= cfg.shard_sync_interval)
        {
            if let Err(e) = self.sync_shards().await {
                return self.tolerate(e, "syncing shards");
            }
            self.last_sync = Some(now);
            self.need_sync = false;
            self.need_full = true;
        }
        let mut full = self.full_read_due(now);
        let mut polled = Vec::new();
        if full {
            if let Err(e) = self.read_leases().await {
                return self.tolerate(e, "reading leases");
            }
        } else if !self.waiting.is_empty() && self.waiting.len() <= WAITING_POLL_LIMIT {
            match self.poll_waiting().await {
                Ok(rows) => polled = rows,
                Err(e) => return self.tolerate(e, "polling a lease"),
            }
        }
        let changed = match self.read_clients().await {
            Ok(changed) => changed,
            Err(e) => return self.tolerate(e, "reading clients"),
        };
        if changed && !full {
            // A join, a leave or a death changes the plan: re-plan now, from rows read before
            // a second read of the clients.
            if let Err(e) = self.read_leases().await {
                return self.tolerate(e, "reading leases");
            }
            if let Err(e) = self.read_clients().await {
                return self.tolerate(e, "reading clients");
            }
            full = true;
        }
        if full {
            self.last_full = Some(now);
            self.rebalance(tasks).await;
        } else {
            self.take_backlog(tasks).await;
            for lease in polled {
                self.consider(lease, tasks).await;
            }
        }
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads every client row (dated by when the read was sent and when it came back).
    /// True when the live set changed: a join, a leave, or a death judged on our clock.
    async fn read_clients(&mut self) -> Result<bool, ConsumerError> {
        let sent = Instant::now();
        let read = self.store.clients().await?;
        let arrived = Instant::now();
        self.bad_clients.read(&read.corrupt, |_| None);
        self.set_corrupt_gauge();
        let joined_or_left = self.membership.observe(&read.rows, sent, arrived);
        let alive = self.membership.alive();
        self.engine
            .labels
            .client_gauge(metrics::LIVE_CLIENTS)
            .set(alive.len() as f64);
        let changed = joined_or_left || alive != self.last_alive;
        self.last_alive = alive;
        Ok(changed)
    }

    /// Whether to read every lease now. At once when the live set changed (the plan did too);
    /// otherwise paced by how long the last read took, so a fleet reading a slow store (many
    /// leases, an emulator, a throttled table) backs off instead of queueing behind itself:
    /// - a wanted read (`need_full`) after `FULL_READ_PACE × live × last read`, not sooner
    ///   than the next membership poll;
    /// - waiting for many handoffs at once (a fleet starting up), one read of every lease is
    ///   cheaper than one read per awaited lease: at the same pace, at most once a second;
    /// - the periodic safety-net read every `rebalance_interval`, or at that pace if slower.
    fn full_read_due(&self, now: Instant) -> bool {
        let Some(last) = self.last_full else {
            return true;
        };
        if self.urgent_full {
            return true;
        }
        let cfg = &self.engine.config;
        let live = self.last_alive.len().max(1) as u32;
        let pace = (self.typical_full_read() * FULL_READ_PACE * live)
            .min(cfg.rebalance_interval * FULL_READ_PACE_CAP);
        let since = now.duration_since(last);
        let many_waiting = self.waiting.len() > WAITING_POLL_LIMIT;
        let unclaimed = self.handed_to_others && since >= cfg.membership_poll_interval * 2;
        (self.need_full && since >= pace.max(cfg.membership_poll_interval))
            || (unclaimed && since >= pace)
            || (many_waiting && since >= pace.max(Duration::from_secs(1)))
            || since >= pace.max(cfg.rebalance_interval)
    }

    /// The median duration of the last few full reads.
    fn typical_full_read(&self) -> Duration {
        let mut took: Vec<Duration> = self.full_read_took.iter().copied().collect();
        took.sort();
        took.get(took.len() / 2).copied().unwrap_or_default()
    }

    /// Fatal errors stop the consumer; anything else is logged and retried on a later tick.
    fn tolerate(&mut self, e: ConsumerError, doing: &str) -> Result<(), ConsumerError> {
        if is_fatal(&e) {
            return Err(e);
        }
        warn!(error = %e, "{doing} failed; retrying on the next tick");
        self.need_full = true;
        Ok(())
    }

    /// Creates leases for new shards (parents first) and deletes finished leases of shards that
    /// left the stream.
    async fn sync_shards(&mut self) -> Result<(), ConsumerError> {
        let store = &self.store;
        let stream = &self.engine.stream;
        // Leases first, then the listing: "gone from the stream" is judged from a listing made
        // after the row was read. The other way round, a slow read could return a child's
        // finished row while the listing predates the child — and delete it, so the child
        // would be created again and read again from its start.
        let read = store.leases(stream).await?;
        let existing: BTreeMap<ShardId, Lease> = read
            .rows
            .into_iter()
            .map(|l| (l.shard.clone(), l))
            .collect();
        let shards = self.source.list_shards().await?;
        let listed: BTreeSet<&ShardId> = shards.iter().map(|s| &s.id).collect();
        self.listed = Some(shards.iter().map(|s| s.id.clone()).collect());
        // Parents before children, so a child's lease never exists without its parents'.
        // A row that does not decode exists all the same: never created again over it.
        let mut created: BTreeSet<ShardId> = existing.keys().cloned().collect();
        created.extend(
            read.corrupt
                .iter()
                .filter_map(|r| r.id.as_deref().map(ShardId::from)),
        );
        let mut pending: Vec<_> = shards.iter().filter(|s| !created.contains(&s.id)).collect();
        pending.sort_by(|a, b| a.id.cmp(&b.id));
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for shard in pending {
                let parents_ready = shard
                    .parents
                    .iter()
                    .all(|p| created.contains(p) || !listed.contains(p));
                if parents_ready {
                    match store
                        .create_if_absent(stream, &shard.id, &shard.parents)
                        .await
                    {
                        Ok(_) => debug!(shard = %shard.id, "lease created"),
                        // It exists (written since our read) but does not decode: set aside
                        // by the next read of the leases; the other shards go on.
                        Err(StoreError::Corrupt { key, reason }) => {
                            warn!(shard = %shard.id, key = %key, reason = %reason, "a new shard's lease row exists but does not decode");
                        }
                        Err(e) => return Err(e.into()),
                    }
                    created.insert(shard.id.clone());
                } else {
                    rest.push(shard);
                }
            }
            if rest.len() == before {
                break; // a parent cycle cannot happen in Kinesis; never loop forever on it
            }
            pending = rest;
        }
        for lease in existing.values() {
            if lease.finished && !listed.contains(&lease.shard) {
                store.delete_finished(stream, &lease.shard).await?;
                debug!(shard = %lease.shard, "finished lease of a shard gone from the stream deleted");
            }
        }
        Ok(())
    }

    /// Reads every lease row.
    async fn read_leases(&mut self) -> Result<(), ConsumerError> {
        let started = Instant::now();
        let read = self.store.leases(&self.engine.stream).await?;
        let arrived = Instant::now();
        let rows = read.rows;
        if self.full_read_took.len() == FULL_READ_SAMPLES {
            self.full_read_took.pop_front();
        }
        self.full_read_took.push_back(arrived - started);
        self.leases = rows.into_iter().map(|l| (l.shard.clone(), l)).collect();
        let leases = &self.leases;
        self.bad_leases.read(&read.corrupt, |id| {
            leases.get(&ShardId::from(id)).map(fingerprint)
        });
        self.set_corrupt_gauge();
        self.note_owned();
        self.row_read_at = self.leases.keys().map(|s| (s.clone(), arrived)).collect();
        let owners: BTreeSet<ClientId> = self
            .leases
            .values()
            .filter_map(|l| l.owner.clone())
            .collect();
        self.membership.retain_unseen(&owners);
        self.need_full = false;
        self.urgent_full = false;
        Ok(())
    }

    /// Whether `shard` is owned by another client, or free after we saw one own it.
    fn handed_off(&self, shard: &ShardId) -> bool {
        self.leases.get(shard).is_some_and(|l| match &l.owner {
            Some(owner) => *owner != self.engine.me,
            None => self.seen_owned.contains(shard),
        })
    }

    /// Remembers the leases the rows show owned by another client (see `seen_owned`).
    fn note_owned(&mut self) {
        let me = &self.engine.me;
        let owned = self
            .leases
            .values()
            .filter(|l| l.owner.as_ref().is_some_and(|o| o != me))
            .map(|l| l.shard.clone());
        self.seen_owned.extend(owned);
        let rows = &self.leases;
        self.seen_owned.retain(|s| rows.contains_key(s));
    }

    /// Whether a parent stands in the way of its child: unfinished, or without a row while
    /// the stream still lists it (or before we have a listing).
    fn parent_pending(&self, parent: &ShardId) -> bool {
        // A parent whose row is set aside has no provable end, whether or not it is listed.
        if self.bad_leases.holds(parent.as_str()) {
            return true;
        }
        match self.leases.get(parent) {
            Some(row) => !row.finished,
            None => self.listed.as_ref().is_none_or(|l| l.contains(parent)),
        }
    }

    /// The shards that may be read now, from the rows of the last full read: unfinished, and
    /// every parent finished (or gone from the stream).
    fn eligible(&self) -> Vec<ShardId> {
        let faults = &self.engine.config.faults;
        self.leases
            .values()
            .filter(|l| !l.finished && !self.bad_leases.holds(l.shard.as_str()))
            .filter(|l| faults.ignore_parents || !l.parents.iter().any(|p| self.parent_pending(p)))
            .map(|l| l.shard.clone())
            .collect()
    }

    /// Computes the shared assignment from the rows of the last full read and acts on it.
    async fn rebalance(&mut self, tasks: &mut Tenures) {
        let me = self.engine.me.clone();
        if self.fenced() {
            return;
        }
        self.reap_dead_clients().await;
        let live = self.now_alive();
        let eligible = self.eligible();
        let plan = self.plan(&live, &eligible);
        // In our first `lease_ttl`, a row that was there at our first read and has not changed
        // since is alive for lack of evidence either way — a client that crashed just before
        // we started looks like that, and the rest of the fleet, which watched it die, plans
        // without it and hands us leases our own plan gives to the dead. A handoff must not
        // wait for our view to catch up, so we also plan over the clients we have evidence
        // about (just us, before any heartbeat moved): we wait for, and take once released,
        // what either plan gives us, and hand off only what neither does. The second plan never
        // takes a lease nobody handed off (a fleet starting together would grab everything),
        // and never judges anyone dead sooner.
        let with_evidence = with_me(self.membership.alive_with_evidence(), &me);
        let alternative = (with_evidence != live && !self.engine.config.faults.single_plan)
            .then(|| self.plan(&with_evidence, &eligible));
        let planned = |shard: &ShardId| plan.get(shard) == Some(&me);
        let also_planned = |shard: &ShardId| {
            alternative
                .as_ref()
                .is_some_and(|p| p.get(shard) == Some(&me))
        };
        // A lease released to us by name is ours whatever our plans say: its last owner's view
        // is newer than ours about the client it left (see `Lease::successor`).
        let named_to_me: BTreeSet<ShardId> = self
            .leases
            .values()
            .filter(|l| l.owner.is_none() && !l.finished && l.successor.as_ref() == Some(&me))
            .map(|l| l.shard.clone())
            .collect();
        let named = |shard: &ShardId| named_to_me.contains(shard);
        let mine = |shard: &ShardId| planned(shard) || also_planned(shard) || named(shard);
        // Whom we hand a lease to: while we count rows we have no evidence about, the plan over
        // the clients we do (its choice is alive, as far as anyone can tell), else our plan.
        let successor = |shard: &ShardId| {
            alternative
                .as_ref()
                .and_then(|p| p.get(shard))
                .or_else(|| plan.get(shard))
                .cloned()
        };
        self.handed_to_others = eligible.iter().any(|s| {
            !mine(s)
                && self
                    .leases
                    .get(s)
                    .is_some_and(|l| l.owner.is_none() && !l.finished)
        });
        // What to take (or wait for), in shard order.
        let wanted: Vec<ShardId> = eligible
            .iter()
            .filter(|s| planned(s) || (also_planned(s) && self.handed_off(s)) || named(s))
            .cloned()
            .collect();

        // Tenures the store says are no longer ours end now, without another write.
        let lost: Vec<ShardId> = self
            .held
            .iter()
            .filter(|(s, h)| {
                self.leases
                    .get(*s)
                    .is_none_or(|l| l.owner.as_ref() != Some(&me) || l.token != h.tenure.token)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for shard in lost {
            if self.bad_leases.holds(shard.as_str()) {
                warn!(shard = %shard, "our lease's row can no longer be used: stopping its tenure without another write");
            } else if !self.leases.contains_key(&shard) {
                report_vanished(&self.engine, &shard);
            } else {
                info!(shard = %shard, "lease taken over by another client");
            }
            self.engine
                .labels
                .client_counter(metrics::LEASES_LOST, &[])
                .increment(1);
            self.drop_held(&shard);
        }
        // Hand off what is now assigned elsewhere.
        for (shard, held) in &self.held {
            if !mine(shard) && *held.ask.borrow() == Ask::Run {
                let to = successor(shard);
                info!(shard = %shard, to = ?to, "handing off");
                held.ask.send_replace(Ask::Release {
                    to,
                    reason: EndReason::HandedOff,
                });
                self.engine.status.update(shard, |s| s.releasing = true);
            }
        }
        // Leases the store says are ours but no tenure runs (after a self-fence, an ambiguous
        // take, or a restart under the same id): `consider` below takes back those planned for
        // us; the others are handed back at once, or their new owner would wait for a handoff
        // that never comes.
        let stale: Vec<(Tenure, Option<ClientId>)> = self
            .leases
            .values()
            .filter(|l| !l.finished && !self.held.contains_key(&l.shard))
            .filter(|l| l.owner.as_ref() == Some(&me) && !mine(&l.shard))
            // Set aside while ours: keep it, or every client would try and fail in turn.
            .filter(|l| !self.bad_leases.holds(l.shard.as_str()))
            .filter_map(|l| Some((l.tenure()?, successor(&l.shard))))
            .collect();
        for (tenure, to) in stale {
            let to = to.filter(|_| !self.engine.config.faults.anonymous_release);
            match self
                .engine
                .store
                .release(&self.engine.stream, &tenure, None, to.as_ref())
                .await
            {
                Ok(()) => info!(tenure = %tenure, "released a lease no tenure of ours was running"),
                // Lost to another client: expected. Anything else is said.
                Err(StoreError::LeaseLost { .. }) => {
                    debug!(tenure = %tenure, "a stale lease was taken meanwhile")
                }
                Err(e) => warn!(tenure = %tenure, error = %e, "releasing a stale lease failed"),
            }
        }
        // Take what is ours, a burst per tick (see `take_backlog`).
        self.waiting.clear();
        self.backlog = wanted
            .into_iter()
            .filter(|s| !self.held.contains_key(s))
            .rev() // popped from the back: taken in shard order
            .collect();
        self.take_backlog(tasks).await;
    }

    /// Carries out the plan of the last full read. Takes go one by one, so a slow store makes a
    /// long plan slow to carry out: a burst of takes per tick, so the live set is re-checked
    /// between bursts (a change re-plans from a fresh read). Each take is conditional on the
    /// token read, so a plan gone stale cannot take what another client took meanwhile: the
    /// first lost race drops the rest of the plan until the next full read.
    async fn take_backlog(&mut self, tasks: &mut Tenures) {
        let started = Instant::now();
        let budget = self.engine.config.membership_poll_interval * 5;
        let mut done = 0;
        while let Some(shard) = self.backlog.pop() {
            if self.held.contains_key(&shard) {
                continue;
            }
            let Some(lease) = self.leases.get(&shard).cloned() else {
                continue;
            };
            done += 1;
            if !self.consider(lease, tasks).await {
                self.backlog.clear();
            }
            if done >= TAKES_PER_TICK || started.elapsed() >= budget {
                break;
            }
        }
    }

    /// Deletes the rows of clients dead for three lease TTLs, so crashed clients do not linger
    /// as ghosts that every newcomer counts as alive for its first TTL. Safe even if the client
    /// was only paused: its next heartbeat re-creates the row.
    async fn reap_dead_clients(&mut self) {
        let long_dead = self.engine.config.lease_ttl * 3;
        for (client, age) in self.membership.ages() {
            if age >= long_dead && client != self.engine.me {
                match self.store.deregister(&client).await {
                    Ok(()) => info!(client = %client, "removed the row of a long-dead client"),
                    Err(e) => {
                        debug!(client = %client, error = %e, "removing a dead client's row failed")
                    }
                }
            }
        }
    }

    /// Between full reads, reads only the leases we wait for in a handoff, so a graceful
    /// handoff completes within a few `membership_poll_interval`s. Returns the rows read; they
    /// are acted on after the next read of the clients.
    async fn poll_waiting(&mut self) -> Result<Vec<Lease>, ConsumerError> {
        let mut rows = Vec::new();
        for shard in self.waiting.clone() {
            match self.store.lease(&self.engine.stream, &shard).await {
                Ok(Some(lease)) => {
                    self.leases.insert(shard.clone(), lease.clone());
                    self.row_read_at.insert(shard, Instant::now());
                    rows.push(lease);
                }
                Ok(None) => {
                    self.waiting.remove(&shard);
                    self.need_sync = true;
                }
                // One bad row: set aside, and the others polled as usual.
                Err(StoreError::Corrupt { key, reason }) => {
                    self.waiting.remove(&shard);
                    self.leases.remove(&shard);
                    self.bad_leases.undecodable(CorruptRow {
                        key,
                        id: Some(shard.to_string()),
                        reason,
                    });
                    self.set_corrupt_gauge();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(rows)
    }

    /// Whether the owner of `lease` is dead, by a read of the clients sent after the row was
    /// read. With only older evidence, no: the owner may have heartbeated and written this
    /// very row since.
    fn owner_is_dead(&mut self, lease: &Lease, owner: &ClientId) -> bool {
        let row_read = self.row_read_at.get(&lease.shard).copied();
        let fresh = match (row_read, self.membership.read_sent_at()) {
            (Some(row), Some(clients)) => clients >= row,
            _ => false,
        };
        fresh && self.membership.owner_is_dead(owner)
    }

    /// Takes `lease` if it is free, its owner is dead, or it is already ours; otherwise waits.
    /// False when the take showed our view of the leases to be stale (or the store failing).
    async fn consider(&mut self, lease: Lease, tasks: &mut Tenures) -> bool {
        let me = &self.engine.me.clone();
        let now = Instant::now();
        let free = match &lease.owner {
            None => true,
            Some(owner) => owner == me || self.owner_is_dead(&lease, owner),
        };
        if !free {
            self.waiting.insert(lease.shard.clone());
            return true;
        }
        self.waiting.remove(&lease.shard);
        self.gave_up.retain(|_, until| *until > now);
        let given_up = lease.owner.is_none()
            && lease.successor.as_ref() != Some(me)
            && self.gave_up.contains_key(&lease.shard);
        if lease.finished
            || given_up
            || self
                .retry
                .get(&lease.shard)
                .is_some_and(|(at, _)| *at > now)
        {
            return true;
        }
        if self.fenced() {
            return false;
        }
        let store = &self.store;
        match store
            .take(&self.engine.stream, &lease.shard, me, lease.token)
            .await
        {
            Ok(taken) => {
                self.start_tenure(taken, lease.owner.as_ref(), tasks);
                return true;
            }
            Err(StoreError::LeaseLost { .. }) => self.need_full = true,
            Err(StoreError::NotFound { .. }) => self.need_sync = true,
            // The store cannot take this row as it is (it changed into something that does not
            // decode, or its token cannot grow): set it aside until it changes, and go on
            // with the rest of the plan.
            Err(StoreError::Corrupt { key, reason }) => {
                let row = CorruptRow {
                    key,
                    id: Some(lease.shard.to_string()),
                    reason,
                };
                if lease.token_exhausted() {
                    // It decodes, but no take can move its token: aside until it changes.
                    self.bad_leases
                        .refused(lease.shard.as_str(), fingerprint(&lease), row);
                } else {
                    // It no longer decodes (written since our read): aside until a read of
                    // every row decodes it again — even back to the very row we read.
                    self.bad_leases.undecodable(row);
                }
                self.set_corrupt_gauge();
                return true;
            }
            Err(StoreError::Fatal(m)) => {
                self.fatal = Some(StoreError::Fatal(m).into());
            }
            // An ambiguous take may have succeeded: the next full read shows us as owner,
            // and we take it again from there (the token moves on, fencing the first).
            Err(e) => {
                warn!(shard = %lease.shard, error = %e, "take failed; reading the leases again");
                self.need_full = true;
            }
        }
        false
    }

    fn set_corrupt_gauge(&self) {
        for (kind, q) in [("lease", &self.bad_leases), ("client", &self.bad_clients)] {
            self.engine
                .labels
                .client_gauge_with(metrics::CORRUPT_ROWS, &[("kind", kind)])
                .set(q.len() as f64);
        }
    }

    fn start_tenure(&mut self, lease: Lease, previous: Option<&ClientId>, tasks: &mut Tenures) {
        let Some(tenure) = lease.tenure() else {
            return;
        };
        let start = match &lease.checkpoint {
            Some(cp) => cp.clone(),
            // A child starts at its horizon, so nothing after its parents' end is skipped.
            None if !lease.parents.is_empty() => Checkpoint::TrimHorizon,
            None => self.engine.config.initial_position.into(),
        };
        info!(tenure = %tenure, from = %start, previous = ?previous, "lease taken");
        let from = match previous {
            None => "free",
            Some(p) if *p == self.engine.me => "self",
            Some(_) => "expired",
        };
        self.engine
            .labels
            .client_counter(metrics::LEASES_TAKEN, &[("from", from)])
            .increment(1);
        let cfg = &self.engine.config;
        let tracker = Arc::new(AckTracker::with_metrics(
            cfg.max_unacked_records,
            cfg.max_unacked_bytes,
            self.engine.labels.shard(&tenure.shard),
        ));
        let (ask, asked) = watch::channel(Ask::Run);
        let epoch = self.engine.health.epoch();
        let span = info_span!("tenure", shard = %tenure.shard, token = tenure.token);
        let fut = run_tenure(
            self.engine.clone(),
            tenure.clone(),
            start,
            tracker.clone(),
            epoch,
            asked,
        );
        let shard = tenure.shard.clone();
        let handle = tasks.spawn(async move { (shard, fut.await) }.instrument(span));
        self.task_shard.insert(handle.id(), tenure.shard.clone());
        self.engine.status.insert(&tenure, tracker.clone());
        self.held.insert(
            tenure.shard.clone(),
            Held {
                tenure,
                taken: lease.clone(),
                tracker,
                ask,
                task: handle,
            },
        );
        self.set_held_gauge();
    }

    /// Ends a tenure at once, with no further write (lost, or self-fenced).
    fn drop_held(&mut self, shard: &ShardId) {
        if let Some(held) = self.held.remove(shard) {
            held.tracker.revoke();
            held.task.abort();
            self.engine.status.remove(shard);
            if self.engine.lifecycle.is_some() {
                // Told from a task of its own: the supervisor does not wait for the application.
                let engine = self.engine.clone();
                let limit = engine.config.drain_timeout;
                tokio::spawn(async move {
                    let (tenure, tracker) = (held.tenure, held.tracker);
                    engine
                        .hook_ending(&tenure, &tracker, EndReason::Lost, limit)
                        .await;
                });
            }
        }
        self.set_held_gauge();
    }

    fn count(&self, name: &'static str) {
        self.engine.labels.client_counter(name, &[]).increment(1);
    }

    fn set_held_gauge(&self) {
        self.engine
            .labels
            .client_gauge(metrics::LEASES_HELD)
            .set(self.held.len() as f64);
    }

    fn on_tenure_end(
        &mut self,
        joined: Result<(tokio::task::Id, (ShardId, Outcome)), tokio::task::JoinError>,
    ) -> Result<(), ConsumerError> {
        let (id, shard, outcome) = match joined {
            Ok((id, (shard, outcome))) => (id, shard, outcome),
            Err(e) if e.is_cancelled() => {
                self.task_shard.remove(&e.id());
                return Ok(()); // we aborted it ourselves
            }
            Err(e) => {
                let Some(shard) = self.task_shard.get(&e.id()).cloned() else {
                    return Ok(());
                };
                (
                    e.id(),
                    shard,
                    Outcome::Failed(ConsumerError::Panicked(e.to_string())),
                )
            }
        };
        self.task_shard.remove(&id);
        // A tenure of this shard that we already dropped may end after a newer one started.
        if self.held.get(&shard).is_some_and(|h| h.task.id() != id) {
            return Ok(());
        }
        let taken = self.held.remove(&shard).map(|held| {
            held.tracker.revoke();
            held.taken
        });
        self.set_held_gauge();
        self.engine.status.remove(&shard);
        self.need_full = true;
        match outcome {
            Outcome::Finished => {
                self.count(metrics::LEASES_FINISHED);
                self.retry.remove(&shard);
                self.need_sync = true;
            }
            Outcome::Released => {
                self.count(metrics::LEASES_RELEASED);
                self.retry.remove(&shard);
            }
            Outcome::Lost => {
                self.count(metrics::LEASES_LOST);
                self.retry.remove(&shard);
            }
            Outcome::Failed(e) if is_fatal(&e) => return Err(e),
            // The source refuses the stored position: no retry can help, and another client
            // would fail the same way. We keep the lease (so nobody else tries) and set the
            // shard aside until someone resets its checkpoint.
            Outcome::Failed(ConsumerError::Source(e @ SourceError::BadPosition { .. })) => {
                let row = CorruptRow {
                    key: format!("{}/{shard}", self.engine.stream),
                    id: Some(shard.to_string()),
                    reason: format!("{e}; reset its checkpoint"),
                };
                let fingerprint = taken.as_ref().map(fingerprint).unwrap_or_default();
                self.bad_leases.refused(shard.as_str(), fingerprint, row);
                self.set_corrupt_gauge();
            }
            Outcome::Failed(e) => {
                let failures = self.retry.get(&shard).map_or(0, |(_, n)| *n) + 1;
                let delay = self.engine.backoff(failures);
                warn!(shard = %shard, error = %e, failures, retry_in_ms = delay.as_millis() as u64, "shard failed; restarting it");
                self.retry.insert(shard, (Instant::now() + delay, failures));
            }
        }
        Ok(())
    }

    /// Removes our client row, with a few retries.
    async fn deregister(&self) {
        for attempt in 1..=3 {
            match self.store.deregister(&self.engine.me).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, "deregister failed");
                    sleep(self.engine.backoff(attempt)).await;
                }
            }
        }
    }

    /// Releases the rows the store says are ours though no tenure of ours ran them (an
    /// ambiguous take, a tenure abandoned at the deadline): otherwise they would wait a TTL
    /// for an owner that is gone. Best effort: each release is fenced by the row's token.
    async fn release_leftovers(&mut self) {
        let store = &self.store;
        let Ok(read) = store.leases(&self.engine.stream).await else {
            return;
        };
        let mine = read
            .rows
            .iter()
            .filter(|l| !l.finished && l.owner.as_ref() == Some(&self.engine.me))
            .filter_map(Lease::tenure);
        for tenure in mine {
            match store
                .release(&self.engine.stream, &tenure, None, None)
                .await
            {
                Ok(()) => info!(tenure = %tenure, "released a lease left over at shutdown"),
                Err(StoreError::LeaseLost { .. }) => {
                    debug!(tenure = %tenure, "a leftover lease was taken meanwhile")
                }
                Err(e) => warn!(tenure = %tenure, error = %e, "releasing a leftover lease failed"),
            }
        }
    }

    /// Graceful shutdown: leave the membership, then every tenure drains, commits and releases.
    ///
    /// Deregistering *first* is what makes the handoff fast: peers re-plan without us at once,
    /// so the leases we release go to them. Released while we still had a row, they were
    /// planned back to us — a client that no longer takes anything — until our row went. Our
    /// leases stay safe meanwhile: an owner without a row is judged dead only after
    /// `lease_ttl` unseen, longer than a drain.
    ///
    /// Bounded by `shutdown_timeout` as a whole (against a frozen store every call waits
    /// `call_timeout`): leaving and the last steps get a fifth of it each at most (and no more
    /// than a call's time limit), the tenures the rest — `drain_timeout` for the drain, then
    /// their final checkpoints and releases. A tenure that has not ended by then is abandoned
    /// and its lease released by a last read of the leases (or it expires as after a crash if
    /// the store is unreachable: at-least-once holds).
    async fn shutdown(&mut self, tasks: &mut Tenures, reason: EndReason) {
        let cfg = self.engine.config.clone();
        let started = Instant::now();
        let end = started + cfg.shutdown_timeout;
        let step = cfg.call_timeout.min(cfg.shutdown_timeout / 5);
        let tenures_end = end - step;
        // Stop heartbeating before deregistering, so no later heartbeat re-creates our row.
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop().await;
        }
        if tokio::time::timeout_at(started + step, self.deregister())
            .await
            .is_err()
        {
            warn!("shutdown: removing our client row did not finish in time");
        }
        // Each lease goes to whom the others will plan it for once our row is gone: the plan
        // over the live clients without us. Named in the row, it is taken at once even by a
        // client whose view of the fleet differs from ours.
        let plan = self.plan_without_me();
        for (shard, held) in &self.held {
            let to = plan.get(shard).cloned();
            held.ask.send_replace(Ask::Release { to, reason });
        }
        loop {
            tokio::select! {
                biased;
                joined = tasks.join_next_with_id() => match joined {
                    Some(Ok((_, (shard, outcome)))) => {
                        debug!(shard = %shard, outcome = ?outcome, "tenure ended in shutdown");
                    }
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(tenures_end) => {
                    warn!(left = tasks.len(), "shutdown deadline passed; abandoning leases that did not release");
                    tasks.abort_all();
                    break;
                }
            }
        }
        for shard in self.held.keys().cloned().collect::<Vec<_>>() {
            self.engine.status.remove(&shard);
        }
        self.held.clear();
        self.set_held_gauge();
        let last_steps = async {
            self.release_leftovers().await;
            // A heartbeat sent before we stopped may have landed after the first removal.
            self.deregister().await;
        };
        if tokio::time::timeout_at(end, last_steps).await.is_err() {
            warn!("shutdown deadline passed before the last release and deregister");
        }
        info!(took_ms = started.elapsed().as_millis() as u64, "shut down");
    }

    /// The plan over the live clients without us: whom each lease goes to when we let it go.
    fn plan_without_me(&self) -> BTreeMap<ShardId, ClientId> {
        let me = &self.engine.me;
        let others: Vec<ClientId> = self
            .membership
            .alive()
            .into_iter()
            .filter(|c| c != me)
            .collect();
        self.plan(&others, &self.eligible())
    }

    /// Stops at once, as a crash: no write. What was fetched is never handed out.
    fn abort(&mut self) {
        for shard in self.held.keys().cloned().collect::<Vec<_>>() {
            self.drop_held(&shard);
        }
        self.heartbeat.take();
    }

    /// `EngineFaults::stuck_supervisor`: waits, without a call, while the switch is on.
    async fn stuck_on_purpose(&self) {
        if let Some(switch) = &self.engine.config.faults.stuck_supervisor {
            while switch.is_on() {
                sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Whether the record stream has not been polled for `stall_timeout` while records waited
    /// in it for as long ([`StallKind::NotPolled`]); reported if so.
    ///
    /// "Waiting" is what the application has not taken: chunks queued in the stream's channel,
    /// or the rest of a chunk it took a record of. An application that waits *in* a poll has
    /// drained both — records fetched before a fence are skipped there, not left waiting — so
    /// it is never judged stalled, however long it waits.
    fn not_polled(&mut self) -> bool {
        let Some(limit) = self.engine.config.stall_timeout else {
            return false;
        };
        let Delivery::Stream(tx) = &self.engine.delivery else {
            return false;
        };
        let now = Instant::now();
        let clock = &self.engine.poll_clock;
        let queued = tx.max_capacity() - tx.capacity();
        let Some(oldest) = clock.waiting(queued > 0 || clock.holding(), now) else {
            return false;
        };
        let polled = clock.last();
        if now.saturating_duration_since(polled) < limit
            || now.saturating_duration_since(oldest) < limit
        {
            return false;
        }
        self.engine.report_stall(Stall {
            kind: StallKind::NotPolled,
            shard: None,
            record: None,
            stalled_for: now.saturating_duration_since(polled.max(oldest)),
            at: now,
        });
        true
    }

    /// The application stalled as a whole: release everything and leave the fleet (as a
    /// shutdown), wait until `rejoin` says it may come back, then register again. `Ok(false)`
    /// if asked to stop meanwhile.
    async fn leave_until(
        &mut self,
        tasks: &mut Tenures,
        shutdown: &mut watch::Receiver<Stop>,
        rejoin: Rejoin,
    ) -> Result<bool, ConsumerError> {
        self.shutdown(tasks, EndReason::Stalled).await;
        let left = Instant::now();
        self.engine
            .status
            .left_fleet
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let back = async {
            match rejoin {
                Rejoin::WhenPolled => self.engine.poll_clock.wait_after(left).await,
                Rejoin::After(pause) => sleep(pause).await,
            }
        };
        tokio::pin!(back);
        let come_back = loop {
            tokio::select! {
                _ = &mut back => break true,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() != Stop::Run {
                        break false;
                    }
                }
            }
        };
        self.engine
            .status
            .left_fleet
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if !come_back || !register(&self.engine, shutdown).await? {
            return Ok(false);
        }
        info!(rejoin = ?rejoin, "rejoining the fleet");
        self.engine.watchdog.pet(); // waiting for a poll is not being stuck
        self.heartbeat = Some(Heartbeat::start(&self.engine));
        self.leases.clear();
        self.row_read_at.clear();
        self.waiting.clear();
        self.backlog.clear();
        self.retry.clear();
        self.last_full = None;
        self.need_full = true;
        self.urgent_full = true;
        self.need_sync = true;
        self.handed_to_others = false;
        Ok(true)
    }

    /// Releases every held shard whose application stalled: a record handed out and not acked
    /// ([`StallKind::RecordNotAcked`]), or a handler call that has not returned
    /// ([`StallKind::HandlerHung`]), for `stall_timeout`. The shard goes to the client the plan
    /// names without us; what is acked is committed first.
    ///
    /// A handler that hangs again within 2 × `stall_timeout` of its last hang says the
    /// application is unhealthy, not one shard: then nothing is released here and `true` asks
    /// the caller to take the client out of the fleet for `stall_timeout` — otherwise the plan
    /// keeps handing it shards (its share), each lost for another `stall_timeout`.
    fn release_stalled(&mut self) -> bool {
        let Some(limit) = self.engine.config.stall_timeout else {
            return false;
        };
        let now = Instant::now();
        let handler = matches!(self.engine.delivery, Delivery::Handler(_));
        let mut stalled = Vec::new();
        for (shard, held) in &self.held {
            if *held.ask.borrow() != Ask::Run {
                continue;
            }
            // A call of the application (the handler, a hook) that has not returned, or else
            // (record stream) a record handed out and not acked.
            let call = held.tracker.call_since();
            let (kind, since) = match call {
                Some(call) => (StallKind::HandlerHung, Some(call)),
                None if handler => continue,
                None => (
                    StallKind::RecordNotAcked,
                    held.tracker
                        .oldest_outstanding()
                        .map(|(record, at)| (Some(record), at)),
                ),
            };
            if let Some((record, since)) = since
                && now.saturating_duration_since(since) >= limit
            {
                stalled.push(Stall {
                    kind,
                    shard: Some(shard.clone()),
                    record,
                    stalled_for: now.saturating_duration_since(since),
                    at: now,
                });
            }
        }
        if stalled.is_empty() {
            return false;
        }
        if stalled.iter().any(|s| s.kind == StallKind::HandlerHung) {
            let again = self
                .last_hang
                .is_some_and(|t| now.saturating_duration_since(t) <= limit * 2);
            self.last_hang = Some(now);
            if again {
                for stall in stalled {
                    self.engine.report_stall(stall);
                }
                warn!(
                    pause_s = limit.as_secs_f64(),
                    "the application hung again within 2 × stall_timeout: releasing every lease and leaving the fleet for stall_timeout"
                );
                return true;
            }
        }
        let plan = self.plan_without_me();
        for stall in stalled {
            let Some(shard) = stall.shard.clone() else {
                continue;
            };
            self.engine.report_stall(stall);
            if let Some(held) = self.held.get(&shard) {
                let to = plan.get(&shard).cloned();
                if to.is_some() {
                    let cool_down = self.engine.config.rebalance_interval * 2;
                    self.gave_up.insert(shard.clone(), now + cool_down);
                }
                held.ask.send_replace(Ask::Release {
                    to,
                    reason: EndReason::Stalled,
                });
                self.engine.status.update(&shard, |s| s.releasing = true);
            }
        }
        false
    }
}

/// A lease row we held is gone — nobody deletes an unfinished lease, so the store lost its rows
/// (a restart without persistence, a failover, a table emptied by hand). Said loudly: the shard
/// starts again as a new lease, at the configured initial position, so with `Latest` the
/// records since our last commit are skipped.
pub(crate) fn report_vanished(engine: &Engine, shard: &ShardId) {
    let skipped = matches!(
        engine.config.initial_position,
        crate::position::InitialPosition::Latest
    );
    tracing::error!(
        shard = %shard,
        initial_position = ?engine.config.initial_position,
        "the lease row of a shard we held vanished: the store lost its rows (restarted without \
         persistence?). The shard starts again as a new lease at the initial position{}",
        if skipped {
            " — with Latest, every record since our last commit is skipped; use TrimHorizon or \
             a store that keeps its writes"
        } else {
            ""
        }
    );
    engine
        .labels
        .client_counter(metrics::LEASES_VANISHED, &[])
        .increment(1);
}

/// What a lease row says, to tell whether it changed since it was set aside.
fn fingerprint(lease: &Lease) -> String {
    format!("{lease:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A wall clock the test moves by hand.
    static WALL_SECS: AtomicU64 = AtomicU64::new(1_000_000);

    fn fake_wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(WALL_SECS.load(Ordering::SeqCst))
    }

    /// A host suspended for a minute: its monotonic clock did not move, the wall clock did.
    /// The client must fence itself on waking — its leases may have been taken meanwhile — and
    /// hand out nothing it fetched before.
    #[test]
    fn a_host_suspend_fences_the_client_although_the_monotonic_clock_stood_still() {
        let health = Health {
            wall: fake_wall,
            ..Health::new(&Config::new("app"))
        };
        let now = Instant::now();
        health.heartbeat_ok(now, fake_wall());
        let epoch = health.epoch();
        assert!(!health.is_fenced(now), "a fresh heartbeat: not fenced");
        assert!(health.may_hand_out_at(epoch, now));

        WALL_SECS.fetch_add(60, Ordering::SeqCst); // suspended; Instant has not moved
        assert!(health.is_fenced(now), "a minute asleep is a fence");
        assert!(
            !health.may_hand_out_at(epoch, now),
            "nothing from before the sleep"
        );
        assert_ne!(health.epoch(), epoch);

        // The next heartbeat that lands ends the fence, in a new epoch.
        health.heartbeat_ok(now, fake_wall());
        assert!(!health.is_fenced(now));
        assert!(health.may_hand_out_at(health.epoch(), now));
    }
}
