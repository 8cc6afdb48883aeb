//! P7: peak memory while a handler stalls and producers keep writing — measured in a fresh
//! process (`kinsumer-bench --p7-child`), so its peak RSS (`VmHWM`) is this scenario's alone.
//!
//! The source is endless: every read returns fresh records (allocated then), as a stream whose
//! producers stay ahead of the consumer. (A `MemoryStream` keeps every record written in this
//! same process, so its RSS would grow with the producer, not with the consumer.) The batch
//! handler never returns, so nothing is ever acked; the consumer must stop fetching at its
//! configured bound of `max_unacked_bytes` per shard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kinsumer::testkit::MemoryStream;
// Kinesis' GetRecords limit, which the endless source keeps too.
use kinsumer::testkit::memory_stream::MAX_BYTES_PER_READ;
use kinsumer::{
    Batch, Checkpoint, Config, Consumer, Position, SequenceNumber, ShardBatch, ShardId, ShardInfo,
    ShardReader, ShardSource, SourceError, SourceRecord,
};

use super::report::proc_kib;
use super::{BenchArgs, Row};
use crate::Result;

const SHARDS: usize = 4;
const RECORD_BYTES: usize = 10 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

/// A stream whose producers are always ahead: every read returns new records.
struct Endless {
    produced: Arc<AtomicU64>,
}

#[async_trait]
impl ShardSource for Endless {
    fn stream_name(&self) -> &str {
        "endless"
    }

    async fn list_shards(&self) -> std::result::Result<Vec<ShardInfo>, SourceError> {
        // The shards of a `MemoryStream` of the same size: Kinesis's ids and hash-key split.
        Ok(MemoryStream::new("endless", SHARDS).shards())
    }

    async fn open(
        &self,
        _shard: &ShardId,
        from: &Checkpoint,
    ) -> std::result::Result<Box<dyn ShardReader>, SourceError> {
        let next = match from {
            Checkpoint::After(p) => p.sequence.as_str().parse::<u128>().unwrap_or(0) + 1,
            _ => 1,
        };
        Ok(Box::new(EndlessReader {
            next,
            produced: self.produced.clone(),
        }))
    }
}

struct EndlessReader {
    next: u128,
    produced: Arc<AtomicU64>,
}

#[async_trait]
impl ShardReader for EndlessReader {
    async fn next_batch(&mut self, max_records: usize) -> std::result::Result<Batch, SourceError> {
        let count = max_records.clamp(1, MAX_BYTES_PER_READ / RECORD_BYTES);
        let records = (0..count)
            .map(|_| {
                let seq = self.next;
                self.next += 1;
                SourceRecord {
                    data: Bytes::from(vec![(seq % 251) as u8; RECORD_BYTES]),
                    partition_key: "k".into(),
                    explicit_hash_key: None,
                    position: Position::new(SequenceNumber::from_u128(seq), 0),
                    arrival_ms: 0,
                }
            })
            .collect::<Vec<_>>();
        self.produced.fetch_add(
            records.len() as u64 * RECORD_BYTES as u64,
            Ordering::Relaxed,
        );
        Ok(Batch {
            records,
            millis_behind_latest: Some(3_600_000),
            end: None,
            more_ready: false,
        })
    }
}

/// (VmRSS, VmHWM) of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| proc_kib(&status, name).map_or(0, |kib| kib * 1024);
    (field("VmRSS:"), field("VmHWM:"))
}

