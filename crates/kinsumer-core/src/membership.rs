//! Who is alive, judged by observed heartbeat counters on this client's own monotonic clock.
//!
//! Each client bumps a counter in its row; an observer records *when it saw the counter
//! change*, by its own clock. A client is dead once its counter has stood still for `lease_ttl`
//! by the observer's clock — the hosts' wall clocks never enter into it, so clock skew between
//! hosts cannot make a live client look dead. A newly seen client counts as just changed, so a
//! client that just started waits one `lease_ttl` before declaring anyone dead.
//!
//! **Evidence, never inference from delay.** A read of the rows is a snapshot taken at some
//! unknown moment between sending the request and seeing the reply. So each read is dated
//! twice, and always in the direction that makes others look *more* alive:
//! - a counter value counts as seen from the *arrival* of the first reply that showed it (it
//!   may have been there long before, but that we cannot prove);
//! - a counter still unchanged counts as unchanged up to the *send* time of the latest read
//!   that showed it (a reply that took 9 s to reach us says nothing about those 9 s).
//!
//! A client is dead only if the proven stillness — latest send minus first arrival — reaches
//! `lease_ttl`. An observer that could not read for a while (paused, partitioned, starved)
//! therefore never concludes from its own silence or from a late reply that others died.
//!
//! A lease owner with **no row** in the reads (it may have registered after our read and
//! taken the lease since, or restarted under the same id) is judged the same way: dead only
//! once reads sent over `lease_ttl` all lacked it. The first read that shows it again clears
//! that judgement.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use kinsumer_core::membership::Membership;
//! use kinsumer_core::store::{ClientId, ClientRow};
//!
//! let ttl = Duration::from_secs(10);
//! let mut m = Membership::new(ttl);
//! let t0 = Instant::now();
//! let s = Duration::from_secs;
//! let row = |n| vec![ClientRow::new(ClientId::from("a"), n)];
//! m.observe(&row(1), t0, t0);
//! m.observe(&row(1), t0 + s(9), t0 + s(9));
//! assert!(m.is_alive(&ClientId::from("a")));
//! // Sent at 10 s: a's counter stood still from 0 s to 10 s. Dead.
//! m.observe(&row(1), t0 + s(10), t0 + s(10));
//! assert!(!m.is_alive(&ClientId::from("a")));
//!
//! // A reply sent at 1 s that reached us at 20 s proves stillness only up to 1 s.
//! let mut late = Membership::new(ttl);
//! late.observe(&row(1), t0, t0);
//! late.observe(&row(1), t0 + s(1), t0 + s(20));
//! assert!(late.is_alive(&ClientId::from("a")));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{ClientId, ClientRow};

/// The heartbeat values one client writes: a random 31-bit incarnation above a 32-bit
/// sequence, so no value repeats — not within a run, and (but for a 2⁻³¹ draw) not across
/// restarts under the same client id — and every value is in `1..=i64::MAX`, as the store
/// contract asks. With a counter that restarted at 1, a client
/// that left and came back could count up to the very value an observer last saw, and look
/// as if it had never moved: still for minutes, so dead, while it was alive.
///
/// ```
/// use kinsumer_core::membership::Beats;
///
/// let mut beats = Beats::new(7);
/// let (a, b) = (beats.next_beat(), beats.next_beat());
/// assert_ne!(a, b);
/// assert_eq!(a >> 32, 7);
/// assert!(Beats::new(u32::MAX).next_beat() <= i64::MAX as u64);
/// ```
#[derive(Clone, Debug)]
pub struct Beats {
    incarnation: u32,
    seq: u32,
}

impl Beats {
    /// The beats of the incarnation `incarnation` (draw it at random on every start; its top
    /// bit is dropped).
    pub fn new(incarnation: u32) -> Self {
        Self {
            incarnation: incarnation & 0x7FFF_FFFF,
            seq: 0,
        }
    }

    /// The next value to write.
    pub fn next_beat(&mut self) -> u64 {
        // 2³² beats are 272 years at one per 2 s; wrapping would need longer than that.
        self.seq = self.seq.wrapping_add(1).max(1);
        (u64::from(self.incarnation) << 32) | u64::from(self.seq)
    }
}

