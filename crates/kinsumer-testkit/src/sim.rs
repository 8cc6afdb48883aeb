//! The deterministic simulation: a fleet of real [`Consumer`]s on a [`MemoryStream`] and a
//! [`MemoryLeaseStore`], under tokio's paused clock, with faults — then every invariant of the
//! design is checked.
//!
//! A [`Scenario`] is drawn from a seed: how many shards, clients and records, and a timeline of
//! events — crashes, graceful leaves, joins, pauses longer than the lease TTL, splits and merges
//! during rebalancing, windows of store errors and *ambiguous* writes, throttling, transient
//! read errors and expired iterators, handlers stalled past the iterator lifetime — and, in a
//! quarter of the runs, one client that stalls *for good* while its process runs on: its
//! application hangs holding a record ([`Event::Hang`]), stops polling its record stream
//! ([`Event::StopPolling`]), drops its record stream or its `Consumer` without shutdown
//! ([`Event::DropRecords`], [`Event::DropConsumer`]), or its supervisor gets stuck
//! ([`Event::StuckSupervisor`]). Such a stall never heals: the engine must move the work away
//! (`stall_timeout`, the watchdog, a graceful shutdown on drop). Each client's clock runs a
//! little fast or slow (all of its intervals scale), which is what clock skew does to a process
//! that only reads a monotonic clock. After the run, [`Report::violations`] lists every broken
//! invariant:
//!
//! - every record produced is delivered and acked;
//! - within one lease tenure a shard's records are delivered in strictly increasing order;
//! - a tenure starts right after the checkpoint it took the lease with (never beyond: no gap);
//! - no record of a child shard is delivered before its parents are finished;
//! - no checkpoint, release or finish is written by anyone but the current owner and token;
//! - no checkpoint moves backwards;
//! - no lease is taken from a client whose heartbeats were still landing ([`oracle::no_theft`]),
//!   and no client is marked judged dead while they were ([`oracle::no_false_death`]);
//! - no record is handed out by a tenure after the store's token moved past it
//!   ([`oracle::no_hand_out_after_takeover`]);
//! - every write of a tenure covers what its application had acked a call's time before, so
//!   duplicates come only from the commit window of a crash or fence, never from a graceful
//!   release ([`oracle::duplicates_bounded`]);
//! - once every fault healed (a stall for good does not count: it never heals), every record is
//!   acked within [`record_bound`], and — while a client joins and one leaves in calm — no
//!   released lease stays free longer than [`free_lease_bound`];
//! - the client that leaves in calm — shut down, or its `Consumer` or record stream dropped
//!   ([`Scenario::last_departure`]) — releases every lease it held before anyone else writes it
//!   (the drop oracle: a dropped consumer that crashes, or one that idles on its leases, fails);
//! - at the end every eligible shard is owned by a live client (in the fleet, and not out of it
//!   because its record stream is not polled), balanced to within one; and no client whose
//!   application polls its record stream is out of the fleet as not polled.
//!
//! Half the seeds also run the *network* fault model: every store and source call of every
//! client is delayed on the way out and on the way back (jitter, and a long tail that passes
//! `call_timeout`), so each call is a point where other clients' writes interleave; the store
//! reads every lease in pages that are not a snapshot (as DynamoDB does), and throttles.
//!
//! Runs replay exactly: one thread, the paused clock, seeded randomness, no wall clock and no
//! `HashMap` order anywhere. A failing seed prints the command that replays it.
//!
//! ```
//! use kinsumer_testkit::sim::{Scenario, run};
//!
//! let report = run(&Scenario::from_seed(7));
//! assert!(report.violations.is_empty(), "{report}");
//! assert!(report.produced > 0 && report.delivered >= report.produced);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kinsumer_core::faults::{EngineFaults, FaultSwitch};
use kinsumer_core::layer::Layered;
use kinsumer_core::position::{Checkpoint, Position};
use kinsumer_core::rng::{Rng, stable_hash};
use kinsumer_core::source::{ShardId, ShardSource, SourceRecord};
use kinsumer_core::store::{ClientId, Lease, LeaseStore};
use kinsumer_core::{
    AckMode, Config, Consumer, ConsumerError, Record, RecordRun, Records, ShardBatch,
    ShutdownHandle, StatusHandle,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};

use crate::faults::{Gate, GatedSource, GatedStore};
use crate::latency::{Latency, LatencyProfile};
use crate::memory_store::{EventClock, MemoryLeaseStore, StoreEvent, StoreFaults, StoreOp};
use crate::memory_stream::{MemoryStream, MemoryStreamConfig, SourceFaults};
use crate::oracle;
/// The verdicts of a run, defined with the oracles that also judge any memory-store test.
pub use crate::oracle::{Delivery, Invariant, Violation};

/// Something that happens to the fleet or its services at a point of simulated time.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A client vanishes without releasing anything (`kill -9`).
    Crash,
    /// A client shuts down gracefully and starts again under the same client id (a rolling
    /// deploy of a StatefulSet pod).
    Restart,
    /// A client shuts down gracefully.
    Leave,
    /// A new client joins.
    Join,
    /// A client's process stops for this long (GC pause, SIGSTOP), then goes on.
    Pause(Duration),
    /// A client's application stops processing for this long — longer than the stream's
    /// iterator lifetime — while the process runs on: its buffer fills, fetching pauses, the
    /// idle iterator expires by itself, and reading must resume right after the last record.
    HandlerStall(Duration),
    /// For this long a client's heartbeats and store reads hang while its writes still go
    /// through: the others stop hearing from it, and it stops hearing from them.
    HalfPartition(Duration),
    /// An open shard splits in two.
    Split,
    /// Two adjacent open shards merge.
    Merge,
    /// For this long the store fails calls and reports applied writes as failed.
    StoreFaults {
        /// How long.
        duration: Duration,
        /// Share of calls failed without being applied.
        error_rate: f64,
        /// Share of writes applied but reported failed.
        ambiguous_rate: f64,
        /// Share of calls refused as throttled.
        throttle_rate: f64,
        /// Each call takes up to this long.
        max_latency: Duration,
    },
    /// For this long one lease row does not decode (garbage written by hand), and one client's
    /// row does until that client's next heartbeat rewrites it: the fleet must go on with every
    /// other row, and take the shard up again once the row is repaired.
    CorruptRows(Duration),
    /// One client's application hangs for good (a deadlock, a call that never returns) while
    /// its process runs on and heartbeats: with the record stream it holds a record it was
    /// handed and never acks it; with a batch handler every call of that client blocks. Its
    /// shards must move within `stall_timeout`.
    Hang,
    /// One client's application stops polling its record stream for good, after acking what it
    /// holds, but keeps the stream (with a batch handler: as [`Event::Hang`]). Once records wait
    /// for `stall_timeout`, the client must leave the fleet.
    StopPolling,
    /// One client's supervisor gets stuck for good (`EngineFaults::stuck_supervisor`, waiting
    /// without a call): its watchdog must stop its heartbeats, so it fences itself and the fleet
    /// takes its leases after the TTL. It no longer counts as in the fleet.
    StuckSupervisor,
    /// One client's application drops its record stream but keeps the `Consumer` (with a batch
    /// handler: as [`Event::DropConsumer`]): the consumer must shut down and release.
    DropRecords,
    /// One client's `Consumer` is dropped without `shutdown` (with a batch handler: the future
    /// of `run` is dropped): it must shut down in the background and release.
    DropConsumer,
    /// For this long the stream throttles, fails reads and expires iterators.
    SourceFaults {
        /// How long.
        duration: Duration,
        /// Share of reads throttled.
        throttle_rate: f64,
        /// Share of calls failed.
        error_rate: f64,
        /// Share of reads that find their iterator expired.
        expiry_rate: f64,
        /// Each call takes up to this long.
        max_latency: Duration,
    },
}

