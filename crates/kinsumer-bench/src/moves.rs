//! P6: how many leases move when one client joins or leaves, and the balance after — pure
//! computation with the engine's own `assign`, so the figures are exact counts.

use std::collections::BTreeMap;

use kinsumer::assignment::assign;
use kinsumer::{ClientId, ShardId};

use super::{BenchArgs, Row};

const GOAL: &str = "≤ 1.25 × ⌈S/N⌉ moves; max − min ≤ 1";

fn moved(a: &BTreeMap<ShardId, ClientId>, b: &BTreeMap<ShardId, ClientId>) -> usize {
    b.iter().filter(|(s, c)| a.get(*s) != Some(*c)).count()
}

fn spread(plan: &BTreeMap<ShardId, ClientId>, clients: &[ClientId]) -> usize {
    let mut counts: BTreeMap<&ClientId, usize> = clients.iter().map(|c| (c, 0)).collect();
    for c in plan.values() {
        *counts.entry(c).or_default() += 1;
    }
    let max = counts.values().max().copied().unwrap_or(0);
    let min = counts.values().min().copied().unwrap_or(0);
    max - min
}

/// The rows for `shards` shards and `n` ↔ `n + 1` clients: one for a join, one for a leave.
fn size(args: &BenchArgs, shards: usize, n: usize) -> Vec<Row> {
    // Ids shaped like real ones: Kinesis shard ids and `hostname-pid-random` client ids.
    let shard_ids: Vec<ShardId> = (0..shards)
        .map(|i| ShardId::from(format!("shardId-{i:012}")))
        .collect();
    let clients: Vec<ClientId> = (0..=n)
        .map(|i| {
            ClientId::from(format!(
                "ip-10-0-{}-{}-{}-{:08x}",
                i / 250,
                i % 250,
                4000 + i,
                (i as u32).wrapping_mul(2_654_435_761)
            ))
        })
        .collect();
    let before = assign(&clients[..n], &shard_ids, &BTreeMap::new());
    let joined = assign(&clients, &shard_ids, &before);
    // The newcomer leaves again: its rows drop out of the current owners.
    let mut current = joined.clone();
    current.retain(|_, c| c != &clients[n]);
    let left = assign(&clients[..n], &shard_ids, &current);

    let bound = |clients_after: usize| shards.div_ceil(clients_after);
    let mut rows = Vec::new();
    for (what, from, to, after_clients) in [
        ("joins", &before, &joined, n + 1),
        ("leaves", &joined, &left, n),
    ] {
        let moves = moved(from, to);
        let balance = spread(to, &clients[..after_clients]);
        // The fewest moves any balanced assignment can make: the newcomer's share on a join,
        // the leaver's shards on a leave.
        let optimum = if what == "joins" {
            shards / (n + 1)
        } else {
            joined.values().filter(|c| **c == clients[n]).count()
        };
        // ⌈S/N⌉ with N the larger fleet (n + 1): the newcomer's share, the tighter reading.
        let ceil = bound(n + 1);
        let limit = ceil as f64 * 1.25;
        let met = moves as f64 <= limit && balance <= 1;
        let (a, b) = if what == "joins" {
            (n, n + 1)
        } else {
            (n + 1, n)
        };
        rows.push(
            Row::new(
                "P6",
                format!("leases moved when a client {what}: {shards} shards, {a} → {b} clients"),
                GOAL,
            )
            .judged(
                format!(
                    "{moves} moves = {:.2} × ⌈S/N⌉ ({ceil}); max − min = {balance}",
                    moves as f64 / ceil as f64
                ),
                met,
                format!(
                    "{moves} moves against a limit of {limit:.0}, balance {balance}: the sticky \
                     assignment (`kinsumer_core::assignment`) must keep each owner's shards up \
                     to its quota"
                ),
            )
            .with_command(args.command("P6"))
            .detail(format!(
                "`kinsumer_core::assignment::assign` computed for {a} clients, then for {b} \
                 with the first plan as current owners; {moves} shards changed owner (the \
                 optimum for any balanced assignment is {optimum}); ⌈S/N⌉ = ⌈{shards}/{}⌉ = \
                 {ceil}, so the goal allows {limit:.2}; the largest and smallest holdings \
                 after differ by {balance}",
                n + 1
            )),
        );
    }
    rows
}

pub(crate) fn p6(args: &BenchArgs) -> Vec<Row> {
    let mut rows = size(args, 1_000, 10);
    rows.extend(size(args, 10_000, 100));
    rows
}
