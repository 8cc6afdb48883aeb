//! Reading the store: every lease row or only the few awaited in a handoff, and the client
//! rows — with full reads of the leases paced by how long they take, so a fleet on a slow store
//! backs off instead of queueing behind itself.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;

use super::{
    FULL_READ_PACE, FULL_READ_PACE_CAP, FULL_READ_SAMPLES, WAITING_POLL_CONCURRENCY,
    WAITING_POLL_LIMIT,
};

use super::{Supervisor, fingerprint};
use crate::error::ConsumerError;
use crate::metrics;
use crate::source::ShardId;
use crate::store::{ClientId, CorruptRow, Lease, StoreError};

/// The fleet's periodic safety-net reads of every lease stay under this many rows a second
/// (live clients × rows / interval): 50 s between them at 1,000 shards × 10 clients, 83 min
/// at 10,000 × 100 — every change is announced, so an idle fleet needs none at all.
const SAFETY_ROWS_PER_SEC: u64 = 200;

impl Supervisor {
    /// Reads every client row (dated by when the read was sent and when it came back).
    /// True when the live set changed: a join, a leave, or a death judged on our clock.
    pub(super) async fn read_clients(&mut self) -> Result<bool, ConsumerError> {
        let sent = Instant::now();
        let read = self.store.clients().await?;
        let arrived = Instant::now();
        self.bad_clients.read(&read.corrupt, |_| None);
        self.set_corrupt_gauge();
        let joined_or_left = self.membership.observe(&read.rows, sent, arrived);
        Ok(self.note_alive() || joined_or_left)
    }

    /// Notes the live set after a read; true if it changed.
    pub(super) fn note_alive(&mut self) -> bool {
        let alive = self.membership.alive();
        self.engine
            .labels
            .client_gauge(metrics::LIVE_CLIENTS)
            .set(alive.len() as f64);
        let changed = alive != self.last_alive;
        self.last_alive = alive;
        changed
    }

    /// Whether to read every lease now. At once when the live set changed (the plan did too);
    /// otherwise paced by how long the last read took, so a fleet reading a slow store (many
    /// leases, an emulator, a throttled table) backs off instead of queueing behind itself:
    /// - a wanted read (`need_full`) after `FULL_READ_PACE × live × last read`, not sooner
    ///   than the next membership poll;
    /// - waiting for many handoffs at once (a fleet starting up), one read of every lease is
    ///   cheaper than one read per awaited lease: at the same pace, at most once a second;
    /// - when a decision waits for time to pass: a failed tenure's retry, a stalled shard's
    ///   cool-down, an owner without a row unseen for `lease_ttl`;
    /// - the periodic safety-net read: every `rebalance_interval` in a small fleet, less often
    ///   in a large one, so the fleet's safety-net reads stay under `SAFETY_ROWS_PER_SEC`
    ///   rows a second (every change is announced; this only bounds how long a bug or a lost
    ///   announce could hide one), or at that pace if slower.
    pub(super) fn full_read_due(&self, now: Instant) -> bool {
        let Some(last) = self.last_full else {
            return true;
        };
        if self.urgent_full {
            return true;
        }
        let cfg = &self.engine.config;
        let live = self.last_alive.len().max(1) as u32;
        let pace = full_read_pace(self.typical_full_read(), live, cfg.rebalance_interval);
        let since = now.duration_since(last);
        let many_waiting = self.waiting.len() > WAITING_POLL_LIMIT;
        let unclaimed =
            !self.left_to_others.is_empty() && since >= cfg.membership_poll_interval * 2;
        let rows = (self.leases.len() as u64).max(1);
        let safety = cfg.rebalance_interval.max(Duration::from_secs(
            u64::from(live) * rows / SAFETY_ROWS_PER_SEC,
        ));
        (self.need_full && since >= pace.max(cfg.membership_poll_interval))
            || (unclaimed && since >= pace)
            || (many_waiting && since >= pace.max(Duration::from_secs(1)))
            || (self.recheck_due(last, now) && since >= pace.max(cfg.membership_poll_interval))
            || since >= pace.max(safety)
    }

    /// Whether a decision that waited for time to pass can be taken now, and no read since
    /// then took it: a failed tenure's retry, a stalled shard's cool-down, an owner without a
    /// row whose `lease_ttl` unseen ran out.
    fn recheck_due(&self, last_full: Instant, now: Instant) -> bool {
        let due = |at: Instant| last_full < at && at <= now;
        self.retry.values().any(|(at, _)| due(*at))
            || self.gave_up.values().any(|until| due(*until))
            || self.membership.unseen_until().is_some_and(due)
    }

    /// The median duration of the last few full reads.
    pub(super) fn typical_full_read(&self) -> Duration {
        median(self.full_read_took.iter().copied())
    }

