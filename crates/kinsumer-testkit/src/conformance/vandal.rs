//! A fleet under a vandal: while two consumers read a stream, hostile values are written into
//! lease rows and client rows of a real store — random bytes, random JSON, attributes of the
//! wrong type, numbers with signs, leading zeros, fractions or past any integer type, control
//! characters, empty ids. Judged: every record of the shards whose rows were left alone is
//! delivered, no consumer stops or panics, and every read of the leases succeeds and names the
//! bad rows one by one (what `kinsumer status` shows).
//!
//! Each backend implements [`Vandal`] with its own raw client (the way an operator's console
//! or a bug would write), drawing its hostile values from [`hostile_text`] and
//! [`hostile_number`], and calls [`fleet_under_vandal`] against its real server.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use kinsumer_core::Consumer;
use kinsumer_core::rng::Rng;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::LeaseStore;

use super::fleet_config;
use crate::memory_stream::MemoryStream;

/// Writes hostile values into a store's rows, bypassing the store's code.
#[async_trait]
pub trait Vandal: Send + Sync {
    /// Overwrites the lease row of `shard` of `stream` (or a field of it) with a hostile value
    /// drawn from `rng`. The server refusing the value (a type or constraint error) is fine.
    async fn spoil_lease(&self, stream: &str, shard: &ShardId, rng: &mut Rng);
    /// The same for the client row of `client`.
    async fn spoil_client(&self, client: &str, rng: &mut Rng);
    /// The same for the application's change counter.
    async fn spoil_changes(&self, rng: &mut Rng);
    /// Overwrites the change counter with one value that certainly does not decode and that
    /// the server accepts (e.g. `"01"`, or a negative number in an integer column): the
    /// counter [`corrupt_change_counter`](super::corrupt_change_counter) checks. Panics if the
    /// write fails.
    async fn corrupt_changes(&self);
    /// Overwrites the existing lease row of `shard` with one value that certainly does not
    /// decode and that the server accepts (e.g. a token written `"01"`), the same every time:
    /// the corrupt row [`repair_of_a_corrupt_row`](super::repair_of_a_corrupt_row) repairs.
    /// Panics if the write fails.
    async fn corrupt_lease(&self, stream: &str, shard: &ShardId);
    /// Writes the token [`TOKEN_LIMIT`](kinsumer_core::store::TOKEN_LIMIT) into the existing
    /// lease row of `shard`, leaving the rest of it as it is: a row that decodes but that no
    /// take can move again. Panics if the write fails.
    async fn exhaust_token(&self, stream: &str, shard: &ShardId);
}

/// The fields of a lease row, as the stores name them: one of them, at random, for a vandal
/// to spoil.
pub fn lease_field(rng: &mut Rng) -> &'static str {
    const FIELDS: [&str; 6] = [
        "token",
        "owner",
        "checkpoint",
        "finished",
        "parents",
        "successor",
    ];
    FIELDS[rng.below(FIELDS.len() as u64) as usize]
}

