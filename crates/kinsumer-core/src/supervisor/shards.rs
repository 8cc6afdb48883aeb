//! The stream's shards against the lease rows: a row is created for every new shard (parents
//! first) and deleted once its shard, finished, has left the stream — each row written by one
//! client, not by the whole fleet.
//!
//! Every client compares the listing with its last full read, so without a rule every client
//! would write every missing row: a fleet starting on a new table would make live clients ×
//! shards conditional writes (a million at 10,000 shards × 100 clients, about 20,000 a second
//! against a new DynamoDB table's 4,000) and take its first lease only once one client got
//! through all of them. So when more than a few rows are due, each is written by the live
//! client that ranks highest for it (`rank(shard, client)`, the assignment's own hash, over the
//! live set with us in it): each client writes its share and announces. Meanwhile every client
//! plans over the whole listing — the rows due included (`expected`) — so its quota is its
//! share of the stream from the first sync, and it reads the due rows its plan gives it one by
//! one whenever the change counter moves, taking each as soon as it exists: a fleet balances
//! within a few polls, not at the pace of full reads (20 s and more on a slow store). A row
//! nobody wrote — its writer died, or two clients saw
//! different live sets — is written by any client that saw it due for two `rebalance_interval`s.
//! A few rows (a split, a merge) are written by whoever sees them first, as quickly as before.
//!
//! The sync runs after a tick's reads, so it compares the listing with rows read just before
//! it (a row created since is created again harmlessly: `create_if_absent`; a finished row
//! stays finished), and plans its writes over a live set that includes every client registered
//! before that read.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;
use tracing::{debug, warn};

use super::Supervisor;
use crate::assignment::rank;
use crate::error::ConsumerError;
use crate::source::ShardId;
use crate::store::StoreError;

/// Up to this many rows due at one sync are written by whoever sees them, without waiting for
/// the client that ranks highest: a split or a merge is written at once.
const WRITE_ALONE_UP_TO: usize = 16;

impl Supervisor {
    /// Whether to sync now: asked for (a shard ended, an awaited row vanished), every
    /// `shard_sync_interval`, and after every full read while rows are still due (written by
    /// others, or waiting for their parents' rows).
    pub(super) fn sync_due(&self, now: Instant, full: bool) -> bool {
        self.last_full.is_some()
            && (self.need_sync
                || (full && !self.rows_due.is_empty())
                || self.last_sync.is_none_or(|t| {
                    now.duration_since(t) >= self.engine.config.shard_sync_interval
                }))
    }

    /// Creates the rows of new shards (parents first) and deletes the finished rows of shards
    /// that left the stream — the ones that are ours to write — against the rows of our last
    /// full read, updating them. Announces what it wrote.
    pub(super) async fn sync_shards(&mut self, now: Instant) -> Result<(), ConsumerError> {
        let store = self.store.clone();
        let stream = self.engine.stream.clone();
        let stream = &*stream;
        // Leases first, then the listing: "gone from the stream" is judged from a listing made
        // after the row was read. The other way round, a slow read could return a child's
        // finished row while the listing predates the child — and delete it, so the child
        // would be created again and read again from its start.
        let shards = self.source.list_shards().await?;
        let listed: BTreeSet<ShardId> = shards.iter().map(|s| s.id.clone()).collect();
        self.listed = Some(listed.clone());
        // A row that does not decode exists all the same: never created again over it.
        let mut exists: BTreeSet<ShardId> = self.leases.keys().cloned().collect();
        exists.extend(self.bad_leases.undecodable_ids().map(ShardId::from));
        let gone: Vec<ShardId> = self
            .leases
            .values()
            .filter(|l| l.finished && !listed.contains(&l.shard))
            .map(|l| l.shard.clone())
            .collect();
        let due: BTreeSet<ShardId> = shards
            .iter()
            .map(|s| s.id.clone())
            .filter(|s| !exists.contains(s))
            .chain(gone.iter().cloned())
            .collect();
        let alone = due.len() <= WRITE_ALONE_UP_TO;
        let live = self.now_alive();
        let me = self.engine.me.clone();
        let grace = self.engine.config.rebalance_interval * 2;
        let ours = |shard: &ShardId, due_since: &BTreeMap<ShardId, Instant>| {
            alone
                || live
                    .iter()
                    .map(|c| (rank(shard, c), c))
                    .max()
                    .map(|(_, c)| c)
                    == Some(&me)
                || due_since
                    .get(shard)
                    .is_some_and(|since| now.duration_since(*since) >= grace)
        };
        let mut changed = false;
        let mut expected = BTreeMap::new();
        // Parents before children, so a child's lease never exists without its parents'.
        let mut pending: Vec<_> = shards.iter().filter(|s| !exists.contains(&s.id)).collect();
        pending.sort_by(|a, b| a.id.cmp(&b.id));
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for shard in pending {
                let parents_ready = shard
                    .parents
                    .iter()
                    .all(|p| exists.contains(p) || !listed.contains(p));
                if !parents_ready {
                    rest.push(shard);
                    continue;
                }
                if !ours(&shard.id, &self.rows_due) {
                    // Another client's to write (its children wait for it); planned meanwhile.
                    expected.insert(shard.id.clone(), shard.parents.clone());
                    continue;
                }
                match store
                    .create_if_absent(stream, &shard.id, &shard.parents)
                    .await
                {
                    Ok(row) => {
                        debug!(shard = %shard.id, "lease created");
                        // Planned with the rows just read: taken at this tick's plan if ours.
                        self.row_read_at.insert(shard.id.clone(), Instant::now());
                        self.leases.insert(shard.id.clone(), row);
                        changed = true;
                    }
                    // It exists (written since our read) but does not decode: set aside
                    // by the next read of the leases; the other shards go on.
                    Err(StoreError::Corrupt { key, reason }) => {
                        warn!(shard = %shard.id, key = %key, reason = %reason, "a new shard's lease row exists but does not decode");
                    }
                    Err(e) => return Err(e.into()),
                }
                exists.insert(shard.id.clone());
            }
            if rest.len() == before {
                break; // a parent cycle cannot happen in Kinesis; never loop forever on it
            }
            pending = rest;
        }
        for shard in gone {
            if ours(&shard, &self.rows_due) {
                store.delete_finished(stream, &shard).await?;
                self.leases.remove(&shard);
                self.row_read_at.remove(&shard);
                exists.remove(&shard);
                changed = true;
                debug!(shard = %shard, "finished lease of a shard gone from the stream deleted");
            }
        }
        // Still due: a listed shard without a row, a gone shard's row. Dated by the first sync
        // that saw them due, for the fallback above.
        let still_due: BTreeSet<&ShardId> = due
            .iter()
            .filter(|s| listed.contains(*s) != exists.contains(*s))
            .collect();
        self.rows_due.retain(|s, _| still_due.contains(s));
        self.expected = expected;
        for shard in still_due {
            self.rows_due.entry(shard.clone()).or_insert(now);
        }
        self.announce_due |= changed;
        Ok(())
    }
}
