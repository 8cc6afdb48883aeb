//! The engine: what the supervisor and its tenures share — the configuration, the source and
//! the store, how records leave (a stream or a handler), this client's health and status —
//! and the few acts every part of it performs the same way: back off, heartbeat, report a
//! stall or a vanished lease, tell the application a tenure ends, stop the consumer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::backoff::BackoffPolicy;
use crate::config::Config;
use crate::error::ConsumerError;
use crate::failure::FailurePolicy;
use crate::handler::BatchHandler;
use crate::health::Health;
use crate::lifecycle::{EndReason, ShardEnding, ShardLifecycle};
use crate::membership::Beats;
use crate::metrics::{self, Labels};
use crate::record::{AckTracker, Run};
use crate::rng::Rng;
use crate::shutdown::{ShutdownHandle, Stop};
use crate::source::{ShardId, ShardSource};
use crate::stall::{PollClock, Stall, StallKind, Watchdog};
use crate::status::StatusHandle;
use crate::store::{ClientId, LeaseStore, StoreError, Tenure};

/// The engine's first retry waits about this long; `Config::max_backoff` caps the doubling.
const ENGINE_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How records leave the engine.
pub(crate) enum Delivery {
    /// Each fetched batch goes as one run: one channel slot per batch, not per record.
    Stream(mpsc::Sender<Arc<Run>>),
    Handler(Arc<dyn BatchHandler>),
}

/// Where the supervisor leaves the fatal error that stopped it, for the record stream.
pub(crate) type StoppedBy = Arc<Mutex<Option<ConsumerError>>>;

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
    pub(crate) stopped_by: StoppedBy,
    pub(crate) labels: Labels,
    pub(crate) status: StatusHandle,
    pub(crate) rng: Mutex<Rng>,
    /// The values our heartbeats write: never the same twice, not even after a restart.
    pub(crate) beats: Mutex<Beats>,
    /// A heartbeat failed with a fatal error: the supervisor stops on it.
    pub(crate) heartbeat_fatal: Mutex<Option<StoreError>>,
    /// Stops heartbeats when the supervisor is stuck.
    pub(crate) watchdog: Arc<Watchdog>,
    /// When the record stream was last polled (record-stream consumers).
    pub(crate) poll_clock: Arc<PollClock>,
    /// The application's lifecycle hooks.
    pub(crate) lifecycle: Option<Arc<dyn ShardLifecycle>>,
    /// The failure policy, and after how many failed attempts it is asked.
    pub(crate) failure: Option<(u32, Arc<dyn FailurePolicy>)>,
    /// Asks the supervisor to stop (a failure policy that gave up).
    pub(crate) shutdown: Arc<watch::Sender<Stop>>,
    /// Why the application asked to stop, if it was an error.
    pub(crate) stop_error: Mutex<Option<ConsumerError>>,
}

impl Engine {
    /// The delay before retry number `attempt`, with jitter from the engine's seeded
    /// generator (see [`crate::backoff`]).
    pub(crate) fn backoff(&self, attempt: u32) -> std::time::Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        BackoffPolicy::new(ENGINE_FIRST_BACKOFF, self.config.max_backoff)
            .delay_with(attempt, &mut rng)
    }

    pub(crate) fn may_hand_out(&self, epoch: u64) -> bool {
        self.health.may_hand_out(epoch)
    }

    /// Sends one heartbeat, and records it in our health if it landed.
    pub(crate) async fn heartbeat(&self) -> Result<(), StoreError> {
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
    pub(crate) fn heartbeat_fatal(&self) -> Option<StoreError> {
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
