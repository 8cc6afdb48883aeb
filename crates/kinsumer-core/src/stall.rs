//! Stalls: work a client holds but does not move, found and given up instead of kept silently.
//!
//! A client is alive while its heartbeats land, and a live client keeps its leases. So "alive"
//! must mean "making progress", or a process that stays up while its application hangs holds
//! its shards forever. Four kinds of stall are watched for, each bounded:
//!
//! | kind | what | bound | what the client does |
//! |---|---|---|---|
//! | [`StallKind::RecordNotAcked`] | a record handed out by the record stream is not acked | `stall_timeout` | releases the shard |
//! | [`StallKind::HandlerHung`] | a batch handler call does not return | `stall_timeout` | releases the shard (the call is cancelled) |
//! | [`StallKind::NotPolled`] | the record stream is not polled while records wait in it | `stall_timeout` | releases every lease and leaves the fleet until polled again |
//! | [`StallKind::SupervisorStuck`] | the supervisor has not completed a step (outside a store call) | `lease_ttl − safety_margin − heartbeat_interval` | stops heartbeating: it fences itself and the fleet takes its leases |
//!
//! A released shard goes to the client the assignment names without us. What the application
//! acked is committed; a late ack of the stalled code is ignored (its tenure is over, and the
//! next owner delivers the record again).
//!
//! ```
//! use std::time::Duration;
//! use kinsumer_core::Config;
//!
//! let mut config = Config::new("billing");
//! assert_eq!(config.stall_timeout, Some(Duration::from_secs(300))); // the default
//! config.stall_timeout = Some(Duration::from_secs(30)); // records take at most seconds here
//! assert!(config.validate().is_ok());
//! ```

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::position::Position;
use crate::source::ShardId;

/// What stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StallKind {
    /// A record handed out by the record stream was not acked within `stall_timeout`.
    RecordNotAcked,
    /// A batch handler call did not return within `stall_timeout`.
    HandlerHung,
    /// The record stream was not polled for `stall_timeout` while records waited in it.
    NotPolled,
    /// The supervisor did not complete a step (outside a store call) for
    /// `lease_ttl − safety_margin − heartbeat_interval`.
    SupervisorStuck,
}

impl StallKind {
    /// The value of the `kind` label of `kinsumer_stalls_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::RecordNotAcked => "record_not_acked",
            Self::HandlerHung => "handler_hung",
            Self::NotPolled => "not_polled",
            Self::SupervisorStuck => "supervisor_stuck",
        }
    }
}

/// One stall the client found (see [`crate::StatusHandle::stalls`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// What stalled.
    pub kind: StallKind,
    /// The shard, for a stall of one shard.
    pub shard: Option<ShardId>,
    /// The record that held it: the oldest not acked (or the first of the hung batch).
    pub record: Option<Position>,
    /// How long it had made no progress when it was found.
    pub stalled_for: Duration,
    /// When it was found (tokio's clock).
    pub at: Instant,
}

/// The stalls a status handle keeps, newest last.
pub(crate) const STALLS_KEPT: usize = 32;

/// A bounded log of the stalls found.
#[derive(Debug, Default)]
pub(crate) struct StallLog(Mutex<VecDeque<Stall>>);

impl StallLog {
    pub(crate) fn push(&self, stall: Stall) {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == STALLS_KEPT {
            log.pop_front();
        }
        log.push_back(stall);
    }

    pub(crate) fn all(&self) -> Vec<Stall> {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }
}

/// How often the record stream was polled, since when records have waited in it, and a
/// wake-up for a client that left the fleet because it was not polled.
///
/// The record stream counts its polls — an atomic store, no clock read and no lock, on that
/// per-record path — and whoever asks when it was last polled gets the moment it first saw the
/// current count: later than the poll by at most the time between two asks, so a stall is found
/// up to one check late, never early.
#[derive(Debug)]
pub(crate) struct PollClock {
    /// Polls so far (written by the record stream alone).
    polls: AtomicU64,
    /// The count last seen, and when it was first seen.
    seen: Mutex<(u64, Instant)>,
    /// The stream holds the rest of a run the application took a record of.
    holding: AtomicBool,
    /// Since when records have waited for the application (the supervisor's observation).
    waiting_since: Mutex<Option<Instant>>,
    /// The supervisor waits for a poll (it left the fleet): a poll must wake it.
    waiting: AtomicBool,
    polled: Notify,
}

/// A client that left the fleet re-reads the poll count this often while it waits, in case
/// the wake-up of a poll crossed its registration (neither side pays for a fence).
const POLL_RECHECK: Duration = Duration::from_millis(250);

impl PollClock {
    pub(crate) fn new() -> Self {
        Self {
            polls: AtomicU64::new(0),
            seen: Mutex::new((0, Instant::now())),
            holding: AtomicBool::new(false),
            waiting_since: Mutex::new(None),
            waiting: AtomicBool::new(false),
            polled: Notify::new(),
        }
    }

    /// The record stream was polled: `polls` times so far.
    pub(crate) fn polled(&self, polls: u64) {
        self.polls.store(polls, Ordering::Release);
        if self.waiting.load(Ordering::Acquire) {
            self.polled.notify_one();
        }
    }

    /// The record stream returned, holding the rest of a run (`true`) or nothing.
    pub(crate) fn set_holding(&self, holding: bool) {
        self.holding.store(holding, Ordering::Relaxed);
    }

