//! This client's own heartbeat health: self-fencing. A client whose heartbeat has not landed
//! for `lease_ttl - safety_margin` may have been declared dead and its leases taken, so it
//! stops handing out what it fetched before (by an epoch) and drops every tenure.
//!
//! The record stream asks before every record ([`Health::may_hand_out_now`]). A precise clock
//! read costs more than the rest of a hand-out, so that check reads the kernel's *coarse*
//! clocks (a few nanoseconds, a tick of resolution) against deadlines set [`COARSE_SLACK`]
//! early, and goes to the precise check near or past them. The coarse clocks are real time; a
//! test on tokio's paused clock moves time without them, so the heartbeat task also closes
//! that fast path on tokio's clock, [`CLOSE_EARLY`] before the deadline
//! ([`Health::fast_path_closes_at`]) — from then on every hand-out takes the precise check.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::warn;

use crate::config::Config;

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
    /// Whether the record stream may check on the coarse clocks: not with a wall clock a test
    /// moves (the coarse wall clock would not follow it).
    coarse: bool,
    state: Mutex<HealthState>,
    /// What [`Self::may_hand_out_at`] reads without the lock (see [`Fast`]).
    fast: Fast,
}

/// A copy of the state that lets a hand-out go ahead without the lock: the epoch, and the
/// deadlines by which our last good heartbeat is too old, on the monotonic clock (nanoseconds
/// since `base`) and on the wall clock (nanoseconds since the Unix epoch); 0 = no deadline
/// (no heartbeat yet). Written under the lock whenever the state changes, epoch first, so a
/// reader that sees a newer deadline also sees the epoch of its time. Before the deadlines
/// the lock would say "not fenced" too; at or after them (or for an older epoch) the reader
/// takes the lock, which fences.
#[derive(Debug)]
struct Fast {
    base: Instant,
    epoch: AtomicU64,
    until: AtomicU64,
    wall_until: AtomicU64,
    /// The deadlines on the coarse clocks, [`COARSE_SLACK`] early; 0 = closed (take the
    /// precise check).
    coarse_until: AtomicU64,
    coarse_wall_until: AtomicU64,
}

/// How much earlier than the deadlines the coarse check sends a hand-out to the precise one:
/// more than a coarse clock's resolution (one kernel tick, 1–10 ms).
const COARSE_SLACK: Duration = Duration::from_millis(20);

/// How long before the deadline the heartbeat task closes the coarse fast path on tokio's
/// clock (more than the timer's 1 ms resolution).
const CLOSE_EARLY: Duration = Duration::from_millis(50);

/// The kernel's coarse clocks: monotonic and wall, in nanoseconds. Read through the vDSO
/// without a system call (about 5 ns here, against 23 ns for a precise read).
mod coarse {
    #[cfg(target_os = "linux")]
    fn read(id: rustix::time::ClockId) -> u64 {
        let t = rustix::time::clock_gettime(id);
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }

    /// The monotonic clock (not counting a suspend), coarse.
    #[cfg(target_os = "linux")]
    pub(super) fn monotonic() -> u64 {
        read(rustix::time::ClockId::MonotonicCoarse)
    }

    /// The wall clock (counting a suspend), coarse.
    #[cfg(target_os = "linux")]
    pub(super) fn wall() -> u64 {
        read(rustix::time::ClockId::RealtimeCoarse)
    }

    /// Elsewhere, the precise clocks.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn monotonic() -> u64 {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        super::nanos(BASE.get_or_init(std::time::Instant::now).elapsed())
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn wall() -> u64 {
        super::wall_nanos(std::time::SystemTime::now())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn wall_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(nanos)
        .unwrap_or(0)
}

/// A moment on the wall clock, and on the real (std) monotonic clock: how long the host was
/// suspended since is how much further the wall clock ran than the real monotonic one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WallMark {
    wall: SystemTime,
    real: std::time::Instant,
}

#[derive(Debug, Default)]
struct HealthState {
    /// When the last successful heartbeat was *sent* (the earliest it could have been applied).
    last_ok: Option<Instant>,
    /// The same moment on the wall clock and on the real monotonic clock.
    last_ok_wall: Option<WallMark>,
    epoch: u64,
    /// Fencing was observed and the epoch advanced for it; cleared by a fresh heartbeat.
    fenced: bool,
}

