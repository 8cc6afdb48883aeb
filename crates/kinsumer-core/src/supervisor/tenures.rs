//! The tenures the supervisor runs: starting one for a lease taken, ending one without a
//! write (lost, self-fenced), and learning how one ended — with back-off for a failed shard.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::{Held, Supervisor, Tenures, fingerprint, is_fatal};
use crate::error::ConsumerError;
use crate::lifecycle::EndReason;
use crate::metrics;
use crate::position::Checkpoint;
use crate::record::AckTracker;
use crate::source::{ShardId, SourceError};
use crate::store::{ClientId, CorruptRow, Lease};
use crate::tenure::{Ask, Outcome, run_tenure};

impl Supervisor {
    pub(super) fn start_tenure(
        &mut self,
        lease: Lease,
        previous: Option<&ClientId>,
        tasks: &mut Tenures,
    ) {
        let Some(tenure) = lease.tenure() else {
            return;
        };
        let start = match &lease.checkpoint {
            Some(cp) => cp.clone(),
            // A child starts at its horizon, so nothing after its parents' end is skipped.
            None if !lease.parents.is_empty() => Checkpoint::TrimHorizon,
            None => self.engine.config.initial_position.into(),
        };
        info!(tenure = %tenure, from = %start, previous = ?previous, "lease taken");
        let from = match previous {
            None => "free",
            Some(p) if *p == self.engine.me => "self",
            Some(_) => "expired",
        };
        self.engine
            .labels
            .client_counter(metrics::LEASES_TAKEN, &[("from", from)])
            .increment(1);
        self.announce_due = true;
        let cfg = &self.engine.config;
        let tracker = Arc::new(AckTracker::with_metrics(
            cfg.max_unacked_records,
            cfg.max_unacked_bytes,
            self.engine.labels.shard(&tenure.shard),
        ));
        let (ask, asked) = watch::channel(Ask::Run);
        let epoch = self.engine.health.epoch();
        let span = info_span!("tenure", shard = %tenure.shard, token = tenure.token);
        let fut = run_tenure(
            self.engine.clone(),
            tenure.clone(),
            start,
            tracker.clone(),
            epoch,
            asked,
        );
        let shard = tenure.shard.clone();
        let handle = tasks.spawn(async move { (shard, fut.await) }.instrument(span));
        self.task_shard.insert(handle.id(), tenure.shard.clone());
        self.engine.status.insert(&tenure, tracker.clone());
        self.held.insert(
            tenure.shard.clone(),
            Held {
                tenure,
                taken: lease.clone(),
                tracker,
                ask,
                task: handle,
            },
        );
        self.set_held_gauge();
    }

    /// Ends a tenure at once, with no further write (lost, or self-fenced).
    pub(super) fn drop_held(&mut self, shard: &ShardId) {
        if let Some(held) = self.held.remove(shard) {
            held.tracker.revoke();
            held.task.abort();
            self.engine.status.remove(shard);
            if self.engine.lifecycle.is_some() {
                // Told from a task of its own: the supervisor does not wait for the application.
                let engine = self.engine.clone();
                let limit = engine.config.drain_timeout;
                let span =
                    info_span!("tenure", shard = %held.tenure.shard, token = held.tenure.token);
                tokio::spawn(
                    async move {
                        let (tenure, tracker) = (held.tenure, held.tracker);
                        engine
                            .hook_ending(&tenure, &tracker, EndReason::Lost, limit)
                            .await;
                    }
                    .instrument(span),
                );
            }
        }
        self.set_held_gauge();
    }

    pub(super) fn count(&self, name: &'static str) {
        self.engine.labels.client_counter(name, &[]).increment(1);
    }

    pub(super) fn set_held_gauge(&self) {
        self.engine
            .labels
            .client_gauge(metrics::LEASES_HELD)
            .set(self.held.len() as f64);
    }

    pub(super) fn on_tenure_end(
        &mut self,
        joined: Result<(tokio::task::Id, (ShardId, Outcome)), tokio::task::JoinError>,
    ) -> Result<(), ConsumerError> {
        let (id, shard, outcome) = match joined {
            Ok((id, (shard, outcome))) => (id, shard, outcome),
            Err(e) if e.is_cancelled() => {
                self.task_shard.remove(&e.id());
                return Ok(()); // we aborted it ourselves
            }
            Err(e) => {
                let Some(shard) = self.task_shard.get(&e.id()).cloned() else {
                    return Ok(());
                };
                (
                    e.id(),
                    shard,
                    Outcome::Failed(ConsumerError::Panicked(e.to_string())),
                )
            }
        };
        self.task_shard.remove(&id);
        // A tenure of this shard that we already dropped may end after a newer one started.
        if self.held.get(&shard).is_some_and(|h| h.task.id() != id) {
            return Ok(());
        }
        let taken = self.held.remove(&shard).map(|held| {
            held.tracker.revoke();
            held.taken
        });
        self.set_held_gauge();
        self.engine.status.remove(&shard);
        self.need_full = true;
        // Released, finished, lost or failed: the fleet's view of this lease changed.
        self.announce_due = true;
        match outcome {
            Outcome::Finished => {
                self.count(metrics::LEASES_FINISHED);
                self.retry.remove(&shard);
                self.need_sync = true;
            }
            Outcome::Released => {
                self.count(metrics::LEASES_RELEASED);
                self.retry.remove(&shard);
            }
            Outcome::Lost => {
                self.count(metrics::LEASES_LOST);
                self.retry.remove(&shard);
            }
            Outcome::Failed(e) if is_fatal(&e) => return Err(e),
            // The source refuses the stored position: no retry can help, and another client
            // would fail the same way. We keep the lease (so nobody else tries) and set the
            // shard aside until someone resets its checkpoint.
            Outcome::Failed(ConsumerError::Source(e @ SourceError::BadPosition { .. })) => {
                let row = CorruptRow {
                    key: format!("{}/{shard}", self.engine.stream),
                    id: Some(shard.to_string()),
                    reason: format!("{e}; reset its checkpoint"),
                };
                let fingerprint = taken.as_ref().map(fingerprint).unwrap_or_default();
                self.bad_leases.refused(shard.as_str(), fingerprint, row);
                self.set_corrupt_gauge();
            }
            Outcome::Failed(e) => {
                let failures = self.retry.get(&shard).map_or(0, |(_, n)| *n) + 1;
                let delay = self.engine.backoff(failures);
                warn!(shard = %shard, error = %e, failures, retry_in_ms = delay.as_millis() as u64, "shard failed; restarting it");
                self.retry.insert(shard, (Instant::now() + delay, failures));
            }
        }
        Ok(())
    }
}
