//! The supervisor: one task per consumer that runs the protocol. It registers, then ticks
//! every `membership_poll_interval` until shutdown or a fatal error: it reads the rows it
//! needs, computes the shared assignment, takes the leases assigned to it, hands off the ones
//! assigned elsewhere, and runs one tenure per held lease (`crate::tenure`). Heartbeats go
//! from a task of their own.
//!
//! Its methods are split by concern:
//! - this file: the loop, registering, and one tick (`step`);
//! - `heartbeat` — heartbeats, from a task of their own;
//! - `sync` — reading the store: lease rows, client rows, and the pacing of full reads;
//! - `shards` — the stream's shards against the lease rows: which rows to create or delete,
//!   and which client writes each;
//! - `watchers` — what an idle client reads instead of every row: the change counter and the
//!   rows of the few clients it watches; marking the dead and announcing changes;
//! - `plan` — acting on a read: the shared plan, what to take, hand off or wait for;
//! - `tenures` — starting a tenure and learning how it ended;
//! - `leave` — letting go: shutdown, leaving the fleet for a stall, abort.

mod heartbeat;
mod leave;
mod plan;
mod shards;
mod sync;
mod tenures;
mod watchers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use crate::engine::Engine;
use crate::error::ConsumerError;
use crate::layer::Layered;
use crate::lifecycle::EndReason;
use crate::membership::Membership;
use crate::metrics;
use crate::quarantine::Quarantine;
use crate::record::AckTracker;
use crate::shutdown::Stop;
use crate::source::{ShardId, ShardSource, SourceError};
use crate::stall::Watched;
use crate::store::{ClientId, Lease, LeaseStore, StoreError, Tenure};
use crate::tenure::{Ask, Outcome};
use heartbeat::Heartbeat;

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
    /// Rows the sync found due (a listed shard without a row, a gone shard's finished row) and
    /// left to the client that ranks highest for them, since when (see `shards`).
    rows_due: BTreeMap<ShardId, Instant>,
    /// Listed shards without a row that another client is to create, with their parents: the
    /// plan counts them (see `eligible`), so quotas are those of the whole stream from the
    /// first sync, not of the few rows a client has seen.
    expected: BTreeMap<ShardId, Vec<ShardId>>,
    /// Of those, the ones our plan gives us: read one by one when the change counter moves
    /// (their writer announces), and taken as soon as they exist.
    expecting: BTreeSet<ShardId>,
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
    /// The change counter at our last read of it (`None`: not read yet, or unreadable).
    changes_seen: Option<u64>,
    /// We changed something the fleet must see: announce it (see `watchers`).
    announce_due: bool,
    /// When we last read the rows of the clients we watch.
    last_watch: Option<Instant>,
    /// When we last announced that our plan and another's disagree.
    announced_unclaimed: Option<Instant>,
    /// The free leases our last plan left to other clients, since when (the first read that
    /// did, of the reads since that all did). They should take them within a poll; if one is
    /// still free two polls later, the plans disagree — two clients read the rows around one's
    /// takes, each planned the lease for the other — so we read again.
    left_to_others: BTreeMap<ShardId, Instant>,
    /// Some of them were still free at our next full read: the plans disagree.
    disagreed: bool,
}

type Tenures = JoinSet<(ShardId, Outcome)>;

/// Up to this many awaited leases are polled one by one every tick between full reads; more
/// (a client joining a large fleet waits for its whole share) only when the change counter
/// moved — someone released something — so a handoff never waits for a full read, whose pace
/// grows with the fleet (20 s at 100 clients reading in 100 ms).
const WAITING_POLL_LIMIT: usize = 8;

/// At most this many awaited leases are read at once.
const WAITING_POLL_CONCURRENCY: usize = 16;

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