impl Event {
    /// Whether this is a stall for good ([`Event::Hang`], [`Event::StopPolling`],
    /// [`Event::StuckSupervisor`], [`Event::DropRecords`], [`Event::DropConsumer`]): it lasts to
    /// the end of the run, so the engine must move the work away from it.
    pub fn is_for_good(&self) -> bool {
        matches!(
            self,
            Self::Hang
                | Self::StopPolling
                | Self::StuckSupervisor
                | Self::DropRecords
                | Self::DropConsumer
        )
    }
}

/// How the calm phase's last probe takes a client out of the fleet (the leases it held must be
/// released by it, whichever way it goes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Departure {
    /// `Consumer::shutdown` (a batch handler's consumer: its `ShutdownHandle`).
    #[default]
    Shutdown,
    /// The `Consumer` is dropped without shutdown (a batch handler's: the future of `run`).
    DropConsumer,
    /// The record stream is dropped and the `Consumer` kept (a batch handler: as
    /// `DropConsumer`).
    DropRecords,
}

/// One simulated run, fully determined by its fields.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Shards at the start.
    pub shards: usize,
    /// Clients at the start.
    pub clients: usize,
    /// Records the producer writes.
    pub records: usize,
    /// Over how long they are written.
    pub produce_for: Duration,
    /// What happens when (from the start of the run).
    pub events: Vec<(Duration, Event)>,
    /// Consume through `Consumer::run` with a batch handler instead of the record stream.
    pub batch_handler: bool,
    /// Every record takes 30–100 ms to process, so records pile up un-acked.
    pub slow_handler: bool,
    /// Record-stream consumers ack by dropping records (`AckMode::OnDrop`).
    pub ack_on_drop: bool,
    /// Record-stream consumers take a run at a time (`Records::next_run`), acked whole.
    pub by_run: bool,
    /// The clients' `call_timeout`. A paused client's calls hang until this passes; a long one
    /// lets a call made during the pause land after it, as a real process pause does.
    pub call_timeout: Duration,
    /// Each client's clock rate may be off by up to this fraction (0.05 = ±5 %).
    pub max_clock_drift: f64,
    /// Deliberate engine bugs (to prove the checks catch them).
    pub engine_faults: EngineFaults,
    /// A deliberately broken store that ignores fencing.
    pub store_ignores_fencing: bool,
    /// Every store and source call of every client gets this latency each way (`None`: calls
    /// are instant unless a fault event says otherwise).
    pub network: Option<LatencyProfile>,
    /// The store reads every lease in pages of this many rows, not as one snapshot (0: one).
    pub leases_page: usize,
    /// A read of every lease takes this much longer than another call (a large table).
    pub full_read_latency: Duration,
    /// The clients' `stall_timeout` (scaled by each client's clock drift, as its other
    /// intervals): a record not acked, a handler call not returned or a record stream not polled
    /// for this long gives the work up to another client. 30 s in [`Scenario::calm`] — above
    /// the longest the simulated application legitimately takes (a batch of slow records, a
    /// pause), well below the run's length; `None` switches stall detection off.
    pub stall_timeout: Option<Duration>,
    /// How the calm phase's last probe takes a client out of the fleet.
    pub last_departure: Departure,
    /// The fleet, started together on a store without rows, must be balanced this long after
    /// the start: every shard's row created, every eligible lease owned by a live client,
    /// within one of each other ([`Invariant::Balanced`]). Judged before the first event that
    /// comes later; `None`: not judged (faults from the start may legitimately delay it).
    pub balanced_by: Option<Duration>,
}

impl Scenario {
    /// A calm run: no events, one shard per client.
    pub fn calm(seed: u64, shards: usize, clients: usize, records: usize) -> Self {
        Self {
            seed,
            shards,
            clients,
            records,
            produce_for: Duration::from_secs(20),
            events: Vec::new(),
            batch_handler: false,
            slow_handler: false,
            ack_on_drop: false,
            by_run: false,
            call_timeout: Duration::from_secs(10),
            max_clock_drift: 0.0,
            engine_faults: EngineFaults::default(),
            store_ignores_fencing: false,
            network: None,
            leases_page: 0,
            full_read_latency: Duration::ZERO,
            stall_timeout: Some(Duration::from_secs(30)),
            last_departure: Departure::Shutdown,
            balanced_by: None,
        }
    }

    /// A scenario drawn from `seed`: 1–4 shards, 2–4 clients, 100–400 records over 30 s, and
    /// 2–6 events in the first 45 s; 30 % consume with a batch handler, 15 % with a slow one, a
    /// third of the record-stream ones take runs (`Records::next_run`); a
    /// quarter also have one client stall for good in the first 40 s, and the calm phase's last
    /// probe is a shutdown, a dropped `Consumer` or a dropped record stream, a third each.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = Rng::new(stable_hash(&[b"scenario", &seed.to_le_bytes()]));
        let mut s = Self::calm(
            seed,
            1 + rng.below(4) as usize,
            2 + rng.below(3) as usize,
            100 + rng.below(301) as usize,
        );
        s.produce_for = Duration::from_secs(30);
        s.batch_handler = rng.chance(0.3);
        s.slow_handler = rng.chance(0.15);
        s.ack_on_drop = rng.chance(0.3);
        if rng.chance(0.5) {
            s.call_timeout = Duration::from_secs(60);
        }
        s.max_clock_drift = 0.05;
        if rng.chance(0.5) {
            // Jitter each way, and now and then a call slower than `call_timeout`.
            let ms = Duration::from_millis;
            let tail_to = s.call_timeout + ms(5_000);
            s.network = Some(LatencyProfile {
                request: (ms(0), ms(rng.below(60))),
                reply: (ms(0), ms(rng.below(60))),
                tail_rate: 0.002 + 0.01 * rng.unit(),
                tail: (ms(500), tail_to),
            });
            s.leases_page = 1 + rng.below(3) as usize;
        }
        let events = 2 + rng.below(5);
        for _ in 0..events {
            let at = Duration::from_millis(rng.below(45_000));
            let event = match rng.below(11) {
                0 => Event::Crash,
                9 => Event::Restart,
                10 => Event::HandlerStall(Duration::from_millis(310_000 + rng.below(90_000))),
                1 => Event::Leave,
                2 => Event::Join,
                3 if rng.chance(0.5) => {
                    Event::Pause(Duration::from_millis(3_000 + rng.below(17_000)))
                }
                3 => Event::HalfPartition(Duration::from_millis(3_000 + rng.below(17_000))),
                4 => Event::Split,
                5 => Event::Merge,
                6 => Event::StoreFaults {
                    duration: Duration::from_millis(2_000 + rng.below(10_000)),
                    error_rate: 0.05 + 0.2 * rng.unit(),
                    ambiguous_rate: 0.05 + 0.15 * rng.unit(),
                    throttle_rate: if rng.chance(0.5) {
                        0.3 * rng.unit()
                    } else {
                        0.0
                    },
                    max_latency: Duration::from_millis(rng.below(400)),
                },
                7 => Event::SourceFaults {
                    duration: Duration::from_millis(2_000 + rng.below(10_000)),
                    throttle_rate: 0.3 * rng.unit(),
                    error_rate: 0.2 * rng.unit(),
                    expiry_rate: 0.2 * rng.unit(),
                    max_latency: Duration::from_millis(rng.below(400)),
                },
                _ => {
                    // Reshard while the fleet is rebalancing: a join and a split together.
                    s.events.push((at, Event::Join));
                    Event::Split
                }
            };
            s.events.push((at, event));
        }
        // Drawn from a stream of its own, so every other choice is what it was before rows
        // could be corrupted (seeds kept as regression tests still replay the same runs).
        let mut extra = Rng::new(stable_hash(&[b"corrupt rows", &seed.to_le_bytes()]));
        if extra.chance(0.2) {
            let at = Duration::from_millis(extra.below(30_000));
            let d = Duration::from_millis(2_000 + extra.below(13_000));
            s.events.push((at, Event::CorruptRows(d)));
        }
        // From a third stream: in a quarter of the runs one client stalls for good, and the calm
        // phase's last probe shuts a client down, drops its consumer or drops its record stream.
        // From a fourth: a third of the record-stream consumers take runs.
        s.by_run = Rng::new(stable_hash(&[b"runs", &seed.to_le_bytes()])).chance(0.33);
        let mut stalls = Rng::new(stable_hash(&[b"stalls", &seed.to_le_bytes()]));
        if stalls.chance(0.25) {
            let at = Duration::from_millis(stalls.below(40_000));
            let event = match stalls.below(5) {
                0 => Event::Hang,
                1 => Event::StopPolling,
                2 => Event::StuckSupervisor,
                3 => Event::DropRecords,
                _ => Event::DropConsumer,
            };
            s.events.push((at, event));
        }
        s.last_departure = match stalls.below(3) {
            0 => Departure::Shutdown,
            1 => Departure::DropConsumer,
            _ => Departure::DropRecords,
        };
        s.events.sort_by_key(|(at, _)| *at);
        s
    }

    /// The one-line command that replays this scenario's seed.
    pub fn replay_command(&self) -> String {
        format!(
            "KINSUMER_SIM_SEED={} cargo test -p kinsumer-testkit --test sim -- replay_one_seed --nocapture",
            self.seed
        )
    }
}

