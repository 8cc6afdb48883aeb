//! P2: end to end on kinesis-local — a consumer with each lease store against a raw
//! GetRecords loop over the same stream, in the same run.
//!
//! Both sides read the same records from TRIM_HORIZON, at most 10,000 per call, with the same
//! 200 ms between two reads of a shard (Kinesis allows 5 reads per second per shard). The raw
//! loop reads every shard concurrently and only counts; the consumer takes the leases, delivers
//! every record through its record stream and acks it. Rounds alternate raw and consumers, and
//! the best time of each is compared. The emulator ingests slowly, so the records are written
//! once, before any timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use futures::StreamExt;
use kinsumer::kinesis::KinesisSource;
use kinsumer::testkit::MemoryLeaseStore;
use kinsumer::{Config, Consumer};

use super::services::{self, Backend, kinesis_client};
use super::{BenchArgs, Row, unique, within};
use crate::Result;

const SHARDS: i32 = 4;
const POLL: Duration = Duration::from_millis(200);
const GOAL: &str = "≥ 0.9 × raw with every store";

fn err(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

async fn create(client: &Client, name: &str) -> Result<()> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(SHARDS)
        .send()
        .await
        .map_err(err)?;
    for _ in 0..400 {
        let out = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .map_err(err)?;
        if out
            .stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the stream did not become ACTIVE".into())
}

/// Writes `n` records of 100 bytes (the first 8 the record number), 500 per PutRecords.
async fn fill(client: &Client, name: &str, n: usize) -> Result<()> {
    let payload = vec![b'x'; 92];
    let mut i = 0;
    let mut failures = 0;
    while i < n {
        let end = (i + 500).min(n);
        let entries = (i..end)
            .map(|k| {
                let mut data = (k as u64).to_be_bytes().to_vec();
                data.extend_from_slice(&payload);
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("key-{k}"))
                    .data(Blob::new(data))
                    .build()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name(name)
            .set_records(Some(entries))
            .send()
            .await
            .map_err(err)?;
        // Entries that failed are written again on the next pass.
        match out.records().iter().position(|r| r.error_code().is_some()) {
            Some(f) => {
                i += f;
                failures += 1;
                if failures > 100 {
                    return Err("PutRecords kept failing".into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => i = end,
        }
    }
    Ok(())
}

/// Reads every shard from TRIM_HORIZON until `n` records were seen; the time taken.
async fn raw(client: &Client, name: &str, n: usize) -> Result<Duration> {
    let started = Instant::now();
    let shards = client
        .list_shards()
        .stream_name(name)
        .send()
        .await
        .map_err(err)?;
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::OnceLock::new());
    // A JoinSet aborts its readers when dropped (a timeout, an early error), so none keeps
    // polling the emulator during the next measured run.
    let mut tasks = tokio::task::JoinSet::new();
    for shard in shards.shards() {
        let (seen, done) = (seen.clone(), done.clone());
        let (client, name, shard) = (
            client.clone(),
            name.to_string(),
            shard.shard_id().to_string(),
        );
        tasks.spawn(async move {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(&name)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .map_err(err)?
                .shard_iterator()
                .map(str::to_string);
            let mut last_call: Option<Instant> = None;
            while let Some(it) = iterator {
                if let Some(t) = last_call {
                    tokio::time::sleep_until((t + POLL).into()).await;
                }
                last_call = Some(Instant::now());
                let out = client
                    .get_records()
                    .shard_iterator(it)
                    .limit(10_000)
                    .send()
                    .await
                    .map_err(err)?;
                let got = out.records().len();
                let all = seen.fetch_add(got, Ordering::SeqCst) + got;
                if all >= n && all - got < n {
                    // This read completed the set: that is when the clock stops.
                    let _ = done.set(started.elapsed());
                }
                if all >= n || (got == 0 && out.millis_behind_latest() == Some(0)) {
                    break;
                }
                iterator = out.next_shard_iterator().map(str::to_string);
            }
            Ok::<(), String>(())
        });
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    match done.get() {
        Some(took) => Ok(*took),
        None => Err(format!(
            "the raw loop saw {} of {n} records",
            seen.load(Ordering::SeqCst)
        )
        .into()),
    }
}

/// A consumer with `backend`'s store (a fresh application, so it starts at TRIM_HORIZON)
/// until it has delivered and acked all `n` records; the time taken.
async fn consumer(
    first: &mut Vec<Duration>,
    args: &BenchArgs,
    backend: Backend,
    client: &Client,
    name: &str,
    n: usize,
    table: &str,
) -> Result<Duration> {
    let app = unique("bench-e2e");
    let store = services::open(backend, args, &app, table, &MemoryLeaseStore::new()).await?;
    let started = Instant::now();
    let mut config = Config::new(&app).with_client_id("bench-e2e");
    config.poll_interval = POLL;
    let source = KinesisSource::new(client.clone(), name);
    let mut consumer = Consumer::from_shared(config, Arc::new(source), store)?;
    let mut records = consumer.records()?;
    let mut seen = vec![false; n];
    let mut count = 0;
    while count < n {
        let r = records.next().await.ok_or("the record stream ended")??;
        if count == 0 {
            first.push(started.elapsed());
        }
        let id = r
            .data()
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or("a record without its number")? as usize;
        if let Some(slot) = seen.get_mut(id)
            && !*slot
        {
            *slot = true;
            count += 1;
        }
        r.ack();
    }
    let took = started.elapsed();
    consumer.shutdown().await?;
    Ok(took)
}

/// A store's best time, every time (with its round), and when each run's first record came.
type PerStore = (
    Backend,
    Result<Duration>,
    Vec<(usize, Duration)>,
    Vec<Duration>,
);

/// The median of `raw ÷ consumer` over the rounds both ran in: each consumer run against the
/// raw loop of its own round, so the emulator's drift between rounds cancels out.
fn paired_median(raw: &[(usize, Duration)], ours: &[(usize, Duration)]) -> Option<f64> {
    let mut ratios: Vec<f64> = ours
        .iter()
        .filter_map(|(round, d)| {
            let (_, r) = raw.iter().find(|(k, _)| k == round)?;
            Some(r.as_secs_f64() / d.as_secs_f64())
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    match ratios.len() {
        0 => None,
        n if n % 2 == 1 => Some(ratios[mid]),
        _ => Some((ratios[mid - 1] + ratios[mid]) / 2.0),
    }
}

pub(crate) async fn p2(args: &BenchArgs) -> Vec<Row> {
    let (n, rounds) = if args.quick { (3_000, 1) } else { (20_000, 8) };
    let command = args.command("P2");
    let row = |b: Backend| {
        Row::new(
            "P2",
            format!(
                "end to end on kinesis-local, {}: 4 shards, {n} records of 100 bytes",
                b.name()
            ),
            GOAL,
        )
        .with_command(command.clone())
    };
    let client = kinesis_client(&args.kinesis_endpoint);
    let probe = tokio::time::timeout(
        Duration::from_secs(8),
        client.list_streams().limit(1).send(),
    )
    .await;
    let unreachable = match probe {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(err(e)),
        Err(_) => Some("no answer within 8 s".to_owned()),
    };
    if let Some(why) = unreachable {
        let why = format!(
            "kinesis-local not reachable at {} ({why})",
            args.kinesis_endpoint
        );
        return Backend::ALL
            .iter()
            .map(|b| row(*b).not_measured(why.clone()))
            .collect();
    }
    let mut backends = Vec::new();
    let mut rows = Vec::new();
    for b in Backend::ALL {
        match b.unreachable(args).await {
            None => backends.push(b),
            Some(why) => rows.push(row(b).not_measured(why)),
        }
    }
    let name = unique("kinsumer-bench");
    let table = unique("kinsumer-bench-e2e");
    let wrote = async {
        create(&client, &name).await?;
        let t = Instant::now();
        fill(&client, &name, n).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(t.elapsed())
    };
    let ingest = match within(Duration::from_secs(600), "writing the records", wrote).await {
        Ok(d) => d,
        Err(e) => {
            let _ = client.delete_stream().stream_name(&name).send().await;
            // The stores found unreachable keep their own reason.
            rows.extend(
                backends
                    .iter()
                    .map(|b| row(*b).not_measured(format!("writing the stream failed: {e}"))),
            );
            return rows;
        }
    };
    let mut raw_best = Duration::MAX;
    let mut raw_all = Vec::new();
    let mut best: Vec<PerStore> = backends
        .iter()
        .map(|b| (*b, Err("not run".into()), Vec::new(), Vec::new()))
        .collect();
    for round in 0..rounds {
        // The raw loop and the stores take turns at going first, so none always runs cold (the
        // emulator's first read of a round) or right after another's shutdown.
        let contestants = best.len() + 1;
        for turn in 0..contestants {
            let slot = (turn + round) % contestants;
            let Some((b, best, all, first)) = best.get_mut(slot) else {
                match within(
                    Duration::from_secs(300),
                    "the raw loop",
                    raw(&client, &name, n),
                )
                .await
                {
                    Ok(d) => {
                        raw_best = raw_best.min(d);
                        raw_all.push((round, d));
                    }
                    Err(e) => note!("kinsumer-bench: P2 raw loop failed: {e}"),
                }
                continue;
            };
            // A healthy run takes seconds; a stuck one (an overloaded store) is cut short.
            let r = within(
                Duration::from_secs(60),
                "the consumer",
                consumer(first, args, *b, &client, &name, n, &table),
            )
            .await;
            match r {
                Ok(d) => {
                    all.push((round, d));
                    *best = Ok(match best {
                        Ok(prev) => (*prev).min(d),
                        Err(_) => d,
                    });
                }
                Err(e) if all.is_empty() => *best = Err(e),
                Err(e) => note!("kinsumer-bench: P2 {} failed once: {e}", b.name()),
            }
        }
    }
    let _ = client.delete_stream().stream_name(&name).send().await;
    if backends.contains(&Backend::Dynamo) {
        services::drop_table(args, &table).await;
    }
    let secs = |v: &[(usize, Duration)]| {
        v.iter()
            .map(|(_, d)| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (b, result, all, first) in best {
        let r = row(b);
        let ours = match result {
            Ok(d) => d,
            Err(e) => {
                rows.push(r.not_measured(format!("the run failed: {e}")));
                continue;
            }
        };
        let Some(ratio) = paired_median(&raw_all, &all) else {
            rows.push(r.not_measured("the raw loop failed"));
            continue;
        };
        let first = first
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(
            r.judged(
                format!(
                    "{ratio:.2} × raw (median of {} rounds; best {:.0} vs {:.0} records/s)",
                    all.len(),
                    n as f64 / ours.as_secs_f64(),
                    n as f64 / raw_best.as_secs_f64()
                ),
                ratio >= 0.9,
                format!(
                    "{ratio:.2} × raw: the consumer's runs took {} s against the raw loop's {} \
                     s (same rounds, same order); its first record came {} s after start \
                     (start-up and the first GetRecords). A run is about one second, so the \
                     emulator's pace (±25 % between runs) and the start-up decide it: a longer \
                     stream (the emulator ingests ~1,300 records/s) would measure the steady \
                     pace instead",
                    secs(&all),
                    secs(&raw_all),
                    first
                ),
            )
            .detail(format!(
                "{n} records of 100 bytes written once to a fresh 4-shard stream ({:.1} s of \
                 emulator ingest, not measured). Both sides read from TRIM_HORIZON, ≤ 10,000 \
                 records per GetRecords, 200 ms between two reads of a shard, until all {n} \
                 are seen; the consumer (a fresh application each time, default settings) \
                 also acks each record, and its time includes its start-up. {rounds} rounds; \
                 in each the raw loop and every store run once, taking turns at going first. \
                 The figure is the median over rounds of (raw loop time ÷ consumer time) in \
                 the same round. Raw loop {} s (best {:.2}), consumer {} s (best {:.2}; its \
                 first record after {first} s).",
                ingest.as_secs_f64(),
                secs(&raw_all),
                raw_best.as_secs_f64(),
                secs(&all),
                ours.as_secs_f64(),
            )),
        );
    }
    let order = |r: &Row| {
        Backend::ALL
            .iter()
            .position(|b| r.measure.contains(b.name()))
            .unwrap_or(9)
    };
    rows.sort_by_key(order);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_pairs_each_run_with_the_raw_loop_of_its_round() {
        let s = |x: f64| Duration::from_secs_f64(x);
        let raw = [(0, s(1.0)), (1, s(2.0)), (3, s(1.0))];
        // Round 2 has no raw loop: its run is left out. Ratios 0.5, 1.0, 2.0.
        let ours = [(0, s(2.0)), (1, s(2.0)), (2, s(9.0)), (3, s(0.5))];
        assert_eq!(paired_median(&raw, &ours), Some(1.0));
        assert_eq!(paired_median(&raw, &ours[..2]), Some(0.75));
        assert_eq!(paired_median(&[], &ours), None);
    }
}
