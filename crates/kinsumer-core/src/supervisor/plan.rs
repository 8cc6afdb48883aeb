//! Acting on a read: the shared plan over the live clients, which leases are ours to take or
//! wait for, which to hand off and to whom, and the takes themselves, a burst per tick.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::TAKES_PER_TICK;
use super::{Supervisor, Tenures, fingerprint, with_me};
use crate::assignment::assign;
use crate::engine::report_vanished;
use crate::lifecycle::EndReason;
use crate::metrics;
use crate::source::ShardId;
use crate::store::{ClientId, CorruptRow, Lease, StoreError, Tenure};
use crate::tenure::Ask;

impl Supervisor {
    /// The shared assignment of `eligible` over `live`, sticky to the owners in the last read.
    pub(super) fn plan(
        &self,
        live: &[ClientId],
        eligible: &[ShardId],
    ) -> BTreeMap<ShardId, ClientId> {
        if self.engine.config.faults.greedy {
            let me = &self.engine.me;
            return eligible.iter().map(|s| (s.clone(), me.clone())).collect();
        }
        let current: BTreeMap<ShardId, ClientId> = eligible
            .iter()
            .filter_map(|s| {
                let owner = self.leases.get(s)?.owner.clone()?;
                live.contains(&owner).then(|| (s.clone(), owner))
            })
            .collect();
        assign(live, eligible, &current)
    }

    /// Whether `shard` is owned by another client, or free after we saw one own it.
    pub(super) fn handed_off(&self, shard: &ShardId) -> bool {
        self.leases.get(shard).is_some_and(|l| match &l.owner {
            Some(owner) => *owner != self.engine.me,
            None => self.seen_owned.contains(shard),
        })
    }

    /// Remembers the leases the rows show owned by another client (see `seen_owned`).
    pub(super) fn note_owned(&mut self) {
        let me = &self.engine.me;
        let owned = self
            .leases
            .values()
            .filter(|l| l.owner.as_ref().is_some_and(|o| o != me))
            .map(|l| l.shard.clone());
        self.seen_owned.extend(owned);
        let rows = &self.leases;
        self.seen_owned.retain(|s| rows.contains_key(s));
    }

    /// Whether a parent stands in the way of its child: unfinished, or without a row while
    /// the stream still lists it (or before we have a listing).
    pub(super) fn parent_pending(&self, parent: &ShardId) -> bool {
        // A parent whose row is set aside has no provable end, whether or not it is listed.
        if self.bad_leases.holds(parent.as_str()) {
            return true;
        }
        match self.leases.get(parent) {
            Some(row) => !row.finished,
            None => self.listed.as_ref().is_none_or(|l| l.contains(parent)),
        }
    }

    /// The shards that may be read now, from the rows of the last full read: unfinished, and
    /// every parent finished (or gone from the stream). With them, the rows another client is
    /// to create (`expected`): a fleet starting on a new table plans over the whole stream
    /// from its first sync, so each client's quota is its share of the stream, not of the
    /// rows it happens to have seen — and the rows planned for it are taken as they appear.
    pub(super) fn eligible(&self) -> Vec<ShardId> {
        let faults = &self.engine.config.faults;
        let ready = |parents: &[ShardId]| {
            faults.ignore_parents || !parents.iter().any(|p| self.parent_pending(p))
        };
        let rows = self
            .leases
            .values()
            .filter(|l| !l.finished && !self.bad_leases.holds(l.shard.as_str()))
            .filter(|l| ready(&l.parents))
            .map(|l| l.shard.clone());
        let expected = self
            .expected
            .iter()
            .filter(|(s, parents)| {
                !self.leases.contains_key(*s)
                    && !self.bad_leases.holds(s.as_str())
                    && ready(parents)
            })
            .map(|(s, _)| s.clone());
        let mut all: Vec<ShardId> = rows.chain(expected).collect();
        all.sort();
        all
    }

