//! Who is alive, judged by observed heartbeat counters on this client's own monotonic clock.
//!
//! Each client bumps a counter in its row; an observer records *when it saw the counter
//! change*, by its own clock. A client is dead once its counter has stood still for `lease_ttl`
//! by the observer's clock — the hosts' wall clocks never enter into it, so clock skew between
//! hosts cannot make a live client look dead. A newly seen client counts as just changed, so a
//! client that just started waits one `lease_ttl` before declaring anyone dead.
//!
//! Death is judged *as of the last read*, not as of now: a counter is dead only if it was seen
//! standing still across `lease_ttl` of reads. An observer that could not read for a while
//! (paused, partitioned) therefore never concludes from its silence that others died.
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
//! let row = |n| vec![ClientRow { id: ClientId::from("a"), counter: n }];
//! m.observe(&row(1), t0);
//! m.observe(&row(1), t0 + Duration::from_secs(9));
//! assert!(m.is_alive(&ClientId::from("a")));
//! m.observe(&row(1), t0 + Duration::from_secs(10));
//! assert!(!m.is_alive(&ClientId::from("a")));
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{ClientId, ClientRow};

/// The last counter seen for a client and when (on our clock) it last changed.
#[derive(Clone, Debug)]
struct Seen {
    counter: u64,
    changed_at: Instant,
}

/// Liveness of every client, as this observer sees it.
#[derive(Clone, Debug)]
pub struct Membership {
    ttl: Duration,
    seen: BTreeMap<ClientId, Seen>,
    /// When the rows were last read.
    observed_at: Option<Instant>,
}

impl Membership {
    /// An observer that calls a client dead after `ttl` without a counter change.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            seen: BTreeMap::new(),
            observed_at: None,
        }
    }

    /// Records a read of every client row whose reply arrived at `now`. Rows that vanished
    /// (deregistered clients) are forgotten. Returns `true` if the set of clients changed.
    pub fn observe(&mut self, rows: &[ClientRow], now: Instant) -> bool {
        self.observed_at = Some(now);
        let before: Vec<ClientId> = self.seen.keys().cloned().collect();
        let mut next = BTreeMap::new();
        for row in rows {
            let seen = match self.seen.remove(&row.id) {
                Some(s) if s.counter == row.counter => s,
                _ => Seen {
                    counter: row.counter,
                    changed_at: now,
                },
            };
            next.insert(row.id.clone(), seen);
        }
        self.seen = next;
        !self.seen.keys().eq(before.iter())
    }

    /// How long `seen`'s counter has been seen standing still, as of the last read.
    fn still_for(&self, seen: &Seen) -> Duration {
        self.observed_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(seen.changed_at)
        })
    }

    /// Whether `client` is alive: its row exists and its counter was not seen standing still for
    /// `ttl`.
    pub fn is_alive(&self, client: &ClientId) -> bool {
        self.seen
            .get(client)
            .is_some_and(|s| self.still_for(s) < self.ttl)
    }

    /// Whether `client` had a row at the last read (alive or not).
    pub fn knows(&self, client: &ClientId) -> bool {
        self.seen.contains_key(client)
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
            .map(|(id, counter)| ClientRow {
                id: ClientId::from(*id),
                counter: *counter,
            })
            .collect()
    }

    #[test]
    fn a_moving_counter_keeps_a_client_alive_and_a_stuck_one_dies() {
        let ttl = Duration::from_secs(10);
        let mut m = Membership::new(ttl);
        let t0 = Instant::now();
        assert!(m.observe(&rows(&[("a", 1), ("b", 5)]), t0));
        for i in 1..=6u64 {
            let now = t0 + Duration::from_secs(2 * i);
            assert!(!m.observe(&rows(&[("a", 1 + i), ("b", 5)]), now));
        }
        assert_eq!(m.alive(), vec![ClientId::from("a")]);
    }

    #[test]
    fn the_counter_value_not_its_size_matters() {
        // A restarted client whose counter went back to 1 is still a change.
        let mut m = Membership::new(Duration::from_secs(10));
        let t0 = Instant::now();
        m.observe(&rows(&[("a", 50)]), t0);
        let t1 = t0 + Duration::from_secs(9);
        m.observe(&rows(&[("a", 1)]), t1);
        m.observe(&rows(&[("a", 1)]), t1 + Duration::from_secs(9));
        assert!(m.is_alive(&ClientId::from("a")));
    }

    #[test]
    fn deregistered_clients_vanish_at_once() {
        let mut m = Membership::new(Duration::from_secs(10));
        let t0 = Instant::now();
        m.observe(&rows(&[("a", 1), ("b", 1)]), t0);
        assert!(m.observe(&rows(&[("a", 1)]), t0));
        assert!(!m.is_alive(&ClientId::from("b")));
    }

    #[test]
    fn silence_of_the_observer_is_not_death_of_the_observed() {
        // Read at 0 s, then nothing for 30 s (we were paused): the next read decides.
        let mut m = Membership::new(Duration::from_secs(10));
        let t0 = Instant::now();
        m.observe(&rows(&[("a", 1)]), t0);
        m.observe(&rows(&[("a", 7)]), t0 + Duration::from_secs(30));
        assert!(m.is_alive(&ClientId::from("a")), "it moved while we slept");
        m.observe(&rows(&[("a", 7)]), t0 + Duration::from_secs(35));
        assert!(
            m.is_alive(&ClientId::from("a")),
            "5 s of stillness is not death"
        );
    }
}
