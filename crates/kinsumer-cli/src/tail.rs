//! `kinsumer tail`: print a stream's records as they arrive, without a store or leases.
//!
//! Every shard of the listing (or each `--shard`) is read by its own task from `--from`
//! (default `latest`), at most 5 reads a second per shard as Kinesis allows (shared with the
//! stream's consumers). When a shard ends (a split or merge), its children are read from their
//! start, since everything in them is new; the stream is also listed again every 10 s for
//! shards that appear otherwise — with `--shard`, only children of the chosen shards. Records
//! of one shard come in order; records of different shards interleave, and a child's records
//! may come before its parent's last ones (tail does not wait for parents as a consumer does).
//!
//! Records go to stdout, one line each, flushed per batch; everything else goes to stderr.
//! - `text`: `SHARD SEQUENCE[/SUB] PARTITION-KEY DATA`, the data as UTF-8 (invalid bytes as
//!   U+FFFD) with control characters escaped (`\n`, `\t`, `\u{1b}`), so one record is one line;
//! - `hex`: the same with the data in lowercase hex;
//! - `json`: one object per line: `shard`, `sequence` (a string: it exceeds 64 bits),
//!   `sub_sequence`, `partition_key`, `explicit_hash_key` (string or null), `arrival_ms`,
//!   `arrival` (RFC 3339), `data` and `data_encoding` — `utf8` when the data is valid UTF-8
//!   (then `data` is that text), `base64` otherwise (standard alphabet, padded).
//!
//! It stops after `--limit` records, after `--idle-exit` seconds with no new record (counted
//! from when every shard was read once, so a slow start does not cut a dump short), on Ctrl-C,
//! or when stdout is closed (`| head`). Exit codes: 0, or 1 when a shard could not be read
//! (the other shards are still printed), 2 when the stream cannot be listed at the start.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use kinsumer::backoff::{Backoff, BackoffPolicy};
use kinsumer::kinesis::KinesisSource;
use kinsumer::{Checkpoint, ShardId, ShardSource, SourceRecord};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Result;
use crate::backends::{
    SourceUrl, StartAt, brief, checkpoint_text, format_rfc3339, open_source, parse_seconds,
};

/// The least time between two reads of one shard (Kinesis allows 5 per second per shard).
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the stream is listed again to find new shards.
const RELIST_INTERVAL: Duration = Duration::from_secs(10);
/// The most records one read asks for.
const READ_MAX: usize = 1_000;
/// A source call that takes longer is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause after repeated errors on one shard.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How records are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `SHARD SEQUENCE KEY DATA`, data as UTF-8 with control characters escaped.
    Text,
    /// `SHARD SEQUENCE KEY HEX`.
    Hex,
    /// One JSON object per line.
    Json,
}

/// Examples and exit codes at the end of `kinsumer tail --help`.
const AFTER_HELP: &str = "\
Examples:
  kinsumer tail --source 'kinesis://orders?region=eu-west-1'
  kinsumer tail --source 'kinesis://orders?endpoint=http://127.0.0.1:4567&region=us-east-1' \\
      --from trim-horizon --format json --limit 100
  kinsumer tail --source kinesis://orders --shard shardId-000000000000 \\
      --from sequence:49590338271490256608559692538361571095921575989136588898 --format hex
  kinsumer tail --source kinesis://orders --from timestamp:2026-11-26T07:00:00Z --idle-exit 10

Records go to stdout, one per line; progress to stderr. text: SHARD SEQUENCE KEY DATA (control
characters escaped); hex: the data in hex; json: shard, sequence, sub_sequence, partition_key,
explicit_hash_key, arrival_ms, arrival, data, data_encoding (utf8, or base64 when the data is
not UTF-8). New shards (after a split or merge) are found every 10 s and read from their start.

Exit codes: 0 stopped (--limit, --idle-exit, Ctrl-C, closed stdout); 1 a shard could not be
read, or no such --shard; 2 bad usage or the stream cannot be listed.";

