//! Rows the engine cannot use, set aside: one bad row never stops the fleet.
//!
//! A lease or client row that does not decode (garbage, a field of the wrong type, a token with
//! a sign or leading zeros, a checkpoint that is no checkpoint), or a lease row the store
//! refuses to take (a token at the largest value the store can hold), is *set aside*: the
//! engine never guesses at its owner, token or checkpoint, so its shard is not read until an
//! operator repairs the row — and every other row is used as usual. Each such row is named
//! (store key and what is wrong) in one `ERROR` event when it is first seen or changes, not on
//! every tick, counted in the `kinsumer_corrupt_rows` gauge, and shown by `kinsumer status`.
//!
//! A client whose row does not decode counts as having no row: it is judged dead only after
//! `lease_ttl` unseen, as always — and a live client rewrites its row with its next heartbeat.
//!
//! ```
//! use kinsumer_core::quarantine::Quarantine;
//! use kinsumer_core::store::CorruptRow;
//!
//! let mut leases = Quarantine::new("lease");
//! let bad = CorruptRow { key: "leases s-1".into(), id: Some("s-1".into()), reason: "garbage".into() };
//! assert_eq!(leases.read(std::slice::from_ref(&bad), |_| None), 1); // new: logged once
//! assert_eq!(leases.read(std::slice::from_ref(&bad), |_| None), 0); // the same again: silent
//! assert!(leases.holds("s-1"));
//! leases.read(&[], |_| None); // repaired
//! assert!(!leases.holds("s-1"));
//!
//! // A row the store refused to take stays aside until it reads differently.
//! let refused = CorruptRow { key: "leases s-2".into(), id: Some("s-2".into()), reason: "token at i64::MAX".into() };
//! leases.refused("s-2", "token 9223372036854775807".into(), refused);
//! leases.read(&[], |_| Some("token 9223372036854775807".into()));
//! assert!(leases.holds("s-2"));
//! leases.read(&[], |_| Some("token 0".into())); // an operator reset it
//! assert!(!leases.holds("s-2"));
//! ```

use std::collections::BTreeMap;

use tracing::{error, info};

use crate::store::CorruptRow;

/// The rows of one kind (`lease` or `client`) that are set aside.
#[derive(Debug)]
pub struct Quarantine {
    kind: &'static str,
    /// Rows the last read of every row could not decode, by key.
    undecodable: BTreeMap<String, CorruptRow>,
    /// Rows that decoded but the store refused to take, by id, with a fingerprint of the row
    /// as it was: set aside until a read shows the row changed.
    refused: BTreeMap<String, (String, CorruptRow)>,
}

impl Quarantine {
    /// Nothing set aside yet; `kind` names the rows in logs.
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            undecodable: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    /// The rows a read of every row could not decode, replacing the last read's. `now(id)` is
    /// the fingerprint of the row of `id` in the same read (`None`: not there); a refused row
    /// whose fingerprint changed is tried again. Logs each row new or changed since the last
    /// read, and each repaired; returns how many were new or changed.
    pub fn read(&mut self, corrupt: &[CorruptRow], now: impl Fn(&str) -> Option<String>) -> usize {
        let mut fresh = 0;
        let next: BTreeMap<String, CorruptRow> =
            corrupt.iter().map(|r| (r.key.clone(), r.clone())).collect();
        for (key, row) in &next {
            if self.undecodable.get(key) != Some(row) {
                fresh += 1;
                self.report(row);
            }
        }
        for key in self.undecodable.keys() {
            if !next.contains_key(key) {
                info!(kind = self.kind, key = %key, "row repaired: it decodes again");
            }
        }
        self.undecodable = next;
        let kind = self.kind;
        self.refused.retain(|id, (fingerprint, row)| {
            let again = now(id).as_ref() != Some(fingerprint);
            if again {
                info!(kind, key = %row.key, "row changed since the store refused it: trying it again");
            }
            !again
        });
        fresh
    }

    /// One row found undecodable outside a read of every row (a poll of one lease); kept until
    /// the next read of every row says otherwise.
    pub fn undecodable(&mut self, row: CorruptRow) {
        if self.undecodable.get(&row.key) != Some(&row) {
            self.report(&row);
            self.undecodable.insert(row.key.clone(), row);
        }
    }

    /// The store refused to take the row of `id` (as `fingerprint` shows it) for `row.reason`:
    /// set aside until it changes.
    pub fn refused(&mut self, id: &str, fingerprint: String, row: CorruptRow) {
        if self
            .refused
            .get(id)
            .is_none_or(|(f, r)| *f != fingerprint || *r != row)
        {
            self.report(&row);
        }
        self.refused.insert(id.to_owned(), (fingerprint, row));
    }

    /// Whether the row of `id` is set aside.
    pub fn holds(&self, id: &str) -> bool {
        self.refused.contains_key(id)
            || self
                .undecodable
                .values()
                .any(|r| r.id.as_deref() == Some(id))
    }

    /// The ids of the rows set aside because they do not decode (those that name one).
    pub fn undecodable_ids(&self) -> impl Iterator<Item = &str> {
        self.undecodable.values().filter_map(|r| r.id.as_deref())
    }

    /// How many rows are set aside.
    pub fn len(&self) -> usize {
        self.undecodable.len() + self.refused.len()
    }

    /// Whether no row is set aside.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn report(&self, row: &CorruptRow) {
        error!(
            kind = self.kind,
            key = %row.key,
            reason = %row.reason,
            "row set aside: the engine cannot use it and goes on with every other row; its shard \
             is not read until the row is repaired (kinsumer status shows it)"
        );
    }
}
