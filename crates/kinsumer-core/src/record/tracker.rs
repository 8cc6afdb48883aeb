//! The acknowledgement book of one lease tenure: which fetched records are handed out and
//! acked, the **watermark** they make, and the bounds that pause fetching.
//!
//! Every record fetched in one lease tenure gets an entry in that tenure's [`AckTracker`], in
//! shard order — or, for a batch handler that takes and acks whole batches, one entry per
//! batch ([`AckTracker::register_batch`]). An entry goes *fetched → handed out → acked*. The
//! watermark is the position of the last record of the acked prefix: every record up to it is
//! processed, so it — and only it — is written as the checkpoint. Acks may arrive in any order.
//!
//! The tracker also bounds memory: fetching pauses while the un-acked records or bytes of the
//! tenure are at their limits. When the tenure ends (handoff, lost lease, self-fencing) the
//! tracker is *revoked*: records not yet handed out are dropped instead of delivered, because the
//! next owner will deliver them. Kept apart from [`Record`](super::Record) (the handle the
//! application acks with), which only calls into it: this file imports nothing of `record`.
//!
//! The crate's own (it is the engine's book, free to change): `the_watermark_is_the_acked_prefix`
//! below shows it at work.
//!
//!
//! (Over 500 lines because a third of it is the unit tests of the book's private state, which
//! belong next to it; the book itself is one concept.)

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::metrics::ShardMetrics;
use crate::position::Position;

use super::run::{Run, Shared};

#[derive(Debug)]
struct Entry {
    /// The position of the (last) record it stands for: where the watermark goes once it is
    /// acked.
    position: Position,
    /// The first record of a batch entry (see [`AckTracker::register_batch`]); `None` for an
    /// entry of one record.
    batch_first: Option<Box<Position>>,
    /// How many records it stands for: 1, or the records of a batch.
    records: u32,
    bytes: usize,
    /// When it was fetched: how long it has waited to be handed out.
    fetched: tokio::time::Instant,
    /// When it was handed out, for the ack-latency metric.
    handed_out: Option<tokio::time::Instant>,
    acked: bool,
    /// The run it stands for (the record stream): then the run's counters say what is handed
    /// out and acked, not `handed_out` and `acked`.
    run: Option<Arc<Run>>,
    /// A run's hand-outs and acks already counted in the metrics.
    counted: (u32, u32),
}

impl Entry {
    /// The first record it stands for that is not acked (the first, if none is).
    fn first(&self) -> &Position {
        match &self.run {
            Some(run) => run.position(run.acked_prefix().min(run.len() - 1)),
            None => self.batch_first.as_deref().unwrap_or(&self.position),
        }
    }

    /// Whether every record it stands for is acked.
    fn is_acked(&self) -> bool {
        match &self.run {
            Some(run) => run.acked_prefix() == run.len(),
            None => self.acked,
        }
    }

    /// Whether every record it stands for is handed out (or acked).
    fn is_handed(&self) -> bool {
        match &self.run {
            Some(run) => run.handed() == run.len(),
            None => self.handed_out.is_some() || self.acked,
        }
    }
}

#[derive(Debug, Default)]
struct AckState {
    /// Index of `pending[0]`.
    base: u64,
    pending: VecDeque<Entry>,
    /// The records the entries of `pending` stand for.
    pending_records: usize,
    watermark: Option<Position>,
    last_registered: Option<Position>,
    unacked_records: usize,
    unacked_bytes: usize,
    /// Every record and byte registered in this tenure: their ratio sizes the next read.
    registered_records: u64,
    registered_bytes: u64,
    /// Handed out and not yet acked: what a drain waits for.
    outstanding: usize,
    /// When the batch handler's current call on this shard began (`None` between calls).
    call_since: Option<tokio::time::Instant>,
    /// The record holding the watermark back in a run, as (entry index, record), and when the
    /// stall check first saw it handed out and not acked: a run does not date each hand-out.
    front_seen: Option<(u64, u32, tokio::time::Instant)>,
    /// The application was told this tenure ends (its `ending` hook is called once).
    told_end: bool,
    revoked: bool,
}

