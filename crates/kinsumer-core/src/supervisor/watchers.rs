//! Watching the fleet cheaply, so that an idle fleet reads a few small rows per poll instead
//! of every row:
//! - the **change counter**: every client moves it on ([`LeaseStore::announce`]) after it
//!   changed who holds what or who is in the fleet — a take, a release, a finish, a lease
//!   created or deleted, a join, a leave, a death it judged. A client that reads the same
//!   value as before knows that nothing it must see changed, and reads nothing else;
//! - **watched liveness**: a death changes nothing anyone announces, so each client watches
//!   the [`WATCHED`] clients after it in the sorted live list (their rows only), judges them
//!   on its own clock exactly as it judges every row it reads (see [`crate::membership`]),
//!   and marks the one it proves dead ([`LeaseStore::mark_dead`], conditional on the value it
//!   saw, so a heartbeat that lands first wins), then announces. Everyone else learns the
//!   death from the mark at its next read of the client rows, sent after the lease rows it
//!   acts on, as always.
//!
//! [`LeaseStore::announce`]: crate::store::LeaseStore::announce
//! [`LeaseStore::mark_dead`]: crate::store::LeaseStore::mark_dead

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Supervisor;
use crate::error::ConsumerError;
use crate::metrics;
use crate::store::{ClientId, CorruptRow, StoreError};

/// How many clients each client watches: the ones after it in the sorted live list. Three,
/// so that up to three clients next to each other in the list may die together and each is
/// still watched by a live one (with more, a death is seen one `lease_ttl` later).
pub(super) const WATCHED: usize = 3;

impl Supervisor {
    /// Reads the change counter; whether it moved since the last read. A counter that does not
    /// decode counts as moved (and the next announce writes it afresh).
    pub(super) async fn changes_moved(&mut self) -> Result<bool, ConsumerError> {
        match self.store.changes().await {
            Ok(value) => {
                let moved = self.changes_seen != Some(value);
                self.changes_seen = Some(value);
                Ok(moved)
            }
            Err(StoreError::Corrupt { key, reason }) => {
                warn!(key = %key, reason = %reason, "the change counter does not decode: reading every row");
                self.changes_seen = None;
                self.announce_due = true;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The clients we watch: the [`WATCHED`] after us in the sorted live list, wrapping
    /// around (fewer when the fleet is smaller).
    pub(super) fn watched(&self) -> Vec<ClientId> {
        successors(&self.now_alive(), &self.engine.me, WATCHED)
    }

    /// Whether the watched rows are due: every other membership poll.
    pub(super) fn watch_due(&self, now: Instant) -> bool {
        self.last_watch.is_none_or(|t| {
            now.duration_since(t) >= self.engine.config.membership_poll_interval * 2
        })
    }

    /// Reads the rows of the clients we watch. True if the live set changed.
    pub(super) async fn watch_clients(&mut self) -> Result<bool, ConsumerError> {
        self.last_watch = Some(Instant::now());
        let mut changed = false;
        for client in self.watched() {
            let sent = Instant::now();
            let row = match self.store.client(&client).await {
                Ok(row) => row,
                // Set aside like a bad row of a full read: the client counts as having no row.
                Err(StoreError::Corrupt { key, reason }) => {
                    self.bad_clients.undecodable(CorruptRow {
                        key,
                        id: Some(client.to_string()),
                        reason,
                    });
                    self.set_corrupt_gauge();
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let arrived = Instant::now();
            changed |= self
                .membership
                .observe_one(&client, row.as_ref(), sent, arrived);
        }
        Ok(self.note_alive() || changed)
    }

    /// Marks the clients we proved dead, so the fleet learns it without watching them; true
    /// if a mark landed (the live set changed).
    pub(super) async fn mark_the_dead(&mut self) -> bool {
        let mut marked = false;
        if self.engine.config.faults.never_mark {
            return false;
        }
        for (client, counter) in self.membership.to_mark() {
            if client == self.engine.me {
                continue;
            }
            match self.store.mark_dead(&client, counter).await {
                Ok(true) => {
                    info!(client = %client, "judged dead: its heartbeats stopped for lease_ttl");
                    self.membership.marked(&client, counter);
                    self.announce_due = true;
                    marked = true;
                }
                // A heartbeat landed since our read: alive after all; the next read shows it.
                Ok(false) => debug!(client = %client, "not marked dead: its row moved on"),
                Err(e) => debug!(client = %client, error = %e, "marking a dead client failed"),
            }
        }
        marked
    }

    /// Moves the change counter on if we changed something the others must see. Our own
    /// announce does not make us read everything again, unless another one came between.
    pub(super) async fn announce_if_due(&mut self) {
        if !self.announce_due {
            return;
        }
        match self.store.announce().await {
            Ok(value) => {
                self.announce_due = false;
                self.engine
                    .labels
                    .client_counter(metrics::ANNOUNCED, &[])
                    .increment(1);
                if self.changes_seen == Some(value.wrapping_sub(1)) {
                    self.changes_seen = Some(value);
                }
            }
            Err(e) => debug!(error = %e, "announcing a change failed; again on the next tick"),
        }
    }

    /// Our plan left free leases to others, and a read of ours two polls or more later still
    /// found them free: the plans disagree (someone planned from rows older than ours).
    /// Announcing makes every client read the rows again and plan alike — at most once a
    /// `rebalance_interval`. (Not on the first sight: a view of ours older than the others'
    /// takes would make a fleet on a slow store announce to itself in a loop.)
    pub(super) fn announce_unclaimed(&mut self, now: Instant) {
        let cfg = &self.engine.config;
        let quiet = self
            .announced_unclaimed
            .is_none_or(|t| now.duration_since(t) >= cfg.rebalance_interval);
        if self.disagreed && quiet {
            self.disagreed = false;
            self.announced_unclaimed = Some(now);
            self.announce_due = true;
        }
    }
}

/// The `k` clients after `me` in `live` (sorted, with `me` in it), wrapping around; fewer when
/// there are not that many others. Every client watches its successors, so every client is
/// watched by its `k` predecessors.
fn successors(live: &[ClientId], me: &ClientId, k: usize) -> Vec<ClientId> {
    let at = live.iter().position(|c| c == me).unwrap_or(0);
    live.iter()
        .cycle()
        .skip(at + 1)
        .take(live.len().saturating_sub(1).min(k))
        .filter(|c| *c != me)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<ClientId> {
        v.iter().map(|s| ClientId::from(*s)).collect()
    }

    /// Each client watches the next three, wrapping around, so each is watched by three.
    #[test]
    fn each_client_watches_the_next_ones_and_is_watched_by_as_many() {
        let live = ids(&["a", "b", "c", "d", "e"]);
        assert_eq!(successors(&live, &"a".into(), 3), ids(&["b", "c", "d"]));
        assert_eq!(successors(&live, &"d".into(), 3), ids(&["e", "a", "b"]));
        for watched in &live {
            let watchers = live
                .iter()
                .filter(|w| successors(&live, w, 3).contains(watched))
                .count();
            assert_eq!(watchers, 3, "{watched} is watched by three");
        }
        // A small fleet: everyone else, never oneself.
        assert_eq!(successors(&ids(&["a", "b"]), &"b".into(), 3), ids(&["a"]));
        assert_eq!(successors(&ids(&["a"]), &"a".into(), 3), ids(&[]));
    }
}
