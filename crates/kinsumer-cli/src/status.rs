//! `kinsumer status`: an application's clients and leases, as the store holds them.
//!
//! - **Clients.** The store keeps no times, only heartbeat counters (see the core's
//!   `membership`), so liveness can only be *observed*: status reads the client rows for
//!   `--sample` seconds (every 250 ms) and reports, per client, how long ago this process saw
//!   its counter change — or that it did not see it change at all (a dead client, or one whose
//!   heartbeat interval is longer than the sample). This is the engine's own method, on the
//!   observer's clock, so clock skew between hosts does not matter.
//! - **Shards.** Leases are kept per stream, and the store cannot list streams: they come from
//!   `--stream` or from `--source`'s stream. An owner with no client row is marked `(gone)`:
//!   it deregistered or its row was removed, and the engine will hand the lease on.
//! - **Behind the tip** (with `--source`): for each unfinished lease with a checkpoint, status
//!   reads the shard from the checkpoint, as the next owner would, and counts the records
//!   there — up to [`BEHIND_CAP`] per shard (then it says `≥10000`) and at most
//!   [`MAX_READS_PER_SHARD`] GetRecords calls, 200 ms apart. It also reports how long ago the
//!   oldest unprocessed record arrived (the source's arrival time against this host's clock).
//!   These reads count against the shard's read limit (5 per second, shared with the
//!   consumers); nothing is written. The source's `millis_behind_latest` is not used: it tells
//!   how far the *end of a read* is from the tip, not how much lies after the checkpoint.
//! - **Stalls** (with `--source`): a shard whose oldest unprocessed record arrived longer ago
//!   than `--stall-after` (default 300 s, the consumers' default `stall_timeout`; 0 turns the
//!   check off) is flagged `STALLED?` (JSON `behind.stalled`), named in a `PROBLEM:` line and
//!   counted as a problem (exit 1). Status cannot see inside a process, so this is the
//!   symptom only: the owner's application is hung or does not poll its record stream (a
//!   consumer with `stall_timeout` gives such a shard up, and `StatusHandle::stalls` and
//!   `kinsumer_stalls_total` say why), or it is that far behind; an unowned shard is read by
//!   no consumer at all.
//!
//! `--json` prints one document (with `--watch`, one per refresh, one per line); its shape is
//! the `Json*` structs below and only grows. `--watch` keeps observing between refreshes, so
//! heartbeat ages stay honest across them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kinsumer::kinesis::KinesisSource;
use kinsumer::{
    Checkpoint, ClientId, ClientRow, CorruptRow, Lease, LeaseStore, ShardId, ShardInfo, ShardSource,
};
use serde::Serialize;

use crate::Result;
use crate::backends::{
    Access, SourceUrl, StoreUrl, brief, checkpoint_text, open_source, open_store, parse_seconds,
};

/// Records counted behind a checkpoint before status stops counting (and prints `≥`).
pub const BEHIND_CAP: usize = 10_000;
/// The most GetRecords calls status makes on one shard.
pub const MAX_READS_PER_SHARD: usize = 5;
/// How often client rows are re-read while sampling.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A source call that takes longer counts as failed (for that shard only).
const SOURCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shards read at the same time when measuring how far behind they are.
const PARALLEL_SHARDS: usize = 8;

/// Examples and exit codes at the end of `kinsumer status --help`.
const AFTER_HELP: &str = "\
Examples:
  kinsumer status --store redis://127.0.0.1:6379 --app billing --stream orders
  kinsumer status --store postgres://user:pass@db:5432/kinsumer --app billing \\
      --source 'kinesis://orders?region=eu-west-1'
  kinsumer status --store 'dynamodb://leases?region=eu-west-1' --app billing --stream orders --json
  kinsumer status --store redis://127.0.0.1:6379 --app billing --stream orders --watch 5

