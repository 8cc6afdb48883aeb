//! Heartbeats, from a task of their own: a slow handler or a slow supervisor step never
//! delays one, and a supervisor that is stuck stops them, so its client fences itself.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, warn};

use crate::engine::Engine;
use crate::stall::{Stall, StallKind};

/// The heartbeat task; aborted when dropped.
pub(super) struct Heartbeat(AbortOnDropHandle<()>);

impl Heartbeat {
    pub(super) fn start(engine: &Arc<Engine>) -> Self {
        // In the consumer's span, like everything it spawns: its log lines say whose they are.
        Self(AbortOnDropHandle::new(tokio::spawn(
            heartbeat_loop(engine.clone()).in_current_span(),
        )))
    }

    /// Stops it, and waits until it stopped (so no later heartbeat re-creates our row).
    pub(super) async fn stop(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

/// Closes the record stream's coarse fence check when dropped (see `crate::health`).
struct CloseWhenStopped(Arc<Engine>);

impl Drop for CloseWhenStopped {
    fn drop(&mut self) {
        self.0.health.close_fast_path_now();
    }
}

/// Heartbeats every `heartbeat_interval`, on its own task so a slow handler never delays it.
/// A heartbeat does not wait for the one before: one call stuck in the network (up to
/// `call_timeout`, which may be longer than `lease_ttl`) must not silence a client that can
/// still reach its store, or it fences itself and the fleet moves its leases for nothing.
async fn heartbeat_loop(engine: Arc<Engine>) {
    // Once no heartbeat is sent, nothing closes the coarse fence check on tokio's clock: closed
    // when the loop stops, every hand-out takes the precise check until a heartbeat lands.
    let _close = CloseWhenStopped(engine.clone());
    let mut in_flight = JoinSet::new();
    let mut tick = tokio::time::interval(engine.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The record stream's coarse fence check runs on real time; on tokio's clock (paused
        // in tests) it is closed here, just before the deadline (see `crate::health`).
        let close_at = engine.health.fast_path_closes_at();
        tokio::select! {
            biased;
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                engine.health.close_fast_path(Instant::now());
            }
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
                    in_flight.spawn(
                        async move {
                            if let Err(e) = engine.heartbeat().await {
                                warn!(error = %e, "heartbeat failed");
                            }
                        }
                        .in_current_span(),
                    );
                }
            }
        }
    }
}