/// A hostile piece of text: random bytes (as text, lossily), control characters and escape
/// codes, quotes and braces, odd numbers, huge or empty strings.
pub fn hostile_text(rng: &mut Rng) -> String {
    match rng.below(9) {
        0 => String::new(),
        1 => "\u{1b}[2J\u{1b}[31mred\u{7}".to_owned(),
        2 => {
            let bytes: Vec<u8> = (0..rng.below(40)).map(|_| rng.below(256) as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        3 => "{\"token\":".to_owned(),
        4 => "AFTER:".to_owned() + &"9".repeat(1 + rng.below(80) as usize) + "/+1",
        5 => "AT_TIMESTAMP:-1".to_owned(),
        6 => "x".repeat(rng.below(5_000) as usize),
        7 => hostile_number(rng),
        _ => "null".to_owned(),
    }
}

/// A number written as text that no kinsumer code would write: signs, leading zeros,
/// fractions, exponents, values past `u64::MAX` or `i64::MAX`.
pub fn hostile_number(rng: &mut Rng) -> String {
    let pick = [
        "-1",
        "+1",
        "01",
        "1.5",
        "1e3",
        " 7",
        "18446744073709551616",
        "9223372036854775808",
        "340282366920938463463374607431768211456",
        "NaN",
        "",
    ];
    pick[rng.below(pick.len() as u64) as usize].to_owned()
}

/// What [`fleet_under_vandal`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VandalReport {
    /// Hostile writes made.
    pub spoiled: usize,
    /// The most bad rows one read of the leases reported.
    pub most_corrupt_seen: usize,
    /// Records of the untouched shards, every one delivered.
    pub records: usize,
}

/// Shards in the stream; the vandal spoils the rows of the first [`VICTIMS`].
const SHARDS: usize = 6;
const VICTIMS: usize = 2;
/// Records per shard, written before and during the vandal's work.
const PER_SHARD: usize = 20;

/// Runs the check (see the [module docs](self)) on `store` — fresh, for `application` — with
/// `vandal` writing into the same store. Panics with a message naming the broken rule.
pub async fn fleet_under_vandal<St: LeaseStore + Clone>(
    store: St,
    application: &str,
    vandal: &dyn Vandal,
    seed: u64,
) -> VandalReport {
    const CHECK: &str = "fleet_under_vandal";
    let stream = MemoryStream::new("vandal", SHARDS);
    let shards: Vec<ShardId> = stream.shards().into_iter().map(|s| s.id).collect();
    let put_round = |round: usize| {
        for info in stream.shards() {
            stream
                .put_with_hash_key(
                    &format!("{}-{round}", info.id),
                    info.hash_range.start,
                    format!("{}/{round}", info.id).into_bytes(),
                )
                .expect("put");
        }
    };
    for round in 0..PER_SHARD / 2 {
        put_round(round);
    }
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stopped: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut consumers = Vec::new();
    for id in ["a", "b"] {
        let mut consumer =
            Consumer::new(fleet_config(application, id), stream.clone(), store.clone())
                .unwrap_or_else(|e| panic!("{CHECK}: a consumer: {e}"));
        let mut records = consumer
            .records()
            .unwrap_or_else(|e| panic!("{CHECK}: records: {e}"));
        let (seen, stopped) = (seen.clone(), stopped.clone());
        let task = tokio::spawn(async move {
            while let Some(next) = records.next().await {
                match next {
                    Ok(r) => {
                        seen.lock()
                            .expect("lock")
                            .insert(String::from_utf8_lossy(r.data()).into_owned());
                        r.ack();
                    }
                    Err(e) => {
                        stopped.lock().expect("lock").push(format!("{id}: {e}"));
                        return;
                    }
                }
            }
        });
        consumers.push((consumer, task));
    }
    // Let the fleet create and take the leases, then spoil the victims' rows for a while.
    wait(CHECK, "the leases to exist", || async {
        store
            .leases(stream.name())
            .await
            .is_ok_and(|r| r.rows.len() + r.corrupt.len() == SHARDS)
    })
    .await;
    let mut rng = Rng::new(seed);
    let (mut spoiled, mut most_corrupt_seen) = (0, 0);
    let until = Instant::now() + Duration::from_secs(8);
    let mut round = PER_SHARD / 2;
    while Instant::now() < until {
        let victim = &shards[rng.below(VICTIMS as u64) as usize];
        vandal.spoil_lease(stream.name(), victim, &mut rng).await;
        if rng.chance(0.3) {
            // A row of nobody's, and now and then a live client's (its heartbeat rewrites it).
            let client = if rng.chance(0.2) { "a" } else { "vandal" };
            vandal.spoil_client(client, &mut rng).await;
        }
        if rng.chance(0.1) {
            vandal.spoil_changes(&mut rng).await;
        }
        spoiled += 1;
        match store.leases(stream.name()).await {
            Ok(read) => most_corrupt_seen = most_corrupt_seen.max(read.corrupt.len()),
            Err(e) => panic!("{CHECK}: one bad row failed the read of every lease: {e}"),
        }
        if let Err(e) = store.clients().await {
            panic!("{CHECK}: one bad row failed the read of every client: {e}");
        }
        if round < PER_SHARD && rng.chance(0.2) {
            put_round(round);
            round += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while round < PER_SHARD {
        put_round(round);
        round += 1;
    }
    let healthy: Vec<String> = shards[VICTIMS..]
        .iter()
        .flat_map(|s| (0..PER_SHARD).map(move |r| format!("{s}/{r}")))
        .collect();
    wait(CHECK, "every record of the untouched shards", || async {
        let seen = seen.lock().expect("lock");
        healthy.iter().all(|h| seen.contains(h))
    })
    .await;
    let stopped = stopped.lock().expect("lock").clone();
    assert!(
        stopped.is_empty(),
        "{CHECK}: a consumer stopped: {stopped:?}"
    );
    for (consumer, task) in consumers {
        assert!(
            !task.is_finished(),
            "{CHECK}: a consumer's reader ended early"
        );
        if let Err(e) = consumer.shutdown().await {
            panic!("{CHECK}: shutdown: {e}");
        }
        task.abort();
    }
    VandalReport {
        spoiled,
        most_corrupt_seen,
        records: healthy.len(),
    }
}

/// Polls `done` every 100 ms for up to 60 s.
async fn wait<F, Fut>(check: &str, what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{check}: waited 60 s for {what}");
}
