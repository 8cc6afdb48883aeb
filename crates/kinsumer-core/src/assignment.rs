//! Balanced, sticky assignment of shards to clients — a pure function every client computes
//! alike, so no leader is needed.
//!
//! Inputs: the live clients, the eligible shards and who owns each shard now. Output: the desired
//! owner of every shard. The rules:
//! 1. **Balanced**: every client gets ⌊S/N⌋ or ⌈S/N⌉ shards.
//! 2. **Sticky**: the ⌈S/N⌉ quotas go to the clients holding the most already, and each client
//!    keeps its current shards up to its quota; only the excess and the orphans move.
//! 3. **Deterministic**: orphans go to the client with the highest rendezvous rank
//!    `hash(shard, client)` among those with room, so every client computes the same answer
//!    from the same inputs whatever the order it read them in.
//!
//! With one join or leave this moves as few shards as any balanced assignment can.
//!
//! ```
//! use std::collections::BTreeMap;
//! use kinsumer_core::assignment::assign;
//! use kinsumer_core::source::ShardId;
//! use kinsumer_core::store::ClientId;
//!
//! let clients = vec![ClientId::from("a"), ClientId::from("b")];
//! let shards: Vec<ShardId> = (0..5).map(|i| ShardId::from(format!("s{i}"))).collect();
//! let plan = assign(&clients, &shards, &BTreeMap::new());
//! let a = plan.values().filter(|c| c.as_str() == "a").count();
//! assert!(a == 2 || a == 3);
//!
//! // A third client joins: only shards that must move, move.
//! let three = vec![ClientId::from("a"), ClientId::from("b"), ClientId::from("c")];
//! let next = assign(&three, &shards, &plan);
//! let moved = shards.iter().filter(|s| plan[*s] != next[*s]).count();
//! assert_eq!(moved, 1);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::rng::stable_hash;
use crate::source::ShardId;
use crate::store::ClientId;

/// The rendezvous rank of `client` for `shard`: higher wins.
pub fn rank(shard: &ShardId, client: &ClientId) -> u64 {
    stable_hash(&[shard.as_str().as_bytes(), client.as_str().as_bytes()])
}