/// The measured process: prints one `P7-RESULT {json}` line.
pub(crate) async fn child(args: &BenchArgs) -> Result<i32> {
    let run_for = Duration::from_secs(if args.quick { 4 } else { 10 });
    let config = Config::new("bench-p7").with_client_id("p7");
    let bound = config.max_unacked_bytes * SHARDS;
    let (baseline, _) = rss();
    let produced = Arc::new(AtomicU64::new(0));
    let consumer = Consumer::new(
        config.clone(),
        Endless {
            produced: produced.clone(),
        },
        kinsumer::testkit::MemoryLeaseStore::new(),
    )?;
    let shutdown = consumer.shutdown_handle();
    let status = consumer.status();
    let handed = Arc::new(AtomicU64::new(0));
    let h2 = handed.clone();
    // The stalled handler: takes a batch and never returns.
    let handler = move |batch: ShardBatch| {
        let handed = h2.clone();
        async move {
            let bytes: usize = batch.records.iter().map(|r| r.data.len()).sum();
            handed.fetch_add(bytes as u64, Ordering::Relaxed);
            std::future::pending::<()>().await;
            Ok(())
        }
    };
    let running = tokio::spawn(consumer.run(handler));
    let started = tokio::time::Instant::now();
    let mut peak_sampled = 0;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak_sampled = peak_sampled.max(rss().0);
    }
    let (rss_now, hwm) = rss();
    let held = status.shards().len();
    let fetched: u64 = status.shards().iter().map(|s| s.fetched).sum();
    shutdown.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(2), running).await;
    let out = serde_json::json!({
        "baseline": baseline,
        "rss": rss_now,
        "hwm": hwm,
        "sampled_peak": peak_sampled,
        "bound": bound,
        "per_shard": config.max_unacked_bytes,
        "shards_held": held,
        "fetched_records": fetched,
        "fetched_bytes": fetched * RECORD_BYTES as u64,
        "produced_bytes": produced.load(Ordering::Relaxed),
        "handed_bytes": handed.load(Ordering::Relaxed),
        "seconds": run_for.as_secs(),
    });
    println!("P7-RESULT {out}");
    Ok(0)
}

pub(crate) async fn p7(args: &BenchArgs) -> Vec<Row> {
    let goal = "≤ configured byte bound + 20 MiB";
    let row = Row::new(
        "P7",
        format!(
            "peak RSS while the handler stalls, {SHARDS} shards, 10 KiB records, endless producers"
        ),
        goal,
    )
    .with_command(args.command("P7"));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return vec![row.not_measured(format!("cannot find this binary: {e}"))],
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--p7-child");
    if args.quick {
        cmd.arg("--quick");
    }
    let child = tokio::task::spawn_blocking(move || cmd.output());
    let out = match tokio::time::timeout(Duration::from_secs(60), child).await {
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(e))) => {
            return vec![row.not_measured(format!("the measured process did not start: {e}"))];
        }
        Ok(Err(e)) => return vec![row.not_measured(format!("waiting for it failed: {e}"))],
        Err(_) => return vec![row.not_measured("the measured process did not finish in 60 s")],
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(v) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("P7-RESULT "))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
    else {
        return vec![row.not_measured(format!(
            "the measured process printed no result (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        ))];
    };
    let get = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let (hwm, bound, baseline) = (get("hwm"), get("bound"), get("baseline"));
    if hwm == 0 || bound == 0 {
        // /proc unreadable or a field missing: never a made-up "met".
        return vec![row.not_measured(format!(
            "the measured process reported no peak RSS or bound: {v}"
        ))];
    }
    let limit = bound + 20 * 1024 * 1024;
    let mib = |b: u64| b as f64 / MIB;
    vec![
        row.judged(
            format!("{:.1} MiB peak vs {:.0} MiB bound ({:.1} MiB over)", mib(hwm), mib(bound), mib(hwm) - mib(bound)),
            hwm <= limit,
            format!(
                "{:.1} MiB is over {:.0} MiB: a read is sized by records left (`max_unacked_records`), \
                 not bytes, so one more read (up to 10 MiB on Kinesis) can land on a shard just \
                 under its byte bound; sizing each read by the bytes left would fix it",
                mib(hwm),
                mib(limit)
            ),
        )
        .detail(format!(
            "a fresh process (`kinsumer-bench --p7-child`): one consumer, default settings \
             (max_unacked_bytes {:.0} MiB per shard × {SHARDS} shards = {:.0} MiB bound), \
             on an endless source whose every read returns new 10 KiB records (≤ 10 MiB per \
             read, as GetRecords); the batch handler never returns, so nothing is acked. \
             After {} s: peak RSS (VmHWM) {:.1} MiB, RSS {:.1} MiB, RSS before the consumer \
             started {:.1} MiB; the source produced {:.1} MiB and the consumer fetched {} \
             records ({:.1} MiB) on {} shards.",
            mib(get("per_shard")),
            mib(bound),
            get("seconds"),
            mib(hwm),
            mib(get("rss")),
            mib(baseline),
            mib(get("produced_bytes")),
            get("fetched_records"),
            mib(get("fetched_bytes")),
            get("shards_held"),
        )),
    ]
}
