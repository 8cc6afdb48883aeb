//! P3 and P4: how long a shard goes undelivered when its owner leaves gracefully (P3) or
//! vanishes without releasing (P4) — from the moment the owner stops to the first record
//! another consumer delivers from that shard.
//!
//! One harness serves both and runs in two settings: the simulation (a `MemoryLeaseStore`
//! under tokio's paused clock: virtual time, exact and repeatable) and Redis in real time.
//! A fleet of two consumers shares 8 shards while a producer writes one record to every shard
//! every 10 ms; the older consumer leaves (or crashes), the four shards it held are timed, a
//! new consumer joins, the fleet settles, and again. Every consumer uses the default
//! configuration (heartbeat 2 s, lease TTL 10 s, membership poll 200 ms, poll 200 ms).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kinsumer::redis::RedisLeaseStore;
use kinsumer::testkit::{MemoryLeaseStore, MemoryStream};
use kinsumer::{Config, Consumer, LeaseStore, ShardId, StatusHandle};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::services::Backend;
use super::{BenchArgs, Row, on_own_runtime, percentile, unique, within};
use crate::Result;

const SHARDS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Leave,
    Crash,
    /// A member crashes; once the others took its shards — while its row is still there — a
    /// new member joins and is handed its share. Timed: from the join to the newcomer's first
    /// delivery on each shard it was handed.
    JoinAfterCrash,
}

/// Where the fleet keeps its leases.
#[derive(Clone)]
pub(crate) enum Stores {
    Memory(MemoryLeaseStore),
    Redis { url: String, app: String },
}

impl Stores {
    async fn open(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(match self {
            Stores::Memory(store) => Arc::new(store.clone()),
            Stores::Redis { url, app } => Arc::new(RedisLeaseStore::connect(url, app).await?),
        })
    }

    fn application(&self) -> &str {
        match self {
            Stores::Memory(_) => "bench-handoff",
            Stores::Redis { app, .. } => app,
        }
    }
}

/// The shards being timed after an event.
struct Watch {
    since: Instant,
    victim: String,
    first: BTreeMap<ShardId, Option<Duration>>,
    /// Time this member's first delivery on every shard instead (a joiner's handoffs).
    joiner: Option<String>,
}

type Watched = Arc<Mutex<Option<Watch>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Member {
    id: String,
    consumer: Option<Consumer>,
    status: StatusHandle,
    reader: JoinHandle<()>,
}

async fn join(
    stores: &Stores,
    stream: &MemoryStream,
    id: String,
    watched: &Watched,
) -> Result<Member> {
    let mut config = Config::new(stores.application()).with_client_id(&id);
    // A seed of its own per member (ids differ only in their number).
    config.rng_seed = Some(kinsumer::rng::stable_hash(&[id.as_bytes()]));
    let store = stores.open().await?;
    let mut consumer = Consumer::from_shared(config, Arc::new(stream.clone()), store)?;
    let status = consumer.status();
    let mut records = consumer.records()?;
    let watched = watched.clone();
    let me = id.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(record)) = records.next().await {
            if let Some(w) = lock(&watched).as_mut() {
                if w.joiner.as_ref() == Some(&me) {
                    let since = w.since;
                    w.first
                        .entry(record.shard_id().clone())
                        .or_insert_with(|| Some(since.elapsed()));
                } else if w.joiner.is_none()
                    && w.victim != me
                    && let Some(slot) = w.first.get_mut(record.shard_id())
                    && slot.is_none()
                {
                    *slot = Some(w.since.elapsed());
                }
            }
            record.ack();
        }
    });
    Ok(Member {
        id,
        consumer: Some(consumer),
        status,
        reader,
    })
}

/// Every shard held, balanced within one, none being handed off.
fn settled(members: &[Member]) -> bool {
    let held: Vec<usize> = members.iter().map(|m| m.status.shards().len()).collect();
    let releasing = members
        .iter()
        .any(|m| m.status.shards().iter().any(|s| s.releasing));
    let (max, min) = (held.iter().max().copied(), held.iter().min().copied());
    held.iter().sum::<usize>() == SHARDS
        && !releasing
        && max.zip(min).is_some_and(|(a, b)| a - b <= 1)
}

