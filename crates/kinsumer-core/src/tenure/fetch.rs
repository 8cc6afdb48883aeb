//! The fetcher of a tenure: the GetRecords side of the delivery path.
//!
//! It opens a reader at the tenure's start, reads at most once per `poll_interval` while the
//! tenure's [`AckTracker`] has room, drops what a re-opened source replays, counts what it read,
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
        let mut last_call: Option<Instant> = None;
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
            if let Some(t) = last_call {
                sleep_until(t + cfg.poll_interval).await;
            }
            last_call = Some(Instant::now());
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
}
