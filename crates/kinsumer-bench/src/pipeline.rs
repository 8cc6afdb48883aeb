//! P1: the in-process pipeline on one core — records delivered and acked per second by a
//! consumer on a `MemoryStream` and a `MemoryLeaseStore`, against a raw read loop over the same
//! stream in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kinsumer::testkit::{MemoryLeaseStore, MemoryStream};
use kinsumer::{Checkpoint, Config, Consumer, ShardBatch, ShardSource};
use tokio::task::JoinSet;

use super::{BenchArgs, Row, on_own_runtime, within};
use crate::Result;

const SHARDS: usize = 64;
const RECORD_BYTES: usize = 100;
const GOAL: &str = "≥ 0.8 × raw, and ≥ 5 M records/s on one core";

/// `n` records of 100 bytes spread evenly over the stream's 64 shards (the payloads are slices
/// of one buffer, each starting with its record number).
fn fill(n: usize) -> Result<MemoryStream> {
    // Without Kinesis' read limits: this measures the pipeline's own speed, not the budget.
    let stream = MemoryStream::without_read_limits("bench-p1", SHARDS);
    let mut buffer = vec![b'x'; n * RECORD_BYTES];
    for (i, chunk) in buffer.chunks_mut(RECORD_BYTES).enumerate() {
        chunk[..8].copy_from_slice(&(i as u64).to_be_bytes());
    }
    let buffer = Bytes::from(buffer);
    for i in 0..n {
        // Shard k of 64 owns the hash keys starting at k · 2^122.
        let hash_key = ((i % SHARDS) as u128) << 122;
        let data = buffer.slice(i * RECORD_BYTES..(i + 1) * RECORD_BYTES);
        stream.put_with_hash_key(&format!("key-{}", i % 4096), hash_key, data)?;
    }
    Ok(stream)
}

/// Every shard read from its horizon to its tip, all shards at once, counting each record.
async fn raw(stream: &MemoryStream, n: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for shard in stream.list_shards().await? {
        let stream = stream.clone();
        tasks.spawn(async move {
            let mut reader = stream.open(&shard.id, &Checkpoint::TrimHorizon).await?;
            let (mut count, mut bytes) = (0usize, 0usize);
            loop {
                let batch = reader.next_batch(10_000).await?;
                if batch.records.is_empty() {
                    break;
                }
                for r in &batch.records {
                    count += 1;
                    bytes += r.data.len();
                }
            }
            Ok::<_, kinsumer::SourceError>((count, bytes))
        });
    }
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        total += joined??.0;
    }
    let took = started.elapsed();
    if total != n {
        return Err(format!("the raw loop read {total} of {n} records").into());
    }
    Ok(took)
}

fn config(id: &str) -> Config {
    let mut c = Config::new("bench-p1").with_client_id(id);
    // The raw loop does not pause between reads; the consumer pauses as little as it may.
    c.poll_interval = Duration::from_millis(1);
    c
}

/// A consumer's record stream, each record acked as it arrives; the time until all `n` are.
async fn records(stream: &MemoryStream, n: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut consumer = Consumer::new(
        config("p1-records"),
        stream.clone(),
        MemoryLeaseStore::new(),
    )?;
    let mut records = consumer.records()?;
    let (mut count, mut bytes) = (0usize, 0usize);
    while count < n {
        let r = records.next().await.ok_or("the record stream ended")??;
        count += 1;
        bytes += r.data().len();
        r.ack();
    }
    let took = started.elapsed();
    std::hint::black_box(bytes);
    consumer.shutdown().await?;
    Ok(took)
}

/// A consumer's record stream taken a run at a time ([`kinsumer::Records::next_run`]), each
/// run acked whole; the time until all `n` are.
async fn runs(stream: &MemoryStream, n: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut consumer = Consumer::new(config("p1-runs"), stream.clone(), MemoryLeaseStore::new())?;
    let mut records = consumer.records()?;
    let (mut count, mut bytes) = (0usize, 0usize);
    while count < n {
        let run = records
            .next_run()
            .await
            .ok_or("the record stream ended")??;
        for r in run.records() {
            count += 1;
            bytes += r.data.len();
        }
        run.ack();
    }
    let took = started.elapsed();
    std::hint::black_box(bytes);
    consumer.shutdown().await?;
    Ok(took)
}

/// A consumer with a batch handler that counts; the time until all `n` are acked.
async fn batches(stream: &MemoryStream, n: usize) -> Result<Duration> {
    let started = Instant::now();
    let consumer = Consumer::new(
        config("p1-batches"),
        stream.clone(),
        MemoryLeaseStore::new(),
    )?;
    let shutdown = consumer.shutdown_handle();
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (c2, d2) = (count.clone(), done.clone());
    let handler = move |batch: ShardBatch| {
        let (count, done) = (c2.clone(), d2.clone());
        async move {
            let bytes: usize = batch.records.iter().map(|r| r.data.len()).sum();
            std::hint::black_box(bytes);
            let len = batch.records.len() as u64;
            // Counted when the batch returns, which is when it is acked.
            if count.fetch_add(len, Ordering::SeqCst) + len >= n as u64 {
                done.notify_one();
            }
            Ok(())
        }
    };
    let running = tokio::spawn(consumer.run(handler));
    done.notified().await;
    let took = started.elapsed();
    shutdown.shutdown();
    running.await??;
    Ok(took)
}

struct Figures {
    n: usize,
    rounds: usize,
    raw: Duration,
    records: Duration,
    runs: Duration,
    batches: Duration,
}