Heartbeat ages are what this command observed while watching the counters (--sample); a client
whose counter did not change is shown as '> N s (not seen to change)'. An owner marked (gone)
has no client row. BEHIND TIP (with --source) counts the records after each checkpoint with
GetRecords, up to 10000 per shard (then '≥10000'), and the age of the oldest of them. A shard
whose oldest unprocessed record arrived more than --stall-after seconds ago (default 300, the
consumers' default stall_timeout; 0: never) is marked 'STALLED?' and named under PROBLEM: its
owner is hung, not polling its records, or that far behind.

Exit codes: 0 shown; 1 a row that does not decode, or a shard marked STALLED?; 2 bad usage, an
unreachable store, or a --source stream that cannot be listed.";

/// Flags of `kinsumer status`.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct StatusArgs {
    /// The lease store: memory://, redis://HOST:PORT, postgres://USER:PASS@HOST/DB[?schema=S],
    /// dynamodb://TABLE?region=R[&endpoint=URL].
    #[arg(long, value_name = "URL")]
    pub store: StoreUrl,
    /// The application (the consumers' `Config::application`).
    #[arg(long, value_name = "APP")]
    pub app: String,
    /// A stream whose leases to show (repeatable). Defaults to --source's stream.
    #[arg(long = "stream", value_name = "NAME")]
    pub streams: Vec<String>,
    /// The stream as a source (kinesis://STREAM?region=R[&endpoint=URL]): adds how far behind
    /// the tip each shard is, and the stream's shards that have no lease yet.
    #[arg(long, value_name = "URL")]
    pub source: Option<SourceUrl>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) until Ctrl-C.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = parse_seconds
    )]
    pub watch: Option<Duration>,
    /// How long to watch heartbeat counters before the first report.
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_seconds)]
    pub sample: Duration,
    /// With --source: flag a shard whose oldest unprocessed record arrived longer ago than
    /// this (STALLED?, exit 1). The default is the consumers' default stall_timeout; 0 turns
    /// the check off.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_seconds)]
    pub stall_after: Duration,
}

/// Runs `kinsumer status`; an error (exit 2) is one readable line.
pub async fn run(args: StatusArgs) -> Result<i32> {
    execute(args)
        .await
        .map_err(|e| brief(&e.to_string()).into())
}

async fn execute(args: StatusArgs) -> Result<i32> {
    let store = open_store(&args.store, &args.app, Access::Existing).await?;
    let source = match &args.source {
        Some(url) => Some(open_source(url).await?),
        None => None,
    };
    let mut streams = args.streams.clone();
    if let Some(url) = &args.source
        && !streams.iter().any(|s| s == url.stream_name())
    {
        streams.push(url.stream_name().to_owned());
    }
    let context = Context {
        app: args.app.clone(),
        store_url: args.store.to_string(),
        store,
        source,
        streams,
        stall_after: Some(args.stall_after).filter(|d| !d.is_zero()),
    };

    let mut observer = Observer::default();
    if !args.json && !args.sample.is_zero() {
        note!(
            "watching heartbeats for {:.1} s (--sample)…",
            args.sample.as_secs_f64()
        );
    }
    observer.sample(&*context.store, args.sample).await?;
    let Some(every) = args.watch else {
        let report = context.report(&observer).await?;
        // A stream that cannot be listed is exit 2, a row no consumer can use exit 1 (the
        // README's table).
        let code = if report.streams.iter().any(|s| s.listing_error.is_some()) {
            2
        } else {
            i32::from(report.problems() > 0)
        };
        return match emit(&text(&report, args.json)?) {
            // `status | head`: the reader has seen what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(code),
            other => other.map(|()| code).map_err(Into::into),
        };
    };

    // Watch: report, then keep observing for `every`, until Ctrl-C. A store that fails during a
    // watch is shown as such and retried; it only ends the command before the first report.
    let mut last_error = None;
    loop {
        // Ctrl-C ends the watch whatever it is doing (a refresh against a slow store included):
        // once listened for, SIGINT no longer ends the process by itself.
        let report = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            report = context.report(&observer) => report,
        };
        match report {
            Ok(report) => {
                let screen = if args.json {
                    text(&report, true)?
                } else {
                    // Clear the screen and go home, as `watch(1)` does.
                    format!(
                        "\x1b[2J\x1b[H{}\nrefreshing every {:.1} s; Ctrl-C to stop\n",
                        text(&report, false)?,
                        every.as_secs_f64()
                    )
                };
                match emit(&screen) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
                    other => other?,
                }
                last_error = None;
            }
            Err(e) => {
                let error = brief(&e.to_string());
                if last_error.as_ref() != Some(&error) {
                    note!("kinsumer: {error} (retrying)");
                }
                last_error = Some(error);
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            result = observer.sample(&*context.store, every.max(SAMPLE_EVERY)) => {
                if let Err(e) = result {
                    note!("kinsumer: {} (retrying)", brief(&e.to_string()));
                }
            }
        }
    }
}

