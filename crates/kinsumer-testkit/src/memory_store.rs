//! [`MemoryLeaseStore`]: the [`LeaseStore`] contract in memory, with fault injection and a
//! history of every applied write for invariant checkers.
//!
//! One store is one application. Every operation takes one lock, so each is atomic, exactly as
//! the contract asks of a real server's conditional write. On top of that it can misbehave on
//! purpose ([`StoreFaults`]): fail before applying, apply and then report a failure (an
//! *ambiguous* write, like a timeout after sending), add latency, or ignore fencing altogether
//! — a deliberately broken store, to prove a simulation's checks notice.
//!
//! ```
//! use kinsumer_core::position::Checkpoint;
//! use kinsumer_core::source::ShardId;
//! use kinsumer_core::store::{ClientId, LeaseStore, StoreError};
//! use kinsumer_testkit::memory_store::{MemoryLeaseStore, StoreOp};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryLeaseStore::new();
//! let shard = ShardId::from("shardId-000000000000");
//! store.create_if_absent("orders", &shard, &[]).await?;
//!
//! let lease = store.take("orders", &shard, &ClientId::from("a"), 0).await?;
//! let tenure = lease.tenure().ok_or("taken lease has an owner")?;
//! store.checkpoint("orders", &tenure, &Checkpoint::TrimHorizon).await?;
//!
//! // Once another client takes the lease, the old tenure is fenced off.
//! store.take("orders", &shard, &ClientId::from("b"), 1).await?;
//! let late = store.checkpoint("orders", &tenure, &Checkpoint::TrimHorizon).await;
//! assert!(matches!(late, Err(StoreError::LeaseLost { .. })));
//!
//! // The history shows the applied writes, in order.
//! let ops: Vec<StoreOp> = store.history().iter().map(|e| e.op).collect();
//! assert_eq!(ops, [StoreOp::Create, StoreOp::Take, StoreOp::Checkpoint, StoreOp::Take]);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use kinsumer_core::position::Checkpoint;
use kinsumer_core::rng::Rng;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{
    ClientId, ClientRow, CorruptRow, Lease, LeaseStore, Rows, StoreError, TOKEN_LIMIT, Tenure,
};

/// A global logical clock shared by the components of a test, so their events interleave in
/// one order. Cheap to clone: clones share the counter.
///
/// ```
/// use kinsumer_testkit::memory_store::EventClock;
///
/// let clock = EventClock::new();
/// let shared = clock.clone();
/// assert_eq!(clock.tick(), 1);
/// assert_eq!(shared.tick(), 2);
/// assert_eq!(clock.now(), 2);
/// ```
#[derive(Clone, Debug, Default)]
pub struct EventClock(Arc<AtomicU64>);

impl EventClock {
    /// A clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Advances the clock and returns the new time (the first tick is 1).
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The last time handed out (0 before the first tick).
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Faults a [`MemoryLeaseStore`] injects, each drawn from its seeded RNG. `Default` injects
/// none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreFaults {
    /// Probability that an operation fails with `Transient` without being applied.
    pub error_rate: f64,
    /// Probability that an operation is refused with `Throttled` without being applied, as a
    /// table over its provisioned rate refuses.
    pub throttle_rate: f64,
    /// Probability that a write is performed and then reported as `Transient` whatever its
    /// outcome — the caller cannot tell whether it happened, as after a timeout.
    pub ambiguous_rate: f64,
    /// Every operation first sleeps a uniformly drawn time in `min..=max`.
    pub latency: (Duration, Duration),
    /// `leases` (the read of every lease) sleeps this much longer: a store on which full reads
    /// are slow (many leases, an emulator, a throttled table).
    pub full_read_latency: Duration,
    /// `leases` reads this many rows per request, each page under its own lock with its own
    /// latency, as DynamoDB's paged queries do: a read of every lease is then *not* a
    /// snapshot — rows written between pages may be seen new in one page and old in another.
    /// 0 (the default) reads every row in one atomic step.
    pub leases_page: usize,
    /// `take`, `checkpoint`, `release` and `finish` skip their owner/token checks: a broken
    /// store, for proving that invariant checks catch one.
    pub ignore_fencing: bool,
}