/// What a run did and what it broke.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario that ran.
    pub scenario: Scenario,
    /// Records written.
    pub produced: usize,
    /// Deliveries (including redeliveries).
    pub delivered: usize,
    /// Deliveries of a record already delivered before.
    pub duplicates: usize,
    /// Acks the application made (a record acked by two owners counts twice).
    pub acks: usize,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// A digest of every delivery and store write: equal digests mean identical runs.
    pub trace_digest: u64,
    /// Every broken invariant.
    pub violations: Vec<Violation>,
    /// From the moment every fault healed until every record was acked.
    pub settle: Duration,
    /// The longest a released lease stayed without an owner, among releases after every
    /// fault healed and every call made before then ended.
    pub longest_free: Duration,
    /// Reads that found their stream iterator expired (forced by a fault, or idle too long).
    pub expired_iterators: u64,
    /// Stalls the clients found (`StatusHandle::stalls`, up to 32 a client).
    pub stalls: usize,
}

impl Report {
    /// Whether any violation is of `invariant`.
    pub fn broke(&self, invariant: Invariant) -> bool {
        self.violations.iter().any(|v| v.invariant == invariant)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: produced {}, delivered {}, duplicates {}, {:?} simulated, {} violation(s)",
            self.scenario.seed,
            self.produced,
            self.delivered,
            self.duplicates,
            self.sim_time,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(10) {
            writeln!(f, "  {:?}: {}", v.invariant, v.detail)?;
        }
        if !self.violations.is_empty() {
            writeln!(f, "  scenario: {:?}", self.scenario)?;
            writeln!(f, "  replay: {}", self.scenario.replay_command())?;
        }
        Ok(())
    }
}

/// Runs `scenario` on a fresh current-thread runtime with the paused clock.
pub fn run(scenario: &Scenario) -> Report {
    match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt.block_on(run_async(scenario.clone())),
        Err(e) => Report {
            scenario: scenario.clone(),
            produced: 0,
            delivered: 0,
            duplicates: 0,
            acks: 0,
            sim_time: Duration::ZERO,
            trace_digest: 0,
            settle: Duration::ZERO,
            longest_free: Duration::ZERO,
            expired_iterators: 0,
            stalls: 0,
            violations: vec![Violation {
                invariant: Invariant::Liveness,
                detail: format!("could not build a runtime: {e}"),
            }],
        },
    }
}

/// The record id the producer wrote into each record's data.
fn record_id(r: &SourceRecord) -> Option<u64> {
    Some(u64::from_be_bytes(r.data.get(..8)?.try_into().ok()?))
}

type Log = Arc<Mutex<Vec<Delivery>>>;
/// Every record id acked at least once, and how many acks there were in all.
#[derive(Default)]
struct AckBook {
    ids: BTreeSet<u64>,
    total: usize,
    /// Every ack, by tenure, in order.
    log: Vec<Delivery>,
}

type Acked = Arc<Mutex<AckBook>>;
type Errors = Arc<Mutex<Vec<String>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the simulated application does with a record: log it, take a while, ack it.
#[derive(Clone)]
struct App {
    client: String,
    clock: EventClock,
    gate: Gate,
    /// Closed while the application's handler is stalled (the process runs on).
    stall: Gate,
    /// Closed for good when the application hangs ([`Event::Hang`]).
    hang: Gate,
    /// Closed for good when the application stops polling its record stream.
    polling: Gate,
    /// Closed until the application drops its record stream (a signal, opened once).
    dropped: Gate,
    log: Log,
    acked: Acked,
}

impl App {
    fn deliver(&self, shard: &ShardId, token: u64, record: &SourceRecord) {
        lock(&self.log).push(self.entry(shard, token, record));
    }

    fn entry(&self, shard: &ShardId, token: u64, record: &SourceRecord) -> Delivery {
        Delivery {
            at: self.clock.tick(),
            time: Instant::now(),
            client: self.client.clone(),
            shard: shard.clone(),
            token,
            position: record.position.clone(),
        }
    }

    fn ack(&self, shard: &ShardId, token: u64, record: &SourceRecord) {
        let entry = self.entry(shard, token, record);
        let mut book = lock(&self.acked);
        book.total += 1;
        book.log.push(entry);
        if let Some(id) = record_id(record) {
            book.ids.insert(id);
        }
    }
}

/// How long the application takes for one record: mostly quick, sometimes slow.
/// What the record stream handed the application: one record, or a run.
enum Handed {
    One(Record),
    Run(RecordRun),
}

impl Handed {
    async fn next(stream: &mut Records, by_run: bool) -> Option<Result<Handed, ConsumerError>> {
        if by_run {
            stream.next_run().await.map(|r| r.map(Handed::Run))
        } else {
            stream.next().await.map(|r| r.map(Handed::One))
        }
    }

    fn records(&self) -> &[SourceRecord] {
        match self {
            Handed::One(r) => std::slice::from_ref(r.source_record()),
            Handed::Run(run) => run.records(),
        }
    }

    fn shard_id(&self) -> &ShardId {
        match self {
            Handed::One(r) => r.shard_id(),
            Handed::Run(run) => run.shard_id(),
        }
    }

    fn lease_token(&self) -> u64 {
        match self {
            Handed::One(r) => r.lease_token(),
            Handed::Run(run) => run.lease_token(),
        }
    }

    fn ack(self) {
        match self {
            Handed::One(r) => r.ack(),
            Handed::Run(run) => run.ack(),
        }
    }
}

fn processing_time(rng: &mut Rng, slow: bool) -> Duration {
    if slow {
        Duration::from_millis(30 + rng.below(70))
    } else if rng.chance(0.02) {
        Duration::from_millis(500 + rng.below(2_500))
    } else {
        Duration::from_millis(rng.below(20))
    }
}

struct Member {
    id: String,
    gate: Gate,
    half_gate: Gate,
    stall: Gate,
    /// See [`App`].
    hang: Gate,
    polling: Gate,
    dropped: Gate,
    /// Its supervisor's `EngineFaults::stuck_supervisor`.
    stuck: FaultSwitch,
    /// Its consumer's status: whether it left the fleet because it was not polled.
    status: StatusHandle,
    /// The network delays of its source calls (0) and store calls (1).
    network: [Latency; 2],
    consumer: Option<Consumer>,
    shutdown: Option<ShutdownHandle>,
    worker: JoinHandle<()>,
    /// Not crashed and not left.
    in_fleet: bool,
    /// Its application hangs or stopped polling for good: in the fleet, but it does no work.
    hung: bool,
}

