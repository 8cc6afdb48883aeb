//! `kinsumer demo`: a fleet of consumers on the in-memory stream and store, with a scripted
//! split, join, graceful leave and crash — and a summary that says whether anything was lost.
//!
//! It runs in real time with short intervals (lease TTL 3 s) so the whole story fits in well
//! under a minute; `--short` makes it a few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    /// Serve the consumers' metrics for Prometheus at http://ADDR/metrics while the demo runs.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Keep serving metrics this many seconds after the demo ends (for a last scrape).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub linger: u64,
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
) -> crate::Result<Member> {
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

fn fmt_secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The live view: a progress bar over acked records, one line per consumer (shards held, lag,
/// records fetched), and events printed above them. Without a terminal it prints a status line
/// every two seconds instead.
struct View {
    multi: MultiProgress,
    total: ProgressBar,
    lines: BTreeMap<String, ProgressBar>,
    plain: bool,
    last_plain: Option<Instant>,
}

impl View {
    fn new(records: u64) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let plain = multi.is_hidden();
        let total = multi.add(ProgressBar::new(records));
        total.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:32}] {pos}/{len} acked  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Self {
            multi,
            total,
            lines: BTreeMap::new(),
            plain,
            last_plain: None,
        }
    }

    fn event(&self, at: Duration, line: String) {
        let line = format!("[{:>6.2} s] {line}", at.as_secs_f64());
        if self.plain {
            println!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(line) = self.lines.remove(id) {
            line.finish_and_clear();
            self.multi.remove(&line);
        }
    }

    fn update(&mut self, acked: u64, produced: u64, members: &[Member]) {
        self.total.set_position(acked);
        let rate = acked as f64 / self.total.elapsed().as_secs_f64().max(0.001);
        self.total
            .set_message(format!("{rate:>6.0} records/s  produced {produced}"));
        let mut rows = Vec::new();
        for m in members {
            let shards = m.status.shards();
            let names: Vec<String> = shards
                .iter()
                .map(|s| {
                    let short = s
                        .shard
                        .as_str()
                        .trim_start_matches("shardId-")
                        .trim_start_matches('0');
                    let short = if short.is_empty() { "0" } else { short };
                    if s.releasing {
                        format!("{short}\u{2192}")
                    } else {
                        short.to_string()
                    }
                })
                .collect();
            let lag = shards
                .iter()
                .filter_map(|s| s.millis_behind_latest)
                .max()
                .unwrap_or(0);
            let fetched: u64 = shards.iter().map(|s| s.fetched).sum();
            let row = format!(
                "{:<11} shards [{}]  lag {lag} ms  fetched {fetched} this tenure",
                m.id,
                names.join(" ")
            );
            if !self.plain {
                let line = self.lines.entry(m.id.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar
                });
                line.set_message(row.clone());
            }
            rows.push(row);
        }
        if self.plain
            && self
                .last_plain
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
        {
            self.last_plain = Some(Instant::now());
            println!("acked {acked}/{produced}");
            for row in rows {
                println!("  {row}");
            }
        }
    }

    fn finish(self) {
        for line in self.lines.values() {
            line.finish_and_clear();
        }
        self.total.finish_and_clear();
    }
}