    /// Computes the shared assignment from the rows of the last full read and acts on it.
    pub(super) async fn rebalance(&mut self, tasks: &mut Tenures) {
        let me = self.engine.me.clone();
        if self.fenced() {
            return;
        }
        self.reap_dead_clients().await;
        let live = self.now_alive();
        let eligible = self.eligible();
        let plan = self.plan(&live, &eligible);
        // In our first `lease_ttl`, a row that was there at our first read and has not changed
        // since is alive for lack of evidence either way — a client that crashed just before
        // we started looks like that, and the rest of the fleet, which watched it die, plans
        // without it and hands us leases our own plan gives to the dead. A handoff must not
        // wait for our view to catch up, so we also plan over the clients we have evidence
        // about (just us, before any heartbeat moved): we wait for, and take once released,
        // what either plan gives us, and hand off only what neither does. The second plan never
        // takes a lease nobody handed off (a fleet starting together would grab everything),
        // and never judges anyone dead sooner.
        let with_evidence = with_me(self.membership.alive_with_evidence(), &me);
        let alternative = (with_evidence != live && !self.engine.config.faults.single_plan)
            .then(|| self.plan(&with_evidence, &eligible));
        let planned = |shard: &ShardId| plan.get(shard) == Some(&me);
        let also_planned = |shard: &ShardId| {
            alternative
                .as_ref()
                .is_some_and(|p| p.get(shard) == Some(&me))
        };
        // A lease released to us by name is ours whatever our plans say: its last owner's view
        // is newer than ours about the client it left (see `Lease::successor`).
        let named_to_me: BTreeSet<ShardId> = self
            .leases
            .values()
            .filter(|l| l.owner.is_none() && !l.finished && l.successor.as_ref() == Some(&me))
            .map(|l| l.shard.clone())
            .collect();
        let named = |shard: &ShardId| named_to_me.contains(shard);
        let mine = |shard: &ShardId| planned(shard) || also_planned(shard) || named(shard);
        // Whom we hand a lease to: while we count rows we have no evidence about, the plan over
        // the clients we do (its choice is alive, as far as anyone can tell), else our plan.
        let successor = |shard: &ShardId| {
            alternative
                .as_ref()
                .and_then(|p| p.get(shard))
                .or_else(|| plan.get(shard))
                .cloned()
        };
        let unclaimed: BTreeSet<ShardId> = eligible
            .iter()
            .filter(|s| {
                !mine(s)
                    && self
                        .leases
                        .get(*s)
                        .is_some_and(|l| l.owner.is_none() && !l.finished)
            })
            .cloned()
            .collect();
        // Still free at this read, two polls or more after the read that first left them to
        // others: the others do not plan them for themselves.
        let now = Instant::now();
        let patience = self.engine.config.membership_poll_interval * 2;
        let since: BTreeMap<ShardId, Instant> = unclaimed
            .into_iter()
            .map(|s| {
                let first = self.left_to_others.get(&s).copied().unwrap_or(now);
                (s, first)
            })
            .collect();
        self.disagreed = since.values().any(|t| now.duration_since(*t) >= patience);
        self.left_to_others = since;
        // What to take (or wait for), in shard order.
        let wanted: Vec<ShardId> = eligible
            .iter()
            .filter(|s| planned(s) || (also_planned(s) && self.handed_off(s)) || named(s))
            .cloned()
            .collect();

        // Tenures the store says are no longer ours end now, without another write.
        let lost: Vec<ShardId> = self
            .held
            .iter()
            .filter(|(s, h)| {
                self.leases
                    .get(*s)
                    .is_none_or(|l| l.owner.as_ref() != Some(&me) || l.token != h.tenure.token)
            })
            .map(|(s, _)| s.clone())
            .collect();
        for shard in lost {
            if self.bad_leases.holds(shard.as_str()) {
                warn!(shard = %shard, "our lease's row can no longer be used: stopping its tenure without another write");
            } else if !self.leases.contains_key(&shard) {
                report_vanished(&self.engine, &shard);
            } else {
                info!(shard = %shard, "lease taken over by another client");
            }
            self.engine
                .labels
                .client_counter(metrics::LEASES_LOST, &[])
                .increment(1);
            self.drop_held(&shard);
        }
        // Hand off what is now assigned elsewhere.
        for (shard, held) in &self.held {
            if !mine(shard) && *held.ask.borrow() == Ask::Run {
                let to = successor(shard);
                info!(shard = %shard, to = ?to, "handing off");
                held.ask.send_replace(Ask::Release {
                    to,
                    reason: EndReason::HandedOff,
                });
                self.engine.status.update(shard, |s| s.releasing = true);
            }
        }
        // Leases the store says are ours but no tenure runs (after a self-fence, an ambiguous
        // take, or a restart under the same id): `consider` below takes back those planned for
        // us; the others are handed back at once, or their new owner would wait for a handoff
        // that never comes.
        let stale: Vec<(Tenure, Option<ClientId>)> = self
            .leases
            .values()
            .filter(|l| !l.finished && !self.held.contains_key(&l.shard))
            .filter(|l| l.owner.as_ref() == Some(&me) && !mine(&l.shard))
            // Set aside while ours: keep it, or every client would try and fail in turn.
            .filter(|l| !self.bad_leases.holds(l.shard.as_str()))
            .filter_map(|l| Some((l.tenure()?, successor(&l.shard))))
            .collect();
        for (tenure, to) in stale {
            let to = to.filter(|_| !self.engine.config.faults.anonymous_release);
            match self
                .engine
                .store
                .release(&self.engine.stream, &tenure, None, to.as_ref())
                .await
            {
                Ok(()) => {
                    info!(tenure = %tenure, "released a lease no tenure of ours was running");
                    self.announce_due = true;
                }
                // Lost to another client: expected. Anything else is said.
                Err(StoreError::LeaseLost { .. }) => {
                    debug!(tenure = %tenure, "a stale lease was taken meanwhile")
                }
                Err(e) => warn!(tenure = %tenure, error = %e, "releasing a stale lease failed"),
            }
        }
        // Take what is ours, a burst per tick (see `take_backlog`); what has no row yet, as
        // soon as its writer creates it.
        self.waiting.clear();
        self.expecting = wanted
            .iter()
            .filter(|s| !self.leases.contains_key(*s))
            .cloned()
            .collect();
        self.backlog = wanted
            .into_iter()
            .filter(|s| !self.held.contains_key(s))
            .rev() // popped from the back: taken in shard order
            .collect();
        self.take_backlog(tasks).await;
    }