/// A client taken out of the fleet in calm, and the leases it held at that moment: each must be
/// released (or finished) by it before anyone else writes it.
struct Departed {
    client: ClientId,
    how: Departure,
    /// The store's event clock at the departure.
    at: u64,
    /// (shard, token) of every lease it owned.
    leases: Vec<(ShardId, u64)>,
}

struct World {
    scenario: Scenario,
    rng: Rng,
    stream: MemoryStream,
    store: MemoryLeaseStore,
    clock: EventClock,
    log: Log,
    acked: Acked,
    errors: Errors,
    members: Vec<Member>,
    leaving: Vec<JoinHandle<()>>,
    next_client: usize,
    /// Ids of restarting clients whose old process finished shutting down.
    rejoin: tokio::sync::mpsc::UnboundedSender<String>,
    rejoining: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The faults have healed: clients that join now get a calm network.
    calm: bool,
    /// When the last handler stall ends (a stall is the application's, not a fault: it is not
    /// cut short at the calm). Permanent stalls ([`Event::Hang`] and the like) do not count:
    /// the engine must move the work away from them.
    stalled_until: Instant,
    /// Clients taken out of the fleet in calm (the drop oracle).
    departed: Vec<Departed>,
}

impl World {
    /// The clients in the fleet now: a client out of it because it is not polled counts as
    /// gone (it holds nothing, and is planned nothing).
    fn live(&self) -> Vec<ClientId> {
        self.members
            .iter()
            .filter(|m| m.in_fleet && !m.status.has_left_fleet())
            .map(|m| ClientId::from(m.id.as_str()))
            .collect()
    }

    fn config(&mut self, id: &str) -> Config {
        let mut c = Config::new("sim").with_client_id(id);
        let drift = 1.0 + self.scenario.max_clock_drift * (2.0 * self.rng.unit() - 1.0);
        for d in [
            &mut c.heartbeat_interval,
            &mut c.lease_ttl,
            &mut c.safety_margin,
            &mut c.commit_interval,
            &mut c.poll_interval,
            &mut c.idle_poll_interval,
            &mut c.membership_poll_interval,
            &mut c.rebalance_interval,
            &mut c.shard_sync_interval,
            &mut c.drain_timeout,
        ] {
            *d = d.mul_f64(drift);
        }
        c.shard_sync_interval = Duration::from_secs(10).mul_f64(drift);
        c.stall_timeout = self.scenario.stall_timeout.map(|d| d.mul_f64(drift));
        c.max_unacked_records = 200;
        c.rng_seed = Some(self.rng.next_u64());
        c.call_timeout = self.scenario.call_timeout;
        if self.scenario.ack_on_drop {
            c.ack_mode = AckMode::OnDrop;
        }
        c.faults = self.scenario.engine_faults.clone();
        c
    }

    /// Lets time pass until `until`, starting each restarting client again as soon as its old
    /// process is gone — which may be long after the restart began (its shutdown waits for the
    /// calls it has in flight, up to `call_timeout`), even after the faults healed.
    async fn pass_until(&mut self, until: Instant) {
        loop {
            let id = tokio::select! {
                biased;
                Some(id) = self.rejoining.recv() => id,
                () = sleep_until(until) => return,
            };
            self.join_as(id);
        }
    }

    /// [`World::pass_until`] `d` from now.
    async fn pass(&mut self, d: Duration) {
        self.pass_until(Instant::now() + d).await;
    }

    fn join(&mut self) {
        let id = format!("client-{:02}", self.next_client);
        self.next_client += 1;
        self.join_as(id);
    }

    /// A network delay for one client's calls (none without a profile).
    fn network(&mut self) -> Latency {
        let latency = Latency::new(self.rng.next_u64());
        if let Some(profile) = self.scenario.network.as_ref().filter(|_| !self.calm) {
            latency.set_profile(profile.clone(), None);
        }
        latency
    }

    /// Starts a client. From the outside in: its process (a pause holds calls before they
    /// leave and replies before they are seen), the network (latency each way, a half
    /// partition), then the server.
    fn join_as(&mut self, id: String) {
        let mut config = self.config(&id);
        let stuck = FaultSwitch::default();
        config.faults.stuck_supervisor = Some(stuck.clone());
        let gate = Gate::new();
        let half_gate = Gate::for_ops(&["heartbeat", "clients", "leases", "lease"]);
        let network = [self.network(), self.network()];
        let source: Arc<dyn ShardSource> = Arc::new(GatedSource::new(
            Layered::new(self.stream.clone(), network[0].clone()),
            gate.clone(),
        ));
        let store: Arc<dyn LeaseStore> = Arc::new(GatedStore::new(
            Layered::new(
                GatedStore::new(self.store.clone(), half_gate.clone()),
                network[1].clone(),
            ),
            gate.clone(),
        ));
        let stall = Gate::new();
        let (hang, polling, dropped) = (Gate::new(), Gate::new(), Gate::new());
        dropped.pause();
        let app = App {
            client: id.clone(),
            clock: self.clock.clone(),
            gate: gate.clone(),
            stall: stall.clone(),
            hang: hang.clone(),
            polling: polling.clone(),
            dropped: dropped.clone(),
            log: self.log.clone(),
            acked: self.acked.clone(),
        };
        let mut rng = Rng::new(self.rng.next_u64());
        let slow = self.scenario.slow_handler;
        let on_drop = self.scenario.ack_on_drop;
        let by_run = self.scenario.by_run;
        let errors = self.errors.clone();
        let mut consumer = match Consumer::from_shared(config, source, store) {
            Ok(c) => c,
            Err(e) => {
                lock(&errors).push(format!("{id}: {e}"));
                return;
            }
        };
        let status = consumer.status();
        let (worker, consumer, shutdown) = if self.scenario.batch_handler {
            let shutdown = consumer.shutdown_handle();
            let rng = Arc::new(Mutex::new(rng));
            let handler = move |batch: ShardBatch| {
                let app = app.clone();
                let rng = rng.clone();
                async move {
                    let (fail, time) = {
                        let mut r = lock(&rng);
                        let fail = r.chance(0.03);
                        let time: Duration = batch
                            .records
                            .iter()
                            .map(|_| processing_time(&mut r, slow))
                            .sum();
                        (fail, time)
                    };
                    // Logged as handed out (an attempt that will fail processes nothing).
                    if !fail {
                        for r in &batch.records {
                            app.deliver(&batch.shard, batch.lease_token, r);
                        }
                    }
                    app.gate.wait_open().await;
                    app.stall.wait_open().await;
                    app.hang.wait_open().await;
                    sleep(time).await;
                    app.gate.wait_open().await;
                    if fail {
                        return Err("simulated handler failure".into());
                    }
                    for r in &batch.records {
                        app.ack(&batch.shard, batch.lease_token, r);
                    }
                    Ok(())
                }
            };
            let id2 = id.clone();
            let worker = tokio::spawn(async move {
                if let Err(e) = consumer.run(handler).await {
                    lock(&errors).push(format!("{id2}: {e}"));
                }
            });
            (worker, None, Some(shutdown))
        } else {
            let records = match consumer.records() {
                Ok(r) => r,
                Err(e) => {
                    lock(&errors).push(format!("{id}: {e}"));
                    return;
                }
            };
            let id2 = id.clone();
            let worker = tokio::spawn(async move {
                let mut records = Some(records);
                loop {
                    // Polled until the application stops polling (the stream kept) or drops it.
                    let next = match records.as_mut() {
                        None => break,
                        Some(stream) => tokio::select! {
                            biased;
                            () = app.dropped.wait_open() => None,
                            item = async {
                                app.polling.wait_open().await;
                                Handed::next(stream, by_run).await
                            } => Some(item),
                        },
                    };
                    let Some(Some(item)) = next else {
                        break;
                    };
                    let handed = match item {
                        Ok(h) => h,
                        Err(e) => {
                            lock(&errors).push(format!("{id2}: {e}"));
                            break;
                        }
                    };
                    // Logged when handed out, before a pause can hold the application.
                    for record in handed.records() {
                        app.deliver(handed.shard_id(), handed.lease_token(), record);
                    }
                    app.gate.wait_open().await;
                    app.stall.wait_open().await;
                    // Hung for good: the records are held, not acked. An application that drops
                    // its stream meanwhile still holds them (dropping them would ack them in
                    // `AckMode::OnDrop`, unprocessed).
                    tokio::select! {
                        biased;
                        () = app.hang.wait_open() => {}
                        () = app.dropped.wait_open() => {
                            records = None;
                            app.hang.wait_open().await;
                        }
                    }
                    let took = handed
                        .records()
                        .iter()
                        .map(|_| processing_time(&mut rng, slow))
                        .sum();
                    sleep(took).await;
                    app.gate.wait_open().await;
                    for record in handed.records() {
                        app.ack(handed.shard_id(), handed.lease_token(), record);
                    }
                    if on_drop {
                        drop(handed);
                    } else {
                        handed.ack();
                    }
                }
            });
            (worker, Some(consumer), None)
        };
        self.members.push(Member {
            id,
            gate,
            half_gate,
            stall,
            hang,
            polling,
            dropped,
            stuck,
            status,
            network,
            consumer,
            shutdown,
            worker,
            in_fleet: true,
            hung: false,
        });
    }