/// The last counter seen for a client and when (on our clock) we first saw it.
#[derive(Clone, Debug)]
struct Seen {
    counter: u64,
    /// The arrival of the first reply that showed this counter.
    changed_at: Instant,
    /// The sending of the latest read that showed this counter: it stood still at least
    /// until then. Per client, because a watcher reads a few rows more often than all.
    sent: Instant,
    /// A watcher judged the client dead at this counter ([`ClientRow::is_judged_dead`]).
    judged: bool,
    /// We have evidence the client lived while we watched: its row appeared after our first
    /// read (a registration), or its value changed. A row already there at our first read and
    /// never seen to change may belong to a client that died before we started.
    evidence: bool,
}

/// `row` seen again (or for the first time, `previous` being `None`) in a read `sent` and
/// `arrived`; `evidence` says whether a row new to us proves a registration we watched.
fn seen_again(
    previous: Option<Seen>,
    row: &ClientRow,
    sent: Instant,
    arrived: Instant,
    evidence: bool,
) -> Seen {
    let judged = row.is_judged_dead();
    match previous {
        Some(s) if s.counter == row.counter => Seen {
            // Reads are sequential; never let a reordered one move the evidence backwards.
            sent: s.sent.max(sent),
            judged,
            ..s
        },
        previous => Seen {
            counter: row.counter,
            changed_at: arrived,
            sent,
            judged,
            evidence: previous.is_some() || evidence,
        },
    }
}

/// Liveness of every client, as this observer sees it.
#[derive(Clone, Debug)]
pub struct Membership {
    ttl: Duration,
    seen: BTreeMap<ClientId, Seen>,
    /// When the latest read was sent: what it shows held at least until then.
    sent_at: Option<Instant>,
    /// When the latest read's reply arrived.
    arrived_at: Option<Instant>,
    /// Lease owners asked about while they had no row, and since when (the arrival of the
    /// read that first lacked them, as far as we were asked). Cleared when a read shows them.
    unseen: BTreeMap<ClientId, Instant>,
    /// How many reads we observed.
    reads: u64,
}