    pub(crate) fn holding(&self) -> bool {
        self.holding.load(Ordering::Relaxed)
    }

    /// Notes whether records wait for the application now; since when they have, if they do.
    pub(crate) fn waiting(&self, waiting: bool, now: Instant) -> Option<Instant> {
        let mut since = self.waiting_since.lock().unwrap_or_else(|e| e.into_inner());
        *since = if waiting {
            Some(since.unwrap_or(now))
        } else {
            None
        };
        *since
    }

    /// Polls so far.
    pub(crate) fn polls(&self) -> u64 {
        self.polls.load(Ordering::Acquire)
    }

    /// When the stream was last polled, as seen at `now` (see the type's docs).
    pub(crate) fn last(&self, now: Instant) -> Instant {
        let polls = self.polls();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0 != polls {
            *seen = (polls, now);
        }
        seen.1
    }

    /// Waits for a poll after the first `polls`.
    pub(crate) async fn wait_after(&self, polls: u64) {
        self.waiting.store(true, Ordering::Release);
        while self.polls() <= polls {
            let _ = tokio::time::timeout(POLL_RECHECK, self.polled.notified()).await;
        }
        self.waiting.store(false, Ordering::Release);
    }
}

/// The supervisor's watchdog: heartbeats stop when the supervisor has not completed a step for
/// `bound`, except while it waits for a store or source call (bounded by `call_timeout`
/// already). Without it a supervisor stuck on anything else would keep heartbeating — alive to
/// the fleet — while nothing it owns is managed.
#[derive(Debug)]
pub(crate) struct Watchdog {
    bound: Duration,
    state: Mutex<WatchState>,
    /// Said once per stuck spell.
    warned: AtomicBool,
}

#[derive(Debug)]
struct WatchState {
    last_step: Instant,
    calls: u32,
}

impl Watchdog {
    pub(crate) fn new(bound: Duration) -> Self {
        Self {
            bound,
            state: Mutex::new(WatchState {
                last_step: Instant::now(),
                calls: 0,
            }),
            warned: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The supervisor completed a step (or a call) now.
    pub(crate) fn pet(&self) {
        self.lock().last_step = Instant::now();
        self.warned.store(false, Ordering::Relaxed);
    }

    /// How long the supervisor has been stuck at `now`, if it is.
    pub(crate) fn stuck_for(&self, now: Instant) -> Option<Duration> {
        let s = self.lock();
        let idle = now.saturating_duration_since(s.last_step);
        (s.calls == 0 && idle >= self.bound).then_some(idle)
    }

    /// True the first time it is asked during one stuck spell (so it is said once).
    pub(crate) fn first_warning(&self) -> bool {
        !self.warned.swap(true, Ordering::Relaxed)
    }

    /// Marks a call in flight until the guard is dropped (a cancelled call counts as ended).
    pub(crate) fn call(&self) -> CallGuard<'_> {
        self.lock().calls += 1;
        CallGuard(self)
    }
}

pub(crate) struct CallGuard<'a>(&'a Watchdog);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.calls = s.calls.saturating_sub(1);
        s.last_step = Instant::now();
    }
}

/// A [`Layer`](crate::layer::Layer) that tells the watchdog the supervisor waits for a call.
#[derive(Clone, Debug)]
pub(crate) struct Watched(pub(crate) std::sync::Arc<Watchdog>);

impl crate::layer::Layer for Watched {
    async fn store_call<'a, T: Send + 'a>(
        &'a self,
        _op: &'a crate::layer::Op,
        call: impl std::future::Future<Output = Result<T, crate::store::StoreError>> + Send + 'a,
    ) -> Result<T, crate::store::StoreError> {
        let _in_call = self.0.call();
        call.await
    }

    async fn source_call<'a, T: Send + 'a>(
        &'a self,
        _op: &'a crate::layer::Op,
        call: impl std::future::Future<Output = Result<T, crate::source::SourceError>> + Send + 'a,
    ) -> Result<T, crate::source::SourceError> {
        let _in_call = self.0.call();
        call.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_poll_clock_dates_a_poll_when_first_seen_and_wakes_a_waiter() {
        let clock = std::sync::Arc::new(PollClock::new());
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.last(Instant::now()), start, "no poll yet");
        clock.polled(1);
        tokio::time::advance(Duration::from_millis(500)).await;
        let seen = Instant::now();
        assert_eq!(
            clock.last(seen),
            seen,
            "a new poll is dated when first seen"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.last(Instant::now()), seen, "and keeps that date");
        let waiter = tokio::spawn({
            let clock = clock.clone();
            async move { clock.wait_after(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no poll after the first yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "re-checks find none either");
        clock.polled(2);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("a later poll wakes the waiter")
            .expect("the waiter ran");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_excuses_calls_but_not_other_waits() {
        let dog = Watchdog::new(Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(dog.stuck_for(Instant::now()), None);
        {
            let _call = dog.call();
            tokio::time::advance(Duration::from_secs(20)).await;
            assert_eq!(
                dog.stuck_for(Instant::now()),
                None,
                "a call is bounded elsewhere"
            );
        }
        assert_eq!(
            dog.stuck_for(Instant::now()),
            None,
            "a call's end is progress"
        );
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(dog.stuck_for(Instant::now()), Some(Duration::from_secs(7)));
        assert!(dog.first_warning() && !dog.first_warning());
        dog.pet();
        assert_eq!(dog.stuck_for(Instant::now()), None);
    }
}