async fn wait_settled(members: &[Member]) -> Result<()> {
    let started = Instant::now();
    while !settled(members) {
        if started.elapsed() > Duration::from_secs(90) {
            return Err("the fleet did not settle within 90 s".into());
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs `events` leaves or crashes; returns one latency per shard the victims held.
pub(crate) async fn latencies(
    stores: Stores,
    event: Event,
    events: usize,
) -> Result<Vec<Duration>> {
    let stream = MemoryStream::new("bench-handoff", SHARDS);
    let shards: Vec<(ShardId, u128)> = stream
        .shards()
        .into_iter()
        .map(|s| (s.id, s.hash_range.start))
        .collect();
    let producer_stream = stream.clone();
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            for (_, key) in &shards {
                n += 1;
                let _ = producer_stream.put_with_hash_key("k", *key, n.to_be_bytes().to_vec());
            }
        }
    });
    let watched: Watched = Arc::new(Mutex::new(None));
    let mut next = 0;
    let mut members = Vec::new();
    let fleet = if event == Event::JoinAfterCrash { 3 } else { 2 };
    for _ in 0..fleet {
        members.push(join(&stores, &stream, format!("bench-{next:03}"), &watched).await?);
        next += 1;
    }
    let config = Config::new("x");
    let mut out = Vec::new();
    let result: Result<()> = async {
        wait_settled(&members).await?;
        for _ in 0..events {
            if event == Event::JoinAfterCrash {
                sleep(config.lease_ttl + config.heartbeat_interval).await;
                let mut victim = members.remove(0);
                victim.reader.abort();
                if let Some(c) = victim.consumer.take() {
                    c.abort(); // a crash
                }
                // The survivors judge it dead and take its shards; its row stays for three TTLs.
                sleep(config.lease_ttl + config.heartbeat_interval * 2).await;
                wait_settled(&members).await?;
                let id = format!("bench-{next:03}");
                next += 1;
                *lock(&watched) = Some(Watch {
                    since: Instant::now(),
                    victim: String::new(),
                    first: BTreeMap::new(),
                    joiner: Some(id.clone()),
                });
                members.push(join(&stores, &stream, id, &watched).await?);
                wait_settled(&members).await?;
                let handed: Vec<ShardId> = members
                    .last()
                    .map(|m| m.status.shards().into_iter().map(|s| s.shard).collect())
                    .unwrap_or_default();
                let started = Instant::now();
                loop {
                    let all = lock(&watched)
                        .as_ref()
                        .is_some_and(|w| handed.iter().all(|s| w.first.contains_key(s)));
                    if all {
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        return Err("the joiner delivered nothing from a shard within 60 s".into());
                    }
                    sleep(Duration::from_millis(5)).await;
                }
                if let Some(w) = lock(&watched).take() {
                    out.extend(
                        w.first
                            .into_iter()
                            .filter(|(s, _)| handed.contains(s))
                            .filter_map(|(_, d)| d),
                    );
                }
                continue;
            }
            if event == Event::Crash {
                // A consumer that started less than a lease TTL ago does not yet judge anyone
                // dead (it has not watched long enough): a fleet in steady state has.
                sleep(config.lease_ttl + config.heartbeat_interval).await;
            }
            let mut victim = members.remove(0);
            let held: Vec<ShardId> = victim
                .status
                .shards()
                .into_iter()
                .map(|s| s.shard)
                .collect();
            *lock(&watched) = Some(Watch {
                since: Instant::now(),
                victim: victim.id.clone(),
                first: held.iter().map(|s| (s.clone(), None)).collect(),
                joiner: None,
            });
            match event {
                Event::Leave => {
                    if let Some(c) = victim.consumer.take() {
                        tokio::spawn(c.shutdown());
                    }
                }
                Event::Crash | Event::JoinAfterCrash => {
                    victim.reader.abort();
                    if let Some(c) = victim.consumer.take() {
                        c.abort(); // a crash
                    }
                }
            }
            let started = Instant::now();
            loop {
                let done = lock(&watched)
                    .as_ref()
                    .is_none_or(|w| w.first.values().all(Option::is_some));
                if done {
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return Err("a shard was not delivered by anyone within 60 s".into());
                }
                sleep(Duration::from_millis(5)).await;
            }
            if let Some(w) = lock(&watched).take() {
                out.extend(w.first.into_values().flatten());
            }
            members.push(join(&stores, &stream, format!("bench-{next:03}"), &watched).await?);
            next += 1;
            wait_settled(&members).await?;
        }
        Ok(())
    }
    .await;
    producer.abort();
    for m in members {
        if let Some(c) = m.consumer {
            let _ = tokio::time::timeout(Duration::from_secs(20), c.shutdown()).await;
        }
        m.reader.abort();
    }
    result?;
    out.sort();
    Ok(out)
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(2) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn summary(v: &[Duration]) -> String {
    format!(
        "p50 {}, p99 {}, max {} (n = {})",
        ms(percentile(v, 50)),
        ms(percentile(v, 99)),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    )
}

/// One row to measure.
struct Case<'a> {
    id: &'static str,
    event: Event,
    /// "simulation (virtual time)" or "Redis (real time)".
    setting: &'a str,
    events: usize,
    goal: &'a str,
    limit: Duration,
    why: &'a str,
}

