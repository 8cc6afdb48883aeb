//! `kinsumer chaos-member` (hidden): one member of the fleet that `tests/chaos.rs` runs as
//! separate OS processes and then kills, stops, continues and partitions. Not for production.
//!
//! It runs one [`Consumer`] on `--source` with its leases in `--store`, takes records from the
//! record stream, "processes" each one (`--process-ms`) and acks it, and appends one JSON object
//! per event to `--log`, one line each, written with a single `write` on a file opened for
//! appending (so a line is in the kernel's hands before the next event, and a `SIGKILL` loses
//! none that were logged):
//!
//! ```json
//! {"t_ns":1795676400123456789,"ev":"handed","client":"a","shard":"shardId-000000000001",
//!  "token":3,"seq":"4959…","sub":0,"key":"key-07","data":"rec-000123"}
//! ```
//!
//! - `started` — the process started (before it connects to anything);
//! - `taken` / `dropped` — a `(shard, token)` appeared in / left [`Consumer::status`], polled
//!   every 50 ms (the consumer does not report takes directly, so a `taken` line comes up to
//!   50 ms after the take; a tenure shorter than that may have none);
//! - `handed` — a record came out of the record stream, with its tenure's token; `acked` — it
//!   was acked after processing;
//! - `error` — the record stream ended with the fatal error in `data`;
//! - `stopped` — shutdown finished (after `SIGTERM`), `data` holding its error if it failed.
//!
//! `t_ns` is **wall-clock** time (nanoseconds since the Unix epoch, from `SystemTime`): the test
//! merges the logs of several processes, and every process on one host reads the same system
//! clock, which `std::time::Instant` (a per-process opaque value) cannot offer without `unsafe`.
//! A clock step during a run would shift every process alike.
//!
//! `SIGTERM` shuts the consumer down gracefully (stop fetching, drain, commit, release,
//! deregister) while records are still taken and acked; the process exits 0, or 1 if the
//! consumer stopped on an error.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kinsumer::{Config, Consumer, StatusHandle};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::Result;
use crate::backends::{Access, SourceUrl, StoreUrl, open_source, open_store};

/// How often the held leases are compared with the last poll, to log takes and drops.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// Flags of `kinsumer chaos-member`.
#[derive(clap::Args, Debug)]
pub struct ChaosMemberArgs {
    /// The lease store: redis://… or postgres://… (any --store URL).
    #[arg(long, value_name = "URL")]
    pub store: StoreUrl,
    /// The stream: kinesis://STREAM?endpoint=URL&region=R.
    #[arg(long, value_name = "URL")]
    pub source: SourceUrl,
    /// The application (shared by every member of the fleet).
    #[arg(long, value_name = "NAME")]
    pub app: String,
    /// This member's client id.
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// The file to append the JSON event lines to (created if missing).
    #[arg(long, value_name = "PATH")]
    pub log: PathBuf,
    /// Lease TTL in milliseconds (default: the consumer's, 10 s).
    #[arg(long, value_name = "MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Heartbeat interval in milliseconds (default: the consumer's, 2 s).
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Safety margin in milliseconds (default: the consumer's, 2 s).
    #[arg(long, value_name = "MS")]
    pub safety_margin_ms: Option<u64>,
    /// How long "processing" one record takes before it is acked, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1)]
    pub process_ms: u64,
    /// Break the engine on purpose: never self-fence (`EngineFaults::no_self_fencing`), to
    /// show that the chaos test's oracles catch a zombie. Never in production.
    #[arg(long, hide = true)]
    pub break_self_fencing: bool,
}

/// One line of the event log.
#[derive(Serialize, Debug)]
struct Event<'a> {
    t_ns: u64,
    ev: &'a str,
    client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
}

impl<'a> Event<'a> {
    fn new(ev: &'a str, client: &'a str) -> Self {
        Self {
            t_ns: now_ns(),
            ev,
            client,
            shard: None,
            token: None,
            seq: None,
            sub: None,
            key: None,
            data: None,
        }
    }
}

/// Nanoseconds since the Unix epoch on the system clock, shared by every process of the host.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The event log: one `write` per line on a file opened for appending.
#[derive(Clone)]
struct EventLog {
    file: Arc<Mutex<File>>,
    client: Arc<str>,
}

impl EventLog {
    fn open(path: &PathBuf, client: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the event log {}: {e}", path.display()))?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
            client: client.into(),
        })
    }

    /// Writes `event` as one line. A log that cannot be written ends the process: the test
    /// would judge a run it cannot see.
    fn write(&self, event: &Event<'_>) {
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(&line) {
            note!("kinsumer chaos-member: cannot write the event log: {e}");
            std::process::exit(2);
        }
    }

    fn simple(&self, ev: &str, data: Option<String>) {
        let mut event = Event::new(ev, &self.client);
        event.data = data.as_deref();
        self.write(&event);
    }
}

