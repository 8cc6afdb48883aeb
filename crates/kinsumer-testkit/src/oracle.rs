//! Oracles on takeovers: checks that read a run's history — what the store applied, and what
//! the application was handed — and say whether a lease ever moved away from a live client.
//!
//! - [`no_theft`]: a take of client X's lease is legitimate only if X's row was deleted after
//!   its last heartbeat (it deregistered, or was reaped as long dead), or X's heartbeats had
//!   stopped landing in the store for at least the TTL the engine promises. (A release is not
//!   a take from X: the row has no owner then.)
//! - [`no_false_death`]: no client is marked judged dead (`mark_dead`) less than the TTL after
//!   its last heartbeat landed;
//! - [`no_hand_out_after_takeover`]: no record reaches the application from a tenure after
//!   the store's token for that shard moved past it;
//! - [`duplicates_bounded`]: every write of a tenure covers what its application had acked a
//!   call's time before, so a graceful release leaves nothing acked to deliver again, and a
//!   crash only what was acked since the last commit.
//!
//! They work on the histories [`MemoryLeaseStore`](crate::MemoryLeaseStore) keeps, so any
//! test on the memory store can call them; the simulation calls them after every run.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use kinsumer_core::source::ShardId;
//! use kinsumer_core::store::{ClientId, LeaseStore};
//! use kinsumer_testkit::{MemoryLeaseStore, oracle};
//!
//! let store = MemoryLeaseStore::new();
//! let shard = ShardId::from("s-0");
//! let (a, b) = (ClientId::from("a"), ClientId::from("b"));
//! store.create_if_absent("st", &shard, &[]).await?;
//! store.heartbeat(&a, 1).await?;
//! store.take("st", &shard, &a, 0).await?;
//! tokio::time::sleep(Duration::from_secs(3)).await;
//! store.take("st", &shard, &b, 1).await?; // a heartbeated 3 s ago: robbed
//!
//! let ttl = Duration::from_secs(10);
//! let found = oracle::no_theft(&store.history(), &store.client_history(), ttl);
//! assert_eq!(found.len(), 1, "{found:?}");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use kinsumer_core::position::{Checkpoint, Position};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::ClientId;
use tokio::time::Instant;

use crate::memory_store::{ClientEvent, ClientOp, StoreEvent, StoreOp};

/// Which invariant a [`Violation`] broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// A produced record was never delivered and acked.
    EveryRecordAcked,
    /// Within one tenure, a record was delivered at or before the previous one.
    OrderWithinTenure,
    /// A tenure's first record was not the one right after its starting checkpoint.
    NoGap,
    /// A child shard's record was delivered before a parent was finished.
    ParentsFirst,
    /// A write was applied for a tenure that did not hold the lease.
    FencedWrites,
    /// A checkpoint moved backwards.
    CheckpointMonotonic,
    /// At the end, an eligible shard had no live owner, or the load was not balanced.
    Balanced,
    /// The consumer reported an error or did not finish in time.
    Liveness,
    /// A lease was taken from a client whose heartbeats were still landing.
    NoTheft,
    /// A client was marked judged dead while its heartbeats were still landing.
    NoFalseDeath,
    /// A tenure handed out a record after the store's token moved past it.
    NoHandOutAfterTakeover,
    /// A tenure's write did not cover what its application had acked: duplicates beyond the
    /// commit window (or after a graceful release).
    DuplicatesBounded,
}

/// One broken invariant, with what showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which.
    pub invariant: Invariant,
    /// The evidence.
    pub detail: String,
}

/// One delivery the simulated handler saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// When, on the store's event clock (so it orders against store writes).
    pub at: u64,
    /// When, on tokio's clock.
    pub time: Instant,
    /// Who.
    pub client: String,
    /// Which shard.
    pub shard: ShardId,
    /// Under which tenure.
    pub token: u64,
    /// Which record.
    pub position: Position,
}

