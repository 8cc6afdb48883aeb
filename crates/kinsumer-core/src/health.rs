//! This client's own heartbeat health: self-fencing. A client whose heartbeat has not landed
//! for `lease_ttl - safety_margin` may have been declared dead and its leases taken, so it
//! stops handing out what it fetched before (by an epoch) and drops every tenure.

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
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn wall_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(nanos)
        .unwrap_or(0)
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
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            ttl_minus_margin: config.lease_ttl - config.safety_margin,
            never_fence: config.faults.no_self_fencing,
            wall: SystemTime::now,
            state: Mutex::new(HealthState::default()),
            fast: Fast {
                base: Instant::now(),
                epoch: AtomicU64::new(0),
                until: AtomicU64::new(0),
                wall_until: AtomicU64::new(0),
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
                wall_nanos(ok_wall + self.ttl_minus_margin),
            ),
            _ => (0, 0),
        };
        self.fast.until.store(until, Ordering::SeqCst);
        self.fast.wall_until.store(wall_until, Ordering::SeqCst);
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
                self.publish(s);
                warn!("self-fenced: own heartbeat has not succeeded for lease_ttl - safety_margin");
            }
            return true;
        }
        s.last_ok.is_none()
    }

    /// The wall clock now (see `wall`).
    pub(crate) fn wall_now(&self) -> SystemTime {
        (self.wall)()
    }

    /// Records a heartbeat that succeeded and was sent at `sent` (`sent_wall` on the wall clock).
    pub(crate) fn heartbeat_ok(&self, sent: Instant, sent_wall: SystemTime) {
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
