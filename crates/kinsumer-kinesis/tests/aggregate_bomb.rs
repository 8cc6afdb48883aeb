//! One producer cannot take a consumer's memory past its bound with KPL aggregates (issue #15,
//! item 3). A 1 MB aggregate can hold ~490,000 empty user records; expanded whole, 8 of them
//! took 1.46 GB. The reader now hands out at most the user records asked for, walking an
//! aggregate lazily, and every record is counted at its payload plus a fixed overhead, so the
//! byte bound holds whatever the records look like.
//!
//! This test has a binary of its own: it measures this process's peak resident memory (Linux
//! `VmHWM`, reset through `/proc/self/clear_refs` before each run), which other tests running
//! in parallel would disturb.

use kinsumer_test_env::kinesis_local as common;

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use futures::StreamExt;
use kinsumer_core::position::SequenceNumber;
use kinsumer_core::{Config, Consumer};
use kinsumer_kinesis::kpl::{MAGIC, UserRecords};
use kinsumer_kinesis::{FanOutOptions, KinesisSource};
use kinsumer_testkit::MemoryLeaseStore;
use md5::{Digest, Md5};

const AGGREGATES: u64 = 8;
const USER_RECORDS_PER_AGGREGATE: u64 = 490_000;
/// The allowance over the configured byte bound, for everything that is not a fetched
/// record (one response of the service while it is parsed, the runtime, the allocator).
const ALLOWANCE: u64 = 20 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_bomb_stays_within_the_memory_bound() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let bomb = empty_user_records(USER_RECORDS_PER_AGGREGATE);
    assert!(bomb.len() < 1 << 20, "one record of {} bytes", bomb.len());
    let unpacked = UserRecords::new(
        SequenceNumber::from_u128(1),
        "k".into(),
        bomb.clone().into(),
        0,
    );
    assert!(!unpacked.malformed(), "a valid aggregate");
    assert_eq!(unpacked.count() as u64, USER_RECORDS_PER_AGGREGATE);
    let put = |stream: String| {
        let (client, bomb) = (client.clone(), bomb.clone());
        async move {
            client
                .put_record()
                .stream_name(stream)
                .partition_key("k")
                .data(Blob::new(bomb))
                .send()
                .await
                .expect("PutRecord");
        }
    };
    // Each way of reading in a fresh process: memory an earlier read freed to the allocator,
    // not to the system, would hide what a later one takes.
    for mode in ["polling", "fan-out"] {
        let stream = common::TestStream::create(&client, "bomb", 1).await;
        if mode == "polling" {
            // All there before the first read: the reader sizes its calls itself.
            for _ in 0..AGGREGATES {
                put(stream.name.clone()).await;
            }
        }
        let child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
            .args([CHILD, "--exact", "--ignored", "--nocapture"])
            .env(STREAM_VAR, &stream.name)
            .env(MODE_VAR, mode)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the reading process");
        if mode == "fan-out" {
            // Kinesis pushes a shard's records at 2 MB/s, an event a few MB at most; written
            // while the subscription runs, kinesis-local pushes them as they come too (written
            // before, it pushes all 8 MB in one event, which the SDK decodes in ~3x that).
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            for _ in 0..AGGREGATES {
                put(stream.name.clone()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("the reading process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: the reading process failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let figure = |name: &str| -> u64 {
            stdout
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
                .unwrap_or_else(|| panic!("{mode}: no {name}= in {stdout}"))
        };
        let (delivered, growth, bound) = (figure("delivered"), figure("growth"), figure("bound"));
        eprintln!(
            "aggregate bomb ({mode}): {delivered} user records; peak memory growth {:.1} MiB \
             against a bound of {:.0} MiB + {:.0} MiB",
            growth as f64 / f64::from(1 << 20),
            bound as f64 / f64::from(1 << 20),
            ALLOWANCE as f64 / f64::from(1 << 20),
        );
        assert_eq!(
            delivered,
            AGGREGATES * USER_RECORDS_PER_AGGREGATE,
            "{mode}: every user record, once"
        );
        assert!(
            growth <= bound + ALLOWANCE,
            "{mode}: peak memory grew {growth} bytes, past the bound {bound} + {ALLOWANCE}"
        );
    }
}

/// A KPL aggregate of `n` empty user records under one partition key, written byte by byte
/// (two bytes an entry), so building it allocates nothing else.
fn empty_user_records(n: u64) -> Vec<u8> {
    let mut body = vec![0x0a, 0x01, b'k']; // the partition key table: "k"
    for _ in 0..n {
        body.extend_from_slice(&[0x1a, 0x00]); // an entry: key index 0, no data
    }
    let mut packed = MAGIC.to_vec();
    packed.extend_from_slice(&body);
    packed.extend_from_slice(&Md5::digest(&body));
    packed
}

const CHILD: &str = "one_read_of_the_bomb";
const STREAM_VAR: &str = "KINSUMER_BOMB_STREAM";
const MODE_VAR: &str = "KINSUMER_BOMB_MODE";

/// One read of the stream the test above wrote, in the process it starts for it: prints what
/// it measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by an_aggregate_bomb_stays_within_the_memory_bound, in a process of its own"]
async fn one_read_of_the_bomb() {
    let (Ok(stream), Ok(mode)) = (std::env::var(STREAM_VAR), std::env::var(MODE_VAR)) else {
        panic!("run by an_aggregate_bomb_stays_within_the_memory_bound ({STREAM_VAR}, {MODE_VAR})");
    };
    let endpoint = common::endpoint().expect("the parent found kinesis-local");
    let polling = KinesisSource::new(common::client(&endpoint), stream);
    let (delivered, growth, bound) = match mode.as_str() {
        "fan-out" => {
            let source = polling.with_fan_out(FanOutOptions::new(common::unique_name("bomb")));
            let figures = consume_all(source.clone()).await;
            source
                .deregister_fan_out()
                .await
                .expect("deregister the stream consumer");
            figures
        }
        _ => consume_all(polling).await,
    };
    println!("delivered={delivered} growth={growth} bound={bound}");
}

/// Reads the whole stream with a fresh application, acking each record as it comes; returns
/// the records delivered, how far the peak resident memory rose above where it started, and
/// the byte bound configured.
async fn consume_all(source: KinesisSource) -> (u64, u64, u64) {
    let mut config = Config::new(common::unique_name("bomb-app"));
    // Only the byte bound limits what is fetched: empty records are what it must count.
    config.max_unacked_records = 1_000_000;
    config.poll_interval = Duration::from_millis(50);
    let bound = config.max_unacked_bytes as u64;
    let base = reset_peak_memory();
    let mut consumer = Consumer::new(config, source, MemoryLeaseStore::new()).expect("valid");
    let mut records = consumer.records().expect("start");
    let want = AGGREGATES * USER_RECORDS_PER_AGGREGATE;
    let mut delivered = 0u64;
    let mut last = None;
    let read = tokio::time::timeout(Duration::from_secs(300), async {
        while delivered < want {
            let record = records
                .next()
                .await
                .expect("the stream goes on")
                .expect("no error");
            let position = record.position().clone();
            if let Some(prev) = &last {
                assert!(
                    position > *prev,
                    "in order, each once: {prev} then {position}"
                );
            }
            last = Some(position);
            record.ack();
            delivered += 1;
        }
    })
    .await;
    let growth = peak_memory().saturating_sub(base);
    consumer.shutdown().await.expect("clean shutdown");
    read.unwrap_or_else(|_| panic!("{delivered} of {want} records in 300 s"));
    (delivered, growth, bound)
}

/// Resets this process's peak resident memory to its current one and returns it (bytes).
fn reset_peak_memory() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM (Linux)");
    status_kib("VmRSS:") * 1024
}

/// This process's peak resident memory since the last reset (bytes).
fn peak_memory() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}