/// Every take of a lease from a client that was live throughout its tenure: no gap of `ttl`
/// in its heartbeats' landings from the take that gave it the lease until this take, and no
/// deletion of its row since its last heartbeat. `ttl` is the shortest TTL any observer may
/// judge by (its `lease_ttl`, less the clock drift it may have).
///
/// A gap anywhere in the tenure is enough, even one that ended just before this take: a
/// client whose heartbeats stopped landing for `ttl` fenced itself (it stops handing out
/// after `lease_ttl - safety_margin` without a heartbeat of its own) and must take the lease
/// again, under a new token, to go on. Its old tenure is dead, whatever the taker saw.
pub fn no_theft(leases: &[StoreEvent], clients: &[ClientEvent], ttl: Duration) -> Vec<Violation> {
    let mut by_client: BTreeMap<&ClientId, Vec<&ClientEvent>> = BTreeMap::new();
    for e in clients {
        by_client.entry(&e.client).or_default().push(e);
    }
    let takes: Vec<&StoreEvent> = leases.iter().filter(|e| e.op == StoreOp::Take).collect();
    let mut found = Vec::new();
    for (i, take) in takes.iter().enumerate() {
        let Some(before) = &take.before else {
            continue;
        };
        let Some(victim) = &before.owner else {
            continue; // the lease was free
        };
        if take.claimed.as_ref().map(|c| &c.owner) == Some(victim) {
            continue; // a client taking back its own lease
        }
        // When the victim's tenure began: the take that gave it this token.
        let began = takes[..i]
            .iter()
            .rev()
            .find(|t| {
                t.shard == take.shard
                    && t.after.as_ref().is_some_and(|a| {
                        a.token == before.token && a.owner.as_ref() == Some(victim)
                    })
            })
            .map_or(0, |t| t.at);
        let events = by_client.get(victim).map(Vec::as_slice).unwrap_or_default();
        let upto = &events[..events.partition_point(|e| e.at < take.at)];
        if upto.last().is_none_or(|e| e.op == ClientOp::Deregister) {
            continue; // no row ever, or deleted since its last heartbeat
        }
        // Landings from the last one before the tenure began up to this take, then the take.
        let first = upto.partition_point(|e| e.at <= began).saturating_sub(1);
        let mut times: Vec<_> = upto[first..]
            .iter()
            .filter(|e| e.op == ClientOp::Heartbeat)
            .map(|e| e.time)
            .collect();
        times.push(take.time);
        let longest_gap = times
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        if longest_gap < ttl {
            found.push(Violation {
                invariant: Invariant::NoTheft,
                detail: format!(
                    "{:?} took {} (token {}) from {victim}, whose heartbeats never stopped for {ttl:?} in its tenure (longest gap {longest_gap:?})",
                    take.claimed.as_ref().map(|c| &c.owner),
                    take.shard,
                    before.token,
                ),
            });
        }
    }
    found
}

/// Every mark of a client judged dead ([`ClientOp::JudgedDead`]) less than `ttl` after its last
/// heartbeat landed: a watcher must have seen the value stand still for the TTL, and the store
/// writes the mark only while the row still holds that value. (What follows a false mark — a
/// take of the client's leases — is [`no_theft`]'s; this catches the mark itself, taken or not.)
pub fn no_false_death(clients: &[ClientEvent], ttl: Duration) -> Vec<Violation> {
    let mut last_beat = BTreeMap::new();
    let mut found = Vec::new();
    for e in clients {
        match e.op {
            ClientOp::Heartbeat => {
                last_beat.insert(&e.client, e.time);
            }
            ClientOp::Deregister => {
                last_beat.remove(&e.client);
            }
            ClientOp::JudgedDead => {
                let Some(beat) = last_beat.get(&e.client) else {
                    continue;
                };
                let still = e.time.saturating_duration_since(*beat);
                if still < ttl {
                    found.push(Violation {
                        invariant: Invariant::NoFalseDeath,
                        detail: format!(
                            "{} was marked judged dead {still:?} after its last heartbeat landed (less than {ttl:?})",
                            e.client
                        ),
                    });
                }
            }
        }
    }
    found
}

