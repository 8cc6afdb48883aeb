//! The `ShardSource` seam: where records come from.
//!
//! A source is bound to one stream. It lists the stream's shards (paging hidden) and opens a
//! [`ShardReader`] on one shard at a [`Checkpoint`]. A reader hides iterators: when one expires it
//! re-opens right after the last record it returned, never at the horizon by accident.
//!
//! `kinsumer_testkit::MemoryStream` is the in-memory implementation; `kinsumer-kinesis` maps the
//! same contract onto Amazon Kinesis. `kinsumer_testkit::conformance::shard_source` checks it.
//!
//! ```
//! use kinsumer_core::source::{HashRange, ShardId, ShardInfo};
//!
//! let parent = ShardInfo::root(ShardId::from("shard-0"), HashRange::FULL).closed();
//! assert!(parent.parents.is_empty() && !parent.open);
//! assert!(HashRange::FULL.contains(u128::MAX));
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::position::{Checkpoint, Position};

/// A shard's id, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(Arc<str>);

impl ShardId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ShardId {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for ShardId {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An inclusive range of 128-bit hash keys owned by a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashRange {
    /// First hash key (inclusive).
    pub start: u128,
    /// Last hash key (inclusive).
    pub end: u128,
}

impl HashRange {
    /// The whole key space, as owned by a one-shard stream.
    pub const FULL: HashRange = HashRange {
        start: 0,
        end: u128::MAX,
    };

    /// Whether `key` falls in this range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

/// What a listing says about one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard's id.
    pub id: ShardId,
    /// 0 parents for a root shard, 1 after a split, 2 after a merge.
    pub parents: Vec<ShardId>,
    /// The hash keys this shard owns.
    pub hash_range: HashRange,
    /// `false` once the shard was split or merged: it ends, and has children.
    pub open: bool,
}

impl ShardInfo {
    /// An open shard with no parents.
    pub fn root(id: ShardId, hash_range: HashRange) -> Self {
        Self {
            id,
            parents: Vec::new(),
            hash_range,
            open: true,
        }
    }

    /// The same shard, marked closed.
    pub fn closed(mut self) -> Self {
        self.open = false;
        self
    }
}

/// One record as the source delivers it (a KPL aggregate is already split into user records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    /// The payload.
    pub data: Bytes,
    /// The partition key the producer gave.
    pub partition_key: String,
    /// The explicit hash key the producer gave, where the source knows it (a user record of a
    /// KPL aggregate; Kinesis does not return it for plain records).
    pub explicit_hash_key: Option<u128>,
    /// Sequence and sub-sequence number.
    pub position: Position,
    /// When the stream accepted the record (milliseconds since the Unix epoch).
    pub arrival_ms: u64,
}

impl SourceRecord {
    /// The memory a fetched record is counted at against `max_unacked_bytes`: its payload and
    /// partition key, plus [`RECORD_OVERHEAD_BYTES`] for the rest of it. So an empty record
    /// is not free: no shape of record can fetch past the byte bound.
    pub fn memory_size(&self) -> usize {
        self.data.len() + self.partition_key.len() + RECORD_OVERHEAD_BYTES
    }
}

/// What one fetched record costs in memory besides its payload and partition key: the record
/// of the batch it was read in (128 bytes on a 64-bit target, held until its whole batch is
/// acked), the handle the caller gets (16), its share of an entry in the ack book (one per
/// batch: 96 bytes for a batch of one record, in a queue that grows by doubling), and allocator
/// slack. Measured with KPL aggregates of empty records (issue #15): at 256 bytes a 16 MiB
/// bound held 46 MiB, at 512 it holds within it.
pub const RECORD_OVERHEAD_BYTES: usize = 512;

/// One read from a shard.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Records in shard order (possibly empty).
    pub records: Vec<SourceRecord>,
    /// How far the reader is behind the tip of the shard, when the source knows.
    pub millis_behind_latest: Option<u64>,
    /// `Some(children)` when the reader reached the end of a closed shard: no record follows.
    pub end: Option<Vec<ShardId>>,
    /// The next call may return records at once, so the caller need not wait its poll
    /// interval: the reader holds the rest of a read that yielded more records than asked for
    /// (KPL aggregates), or its last call only measured the size of the stream's records.
    pub more_ready: bool,
}