    /// A member in the fleet, at random. In calm (the probes) only one that works and is not out
    /// of the fleet as not polled: the probes are there to move leases.
    fn pick_member(&mut self) -> Option<usize> {
        let calm = self.calm;
        let live: Vec<usize> = (0..self.members.len())
            .filter(|i| {
                let m = &self.members[*i];
                m.in_fleet && !(calm && (m.hung || m.status.has_left_fleet()))
            })
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(live[self.rng.below(live.len() as u64) as usize])
    }

    /// Members in the fleet whose application works.
    fn working(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.in_fleet && !m.hung)
            .count()
    }

    fn crash(&mut self) {
        // Keep at least one working member, or nothing would be left to finish the work.
        if self.working() < 2 {
            return;
        }
        if let Some(i) = self.pick_member() {
            let m = &mut self.members[i];
            m.in_fleet = false;
            // Abort first: dropping a started consumer would shut it down gracefully.
            if let Some(h) = m.shutdown.take() {
                h.abort();
            }
            if let Some(c) = m.consumer.take() {
                c.abort();
            }
            m.worker.abort();
        }
    }

    fn leave(&mut self, restart: bool) {
        if !restart && self.working() < 2 {
            return;
        }
        if let Some(i) = self.pick_member() {
            self.shut_down(i, restart);
        }
    }

    /// Shuts member `i` down gracefully (and starts it again under its id if `restart`).
    fn shut_down(&mut self, i: usize, restart: bool) {
        let m = &mut self.members[i];
        m.in_fleet = false;
        m.gate.resume();
        m.half_gate.resume();
        // Its process stops, and a hung application with it.
        m.hang.resume();
        m.polling.resume();
        let shutdown = m.shutdown.take();
        let consumer = m.consumer.take();
        let worker = std::mem::replace(&mut m.worker, tokio::spawn(async {}));
        let errors = self.errors.clone();
        let id = m.id.clone();
        let rejoin = self.rejoin.clone();
        self.leaving.push(tokio::spawn(async move {
            if let Some(h) = shutdown {
                h.shutdown();
            }
            if let Some(c) = consumer
                && let Err(e) = c.shutdown().await
            {
                lock(&errors).push(format!("{id} leaving: {e}"));
            }
            // The process is gone once its consumer returned; only then does it start again.
            let _ = worker.await;
            if restart {
                let _ = rejoin.send(id);
            }
        }));
    }

    fn pause(&mut self, duration: Duration, half: bool) {
        if let Some(i) = self.pick_member() {
            let m = &self.members[i];
            let gate = if half {
                m.half_gate.clone()
            } else {
                m.gate.clone()
            };
            gate.pause();
            tokio::spawn(async move {
                sleep(duration).await;
                gate.resume();
            });
        }
    }

    /// A member's application hangs for good (`polling`: stops polling its record stream).
    fn hang(&mut self, polling: bool) {
        if self.working() < 2 {
            return;
        }
        let handler = self.scenario.batch_handler;
        if let Some(i) = self.pick_member() {
            let m = &mut self.members[i];
            m.hung = true;
            if polling && !handler {
                m.polling.pause();
            } else {
                m.hang.pause();
            }
        }
    }

    /// A member's supervisor gets stuck for good.
    fn stick(&mut self) {
        if self.working() < 2 {
            return;
        }
        if let Some(i) = self.pick_member() {
            let m = &mut self.members[i];
            m.in_fleet = false;
            m.stuck.set(true);
        }
    }

    /// A member leaves the fleet `how`; in calm, the leases it held are noted for the drop
    /// oracle.
    fn depart(&mut self, how: Departure) {
        if self.working() < 2 {
            return;
        }
        let Some(i) = self.pick_member() else {
            return;
        };
        if self.calm {
            let client = ClientId::from(self.members[i].id.as_str());
            let leases = self
                .store
                .peek_leases(self.stream.name())
                .into_iter()
                .filter(|l| !l.finished && l.owner.as_ref() == Some(&client))
                .map(|l| (l.shard, l.token))
                .collect();
            self.departed.push(Departed {
                client,
                how,
                at: self.clock.now(),
                leases,
            });
        }
        let handler = self.scenario.batch_handler;
        let m = &mut self.members[i];
        match how {
            Departure::Shutdown => self.shut_down(i, false),
            Departure::DropRecords if !handler => {
                m.in_fleet = false;
                // The application drops its stream once it is done with the record in hand.
                m.dropped.resume();
            }
            Departure::DropConsumer | Departure::DropRecords => {
                m.in_fleet = false;
                // A record-stream consumer is the member's; a batch handler's lives in the
                // future of `run`, dropped with the worker.
                drop(m.consumer.take());
                m.shutdown = None;
                if handler {
                    m.worker.abort();
                }
            }
        }
    }

    fn split(&mut self) {
        let open: Vec<_> = self
            .stream
            .shards()
            .into_iter()
            .filter(|s| s.open)
            .collect();
        if open.is_empty() || open.len() >= 8 {
            return;
        }
        let s = &open[self.rng.below(open.len() as u64) as usize];
        let r = s.hash_range;
        let mid = r.start + (r.end - r.start) / 2 + 1;
        let _ = self.stream.split(&s.id, mid);
    }

    fn merge(&mut self) {
        let mut open: Vec<_> = self
            .stream
            .shards()
            .into_iter()
            .filter(|s| s.open)
            .collect();
        open.sort_by_key(|s| s.hash_range.start);
        if open.len() < 2 {
            return;
        }
        let i = self.rng.below(open.len() as u64 - 1) as usize;
        let _ = self.stream.merge(&open[i].id, &open[i + 1].id);
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Crash => self.crash(),
            Event::Leave => self.leave(false),
            Event::Hang => self.hang(false),
            Event::StopPolling => self.hang(true),
            Event::StuckSupervisor => self.stick(),
            Event::DropRecords => self.depart(Departure::DropRecords),
            Event::DropConsumer => self.depart(Departure::DropConsumer),
            Event::Restart => self.leave(true),
            Event::Join => self.join(),
            Event::Pause(d) => self.pause(*d, false),
            Event::HandlerStall(d) => {
                if let Some(i) = self.pick_member() {
                    let stall = self.members[i].stall.clone();
                    stall.pause();
                    let until = Instant::now() + *d;
                    self.stalled_until = self.stalled_until.max(until);
                    tokio::spawn(async move {
                        sleep_until(until).await;
                        stall.resume();
                    });
                }
            }
            Event::HalfPartition(d) => self.pause(*d, true),
            Event::CorruptRows(d) => {
                let leases = self.store.peek_leases(self.stream.name());
                if !leases.is_empty() {
                    let shard = leases[self.rng.below(leases.len() as u64) as usize]
                        .shard
                        .clone();
                    let (store, stream) = (self.store.clone(), self.stream.name().to_owned());
                    store.corrupt_lease(&stream, &shard, "not a lease row (simulated garbage)");
                    let d = *d;
                    tokio::spawn(async move {
                        sleep(d).await;
                        store.repair_lease(&stream, &shard);
                    });
                }
                if let Some(i) = self.pick_member() {
                    let id = ClientId::from(self.members[i].id.as_str());
                    self.store
                        .corrupt_client(&id, "not a heartbeat value (simulated garbage)");
                }
            }
            Event::Split => self.split(),
            Event::Merge => self.merge(),
            Event::StoreFaults {
                duration,
                error_rate,
                ambiguous_rate,
                throttle_rate,
                max_latency,
            } => {
                let store = self.store.clone();
                let calm = store.faults();
                store.set_faults(StoreFaults {
                    error_rate: *error_rate,
                    ambiguous_rate: *ambiguous_rate,
                    throttle_rate: *throttle_rate,
                    latency: (Duration::ZERO, *max_latency),
                    ..calm.clone()
                });
                let duration = *duration;
                tokio::spawn(async move {
                    sleep(duration).await;
                    store.set_faults(calm);
                });
            }
            Event::SourceFaults {
                duration,
                throttle_rate,
                error_rate,
                expiry_rate,
                max_latency,
            } => {
                let stream = self.stream.clone();
                stream.set_faults(SourceFaults {
                    throttle_rate: *throttle_rate,
                    error_rate: *error_rate,
                    iterator_expiry_rate: *expiry_rate,
                    latency: (Duration::ZERO, *max_latency),
                });
                let duration = *duration;
                tokio::spawn(async move {
                    sleep(duration).await;
                    stream.set_faults(SourceFaults::default());
                });
            }
        }
    }
}