impl Membership {
    /// An observer that calls a client dead after `ttl` without a counter change.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            seen: BTreeMap::new(),
            sent_at: None,
            arrived_at: None,
            unseen: BTreeMap::new(),
            reads: 0,
        }
    }

    /// Records a read of every client row, `sent` when the request left and `arrived` when
    /// the reply was seen. Rows that vanished (deregistered clients) are forgotten. Returns
    /// `true` if the set of clients changed.
    pub fn observe(&mut self, rows: &[ClientRow], sent: Instant, arrived: Instant) -> bool {
        // Reads are sequential; never let a reordered one move the evidence backwards.
        self.sent_at = Some(self.sent_at.map_or(sent, |s| s.max(sent)));
        self.arrived_at = Some(self.arrived_at.map_or(arrived, |a| a.max(arrived)));
        let first_read = self.reads == 0;
        self.reads += 1;
        let before: Vec<ClientId> = self.seen.keys().cloned().collect();
        let mut next = BTreeMap::new();
        for row in rows {
            self.unseen.remove(&row.id);
            let previous = self.seen.remove(&row.id);
            next.insert(
                row.id.clone(),
                seen_again(previous, row, sent, arrived, !first_read),
            );
        }
        self.seen = next;
        !self.seen.keys().eq(before.iter())
    }

    /// Records a read of one client's row (`None`: it has none), as [`Membership::observe`]
    /// does for every row: what a watcher reads of the few clients it watches between reads
    /// of all. Returns `true` if the set of clients changed (the row appeared or vanished).
    pub fn observe_one(
        &mut self,
        client: &ClientId,
        row: Option<&ClientRow>,
        sent: Instant,
        arrived: Instant,
    ) -> bool {
        let Some(row) = row else {
            return self.seen.remove(client).is_some();
        };
        self.unseen.remove(client);
        let previous = self.seen.remove(client);
        let appeared = previous.is_none();
        let seen = seen_again(previous, row, sent, arrived, self.reads > 0);
        self.seen.insert(client.clone(), seen);
        appeared
    }

    /// The clients this observer has proven dead — still for `ttl` — that no watcher has
    /// marked yet, with the value they stood still at: what to [`mark`] so that the rest of
    /// the fleet, which does not watch them, learns it.
    ///
    /// [`mark`]: crate::store::LeaseStore::mark_dead
    pub fn to_mark(&self) -> Vec<(ClientId, u64)> {
        self.seen
            .iter()
            .filter(|(_, s)| !s.judged && self.still_for(s) >= self.ttl)
            .map(|(c, s)| (c.clone(), s.counter))
            .collect()
    }

    /// Notes that `client` was marked judged dead at `counter` (our own mark landed).
    pub fn marked(&mut self, client: &ClientId, counter: u64) {
        if let Some(seen) = self.seen.get_mut(client).filter(|s| s.counter == counter) {
            seen.judged = true;
        }
    }

    /// When the latest read that showed `client`'s row was sent — or, for a client without
    /// a row, the latest read of every row: a decision about a lease `client` owns may rest
    /// on it only if the lease row was read before.
    pub fn sent_for(&self, client: &ClientId) -> Option<Instant> {
        match self.seen.get(client) {
            Some(seen) => Some(seen.sent),
            None => self.sent_at,
        }
    }

    /// How long `seen`'s counter is proven to have stood still, as of the latest read of it.
    fn still_for(&self, seen: &Seen) -> Duration {
        seen.sent.saturating_duration_since(seen.changed_at)
    }

    /// Whether `client` is alive: its row exists, no watcher judged it dead at its value, and
    /// its counter was not seen standing still for `ttl`.
    pub fn is_alive(&self, client: &ClientId) -> bool {
        self.seen
            .get(client)
            .is_some_and(|s| !s.judged && self.still_for(s) < self.ttl)
    }

    /// Whether `client` had a row at the last read (alive or not).
    pub fn knows(&self, client: &ClientId) -> bool {
        self.seen.contains_key(client)
    }

    /// Whether the owner of a lease is dead by the evidence of the reads so far: a known
    /// client whose counter stood still for `ttl`, or a client without a row in every read
    /// sent over `ttl` since we were first asked about it. (The first question about a client
    /// without a row starts its clock; asking again does not restart it.)
    pub fn owner_is_dead(&mut self, owner: &ClientId) -> bool {
        if let Some(seen) = self.seen.get(owner) {
            return seen.judged || self.still_for(seen) >= self.ttl;
        }
        let Some(arrived) = self.arrived_at else {
            return false;
        };
        let since = *self.unseen.entry(owner.clone()).or_insert(arrived);
        self.sent_at
            .is_some_and(|sent| sent.saturating_duration_since(since) >= self.ttl)
    }

    /// When the first row-less owner we were asked about has been unseen for `ttl` (a read
    /// of every row sent after then decides it).
    pub fn unseen_until(&self) -> Option<Instant> {
        self.unseen.values().min().map(|since| *since + self.ttl)
    }

    /// Forgets the row-less owners not in `owners` (they own nothing any more), so the list
    /// cannot grow with every client id the fleet ever had.
    pub fn retain_unseen(&mut self, owners: &BTreeSet<ClientId>) {
        self.unseen.retain(|c, _| owners.contains(c));
    }

    /// The live clients we have evidence about (see `Seen::evidence`), sorted.
    ///
    /// Differs from [`Membership::alive`] only in an observer's first `lease_ttl`: then rows
    /// that were there at its first read and have not changed since are alive (never declared
    /// dead early) but without evidence — a client that crashed just before we started looks
    /// like that, and the rest of the fleet, which watched it longer, already plans without it.
    pub fn alive_with_evidence(&self) -> Vec<ClientId> {
        self.seen
            .iter()
            .filter(|(c, s)| s.evidence && self.is_alive(c))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// The live clients, sorted.
    pub fn alive(&self) -> Vec<ClientId> {
        self.seen
            .keys()
            .filter(|c| self.is_alive(c))
            .cloned()
            .collect()
    }

    /// Every client with a row, alive or not, with how long its counter was seen standing still.
    pub fn ages(&self) -> Vec<(ClientId, Duration)> {
        self.seen
            .iter()
            .map(|(c, s)| (c.clone(), self.still_for(s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(list: &[(&str, u64)]) -> Vec<ClientRow> {
        list.iter()
            .map(|(id, counter)| ClientRow::new(ClientId::from(*id), *counter))
            .collect()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A read whose reply came back at once.
    fn read(m: &mut Membership, list: &[(&str, u64)], at: Instant) -> bool {
        m.observe(&rows(list), at, at)
    }

    #[test]
    fn a_moving_counter_keeps_a_client_alive_and_a_stuck_one_dies() {
        let mut m = Membership::new(secs(10));
        let t0 = Instant::now();
        assert!(read(&mut m, &[("a", 1), ("b", 5)], t0));
        for i in 1..=6u64 {
            assert!(!read(&mut m, &[("a", 1 + i), ("b", 5)], t0 + secs(2 * i)));
        }
        assert_eq!(m.alive(), vec![ClientId::from("a")]);
    }

    #[test]
    fn the_counter_value_not_its_size_matters() {
        // A restarted client whose counter went back to 1 is still a change.
        let mut m = Membership::new(secs(10));
        let t0 = Instant::now();
        read(&mut m, &[("a", 50)], t0);
        read(&mut m, &[("a", 1)], t0 + secs(9));
        read(&mut m, &[("a", 1)], t0 + secs(18));
        assert!(m.is_alive(&ClientId::from("a")));
    }

    #[test]
    fn deregistered_clients_vanish_at_once() {
        let mut m = Membership::new(secs(10));
        let t0 = Instant::now();
        read(&mut m, &[("a", 1), ("b", 1)], t0);
        assert!(read(&mut m, &[("a", 1)], t0));
        assert!(!m.is_alive(&ClientId::from("b")));
    }

    #[test]
    fn silence_of_the_observer_is_not_death_of_the_observed() {
        // Read at 0 s, then nothing for 30 s (we were paused): the next read decides.
        let mut m = Membership::new(secs(10));
        let t0 = Instant::now();
        read(&mut m, &[("a", 1)], t0);
        read(&mut m, &[("a", 7)], t0 + secs(30));
        assert!(m.is_alive(&ClientId::from("a")), "it moved while we slept");
        read(&mut m, &[("a", 7)], t0 + secs(35));
        assert!(
            m.is_alive(&ClientId::from("a")),
            "5 s of stillness is not death"
        );
    }

    #[test]
    fn a_late_reply_proves_nothing_about_the_time_it_was_in_flight() {
        // Sent at 1 s, seen at 10.9 s: a's counter is proven still from 0 s to 1 s only.
        let mut m = Membership::new(secs(10));
        let t0 = Instant::now();
        read(&mut m, &[("a", 1)], t0);
        m.observe(
            &rows(&[("a", 1)]),
            t0 + secs(1),
            t0 + Duration::from_millis(10_900),
        );
        assert!(m.is_alive(&ClientId::from("a")));
        // A value first seen in a late reply counts from its arrival, not its sending.
        read(&mut m, &[("a", 2)], t0 + secs(11));
        m.observe(&rows(&[("a", 3)]), t0 + secs(12), t0 + secs(21));
        read(&mut m, &[("a", 3)], t0 + secs(30));
        assert!(
            m.is_alive(&ClientId::from("a")),
            "seen at 21 s, still at 30 s: 9 s"
        );
        read(&mut m, &[("a", 3)], t0 + secs(31));
        assert!(!m.is_alive(&ClientId::from("a")), "10 s proven still");
    }

    #[test]
    fn an_owner_without_a_row_is_dead_only_after_a_ttl_of_reads_without_it() {
        let a = ClientId::from("a");
        let mut m = Membership::new(secs(10));
        let t0 = Instant::now();
        assert!(!m.owner_is_dead(&a), "no read yet: no evidence");
        read(&mut m, &[("b", 1)], t0);
        assert!(
            !m.owner_is_dead(&a),
            "it may have registered after our read"
        );
        read(&mut m, &[("b", 2)], t0 + secs(9));
        assert!(!m.owner_is_dead(&a));
        read(&mut m, &[("b", 3)], t0 + secs(10));
        assert!(m.owner_is_dead(&a), "absent from every read over 10 s");
    }

    #[test]
    fn seeing_a_row_again_clears_the_unseen_clock() {
        // A restarts under the same id: deregisters, registers again, takes its lease back.
        let a = ClientId::from("a");
        let mut m = Membership::new(secs(10));
        let t0 = Instant::now();
        read(&mut m, &[("b", 1)], t0);
        assert!(!m.owner_is_dead(&a)); // the clock for "a" starts
        read(&mut m, &[("a", 1), ("b", 2)], t0 + secs(1));
        // Much later, a restarts: its row is gone from one read...
        read(&mut m, &[("b", 9)], t0 + secs(60));
        assert!(
            !m.owner_is_dead(&a),
            "an unseen clock left from 0 s must not make a dead at once"
        );
        read(&mut m, &[("a", 1), ("b", 10)], t0 + secs(61));
        assert!(!m.owner_is_dead(&a));
    }
}