    /// Reads every lease row.
    pub(super) async fn read_leases(&mut self) -> Result<(), ConsumerError> {
        let started = Instant::now();
        let read = self.store.leases(&self.engine.stream).await?;
        let arrived = Instant::now();
        let rows = read.rows;
        if self.full_read_took.len() == FULL_READ_SAMPLES {
            self.full_read_took.pop_front();
        }
        self.full_read_took.push_back(arrived - started);
        self.leases = rows.into_iter().map(|l| (l.shard.clone(), l)).collect();
        let leases = &self.leases;
        self.bad_leases.read(&read.corrupt, |id| {
            leases.get(&ShardId::from(id)).map(fingerprint)
        });
        self.set_corrupt_gauge();
        self.note_owned();
        self.row_read_at = self.leases.keys().map(|s| (s.clone(), arrived)).collect();
        let owners: BTreeSet<ClientId> = self
            .leases
            .values()
            .filter_map(|l| l.owner.clone())
            .collect();
        self.membership.retain_unseen(&owners);
        self.need_full = false;
        self.urgent_full = false;
        Ok(())
    }

    /// How many rows we await between full reads: leases in a handoff, rows to be created.
    pub(super) fn awaited(&self) -> usize {
        self.waiting.len() + self.expecting.len()
    }

    /// Between full reads, reads only the leases we wait for in a handoff and the rows planned
    /// for us that another client is to create (16 at a time), so a graceful handoff completes
    /// within a few `membership_poll_interval`s and a new row is taken as soon as it exists.
    /// Returns the rows read; they are acted on after the next read of the clients.
    pub(super) async fn poll_waiting(&mut self) -> Result<Vec<Lease>, ConsumerError> {
        let (store, stream) = (self.store.clone(), self.engine.stream.clone());
        let awaited: Vec<ShardId> = self.waiting.union(&self.expecting).cloned().collect();
        let reads: Vec<(ShardId, Result<Option<Lease>, StoreError>)> =
            futures::stream::iter(awaited)
                .map(|shard| {
                    let (store, stream) = (store.clone(), stream.clone());
                    async move {
                        let read = store.lease(&stream, &shard).await;
                        (shard, read)
                    }
                })
                .buffered(WAITING_POLL_CONCURRENCY)
                .collect()
                .await;
        let mut rows = Vec::new();
        for (shard, read) in reads {
            match read {
                Ok(Some(lease)) => {
                    if self.expecting.remove(&shard) {
                        self.expected.remove(&shard);
                        self.rows_due.remove(&shard);
                    }
                    self.leases.insert(shard.clone(), lease.clone());
                    self.row_read_at.insert(shard, Instant::now());
                    rows.push(lease);
                }
                // Not created yet: its writer has not got to it.
                Ok(None) if self.expecting.contains(&shard) => {}
                Ok(None) => {
                    self.waiting.remove(&shard);
                    self.need_sync = true;
                }
                // One bad row: set aside, and the others polled as usual.
                Err(StoreError::Corrupt { key, reason }) => {
                    self.waiting.remove(&shard);
                    self.expecting.remove(&shard);
                    self.expected.remove(&shard);
                    self.leases.remove(&shard);
                    self.bad_leases.undecodable(CorruptRow {
                        key,
                        id: Some(shard.to_string()),
                        reason,
                    });
                    self.set_corrupt_gauge();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(rows)
    }

    pub(super) fn set_corrupt_gauge(&self) {
        for (kind, q) in [("lease", &self.bad_leases), ("client", &self.bad_clients)] {
            self.engine
                .labels
                .client_gauge_with(metrics::CORRUPT_ROWS, &[("kind", kind)])
                .set(q.len() as f64);
        }
    }
}

/// How long a wanted full read waits after the last: `FULL_READ_PACE × live × typical`, at most
/// `FULL_READ_PACE_CAP` rebalance intervals (see `FULL_READ_PACE`).
fn full_read_pace(typical: Duration, live: u32, rebalance_interval: Duration) -> Duration {
    (typical * FULL_READ_PACE * live).min(rebalance_interval * FULL_READ_PACE_CAP)
}

/// The median of `took` (the upper one of an even count); zero when empty.
fn median(took: impl Iterator<Item = Duration>) -> Duration {
    let mut took: Vec<Duration> = took.collect();
    took.sort();
    took.get(took.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One read that hung in a partition does not set the pace: the median of the last few does.
    #[test]
    fn a_typical_full_read_is_the_median_so_one_slow_read_does_not_set_the_pace() {
        assert_eq!(median(std::iter::empty()), Duration::ZERO);
        assert_eq!(median([MS * 40].into_iter()), MS * 40);
        assert_eq!(
            median([MS * 50, MS * 60_000, MS * 40, MS * 45, MS * 55].into_iter()),
            MS * 50
        );
        assert_eq!(median([MS * 10, MS * 30].into_iter()), MS * 30);
    }

    /// The README's example: 10 clients reading in 50 ms space their reads 1 s apart; a slow
    /// store backs the fleet off, but never beyond `FULL_READ_PACE_CAP` rebalance intervals.
    #[test]
    fn full_reads_are_paced_by_the_fleet_and_the_store_and_capped() {
        let rebalance = Duration::from_secs(5);
        assert_eq!(
            full_read_pace(MS * 50, 10, rebalance),
            Duration::from_secs(1)
        );
        assert_eq!(full_read_pace(MS * 50, 1, rebalance), MS * 100);
        assert_eq!(
            full_read_pace(Duration::ZERO, 100, rebalance),
            Duration::ZERO
        );
        assert_eq!(
            full_read_pace(Duration::from_secs(10), 50, rebalance),
            rebalance * FULL_READ_PACE_CAP
        );
    }
}