/// Every record handed to the application by a tenure after a take had moved the shard's
/// token past that tenure's.
pub fn no_hand_out_after_takeover(
    leases: &[StoreEvent],
    deliveries: &[Delivery],
) -> Vec<Violation> {
    // Per shard: the takes in store order, with the highest token reached by each.
    let mut takes: BTreeMap<&ShardId, Vec<(u64, u64)>> = BTreeMap::new();
    for e in leases.iter().filter(|e| e.op == StoreOp::Take) {
        if let Some(after) = &e.after {
            let list = takes.entry(&e.shard).or_default();
            let highest = list.last().map_or(0, |(_, t)| *t).max(after.token);
            list.push((e.at, highest));
        }
    }
    let mut found = Vec::new();
    for d in deliveries {
        let Some(list) = takes.get(&d.shard) else {
            continue;
        };
        let before = list.partition_point(|(at, _)| *at < d.at);
        let Some((_, token)) = before.checked_sub(1).map(|i| list[i]) else {
            continue;
        };
        if token > d.token {
            found.push(Violation {
                invariant: Invariant::NoHandOutAfterTakeover,
                detail: format!(
                    "{} handed out {:?} of {} under token {} after the token had moved to {token}",
                    d.client, d.position, d.shard, d.token
                ),
            });
        }
    }
    found
}

/// Every successful write of a tenure — a checkpoint, a release, a finish — covers every record
/// its application had acked `slack` before the write landed (`slack` = the client's
/// `call_timeout`, the longest a write can take from the engine reading its watermark to
/// landing). "Covers": the checkpoint is at or past the highest record up to which all that
/// the tenure handed out was acked.
///
/// This is what bounds duplicates: after a graceful release nothing the application acked is
/// delivered again; after a crash, only what was acked after the tenure's last successful
/// commit — at most `commit_interval` plus a call earlier, while the store was reachable.
pub fn duplicates_bounded(
    leases: &[StoreEvent],
    handed_out: &[Delivery],
    acked: &[Delivery],
    slack: Duration,
) -> Vec<Violation> {
    type Tenure<'a> = (&'a ShardId, u64);
    let mut handed: BTreeMap<Tenure<'_>, Vec<&Delivery>> = BTreeMap::new();
    for d in handed_out {
        handed.entry((&d.shard, d.token)).or_default().push(d);
    }
    let mut first_ack: BTreeMap<(Tenure<'_>, &Position), tokio::time::Instant> = BTreeMap::new();
    for a in acked {
        first_ack
            .entry(((&a.shard, a.token), &a.position))
            .or_insert(a.time);
    }
    let mut found = Vec::new();
    for w in leases {
        if !matches!(
            w.op,
            StoreOp::Checkpoint | StoreOp::Release | StoreOp::Finish
        ) {
            continue;
        }
        let (Some(claimed), Some(after)) = (&w.claimed, &w.after) else {
            continue;
        };
        // A release that left the checkpoint as it was claims nothing about the watermark: the
        // engine hands back a lease no tenure of it ran (after a fence dropped the tenure
        // without a write, as after a crash) that way.
        let kept = w.before.as_ref().map(|b| &b.checkpoint) == Some(&after.checkpoint);
        if w.op == StoreOp::Release && kept {
            continue;
        }
        let key = (&w.shard, claimed.token);
        let Some(records) = handed.get(&key) else {
            continue;
        };
        // The highest record up to which everything handed out was acked by then.
        let by = w.time.checked_sub(slack);
        let mut covered: Option<&Position> = None;
        for d in records {
            let acked_then = first_ack
                .get(&(key, &d.position))
                .zip(by)
                .is_some_and(|(at, by)| *at <= by);
            if !acked_then {
                break;
            }
            covered = Some(&d.position);
        }
        let Some(needed) = covered else {
            continue;
        };
        let ok = match &after.checkpoint {
            Some(Checkpoint::ShardEnd) => true,
            Some(Checkpoint::After(p)) => p >= needed,
            _ => false,
        };
        if !ok {
            found.push(Violation {
                invariant: Invariant::DuplicatesBounded,
                detail: format!(
                    "{:?} of {} by tenure #{} wrote {:?}, but everything up to {needed:?} had been acked {slack:?} before",
                    w.op, w.shard, claimed.token, after.checkpoint
                ),
            });
        }
    }
    found
}