/// Which write a [`StoreEvent`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreOp {
    /// `create_if_absent` created the row.
    Create,
    /// `take`.
    Take,
    /// `checkpoint`.
    Checkpoint,
    /// `release`.
    Release,
    /// `finish`.
    Finish,
    /// `delete_finished` deleted the row.
    Delete,
    /// `reset_checkpoint`.
    Reset,
    /// `replace_corrupt`: an operator rewrote a row that did not decode.
    Repair,
    /// The store restarted and lost its writes since a snapshot: the row went back to `after`.
    Rollback,
}

/// The rows of a [`MemoryLeaseStore`] at one moment, to go back to with
/// [`MemoryLeaseStore::lose_writes_since`].
#[derive(Clone, Debug)]
pub struct StoreSnapshot {
    clients: BTreeMap<ClientId, u64>,
    leases: BTreeMap<String, BTreeMap<ShardId, Lease>>,
}

/// One applied write to a lease row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreEvent {
    /// When, on the store's [`EventClock`].
    pub at: u64,
    /// When, on tokio's clock (simulated time under the paused clock).
    pub time: Instant,
    /// The stream.
    pub stream: String,
    /// The shard.
    pub shard: ShardId,
    /// What was written.
    pub op: StoreOp,
    /// What the caller presented: its tenure for the fenced ops; for `take`, the new owner with
    /// the token it expected; `None` for the others.
    pub claimed: Option<Tenure>,
    /// The row before (`None` if it did not exist).
    pub before: Option<Lease>,
    /// The row after (`None` once deleted).
    pub after: Option<Lease>,
    /// The write was applied but reported to the caller as failed.
    pub ambiguous: bool,
}

/// What happened to a client row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientOp {
    /// A heartbeat landed: the counter moved (or the row was created).
    Heartbeat,
    /// The row was deleted (`deregister`, by the client itself or by a reaper).
    Deregister,
    /// A watcher's mark landed: the client is judged dead at its current value
    /// (`mark_dead`). Not evidence of life.
    JudgedDead,
}

/// One applied write to a client row: the evidence of liveness an oracle judges takes by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    /// When, on the store's [`EventClock`].
    pub at: u64,
    /// When, on tokio's clock.
    pub time: Instant,
    /// Whose row.
    pub client: ClientId,
    /// What was written.
    pub op: ClientOp,
}

/// Requests a [`MemoryLeaseStore`] served, per operation (including failed ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `heartbeat` calls.
    pub heartbeat: u64,
    /// `clients` calls.
    pub clients: u64,
    /// `deregister` calls.
    pub deregister: u64,
    /// `client` calls.
    pub client: u64,
    /// `mark_dead` calls.
    pub mark_dead: u64,
    /// `changes` calls.
    pub changes: u64,
    /// `announce` calls.
    pub announce: u64,
    /// `leases` calls.
    pub leases: u64,
    /// `lease` calls.
    pub lease: u64,
    /// `create_if_absent` calls.
    pub create_if_absent: u64,
    /// `take` calls.
    pub take: u64,
    /// `checkpoint` calls.
    pub checkpoint: u64,
    /// `release` calls.
    pub release: u64,
    /// `finish` calls.
    pub finish: u64,
    /// `delete_finished` calls.
    pub delete_finished: u64,
    /// `reset_checkpoint` calls.
    pub reset_checkpoint: u64,
    /// `replace_corrupt` calls.
    pub replace_corrupt: u64,
    /// Rows returned by reads (a row that does not decode counts; an absent one does not,
    /// but the change counter always does): what DynamoDB bills reads on, with their size.
    pub items_read: u64,
    /// Calls failed by an injected error (not applied).
    pub injected_errors: u64,
    /// Writes reported as failed whatever their outcome.
    pub ambiguous_writes: u64,
}

impl StoreStats {
    /// Read requests: `clients`, `client`, `changes`, `leases`, `lease`.
    pub fn reads(&self) -> u64 {
        self.clients + self.client + self.changes + self.leases + self.lease
    }

