//! The fetcher of a tenure: the GetRecords side of the delivery path.
//!
//! It opens a reader at the tenure's start, reads at most once per `poll_interval` while the
//! shard is behind and once per `idle_poll_interval` once it is caught up (see [`Pace`]), while
//! the tenure's [`AckTracker`] has room, drops what a re-opened source replays, counts what it read,
//! and passes each batch on to [`deliver`](super::deliver) — so a record only ever moves
//! forward: source → fetcher → delivery. A source error is classified here ([`recover`]):
//! throttling and transient errors back off and retry, a trimmed position falls back as
//! configured, a gone shard or a fatal error ends the fetcher with a [`FetchEnd`] for the
//! driver (`super::run_tenure`) to act on.
//!
//! Kept apart from the tenure's driver so that the read loop, its pacing and its error policy
//! read top to bottom without the commit and release logic around them.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};
use tracing::warn;

use super::deliver::{Fetched, Sink, deliver};
use crate::config::TrimmedPolicy;
use crate::engine::Engine;
use crate::error::ConsumerError;
use crate::position::Checkpoint;
use crate::record::AckTracker;
use crate::source::{Batch, ShardId, ShardReader, SourceError};
use crate::store::Tenure;

/// How long fetching may pause on a full buffer before a warning names the record holding it.
const STALL_WARNING: Duration = Duration::from_secs(60);

/// Why the fetcher stopped.
#[derive(Debug)]
pub(super) enum FetchEnd {
    /// The reader reached the end of a closed shard.
    Ended,
    /// The shard left the stream's retention.
    Gone,
    /// A failure no retry fixes.
    Failed(ConsumerError),
}

/// How long the fetcher waits between two reads: the shard's read budget (5 per second on
/// Kinesis) is shared by every application on the stream, so a shard that is caught up is read
/// at the idle pace and one that is behind as fast as `poll_interval` allows.
#[derive(Clone, Copy, Debug)]
struct Pace {
    busy: Duration,
    idle: Duration,
}

impl Pace {
    fn new(poll_interval: Duration, idle_poll_interval: Duration, pushed: bool) -> Self {
        let idle = if pushed {
            poll_interval
        } else {
            idle_poll_interval.max(poll_interval)
        };
        Self {
            busy: poll_interval,
            idle,
        }
    }

    /// The pause after a read that asked for `asked` records and got `batch`: caught up when it
    /// got none, or fewer than asked at the tip.
    fn after(&self, asked: usize, batch: &Batch) -> Duration {
        let got = batch.records.len();
        let caught_up = got == 0 || (got < asked && batch.millis_behind_latest == Some(0));
        if caught_up { self.idle } else { self.busy }
    }
}

/// What the fetcher does after an error.
enum Next {
    Retry,
    Reopen(Checkpoint),
    Stop(FetchEnd),
}

/// What to do after `e`: retry, re-open elsewhere, or stop (pure: `recover` backs off).
fn classify(on_trimmed: TrimmedPolicy, shard: &ShardId, e: SourceError) -> Next {
    match e {
        SourceError::Throttled(_) | SourceError::Transient(_) => Next::Retry,
        SourceError::ShardGone(_) => Next::Stop(FetchEnd::Gone),
        SourceError::Trimmed { .. } => match on_trimmed {
            TrimmedPolicy::ResumeAtTrimHorizon => {
                warn!(shard = %shard, error = %e, "checkpoint fell off retention; resuming at TRIM_HORIZON");
                Next::Reopen(Checkpoint::TrimHorizon)
            }
            TrimmedPolicy::Fail => Next::Stop(FetchEnd::Failed(e.into())),
        },
        SourceError::Fatal(_) | SourceError::BadPosition { .. } => {
            Next::Stop(FetchEnd::Failed(e.into()))
        }
    }
}

/// Classifies a source error and, for the ones to try again, backs off first.
async fn recover(engine: &Engine, shard: &ShardId, e: SourceError, attempt: &mut u32) -> Next {
    let next = classify(engine.config.on_trimmed, shard, e);
    if !matches!(next, Next::Stop(_)) {
        *attempt = attempt.saturating_add(1);
        sleep(engine.backoff(*attempt)).await;
    }
    next
}

