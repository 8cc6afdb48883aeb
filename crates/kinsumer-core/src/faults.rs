//! Knobs that break the engine on purpose, so kinsumer's own tests (the simulation, the
//! conformance fleets, the CLI's chaos member) can show that each invariant check catches a
//! broken engine.
//!
//! Not part of the API: this module and `Config::faults` are public only with the
//! `engine-faults` feature, which the testkit's `sim` feature turns on and no application
//! should; without it they are private to the crate and always at their defaults.

/// Knobs that break the engine on purpose, so tests can show each invariant check catches a
/// broken engine. Never set these in production.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineFaults {
    /// Take children before their parents finished.
    pub ignore_parents: bool,
    /// Commit the position handed out instead of the acked watermark.
    pub commit_unacked: bool,
    /// Drop the first record after every take (a gap).
    pub skip_first_record: bool,
    /// Deliver every batch twice within a tenure.
    pub deliver_twice: bool,
    /// Take every eligible shard instead of the balanced share.
    pub greedy: bool,
    /// Release with the checkpoint the tenure started from, not the watermark.
    pub release_stale_checkpoint: bool,
    /// Never self-fence: keep handing out records and writing while the own heartbeat fails.
    pub no_self_fencing: bool,
    /// Judge other clients dead after half the lease TTL (takes leases from live clients).
    pub hasty_death: bool,
    /// Plan only over every live row, never over the clients with evidence of life: a client
    /// in its first TTL leaves leases handed to it unowned when it counts a dead row alive.
    pub single_plan: bool,
    /// Release without naming the successor: a lease handed to a client that still plans it
    /// for someone else (a newcomer that counts a dead row alive) waits for views to agree.
    pub anonymous_release: bool,
    /// Never mark a client judged dead: the fleet learns a death only by judging it itself,
    /// so a newcomer counts a crashed client alive for its first TTL (what the named
    /// successor of a release guards against).
    pub never_mark: bool,
    /// Heartbeat whatever the supervisor does: a stuck supervisor keeps its leases.
    pub no_watchdog: bool,
    /// Dropping `Records` or the `Consumer` does nothing more than before stall handling: a
    /// dropped `Records` leaves the consumer idle with its leases, a dropped `Consumer` crashes.
    pub silent_drops: bool,
    /// While on, the supervisor stops stepping (it waits without making a call): a stuck
    /// supervisor, for the watchdog's tests.
    pub stuck_supervisor: Option<FaultSwitch>,
}

/// A switch a test flips to turn a fault on or off while the consumer runs (see
/// [`EngineFaults::stuck_supervisor`]). Equal only to its clones.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl FaultSwitch {
    /// Turns the fault on (`true`) or off.
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the fault is on.
    pub fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl PartialEq for FaultSwitch {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FaultSwitch {}