    /// Write requests: every other operation.
    pub fn writes(&self) -> u64 {
        self.heartbeat
            + self.deregister
            + self.mark_dead
            + self.announce
            + self.create_if_absent
            + self.take
            + self.checkpoint
            + self.release
            + self.finish
            + self.delete_finished
            + self.reset_checkpoint
            + self.replace_corrupt
    }

    /// All requests.
    pub fn requests(&self) -> u64 {
        self.reads() + self.writes()
    }
}

/// The store's operations, for counting and for fault decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Heartbeat,
    Clients,
    Deregister,
    Client,
    MarkDead,
    Changes,
    Announce,
    Leases,
    Lease,
    CreateIfAbsent,
    Take,
    Checkpoint,
    Release,
    Finish,
    DeleteFinished,
    ResetCheckpoint,
    ReplaceCorrupt,
}

impl Method {
    fn is_write(self) -> bool {
        !matches!(
            self,
            Method::Clients | Method::Client | Method::Changes | Method::Leases | Method::Lease
        )
    }

    fn name(self) -> &'static str {
        match self {
            Method::Heartbeat => "heartbeat",
            Method::Clients => "clients",
            Method::Deregister => "deregister",
            Method::Client => "client",
            Method::MarkDead => "mark_dead",
            Method::Changes => "changes",
            Method::Announce => "announce",
            Method::Leases => "leases",
            Method::Lease => "lease",
            Method::CreateIfAbsent => "create_if_absent",
            Method::Take => "take",
            Method::Checkpoint => "checkpoint",
            Method::Release => "release",
            Method::Finish => "finish",
            Method::DeleteFinished => "delete_finished",
            Method::ResetCheckpoint => "reset_checkpoint",
            Method::ReplaceCorrupt => "replace_corrupt",
        }
    }

    fn counter(self, stats: &mut StoreStats) -> &mut u64 {
        match self {
            Method::Heartbeat => &mut stats.heartbeat,
            Method::Clients => &mut stats.clients,
            Method::Deregister => &mut stats.deregister,
            Method::Client => &mut stats.client,
            Method::MarkDead => &mut stats.mark_dead,
            Method::Changes => &mut stats.changes,
            Method::Announce => &mut stats.announce,
            Method::Leases => &mut stats.leases,
            Method::Lease => &mut stats.lease,
            Method::CreateIfAbsent => &mut stats.create_if_absent,
            Method::Take => &mut stats.take,
            Method::Checkpoint => &mut stats.checkpoint,
            Method::Release => &mut stats.release,
            Method::Finish => &mut stats.finish,
            Method::DeleteFinished => &mut stats.delete_finished,
            Method::ResetCheckpoint => &mut stats.reset_checkpoint,
            Method::ReplaceCorrupt => &mut stats.replace_corrupt,
        }
    }
}

/// An in-memory [`LeaseStore`] for one application. Cheap to clone: clones share the store.
///
/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct MemoryLeaseStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    clock: EventClock,
    state: Mutex<StoreState>,
}

#[derive(Debug)]
struct StoreState {
    clients: BTreeMap<ClientId, u64>,
    /// The heartbeat value each client was judged dead at ([`LeaseStore::mark_dead`]).
    judged_dead: BTreeMap<ClientId, u64>,
    /// The change counter; `None` while [`MemoryLeaseStore::corrupt_changes`] made it
    /// unreadable.
    changes: Option<u64>,
    /// stream → shard → row.
    leases: BTreeMap<String, BTreeMap<ShardId, Lease>>,
    /// Rows made unreadable by [`MemoryLeaseStore::corrupt_lease`]: (stream, shard) → why.
    corrupt_leases: BTreeMap<(String, ShardId), String>,
    /// Client rows made unreadable by [`MemoryLeaseStore::corrupt_client`], until the
    /// client's next heartbeat rewrites them (as on every real store).
    corrupt_clients: BTreeMap<ClientId, String>,
    faults: StoreFaults,
    rng: Rng,
    history: Vec<StoreEvent>,
    client_history: Vec<ClientEvent>,
    stats: StoreStats,
}