/// The acknowledgement book of one lease tenure. See the module docs.
#[derive(Debug)]
pub struct AckTracker {
    state: Mutex<AckState>,
    max_records: usize,
    max_bytes: usize,
    /// Shared with the runs: the revoked flag, the wake-up of waiters (the fetcher waits for
    /// space, a drain for the records out) and the metrics.
    shared: Arc<Shared>,
}

impl AckTracker {
    /// A tracker that counts as full at `max_records` un-acked records or `max_bytes` bytes.
    #[cfg(test)]
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self::with_metrics(max_records, max_bytes, ShardMetrics::noop())
    }

    pub(crate) fn with_metrics(
        max_records: usize,
        max_bytes: usize,
        metrics: ShardMetrics,
    ) -> Self {
        Self {
            state: Mutex::new(AckState::default()),
            max_records,
            max_bytes,
            shared: Arc::new(Shared::new(metrics)),
        }
    }

    /// This shard's metric handles.
    pub(crate) fn metrics(&self) -> &ShardMetrics {
        &self.shared.metrics
    }

    /// What a run of this tenure shares with it.
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Records fetched since the watermark.
    pub(crate) fn since_watermark(&self) -> usize {
        let s = self.settled();
        since_watermark(&s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        // A poisoned lock only means another thread panicked mid-update of plain counters;
        // the book is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, with what the runs did since it was last taken read in: their metrics
    /// counted, and the runs acked whole popped off the front (the watermark moves past them).
    fn settled(&self) -> std::sync::MutexGuard<'_, AckState> {
        let mut s = self.lock();
        let (mut delivered, mut acked) = (0u64, 0u64);
        for e in s.pending.iter_mut() {
            if let Some(run) = &e.run {
                let now = (run.handed(), run.acked());
                delivered += u64::from(now.0.saturating_sub(e.counted.0));
                acked += u64::from(now.1.saturating_sub(e.counted.1));
                e.counted = now;
            }
        }
        pop_acked(&mut s);
        self.shared.metrics.delivered.increment(delivered);
        self.shared.metrics.acked.increment(acked);
        s
    }

    /// Adds a fetched record; returns its index.
    #[cfg(test)]
    pub fn register(&self, position: Position, bytes: usize) -> u64 {
        self.register_all([(position, bytes)])
    }

    /// Adds fetched records, in order, under one lock; returns the index of the first (the
    /// others follow it). Returns the next index unused when `records` is empty.
    #[cfg(test)]
    pub fn register_all(&self, records: impl IntoIterator<Item = (Position, usize)>) -> u64 {
        let mut s = self.lock();
        let first = s.base + s.pending.len() as u64;
        let fetched = tokio::time::Instant::now();
        for (position, bytes) in records {
            s.last_registered = Some(position.clone());
            s.pending.push_back(Entry {
                position,
                batch_first: None,
                records: 1,
                bytes,
                fetched,
                handed_out: None,
                acked: false,
                run: None,
                counted: (0, 0),
            });
            s.pending_records += 1;
            s.unacked_records += 1;
            s.unacked_bytes += bytes;
            s.registered_records += 1;
            s.registered_bytes += bytes as u64;
        }
        first
    }

    /// Adds the `records` fetched records from `first` to `last` (`bytes` in all) as one entry,
    /// for a consumer that hands out and acks them together (a batch handler); returns its
    /// index. One entry per batch instead of one per record: the bounds still count records
    /// and bytes, and the watermark moves to `last` when the entry is acked.
    pub fn register_batch(
        &self,
        first: Position,
        last: Position,
        records: usize,
        bytes: usize,
    ) -> u64 {
        let mut s = self.lock();
        let index = s.base + s.pending.len() as u64;
        if records == 0 {
            return index;
        }
        // An entry stands for at most u32::MAX records; a read is at most 10,000.
        let count = u32::try_from(records).unwrap_or(u32::MAX);
        s.last_registered = Some(last.clone());
        s.pending.push_back(Entry {
            position: last,
            batch_first: (records > 1).then(|| Box::new(first)),
            records: count,
            bytes,
            fetched: tokio::time::Instant::now(),
            handed_out: None,
            acked: false,
            run: None,
            counted: (0, 0),
        });
        let records = count as usize;
        s.pending_records += records;
        s.unacked_records += records;
        s.unacked_bytes += bytes;
        s.registered_records += records as u64;
        s.registered_bytes += bytes as u64;
        index
    }

    /// Adds a run (the record stream's fetched batch) as one entry: its counters say what of
    /// it is handed out and acked. Its bytes count against the byte bound until it is acked
    /// whole.
    pub(crate) fn register_run(&self, run: Arc<Run>) {
        let Some(last) = run.records.last().map(|r| r.position.clone()) else {
            return;
        };
        let (records, bytes) = (run.records.len(), run.bytes);
        let mut s = self.lock();
        s.last_registered = Some(last.clone());
        s.pending_records += records;
        s.unacked_bytes += bytes;
        s.registered_records += records as u64;
        s.registered_bytes += bytes as u64;
        s.pending.push_back(Entry {
            position: last,
            // The run names its records itself (see `Entry::first`).
            batch_first: None,
            records: run.len(),
            bytes,
            fetched: tokio::time::Instant::now(),
            handed_out: None,
            acked: false,
            run: Some(run),
            counted: (0, 0),
        });
    }

    /// Marks records `first..first+count` as handed to the caller, unless the tenure was revoked
    /// (then nothing is marked and `false` is returned: the records must not be delivered).
    pub fn hand_out_range(&self, first: u64, count: u64) -> bool {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        if s.revoked {
            return false;
        }
        let mut marked = 0;
        for i in first..first + count {
            if let Some(e) = i
                .checked_sub(s.base)
                .and_then(|k| usize::try_from(k).ok())
                .and_then(|k| s.pending.get_mut(k))
                && e.handed_out.is_none()
                && !e.acked
            {
                e.handed_out = Some(now);
                marked += e.records as usize;
            }
        }
        s.outstanding += marked;
        drop(s);
        self.shared.metrics.delivered.increment(marked as u64);
        true
    }

    /// [`Self::hand_out_range`] for one record.
    pub fn hand_out(&self, index: u64) -> bool {
        self.hand_out_range(index, 1)
    }

    /// Acks records `first..first+count`; acking twice is harmless.
    pub fn ack_range(&self, first: u64, count: u64) {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        let mut acked = 0u64;
        for i in first..first + count {
            let Some(k) = i.checked_sub(s.base).and_then(|k| usize::try_from(k).ok()) else {
                continue; // already below the watermark
            };
            let Some(e) = s.pending.get_mut(k) else {
                continue;
            };
            if e.acked {
                continue;
            }
            e.acked = true;
            let (records, bytes, handed_out) = (e.records as usize, e.bytes, e.handed_out);
            s.unacked_records -= records;
            s.unacked_bytes -= bytes;
            acked += records as u64;
            if let Some(at) = handed_out {
                s.outstanding -= records;
                self.shared
                    .metrics
                    .ack_latency
                    .record(now.saturating_duration_since(at).as_secs_f64());
            }
        }
        pop_acked(&mut s);
        drop(s);
        self.shared.metrics.acked.increment(acked);
        self.shared.wake();
    }

    /// [`Self::ack_range`] for one record.
    pub fn ack(&self, index: u64) {
        self.ack_range(index, 1);
    }

    /// The position up to which every record is acked.
    pub fn watermark(&self) -> Option<Position> {
        let s = self.settled();
        match s.pending.front().and_then(|e| e.run.as_ref()) {
            Some(run) if run.acked_prefix() > 0 => {
                Some(run.position(run.acked_prefix() - 1).clone())
            }
            _ => s.watermark.clone(),
        }
    }

    /// The last record fetched (handed out or not).
    pub fn last_registered(&self) -> Option<Position> {
        self.lock().last_registered.clone()
    }

    /// Whether the records since the watermark, or the un-acked bytes, are at their limits.
    /// Records are counted from the watermark, not just the un-acked ones, so one record never
    /// acked cannot let the book behind it grow without bound.
    pub fn is_full(&self) -> bool {
        let s = self.settled();
        since_watermark(&s) >= self.max_records || s.unacked_bytes >= self.max_bytes
    }

    /// How many more records may be fetched now: the records left under the record bound and,
    /// once record sizes are known, the bytes left under the byte bound divided by the average
    /// record size so far — so one read does not overshoot the byte bound by a whole read.
    pub fn room(&self) -> usize {
        let s = self.settled();
        let records = self.max_records.saturating_sub(since_watermark(&s));
        if s.registered_records == 0 {
            return records;
        }
        let average = (s.registered_bytes / s.registered_records).max(1);
        let bytes_left = self.max_bytes.saturating_sub(s.unacked_bytes) as u64;
        records.min(usize::try_from(bytes_left / average).unwrap_or(usize::MAX))
    }

    /// The first record not yet acked: the one holding the watermark back.
    pub fn oldest_unacked(&self) -> Option<Position> {
        self.settled()
            .pending
            .iter()
            .find(|e| !e.is_acked())
            .map(|e| e.first().clone())
    }

    /// The record that holds the watermark back, if it was handed out, and when: the oldest
    /// record handed out and not acked. In a run (which does not date each hand-out), a record
    /// after its first is dated when this was first asked and found it out: a stall is then
    /// found up to one check late, never early.
    pub fn oldest_outstanding(&self) -> Option<(Position, tokio::time::Instant)> {
        let mut s = self.settled();
        let base = s.base;
        let front = s.pending.front()?;
        let Some(run) = &front.run else {
            return Some((front.first().clone(), front.handed_out?));
        };
        let next = run.acked_prefix();
        if run.handed() <= next {
            return None;
        }
        let position = run.position(next).clone();
        let first_out = run.handed_at()?;
        if next == 0 {
            return Some((position, first_out));
        }
        let since = match s.front_seen {
            Some((entry, record, at)) if (entry, record) == (base, next) => at,
            _ => tokio::time::Instant::now().max(first_out),
        };
        s.front_seen = Some((base, next, since));
        Some((position, since))
    }

    /// When the oldest record fetched and not yet handed out was fetched: how long the records
    /// of this shard have waited for the application.
    pub fn waiting_since(&self) -> Option<tokio::time::Instant> {
        let s = self.settled();
        if s.revoked {
            return None;
        }
        s.pending.iter().find(|e| !e.is_handed()).map(|e| e.fetched)
    }

    /// True the first time it is called: the tenure's `ending` hook is due (once).
    pub(crate) fn claim_ending(&self) -> bool {
        !std::mem::replace(&mut self.lock().told_end, true)
    }

    /// The application began a call on this shard (`Some(now)`) or returned (`None`).
    pub(crate) fn set_call_since(&self, since: Option<tokio::time::Instant>) {
        self.lock().call_since = since;
    }

    /// When the application's current call on this shard (the batch handler, a lifecycle
    /// hook) began, and the first record not acked.
    pub(crate) fn call_since(&self) -> Option<(Option<Position>, tokio::time::Instant)> {
        let s = self.settled();
        let since = s.call_since?;
        Some((s.pending.front().map(|e| e.first().clone()), since))
    }

    /// Records handed out and not acked.
    pub fn outstanding(&self) -> usize {
        let s = self.settled();
        s.outstanding
            + runs(&s)
                .map(|r| (r.handed() - r.acked().min(r.handed())) as usize)
                .sum::<usize>()
    }

    /// Records fetched and not acked.
    pub fn unacked(&self) -> usize {
        let s = self.settled();
        s.unacked_records
            + runs(&s)
                .map(|r| (r.len() - r.acked()) as usize)
                .sum::<usize>()
    }

    /// Whether the tenure ended: nothing more may be handed out.
    pub fn is_revoked(&self) -> bool {
        self.lock().revoked
    }

    /// Stops further hand-outs; the tenure is ending.
    pub fn revoke(&self) {
        self.lock().revoked = true;
        self.shared.revoked.store(true, Ordering::SeqCst);
        self.shared.wake();
    }

    /// Waits until `done` holds, re-checking it after every ack and revoke. A waiter counts as
    /// one before each check, so an ack between the check and the wait still wakes it.
    pub async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        let _watching = Watching::new(&self.shared);
        self.wait_for_wakes(done).await;
    }

    /// [`Self::wait_until`] for what only a run acked whole (or an entry of the book acked, or
    /// a revoke) can bring about — room under the bounds, which a run gives back whole: not
    /// woken by every ack of the record stream.
    pub(crate) async fn wait_until_run_acked(&self, done: impl Fn(&Self) -> bool) {
        self.wait_for_wakes(done).await;
    }

    async fn wait_for_wakes(&self, done: impl Fn(&Self) -> bool) {
        loop {
            let woken = self.shared.changed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if done(self) {
                return;
            }
            woken.await;
        }
    }
}

