//! `kinsumer demo`: a fleet of consumers on the in-memory stream and store, with a scripted
//! split, join, graceful leave and crash — and a summary that says whether anything was lost.
//!
//! It runs in real time with short intervals (lease TTL 3 s) so the whole story fits in well
//! under a minute; `--short` makes it a few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kinsumer::rng::Rng;
use kinsumer::testkit::{MemoryLeaseStore, MemoryStream};
use kinsumer::{Config, Consumer, ShardId, StatusHandle};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

/// Options of `kinsumer demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Shards at the start.
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Consumers at the start (one more joins midway).
    #[arg(long, default_value_t = 3)]
    pub consumers: usize,
    /// Records the producer writes.
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Seeds the producer's keys and the handlers' timing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A quick run: 2,000 records over ~6 s.
    #[arg(long)]
    pub short: bool,
    /// How long the producer writes, in seconds (default 20; 6 with --short).
    #[arg(long)]
    pub seconds: Option<u64>,
}

/// What the fleet did, for the summary.
#[derive(Default)]
struct Ledger {
    /// Times each record id was delivered.
    deliveries: BTreeMap<u64, u32>,
    acked: BTreeSet<u64>,
    /// Per shard: the client that last delivered from it, and when.
    last_by_shard: BTreeMap<ShardId, (String, Instant)>,
    /// Shards whose handoff is being timed: (from client, since, kind).
    timing: BTreeMap<ShardId, (String, Instant, &'static str)>,
    /// Finished timings: kind → durations.
    handoffs: BTreeMap<&'static str, Vec<Duration>>,
}

impl Ledger {
    fn delivered(&mut self, id: u64, shard: &ShardId, client: &str) {
        *self.deliveries.entry(id).or_default() += 1;
        let now = Instant::now();
        if let Some((from, since, kind)) = self.timing.get(shard)
            && from != client
        {
            let took = now.duration_since(*since);
            self.handoffs.entry(kind).or_default().push(took);
            self.timing.remove(shard);
        }
        self.last_by_shard
            .insert(shard.clone(), (client.to_string(), now));
    }
}

struct Member {
    id: String,
    consumer: Option<Consumer>,
    status: StatusHandle,
    worker: JoinHandle<()>,
}

fn demo_config(client: &str) -> Config {
    let mut c = Config::new("demo").with_client_id(client);
    c.heartbeat_interval = Duration::from_millis(500);
    c.lease_ttl = Duration::from_secs(3);
    c.safety_margin = Duration::from_millis(500);
    c.commit_interval = Duration::from_millis(500);
    c.poll_interval = Duration::from_millis(50);
    c.membership_poll_interval = Duration::from_millis(100);
    c.rebalance_interval = Duration::from_secs(1);
    c.shard_sync_interval = Duration::from_secs(2);
    c.drain_timeout = Duration::from_secs(2);
    c
}

fn start_member(
    id: String,
    stream: &MemoryStream,
    store: &MemoryLeaseStore,
    ledger: &Arc<Mutex<Ledger>>,
    seed: u64,
) -> anyhow_like::Result<Member> {
    let mut consumer = Consumer::new(demo_config(&id), stream.clone(), store.clone())?;
    let status = consumer.status();
    let mut records = consumer.records()?;
    let ledger = ledger.clone();
    let client = id.clone();
    let worker = tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        while let Some(Ok(record)) = records.next().await {
            let Some(id) = record
                .data()
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                record.ack();
                continue;
            };
            lock(&ledger).delivered(id, record.shard_id(), &client);
            // Mostly fast, sometimes slow: real handlers are uneven.
            if rng.chance(0.001) {
                sleep(Duration::from_millis(50 + rng.below(200))).await;
            }
            lock(&ledger).acked.insert(id);
            record.ack();
        }
    });
    Ok(Member {
        id,
        consumer: Some(consumer),
        status,
        worker,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tiny boxed-error result, so the demo needs no error crate.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Runs the demo; returns the process exit code (0 when nothing was lost).
pub async fn run(args: DemoArgs) -> anyhow_like::Result<i32> {
    let records = if args.short {
        args.records.min(2_000)
    } else {
        args.records
    };
    let seconds = args
        .seconds
        .unwrap_or(if args.short { 6 } else { 20 })
        .max(1);
    if args.shards == 0 || args.shards > 64 {
        return Err("--shards must be between 1 and 64".into());
    }
    if args.consumers == 0 || args.consumers > 32 {
        return Err("--consumers must be between 1 and 32".into());
    }
    let stream = MemoryStream::new("demo-stream", args.shards);
    let store = MemoryLeaseStore::new();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng::new(args.seed);
    let mut members: Vec<Member> = Vec::new();
    let mut next = 0;
    let mut add = |members: &mut Vec<Member>, rng: &mut Rng| -> anyhow_like::Result<()> {
        let id = format!("consumer-{next}");
        next += 1;
        members.push(start_member(id, &stream, &store, &ledger, rng.next_u64())?);
        Ok(())
    };
    for _ in 0..args.consumers {
        add(&mut members, &mut rng)?;
    }

    let bar = ProgressBar::with_draw_target(Some(records), ProgressDrawTarget::stderr_with_hz(5));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} acked  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let log = |bar: &ProgressBar, line: String| {
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(line);
        }
    };
    log(
        &bar,
        format!(
            "demo: {} shards, {} consumers, {records} records over {seconds} s (seed {})",
            args.shards, args.consumers, args.seed
        ),
    );

    // The producer, at an even rate over `seconds`.
    let started = Instant::now();
    let producer = {
        let stream = stream.clone();
        let mut rng = Rng::new(args.seed ^ 0x9e37);
        let step = Duration::from_secs(seconds).div_f64(records.max(1) as f64);
        tokio::spawn(async move {
            let mut written = 0u64;
            while written < records {
                let due = ((started.elapsed().as_secs_f64() / step.as_secs_f64()) as u64 + 1)
                    .min(records);
                while written < due {
                    let key = format!("user-{}", rng.below(1000));
                    let mut data = written.to_be_bytes().to_vec();
                    data.extend_from_slice(b" demo payload");
                    if stream.put(&key, data).is_ok() {
                        written += 1;
                    } else {
                        break; // a shard closing mid-reshard: retry on the next tick
                    }
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let script: [(f64, &str); 4] = [
        (0.2, "split"),
        (0.35, "join"),
        (0.5, "leave"),
        (0.65, "crash"),
    ];
    let mut step = 0;
    let mut leaving: Vec<JoinHandle<()>> = Vec::new();
    let total = Duration::from_secs(seconds);
    let deadline = started + total + Duration::from_secs(60);
    loop {
        let elapsed = started.elapsed();
        if step < script.len() && elapsed >= total.mul_f64(script[step].0) {
            let what = script[step].1;
            step += 1;
            match what {
                "split" => {
                    let open: Vec<_> = stream.shards().into_iter().filter(|s| s.open).collect();
                    if let Some(s) = open.first() {
                        let r = s.hash_range;
                        let mid = r.start + (r.end - r.start) / 2 + 1;
                        match stream.split(&s.id, mid) {
                            Ok((a, b)) => log(
                                &bar,
                                format!("[{}] split {} into {a} and {b}", fmt_secs(elapsed), s.id),
                            ),
                            Err(e) => log(&bar, format!("split failed: {e}")),
                        }
                    }
                }
                "join" => {
                    add(&mut members, &mut rng)?;
                    let id = members.last().map(|m| m.id.clone()).unwrap_or_default();
                    log(&bar, format!("[{}] {id} joins", fmt_secs(elapsed)));
                }
                "leave" | "crash" => {
                    if members.len() < 2 {
                        continue;
                    }
                    let m = members.remove(0);
                    let now = Instant::now();
                    let kind = if what == "leave" {
                        "graceful handoff"
                    } else {
                        "crash failover"
                    };
                    {
                        let mut l = lock(&ledger);
                        for s in m.status.shards() {
                            l.timing.insert(s.shard, (m.id.clone(), now, kind));
                        }
                    }
                    if what == "leave" {
                        log(
                            &bar,
                            format!("[{}] {} leaves gracefully", fmt_secs(elapsed), m.id),
                        );
                        if let Some(c) = m.consumer {
                            let worker = m.worker;
                            leaving.push(tokio::spawn(async move {
                                let _ = c.shutdown().await;
                                let _ = worker.await;
                            }));
                        }
                    } else {
                        log(
                            &bar,
                            format!("[{}] {} crashes (no release)", fmt_secs(elapsed), m.id),
                        );
                        m.worker.abort();
                        drop(m.consumer);
                    }
                }
                _ => {}
            }
        }
        let (acked, timing_left) = {
            let l = lock(&ledger);
            (l.acked.len() as u64, l.timing.len())
        };
        bar.set_position(acked);
        let view: Vec<String> = members
            .iter()
            .map(|m| {
                let shards = m.status.shards();
                let lag = shards
                    .iter()
                    .filter_map(|s| s.millis_behind_latest)
                    .max()
                    .unwrap_or(0);
                format!("{}:{} shards (lag {lag} ms)", m.id, shards.len())
            })
            .collect();
        bar.set_message(view.join("  "));
        if producer.is_finished() && acked >= records && step == script.len() && timing_left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            log(
                &bar,
                "timed out waiting for every record to be acked".into(),
            );
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    // Final view of who owns what, then a graceful shutdown of everyone left.
    println!("final owners:");
    for m in &members {
        let mut shards: Vec<String> = m
            .status
            .shards()
            .iter()
            .map(|s| s.shard.to_string())
            .collect();
        shards.sort();
        println!("  {:<12} {}", m.id, shards.join(", "));
    }
    for m in members {
        if let Some(c) = m.consumer {
            let _ = c.shutdown().await;
        }
        let _ = m.worker.await;
    }
    for h in leaving {
        let _ = h.await;
    }

    let l = lock(&ledger);
    let produced = records;
    let delivered: u64 = l.deliveries.values().map(|n| u64::from(*n)).sum();
    let lost = (0..produced).filter(|id| !l.acked.contains(id)).count();
    let duplicates = delivered - l.deliveries.len() as u64;
    let handoffs: Vec<String> = l
        .handoffs
        .iter()
        .map(|(kind, ds)| {
            let max = ds.iter().max().copied().unwrap_or_default();
            format!("{kind} max {} over {} shard(s)", fmt_secs(max), ds.len())
        })
        .collect();
    println!(
        "summary: produced {produced}, delivered {delivered}, lost {lost}, duplicates {duplicates}, {:.0} records/s; {}",
        delivered as f64 / elapsed.as_secs_f64(),
        handoffs.join("; ")
    );
    Ok(if lost == 0 { 0 } else { 1 })
}