async fn run_async(scenario: Scenario) -> Report {
    let start = Instant::now();
    let clock = EventClock::new();
    let stream = MemoryStream::with_config(
        "sim-stream",
        scenario.shards,
        MemoryStreamConfig {
            seed: stable_hash(&[b"stream", &scenario.seed.to_le_bytes()]),
            ..MemoryStreamConfig::default()
        },
    );
    let store = MemoryLeaseStore::with_clock(clock.clone())
        .with_seed(stable_hash(&[b"store", &scenario.seed.to_le_bytes()]));
    let calm_store = StoreFaults {
        ignore_fencing: scenario.store_ignores_fencing,
        leases_page: scenario.leases_page,
        full_read_latency: scenario.full_read_latency,
        ..StoreFaults::default()
    };
    store.set_faults(calm_store.clone());
    let (rejoin, rejoining) = tokio::sync::mpsc::unbounded_channel();
    let mut world = World {
        rng: Rng::new(stable_hash(&[b"world", &scenario.seed.to_le_bytes()])),
        scenario: scenario.clone(),
        stream: stream.clone(),
        store: store.clone(),
        clock,
        log: Log::default(),
        acked: Acked::default(),
        errors: Errors::default(),
        members: Vec::new(),
        leaving: Vec::new(),
        next_client: 0,
        rejoin,
        rejoining,
        calm: false,
        stalled_until: start,
        departed: Vec::new(),
    };
    for _ in 0..scenario.clients {
        world.join();
    }

    // The producer: record i carries i, under one of 16 partition keys.
    let producer = {
        let stream = stream.clone();
        let mut rng = Rng::new(stable_hash(&[b"producer", &scenario.seed.to_le_bytes()]));
        let (n, over) = (scenario.records, scenario.produce_for);
        tokio::spawn(async move {
            let step = over / (n.max(1) as u32);
            for i in 0..n as u64 {
                sleep(step.mul_f64(2.0 * rng.unit())).await;
                let key = format!("key-{}", rng.below(16));
                let mut data = i.to_be_bytes().to_vec();
                data.extend_from_slice(b" payload");
                // Every shard may be closed for an instant during a reshard; retry then.
                while stream.put(&key, data.clone()).is_err() {
                    sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };

    let mut start_judged = scenario.balanced_by.is_none();
    let mut violations_at_start = Vec::new();
    for (at, event) in scenario.events.clone() {
        if let Some(by) = scenario.balanced_by.filter(|by| !start_judged && *by <= at) {
            world.pass_until(start + by).await;
            judge_start(&world, by, &mut violations_at_start);
            start_judged = true;
        }
        world.pass_until(start + at).await;
        world.apply(&event);
    }
    if let Some(by) = scenario.balanced_by.filter(|_| !start_judged) {
        world.pass_until(start + by).await;
        judge_start(&world, by, &mut violations_at_start);
    }
    let _ = producer.await;
    // Calm: no more faults, everyone awake, and at least one member.
    let calm_at = Instant::now() + Duration::from_secs(25);
    world.pass_until(calm_at).await;
    store.set_faults(calm_store);
    world.calm = true;
    stream.set_faults(SourceFaults::default());
    for m in &world.members {
        m.gate.resume();
        m.half_gate.resume();
        for latency in &m.network {
            latency.set_profile(LatencyProfile::default(), None);
        }
    }
    if world.working() == 0 {
        world.join();
    }

    let produced: BTreeMap<u64, (ShardId, Position)> = stream
        .all_records()
        .into_iter()
        .flat_map(|(shard, records)| {
            records
                .into_iter()
                .filter_map(move |r| Some((record_id(&r)?, (shard.clone(), r.position))))
        })
        .collect();
    let mut violations = violations_at_start;
    // Healed: faults are over and no handler is stalled any more (a stall for good never heals:
    // the engine must have moved the work away from it).
    world.pass_until(world.stalled_until).await;
    let healed = Instant::now();
    let deadline = healed + record_bound(&scenario);
    loop {
        let done = {
            let acked = lock(&world.acked);
            produced.keys().all(|id| acked.ids.contains(id))
        };
        if done {
            break;
        }
        if Instant::now() >= deadline {
            violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "not every record was acked within {:?} of the faults healing",
                    record_bound(&scenario)
                ),
            });
            break;
        }
        world.pass(Duration::from_secs(1)).await;
    }
    let settle = healed.elapsed();
    // Let calls sent before the calm end, then move leases in calm: a client joins (leases
    // are handed to it), later one leaves (its leases are handed to the others). How long a
    // released lease stays free is judged from here on.
    world.pass(scenario.call_timeout).await;
    let probe_from = Instant::now();
    world.join();
    world.pass(Duration::from_secs(15)).await;
    // A crash, and a client joining once the others judged it dead but while its row is still
    // there (rows of the dead go after three TTLs): the joiner counts the dead row alive.
    world.crash();
    world.pass(Duration::from_secs(12)).await;
    world.join();
    // ... and slow to start (its first read of the leases takes up to 700 ms, as a real read
    // of many rows can): the others may release leases to it before that read ends, which it
    // must take at once all the same. Drawn from the seed alone, so the rest of the run's
    // randomness is what it was without it.
    let slow_start = stable_hash(&[b"slow start", &scenario.seed.to_le_bytes()]) % 700;
    if let Some(joiner) = world.members.last() {
        joiner.network[1].delay_next_request("leases", Duration::from_millis(slow_start));
    }
    world.pass(Duration::from_secs(15)).await;
    // The last one leaves — shut down, or its consumer or record stream dropped (drawn from the
    // seed): either way it must release what it holds.
    world.depart(scenario.last_departure);
    // Let the fleet settle, then look at the final assignment.
    world.pass(Duration::from_secs(30)).await;
    let checked_until = Instant::now();
    // The same moment on the store's clock: the run's own shutdown writes at this instant too.
    let checked_at = world.clock.now();
    // A client out of the fleet because it is not polled holds nothing, and is planned nothing.
    let live = world.live();
    let final_leases = store.peek_leases(stream.name());
    check_balance(&final_leases, &live, &mut violations);
    // ... but only a client whose application stopped polling may be out for that reason: one
    // whose application polls (or waits in a poll) must have rejoined by now.
    for m in world.members.iter().filter(|m| m.in_fleet && !m.hung) {
        if m.status.has_left_fleet() {
            violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{} is out of the fleet as not polled, though its application polls its record stream",
                    m.id
                ),
            });
        }
    }

    // The end of the run: everyone is asked to stop first, then what hangs for good is let go
    // (a stuck supervisor, a hung or unpolling application), so each can shut down.
    for m in &world.members {
        if let Some(h) = &m.shutdown {
            h.shutdown();
        }
        if let Some(c) = &m.consumer {
            c.shutdown_handle().shutdown();
        }
    }
    for m in &world.members {
        m.stuck.set(false);
        m.hang.resume();
        m.polling.resume();
    }
    let stalls = world.members.iter().map(|m| m.status.stalls().len()).sum();
    for m in &mut world.members {
        m.shutdown = None;
        if let Some(c) = m.consumer.take() {
            let _ = c.shutdown().await;
        }
    }
    for m in &mut world.members {
        if m.in_fleet {
            let _ = (&mut m.worker).await;
        }
    }
    for h in world.leaving.drain(..) {
        let _ = h.await;
    }
    let sim_time = start.elapsed();

    let log = lock(&world.log).clone();
    let (acked, acks, ack_log) = {
        let book = lock(&world.acked);
        (book.ids.clone(), book.total, book.log.clone())
    };
    let history = store.history();
    for e in lock(&world.errors).iter() {
        violations.push(Violation {
            invariant: Invariant::Liveness,
            detail: format!("consumer error: {e}"),
        });
    }
    check_delivery(&produced, &acked, &mut violations);
    check_departures(&world.departed, &history, checked_at, &mut violations);
    check_tenures(&stream, &log, &history, &mut violations);
    check_writes(&history, &mut violations);
    let shortest_ttl = Config::new("sim")
        .lease_ttl
        .mul_f64(1.0 - scenario.max_clock_drift);
    violations.extend(oracle::no_theft(
        &history,
        &store.client_history(),
        shortest_ttl,
    ));
    violations.extend(oracle::no_false_death(
        &store.client_history(),
        shortest_ttl,
    ));
    violations.extend(oracle::no_hand_out_after_takeover(&history, &log));
    violations.extend(oracle::duplicates_bounded(
        &history,
        &log,
        &ack_log,
        scenario.call_timeout,
    ));
    let (longest_free, which) = longest_free_after(&history, probe_from, checked_until);
    let free_bound = free_lease_bound(&scenario);
    if longest_free > free_bound {
        violations.push(Violation {
            invariant: Invariant::Liveness,
            detail: format!(
                "after the faults healed a released lease stayed free for {longest_free:?} (bound {free_bound:?}): {which}"
            ),
        });
    }

    let mut seen = BTreeSet::new();
    let duplicates = log
        .iter()
        .filter(|d| !seen.insert((d.shard.clone(), d.position.clone())))
        .count();
    let trace_digest = digest(&log, &history);
    Report {
        scenario,
        produced: produced.len(),
        delivered: log.len(),
        duplicates,
        acks,
        sim_time,
        trace_digest,
        violations,
        settle,
        longest_free,
        expired_iterators: stream.stats().expired_iterators,
        stalls,
    }
}