/// Registers (a first heartbeat), retrying until it lands, and announces it so the fleet
/// re-plans with us at once; `None` if asked to stop first, else whether the announce landed
/// (if not, the first tick announces). Before anything else, so others see us before we take
/// a lease.
async fn register(
    engine: &Engine,
    shutdown: &mut watch::Receiver<Stop>,
) -> Result<Option<bool>, ConsumerError> {
    let mut attempt: u32 = 0;
    loop {
        if *shutdown.borrow() != Stop::Run {
            return Ok(None);
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
    let announced = engine.store.announce().await.is_ok();
    Ok(Some(announced))
}

/// The supervisor: register, then tick until shutdown or a fatal error.
pub(crate) async fn supervise(
    engine: Arc<Engine>,
    mut shutdown: watch::Receiver<Stop>,
) -> Result<(), ConsumerError> {
    let cfg = engine.config.clone();
    let Some(announced) = register(&engine, &mut shutdown).await? else {
        return Ok(());
    };
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
        rows_due: BTreeMap::new(),
        expected: BTreeMap::new(),
        expecting: BTreeSet::new(),
        backlog: Vec::new(),
        epoch_seen: engine.health.epoch(),
        last_alive: Vec::new(),
        seen_owned: BTreeSet::new(),
        gave_up: BTreeMap::new(),
        last_hang: None,
        bad_leases: Quarantine::new("lease"),
        bad_clients: Quarantine::new("client"),
        fatal: None,
        left_to_others: BTreeMap::new(),
        disagreed: false,
        changes_seen: None,
        // A join is a change: the fleet re-plans with us.
        announce_due: !announced,
        last_watch: None,
        announced_unclaimed: None,
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

/// `live` with `me` in it, sorted: a client always counts itself.
fn with_me(mut live: Vec<ClientId>, me: &ClientId) -> Vec<ClientId> {
    if !live.contains(me) {
        live.push(me.clone());
        live.sort();
    }
    live
}

impl Supervisor {
    fn now_alive(&self) -> Vec<ClientId> {
        with_me(self.membership.alive(), &self.engine.me)
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
            self.expecting.clear();
            self.epoch_seen = epoch;
            // We dropped every lease, and may have been judged dead: the fleet must re-plan.
            self.announce_due = true;
            // Back from a fence, what we knew is stale: read everything at once, not at the
            // pace of full reads (which may be slow after a read that hung in a partition).
            self.urgent_full = true;
        }
        fenced
    }

    /// One tick: check our own health, read the lease rows we need, then the client rows,
    /// then compare the stream's shards with the rows, then act.
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
        let now = Instant::now();
        // What changed since we last looked: one small row. A move means a paced read of
        // every row; a change of the live set (below) means one at once.
        let moved = match self.changes_moved().await {
            Ok(moved) => moved,
            Err(e) => return self.tolerate(e, "reading the change counter"),
        };
        if moved {
            self.need_full = true;
        }
        let mut full = self.full_read_due(now);
        let mut polled = Vec::new();
        if full {
            if let Err(e) = self.read_leases().await {
                return self.tolerate(e, "reading leases");
            }
        } else if self.awaited() > 0 && (self.awaited() <= WAITING_POLL_LIMIT || moved) {
            match self.poll_waiting().await {
                Ok(rows) => polled = rows,
                Err(e) => return self.tolerate(e, "polling a lease"),
            }
        }
        // Every client row when something moved, or when lease rows read this tick are to be
        // acted on (only after a read of the clients sent after them); otherwise only the
        // rows of the few clients we watch.
        let every_row = full || moved || !polled.is_empty() || self.last_alive.is_empty();
        let read = if every_row {
            self.read_clients().await
        } else if self.watch_due(now) {
            self.watch_clients().await
        } else {
            Ok(false)
        };
        let mut changed = match read {
            Ok(changed) => changed,
            Err(e) => return self.tolerate(e, "reading clients"),
        };
        changed |= self.mark_the_dead().await;
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
        }
        // The stream's shards against the rows just read, with the live set just read: rows
        // created now are planned at once.
        if self.sync_due(now, full) {
            match self.sync_shards(now).await {
                Ok(()) => {
                    self.last_sync = Some(now);
                    self.need_sync = false;
                }
                Err(e) if is_fatal(&e) => return Err(e),
                // Retried at the next tick; what was read is acted on all the same.
                Err(e) => warn!(error = %e, "syncing shards failed; retrying on the next tick"),
            }
        }
        if full {
            self.rebalance(tasks).await;
        } else {
            self.take_backlog(tasks).await;
            for lease in polled {
                self.consider(lease, tasks).await;
            }
        }
        self.announce_unclaimed(now);
        self.announce_if_due().await;
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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

    /// `EngineFaults::stuck_supervisor`: waits, without a call, while the switch is on.
    async fn stuck_on_purpose(&self) {
        if let Some(switch) = &self.engine.config.faults.stuck_supervisor {
            while switch.is_on() {
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a lease row says, to tell whether it changed since it was set aside.
fn fingerprint(lease: &Lease) -> String {
    format!("{lease:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client always counts itself, once, and the list stays sorted: every client must plan
    /// over the same list in the same order.
    #[test]
    fn with_me_adds_me_once_and_keeps_the_list_sorted() {
        let ids = |v: &[&str]| v.iter().map(|s| ClientId::from(*s)).collect::<Vec<_>>();
        assert_eq!(
            with_me(ids(&["a", "c"]), &ClientId::from("b")),
            ids(&["a", "b", "c"])
        );
        assert_eq!(
            with_me(ids(&["a", "b"]), &ClientId::from("b")),
            ids(&["a", "b"])
        );
        assert_eq!(with_me(Vec::new(), &ClientId::from("b")), ids(&["b"]));
    }
}
