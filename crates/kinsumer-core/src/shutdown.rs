//! How the application stops a running consumer: gracefully, or at once as a crash.

use std::sync::Arc;

use tokio::sync::watch;

/// What the application asked of a running consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Nothing: run.
    Run,
    /// Shut down gracefully.
    Graceful,
    /// Stop at once, as a crash would.
    Abort,
}

/// Asks a running consumer to shut down gracefully; cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(pub(crate) Arc<watch::Sender<Stop>>);

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