/// How long after every fault healed every record must have been acked: a call sent before may
/// hang until `call_timeout`; then a dead owner is judged within `lease_ttl`, its lease read and
/// taken within a full read's period, and the backlog processed (the simulation's at most 400
/// records take up to 100 ms each, spread over the shards): 45 s after `call_timeout`.
///
/// A stall for good ([`Event::is_for_good`]) does not heal, so nothing waits for it, and its
/// detection clock may start as late as the healing: a stalled client that fenced itself during
/// the faults takes its leases again (new tenures, whose records wait from then), or records
/// reach a hung client's shard only then. It is found `stall_timeout` later on that client's
/// clock (up to `max_clock_drift` slow), and from there its work moves as a graceful handoff —
/// quicker than a dead owner's. So a run with one gets `stall_timeout × (1 + max_clock_drift)`
/// more.
pub fn record_bound(scenario: &Scenario) -> Duration {
    let bound = scenario.call_timeout + Duration::from_secs(45);
    let stalls_for_good = scenario.events.iter().any(|(_, e)| e.is_for_good());
    match scenario.stall_timeout {
        Some(t) if stalls_for_good => bound + t.mul_f64(1.0 + scenario.max_clock_drift),
        _ => bound,
    }
}

/// How long a released lease may stay free once faults healed, while the client it was handed
/// to is live: under a second with the default settings (the successor polls the leases it
/// waits for every `membership_poll_interval`).
pub fn free_lease_bound(_scenario: &Scenario) -> Duration {
    Duration::from_secs(1)
}

/// The longest time from a release in `from..until` to the next take of the same lease (a
/// release still without a take at `until` counts until then), and which release that was.
fn longest_free_after(history: &[StoreEvent], from: Instant, until: Instant) -> (Duration, String) {
    let mut longest = (Duration::ZERO, String::new());
    for (i, e) in history.iter().enumerate() {
        if e.op != StoreOp::Release || e.time < from || e.time > until {
            continue;
        }
        let next = history[i + 1..]
            .iter()
            .find(|t| t.shard == e.shard && matches!(t.op, StoreOp::Take | StoreOp::Delete));
        let taken = next.map_or(until, |t| t.time.min(until));
        let free = taken.saturating_duration_since(e.time);
        if free > longest.0 {
            let successor = e.after.as_ref().and_then(|l| l.successor.clone());
            let by = next.and_then(|t| t.after.as_ref().and_then(|l| l.owner.clone()));
            longest = (
                free,
                format!(
                    "{} released {:?} after the probes began by {:?} to {successor:?}, then {}",
                    e.shard,
                    e.time.saturating_duration_since(from),
                    e.claimed.as_ref().map(|t| t.owner.clone()),
                    match by {
                        Some(owner) => format!("taken by {owner}"),
                        None => "not taken".to_owned(),
                    }
                ),
            );
        }
    }
    longest
}

fn digest(log: &[Delivery], history: &[StoreEvent]) -> u64 {
    let mut h = 0u64;
    for d in log {
        let line = format!(
            "{} {} {} {} {:?}",
            d.at, d.client, d.shard, d.token, d.position
        );
        h = stable_hash(&[&h.to_le_bytes(), line.as_bytes()]);
    }
    for e in history {
        let line = format!(
            "{} {:?} {} {:?} {:?}",
            e.at, e.op, e.shard, e.claimed, e.after
        );
        h = stable_hash(&[&h.to_le_bytes(), line.as_bytes()]);
    }
    h
}

fn check_delivery(
    produced: &BTreeMap<u64, (ShardId, Position)>,
    acked: &BTreeSet<u64>,
    violations: &mut Vec<Violation>,
) {
    let missing: Vec<_> = produced
        .iter()
        .filter(|(id, _)| !acked.contains(id))
        .take(5)
        .collect();
    if !missing.is_empty() {
        violations.push(Violation {
            invariant: Invariant::EveryRecordAcked,
            detail: format!(
                "{} record(s) never acked, e.g. {missing:?}",
                produced.keys().filter(|id| !acked.contains(id)).count()
            ),
        });
    }
}