/// What one report needs besides the observations.
struct Context {
    app: String,
    /// Redacted.
    store_url: String,
    store: Arc<dyn LeaseStore>,
    source: Option<KinesisSource>,
    streams: Vec<String>,
    /// `--stall-after`; `None` when it is 0 (no shard is flagged).
    stall_after: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Observing heartbeats.

/// Client rows as this process saw them over time.
#[derive(Default)]
struct Observer {
    /// When the first read was made.
    started: Option<Instant>,
    seen: BTreeMap<ClientId, Seen>,
    /// The latest rows read, in the store's order.
    rows: Vec<ClientRow>,
    /// The rows of the latest read that do not decode.
    corrupt: Vec<CorruptRow>,
}

struct Seen {
    counter: u64,
    first_seen: Instant,
    /// When the counter was last seen to change; `None` if it has not been.
    changed_at: Option<Instant>,
}

impl Observer {
    /// Reads the client rows now, then every 250 ms for `duration` after that first answer (so
    /// a slow store is still watched that long, and read at least twice).
    async fn sample(&mut self, store: &dyn LeaseStore, duration: Duration) -> Result<()> {
        let read = store.clients().await?;
        self.corrupt = read.corrupt;
        self.observe(read.rows, Instant::now());
        let end = Instant::now() + duration;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(SAMPLE_EVERY)).await;
            let read = store.clients().await?;
            self.corrupt = read.corrupt;
            self.observe(read.rows, Instant::now());
        }
    }

    fn observe(&mut self, rows: Vec<ClientRow>, now: Instant) {
        self.started.get_or_insert(now);
        for row in &rows {
            match self.seen.get_mut(&row.id) {
                Some(seen) if seen.counter != row.counter => {
                    seen.counter = row.counter;
                    seen.changed_at = Some(now);
                }
                Some(_) => {}
                None => {
                    self.seen.insert(
                        row.id.clone(),
                        Seen {
                            counter: row.counter,
                            first_seen: now,
                            changed_at: None,
                        },
                    );
                }
            }
        }
        let present: BTreeSet<&ClientId> = rows.iter().map(|r| &r.id).collect();
        self.seen.retain(|id, _| present.contains(id));
        self.rows = rows;
    }

    /// How long ago `id`'s counter was seen to change (`None`: it was not), and how long it
    /// has been watched.
    fn heartbeat(&self, id: &ClientId, now: Instant) -> (Option<Duration>, Duration) {
        match self.seen.get(id) {
            Some(seen) => (
                seen.changed_at.map(|at| now.duration_since(at)),
                now.duration_since(seen.first_seen),
            ),
            None => (None, Duration::ZERO),
        }
    }

    /// How long this process has been reading client rows.
    fn observed(&self, now: Instant) -> Duration {
        self.started
            .map_or(Duration::ZERO, |t| now.duration_since(t))
    }

    fn has_row(&self, id: &ClientId) -> bool {
        self.seen.contains_key(id)
    }
}

// ---------------------------------------------------------------------------------------------
// The report, as JSON (its shape is the stable interface for scripts).

/// `kinsumer status --json`.
#[derive(Serialize)]
struct JsonReport {
    application: String,
    /// The store URL without credentials.
    store: String,
    /// How long heartbeats were watched before this report (ms).
    observed_ms: u64,
    /// `--stall-after` (ms): with --source, a shard whose oldest unprocessed record is older
    /// is `behind.stalled`; `null` when the check is off (`--stall-after 0`).
    stall_after_ms: Option<u64>,
    clients: Vec<JsonClient>,
    /// Client rows that do not decode (the consumers count such a client as having no row).
    corrupt_clients: Vec<JsonCorrupt>,
    /// One entry per stream shown (empty when no stream was named).
    streams: Vec<JsonStream>,
}

impl JsonReport {
    /// How many rows no consumer can use, and shards flagged as stalled.
    fn problems(&self) -> usize {
        self.corrupt_clients.len()
            + self
                .streams
                .iter()
                .map(|s| s.corrupt.len() + s.stalled().count())
                .sum::<usize>()
    }
}

/// Renders rows that do not decode under `title`.
fn render_corrupt(title: &str, rows: &[JsonCorrupt]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r.key.clone(), r.reason.clone()])
        .collect();
    format!("{title}\n{}", table(&["ROW", "WHAT IS WRONG"], &cells))
}

/// A row that does not decode: every consumer sets it aside until it is repaired.
#[derive(Serialize)]
struct JsonCorrupt {
    /// The store's key of the row.
    key: String,
    /// The shard or client it is of, if that much could be read.
    id: Option<String>,
    /// What is wrong with it.
    reason: String,
}

impl From<&CorruptRow> for JsonCorrupt {
    fn from(row: &CorruptRow) -> Self {
        Self {
            key: row.key.clone(),
            id: row.id.clone(),
            reason: row.reason.clone(),
        }
    }
}

