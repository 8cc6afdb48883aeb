//! A **run**: one fetched batch on its way through the record stream, handed out and acked
//! record by record (or in stretches of consecutive records) without a lock.
//!
//! The record stream hands a batch's records out in order and an application mostly acks them
//! in order, so a run keeps two counters instead of a book entry per record: how many records
//! are handed out (a prefix, written by the stream alone) and how many are acked in order (a
//! prefix). An ack out of order waits in a small list until the prefix reaches it. A
//! [`RecordRun`](super::RecordRun) is handed out and acked as one stretch: one store and one
//! compare-and-swap for all its records. The
//! [`Record`](super::Record) handles share the run and index into it, so a record is not moved
//! or copied after its fetch, and the tenure's tracker reads the counters when asked (for the
//! watermark, the bounds, a drain, the stall checks) — one tracker entry per run.
//!
//! What the tenure and its readers share with every run of it lives in [`Shared`]: whether the
//! tenure was revoked, whether someone waits for acks, and the shard's metrics.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::AckMode;
use crate::metrics::ShardMetrics;
use crate::position::Position;
use crate::source::SourceRecord;
use crate::store::Tenure;

/// What a tenure's tracker shares with its runs.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The tenure ended: nothing more may be handed out.
    pub(super) revoked: AtomicBool,
    /// How many waiters re-check after every ack ([`super::AckTracker::wait_until`]): an
    /// ack of a run wakes them only then, so an ack nobody waits for costs no wake-up. (A run
    /// acked whole always wakes: what waits for room waits for that.)
    pub(super) watchers: AtomicUsize,
    pub(super) changed: Notify,
    pub(super) metrics: ShardMetrics,
}

impl Shared {
    pub(super) fn new(metrics: ShardMetrics) -> Self {
        Self {
            revoked: AtomicBool::new(false),
            watchers: AtomicUsize::new(0),
            changed: Notify::new(),
            metrics,
        }
    }

    /// Wakes whoever waits for an ack or a revoke.
    pub(super) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// [`Self::wake`], only if someone waits. The caller changed what the waiters read (with
    /// `SeqCst`) before: a waiter registers (`SeqCst`) before it reads, so one of the two sees
    /// the other.
    fn wake_watchers(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.wake();
        }
    }
}

/// One fetched batch handed out through the record stream. See the module docs.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) records: Vec<SourceRecord>,
    pub(crate) tenure: Tenure,
    pub(crate) stream: Arc<str>,
    pub(crate) mode: AckMode,
    /// The engine's fence epoch when fetched: a record fetched before a self-fence is stale.
    pub(crate) epoch: u64,
    /// The records' memory, counted against the tenure's byte bound until the run is acked
    /// whole (the handles share the batch, so it is freed whole).
    pub(super) bytes: usize,
    pub(super) shared: Arc<Shared>,
    /// Records handed out: `records[..handed]`.
    handed: AtomicU32,
    /// When the first record was handed out (for the ack latency and the stall checks).
    handed_at: OnceLock<Instant>,
    /// Records acked in order: `records[..acked]`.
    acked: AtomicU32,
    /// Acks past `acked` (stretches `start..end`), until the prefix reaches them.
    out_of_order: Mutex<Vec<(u32, u32)>>,
    has_out_of_order: AtomicBool,
    /// The ack latency is sampled once per run: its first ack reads the clock.
    sampled: AtomicBool,
}

impl Run {
    /// A run of `records`, `bytes` of memory as [`SourceRecord::memory_size`] counts them.
    pub(crate) fn new(
        records: Vec<SourceRecord>,
        bytes: usize,
        tenure: Tenure,
        stream: Arc<str>,
        mode: AckMode,
        epoch: u64,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            records,
            tenure,
            stream,
            mode,
            epoch,
            bytes,
            shared,
            handed: AtomicU32::new(0),
            handed_at: OnceLock::new(),
            acked: AtomicU32::new(0),
            out_of_order: Mutex::new(Vec::new()),
            has_out_of_order: AtomicBool::new(false),
            sampled: AtomicBool::new(false),
        }
    }

    /// Its records (a read is at most 10,000, so a `u32` indexes them).
    pub(crate) fn len(&self) -> u32 {
        u32::try_from(self.records.len()).unwrap_or(u32::MAX)
    }

    /// The position of record `index`.
    pub(super) fn position(&self, index: u32) -> &Position {
        &self.records[index as usize].position
    }

    /// Marks records `from..to` — the next in order — handed out, unless the tenure was revoked
    /// (then `false`: they must not be delivered). The stream alone calls it, in order.
    pub(crate) fn hand_out(&self, from: u32, to: u32) -> bool {
        if from == 0 {
            let _ = self.handed_at.set(Instant::now());
        }
        // Published before the revoked flag is read, and a revoke is published before the
        // drain reads this: either we see the revoke, or the drain sees these records out.
        self.handed.store(to, Ordering::SeqCst);
        if self.shared.revoked.load(Ordering::SeqCst) {
            self.handed.store(from, Ordering::SeqCst);
            self.shared.wake();
            return false;
        }
        true
    }

    /// Acks records `from..to`, handed out together (once: a handle acks itself at most once).
    pub(crate) fn ack(&self, from: u32, to: u32) {
        let in_order = self
            .acked
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        let whole = if !in_order {
            let mut waiting = self.lock_out_of_order();
            waiting.push((from, to));
            self.has_out_of_order.store(true, Ordering::SeqCst);
            self.absorb(&mut waiting)
        } else if self.has_out_of_order.load(Ordering::SeqCst) {
            self.absorb(&mut self.lock_out_of_order())
        } else {
            to == self.len()
        };
        if !self.sampled.load(Ordering::Relaxed)
            && !self.sampled.swap(true, Ordering::Relaxed)
            && let Some(at) = self.handed_at.get()
        {
            let latency = Instant::now().saturating_duration_since(*at);
            self.shared
                .metrics
                .ack_latency
                .record(latency.as_secs_f64());
        }
        if whole {
            self.shared.wake();
        } else {
            self.shared.wake_watchers();
        }
    }

    fn lock_out_of_order(&self) -> std::sync::MutexGuard<'_, Vec<(u32, u32)>> {
        self.out_of_order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the in-order prefix over the out-of-order acks it reached; whether that acked the
    /// run whole. Under their lock; a stretch in the list is acked, so no in-order ack races us
    /// for it.
    fn absorb(&self, waiting: &mut Vec<(u32, u32)>) -> bool {
        loop {
            let prefix = self.acked.load(Ordering::SeqCst);
            let Some(k) = waiting.iter().position(|&(start, _)| start == prefix) else {
                break;
            };
            let (_, end) = waiting.swap_remove(k);
            self.acked.store(end, Ordering::SeqCst);
        }
        if waiting.is_empty() {
            self.has_out_of_order.store(false, Ordering::SeqCst);
        }
        self.acked.load(Ordering::SeqCst) == self.len()
    }

    /// Records handed out.
    pub(super) fn handed(&self) -> u32 {
        self.handed.load(Ordering::SeqCst)
    }

    /// When its first record was handed out.
    pub(super) fn handed_at(&self) -> Option<Instant> {
        self.handed_at.get().copied()
    }

    /// Records acked in order: the first not acked is `records[acked_prefix]`.
    pub(super) fn acked_prefix(&self) -> u32 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Records acked, in order or not.
    pub(super) fn acked(&self) -> u32 {
        let waiting = self.lock_out_of_order();
        let out_of_order: u32 = waiting.iter().map(|&(start, end)| end - start).sum();
        self.acked.load(Ordering::SeqCst) + out_of_order
    }
}