async fn measure(args: &BenchArgs, case: Case<'_>) -> Row {
    let Case {
        id,
        event,
        setting,
        events,
        goal,
        limit,
        why,
    } = case;
    let what = match event {
        Event::Leave => "graceful handoff latency (owner leaves → another consumer delivers)",
        Event::Crash => "crash failover latency (owner vanishes → another consumer delivers)",
        Event::JoinAfterCrash => {
            "handoff to a client that joined < TTL after a crash (join → the joiner delivers from each shard handed to it)"
        }
    };
    let row = Row::new(id, format!("{what}, {setting}"), goal).with_command(args.command(id));
    let (result, how) = if setting.starts_with("simulation") {
        let r = on_own_runtime(true, move || {
            latencies(Stores::Memory(MemoryLeaseStore::new()), event, events)
        })
        .await;
        let r = match r {
            Ok(inner) => inner,
            Err(e) => Err(e),
        };
        (
            r,
            "a `MemoryLeaseStore` under tokio's paused clock: virtual time, so the figure is exact and the same on every run",
        )
    } else {
        if let Some(why) = Backend::Redis.unreachable(args).await {
            return row.not_measured(why);
        }
        let stores = Stores::Redis {
            url: args.redis.clone(),
            app: unique("bench-handoff"),
        };
        let budget = Duration::from_secs(60 + events as u64 * 60);
        (
            within(budget, "the Redis fleet", latencies(stores, event, events)).await,
            "Redis in real time, each consumer with its own connection",
        )
    };
    let v = match result {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => return row.not_measured("no handoff happened"),
        Err(e) => return row.not_measured(format!("the run failed: {e}")),
    };
    let figure = percentile(&v, 99);
    let worst = v.last().copied().unwrap_or_default();
    let checked = if event == Event::Crash { worst } else { figure };
    row.judged(
        summary(&v),
        checked <= limit,
        format!("{} is over {}: {why}", ms(checked), ms(limit)),
    )
    .detail(if event == Event::JoinAfterCrash {
        format!(
            "{how}. Three consumers share 8 shards of a `MemoryStream` while a producer writes \
             one record to every shard every 10 ms; {events} times, the oldest crashes, the two \
             others judge it dead and take its shards, and a new consumer joins while the dead \
             one's row is still in the store (rows of the dead go after three TTLs) — so for \
             its first TTL the newcomer counts the dead client alive. Timed: from the join to \
             the newcomer's first delivery on each shard handed to it (which includes the \
             others noticing the join). Default configuration."
        )
    } else {
        format!(
        "{how}. Two consumers share 8 shards of a `MemoryStream` while a producer writes one \
         record to every shard every 10 ms; {events} times, the older consumer {} and the \
         shards it held are timed from that moment to the first record another consumer \
         delivers from each; then a new consumer joins and the fleet settles.{} Default \
         configuration: heartbeat 2 s, lease TTL 10 s, membership poll 200 ms, poll 200 ms.",
        if event == Event::Leave {
            "shuts down (drain, commit, release, deregister)"
        } else {
            "is dropped without releasing anything (a crash)"
        },
        if event == Event::Crash {
            " Before each crash the fleet runs one lease TTL + one heartbeat, so every survivor has watched long enough to judge a death (a client that just started waits one TTL first, by design)."
        } else {
            ""
        }
    )
    })
    .detail(format!("all samples (ms): {}", v.iter().map(|d| d.as_millis().to_string()).collect::<Vec<_>>().join(", ")))
}

pub(crate) async fn p3(args: &BenchArgs) -> Vec<Row> {
    let (sim, redis) = if args.quick { (5, 3) } else { (25, 10) };
    let case = |setting, events| Case {
        id: "P3",
        event: Event::Leave,
        setting,
        events,
        goal: "p99 < 1 s",
        limit: Duration::from_millis(999),
        why: "the newcomer notices a leave on its next membership poll (200 ms) and takes at \
              once; a longer gap means the release or the take was slow",
    };
    let joined = |setting, events| Case {
        event: Event::JoinAfterCrash,
        why: "the joiner counts the crashed client's row alive for its first TTL; a shard handed \
              to it that its own plan gives to the dead client must be taken at once all the \
              same (kinsumer#23)",
        ..case(setting, events)
    };
    let (sim_joins, redis_joins) = if args.quick { (2, 2) } else { (10, 6) };
    vec![
        measure(args, case("simulation (virtual time)", sim)).await,
        measure(args, case("Redis (real time)", redis)).await,
        measure(args, joined("simulation (virtual time)", sim_joins)).await,
        measure(args, joined("Redis (real time)", redis_joins)).await,
    ]
}

pub(crate) async fn p4(args: &BenchArgs) -> Vec<Row> {
    let goal = "≤ lease_ttl + 2 s (12 s), every sample";
    let case = |setting, events| Case {
        id: "P4",
        event: Event::Crash,
        setting,
        events,
        goal,
        limit: Config::new("x").lease_ttl + Duration::from_secs(2),
        why: "a survivor declares the owner dead one lease TTL after it last saw the owner's \
              counter move, then takes on its next tick",
    };
    let sim = if args.quick { 2 } else { 10 };
    let mut rows = vec![measure(args, case("simulation (virtual time)", sim)).await];
    if args.quick {
        rows.push(
            Row::new(
                "P4",
                "crash failover latency (owner vanishes → another consumer delivers), Redis \
                 (real time)",
                goal,
            )
            .with_command(args.command("P4"))
            .not_measured("skipped by --quick (each crash costs ~25 s of real time)"),
        );
    } else {
        rows.push(measure(args, case("Redis (real time)", 3)).await);
    }
    rows
}
