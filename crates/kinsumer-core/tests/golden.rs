//! Golden values of the assignment: the rendezvous ranks and the plans they make, pinned.
//!
//! Every client computes the plan by itself, and during a rolling deploy two versions of this
//! crate run in one fleet. If a release changed `rank` (its hash, or the bytes it hashes) or
//! `assign`'s tie-breaks, the old and the new clients would want different owners for the same
//! shards and take them from each other until the deploy ends: leases moving for nothing,
//! records delivered twice. So these values must never change within a major version; a
//! change that must happen needs a release note telling users to stop the whole fleet first.

use std::collections::BTreeMap;

use kinsumer_core::assignment::{assign, rank};
use kinsumer_core::rng::stable_hash;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::ClientId;

fn shards(n: usize) -> Vec<ShardId> {
    (0..n)
        .map(|i| ShardId::from(format!("shardId-{i:012}")))
        .collect()
}

fn clients(n: usize) -> Vec<ClientId> {
    (0..n)
        .map(|i| ClientId::from(format!("client-{i}")))
        .collect()
}

/// A plan as one number: the stable hash of every `shard=owner` line, in shard order.
fn fingerprint(plan: &BTreeMap<ShardId, ClientId>) -> u64 {
    let lines: Vec<String> = plan.iter().map(|(s, c)| format!("{s}={c}\n")).collect();
    let parts: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    stable_hash(&parts)
}

#[test]
fn the_rendezvous_rank_never_changes() {
    // Checked against an independent implementation of the hash (FNV-1a 64 over the parts,
    // each followed by 0xff, then SplitMix64's finaliser) when they were pinned.
    let pinned = [
        (
            "shardId-000000000000",
            "client-0",
            17_913_013_525_956_812_390u64,
        ),
        (
            "shardId-000000000000",
            "client-1",
            15_300_402_562_945_883_717,
        ),
        (
            "shardId-000000000001",
            "client-0",
            14_076_482_889_840_723_150,
        ),
        (
            "shardId-000000000042",
            "host-a:4021:9f3c",
            13_389_405_596_368_524_969,
        ),
        ("", "", 6_127_701_450_080_318_846),
        ("shardId-ü", "クライアント", 436_248_687_566_950_051),
    ];
    for (shard, client, want) in pinned {
        let got = rank(&ShardId::from(shard), &ClientId::from(client));
        assert_eq!(
            got, want,
            "rank({shard:?}, {client:?}) changed: clients of two versions would fight over shards"
        );
    }
}

#[test]
fn the_plans_never_change() {
    let all = shards(1000);
    // From nothing: 1,000 shards over 7 clients.
    let first = assign(&clients(7), &all, &BTreeMap::new());
    // An eighth client joins: who moves to it.
    let joined = assign(&clients(8), &all, &first);
    // client-3 leaves: where its shards go.
    let mut rest = clients(8);
    rest.remove(3);
    let left = assign(&rest, &all, &joined);
    let pinned = [
        (
            "from nothing",
            fingerprint(&first),
            8_285_817_943_102_171_988u64,
        ),
        (
            "after a join",
            fingerprint(&joined),
            12_485_616_607_229_670_544,
        ),
        (
            "after a leave",
            fingerprint(&left),
            11_666_354_793_507_359_068,
        ),
    ];
    for (what, got, want) in pinned {
        assert_eq!(
            got, want,
            "the plan {what} changed: clients of two versions would fight over shards"
        );
    }
    // A few owners spelled out, so a failure shows what moved.
    // The moves themselves stay the fewest: 125 shards (1,000 / 8) each time.
    let moved = |a: &BTreeMap<ShardId, ClientId>, b: &BTreeMap<ShardId, ClientId>| {
        all.iter().filter(|s| a[*s] != b[*s]).count()
    };
    assert_eq!((moved(&first, &joined), moved(&joined, &left)), (125, 125));
    let owner = |plan: &BTreeMap<ShardId, ClientId>, i: usize| plan[&all[i]].to_string();
    assert_eq!(owner(&first, 0), "client-0");
    assert_eq!(owner(&joined, 0), "client-0");
    assert_eq!(owner(&left, 999), "client-7");
}