/// Order within a tenure, no gap at a tenure's start, parents before children.
fn check_tenures(
    stream: &MemoryStream,
    log: &[Delivery],
    history: &[StoreEvent],
    violations: &mut Vec<Violation>,
) {
    // The checkpoint each tenure started from: the row as `take` found it.
    let mut started_from: BTreeMap<(ShardId, u64), Option<Checkpoint>> = BTreeMap::new();
    let mut finished_at: BTreeMap<ShardId, u64> = BTreeMap::new();
    for e in history {
        match (e.op, &e.after) {
            (StoreOp::Take, Some(after)) => {
                let cp = e.before.as_ref().and_then(|b| b.checkpoint.clone());
                started_from.insert((e.shard.clone(), after.token), cp);
            }
            (StoreOp::Finish, Some(_)) => {
                finished_at.entry(e.shard.clone()).or_insert(e.at);
            }
            _ => {}
        }
    }
    let parents: BTreeMap<ShardId, Vec<ShardId>> = stream
        .shards()
        .into_iter()
        .map(|s| (s.id, s.parents))
        .collect();
    let mut last: BTreeMap<(ShardId, u64), Position> = BTreeMap::new();
    for d in log {
        let key = (d.shard.clone(), d.token);
        match last.get(&key) {
            Some(prev) if *prev >= d.position => violations.push(Violation {
                invariant: Invariant::OrderWithinTenure,
                detail: format!(
                    "{} tenure #{} delivered {:?} after {:?} (client {})",
                    d.shard, d.token, d.position, prev, d.client
                ),
            }),
            Some(_) => {}
            None => {
                // The first delivery of a tenure must be the record right after its checkpoint.
                let records = stream.records(&d.shard);
                let expected = match started_from.get(&key) {
                    Some(Some(Checkpoint::After(p))) => records
                        .iter()
                        .find(|r| r.position > *p)
                        .map(|r| &r.position),
                    Some(None) | Some(Some(Checkpoint::TrimHorizon)) => {
                        records.first().map(|r| &r.position)
                    }
                    _ => None,
                };
                if expected != Some(&d.position) {
                    violations.push(Violation {
                        invariant: Invariant::NoGap,
                        detail: format!(
                            "{} tenure #{} started at {:?}; the checkpoint it took ({:?}) says {:?}",
                            d.shard,
                            d.token,
                            d.position,
                            started_from.get(&key),
                            expected
                        ),
                    });
                }
            }
        }
        last.insert(key, d.position.clone());
        for p in parents.get(&d.shard).into_iter().flatten() {
            if finished_at.get(p).is_none_or(|at| *at > d.at) {
                violations.push(Violation {
                    invariant: Invariant::ParentsFirst,
                    detail: format!(
                        "{} delivered {:?} before its parent {} finished",
                        d.shard, d.position, p
                    ),
                });
            }
        }
    }
}

/// Fenced writes only by the holder; checkpoints never backwards.
fn check_writes(history: &[StoreEvent], violations: &mut Vec<Violation>) {
    let mut last: BTreeMap<ShardId, Checkpoint> = BTreeMap::new();
    for e in history {
        if matches!(
            e.op,
            StoreOp::Checkpoint | StoreOp::Release | StoreOp::Finish
        ) {
            let holder = e.before.as_ref().and_then(Lease::tenure);
            if e.claimed.is_none() || holder != e.claimed {
                violations.push(Violation {
                    invariant: Invariant::FencedWrites,
                    detail: format!(
                        "{:?} on {} by {:?} while the lease was held by {:?}",
                        e.op, e.shard, e.claimed, holder
                    ),
                });
            }
        }
        if matches!(e.op, StoreOp::Reset | StoreOp::Repair | StoreOp::Rollback) {
            last.remove(&e.shard);
            continue;
        }
        if let Some(cp) = e.after.as_ref().and_then(|a| a.checkpoint.clone()) {
            if let Some(prev) = last.get(&e.shard)
                && !cp.is_not_before(prev)
            {
                violations.push(Violation {
                    invariant: Invariant::CheckpointMonotonic,
                    detail: format!("{} checkpoint moved from {prev} back to {cp}", e.shard),
                });
            }
            last.insert(e.shard.clone(), cp);
        }
    }
}

/// The drop oracle: a client taken out of the fleet in calm — shut down, or its `Consumer` or
/// record stream dropped — releases (or finishes) every lease it held, before anyone else
/// writes it and before the checks end (`until`, on the store's event clock: the run's own
/// shutdown follows at the same instant). Its own checkpoints may come first. A consumer that crashes
/// when dropped leaves its leases to expire (the next write is someone's take); one that idles
/// when its stream is dropped keeps them (no write at all).
fn check_departures(
    departed: &[Departed],
    history: &[StoreEvent],
    until: u64,
    violations: &mut Vec<Violation>,
) {
    for d in departed {
        for (shard, token) in &d.leases {
            let ours = |e: &StoreEvent| {
                e.claimed
                    .as_ref()
                    .is_some_and(|t| t.owner == d.client && t.token == *token)
            };
            let next = history.iter().find(|e| {
                e.at > d.at && e.shard == *shard && !(e.op == StoreOp::Checkpoint && ours(e))
            });
            let detail = match next {
                Some(e) if e.at > until => None,
                Some(e) if matches!(e.op, StoreOp::Release | StoreOp::Finish) && ours(e) => {
                    continue;
                }
                Some(e) => Some(format!(
                    "{:?} by {:?}",
                    e.op,
                    e.claimed.as_ref().map(|t| t.owner.as_str())
                )),
                None => None,
            };
            violations.push(Violation {
                invariant: Invariant::Liveness,
                detail: format!(
                    "{} left ({:?}) and its lease {shard} #{token} was dropped without release: {}",
                    d.client,
                    d.how,
                    detail.map_or_else(
                        || "nothing written before the checks ended".to_string(),
                        |w| format!("the next write was a {w}")
                    )
                ),
            });
        }
    }
}

/// [`Scenario::balanced_by`]: every row of the stream's first shards created, and balanced.
fn judge_start(world: &World, by: Duration, violations: &mut Vec<Violation>) {
    let leases = world.store.peek_leases(world.stream.name());
    let live = world.live();
    let mut found = Vec::new();
    if leases.len() < world.scenario.shards {
        found.push(Violation {
            invariant: Invariant::Balanced,
            detail: format!("{} rows of {}", leases.len(), world.scenario.shards),
        });
    }
    check_balance(&leases, &live, &mut found);
    violations.extend(found.into_iter().map(|v| Violation {
        detail: format!("{by:?} after a start on no rows: {}", v.detail),
        ..v
    }));
}

/// Every eligible lease owned by a live client, and the counts within one of each other.
fn check_balance(leases: &[Lease], live: &[ClientId], violations: &mut Vec<Violation>) {
    let by_shard: BTreeMap<&ShardId, &Lease> = leases.iter().map(|l| (&l.shard, l)).collect();
    let eligible: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.finished)
        .filter(|l| {
            l.parents
                .iter()
                .all(|p| by_shard.get(p).is_none_or(|pl| pl.finished))
        })
        .collect();
    let mut counts: BTreeMap<&ClientId, usize> = live.iter().map(|c| (c, 0)).collect();
    for l in &eligible {
        match l.owner.as_ref().and_then(|o| counts.get_mut(o)) {
            Some(n) => *n += 1,
            None => violations.push(Violation {
                invariant: Invariant::Balanced,
                detail: format!("{} is owned by {:?}, not a live client", l.shard, l.owner),
            }),
        }
    }
    if let (Some(max), Some(min)) = (counts.values().max(), counts.values().min())
        && max - min > 1
    {
        violations.push(Violation {
            invariant: Invariant::Balanced,
            detail: format!("unbalanced final assignment: {counts:?}"),
        });
    }
}