/// Flags of `kinsumer tail`.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct TailArgs {
    /// The stream: kinesis://STREAM?region=R[&endpoint=URL] (or kinesis://ARN).
    #[arg(long, value_name = "URL")]
    pub source: SourceUrl,
    /// Where to start: trim-horizon, latest, timestamp:RFC3339 or sequence:N (the records
    /// after N; needs exactly one --shard).
    #[arg(long, value_name = "POSITION", default_value = "latest")]
    pub from: StartAt,
    /// A shard to read (repeatable); default every shard.
    #[arg(long = "shard", value_name = "ID")]
    pub shards: Vec<String>,
    /// How records are printed.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Stop after this many seconds without a new record (counted once every shard was read).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub idle_exit: Option<Duration>,
}

/// What a shard's reader task reports.
enum Event {
    /// The first read of a shard found nothing (yet).
    Empty(ShardId),
    Records(ShardId, Vec<SourceRecord>),
    Ended(ShardId, Vec<ShardId>),
    Failed(ShardId, String),
}

impl Event {
    fn shard(&self) -> &ShardId {
        match self {
            Event::Empty(shard)
            | Event::Records(shard, _)
            | Event::Ended(shard, _)
            | Event::Failed(shard, _) => shard,
        }
    }
}

/// Runs `kinsumer tail`; an error (exit 2) is one readable line.
pub async fn run(args: TailArgs) -> Result<i32> {
    execute(args)
        .await
        .map_err(|e| brief(&e.to_string()).into())
}