/// Runs the demo; returns the process exit code (0 when nothing was lost).
pub async fn run(args: DemoArgs) -> crate::Result<i32> {
    let records = if args.short {
        args.records.min(2_000)
    } else {
        args.records
    };
    let seconds = args.seconds.unwrap_or(if args.short { 6 } else { 20 });
    if !(1..=3600).contains(&seconds) {
        return Err("--seconds must be between 1 and 3600".into());
    }
    if !(1..=64).contains(&args.shards) {
        return Err("--shards must be between 1 and 64".into());
    }
    if !(1..=32).contains(&args.consumers) {
        return Err("--consumers must be between 1 and 32".into());
    }
    if !(1..=10_000_000).contains(&records) {
        return Err("--records must be between 1 and 10000000".into());
    }
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        println!("metrics: http://{addr}/metrics");
    }
    let stream = MemoryStream::new("demo-stream", args.shards);
    let store = MemoryLeaseStore::new();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng::new(args.seed);
    let mut members: Vec<Member> = Vec::new();
    let mut next = 0;
    let mut add = |members: &mut Vec<Member>, rng: &mut Rng| -> crate::Result<String> {
        let id = format!("consumer-{next}");
        next += 1;
        members.push(start_member(
            id.clone(),
            &stream,
            &store,
            &ledger,
            rng.next_u64(),
        )?);
        Ok(id)
    };
    for _ in 0..args.consumers {
        add(&mut members, &mut rng)?;
    }

    let mut view = View::new(records);
    println!(
        "demo: {} shards, {} consumers, {records} records over {seconds} s (seed {}); lease TTL 3 s",
        args.shards, args.consumers, args.seed
    );

    // The producer, at an even rate over `seconds`.
    let started = Instant::now();
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let stream = stream.clone();
        let produced = produced.clone();
        let mut rng = Rng::new(args.seed ^ 0x9e37);
        let step = Duration::from_secs(seconds).div_f64(records as f64);
        tokio::spawn(async move {
            let mut written = 0u64;
            while written < records {
                let due = ((started.elapsed().as_secs_f64() / step.as_secs_f64()) as u64 + 1)
                    .min(records);
                while written < due {
                    let key = format!("user-{}", rng.below(1000));
                    let mut data = written.to_be_bytes().to_vec();
                    data.extend_from_slice(b" demo payload");
                    // Counted before the put, so the view never shows more acked than produced.
                    produced.store(written + 1, std::sync::atomic::Ordering::Relaxed);
                    if stream.put(&key, data).is_ok() {
                        written += 1;
                    } else {
                        produced.store(written, std::sync::atomic::Ordering::Relaxed);
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
                            Ok((a, b)) => {
                                view.event(elapsed, format!("split {} into {a} and {b}", s.id))
                            }
                            Err(e) => view.event(elapsed, format!("split failed: {e}")),
                        }
                    }
                }
                "join" => {
                    let id = add(&mut members, &mut rng)?;
                    view.event(elapsed, format!("{id} joins"));
                }
                _ if members.len() < 2 => {}
                kind => {
                    let m = members.remove(0);
                    view.remove(&m.id);
                    let now = Instant::now();
                    let label = if kind == "leave" {
                        "graceful handoff"
                    } else {
                        "crash failover"
                    };
                    {
                        let mut l = lock(&ledger);
                        for s in m.status.shards() {
                            l.timing.insert(s.shard, (m.id.clone(), now, label));
                        }
                    }
                    if kind == "leave" {
                        view.event(elapsed, format!("{} leaves gracefully", m.id));
                        if let Some(c) = m.consumer {
                            let worker = m.worker;
                            leaving.push(tokio::spawn(async move {
                                let _ = c.shutdown().await;
                                let _ = worker.await;
                            }));
                        }
                    } else {
                        view.event(
                            elapsed,
                            format!(
                                "{} crashes (no release; its leases expire after the TTL)",
                                m.id
                            ),
                        );
                        m.worker.abort();
                        if let Some(c) = m.consumer {
                            c.abort(); // dropping it would shut it down gracefully
                        }
                    }
                }
            }
        }
        let (acked, timing_left) = {
            let l = lock(&ledger);
            (l.acked.len() as u64, l.timing.len())
        };
        view.update(
            acked,
            produced.load(std::sync::atomic::Ordering::Relaxed),
            &members,
        );
        if producer.is_finished() && acked >= records && step == script.len() && timing_left == 0 {
            break;
        }
        if Instant::now() >= deadline {
            view.event(
                started.elapsed(),
                "timed out waiting for every record to be acked".into(),
            );
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    view.finish();

    // The lease table as the store holds it, then a graceful shutdown of everyone left.
    println!("leases (shard, owner, fencing token, checkpoint):");
    for lease in store.peek_leases(stream.name()) {
        let owner = lease.owner.as_ref().map_or("-", |o| o.as_str());
        let checkpoint = lease
            .checkpoint
            .map_or_else(|| "-".to_string(), |c| c.to_string());
        let note = if lease.finished { "  (finished)" } else { "" };
        println!(
            "  {:<21} {owner:<11} #{:<3} {checkpoint}{note}",
            lease.shard.as_str(),
            lease.token
        );
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

    let lost = {
        let l = lock(&ledger);
        let delivered: u64 = l.deliveries.values().map(|n| u64::from(*n)).sum();
        let lost = (0..records).filter(|id| !l.acked.contains(id)).count();
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
            "summary: produced {records}, delivered {delivered}, lost {lost}, duplicates {duplicates}, {:.0} records/s; {}",
            delivered as f64 / elapsed.as_secs_f64(),
            handoffs.join("; ")
        );
        lost
    };
    if args.metrics_addr.is_some() && args.linger > 0 {
        sleep(Duration::from_secs(args.linger)).await;
    }
    Ok(if lost == 0 { 0 } else { 1 })
}
