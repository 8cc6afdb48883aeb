//! One lease tenure of one shard: read → deliver → ack/watermark → commit → release or finish.
//!
//! The supervisor (`crate::supervisor`) takes a lease and runs [`run_tenure`] for it. Two tasks
//! make a tenure:
//! - the **fetcher** opens a reader at the stored checkpoint, reads at most once per
//!   `poll_interval`, registers each record in the tenure's [`AckTracker`] and delivers it; it
//!   pauses while the tracker is full and backs off on throttling and transient errors;
//! - the **driver** (this function) commits the watermark every `commit_interval` when it moved,
//!   and ends the tenure: on a handoff it stops the fetcher, waits up to `drain_timeout` for
//!   handed-out records to be acked, then releases with the watermark; at the end of a closed
//!   shard it waits until every record is acked, then finishes the lease.
//!
//! Every write is fenced by the tenure's token; `LeaseLost` ends the tenure at once, without
//! another write.
//!
//! The tenure is split by concept, each file depending only on the ones after it:
//! - this file — the lifecycle: start, commit, release, finish, lost, failed;
//! - [`fetch`] — the read loop and its error policy;
//! - [`handler`] — the batch-handler worker;
//! - [`deliver`] — how a fetched batch reaches the record stream or the handler worker.
//!
//! No file here is imported back by the ones it imports, and `crate::engine` (the shared
//! context) imports none of them.

mod deliver;
mod fetch;
mod handler;

use std::sync::Arc;

use futures::future::OptionFuture;
use tokio::sync::{mpsc, watch};
// Abort-on-drop guards: no task outlives the tenure that started it.
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::task::AbortOnDrop;
use tracing::{Instrument, debug, info, warn};

use self::deliver::Sink;
use self::fetch::{FetchEnd, fetch_loop};
use self::handler::handler_worker;
use crate::engine::{Delivery, Engine, report_vanished};
use crate::error::ConsumerError;
use crate::lifecycle::{EndReason, ShardStarted};
use crate::metrics;
use crate::position::Checkpoint;
use crate::record::AckTracker;
use crate::store::{ClientId, StoreError, Tenure};

/// How a tenure ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The shard was read to its end, everything acked, and the lease finished.
    Finished,
    /// The lease was handed back with the watermark (handoff or shutdown).
    Released,
    /// Another tenure holds the lease now; nothing more was written.
    Lost,
    /// Something failed; the supervisor restarts the shard with back-off, or stops the consumer
    /// when the error is fatal.
    Failed(ConsumerError),
}

/// What the supervisor asks of a running tenure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Read on.
    #[default]
    Run,
    /// Hand the lease off: stop fetching, drain, release with the watermark, and name `to` in
    /// the row as the client it is handed to (see `Lease::successor`).
    Release {
        /// The successor, if the plan names one.
        to: Option<ClientId>,
        /// Why: a handoff, a shutdown, or a stall (then nothing is drained: the records out
        /// are stuck).
        reason: EndReason,
    },
}