async fn execute(args: TailArgs) -> Result<i32> {
    if args.from.is_sequence() && args.shards.len() != 1 {
        return Err(
            "--from sequence:N names one record, which lives in one shard: use it with one --shard"
                .into(),
        );
    }
    let source = Arc::new(open_source(&args.source).await?);
    let stream = source.stream_name().to_owned();
    let listing = tokio::time::timeout(CALL_TIMEOUT, source.list_shards())
        .await
        .map_err(|_| {
            format!(
                "cannot list the shards of stream {stream}: no answer in {} s",
                CALL_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot list the shards of stream {stream}: {e}"))?;
    let chosen: Vec<ShardId> = if args.shards.is_empty() {
        listing.iter().map(|s| s.id.clone()).collect()
    } else {
        let mut chosen = Vec::new();
        for id in &args.shards {
            if !listing.iter().any(|s| s.id.as_str() == id) {
                let known: Vec<&str> = listing.iter().map(|s| s.id.as_str()).collect();
                note!(
                    "kinsumer: stream {stream} has no shard {id} (shards: {})",
                    known.join(", ")
                );
                return Ok(1);
            }
            chosen.push(ShardId::from(id.as_str()));
        }
        chosen
    };
    if args.limit == Some(0) {
        return Ok(0);
    }

    let (tx, mut rx) = mpsc::channel(64);
    let mut readers = Readers {
        source: source.clone(),
        events: tx,
        tasks: JoinSet::new(),
        tailed: BTreeSet::new(),
        unread: BTreeSet::new(),
    };
    let from = args.from.checkpoint();
    for shard in chosen {
        readers.start(shard, &from);
    }
    note!(
        "tailing stream {stream}: {} shard(s) from {}; Ctrl-C to stop",
        readers.tailed.len(),
        checkpoint_text(Some(&from))
    );

    let mut progress = Progress {
        printed: 0,
        failures: 0,
        quiet_since: Instant::now(),
    };
    let mut relist = tokio::time::interval_at(Instant::now() + RELIST_INTERVAL, RELIST_INTERVAL);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Idle time counts from the last record, or from when every shard was first read: a
        // slow start does not cut a `--from trim-horizon --idle-exit` dump short.
        let idle = async {
            match args.idle_exit {
                Some(idle) if readers.unread.is_empty() => {
                    tokio::time::sleep_until(progress.quiet_since + idle).await;
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            event = rx.recv() => {
                // `readers` holds a sender, so the channel never closes.
                let Some(event) = event else { break };
                match on_event(event, &args, &mut readers, &mut progress) {
                    Ok(Flow::Go) => {}
                    Ok(Flow::Stop) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    Err(e) => return Err(e.into()),
                }
            }
            _ = relist.tick() => {
                let listing = tokio::time::timeout(CALL_TIMEOUT, source.list_shards()).await;
                let Ok(Ok(shards)) = listing else {
                    continue; // listed again at the next tick
                };
                for info in shards {
                    let follow = args.shards.is_empty()
                        || info.parents.iter().any(|p| readers.tailed.contains(p));
                    if follow && readers.start(info.id.clone(), &Checkpoint::TrimHorizon) {
                        let parents: Vec<String> =
                            info.parents.iter().map(ToString::to_string).collect();
                        note!(
                            "new shard {} (parents: {}): reading from its start",
                            info.id,
                            parents.join(", ")
                        );
                    }
                }
            }
            _ = idle => {
                let idle = args.idle_exit.unwrap_or_default().as_secs_f64();
                note!("no new record for {idle:.1} s (--idle-exit): stopping");
                break;
            }
        }
    }
    readers.tasks.abort_all();
    note!("{} record(s)", progress.printed);
    Ok(if progress.failures > 0 { 1 } else { 0 })
}

/// What the run has done so far.
struct Progress {
    printed: u64,
    /// Shards that stopped on an error.
    failures: usize,
    /// When the last record came (or every shard was first read).
    quiet_since: Instant,
}

/// Whether to go on after an event.
enum Flow {
    Go,
    Stop,
}

/// Prints what a reader sent, starts the children of a shard that ended; `Err` only for a
/// failed write to stdout.
fn on_event(
    event: Event,
    args: &TailArgs,
    readers: &mut Readers,
    progress: &mut Progress,
) -> std::io::Result<Flow> {
    if readers.unread.remove(event.shard()) && readers.unread.is_empty() {
        progress.quiet_since = Instant::now();
    }
    match event {
        Event::Empty(_) => {}
        Event::Records(shard, records) => {
            let room = args.limit.map_or(u64::MAX, |l| l - progress.printed);
            let take = records
                .len()
                .min(usize::try_from(room).unwrap_or(usize::MAX));
            write_records(args.format, &shard, &records[..take])?;
            progress.printed += take as u64;
            progress.quiet_since = Instant::now();
            if args.limit.is_some_and(|l| progress.printed >= l) {
                return Ok(Flow::Stop);
            }
        }
        Event::Ended(shard, children) => {
            if children.is_empty() {
                note!("shard {shard} ended");
            }
            // Children are read at once, not at the next listing.
            for child in children {
                if readers.start(child.clone(), &Checkpoint::TrimHorizon) {
                    note!("shard {shard} ended: reading child {child} from its start");
                }
            }
        }
        Event::Failed(shard, why) => {
            progress.failures += 1;
            note!("kinsumer: shard {shard} stopped: {why}");
        }
    }
    Ok(Flow::Go)
}

/// The shard reader tasks, and which shards have one.
struct Readers {
    source: Arc<KinesisSource>,
    events: mpsc::Sender<Event>,
    tasks: JoinSet<()>,
    tailed: BTreeSet<ShardId>,
    /// Shards started but not heard from yet.
    unread: BTreeSet<ShardId>,
}

impl Readers {
    /// Starts reading `shard` at `from` unless it is read already; whether it was started.
    fn start(&mut self, shard: ShardId, from: &Checkpoint) -> bool {
        if !self.tailed.insert(shard.clone()) {
            return false;
        }
        self.unread.insert(shard.clone());
        let task = read_shard(
            self.source.clone(),
            shard,
            from.clone(),
            self.events.clone(),
        );
        self.tasks.spawn(task);
        true
    }
}

/// Reads `shard` from `from` until it ends or fails for good, sending what it reads.
async fn read_shard(
    source: Arc<KinesisSource>,
    shard: ShardId,
    from: Checkpoint,
    events: mpsc::Sender<Event>,
) {
    let mut reader = None;
    let mut backoff = Backoff::from_os_seed(BackoffPolicy::new(POLL_INTERVAL, MAX_BACKOFF));
    let mut failures = 0;
    let mut first = true;
    loop {
        // Open the shard, then read it: each call limited, retried alike.
        let called = match reader.as_mut() {
            None => tokio::time::timeout(CALL_TIMEOUT, source.open(&shard, &from))
                .await
                .map(|opened| opened.map(|opened| reader = Some(opened)).map(|()| None)),
            Some(open) => tokio::time::timeout(CALL_TIMEOUT, open.next_batch(READ_MAX))
                .await
                .map(|read| read.map(Some)),
        };
        let batch = match called {
            Ok(Ok(Some(batch))) => batch,
            Ok(Ok(None)) => continue, // opened
            Ok(Err(e)) if !e.is_retryable() => {
                let _ = events
                    .send(Event::Failed(shard, brief(&e.to_string())))
                    .await;
                return;
            }
            Ok(Err(_)) | Err(_) => {
                tokio::time::sleep(backoff.delay(failures)).await;
                failures += 1;
                continue;
            }
        };
        failures = 0;
        if batch.records.is_empty()
            && std::mem::take(&mut first)
            && events.send(Event::Empty(shard.clone())).await.is_err()
        {
            return;
        }
        first = false;
        if !batch.records.is_empty()
            && events
                .send(Event::Records(shard.clone(), batch.records))
                .await
                .is_err()
        {
            return;
        }
        if let Some(children) = batch.end {
            let _ = events.send(Event::Ended(shard, children)).await;
            return;
        }
        // More already read (the rest of an aggregate's records): no call to pace.
        if !batch.more_ready {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// One `--format json` line.
#[derive(Serialize)]
struct JsonRecord<'a> {
    shard: &'a str,
    sequence: &'a str,
    sub_sequence: u64,
    partition_key: &'a str,
    explicit_hash_key: Option<String>,
    arrival_ms: u64,
    arrival: String,
    data: String,
    data_encoding: &'static str,
}

fn write_records(format: Format, shard: &ShardId, records: &[SourceRecord]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for record in records {
        let line = render(format, shard, record);
        out.write_all(line.as_bytes())?;
    }
    out.flush()
}

/// One record as one line (with its newline).
fn render(format: Format, shard: &ShardId, record: &SourceRecord) -> String {
    let position = if record.position.sub_sequence == 0 {
        record.position.sequence.to_string()
    } else {
        record.position.to_string()
    };
    match format {
        Format::Text => format!(
            "{shard} {position} {} {}\n",
            escape(&record.partition_key),
            escape(&String::from_utf8_lossy(&record.data))
        ),
        Format::Hex => {
            let hex: String = record.data.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{shard} {position} {} {hex}\n",
                escape(&record.partition_key)
            )
        }
        Format::Json => {
            let (data, data_encoding) = match std::str::from_utf8(&record.data) {
                Ok(text) => (text.to_owned(), "utf8"),
                Err(_) => (base64(&record.data), "base64"),
            };
            let line = JsonRecord {
                shard: shard.as_str(),
                sequence: record.position.sequence.as_str(),
                sub_sequence: record.position.sub_sequence,
                partition_key: &record.partition_key,
                explicit_hash_key: record.explicit_hash_key.map(|k| k.to_string()),
                arrival_ms: record.arrival_ms,
                arrival: format_rfc3339(record.arrival_ms),
                data,
                data_encoding,
            };
            // Serializing strings and numbers cannot fail.
            serde_json::to_string(&line).unwrap_or_default() + "\n"
        }
    }
}

/// `text` with control characters escaped, so a record stays on one line.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kinsumer::{Position, SequenceNumber};

    fn record(data: &[u8], sub: u64) -> SourceRecord {
        SourceRecord {
            data: Bytes::copy_from_slice(data),
            partition_key: "k\t1".into(),
            explicit_hash_key: None,
            position: Position::new(SequenceNumber::from_u128(42), sub),
            arrival_ms: 1_795_676_400_000,
        }
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn every_format_is_one_line() {
        let shard = ShardId::from("shardId-0");
        let r = record(b"line 1\nline 2 \xff", 0);
        assert_eq!(
            render(Format::Text, &shard, &r),
            "shardId-0 42 k\\t1 line 1\\nline 2 \u{fffd}\n"
        );
        assert_eq!(
            render(Format::Hex, &shard, &record(b"\x00\xab", 3)),
            "shardId-0 42/3 k\\t1 00ab\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(render(Format::Json, &shard, &r).trim_end()).unwrap();
        assert_eq!(json["sequence"], "42");
        assert_eq!(json["data_encoding"], "base64");
        assert_eq!(json["arrival"], "2026-11-26T07:00:00.000Z");
        let json: serde_json::Value =
            serde_json::from_str(render(Format::Json, &shard, &record(b"hi", 0)).trim_end())
                .unwrap();
        assert_eq!(
            (json["data"].as_str(), json["data_encoding"].as_str()),
            (Some("hi"), Some("utf8"))
        );
    }
}