    /// Carries out the plan of the last full read. Takes go one by one, so a slow store makes a
    /// long plan slow to carry out: a burst of takes per tick, so the live set is re-checked
    /// between bursts (a change re-plans from a fresh read). Each take is conditional on the
    /// token read, so a plan gone stale cannot take what another client took meanwhile: the
    /// first lost race drops the rest of the plan until the next full read.
    pub(super) async fn take_backlog(&mut self, tasks: &mut Tenures) {
        let started = Instant::now();
        let budget = self.engine.config.membership_poll_interval * 5;
        let mut done = 0;
        while let Some(shard) = self.backlog.pop() {
            if self.held.contains_key(&shard) {
                continue;
            }
            let Some(lease) = self.leases.get(&shard).cloned() else {
                continue;
            };
            if !self.consider(lease, tasks).await {
                self.backlog.clear();
            }
            // Only takes count: a lease still held by its owner is merely awaited (no call), and
            // counting those would leave a joiner awaiting its whole share (in shard order)
            // without reaching the leases already released to it.
            if !self.waiting.contains(&shard) {
                done += 1;
            }
            if done >= TAKES_PER_TICK || started.elapsed() >= budget {
                break;
            }
        }
    }

    /// Deletes the rows of clients dead for three lease TTLs, so crashed clients do not linger
    /// as ghosts that every newcomer counts as alive for its first TTL. Safe even if the client
    /// was only paused: its next heartbeat re-creates the row.
    pub(super) async fn reap_dead_clients(&mut self) {
        let long_dead = self.engine.config.lease_ttl * 3;
        for (client, age) in self.membership.ages() {
            if age >= long_dead && client != self.engine.me {
                match self.store.deregister(&client).await {
                    Ok(()) => info!(client = %client, "removed the row of a long-dead client"),
                    Err(e) => {
                        debug!(client = %client, error = %e, "removing a dead client's row failed")
                    }
                }
            }
        }
    }