/// A waiter for acks, counted while it waits (see `Shared::watchers`).
struct Watching<'a>(&'a Shared);

impl<'a> Watching<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.watchers.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes the entries acked whole off the front of the book: the watermark moves past them.
fn pop_acked(s: &mut AckState) {
    while s.pending.front().is_some_and(Entry::is_acked) {
        if let Some(e) = s.pending.pop_front() {
            s.pending_records -= e.records as usize;
            if e.run.is_some() {
                // A run's bytes are held until it is acked whole (an entry of the book gives
                // them back record by record, as each is acked).
                s.unacked_bytes -= e.bytes;
            }
            s.watermark = Some(e.position);
            s.base += 1;
        }
    }
}

/// The runs in the book.
fn runs(s: &AckState) -> impl Iterator<Item = &Arc<Run>> {
    s.pending.iter().filter_map(|e| e.run.as_ref())
}

/// Records fetched since the watermark: the records of the book, less those a run at its
/// front acked in order (the watermark is inside it).
fn since_watermark(s: &AckState) -> usize {
    let inside = match s.pending.front().and_then(|e| e.run.as_ref()) {
        Some(run) => run.acked_prefix() as usize,
        None => 0,
    };
    s.pending_records - inside
}

/// What one entry of the book takes in memory (for the per-record overhead the byte bound
/// counts: see `RECORD_OVERHEAD_BYTES`).
#[cfg(test)]
pub(crate) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_acked_prefix() {
        let t = AckTracker::new(100, 1 << 20);
        let pos = |n| Position::new(crate::position::SequenceNumber::from_u128(n), 0);
        let a = t.register(pos(1), 10);
        let b = t.register(pos(2), 10);
        assert!(t.hand_out(a) && t.hand_out(b));
        t.ack(b);
        assert_eq!(
            t.watermark(),
            None,
            "1 is not acked yet: the watermark cannot pass it"
        );
        t.ack(a);
        assert_eq!(t.watermark(), Some(pos(2)));
    }
    use crate::position::SequenceNumber;

    fn pos(n: u128) -> Position {
        Position::new(SequenceNumber::from_u128(n), 0)
    }

    #[test]
    fn watermark_is_the_acked_prefix() {
        let t = AckTracker::new(10, 1000);
        let ids: Vec<u64> = (1..=5).map(|n| t.register(pos(n), 1)).collect();
        assert!(t.hand_out_range(ids[0], 5));
        assert_eq!(t.outstanding(), 5);
        for i in [4, 2, 1] {
            t.ack(ids[i]);
        }
        assert_eq!(t.watermark(), None);
        t.ack(ids[0]);
        assert_eq!(t.watermark(), Some(pos(3)));
        t.ack(ids[3]);
        t.ack(ids[3]);
        assert_eq!(t.watermark(), Some(pos(5)));
        assert_eq!((t.outstanding(), t.unacked()), (0, 0));
    }

    /// What a fetched record is counted at covers what it takes: the handle the caller holds,
    /// its entry in the book (twice: a queue grows by doubling), the record of the batch it was
    /// read in, and the allocation of its partition key.
    #[test]
    fn bounds_count_records_and_bytes() {
        let t = AckTracker::new(3, 100);
        let a = t.register(pos(1), 60);
        assert!(!t.is_full());
        t.register(pos(2), 50);
        assert!(t.is_full(), "110 bytes >= 100");
        t.ack(a);
        assert!(!t.is_full());
        // 2 records left under the record bound, but 50 bytes left under the byte bound is
        // less than one record of the average size so far (55 bytes).
        assert_eq!(t.room(), 0);
    }

    #[test]
    fn room_is_sized_by_the_bytes_left() {
        let t = AckTracker::new(1_000, 1_000);
        assert_eq!(t.room(), 1_000, "no size known yet: the record bound alone");
        let first = t.register_all((1..=4).map(|n| (pos(n), 100)));
        assert_eq!(first, 0);
        assert_eq!(t.room(), 6, "600 bytes left at 100 bytes a record");
        t.ack_range(first, 4);
        assert_eq!(t.room(), 10);
        assert_eq!(t.register_all([]), 4, "the next index, unused");
    }

    #[test]
    fn one_unacked_record_bounds_the_book_behind_it() {
        let t = AckTracker::new(3, 1000);
        let first = t.register(pos(1), 1);
        for n in 2..=3 {
            let i = t.register(pos(n), 1);
            t.ack(i);
        }
        assert!(
            t.is_full(),
            "3 records since the watermark, 2 of them acked"
        );
        assert_eq!(t.oldest_unacked(), Some(pos(1)));
        t.ack(first);
        assert!(!t.is_full());
        assert_eq!(t.watermark(), Some(pos(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_outstanding_and_waiting_records_are_dated() {
        let t = AckTracker::new(10, 1000);
        let first = t.register_all((1..=3).map(|n| (pos(n), 1)));
        let fetched = tokio::time::Instant::now();
        assert_eq!(t.oldest_outstanding(), None, "nothing handed out yet");
        assert_eq!(t.waiting_since(), Some(fetched));
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        assert!(t.hand_out_range(first, 2));
        let out = tokio::time::Instant::now();
        assert_eq!(t.oldest_outstanding(), Some((pos(1), out)));
        assert_eq!(t.waiting_since(), Some(fetched), "record 3 still waits");
        t.ack(first);
        assert_eq!(t.oldest_outstanding(), Some((pos(2), out)));
        assert!(t.hand_out(first + 2));
        assert_eq!(t.waiting_since(), None, "everything handed out");
        t.ack_range(first + 1, 2);
        assert_eq!(t.oldest_outstanding(), None);
    }

    /// A batch entry counts as its records against the bounds and in every count, names its
    /// first record while it holds the watermark, and moves the watermark to its last.
    #[test]
    fn a_batch_entry_stands_for_its_records() {
        let t = AckTracker::new(10, 10_000);
        let a = t.register_batch(pos(1), pos(4), 4, 400);
        let b = t.register_batch(pos(5), pos(5), 1, 100);
        assert_eq!(b, a + 1, "one index per entry");
        assert_eq!((t.unacked(), t.since_watermark()), (5, 5));
        assert_eq!(t.room(), 5, "10 records, 5 registered");
        assert!(t.hand_out_range(a, 2));
        assert_eq!(t.outstanding(), 5);
        assert_eq!(t.oldest_unacked(), Some(pos(1)), "the batch's first record");
        assert_eq!(t.oldest_outstanding().map(|(p, _)| p), Some(pos(1)));
        t.ack(b);
        assert_eq!(t.watermark(), None, "the batch before it is not acked");
        t.ack(a);
        assert_eq!(t.watermark(), Some(pos(5)));
        assert_eq!(
            (t.unacked(), t.outstanding(), t.since_watermark()),
            (0, 0, 0)
        );
        assert_eq!(
            t.register_batch(pos(6), pos(6), 0, 0),
            b + 1,
            "nothing registered"
        );
        assert_eq!(t.last_registered(), Some(pos(5)));
        let full = t.register_batch(pos(6), pos(15), 10, 1000);
        assert!(t.is_full(), "10 records since the watermark");
        t.ack(full);
        assert!(!t.is_full());
    }

    /// A run of `n` records of 100 bytes from position `from` on, registered in `t`.
    fn run(t: &AckTracker, from: u128, n: u128) -> Arc<Run> {
        let records: Vec<_> = (from..from + n)
            .map(|k| crate::source::SourceRecord {
                data: bytes::Bytes::from(vec![0u8; 100]),
                partition_key: String::new(),
                explicit_hash_key: None,
                position: pos(k),
                arrival_ms: 0,
            })
            .collect();
        let tenure = crate::store::Tenure {
            shard: "shard-0".into(),
            owner: "me".into(),
            token: 1,
        };
        let bytes = records
            .iter()
            .map(|r: &crate::source::SourceRecord| r.memory_size())
            .sum();
        let run = Arc::new(Run::new(
            records,
            bytes,
            tenure,
            "stream".into(),
            crate::config::AckMode::Explicit,
            0,
            t.shared(),
        ));
        t.register_run(run.clone());
        run
    }

    /// A run is one entry whose counters make the watermark: it moves inside the run with the
    /// in-order acks, waits at a gap of an out-of-order ack, and passes the run once it is
    /// acked whole; the run's bytes count until then.
    #[test]
    fn a_run_moves_the_watermark_record_by_record() {
        let t = AckTracker::new(10, 1 << 20);
        let a = run(&t, 1, 4);
        let b = run(&t, 5, 2);
        assert_eq!((t.unacked(), t.since_watermark()), (6, 6));
        assert_eq!(t.room(), 4);
        for i in 0..4 {
            assert!(a.hand_out(i, i + 1));
        }
        assert!(b.hand_out(0, 1));
        assert_eq!(t.outstanding(), 5);
        assert!(t.waiting_since().is_some(), "record 6 waits");
        a.ack(0, 1);
        a.ack(2, 3); // out of order: the watermark waits for 2
        assert_eq!(t.watermark(), Some(pos(1)));
        assert_eq!(
            (t.outstanding(), t.unacked(), t.since_watermark()),
            (3, 4, 5)
        );
        assert_eq!(t.oldest_unacked(), Some(pos(2)));
        b.ack(0, 1);
        assert_eq!(t.watermark(), Some(pos(1)), "run b waits for run a");
        a.ack(1, 2);
        assert_eq!(t.watermark(), Some(pos(3)), "the gap closed");
        let held = t.lock().unacked_bytes;
        assert_eq!(
            held,
            a.bytes + b.bytes,
            "a run's bytes are held until it is acked whole"
        );
        a.ack(3, 4);
        assert_eq!(
            t.watermark(),
            Some(pos(5)),
            "a acked whole, b up to its first"
        );
        assert_eq!(t.lock().unacked_bytes, b.bytes);
        assert!(b.hand_out(1, 2));
        b.ack(1, 2);
        assert_eq!(t.watermark(), Some(pos(6)));
        assert_eq!(
            (t.outstanding(), t.unacked(), t.since_watermark()),
            (0, 0, 0)
        );
        let s = t.lock();
        assert_eq!((s.unacked_bytes, s.pending.len()), (0, 0));
        drop(s);
        assert_eq!(t.waiting_since(), None);
    }

    /// A revoked tenure hands out nothing more of a run, and what was refused is not counted
    /// as out (a drain does not wait for it).
    #[test]
    fn a_revoked_run_hands_out_nothing_more() {
        let t = AckTracker::new(10, 1 << 20);
        let r = run(&t, 1, 3);
        assert!(r.hand_out(0, 1));
        t.revoke();
        assert!(!r.hand_out(1, 2));
        assert_eq!((r.handed(), t.outstanding()), (1, 1));
        r.ack(0, 1);
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.watermark(), Some(pos(1)));
    }

    /// Stretches of a run handed out and acked together count like their records one by one:
    /// a stretch acked out of order waits whole for the prefix, and a revoke refuses a whole
    /// stretch.
    #[test]
    fn a_run_hands_out_and_acks_in_stretches() {
        let t = AckTracker::new(10, 1 << 20);
        let r = run(&t, 1, 6);
        assert!(r.hand_out(0, 2));
        assert!(r.hand_out(2, 5));
        assert_eq!((r.handed(), t.outstanding()), (5, 5));
        r.ack(2, 5);
        assert_eq!(t.watermark(), None, "waits for 1..=2");
        assert_eq!((r.acked(), t.outstanding()), (3, 2));
        r.ack(0, 2);
        assert_eq!(
            t.watermark(),
            Some(pos(5)),
            "the prefix took the stretch in one step"
        );
        assert_eq!(r.acked_prefix(), 5);
        t.revoke();
        assert!(!r.hand_out(5, 6));
        assert_eq!((r.handed(), t.outstanding()), (5, 0));
    }

    /// The record holding the watermark back is dated exactly when it is a run's first (the
    /// run dates its first hand-out), and otherwise when it was first found out: a stall check
    /// counts from then, so it may be late by one check, never early.
    #[tokio::test(start_paused = true)]
    async fn a_run_dates_the_record_holding_the_watermark() {
        let t = AckTracker::new(10, 1 << 20);
        let r = run(&t, 1, 3);
        assert_eq!(t.oldest_outstanding(), None, "nothing out");
        assert!(r.hand_out(0, 1));
        let first_out = tokio::time::Instant::now();
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(t.oldest_outstanding(), Some((pos(1), first_out)));
        assert!(r.hand_out(1, 2));
        r.ack(0, 1);
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let seen = tokio::time::Instant::now();
        assert_eq!(
            t.oldest_outstanding(),
            Some((pos(2), seen)),
            "dated when first seen"
        );
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(t.oldest_outstanding(), Some((pos(2), seen)), "and kept");
        r.ack(1, 2);
        assert_eq!(t.oldest_outstanding(), None, "record 3 is not out");
    }

    /// What waits for room under the byte bound waits for a run acked whole (its records are
    /// freed together); what waits for acks wakes at every ack.
    #[tokio::test(start_paused = true)]
    async fn waiters_wake_for_what_they_wait_for() {
        // Two records of 612 bytes (payload and overhead) fill a 1,000-byte bound.
        let t = Arc::new(AckTracker::new(100, 1000));
        let r = run(&t, 1, 2);
        assert!(r.hand_out(0, 1) && r.hand_out(1, 2));
        assert!(t.is_full());
        let room = tokio::spawn({
            let t = t.clone();
            async move { t.wait_until_run_acked(|t| !t.is_full()).await }
        });
        let one_out = tokio::spawn({
            let t = t.clone();
            async move { t.wait_until(|t| t.outstanding() <= 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!room.is_finished() && !one_out.is_finished());
        r.ack(0, 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), one_out)
            .await
            .expect("an ack wakes what waits for acks")
            .expect("ran");
        tokio::task::yield_now().await;
        assert!(
            !room.is_finished(),
            "still full: the run is not acked whole"
        );
        r.ack(1, 2);
        tokio::time::timeout(std::time::Duration::from_secs(1), room)
            .await
            .expect("the run acked whole wakes what waits for room")
            .expect("ran");
    }

    #[test]
    fn revoked_records_are_not_handed_out() {
        let t = AckTracker::new(3, 100);
        let a = t.register(pos(1), 1);
        t.revoke();
        assert!(!t.hand_out(a));
        assert_eq!(t.outstanding(), 0);
    }
}
