//! Records handed to the caller and the handles that acknowledge them: [`Record`] and
//! [`RecordRun`] (the record stream, one record or a stretch of one fetched batch at a time)
//! and [`ShardBatch`] (a batch handler). An ack goes to the tenure's `AckTracker`
//! (in `tracker.rs`), the book that makes the watermark — for a [`Record`] through the *run*
//! it came in (`run.rs`): the fetched batch, shared by its records' handles, whose counters
//! say how far it is handed out and acked, so neither takes a lock.
//!
//! The tracker is private to the crate (the engine's book, free to change); this file imports it
//! and the run, never the other way round (the tracker imports the run).

mod run;
mod tracker;

pub(crate) use self::run::Run;
pub(crate) use self::tracker::AckTracker;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::AckMode;
use crate::position::{Position, SequenceNumber};
use crate::source::{ShardId, SourceRecord};
use crate::store::Tenure;

/// A record handed out by [`crate::Consumer::records`]: the data, where it came from, and the
/// handle that acknowledges it.
pub struct Record {
    /// The fetched batch it is part of, shared by its records (it holds the data).
    run: Arc<Run>,
    index: u32,
    /// Whether it acked itself already (it acks itself on drop in [`AckMode::OnDrop`]).
    done: bool,
}

impl Record {
    /// Record `index` of `run`, handed out (the stream marked it in the run).
    pub(crate) fn handed_out(run: Arc<Run>, index: u32) -> Self {
        Self {
            run,
            index,
            done: false,
        }
    }

    fn inner(&self) -> &SourceRecord {
        &self.run.records[self.index as usize]
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.inner().data
    }

    /// The partition key the producer gave.
    pub fn partition_key(&self) -> &str {
        &self.inner().partition_key
    }

    /// The explicit hash key the producer gave, where known (KPL user records).
    pub fn explicit_hash_key(&self) -> Option<u128> {
        self.inner().explicit_hash_key
    }

    /// The Kinesis sequence number.
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.inner().position.sequence
    }

    /// The index inside a KPL aggregate (0 for plain records).
    pub fn sub_sequence_number(&self) -> u64 {
        self.inner().position.sub_sequence
    }

    /// Sequence and sub-sequence number together.
    pub fn position(&self) -> &Position {
        &self.inner().position
    }

    /// The stream it came from (what a store's transactional checkpoint needs with
    /// [`Record::tenure`]).
    pub fn stream(&self) -> &str {
        &self.run.stream
    }

    /// The shard it came from.
    pub fn shard_id(&self) -> &ShardId {
        &self.run.tenure.shard
    }

    /// When the stream accepted it (ms since the Unix epoch).
    pub fn arrival_ms(&self) -> u64 {
        self.inner().arrival_ms
    }

    /// The fencing token of the lease tenure that delivered this record. It grows with every
    /// change of owner, so an external system can reject writes from a stale owner.
    pub fn lease_token(&self) -> u64 {
        self.run.tenure.token
    }

    /// The lease tenure that delivered this record (shard, owner, token): what a store's
    /// transactional checkpoint is fenced by, so an effect is committed only while the lease
    /// is still this tenure's.
    pub fn tenure(&self) -> &Tenure {
        &self.run.tenure
    }

    /// The record as the source delivered it.
    pub fn source_record(&self) -> &SourceRecord {
        self.inner()
    }

    /// Marks the record processed. The checkpoint moves past it once every earlier record of
    /// its shard is acked too.
    pub fn ack(mut self) {
        self.run.ack(self.index, self.index + 1);
        self.done = true;
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // A record dropped while its task panics was not processed: never ack it.
        if !self.done && self.run.mode == AckMode::OnDrop && !std::thread::panicking() {
            self.run.ack(self.index, self.index + 1);
        }
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads may hold secrets: show their size, not their content.
        f.debug_struct("Record")
            .field("tenure", &self.run.tenure)
            .field("position", &self.inner().position)
            .field("partition_key", &self.inner().partition_key)
            .field("bytes", &self.inner().data.len())
            .finish()
    }
}