/// What one operation's closure sees: the rows, whether fencing is on, and where to log.
struct Txn<'a> {
    state: &'a mut StoreState,
    clock: &'a EventClock,
    fencing: bool,
    ambiguous: bool,
}

impl Txn<'_> {
    fn record(
        &mut self,
        stream: &str,
        shard: &ShardId,
        op: StoreOp,
        claimed: Option<Tenure>,
        before: Option<Lease>,
        after: Option<Lease>,
    ) {
        let event = StoreEvent {
            at: self.clock.tick(),
            time: Instant::now(),
            stream: stream.to_owned(),
            shard: shard.clone(),
            op,
            claimed,
            before,
            after,
            ambiguous: self.ambiguous,
        };
        self.state.history.push(event);
    }

    fn record_client(&mut self, client: &ClientId, op: ClientOp) {
        let event = ClientEvent {
            at: self.clock.tick(),
            time: Instant::now(),
            client: client.clone(),
            op,
        };
        self.state.client_history.push(event);
    }

    fn row_mut(&mut self, stream: &str, shard: &ShardId) -> Result<&mut Lease, StoreError> {
        if let Some(reason) = self
            .state
            .corrupt_leases
            .get(&(stream.to_owned(), shard.clone()))
        {
            return Err(corrupt_lease_row(stream, shard, reason).into());
        }
        self.state
            .leases
            .get_mut(stream)
            .and_then(|rows| rows.get_mut(shard))
            .ok_or_else(|| StoreError::NotFound {
                shard: shard.clone(),
            })
    }

    /// A fenced write: finds the row, checks the tenure, applies `change`, logs the event.
    fn fenced(
        &mut self,
        stream: &str,
        tenure: &Tenure,
        op: StoreOp,
        change: impl FnOnce(&mut Lease),
    ) -> Result<(), StoreError> {
        let fencing = self.fencing;
        let row = self.row_mut(stream, &tenure.shard)?;
        if fencing && !(row.owner.as_ref() == Some(&tenure.owner) && row.token == tenure.token) {
            return Err(lease_lost(&tenure.shard));
        }
        // A finished lease is final: only a repeated `finish` of the same tenure succeeds.
        if fencing && row.finished && op != StoreOp::Finish {
            return Err(lease_lost(&tenure.shard));
        }
        let before = row.clone();
        change(row);
        let after = row.clone();
        self.record(
            stream,
            &tenure.shard,
            op,
            Some(tenure.clone()),
            Some(before),
            Some(after),
        );
        Ok(())
    }
}

fn corrupt_lease_row(stream: &str, shard: &ShardId, reason: &str) -> CorruptRow {
    CorruptRow {
        key: format!("{stream}/{shard}"),
        id: Some(shard.to_string()),
        reason: reason.to_owned(),
    }
}

fn lease_lost(shard: &ShardId) -> StoreError {
    StoreError::LeaseLost {
        shard: shard.clone(),
    }
}

impl Default for MemoryLeaseStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLeaseStore {
    /// An empty store with its own [`EventClock`] and fault RNG seed 0.
    pub fn new() -> Self {
        Self::with_clock(EventClock::new())
    }

    /// An empty store that stamps its history with a shared `clock`.
    pub fn with_clock(clock: EventClock) -> Self {
        let state = StoreState {
            clients: BTreeMap::new(),
            judged_dead: BTreeMap::new(),
            changes: Some(0),
            leases: BTreeMap::new(),
            corrupt_leases: BTreeMap::new(),
            corrupt_clients: BTreeMap::new(),
            faults: StoreFaults::default(),
            rng: Rng::new(0),
            history: Vec::new(),
            client_history: Vec::new(),
            stats: StoreStats::default(),
        };
        Self {
            shared: Arc::new(Shared {
                clock,
                state: Mutex::new(state),
            }),
        }
    }

    /// Seeds the fault RNG; chain it on a constructor:
    /// `MemoryLeaseStore::with_clock(clock).with_seed(7)`. (Clones share the RNG.)
    pub fn with_seed(self, seed: u64) -> Self {
        self.lock().rng = Rng::new(seed);
        self
    }