    /// Whether the owner of `lease` is dead, by a read of the clients sent after the row was
    /// read. With only older evidence, no: the owner may have heartbeated and written this
    /// very row since.
    pub(super) fn owner_is_dead(&mut self, lease: &Lease, owner: &ClientId) -> bool {
        let row_read = self.row_read_at.get(&lease.shard).copied();
        let fresh = match (row_read, self.membership.sent_for(owner)) {
            (Some(row), Some(clients)) => clients >= row,
            _ => false,
        };
        fresh && self.membership.owner_is_dead(owner)
    }

    /// Takes `lease` if it is free, its owner is dead, or it is already ours; otherwise waits.
    /// False when the take showed our view of the leases to be stale (or the store failing).
    pub(super) async fn consider(&mut self, lease: Lease, tasks: &mut Tenures) -> bool {
        let me = &self.engine.me.clone();
        let now = Instant::now();
        let free = match &lease.owner {
            None => true,
            Some(owner) => owner == me || self.owner_is_dead(&lease, owner),
        };
        if !free {
            self.waiting.insert(lease.shard.clone());
            return true;
        }
        self.waiting.remove(&lease.shard);
        self.gave_up.retain(|_, until| *until > now);
        let given_up = lease.owner.is_none()
            && lease.successor.as_ref() != Some(me)
            && self.gave_up.contains_key(&lease.shard);
        if lease.finished
            || given_up
            || self
                .retry
                .get(&lease.shard)
                .is_some_and(|(at, _)| *at > now)
        {
            return true;
        }
        if self.fenced() {
            return false;
        }
        let store = &self.store;
        match store
            .take(&self.engine.stream, &lease.shard, me, lease.token)
            .await
        {
            Ok(taken) => {
                self.start_tenure(taken, lease.owner.as_ref(), tasks);
                return true;
            }
            Err(StoreError::LeaseLost { .. }) => self.need_full = true,
            Err(StoreError::NotFound { .. }) => self.need_sync = true,
            // The store cannot take this row as it is (it changed into something that does not
            // decode, or its token cannot grow): set it aside until it changes, and go on
            // with the rest of the plan.
            Err(StoreError::Corrupt { key, reason }) => {
                let row = CorruptRow {
                    key,
                    id: Some(lease.shard.to_string()),
                    reason,
                };
                if lease.token_exhausted() {
                    // It decodes, but no take can move its token: aside until it changes.
                    self.bad_leases
                        .refused(lease.shard.as_str(), fingerprint(&lease), row);
                } else {
                    // It no longer decodes (written since our read): aside until a read of
                    // every row decodes it again — even back to the very row we read.
                    self.bad_leases.undecodable(row);
                }
                self.set_corrupt_gauge();
                return true;
            }
            Err(StoreError::Fatal(m)) => {
                self.fatal = Some(StoreError::Fatal(m).into());
            }
            // An ambiguous take may have succeeded: the next full read shows us as owner,
            // and we take it again from there (the token moves on, fencing the first).
            Err(e) => {
                warn!(shard = %lease.shard, error = %e, "take failed; reading the leases again");
                self.need_full = true;
            }
        }
        false
    }

    /// The plan over the live clients without us: whom each lease goes to when we let it go.
    pub(super) fn plan_without_me(&self) -> BTreeMap<ShardId, ClientId> {
        let me = &self.engine.me;
        let others: Vec<ClientId> = self
            .membership
            .alive()
            .into_iter()
            .filter(|c| c != me)
            .collect();
        self.plan(&others, &self.eligible())
    }
}
