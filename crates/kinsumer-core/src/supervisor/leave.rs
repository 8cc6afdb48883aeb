//! Letting go: a graceful shutdown (leave the membership, drain, commit, release), leaving the
//! fleet for a while when the application stalls as a whole, giving up one stalled shard, and
//! an abort (a crash: no write).

use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tracing::{debug, info, warn};

use super::{Heartbeat, Rejoin, Supervisor, Tenures, register};
use crate::engine::Delivery;
use crate::error::ConsumerError;
use crate::lifecycle::EndReason;
use crate::shutdown::Stop;
use crate::stall::{Stall, StallKind};
use crate::store::{Lease, StoreError};
use crate::tenure::Ask;

impl Supervisor {
    /// Removes our client row, with a few retries, and announces it so the fleet re-plans
    /// without us at once.
    pub(super) async fn deregister(&self) {
        for attempt in 1..=3 {
            match self.store.deregister(&self.engine.me).await {
                Ok(()) => {
                    if let Err(e) = self.store.announce().await {
                        debug!(error = %e, "announcing our leave failed");
                    }
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "deregister failed");
                    sleep(self.engine.backoff(attempt)).await;
                }
            }
        }
    }

    /// Releases the rows the store says are ours though no tenure of ours ran them (an
    /// ambiguous take, a tenure abandoned at the deadline): otherwise they would wait a TTL
    /// for an owner that is gone. Best effort: each release is fenced by the row's token.
    pub(super) async fn release_leftovers(&mut self) {
        let store = &self.store;
        let Ok(read) = store.leases(&self.engine.stream).await else {
            return;
        };
        let mine = read
            .rows
            .iter()
            .filter(|l| !l.finished && l.owner.as_ref() == Some(&self.engine.me))
            .filter_map(Lease::tenure);
        for tenure in mine {
            match store
                .release(&self.engine.stream, &tenure, None, None)
                .await
            {
                Ok(()) => info!(tenure = %tenure, "released a lease left over at shutdown"),
                Err(StoreError::LeaseLost { .. }) => {
                    debug!(tenure = %tenure, "a leftover lease was taken meanwhile")
                }
                Err(e) => warn!(tenure = %tenure, error = %e, "releasing a leftover lease failed"),
            }
        }
    }

    /// Graceful shutdown: leave the membership, then every tenure drains, commits and releases.
    ///
    /// Deregistering *first* is what makes the handoff fast: peers re-plan without us at once,
    /// so the leases we release go to them. Released while we still had a row, they were
    /// planned back to us — a client that no longer takes anything — until our row went. Our
    /// leases stay safe meanwhile: an owner without a row is judged dead only after
    /// `lease_ttl` unseen, longer than a drain.
    ///
    /// Bounded by `shutdown_timeout` as a whole (against a frozen store every call waits
    /// `call_timeout`): leaving and the last steps get a fifth of it each at most (and no more
    /// than a call's time limit), the tenures the rest — `drain_timeout` for the drain, then
    /// their final checkpoints and releases. A tenure that has not ended by then is abandoned
    /// and its lease released by a last read of the leases (or it expires as after a crash if
    /// the store is unreachable: at-least-once holds).
    pub(super) async fn shutdown(&mut self, tasks: &mut Tenures, reason: EndReason) {
        let cfg = self.engine.config.clone();
        let started = Instant::now();
        let end = started + cfg.shutdown_timeout;
        let step = cfg.call_timeout.min(cfg.shutdown_timeout / 5);
        let tenures_end = end - step;
        // Stop heartbeating before deregistering, so no later heartbeat re-creates our row.
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop().await;
        }
        if tokio::time::timeout_at(started + step, self.deregister())
            .await
            .is_err()
        {
            warn!("shutdown: removing our client row did not finish in time");
        }
        // Each lease goes to whom the others will plan it for once our row is gone: the plan
        // over the live clients without us. Named in the row, it is taken at once even by a
        // client whose view of the fleet differs from ours.
        let plan = self.plan_without_me();
        for (shard, held) in &self.held {
            let to = plan.get(shard).cloned();
            held.ask.send_replace(Ask::Release { to, reason });
        }
        loop {
            tokio::select! {
                biased;
                joined = tasks.join_next_with_id() => match joined {
                    Some(Ok((_, (shard, outcome)))) => {
                        debug!(shard = %shard, outcome = ?outcome, "tenure ended in shutdown");
                    }
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(tenures_end) => {
                    warn!(left = tasks.len(), "shutdown deadline passed; abandoning leases that did not release");
                    tasks.abort_all();
                    break;
                }
            }
        }
        for (shard, held) in &self.held {
            // An abandoned tenure (stuck in a call when asked to release) hands out nothing
            // more: its lease is released below, and the next owner delivers its records.
            held.tracker.revoke();
            self.engine.status.remove(shard);
        }
        self.held.clear();
        self.set_held_gauge();
        let last_steps = async {
            self.release_leftovers().await;
            // A heartbeat sent before we stopped may have landed after the first removal.
            self.deregister().await;
        };
        if tokio::time::timeout_at(end, last_steps).await.is_err() {
            warn!("shutdown deadline passed before the last release and deregister");
        }
        info!(took_ms = started.elapsed().as_millis() as u64, "shut down");
    }

    /// Stops at once, as a crash: no write. What was fetched is never handed out.
    pub(super) fn abort(&mut self) {
        for shard in self.held.keys().cloned().collect::<Vec<_>>() {
            self.drop_held(&shard);
        }
        self.heartbeat.take();
    }

    /// Whether the record stream has not been polled for `stall_timeout` while records waited
    /// in it for as long ([`StallKind::NotPolled`]); reported if so.
    ///
    /// "Waiting" is what the application has not taken: chunks queued in the stream's channel,
    /// or the rest of a chunk it took a record of. An application that waits *in* a poll has
    /// drained both — records fetched before a fence are skipped there, not left waiting — so
    /// it is never judged stalled, however long it waits.
    pub(super) fn not_polled(&mut self) -> bool {
        let Some(limit) = self.engine.config.stall_timeout else {
            return false;
        };
        let Delivery::Stream(tx) = &self.engine.delivery else {
            return false;
        };
        let now = Instant::now();
        let clock = &self.engine.poll_clock;
        let queued = tx.max_capacity() - tx.capacity();
        let Some(oldest) = clock.waiting(queued > 0 || clock.holding(), now) else {
            return false;
        };
        let polled = clock.last(now);
        if now.saturating_duration_since(polled) < limit
            || now.saturating_duration_since(oldest) < limit
        {
            return false;
        }
        self.engine.report_stall(Stall {
            kind: StallKind::NotPolled,
            shard: None,
            record: None,
            stalled_for: now.saturating_duration_since(polled.max(oldest)),
            at: now,
        });
        true
    }

    /// The application stalled as a whole: release everything and leave the fleet (as a
    /// shutdown), wait until `rejoin` says it may come back, then register again. `Ok(false)`
    /// if asked to stop meanwhile.
    pub(super) async fn leave_until(
        &mut self,
        tasks: &mut Tenures,
        shutdown: &mut watch::Receiver<Stop>,
        rejoin: Rejoin,
    ) -> Result<bool, ConsumerError> {
        self.shutdown(tasks, EndReason::Stalled).await;
        let polls = self.engine.poll_clock.polls();
        self.engine
            .status
            .left_fleet
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let back = async {
            match rejoin {
                Rejoin::WhenPolled => self.engine.poll_clock.wait_after(polls).await,
                Rejoin::After(pause) => sleep(pause).await,
            }
        };
        tokio::pin!(back);
        let come_back = loop {
            tokio::select! {
                _ = &mut back => break true,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() != Stop::Run {
                        break false;
                    }
                }
            }
        };
        self.engine
            .status
            .left_fleet
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let Some(announced) = (if come_back {
            register(&self.engine, shutdown).await?
        } else {
            None
        }) else {
            return Ok(false);
        };
        info!(rejoin = ?rejoin, "rejoining the fleet");
        self.engine.watchdog.pet(); // waiting for a poll is not being stuck
        self.heartbeat = Some(Heartbeat::start(&self.engine));
        self.leases.clear();
        self.row_read_at.clear();
        self.waiting.clear();
        self.expecting.clear();
        self.backlog.clear();
        self.retry.clear();
        self.last_full = None;
        self.need_full = true;
        self.urgent_full = true;
        self.need_sync = true;
        self.left_to_others.clear();
        self.disagreed = false;
        self.announce_due = !announced;
        Ok(true)
    }

    /// Releases every held shard whose application stalled: a record handed out and not acked
    /// ([`StallKind::RecordNotAcked`]), or a handler call that has not returned
    /// ([`StallKind::HandlerHung`]), for `stall_timeout`. The shard goes to the client the plan
    /// names without us; what is acked is committed first.
    ///
    /// A handler that hangs again within 2 × `stall_timeout` of its last hang says the
    /// application is unhealthy, not one shard: then nothing is released here and `true` asks
    /// the caller to take the client out of the fleet for `stall_timeout` — otherwise the plan
    /// keeps handing it shards (its share), each lost for another `stall_timeout`.
    pub(super) fn release_stalled(&mut self) -> bool {
        let Some(limit) = self.engine.config.stall_timeout else {
            return false;
        };
        let now = Instant::now();
        let handler = matches!(self.engine.delivery, Delivery::Handler(_));
        let mut stalled = Vec::new();
        for (shard, held) in &self.held {
            if *held.ask.borrow() != Ask::Run {
                continue;
            }
            // A call of the application (the handler, a hook) that has not returned, or else
            // (record stream) a record handed out and not acked.
            let call = held.tracker.call_since();
            let (kind, since) = match call {
                Some(call) => (StallKind::HandlerHung, Some(call)),
                None if handler => continue,
                None => (
                    StallKind::RecordNotAcked,
                    held.tracker
                        .oldest_outstanding()
                        .map(|(record, at)| (Some(record), at)),
                ),
            };
            if let Some((record, since)) = since
                && now.saturating_duration_since(since) >= limit
            {
                stalled.push(Stall {
                    kind,
                    shard: Some(shard.clone()),
                    record,
                    stalled_for: now.saturating_duration_since(since),
                    at: now,
                });
            }
        }
        if stalled.is_empty() {
            return false;
        }
        if stalled.iter().any(|s| s.kind == StallKind::HandlerHung) {
            let again = self
                .last_hang
                .is_some_and(|t| now.saturating_duration_since(t) <= limit * 2);
            self.last_hang = Some(now);
            if again {
                for stall in stalled {
                    self.engine.report_stall(stall);
                }
                warn!(
                    pause_s = limit.as_secs_f64(),
                    "the application hung again within 2 × stall_timeout: releasing every lease and leaving the fleet for stall_timeout"
                );
                return true;
            }
        }
        let plan = self.plan_without_me();
        for stall in stalled {
            let Some(shard) = stall.shard.clone() else {
                continue;
            };
            self.engine.report_stall(stall);
            if let Some(held) = self.held.get(&shard) {
                let to = plan.get(&shard).cloned();
                if to.is_some() {
                    let cool_down = self.engine.config.rebalance_interval * 2;
                    self.gave_up.insert(shard.clone(), now + cool_down);
                }
                held.ask.send_replace(Ask::Release {
                    to,
                    reason: EndReason::Stalled,
                });
                self.engine.status.update(&shard, |s| s.releasing = true);
            }
        }
        false
    }
}