/// The desired owner of every shard in `shards`.
///
/// `current` maps shards to their current owners; owners not in `clients` and shards not in
/// `shards` are ignored. Returns an empty map when there are no clients.
pub fn assign(
    clients: &[ClientId],
    shards: &[ShardId],
    current: &BTreeMap<ShardId, ClientId>,
) -> BTreeMap<ShardId, ClientId> {
    let clients: BTreeSet<&ClientId> = clients.iter().collect();
    let shards: BTreeSet<&ShardId> = shards.iter().collect();
    let mut plan = BTreeMap::new();
    if clients.is_empty() {
        return plan;
    }

    // What each live client holds now, among the shards to place.
    let mut held: BTreeMap<&ClientId, Vec<&ShardId>> =
        clients.iter().map(|c| (*c, Vec::new())).collect();
    for (shard, owner) in current {
        if let (Some(list), true) = (held.get_mut(owner), shards.contains(shard)) {
            list.push(shard);
        }
    }

    // Quotas: the ⌈S/N⌉ slots go to those holding the most (ties by id), so fewer shards move.
    let n = clients.len();
    let (base, extra) = (shards.len() / n, shards.len() % n);
    let mut by_holding: Vec<&ClientId> = clients.iter().copied().collect();
    by_holding.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
    let mut room: BTreeMap<&ClientId, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, base + usize::from(i < extra)))
        .collect();

    // Keep current shards up to quota, preferring those the client ranks highest.
    let mut orphans: Vec<&ShardId> = Vec::new();
    for (client, list) in held.iter_mut() {
        // One hash per shard, not one per comparison: a client holding hundreds of shards of
        // ten thousand plans at every full read.
        list.sort_by_cached_key(|s| std::cmp::Reverse((rank(s, client), *s)));
        let quota = room[client];
        for (i, shard) in list.iter().enumerate() {
            if i < quota {
                plan.insert((*shard).clone(), (*client).clone());
            } else {
                orphans.push(shard);
            }
        }
        let kept = list.len().min(quota);
        if let Some(r) = room.get_mut(client) {
            *r -= kept;
        }
    }
    orphans.extend(shards.iter().filter(|s| !plan.contains_key(**s)));
    orphans.sort();
    orphans.dedup();

    // Place the rest by rendezvous rank among clients with room.
    for shard in orphans {
        if plan.contains_key(shard) {
            continue;
        }
        let best = room
            .iter()
            .filter(|(_, r)| **r > 0)
            .map(|(c, _)| (rank(shard, c), *c))
            .max()
            .map(|(_, c)| c);
        if let Some(client) = best {
            plan.insert(shard.clone(), client.clone());
            if let Some(r) = room.get_mut(client) {
                *r -= 1;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn ids<T: From<String>>(prefix: &str, n: usize) -> Vec<T> {
        (0..n).map(|i| T::from(format!("{prefix}{i:05}"))).collect()
    }

    fn counts(plan: &BTreeMap<ShardId, ClientId>, clients: &[ClientId]) -> Vec<usize> {
        clients
            .iter()
            .map(|c| plan.values().filter(|o| *o == c).count())
            .collect()
    }

    fn moves(a: &BTreeMap<ShardId, ClientId>, b: &BTreeMap<ShardId, ClientId>) -> usize {
        b.iter().filter(|(s, c)| a.get(*s) != Some(*c)).count()
    }

    #[test]
    fn balanced_within_one_and_complete() {
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let n = 1 + rng.below(12) as usize;
            let s = rng.below(60) as usize;
            let clients: Vec<ClientId> = ids("c", n);
            let shards: Vec<ShardId> = ids("s", s);
            let plan = assign(&clients, &shards, &BTreeMap::new());
            assert_eq!(plan.len(), s);
            let c = counts(&plan, &clients);
            assert!(
                c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
                "{c:?}"
            );
        }
    }

    #[test]
    fn stable_when_nothing_changes() {
        let clients: Vec<ClientId> = ids("c", 7);
        let shards: Vec<ShardId> = ids("s", 100);
        let plan = assign(&clients, &shards, &BTreeMap::new());
        assert_eq!(assign(&clients, &shards, &plan), plan);
        // The order of the inputs does not matter.
        let mut rev = clients.clone();
        rev.reverse();
        assert_eq!(assign(&rev, &shards, &plan), plan);
    }

    /// One join or leave moves exactly the optimum: the shards the newcomer must get, or the
    /// shards the leaver held.
    #[test]
    fn one_join_or_leave_moves_the_optimum() {
        for (s, n) in [(1000usize, 10usize), (10_000, 100), (100, 10), (7, 3)] {
            let shards: Vec<ShardId> = ids("shardId-", s);
            let clients: Vec<ClientId> = ids("client-", n + 1);
            let before = assign(&clients[..n], &shards, &BTreeMap::new());
            let joined = assign(&clients, &shards, &before);
            assert_eq!(moves(&before, &joined), s / (n + 1), "join at {s}/{n}");
            let c = counts(&joined, &clients);
            assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
            // The newcomer leaves again: only its shards move.
            let mut left = joined.clone();
            left.retain(|_, c| c != &clients[n]);
            let after = assign(&clients[..n], &shards, &left);
            assert_eq!(moves(&joined, &after), s / (n + 1), "leave at {s}/{n}");
        }
    }

    #[test]
    fn dead_owners_and_unknown_shards_are_ignored() {
        let clients: Vec<ClientId> = ids("c", 2);
        let shards: Vec<ShardId> = ids("s", 4);
        let mut current = BTreeMap::new();
        current.insert(ShardId::from("s00000"), ClientId::from("dead"));
        current.insert(ShardId::from("gone"), ClientId::from("c00000"));
        let plan = assign(&clients, &shards, &current);
        assert_eq!(plan.len(), 4);
        assert!(plan.values().all(|c| clients.contains(c)));
        assert!(assign(&[], &shards, &current).is_empty());
    }
}