    /// The clock stamping the history.
    pub fn clock(&self) -> &EventClock {
        &self.shared.clock
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        // Every update is a single step under the lock, so a poisoned lock holds consistent
        // data and is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the injected faults; takes effect on the next call.
    pub fn set_faults(&self, faults: StoreFaults) {
        self.lock().faults = faults;
    }

    /// The faults currently injected.
    pub fn faults(&self) -> StoreFaults {
        self.lock().faults.clone()
    }

    /// The request counters so far.
    pub fn stats(&self) -> StoreStats {
        self.lock().stats
    }

    /// A copy of every applied write to a lease row, in order.
    pub fn history(&self) -> Vec<StoreEvent> {
        self.lock().history.clone()
    }

    /// A copy of every applied write to a client row (heartbeats and deletions), in order.
    pub fn client_history(&self) -> Vec<ClientEvent> {
        self.lock().client_history.clone()
    }

    /// The lease rows of `stream` as stored now, without faults or counting (for checkers).
    pub fn peek_leases(&self, stream: &str) -> Vec<Lease> {
        self.lock()
            .leases
            .get(stream)
            .map(|rows| rows.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many leases of `stream` `client` owns now (for checkers).
    pub fn owned_by(&self, stream: &str, client: &str) -> usize {
        self.peek_leases(stream)
            .iter()
            .filter(|l| l.owner.as_ref().is_some_and(|o| o.as_str() == client))
            .count()
    }

    /// The rows as they are now, to go back to later.
    pub fn snapshot(&self) -> StoreSnapshot {
        let state = self.lock();
        StoreSnapshot {
            clients: state.clients.clone(),
            leases: state.leases.clone(),
        }
    }

    /// The store restarts and loses every write since `snapshot` — as Redis does without an
    /// append-only file synced on every write, or after a failover to a replica that lagged.
    /// Every lease row that changed goes back, and is logged as a [`StoreOp::Rollback`].
    pub fn lose_writes_since(&self, snapshot: &StoreSnapshot) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.clients = snapshot.clients.clone();
        let streams: std::collections::BTreeSet<String> = state
            .leases
            .keys()
            .chain(snapshot.leases.keys())
            .cloned()
            .collect();
        for stream in streams {
            let now = state.leases.get(&stream).cloned().unwrap_or_default();
            let then = snapshot.leases.get(&stream).cloned().unwrap_or_default();
            let shards: std::collections::BTreeSet<&ShardId> =
                now.keys().chain(then.keys()).collect();
            for shard in shards {
                let (before, after) = (now.get(shard), then.get(shard));
                if before != after {
                    state.history.push(StoreEvent {
                        at: self.shared.clock.tick(),
                        time: Instant::now(),
                        stream: stream.clone(),
                        shard: shard.clone(),
                        op: StoreOp::Rollback,
                        claimed: None,
                        before: before.cloned(),
                        after: after.cloned(),
                        ambiguous: false,
                    });
                }
            }
            state.leases.insert(stream, then);
        }
    }

    /// Writes `lease` as its row of `stream`, unconditionally and without history, as an
    /// operator editing the store by hand would (e.g. a token at the largest value).
    pub fn put_lease(&self, stream: &str, lease: Lease) {
        self.lock()
            .leases
            .entry(stream.to_owned())
            .or_default()
            .insert(lease.shard.clone(), lease);
    }

    /// Makes the lease row of `shard` unreadable, as garbage written by hand would be: reads
    /// of every lease report it in [`Rows::corrupt`], and every operation on it fails with
    /// `Corrupt` naming `reason`, until [`MemoryLeaseStore::repair_lease`].
    pub fn corrupt_lease(&self, stream: &str, shard: &ShardId, reason: &str) {
        self.lock()
            .corrupt_leases
            .insert((stream.to_owned(), shard.clone()), reason.to_owned());
    }

    /// Makes the row of `shard` readable again, as it was before [`Self::corrupt_lease`] (as
    /// if the garbage had never been written; [`LeaseStore::replace_corrupt`] is the
    /// operator's repair, which writes a new row).
    pub fn repair_lease(&self, stream: &str, shard: &ShardId) {
        self.lock()
            .corrupt_leases
            .remove(&(stream.to_owned(), shard.clone()));
    }

    /// Makes the change counter unreadable until the next [`LeaseStore::announce`] writes it
    /// afresh.
    pub fn corrupt_changes(&self) {
        self.lock().changes = None;
    }

    /// Makes `client`'s row unreadable until its next heartbeat rewrites it.
    pub fn corrupt_client(&self, client: &ClientId, reason: &str) {
        self.lock()
            .corrupt_clients
            .insert(client.clone(), reason.to_owned());
    }

    /// The client rows as stored now, without faults or counting (for checkers).
    pub fn peek_clients(&self) -> Vec<ClientRow> {
        client_rows(&self.lock())
    }

    /// Runs one operation: counts it, draws and sleeps its latency, maybe fails it before
    /// applying, applies it atomically, and maybe reports an applied write as failed.
    async fn call<T>(
        &self,
        method: Method,
        apply: impl FnOnce(&mut Txn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (latency, fail, throttled, ambiguous) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            *method.counter(&mut state.stats) += 1;
            let mut latency = draw_latency(state);
            if matches!(method, Method::Leases) {
                latency += state.faults.full_read_latency;
            }
            let throttled = state.rng.chance(state.faults.throttle_rate);
            let fail = !throttled && state.rng.chance(state.faults.error_rate);
            let ambiguous = !fail
                && !throttled
                && method.is_write()
                && state.rng.chance(state.faults.ambiguous_rate);
            if fail || throttled {
                state.stats.injected_errors += 1;
            } else if ambiguous {
                state.stats.ambiguous_writes += 1;
            }
            (latency, fail, throttled, ambiguous)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if throttled {
            return Err(StoreError::Throttled(format!(
                "injected throttling of {} (not applied)",
                method.name()
            )));
        }
        if fail {
            return Err(StoreError::Transient(format!(
                "injected error in {} (not applied)",
                method.name()
            )));
        }
        let outcome = {
            let mut state = self.lock();
            let fencing = !state.faults.ignore_fencing;
            let mut txn = Txn {
                state: &mut state,
                clock: &self.shared.clock,
                fencing,
                ambiguous,
            };
            apply(&mut txn)
        };
        if ambiguous {
            return Err(StoreError::Transient(format!(
                "ambiguous outcome of {}: the reply was lost",
                method.name()
            )));
        }
        outcome
    }
}

fn draw_latency(state: &mut StoreState) -> Duration {
    crate::latency::uniform(&mut state.rng, state.faults.latency)
}

fn client_rows(state: &StoreState) -> Vec<ClientRow> {
    state
        .clients
        .iter()
        .filter(|(id, _)| !state.corrupt_clients.contains_key(*id))
        .map(|(id, counter)| client_row(state, id, *counter))
        .collect()
}

fn client_row(state: &StoreState, id: &ClientId, counter: u64) -> ClientRow {
    ClientRow {
        judged_dead: state.judged_dead.get(id).copied(),
        ..ClientRow::new(id.clone(), counter)
    }
}

fn corrupt_client_row(id: &ClientId, reason: &str) -> CorruptRow {
    CorruptRow {
        key: format!("clients/{id}"),
        id: Some(id.to_string()),
        reason: reason.to_owned(),
    }
}

fn corrupt_client_rows(state: &StoreState) -> Vec<CorruptRow> {
    state
        .corrupt_clients
        .iter()
        .filter(|(id, _)| state.clients.contains_key(*id))
        .map(|(id, reason)| corrupt_client_row(id, reason))
        .collect()
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        self.call(Method::Heartbeat, |txn| {
            txn.state.clients.insert(client.clone(), beat);
            txn.state.corrupt_clients.remove(client);
            txn.record_client(client, ClientOp::Heartbeat);
            Ok(())
        })
        .await
    }

    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        self.call(Method::Clients, |txn| {
            let read = Rows::new(client_rows(txn.state), corrupt_client_rows(txn.state));
            txn.state.stats.items_read += (read.rows.len() + read.corrupt.len()) as u64;
            Ok(read)
        })
        .await
    }

    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        self.call(Method::Deregister, |txn| {
            txn.state.judged_dead.remove(client);
            if txn.state.clients.remove(client).is_some() {
                txn.record_client(client, ClientOp::Deregister);
            }
            Ok(())
        })
        .await
    }

    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        self.call(Method::Client, |txn| {
            let Some(&counter) = txn.state.clients.get(client) else {
                return Ok(None);
            };
            txn.state.stats.items_read += 1;
            if let Some(reason) = txn.state.corrupt_clients.get(client) {
                return Err(corrupt_client_row(client, reason).into());
            }
            Ok(Some(client_row(txn.state, client, counter)))
        })
        .await
    }

    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        self.call(Method::MarkDead, |txn| {
            let state = &mut *txn.state;
            if state.clients.get(client) != Some(&counter)
                || state.corrupt_clients.contains_key(client)
            {
                return Ok(false);
            }
            state.judged_dead.insert(client.clone(), counter);
            txn.record_client(client, ClientOp::JudgedDead);
            Ok(true)
        })
        .await
    }

    async fn changes(&self) -> Result<u64, StoreError> {
        self.call(Method::Changes, |txn| {
            txn.state.stats.items_read += 1;
            txn.state.changes.ok_or_else(|| StoreError::Corrupt {
                key: "changes".into(),
                reason: "the change counter does not decode".into(),
            })
        })
        .await
    }

    async fn announce(&self) -> Result<u64, StoreError> {
        self.call(Method::Announce, |txn| {
            let next = match txn.state.changes {
                Some(n) if n < TOKEN_LIMIT => n + 1,
                _ => 1,
            };
            txn.state.changes = Some(next);
            Ok(next)
        })
        .await
    }

    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        let page = self.lock().faults.leases_page;
        let page = if page == 0 { usize::MAX } else { page };
        let mut rows: Vec<Lease> = Vec::new();
        let split = |rows: Vec<Lease>| {
            let state = self.lock();
            let (bad, good): (Vec<Lease>, Vec<Lease>) = rows.into_iter().partition(|l| {
                state
                    .corrupt_leases
                    .contains_key(&(stream.to_owned(), l.shard.clone()))
            });
            let corrupt = bad
                .iter()
                .filter_map(|l| {
                    let reason = state
                        .corrupt_leases
                        .get(&(stream.to_owned(), l.shard.clone()))?;
                    Some(corrupt_lease_row(stream, &l.shard, reason))
                })
                .collect();
            Rows::new(good, corrupt)
        };
        loop {
            let after = rows.last().map(|l| l.shard.clone());
            let part = self
                .call(Method::Leases, |txn| {
                    let Some(all) = txn.state.leases.get(stream) else {
                        return Ok(Vec::new());
                    };
                    let from: Vec<Lease> = match &after {
                        Some(last) => all
                            .range::<ShardId, _>((
                                std::ops::Bound::Excluded(last),
                                std::ops::Bound::Unbounded,
                            ))
                            .map(|(_, l)| l.clone())
                            .take(page)
                            .collect(),
                        None => all.values().take(page).cloned().collect(),
                    };
                    txn.state.stats.items_read += from.len() as u64;
                    Ok::<Vec<Lease>, StoreError>(from)
                })
                .await?;
            let last_page = part.len() < page;
            rows.extend(part);
            if last_page {
                return Ok(split(rows));
            }
        }
    }

    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        self.call(Method::Lease, |txn| {
            txn.state.stats.items_read += 1;
            if let Some(reason) = txn
                .state
                .corrupt_leases
                .get(&(stream.to_owned(), shard.clone()))
            {
                return Err(corrupt_lease_row(stream, shard, reason).into());
            }
            Ok(txn
                .state
                .leases
                .get(stream)
                .and_then(|rows| rows.get(shard))
                .cloned())
        })
        .await
    }

    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        self.call(Method::CreateIfAbsent, |txn| {
            if let Some(reason) = txn
                .state
                .corrupt_leases
                .get(&(stream.to_owned(), shard.clone()))
            {
                return Err(corrupt_lease_row(stream, shard, reason).into());
            }
            let rows = txn.state.leases.entry(stream.to_owned()).or_default();
            if let Some(existing) = rows.get(shard) {
                return Ok(existing.clone());
            }
            let row = Lease::new(shard.clone(), parents.to_vec());
            rows.insert(shard.clone(), row.clone());
            txn.record(
                stream,
                shard,
                StoreOp::Create,
                None,
                None,
                Some(row.clone()),
            );
            Ok(row)
        })
        .await
    }

    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        self.call(Method::Take, |txn| {
            let fencing = txn.fencing;
            let row = txn.row_mut(stream, shard)?;
            if row.finished || (fencing && row.token != expected_token) {
                return Err(lease_lost(shard));
            }
            let token =
                kinsumer_core::store::next_token(row.token, u64::MAX).map_err(|reason| {
                    StoreError::Corrupt {
                        key: format!("{stream}/{shard}"),
                        reason,
                    }
                })?;
            let before = row.clone();
            row.owner = Some(owner.clone());
            row.token = token;
            row.successor = None;
            let after = row.clone();
            let claimed = Tenure {
                shard: shard.clone(),
                owner: owner.clone(),
                token: expected_token,
            };
            txn.record(
                stream,
                shard,
                StoreOp::Take,
                Some(claimed),
                Some(before),
                Some(after.clone()),
            );
            Ok(after)
        })
        .await
    }

    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.call(Method::Checkpoint, |txn| {
            txn.fenced(stream, tenure, StoreOp::Checkpoint, |row| {
                row.checkpoint = Some(checkpoint.clone());
            })
        })
        .await
    }

    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        self.call(Method::Release, |txn| {
            txn.fenced(stream, tenure, StoreOp::Release, |row| {
                row.owner = None;
                row.successor = successor.cloned();
                if let Some(checkpoint) = checkpoint {
                    row.checkpoint = Some(checkpoint.clone());
                }
            })
        })
        .await
    }

    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        self.call(Method::Finish, |txn| {
            txn.fenced(stream, tenure, StoreOp::Finish, |row| {
                row.finished = true;
                row.checkpoint = Some(Checkpoint::ShardEnd);
            })
        })
        .await
    }

    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        self.call(Method::DeleteFinished, |txn| {
            let Some(rows) = txn.state.leases.get_mut(stream) else {
                return Ok(());
            };
            match rows.get(shard) {
                None => return Ok(()),
                Some(row) if !row.finished => return Err(lease_lost(shard)),
                Some(_) => {}
            }
            let before = rows.remove(shard);
            txn.record(stream, shard, StoreOp::Delete, None, before, None);
            Ok(())
        })
        .await
    }

    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.call(Method::ResetCheckpoint, |txn| {
            let row = txn.row_mut(stream, shard)?;
            if row.owner.is_some() || row.token != expected_token {
                return Err(lease_lost(shard));
            }
            let before = row.clone();
            row.checkpoint = Some(checkpoint.clone());
            let after = row.clone();
            txn.record(
                stream,
                shard,
                StoreOp::Reset,
                None,
                Some(before),
                Some(after),
            );
            Ok(())
        })
        .await
    }

    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        self.call(Method::ReplaceCorrupt, |txn| {
            let key = (stream.to_owned(), lease.shard.clone());
            // A row made unreadable is a row of garbage: it exists even if nothing decodable
            // was ever stored under it (as `lease` reports it `Corrupt`).
            if txn.state.corrupt_leases.remove(&key).is_none() {
                let stored = txn
                    .state
                    .leases
                    .get(stream)
                    .and_then(|rows| rows.get(&lease.shard));
                match stored {
                    Some(row) if row.token_exhausted() => {}
                    Some(_) => return Err(lease_lost(&lease.shard)),
                    None => {
                        return Err(StoreError::NotFound {
                            shard: lease.shard.clone(),
                        });
                    }
                }
            }
            let before = txn
                .state
                .leases
                .entry(stream.to_owned())
                .or_default()
                .insert(lease.shard.clone(), lease.clone());
            txn.record(
                stream,
                &lease.shard,
                StoreOp::Repair,
                None,
                before,
                Some(lease.clone()),
            );
            Ok(())
        })
        .await
    }
}