/// Reads the shard of `tenure` from `start` and delivers what it reads to `sink`, until the
/// shard ends, leaves the stream, or fails; see the module docs.
pub(super) async fn fetch_loop(
    engine: Arc<Engine>,
    tenure: Tenure,
    start: Checkpoint,
    tracker: Arc<AckTracker>,
    epoch: u64,
    sink: Sink,
) -> FetchEnd {
    let cfg = &engine.config;
    let shard = &tenure.shard;
    let mut last_position = match &start {
        Checkpoint::After(p) => Some(p.clone()),
        _ => None,
    };
    let mut from = start;
    let mut attempt = 0u32;
    let mut skip_first = cfg.faults.skip_first_record;
    'open: loop {
        let mut reader: Box<dyn ShardReader> = match engine.source.open(shard, &from).await {
            Ok(r) => r,
            Err(e) => match recover(&engine, shard, e, &mut attempt).await {
                Next::Retry => continue 'open,
                Next::Reopen(cp) => {
                    from = cp;
                    continue 'open;
                }
                Next::Stop(end) => return end,
            },
        };
        let pace = Pace::new(
            cfg.poll_interval,
            cfg.idle_poll_interval,
            reader.is_pushed(),
        );
        // When the last read was made, and how long after it the next may be.
        let mut last_call: Option<(Instant, Duration)> = None;
        loop {
            let paused_at = Instant::now();
            let mut warned = false;
            while tracker.is_full() {
                let waited = paused_at.elapsed();
                if !warned && waited >= STALL_WARNING {
                    warned = true;
                    warn!(
                        shard = %shard,
                        oldest_unacked = ?tracker.oldest_unacked(),
                        waited_s = waited.as_secs(),
                        "fetching paused: an un-acked record holds the checkpoint back (was a record dropped without ack()?)"
                    );
                }
                let _ = tokio::time::timeout(
                    STALL_WARNING,
                    tracker.wait_until_run_acked(|t| !t.is_full()),
                )
                .await;
            }
            if let Some((t, pause)) = last_call {
                sleep_until(t + pause).await;
            }
            let called = Instant::now();
            last_call = Some((called, pace.busy));
            let max = cfg.max_records_per_read.min(tracker.room().max(1));
            let batch = match reader.next_batch(max).await {
                Ok(b) => {
                    attempt = 0;
                    b
                }
                Err(e) => match recover(&engine, shard, e, &mut attempt).await {
                    Next::Retry => continue,
                    Next::Reopen(cp) => {
                        from = cp;
                        continue 'open;
                    }
                    Next::Stop(end) => return end,
                },
            };
            last_call = Some((called, pace.after(max, &batch)));
            let Batch {
                mut records,
                millis_behind_latest,
                end,
                more_ready,
            } = batch;
            if more_ready {
                // The reader has more at once (the rest of its last read): nothing to pace.
                last_call = None;
            }
            // Never deliver a record at or before one already delivered in this tenure (a
            // source that replays after a re-open would otherwise break shard order).
            // A replay starts at or before the last record delivered: only then look further.
            if let Some(last) = &last_position
                && records.first().is_some_and(|r| r.position <= *last)
            {
                let before = records.len();
                records.retain(|r| r.position > *last);
                if records.len() < before {
                    warn!(shard = %shard, dropped = before - records.len(), "source replayed records already delivered; skipped them");
                }
            }
            if let Some(r) = records.last() {
                last_position = Some(r.position.clone());
            }
            if skip_first && !records.is_empty() {
                records.remove(0);
                skip_first = false;
            }
            engine.note_fetch(shard, records.len(), millis_behind_latest);
            // One pass for both sums: the payload for the metrics, the memory for the bound.
            let (payload, memory) = records.iter().fold((0, 0), |(payload, memory), r| {
                (payload + r.data.len(), memory + r.memory_size())
            });
            let m = tracker.metrics();
            m.fetched.increment(records.len() as u64);
            m.bytes.increment(payload as u64);
            if let Some(ms) = millis_behind_latest {
                m.behind.set(ms as f64);
            }
            let mut copies = vec![records];
            if cfg.faults.deliver_twice {
                copies.push(copies[0].clone());
            }
            for records in copies {
                let fetched = Fetched {
                    records,
                    bytes: memory,
                    millis_behind_latest,
                };
                if !deliver(&engine, &tenure, &tracker, epoch, &sink, fetched).await {
                    if matches!(sink, Sink::Handler(_)) {
                        // The handler worker is gone (it panicked); the driver restarts us.
                        return FetchEnd::Failed(ConsumerError::Panicked(
                            "batch handler stopped".into(),
                        ));
                    }
                    // The caller dropped the record stream: idle until shutdown.
                    std::future::pending::<()>().await;
                }
            }
            if end.is_some() {
                return FetchEnd::Ended;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> ShardId {
        ShardId::from("shard-0")
    }

    fn trimmed() -> SourceError {
        SourceError::Trimmed {
            shard: shard(),
            position: "42".into(),
        }
    }

    /// Throttling and transient errors are retried; a trimmed position falls back as the
    /// policy says; a gone shard ends the read; what no retry fixes fails it.
    #[test]
    fn source_errors_are_classified_by_what_fixes_them() {
        let resume = TrimmedPolicy::ResumeAtTrimHorizon;
        let classify = |policy, e| classify(policy, &shard(), e);
        assert!(matches!(
            classify(resume, SourceError::Throttled("slow down".into())),
            Next::Retry
        ));
        assert!(matches!(
            classify(resume, SourceError::Transient("503".into())),
            Next::Retry
        ));
        assert!(matches!(
            classify(resume, SourceError::ShardGone(shard())),
            Next::Stop(FetchEnd::Gone)
        ));
        assert!(matches!(
            classify(resume, trimmed()),
            Next::Reopen(Checkpoint::TrimHorizon)
        ));
        assert!(matches!(
            classify(TrimmedPolicy::Fail, trimmed()),
            Next::Stop(FetchEnd::Failed(_))
        ));
        assert!(matches!(
            classify(resume, SourceError::Fatal("denied".into())),
            Next::Stop(FetchEnd::Failed(_))
        ));
    }

    fn batch(records: usize, behind: Option<u64>) -> Batch {
        let record = crate::source::SourceRecord {
            data: bytes::Bytes::new(),
            partition_key: String::new(),
            explicit_hash_key: None,
            position: crate::position::Position::new(
                crate::position::SequenceNumber::from_u128(1),
                0,
            ),
            arrival_ms: 0,
        };
        Batch {
            records: vec![record; records],
            millis_behind_latest: behind,
            ..Batch::default()
        }
    }

    /// A read that got nothing, or less than it asked for at the tip, is caught up: the next
    /// waits the idle pause. A full read, or one behind the tip, or one from a source that does
    /// not say, reads again at the busy pace; a pushed reader is never slowed.
    #[test]
    fn a_caught_up_shard_is_read_at_the_idle_pace() {
        let (busy, idle) = (Duration::from_millis(200), Duration::from_secs(1));
        let pace = Pace::new(busy, idle, false);
        assert_eq!(pace.after(100, &batch(0, Some(0))), idle);
        assert_eq!(pace.after(100, &batch(0, None)), idle);
        assert_eq!(pace.after(100, &batch(7, Some(0))), idle);
        assert_eq!(
            pace.after(100, &batch(100, Some(0))),
            busy,
            "full: more may wait"
        );
        assert_eq!(pace.after(100, &batch(7, Some(5_000))), busy, "behind");
        assert_eq!(
            pace.after(100, &batch(7, None)),
            busy,
            "the source does not say"
        );
        let pushed = Pace::new(busy, idle, true);
        assert_eq!(pushed.after(100, &batch(0, Some(0))), busy);
        let slow = Pace::new(Duration::from_secs(2), idle, false);
        assert_eq!(
            slow.after(100, &batch(0, Some(0))),
            Duration::from_secs(2),
            "never below poll_interval"
        );
    }
}