#[derive(Serialize)]
struct JsonClient {
    id: String,
    counter: u64,
    /// Time since this process saw the counter change; `null` if it was not seen to change.
    heartbeat_age_ms: Option<u64>,
    /// How long this process has watched the counter.
    watched_ms: u64,
    /// Leases held in the streams shown.
    leases: usize,
    /// A watching client judged it dead at the value its row still holds (its leases are
    /// taken over; its next heartbeat makes it alive again).
    judged_dead: bool,
}

#[derive(Serialize)]
struct JsonStream {
    stream: String,
    /// Why the stream's shards could not be listed (with --source), if they could not.
    listing_error: Option<String>,
    shards: Vec<JsonShard>,
    /// Lease rows that do not decode: their shards are not read until they are repaired.
    corrupt: Vec<JsonCorrupt>,
}

impl JsonStream {
    /// The shards flagged as stalled (`behind.stalled`).
    fn stalled(&self) -> impl Iterator<Item = &JsonShard> {
        self.shards
            .iter()
            .filter(|s| s.behind.as_ref().is_some_and(|b| b.stalled))
    }
}

#[derive(Serialize)]
struct JsonShard {
    shard: String,
    /// `false` for a shard of the stream that has no lease row yet (only with --source).
    has_lease: bool,
    owner: Option<String>,
    /// `false` when the owner has no client row (it left or was removed): `(gone)` in tables.
    owner_has_client_row: Option<bool>,
    token: Option<u64>,
    /// The stored text form (`AFTER:<sequence>/<sub>`, `TRIM_HORIZON`, …); `null` if none.
    checkpoint: Option<String>,
    finished: bool,
    parents: Vec<String>,
    /// The client the last release handed this lease to (`null`: none named); shown as
    /// `- (to worker-2)` in tables while the lease is free.
    successor: Option<String>,
    /// With --source: whether the listing has this shard (`null` without --source).
    in_stream: Option<bool>,
    /// With --source: whether the shard is open (`null` if unknown).
    open: Option<bool>,
    /// With --source, for unfinished leases with a checkpoint.
    behind: Option<JsonBehind>,
}

#[derive(Serialize, Clone)]
struct JsonBehind {
    /// Records after the checkpoint, counted up to 10,000.
    records: usize,
    /// `true` when counting stopped early: there are at least `records`.
    at_least: bool,
    /// How long ago the first record after the checkpoint arrived; `null` if none.
    oldest_unprocessed_age_ms: Option<u64>,
    /// Why the shard could not be read from its checkpoint (then the counts are 0).
    error: Option<String>,
    /// Whether the oldest unprocessed record arrived longer ago than `--stall-after`: the
    /// owner is hung, not polling, or that far behind (`STALLED?` in tables; exit 1).
    stalled: bool,
}

impl Context {
    async fn report(&self, observer: &Observer) -> Result<JsonReport> {
        let now = Instant::now();
        let mut streams = Vec::new();
        for stream in &self.streams {
            streams.push(self.stream(stream, observer).await?);
        }
        let mut held: BTreeMap<&str, usize> = BTreeMap::new();
        for shard in streams.iter().flat_map(|s| &s.shards) {
            if let Some(owner) = &shard.owner {
                *held.entry(owner.as_str()).or_default() += 1;
            }
        }
        let mut rows: Vec<&ClientRow> = observer.rows.iter().collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        let clients = rows
            .into_iter()
            .map(|row| {
                let (age, watched) = observer.heartbeat(&row.id, now);
                JsonClient {
                    id: row.id.to_string(),
                    counter: row.counter,
                    heartbeat_age_ms: age.map(ms),
                    watched_ms: ms(watched),
                    leases: held.get(row.id.as_str()).copied().unwrap_or(0),
                    judged_dead: row.is_judged_dead(),
                }
            })
            .collect();
        Ok(JsonReport {
            application: self.app.clone(),
            store: self.store_url.clone(),
            observed_ms: ms(observer.observed(now)),
            stall_after_ms: self.stall_after.map(ms),
            clients,
            corrupt_clients: observer.corrupt.iter().map(JsonCorrupt::from).collect(),
            streams,
        })
    }