async fn measure(n: usize, rounds: usize) -> Result<Figures> {
    let stream = fill(n)?;
    let (mut raw_best, mut rec_best, mut run_best, mut batch_best) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    // A round not timed first: it grows the heap to what the runs need (a long-running
    // consumer does that once), so no figure depends on which run came first.
    for round in 0..=rounds {
        let timed = round > 0;
        let best = |best: Duration, took: Duration| if timed { best.min(took) } else { best };
        raw_best = best(
            raw_best,
            within(Duration::from_secs(120), "the raw loop", raw(&stream, n)).await?,
        );
        rec_best = best(
            rec_best,
            within(
                Duration::from_secs(300),
                "the record stream",
                records(&stream, n),
            )
            .await?,
        );
        run_best = best(
            run_best,
            within(
                Duration::from_secs(300),
                "the record stream by run",
                runs(&stream, n),
            )
            .await?,
        );
        batch_best = best(
            batch_best,
            within(
                Duration::from_secs(300),
                "the batch handler",
                batches(&stream, n),
            )
            .await?,
        );
    }
    Ok(Figures {
        n,
        rounds,
        raw: raw_best,
        records: rec_best,
        runs: run_best,
        batches: batch_best,
    })
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn millions(r: f64) -> String {
    format!("{:.2} M records/s", r / 1e6)
}

pub(crate) async fn p1(args: &BenchArgs) -> Vec<Row> {
    let (n, rounds) = if args.quick {
        (320_000, 2)
    } else {
        (1_280_000, 5)
    };
    let command = args.command("P1");
    let base = |what: &str| {
        Row::new(
            "P1",
            format!("in-process pipeline, {what}: 64 shards, 100-byte records, one core"),
            GOAL,
        )
        .with_command(command.clone())
    };
    let f = match on_own_runtime(false, move || measure(n, rounds)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) | Err(e) => {
            return vec![base("record stream").not_measured(format!("the run failed: {e}"))];
        }
    };
    let raw = rate(f.n, f.raw);
    let how = format!(
        "{} records of 100 bytes on 64 shards of one `MemoryStream`, written once; each round \
         runs the raw loop, then a consumer with its record stream (record by record, then run \
         by run), then one with a batch handler, each from the horizon to the last record, on \
         one current-thread tokio runtime (one core); best of {} rounds after one round not \
         timed (it grows the heap to what the runs need, as a long-running consumer does \
         once; a consumer holds up to 10,000 records per shard in flight where the raw loop \
         holds one read, and timed from a cold heap its time is mostly the kernel's first \
         touch of that memory). The raw loop opens every shard and calls `next_batch(10_000)` \
         until empty, touching each record. The consumers use a `MemoryLeaseStore`, \
         `poll_interval` 1 ms, the other settings default, and their time runs from \
         `Consumer::new` to the last ack (start-up, taking 64 leases, included). \
         Raw loop: {} in {:.3} s.",
        f.n,
        f.rounds,
        millions(raw),
        f.raw.as_secs_f64()
    );
    let mut rows = Vec::new();
    for (what, took, note) in [
        (
            "record stream (ack per record)",
            f.records,
            "each fetched batch reaches the stream as one run (one channel slot, one tracker \
             entry). What is left per record is what a hand-out and an ack of one record must \
             do to keep their promises: a fence check on the kernel's coarse monotonic and wall \
             clocks (no record after a self-fence, even on a starved runtime or after a \
             suspend), a sequentially consistent store of the hand-out (a drain sees every \
             record out), the handle's reference count up and down (a record is an owned \
             handle that may move to another task) and a compare-and-swap for the ack (acks \
             from any task, in any order): four atomic read-modify-writes and two clock reads \
             a record, the difference to the next row, where `Records::next_run` pays them \
             once per run",
        ),
        (
            "record stream by run (ack per run)",
            f.runs,
            "`Records::next_run` hands out the rest of a fetched batch at once (one fence check, \
             one store into the run's counter) and `RecordRun::ack` acks it with one \
             compare-and-swap; the application iterates a slice",
        ),
        (
            "batch handler",
            f.batches,
            "records go to the handler in batches of up to 10,000 (moved into the batch and \
             shared by its clones, so a retry costs nothing), one tracker entry per batch; what \
             is left per record is the fetch loop's two passes over a batch (payload bytes for \
             the metrics, sizes for the byte bound) and start-up (64 leases taken)",
        ),
    ] {
        let ours = rate(f.n, took);
        let ratio = ours / raw;
        let met = ratio >= 0.8 && ours >= 5e6;
        let why = if ours < 5e6 && ratio < 0.8 {
            format!(
                "both parts: {:.2} × raw and {} — the per-record cost of the pipeline ({note}) \
                 is what a faster path must cut",
                ratio,
                millions(ours)
            )
        } else if ours < 5e6 {
            format!(
                "{} is under 5 M/s although the ratio is met: the raw loop itself only reaches \
                 {} on this core (cloning every record out of the stream's log under its lock \
                 is most of both)",
                millions(ours),
                millions(raw)
            )
        } else {
            format!("{ratio:.2} × raw: the per-record cost of the pipeline ({note})")
        };
        rows.push(
            base(what)
                .judged(
                    format!(
                        "{:.2} × raw ({} vs {})",
                        ratio,
                        millions(ours),
                        millions(raw)
                    ),
                    met,
                    why,
                )
                .detail(how.clone())
                .detail(format!(
                    "{what}: {} in {:.3} s; {note}",
                    millions(ours),
                    took.as_secs_f64()
                )),
        );
    }
    rows
}