/// An error from a source, classified so the engine knows what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source refused for rate; back off and retry.
    #[error("throttled by the source: {0}")]
    Throttled(String),
    /// A passing failure (network, 5xx); retry.
    #[error("transient source error: {0}")]
    Transient(String),
    /// The shard no longer exists in the stream (it left retention).
    #[error("shard {0} no longer exists in the stream")]
    ShardGone(ShardId),
    /// The requested position is not in the shard: it fell off the stream's retention (or,
    /// for a sequence number the source does not know, was never written there).
    #[error(
        "position {position} of shard {shard} is not in the stream: older than its retention, or never written"
    )]
    Trimmed {
        /// The shard.
        shard: ShardId,
        /// The position that is gone.
        position: String,
    },
    /// The source refuses to start reading the shard at this position (a timestamp in the
    /// future, say): not retried, and not fatal for the consumer — the engine sets the shard
    /// aside, holding its lease, until its checkpoint is reset; every other shard goes on.
    #[error("shard {shard} cannot be read from {position}: {reason}")]
    BadPosition {
        /// The shard.
        shard: ShardId,
        /// The position refused.
        position: String,
        /// Why.
        reason: String,
    },
    /// Nothing will fix this by retrying (stream deleted, access denied, bad configuration).
    #[error("fatal source error: {0}")]
    Fatal(String),
}

impl SourceError {
    /// The variant, as a short name for logs and metrics: `throttled`, `transient`,
    /// `shard_gone`, `trimmed`, `bad_position` or `fatal`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Throttled(_) => "throttled",
            SourceError::Transient(_) => "transient",
            SourceError::ShardGone(_) => "shard_gone",
            SourceError::Trimmed { .. } => "trimmed",
            SourceError::BadPosition { .. } => "bad_position",
            SourceError::Fatal(_) => "fatal",
        }
    }

    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Throttled(_) | SourceError::Transient(_))
    }
}

/// Where records come from: one stream's shards.
#[async_trait]
pub trait ShardSource: Send + Sync + 'static {
    /// The stream's name; lease rows are keyed by it.
    fn stream_name(&self) -> &str;

    /// The time on the stream's clock, in ms since the Unix epoch: what `AtTimestamp` compares
    /// arrival times with. The engine writes it as the checkpoint when it starts a shard at
    /// `Latest`, so a takeover before the first commit resumes from there. Defaults to this
    /// host's wall clock (Kinesis stamps arrivals with the service's).
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Every shard of the stream still in retention, open and closed, with parents.
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError>;

    /// Opens a reader on `shard`, starting at `from` (`After(p)` starts at the first record
    /// after `p`; `ShardEnd` gives a reader whose first batch reports the end).
    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError>;
}

/// A cursor over one shard.
///
/// - Records come in strictly increasing position order, each once.
/// - The last records of a closed shard may come in the same batch as `end`, or before it.
/// - If records after the reader's position fell off retention (it was too slow), the read
///   fails with [`SourceError::Trimmed`] rather than skipping silently; the engine's
///   `TrimmedPolicy` decides what happens next.
/// - An expired iterator is the reader's own business: it re-opens right after the last record
///   it returned (or at its start if it returned none) and the caller never sees it.
#[async_trait]
pub trait ShardReader: Send {
    /// Reads the next batch of at most `max_records` records (at least 1 is asked for; the
    /// source's own limits apply too). Returns an empty batch when nothing new is there yet.
    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError>;

    /// Whether the source pushes records to this reader (Kinesis enhanced fan-out), so that a
    /// call costs no read of the stream: the engine then reads a caught-up shard as often as a
    /// busy one (`Config::poll_interval`) instead of backing off to
    /// `Config::idle_poll_interval`. Default `false`: every call is a read.
    fn is_pushed(&self) -> bool {
        false
    }
}

#[async_trait]
impl<T: ShardSource + ?Sized> ShardSource for Arc<T> {
    fn stream_name(&self) -> &str {
        (**self).stream_name()
    }
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        (**self).list_shards().await
    }
    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        (**self).open(shard, from).await
    }
}