    async fn stream(&self, stream: &str, observer: &Observer) -> Result<JsonStream> {
        let read = self.store.leases(stream).await?;
        let mut leases = read.rows;
        leases.sort_by(|a, b| a.shard.cmp(&b.shard));
        let corrupt = read.corrupt.iter().map(JsonCorrupt::from).collect();
        let source = self.source.as_ref().filter(|s| s.stream_name() == stream);
        let listing = match source {
            Some(source) => Some(list_shards(source).await),
            None => None,
        };
        let (listed, listing_error): (Option<BTreeMap<ShardId, ShardInfo>>, _) = match listing {
            Some(Ok(shards)) => (
                Some(shards.into_iter().map(|s| (s.id.clone(), s)).collect()),
                None,
            ),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };

        let mut shards: Vec<JsonShard> = leases
            .iter()
            .map(|lease| shard_row(lease, observer, listed.as_ref()))
            .collect();
        if let Some(listed) = &listed {
            let leased: BTreeSet<&ShardId> = leases.iter().map(|l| &l.shard).collect();
            for info in listed.values().filter(|s| !leased.contains(&s.id)) {
                shards.push(JsonShard {
                    shard: info.id.to_string(),
                    has_lease: false,
                    owner: None,
                    owner_has_client_row: None,
                    token: None,
                    checkpoint: None,
                    finished: false,
                    parents: info.parents.iter().map(ToString::to_string).collect(),
                    successor: None,
                    in_stream: Some(true),
                    open: Some(info.open),
                    behind: None,
                });
            }
            shards.sort_by(|a, b| a.shard.cmp(&b.shard));
        }

        if let (Some(source), Some(listed)) = (source, &listed) {
            let now_ms = source.now_ms();
            let wanted: Vec<(usize, ShardId, Checkpoint)> = leases
                .iter()
                .filter(|l| !l.finished && listed.contains_key(&l.shard))
                .filter_map(|l| {
                    let index = shards.iter().position(|s| s.shard == l.shard.as_str())?;
                    Some((index, l.shard.clone(), l.checkpoint.clone()?))
                })
                .collect();
            let measured: Vec<(usize, JsonBehind)> = futures::stream::iter(wanted)
                .map(|(index, shard, checkpoint)| async move {
                    (index, behind(source, &shard, &checkpoint, now_ms).await)
                })
                .buffer_unordered(PARALLEL_SHARDS)
                .collect()
                .await;
            for (index, mut behind) in measured {
                behind.stalled = is_stalled(&behind, self.stall_after);
                shards[index].behind = Some(behind);
            }
        }
        Ok(JsonStream {
            stream: stream.to_owned(),
            listing_error,
            shards,
            corrupt,
        })
    }
}

fn shard_row(
    lease: &Lease,
    observer: &Observer,
    listed: Option<&BTreeMap<ShardId, ShardInfo>>,
) -> JsonShard {
    let info = listed.and_then(|l| l.get(&lease.shard));
    JsonShard {
        shard: lease.shard.to_string(),
        has_lease: true,
        owner: lease.owner.as_ref().map(ToString::to_string),
        owner_has_client_row: lease.owner.as_ref().map(|o| observer.has_row(o)),
        token: Some(lease.token),
        checkpoint: lease.checkpoint.as_ref().map(ToString::to_string),
        finished: lease.finished,
        parents: lease.parents.iter().map(ToString::to_string).collect(),
        successor: lease.successor.as_ref().map(ToString::to_string),
        in_stream: listed.map(|_| info.is_some()),
        open: info.map(|i| i.open),
        behind: None,
    }
}

/// Whether `behind`'s oldest unprocessed record has waited longer than `stall_after`.
fn is_stalled(behind: &JsonBehind, stall_after: Option<Duration>) -> bool {
    match (behind.oldest_unprocessed_age_ms, stall_after) {
        (Some(age), Some(limit)) => behind.error.is_none() && age > ms(limit),
        _ => false,
    }
}

async fn list_shards(source: &KinesisSource) -> std::result::Result<Vec<ShardInfo>, String> {
    match tokio::time::timeout(SOURCE_TIMEOUT, source.list_shards()).await {
        Ok(Ok(shards)) => Ok(shards),
        Ok(Err(e)) => Err(brief(&e.to_string())),
        Err(_) => Err(format!(
            "listing shards took longer than {} s",
            SOURCE_TIMEOUT.as_secs()
        )),
    }
}

