//! Consumer throughput against a raw GetRecords loop, over the same stream, in the same run.
//!
//! ```sh
//! bash scripts/services/kinesis.sh          # kinesis-local on 127.0.0.1:4567
//! cargo run --release -p kinsumer-kinesis --example throughput -- --records 20000 --rounds 3
//! ```
//!
//! Both sides read the same records from TRIM_HORIZON, at most 10,000 per call, with the same
//! pause between two reads of a shard (`--poll-ms`, default 200, as Kinesis allows 5 reads per
//! second per shard). The raw loop reads every shard concurrently and only counts; the consumer
//! (in-memory lease store) takes the leases, delivers every record through its record stream
//! and acks it. Rounds alternate raw and consumer, and the best of each is compared: the ratio
//! is consumer throughput ÷ raw throughput. The emulator ingests slowly, so the records are
//! written once, before any timing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use futures::StreamExt;
use kinsumer_core::{Config, Consumer};
use kinsumer_kinesis::KinesisSource;
use kinsumer_testkit::MemoryLeaseStore;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    endpoint: String,
    records: usize,
    shards: i32,
    rounds: usize,
    poll: Duration,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        endpoint: std::env::var("KINSUMER_KINESIS_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:4567".into()),
        records: 20_000,
        shards: 4,
        rounds: 3,
        poll: Duration::from_millis(200),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoint" => a.endpoint = value,
            "--records" => a.records = value.parse()?,
            "--shards" => a.shards = value.parse()?,
            "--rounds" => a.rounds = value.parse()?,
            "--poll-ms" => a.poll = Duration::from_millis(value.parse()?),
            _ => {
                return Err(format!(
                    "unknown flag {flag}; flags: --endpoint --records --shards --rounds --poll-ms"
                )
                .into());
            }
        }
    }
    if a.records == 0 || a.shards < 1 || a.rounds == 0 {
        return Err("--records, --shards and --rounds must be positive".into());
    }
    Ok(a)
}

async fn create(client: &Client, name: &str, shards: i32) -> Result<(), Error> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await?;
    for _ in 0..400 {
        let out = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await?;
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

async fn fill(client: &Client, name: &str, n: usize) -> Result<(), Error> {
    let payload = vec![b'x'; 92];
    let mut i = 0;
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
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name(name)
            .set_records(Some(entries))
            .send()
            .await?;
        // Entries that failed are written again on the next pass.
        let failed = out.records().iter().position(|r| r.error_code().is_some());
        i = failed.map_or(end, |f| i + f);
    }
    Ok(())
}

/// Reads every shard from TRIM_HORIZON until `n` records were seen; returns the time taken.
async fn raw_loop(
    client: &Client,
    name: &str,
    n: usize,
    poll: Duration,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let shards = client.list_shards().stream_name(name).send().await?;
    // Like the consumer, stop as soon as every record was seen.
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Vec::new();
    for shard in shards.shards() {
        let (seen, done) = (seen.clone(), done.clone());
        let (client, name, shard) = (
            client.clone(),
            name.to_string(),
            shard.shard_id().to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(&name)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator()
                .map(str::to_string);
            let mut count = 0usize;
            let mut last_call: Option<Instant> = None;
            while let Some(it) = iterator {
                if let Some(t) = last_call {
                    tokio::time::sleep_until((t + poll).into()).await;
                }
                last_call = Some(Instant::now());
                let out = client
                    .get_records()
                    .shard_iterator(it)
                    .limit(10_000)
                    .send()
                    .await?;
                let got = out.records().len();
                count += got;
                let all = seen.fetch_add(got, Ordering::SeqCst) + got;
                if all >= n && all - got < n {
                    // This read completed the set: that is when the clock stops.
                    let _ = done.set(started.elapsed());
                }
                if all >= n || (got == 0 && out.millis_behind_latest() == Some(0)) {
                    break; // everything seen, or this shard is caught up
                }
                iterator = out.next_shard_iterator().map(str::to_string);
            }
            Ok::<usize, Error>(count)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    match done.get() {
        Some(took) if total >= n => Ok(*took),
        _ => Err(format!("the raw loop saw {total} of {n} records").into()),
    }
}

/// Runs a consumer until it has delivered and acked all `n` records; returns the time taken.
async fn consumer(
    client: &Client,
    name: &str,
    n: usize,
    poll: Duration,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let mut config = Config::new("bench").with_client_id("bench-1");
    config.poll_interval = poll;
    config.membership_poll_interval = Duration::from_millis(50);
    let source = KinesisSource::new(client.clone(), name);
    let mut consumer = Consumer::new(config, source, MemoryLeaseStore::new())?;
    let mut records = consumer.records()?;
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        let r = records.next().await.ok_or("the record stream ended")??;
        seen.insert(u64::from_be_bytes(r.data()[..8].try_into()?));
        r.ack();
    }
    let took = started.elapsed();
    consumer.shutdown().await?;
    Ok(took)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = args()?;
    let client = kinsumer_testkit::kinesis_local::client(&a.endpoint);
    let name = format!("bench-{}", std::process::id());
    create(&client, &name, a.shards).await?;
    let t = Instant::now();
    fill(&client, &name, a.records).await?;
    println!(
        "wrote {} records of 100 bytes to {} shards in {:.1} s (emulator ingest, not measured)",
        a.records,
        a.shards,
        t.elapsed().as_secs_f64()
    );
    let (mut raw, mut ours) = (Duration::MAX, Duration::MAX);
    for round in 1..=a.rounds {
        let r = raw_loop(&client, &name, a.records, a.poll).await?;
        let c = consumer(&client, &name, a.records, a.poll).await?;
        println!(
            "round {round}: raw loop {:.3} s ({:.0} records/s), consumer {:.3} s ({:.0} records/s)",
            r.as_secs_f64(),
            a.records as f64 / r.as_secs_f64(),
            c.as_secs_f64(),
            a.records as f64 / c.as_secs_f64()
        );
        raw = raw.min(r);
        ours = ours.min(c);
    }
    println!(
        "best of {}: consumer / raw throughput = {:.2} (goal >= 0.90)",
        a.rounds,
        raw.as_secs_f64() / ours.as_secs_f64()
    );
    let _ = client.delete_stream().stream_name(&name).send().await;
    Ok(())
}