/// A record as the log shows it.
struct Delivery {
    shard: String,
    token: u64,
    seq: String,
    sub: u64,
    key: String,
    data: String,
}

impl Delivery {
    fn log(&self, log: &EventLog, ev: &str) {
        let mut event = Event::new(ev, &log.client);
        event.shard = Some(&self.shard);
        event.token = Some(self.token);
        event.seq = Some(&self.seq);
        event.sub = Some(self.sub);
        event.key = Some(&self.key);
        event.data = Some(&self.data);
        log.write(&event);
    }
}

/// Logs `taken` and `dropped` as `(shard, token)` pairs appear in and leave the status.
fn poll_status(log: &EventLog, status: &StatusHandle, known: &mut BTreeSet<(String, u64)>) {
    let now: BTreeSet<(String, u64)> = status
        .shards()
        .into_iter()
        .map(|s| (s.shard.to_string(), s.token))
        .collect();
    for (ev, pairs) in [
        ("taken", now.difference(known)),
        ("dropped", known.difference(&now)),
    ] {
        for (shard, token) in pairs {
            let mut event = Event::new(ev, &log.client);
            event.shard = Some(shard);
            event.token = Some(*token);
            log.write(&event);
        }
    }
    *known = now;
}

/// Runs the member until `SIGTERM` (exit 0 after a clean shutdown) or a fatal error (1).
pub async fn run(args: ChaosMemberArgs) -> Result<i32> {
    // Before anything else: a SIGTERM during start-up must shut down, not kill.
    let mut terminate = signal(SignalKind::terminate())?;
    let log = EventLog::open(&args.log, &args.client_id)?;
    log.simple("started", None);

    let mut config = Config::new(args.app.as_str()).with_client_id(args.client_id.as_str());
    if let Some(ms) = args.lease_ttl_ms {
        config.lease_ttl = Duration::from_millis(ms);
    }
    if let Some(ms) = args.heartbeat_ms {
        config.heartbeat_interval = Duration::from_millis(ms);
    }
    if let Some(ms) = args.safety_margin_ms {
        config.safety_margin = Duration::from_millis(ms);
    }
    config.faults.no_self_fencing = args.break_self_fencing;
    config.validate()?;
    let store = open_store(&args.store, &args.app, Access::Consumer).await?;
    let source = open_source(&args.source).await?;
    let mut consumer = Consumer::from_shared(config, Arc::new(source), store)?;
    let status = consumer.status();
    let mut records = consumer.records()?;

    let (stop_polling, mut polling_stopped) = tokio::sync::oneshot::channel::<()>();
    let poller = {
        let (log, status) = (log.clone(), status.clone());
        tokio::spawn(async move {
            let mut known = BTreeSet::new();
            let mut tick = tokio::time::interval(STATUS_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => poll_status(&log, &status, &mut known),
                    _ = &mut polling_stopped => break,
                }
            }
            // The last word: whatever was still held is dropped by now.
            poll_status(&log, &status, &mut known);
        })
    };

    let process = Duration::from_millis(args.process_ms);
    let mut consumer = Some(consumer);
    let mut shutting_down = None;
    let mut code = 0;
    loop {
        tokio::select! {
            _ = terminate.recv(), if consumer.is_some() => {
                if let Some(consumer) = consumer.take() {
                    // The record stream goes on (drained and acked below) until shutdown ends it.
                    shutting_down = Some(tokio::spawn(consumer.shutdown()));
                }
            }
            next = records.next() => match next {
                Some(Ok(record)) => {
                    let delivery = Delivery {
                        shard: record.shard_id().to_string(),
                        token: record.lease_token(),
                        seq: record.sequence_number().to_string(),
                        sub: record.sub_sequence_number(),
                        key: record.partition_key().to_owned(),
                        data: String::from_utf8_lossy(record.data()).into_owned(),
                    };
                    delivery.log(&log, "handed");
                    if !process.is_zero() {
                        tokio::time::sleep(process).await;
                    }
                    record.ack();
                    delivery.log(&log, "acked");
                }
                Some(Err(e)) => {
                    log.simple("error", Some(e.to_string()));
                    note!("kinsumer chaos-member: the consumer stopped: {e}");
                    code = 1;
                    break;
                }
                None => break,
            }
        }
    }
    let stopped = match (shutting_down, consumer) {
        (Some(task), _) => match task.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        (None, Some(consumer)) => consumer.shutdown().await.map_err(|e| e.to_string()),
        (None, None) => Ok(()),
    };
    let _ = stop_polling.send(());
    let _ = poller.await;
    match stopped {
        Ok(()) => log.simple("stopped", None),
        Err(e) => {
            note!("kinsumer chaos-member: shutdown failed: {e}");
            log.simple("stopped", Some(e));
            code = 1;
        }
    }
    Ok(code)
}