impl Health {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            ttl_minus_margin: config.lease_ttl - config.safety_margin,
            never_fence: config.faults.no_self_fencing,
            wall: SystemTime::now,
            coarse: true,
            state: Mutex::new(HealthState::default()),
            fast: Fast {
                base: Instant::now(),
                epoch: AtomicU64::new(0),
                until: AtomicU64::new(0),
                wall_until: AtomicU64::new(0),
                coarse_until: AtomicU64::new(0),
                coarse_wall_until: AtomicU64::new(0),
            },
        }
    }

    /// Copies the state into `fast` (called under the lock after every change).
    fn publish(&self, s: &HealthState) {
        self.fast.epoch.store(s.epoch, Ordering::SeqCst);
        let (until, wall_until) = match (s.last_ok, s.last_ok_wall) {
            (Some(_), _) if self.never_fence => (u64::MAX, u64::MAX),
            (Some(ok), Some(ok_wall)) if !self.ttl_minus_margin.is_zero() => (
                nanos((ok + self.ttl_minus_margin).saturating_duration_since(self.fast.base)),
                wall_nanos(ok_wall.wall + self.ttl_minus_margin),
            ),
            _ => (0, 0),
        };
        self.fast.until.store(until, Ordering::SeqCst);
        self.fast.wall_until.store(wall_until, Ordering::SeqCst);
        // The coarse deadlines: as far ahead of the coarse clocks now as the precise ones are
        // ahead of the precise clocks, less the slack. None with a wall clock a test moves.
        let now = nanos(Instant::now().saturating_duration_since(self.fast.base));
        let slack = nanos(COARSE_SLACK);
        let ahead = |until: u64, now: u64, coarse_now: u64| match until {
            u64::MAX => u64::MAX,
            0 => 0,
            until => (coarse_now + until.saturating_sub(now)).saturating_sub(slack),
        };
        let (coarse_until, coarse_wall_until) = if self.coarse {
            (
                ahead(until, now, coarse::monotonic()),
                ahead(wall_until, wall_nanos(SystemTime::now()), coarse::wall()),
            )
        } else {
            (0, 0)
        };
        self.fast.coarse_until.store(coarse_until, Ordering::SeqCst);
        self.fast
            .coarse_wall_until
            .store(coarse_wall_until, Ordering::SeqCst);
    }

    /// When the heartbeat task must close the coarse fast path, on tokio's clock: a little
    /// before the fence deadline our last good heartbeat set. `None` while it is closed.
    pub(crate) fn fast_path_closes_at(&self) -> Option<Instant> {
        if self.fast.coarse_until.load(Ordering::SeqCst) == 0 {
            return None;
        }
        match self.fast.until.load(Ordering::SeqCst) {
            u64::MAX => None,
            until => Some(
                (self.fast.base + Duration::from_nanos(until))
                    .checked_sub(CLOSE_EARLY)
                    .unwrap_or(self.fast.base),
            ),
        }
    }

    /// Closes the coarse fast path until the next heartbeat lands: nothing will close it on
    /// time any more (the heartbeat task stopped).
    pub(crate) fn close_fast_path_now(&self) {
        let _s = self.lock();
        self.fast.coarse_until.store(0, Ordering::SeqCst);
    }

    /// Closes the coarse fast path if `now` is at or past [`Self::fast_path_closes_at`] (a
    /// heartbeat that landed meanwhile moved it: then nothing happens).
    pub(crate) fn close_fast_path(&self, now: Instant) {
        let _s = self.lock();
        if self.fast_path_closes_at().is_some_and(|at| now >= at) {
            self.fast.coarse_until.store(0, Ordering::SeqCst);
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
        // Time the host was suspended since: the wall clock ran on, the real monotonic clock
        // did not. (Against std's clock, not tokio's: on tokio's paused clock a run is judged
        // on virtual time alone, however long it takes in real time.)
        let suspended = s
            .last_ok_wall
            .and_then(|m| {
                let wall = (self.wall)().duration_since(m.wall).ok()?;
                Some(wall.saturating_sub(m.real.elapsed()))
            })
            .unwrap_or_default();
        now.saturating_duration_since(ok) + suspended >= self.ttl_minus_margin
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
                self.publish(s);
                warn!("self-fenced: own heartbeat has not succeeded for lease_ttl - safety_margin");
            }
            return true;
        }
        s.last_ok.is_none()
    }

    /// The wall clock now (see `wall`).
    pub(crate) fn wall_now(&self) -> WallMark {
        WallMark {
            wall: (self.wall)(),
            real: std::time::Instant::now(),
        }
    }

    /// Records a heartbeat that succeeded and was sent at `sent` (`sent_wall` on the wall clock).
    pub(crate) fn heartbeat_ok(&self, sent: Instant, sent_wall: WallMark) {
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
        self.publish(&s);
    }

    pub(crate) fn is_fenced(&self, now: Instant) -> bool {
        let mut s = self.lock();
        self.check(&mut s, now)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Whether a record fetched in `epoch` may be handed out now.
    pub(crate) fn may_hand_out(&self, epoch: u64) -> bool {
        self.may_hand_out_at(epoch, Instant::now())
    }

    /// [`Self::may_hand_out`] for the record stream's per-record path: on the coarse clocks
    /// while they are well before the deadlines (see the module docs), else precise.
    pub(crate) fn may_hand_out_now(&self, epoch: u64) -> bool {
        // The deadlines before the epoch: they are published after it.
        let until = self.fast.coarse_until.load(Ordering::SeqCst);
        let wall_until = self.fast.coarse_wall_until.load(Ordering::SeqCst);
        if self.fast.epoch.load(Ordering::SeqCst) == epoch
            && coarse::monotonic() < until
            && coarse::wall() < wall_until
        {
            return true;
        }
        self.may_hand_out(epoch)
    }

    /// [`Self::may_hand_out`] as of `now` (read once for several checks). Without a lock while
    /// the last heartbeat is fresh (see [`Fast`]): this is the record stream's per-record path.
    pub(crate) fn may_hand_out_at(&self, epoch: u64, now: Instant) -> bool {
        let until = self.fast.until.load(Ordering::SeqCst);
        let wall_until = self.fast.wall_until.load(Ordering::SeqCst);
        if self.fast.epoch.load(Ordering::SeqCst) == epoch
            && nanos(now.saturating_duration_since(self.fast.base)) < until
            && wall_nanos((self.wall)()) < wall_until
        {
            return true;
        }
        let mut s = self.lock();
        !self.check(&mut s, now) && s.epoch == epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A wall clock the test moves by hand.
    static WALL_SECS: AtomicU64 = AtomicU64::new(1_000_000);

    fn fake_wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(WALL_SECS.load(Ordering::SeqCst))
    }

    /// The check without the lock gives the lock's answer: records of the current epoch until
    /// the fence deadline, none at it, and none of an older epoch even before it.
    #[test]
    fn hand_outs_stop_at_the_fence_deadline_and_an_older_epoch_stays_stale() {
        let config = Config::new("app");
        let health = Health::new(&config);
        let ttl = config.lease_ttl - config.safety_margin;
        let now = Instant::now();
        assert!(!health.may_hand_out_at(0, now), "no heartbeat yet");
        health.heartbeat_ok(now, health.wall_now());
        let epoch = health.epoch();
        assert!(health.may_hand_out_at(epoch, now));
        assert!(health.may_hand_out_at(epoch, now + ttl - Duration::from_millis(1)));
        assert!(
            !health.may_hand_out_at(epoch, now + ttl),
            "at the deadline: fenced"
        );
        assert_ne!(health.epoch(), epoch, "the fence advanced the epoch");
        assert!(
            !health.may_hand_out_at(epoch, now),
            "an older epoch, even before the deadline"
        );
    }

    /// The record stream's coarse check runs on real time, which tokio's paused clock leaves
    /// behind: the heartbeat task closes it `CLOSE_EARLY` before the deadline on tokio's clock,
    /// and from then on the precise check decides — it fences at the deadline. A close asked
    /// too early, or after a fresh heartbeat moved the deadline, changes nothing.
    #[tokio::test(start_paused = true)]
    async fn the_coarse_check_closes_before_the_deadline_on_tokios_clock() {
        let config = Config::new("app");
        let health = Health::new(&config);
        let ttl = config.lease_ttl - config.safety_margin;
        assert_eq!(health.fast_path_closes_at(), None, "no heartbeat: closed");
        assert!(!health.may_hand_out_now(0), "no heartbeat yet");
        let start = Instant::now();
        health.heartbeat_ok(start, health.wall_now());
        let epoch = health.epoch();
        assert!(health.may_hand_out_now(epoch));
        let close_at = health.fast_path_closes_at().expect("open");
        assert_eq!(close_at, start + ttl - CLOSE_EARLY);

        health.close_fast_path(close_at - Duration::from_millis(1));
        assert_eq!(
            health.fast_path_closes_at(),
            Some(close_at),
            "too early: still open"
        );
        tokio::time::advance(ttl - CLOSE_EARLY).await;
        health.close_fast_path(Instant::now());
        assert_eq!(health.fast_path_closes_at(), None, "closed");
        assert!(
            health.may_hand_out_now(epoch),
            "before the deadline, precisely"
        );
        tokio::time::advance(CLOSE_EARLY).await;
        assert!(!health.may_hand_out_now(epoch), "at the deadline: fenced");
        assert_ne!(health.epoch(), epoch);

        // A heartbeat that lands opens it again, with the deadline it sets.
        let again = Instant::now();
        health.heartbeat_ok(again, health.wall_now());
        assert_eq!(
            health.fast_path_closes_at(),
            Some(again + ttl - CLOSE_EARLY)
        );
        assert!(health.may_hand_out_now(health.epoch()));
        health.close_fast_path(close_at);
        assert!(
            health.fast_path_closes_at().is_some(),
            "a stale close changes nothing"
        );
    }

    /// A host suspended for a minute: its monotonic clock did not move, the wall clock did.
    /// The client must fence itself on waking — its leases may have been taken meanwhile — and
    /// hand out nothing it fetched before.
    #[test]
    fn a_host_suspend_fences_the_client_although_the_monotonic_clock_stood_still() {
        let health = Health {
            wall: fake_wall,
            coarse: false,
            ..Health::new(&Config::new("app"))
        };
        let now = Instant::now();
        health.heartbeat_ok(now, health.wall_now());
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
        health.heartbeat_ok(now, health.wall_now());
        assert!(!health.is_fenced(now));
        assert!(health.may_hand_out_at(health.epoch(), now));
    }
}