/// Runs one tenure until it ends. `ask` turning to [`Ask::Release`] asks for a graceful
/// handoff.
pub(crate) async fn run_tenure(
    engine: Arc<Engine>,
    tenure: Tenure,
    start: Checkpoint,
    tracker: Arc<AckTracker>,
    epoch: u64,
    mut ask: watch::Receiver<Ask>,
) -> Outcome {
    let cfg = &engine.config;
    let started_from = start.clone();
    // LATEST means "from now"; written down as the time it was resolved, so that if this tenure
    // ends before its first commit, the next owner does not resolve it again later and skip
    // what arrived in between.
    let start = match start {
        Checkpoint::Latest => {
            let now = Checkpoint::AtTimestamp(engine.source.now_ms());
            match engine.store.checkpoint(&engine.stream, &tenure, &now).await {
                Ok(()) => now,
                Err(StoreError::LeaseLost { .. }) => return Outcome::Lost,
                Err(e) => return Outcome::Failed(e.into()),
            }
        }
        other => other,
    };
    let mut committed = start.clone();
    if let Some(hooks) = &engine.lifecycle {
        // Before anything is fetched, so before the first record is handed out. Dated as a
        // call of the application: one that hangs is a stall.
        tracker.set_call_since(Some(Instant::now()));
        hooks
            .started(ShardStarted {
                shard: tenure.shard.clone(),
                token: tenure.token,
                tenure: tenure.clone(),
                from: start.clone(),
            })
            .await;
        tracker.set_call_since(None);
    }

    let (delivery, mut worker) = match &engine.delivery {
        Delivery::Stream(tx) => (Sink::Stream(tx.clone()), None),
        Delivery::Handler(handler) => {
            let (tx, rx) = mpsc::channel(1);
            // In the tenure's span: the application's handler logs with its shard and token.
            let worker = tokio::spawn(
                handler_worker(engine.clone(), handler.clone(), tracker.clone(), epoch, rx)
                    .in_current_span(),
            );
            (Sink::Handler(tx), Some(worker))
        }
    };
    let _worker_guard = worker.as_ref().map(|w| AbortOnDrop::new(w.abort_handle()));
    let mut fetcher = tokio::spawn(
        fetch_loop(
            engine.clone(),
            tenure.clone(),
            start,
            tracker.clone(),
            epoch,
            delivery,
        )
        .in_current_span(),
    );
    let fetcher_guard = AbortOnDrop::new(fetcher.abort_handle());

    let mut tick =
        tokio::time::interval_at(Instant::now() + cfg.commit_interval, cfg.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ended = false;
    let mut told_end = false;

    // A batch handler is told a shard ends once its last batch is handled; a record-stream
    // application once it was handed every record (it may ack them as it flushes).
    let handler = matches!(engine.delivery, Delivery::Handler(_));
    loop {
        // At the end of the shard: the application is told before the finish, so what it
        // flushes and acks in the hook is covered.
        // What the end of a shard waits for: the `ending` hook is due, or the finish.
        let hook_due =
            |t: &AckTracker| t.waiting_since().is_none() && (!handler || t.unacked() == 0);
        let finish_due = |t: &AckTracker| t.unacked() == 0;
        if ended && !told_end && hook_due(&tracker) {
            told_end = true;
            let limit = cfg.stall_timeout.unwrap_or(cfg.drain_timeout);
            engine
                .hook_ending(&tenure, &tracker, EndReason::Finished, limit)
                .await;
        }
        if ended && told_end && finish_due(&tracker) {
            return finish(&engine, &tenure, &tracker).await;
        }
        tokio::select! {
            biased;
            changed = ask.changed() => {
                if changed.is_err() {
                    // The supervisor dropped this tenure (lost, or self-fenced): no more writes.
                    tracker.revoke();
                    return Outcome::Lost;
                }
                let asked = ask.borrow().clone();
                if let Ask::Release { to, reason } = asked {
                    drop(fetcher_guard);
                    let to = to.filter(|_| !cfg.faults.anonymous_release);
                    if cfg.faults.release_stale_checkpoint {
                        let _ = engine.store.release(&engine.stream, &tenure, Some(&started_from), to.as_ref()).await;
                        return Outcome::Released;
                    }
                    return release_lease(&engine, &tenure, &tracker, &committed, to.as_ref(), reason).await;
                }
            }
            _ = tick.tick() => {
                let m = tracker.metrics();
                m.watermark_lag.set(tracker.since_watermark() as f64);
                match commit(&engine, &tenure, &tracker, &mut committed).await {
                    Ok(wrote) => {
                        if wrote {
                            m.checkpoint_ok.increment(1);
                        }
                    }
                    Err(StoreError::LeaseLost { .. }) => {
                        m.checkpoint_lost.increment(1);
                        info!(tenure = %tenure, "lease lost on commit");
                        return lost(&engine, &tenure, &tracker).await;
                    }
                    Err(e) if e.is_retryable() => {
                        m.checkpoint_failed.increment(1);
                        warn!(tenure = %tenure, error = %e, "commit failed; retrying next tick");
                    }
                    Err(e) => {
                        m.checkpoint_failed.increment(1);
                        if let StoreError::NotFound { .. } = e {
                            report_vanished(&engine, &tenure.shard);
                        }
                        tracker.revoke();
                        return Outcome::Failed(e.into());
                    }
                }
            }
            joined = OptionFuture::from(worker.as_mut()), if worker.is_some() => {
                worker = None;
                if let Some(Err(e)) = joined {
                    // A panicking handler: restart the shard (the batch is retried, never skipped),
                    // keeping what was handled before it.
                    let e = ConsumerError::Panicked(format!("batch handler: {e}"));
                    return fail(&engine, &tenure, &tracker, &mut committed, e).await;
                }
            }
            joined = &mut fetcher, if !ended => match joined {
                Ok(FetchEnd::Ended) => ended = true,
                Ok(FetchEnd::Gone) => {
                    // Deliver and ack what was read before finishing, as at a shard's end.
                    warn!(tenure = %tenure, "shard left the stream's retention before it was read to its end");
                    ended = true;
                }
                Ok(FetchEnd::Failed(e)) => {
                    return fail(&engine, &tenure, &tracker, &mut committed, e).await;
                }
                Err(e) => {
                    let e = ConsumerError::Panicked(e.to_string());
                    return fail(&engine, &tenure, &tracker, &mut committed, e).await;
                }
            },
            _ = tracker.wait_until(|t| if told_end { finish_due(t) } else { hook_due(t) }), if ended => {}
        }
    }
}

/// Ends a tenure that failed (a panic, a read error no retry fixes): no more hand-outs, and
/// the watermark committed first, so the next tenure resumes right after what was processed —
/// after a handler panic only the batch that panicked comes again, not everything since the
/// last periodic commit. Best effort: a failed commit leaves the last one standing.
async fn fail(
    engine: &Engine,
    tenure: &Tenure,
    tracker: &AckTracker,
    committed: &mut Checkpoint,
    error: ConsumerError,
) -> Outcome {
    tracker.revoke();
    let limit = engine.config.drain_timeout;
    engine
        .hook_ending(tenure, tracker, EndReason::Failed, limit)
        .await;
    if let Err(e) = commit(engine, tenure, tracker, committed).await {
        warn!(tenure = %tenure, error = %e, "committing the watermark of a failed tenure failed");
    }
    Outcome::Failed(error)
}

/// Writes the watermark if it moved since the last commit; `true` if it wrote.
async fn commit(
    engine: &Engine,
    tenure: &Tenure,
    tracker: &AckTracker,
    committed: &mut Checkpoint,
) -> Result<bool, StoreError> {
    let position = if engine.config.faults.commit_unacked {
        tracker.last_registered()
    } else {
        tracker.watermark()
    };
    let Some(position) = position else {
        return Ok(false);
    };
    let next = Checkpoint::After(position);
    if next == *committed {
        return Ok(false);
    }
    engine
        .store
        .checkpoint(&engine.stream, tenure, &next)
        .await?;
    debug!(tenure = %tenure, checkpoint = %next, "checkpoint");
    *committed = next;
    Ok(true)
}

/// The lease is no longer ours: no more hand-outs, no more writes; the application is told.
async fn lost(engine: &Engine, tenure: &Tenure, tracker: &AckTracker) -> Outcome {
    tracker.revoke();
    let limit = engine.config.drain_timeout;
    engine
        .hook_ending(tenure, tracker, EndReason::Lost, limit)
        .await;
    Outcome::Lost
}

/// Graceful handoff: no more hand-outs, tell the application (its `ending` hook may flush and
/// ack), wait for what is out to be acked, release with the watermark, naming the successor.
/// The hook and the drain share `drain_timeout`; after a stall nothing is waited for.
async fn release_lease(
    engine: &Engine,
    tenure: &Tenure,
    tracker: &AckTracker,
    committed: &Checkpoint,
    successor: Option<&ClientId>,
    reason: EndReason,
) -> Outcome {
    let started = Instant::now();
    tracker.revoke();
    let drain = engine.config.drain_timeout;
    // A record-stream application is told first: it may ack what it holds as it flushes. A
    // batch handler after the drain, once the batch in its hands is done.
    let handler = matches!(engine.delivery, Delivery::Handler(_));
    if !handler {
        engine.hook_ending(tenure, tracker, reason, drain).await;
    }
    let deadline = if reason == EndReason::Stalled {
        started
    } else {
        started + drain
    };
    while tracker.outstanding() > 0 {
        tokio::select! {
            biased;
            _ = sleep_until(deadline) => {
                warn!(tenure = %tenure, outstanding = tracker.outstanding(), "drain timed out; releasing with what is acked");
                break;
            }
            _ = tracker.wait_until(|t| t.outstanding() == 0) => {}
        }
    }
    if handler {
        engine.hook_ending(tenure, tracker, reason, drain).await;
    }
    let mut attempt: u32 = 0;
    loop {
        // Read again on every attempt: acks of records handed out before the drain still
        // arrive while a release is retried, and each one released is one not delivered again.
        let checkpoint = tracker
            .watermark()
            .map(Checkpoint::After)
            .filter(|c| c != committed);
        match engine
            .store
            .release(&engine.stream, tenure, checkpoint.as_ref(), successor)
            .await
        {
            Ok(()) => {
                info!(tenure = %tenure, to = ?successor, drained_ms = started.elapsed().as_millis() as u64, "released");
                engine
                    .labels
                    .client_histogram(metrics::HANDOFF_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                tracker.metrics().watermark_lag.set(0.0);
                return Outcome::Released;
            }
            // A retry after an ambiguous release lands here too: either way the lease is no
            // longer ours, and whatever was not committed is redelivered by the next owner.
            Err(StoreError::LeaseLost { .. }) => return Outcome::Lost,
            Err(e) if e.is_retryable() && attempt < 5 => {
                attempt = attempt.saturating_add(1);
                sleep(engine.backoff(attempt)).await;
            }
            Err(e) => {
                warn!(tenure = %tenure, error = %e, "release failed; the lease expires with this client instead");
                return Outcome::Lost;
            }
        }
    }
}

/// The shard is read to its end and every record acked: mark the lease finished.
async fn finish(engine: &Engine, tenure: &Tenure, tracker: &AckTracker) -> Outcome {
    let mut attempt: u32 = 0;
    loop {
        // `finish` keeps owner and token, so retrying after an ambiguous outcome is safe.
        match engine.store.finish(&engine.stream, tenure).await {
            Ok(()) => {
                info!(tenure = %tenure, "shard finished");
                return Outcome::Finished;
            }
            Err(StoreError::LeaseLost { .. }) => return lost(engine, tenure, tracker).await,
            Err(e) if e.is_retryable() => {
                attempt = attempt.saturating_add(1);
                sleep(engine.backoff(attempt)).await;
            }
            Err(e) => return Outcome::Failed(e.into()),
        }
    }
}