/// Counts the records after `checkpoint` in `shard` (see the module docs for the bounds).
async fn behind(
    source: &KinesisSource,
    shard: &ShardId,
    checkpoint: &Checkpoint,
    now_ms: u64,
) -> JsonBehind {
    let mut result = JsonBehind {
        records: 0,
        at_least: false,
        oldest_unprocessed_age_ms: None,
        error: None,
        stalled: false,
    };
    let failed = |mut result: JsonBehind, error: String| {
        result.error = Some(error);
        result
    };
    let mut reader =
        match tokio::time::timeout(SOURCE_TIMEOUT, source.open(shard, checkpoint)).await {
            Ok(Ok(reader)) => reader,
            Ok(Err(e)) => return failed(result, brief(&e.to_string())),
            Err(_) => return failed(result, "opening the shard timed out".to_owned()),
        };
    let mut more_ready = false;
    for read in 0..MAX_READS_PER_SHARD {
        if read > 0 && !more_ready {
            // Kinesis allows 5 reads per second per shard, shared with the consumers.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let want = BEHIND_CAP - result.records;
        let batch = match tokio::time::timeout(SOURCE_TIMEOUT, reader.next_batch(want)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => return failed(result, brief(&e.to_string())),
            Err(_) => return failed(result, "reading the shard timed out".to_owned()),
        };
        if result.oldest_unprocessed_age_ms.is_none()
            && let Some(first) = batch.records.first()
        {
            result.oldest_unprocessed_age_ms = Some(now_ms.saturating_sub(first.arrival_ms));
        }
        result.records += batch.records.len();
        if result.records >= BEHIND_CAP {
            result.at_least = true;
            return result;
        }
        // A reader that has more at once (the rest of a read, or after its first call, which
        // only measures record sizes) is not at the tip whatever the lag it reports.
        more_ready = batch.more_ready;
        let at_tip = !more_ready
            && (batch.millis_behind_latest == Some(0)
                || (batch.records.is_empty() && batch.millis_behind_latest.is_none()));
        if batch.end.is_some() || at_tip {
            return result;
        }
    }
    // Out of reads before reaching the tip.
    result.at_least = true;
    result
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// The report, as tables.

/// The report as one JSON line or as tables.
fn text(report: &JsonReport, json: bool) -> Result<String> {
    Ok(if json {
        serde_json::to_string(report)? + "\n"
    } else {
        render(report)
    })
}

/// Writes `text` to stdout and flushes: an error (a closed pipe) is returned, never a panic as
/// with `print!`.
pub(crate) fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn render(report: &JsonReport) -> String {
    let mut out = format!(
        "application {} · store {} · heartbeats watched for {:.1} s\n\n",
        report.application,
        report.store,
        report.observed_ms as f64 / 1000.0
    );
    if report.clients.is_empty() {
        out.push_str("no clients (no consumer of this application is running)\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .clients
            .iter()
            .map(|c| {
                let mut age = match c.heartbeat_age_ms {
                    Some(age) => format!("{:.1}s ago", age as f64 / 1000.0),
                    None => format!(
                        "> {:.1}s (not seen to change)",
                        c.watched_ms as f64 / 1000.0
                    ),
                };
                if c.judged_dead {
                    age.push_str(" · judged dead");
                }
                let leases = if report.streams.is_empty() {
                    "?".to_owned()
                } else {
                    c.leases.to_string()
                };
                vec![c.id.clone(), c.counter.to_string(), age, leases]
            })
            .collect();
        out.push_str(&table(
            &["CLIENT", "COUNTER", "LAST HEARTBEAT", "LEASES"],
            &rows,
        ));
    }
    out.push_str(&render_corrupt(
        "\nPROBLEM: client rows that do not decode (such a client counts as having no row; its next heartbeat rewrites the row):",
        &report.corrupt_clients,
    ));
    if report.streams.is_empty() {
        out.push_str(
            "\nleases are kept per stream: add --stream NAME (or --source kinesis://NAME?…) to see them\n",
        );
    }
    for stream in &report.streams {
        out.push('\n');
        out.push_str(&render_stream(stream, report.stall_after_ms));
    }
    out
}

fn render_stream(stream: &JsonStream, stall_after_ms: Option<u64>) -> String {
    let leases = stream.shards.iter().filter(|s| s.has_lease);
    let (mut owned, mut unowned, mut finished) = (0, 0, 0);
    for shard in leases {
        match (&shard.owner, shard.finished) {
            (_, true) => finished += 1,
            (Some(_), false) => owned += 1,
            (None, false) => unowned += 1,
        }
    }
    let mut out = format!(
        "stream {}: {} leases ({owned} owned, {unowned} unowned, {finished} finished)\n",
        stream.stream,
        owned + unowned + finished
    );
    if let Some(error) = &stream.listing_error {
        out.push_str(&format!("cannot list the stream's shards: {error}\n"));
    }
    out.push_str(&render_corrupt(
        &format!(
            "PROBLEM: {} lease row(s) that do not decode: every consumer sets them aside, so their shards are not read until the rows are repaired:",
            stream.corrupt.len()
        ),
        &stream.corrupt,
    ));
    if stream.shards.is_empty() {
        if stream.corrupt.is_empty() {
            out.push_str("no leases: no consumer of this application has read this stream\n");
        }
        return out;
    }
    let with_source = stream.shards.iter().any(|s| s.in_stream.is_some());
    let mut headers = vec![
        "SHARD",
        "OWNER",
        "TOKEN",
        "CHECKPOINT",
        "FINISHED",
        "PARENTS",
    ];
    if with_source {
        headers.push("BEHIND TIP");
    }
    let rows: Vec<Vec<String>> = stream
        .shards
        .iter()
        .map(|s| {
            let checkpoint = s
                .checkpoint
                .as_ref()
                .and_then(|c| c.parse::<Checkpoint>().ok());
            let mut row = vec![
                s.shard.clone(),
                match (&s.owner, s.owner_has_client_row) {
                    (Some(owner), Some(false)) => format!("{owner} (gone)"),
                    (Some(owner), _) => owner.clone(),
                    (None, _) if !s.has_lease => "(no lease yet)".to_owned(),
                    (None, _) => match &s.successor {
                        Some(heir) => format!("- (to {heir})"),
                        None => "-".to_owned(),
                    },
                },
                s.token.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                if s.has_lease {
                    checkpoint_text(checkpoint.as_ref())
                } else {
                    "-".to_owned()
                },
                if s.finished { "yes" } else { "no" }.to_owned(),
                if s.parents.is_empty() {
                    "-".to_owned()
                } else {
                    s.parents.join(",")
                },
            ];
            if with_source {
                row.push(behind_text(s));
            }
            row
        })
        .collect();
    out.push_str(&table(&headers, &rows));
    if with_source {
        out.push_str(&format!(
            "behind tip: records after the checkpoint (counted up to {BEHIND_CAP}), and when the \
             oldest of them arrived{}\n",
            match stall_after_ms {
                Some(limit) => format!(
                    "; STALLED?: more than {} ago (--stall-after)",
                    age_text(limit)
                ),
                None => String::new(),
            }
        ));
    }
    out.push_str(&render_stalled(stream, stall_after_ms));
    out
}

/// The `PROBLEM:` line naming `stream`'s shards flagged as stalled (empty if none).
fn render_stalled(stream: &JsonStream, stall_after_ms: Option<u64>) -> String {
    let stalled: Vec<String> = stream
        .stalled()
        .map(|s| {
            let owner = match (&s.owner, s.owner_has_client_row) {
                (Some(owner), Some(false)) => format!("{owner}, gone"),
                (Some(owner), _) => owner.clone(),
                (None, _) => "unowned".to_owned(),
            };
            crate::tail::escape(&format!("{} ({owner})", s.shard))
        })
        .collect();
    if stalled.is_empty() {
        return String::new();
    }
    let limit = stall_after_ms.map_or_else(|| "?".to_owned(), age_text);
    format!(
        "PROBLEM: {} shard(s) whose oldest unprocessed record arrived more than {limit} ago: {}. \
         Their owner has not processed a record for longer than --stall-after: its application is \
         hung or not polling (a consumer with stall_timeout gives such a shard up), or it is this \
         far behind; an unowned shard is read by no consumer.\n",
        stalled.len(),
        stalled.join(", ")
    )
}

fn behind_text(shard: &JsonShard) -> String {
    if shard.in_stream == Some(false) {
        return "shard left the stream".to_owned();
    }
    if shard.finished {
        return "done".to_owned();
    }
    let Some(behind) = &shard.behind else {
        return if shard.has_lease {
            "- (no checkpoint yet)".to_owned()
        } else {
            "-".to_owned()
        };
    };
    if let Some(error) = &behind.error {
        return format!("cannot read: {error}");
    }
    let count = if behind.at_least {
        format!("≥{}", behind.records)
    } else {
        behind.records.to_string()
    };
    let text = match behind.oldest_unprocessed_age_ms {
        Some(age) => format!("{count} (oldest {} ago)", age_text(age)),
        None => count,
    };
    if behind.stalled {
        text + " STALLED?"
    } else {
        text
    }
}

fn age_text(ms: u64) -> String {
    match ms {
        0..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded. Cells hold store
/// content (ids an operator or a bad row wrote): control characters are escaped, so none
/// reaches the terminal.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| crate::tail::escape(cell)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            text.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_ages_are_observed_changes() {
        let mut observer = Observer::default();
        let t0 = Instant::now();
        let row = |id: &str, counter| ClientRow::new(ClientId::from(id), counter);
        // Values as the engine writes them: any change counts, not a step of one.
        let (a1, a2) = ((9 << 32) | 1, (9 << 32) | 2);
        observer.observe(vec![row("a", a1), row("b", 7)], t0);
        observer.observe(
            vec![row("a", a2), row("b", 7)],
            t0 + Duration::from_millis(500),
        );
        let now = t0 + Duration::from_millis(800);
        let ms = Duration::from_millis;
        assert_eq!(
            observer.heartbeat(&ClientId::from("a"), now),
            (Some(ms(300)), ms(800))
        );
        assert_eq!(
            observer.heartbeat(&ClientId::from("b"), now),
            (None, ms(800))
        );
        // A restarted client's value may be lower (a new incarnation): still a change.
        let later = now + Duration::from_millis(100);
        observer.observe(vec![row("a", (3 << 32) | 1), row("b", 7)], later);
        assert_eq!(
            observer.heartbeat(&ClientId::from("a"), later),
            (Some(Duration::ZERO), ms(900))
        );
        // A row that disappears is forgotten: its owner shows as gone.
        observer.observe(vec![row("a", u64::MAX)], later);
        assert!(!observer.has_row(&ClientId::from("b")));
    }

    /// A shard whose oldest unprocessed record waited longer than `--stall-after` is flagged in
    /// JSON and the table, named under `PROBLEM:` and counted as a problem; `0` turns it off.
    #[test]
    fn shards_waiting_longer_than_stall_after_are_problems() {
        let behind = |age: Option<u64>| JsonBehind {
            records: usize::from(age.is_some()),
            at_least: false,
            oldest_unprocessed_age_ms: age,
            error: None,
            stalled: false,
        };
        let limit = Some(Duration::from_secs(300));
        assert!(is_stalled(&behind(Some(300_001)), limit));
        assert!(!is_stalled(&behind(Some(300_000)), limit));
        assert!(!is_stalled(&behind(None), limit));
        assert!(!is_stalled(&behind(Some(u64::MAX)), None));
        let mut failed = behind(Some(400_000));
        failed.error = Some("throttled".into());
        assert!(!is_stalled(&failed, limit));

        let row = |shard: &str, owner: Option<&str>, age: Option<u64>| {
            let mut behind = behind(age);
            behind.stalled = is_stalled(&behind, limit);
            JsonShard {
                shard: shard.into(),
                has_lease: true,
                owner: owner.map(Into::into),
                owner_has_client_row: owner.map(|o| o != "ghost"),
                token: Some(1),
                checkpoint: Some("TRIM_HORIZON".into()),
                finished: false,
                parents: vec![],
                successor: None,
                in_stream: Some(true),
                open: Some(true),
                behind: Some(behind),
            }
        };
        let stream = JsonStream {
            stream: "orders".into(),
            listing_error: None,
            shards: vec![
                row("s-0", Some("worker-1"), Some(400_000)),
                row("s-1", Some("worker-2"), Some(2_000)),
                row("s-2", Some("ghost"), Some(7_200_000)),
                row("s-3", None, Some(301_000)),
                row("s-4", Some("worker-2"), None),
            ],
            corrupt: vec![],
        };
        let table = render_stream(&stream, Some(300_000));
        assert!(table.contains("1 (oldest 6m40s ago) STALLED?\n"), "{table}");
        assert!(table.contains("1 (oldest 2.0s ago)\n"), "{table}");
        assert!(
            table.contains(
                "PROBLEM: 3 shard(s) whose oldest unprocessed record arrived more than 5m0s ago: \
                 s-0 (worker-1), s-2 (ghost, gone), s-3 (unowned). Their owner has not processed"
            ),
            "{table}"
        );
        assert_eq!(
            table.matches("STALLED?").count(),
            4,
            "3 cells and the legend: {table}"
        );
        let report = JsonReport {
            application: "billing".into(),
            store: "memory://".into(),
            observed_ms: 0,
            stall_after_ms: Some(300_000),
            clients: vec![],
            corrupt_clients: vec![],
            streams: vec![stream],
        };
        assert_eq!(report.problems(), 3);
        let json: serde_json::Value =
            serde_json::from_str(&text(&report, true).expect("serializes")).expect("JSON");
        assert_eq!(json["streams"][0]["shards"][0]["behind"]["stalled"], true);
        assert_eq!(json["streams"][0]["shards"][1]["behind"]["stalled"], false);
    }

    #[test]
    fn tables_align_on_characters() {
        let text = table(
            &["A", "B"],
            &[
                vec!["≥10".into(), "x".into()],
                vec!["long".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A     B\n≥10   x\nlong  y\n");
    }
}