/// Consecutive records of one shard handed out together by
/// [`Records::next_run`](crate::Records::next_run), and acknowledged together: the record
/// stream's fast path for an application that processes records in stretches. The consumer
/// checks its lease and its own health once for the run instead of once per record, so a run
/// is handed out — and must be processed — like a batch of a batch handler: up to one fetched
/// batch (`Config::max_records_per_read`).
pub struct RecordRun {
    /// The fetched batch it is part of (it holds the data).
    run: Arc<Run>,
    from: u32,
    to: u32,
    /// Whether it acked itself already (it acks itself on drop in [`AckMode::OnDrop`]).
    done: bool,
}

impl RecordRun {
    /// Records `from..to` of `run`, handed out (the stream marked them in the run).
    pub(crate) fn handed_out(run: Arc<Run>, from: u32, to: u32) -> Self {
        Self {
            run,
            from,
            to,
            done: false,
        }
    }

    /// The records, in shard order.
    pub fn records(&self) -> &[SourceRecord] {
        &self.run.records[self.from as usize..self.to as usize]
    }

    /// How many records it holds (never 0).
    pub fn len(&self) -> usize {
        (self.to - self.from) as usize
    }

    /// Always `false`: a run holds at least one record.
    pub fn is_empty(&self) -> bool {
        self.from == self.to
    }

    /// The stream they came from.
    pub fn stream(&self) -> &str {
        &self.run.stream
    }

    /// The shard they came from.
    pub fn shard_id(&self) -> &ShardId {
        &self.run.tenure.shard
    }

    /// The fencing token of the lease tenure that delivered them (see [`Record::lease_token`]).
    pub fn lease_token(&self) -> u64 {
        self.run.tenure.token
    }

    /// The lease tenure that delivered them (shard, owner, token).
    pub fn tenure(&self) -> &Tenure {
        &self.run.tenure
    }

    /// Marks every record of the run processed. The checkpoint moves past them once every
    /// earlier record of their shard is acked too.
    pub fn ack(mut self) {
        self.run.ack(self.from, self.to);
        self.done = true;
    }
}

impl Drop for RecordRun {
    fn drop(&mut self) {
        // A run dropped while its task panics was not processed: never ack it.
        if !self.done && self.run.mode == AckMode::OnDrop && !std::thread::panicking() {
            self.run.ack(self.from, self.to);
        }
    }
}

impl fmt::Debug for RecordRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads may hold secrets: show how many, not their content.
        let records = self.records();
        f.debug_struct("RecordRun")
            .field("tenure", &self.run.tenure)
            .field("first", &records.first().map(|r| &r.position))
            .field("last", &records.last().map(|r| &r.position))
            .field("records", &records.len())
            .finish()
    }
}

/// A batch for a [`crate::consumer::BatchHandler`]: consecutive records of one shard. The
/// whole batch is acked when the handler returns `Ok`.
#[derive(Clone, Debug)]
pub struct ShardBatch {
    /// The shard.
    pub shard: ShardId,
    /// Records in shard order.
    pub records: BatchRecords,
    /// The fencing token of the lease tenure that delivered the batch.
    pub lease_token: u64,
    /// The lease tenure that delivered the batch (shard, owner, token).
    pub tenure: Tenure,
    /// The stream the batch came from.
    pub stream: Arc<str>,
    /// How far behind the tip the reader was when it fetched this batch.
    pub millis_behind_latest: Option<u64>,
}

/// The records of a [`ShardBatch`], in shard order: a slice (iterate it, index it, take its
/// `len()`), shared by the batch's clones, so the engine retries a failed batch without copying
/// a record. `to_vec()` gives an owned copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchRecords(Arc<Vec<SourceRecord>>);

impl std::ops::Deref for BatchRecords {
    type Target = [SourceRecord];

    fn deref(&self) -> &[SourceRecord] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a BatchRecords {
    type Item = &'a SourceRecord;
    type IntoIter = std::slice::Iter<'a, SourceRecord>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Vec<SourceRecord>> for BatchRecords {
    fn from(records: Vec<SourceRecord>) -> Self {
        // Moved, not copied: a batch is read once into its `Vec`.
        Self(Arc::new(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_record_overhead_covers_a_record_in_memory() {
        let held = std::mem::size_of::<Record>()
            + 2 * tracker::ENTRY_BYTES
            + std::mem::size_of::<SourceRecord>()
            + 32;
        assert!(
            held <= crate::source::RECORD_OVERHEAD_BYTES,
            "{held} bytes held per record"
        );
    }
}
