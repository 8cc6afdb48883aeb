//! [`MemoryStream`]: a faithful in-memory Kinesis stream, implementing [`ShardSource`].
//!
//! It behaves like the real service where the engine can tell the difference:
//! - partition keys are routed by MD5 into a 128-bit hash key space split evenly between the
//!   shards; sequence numbers are long decimal strings that only ever grow;
//! - shards split and merge: parents close, children name them, and a reader that reaches the
//!   end of a closed shard learns its children;
//! - records leave retention: a closed shard disappears once its end is older than retention
//!   ([`SourceError::ShardGone`]), and a position whose successors were trimmed is
//!   [`SourceError::Trimmed`];
//! - reads are capped at 10,000 records and 10 MiB, report `millis_behind_latest`, and ride on
//!   an iterator that expires after 5 minutes unused (the reader re-opens right after the last
//!   record it returned, as a real reader must);
//! - each shard serves 5 reads and 2 MiB a second to all its readers together — every
//!   application on the stream — and refuses more with [`SourceError::Throttled`], as Kinesis
//!   does ([`ReadLimits`]; off with `read_limits: None`, for a benchmark of the pipeline's own
//!   speed or a test that reads in a tight loop);
//! - faults (throttling, errors, latency, expired iterators) are drawn from a seeded
//!   [`Rng`], so a run replays exactly.
//!
//! Time is `tokio::time`, so tests run under the paused clock.
//!
//! ```
//! use kinsumer_core::position::Checkpoint;
//! use kinsumer_core::source::ShardSource;
//! use kinsumer_testkit::MemoryStream;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = MemoryStream::new("orders", 2);
//! let (shard, position) = stream.put("customer-42", "hello")?;
//!
//! let mut reader = stream.open(&shard, &Checkpoint::TrimHorizon).await?;
//! let batch = reader.next_batch(100).await?;
//! assert_eq!(batch.records.len(), 1);
//! assert_eq!(batch.records[0].position, position);
//! assert_eq!(&batch.records[0].data[..], b"hello");
//!
//! // Splitting closes the parent; its reader ends and names the children.
//! let range = stream.hash_range(&shard)?;
//! let (left, right) = stream.split(&shard, range.start + (range.end - range.start) / 2 + 1)?;
//! let batch = reader.next_batch(100).await?;
//! assert_eq!(batch.end, Some(vec![left, right]));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::time::Instant;

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::rng::Rng;
use kinsumer_core::source::{
    Batch, HashRange, ShardId, ShardInfo, ShardReader, ShardSource, SourceError, SourceRecord,
};

/// The most records one read returns (Kinesis' `GetRecords` limit).
pub const MAX_RECORDS_PER_READ: usize = 10_000;
/// The most bytes of data one read returns (Kinesis' `GetRecords` limit).
pub const MAX_BYTES_PER_READ: usize = 10 * 1024 * 1024;
/// The largest record `put` accepts: data plus partition key (Kinesis' `PutRecord` limit).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// The longest partition key, in characters (Kinesis' limit).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// The first sequence number a stream hands out. Larger than `u64`, like the 56-digit numbers
/// of real streams, so code that parses them as machine integers fails in tests.
pub const FIRST_SEQUENCE_NUMBER: u128 = 49_590_338_271_490_256_608_559_692_538_361_571_095;

/// The 128-bit hash key Kinesis derives from a partition key: MD5, read big-endian.
///
/// ```
/// use kinsumer_testkit::memory_stream::partition_hash_key;
///
/// // MD5("") = d41d8cd98f00b204e9800998ecf8427e
/// assert_eq!(partition_hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
/// ```
pub fn partition_hash_key(partition_key: &str) -> u128 {
    let digest: [u8; 16] = Md5::digest(partition_key.as_bytes()).into();
    u128::from_be_bytes(digest)
}

/// How a [`MemoryStream`] behaves; `Default` gives the service's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryStreamConfig {
    /// Seeds the fault RNG (see [`SourceFaults`]).
    pub seed: u64,
    /// How long records stay readable (default 24 h, as Kinesis).
    pub retention: Duration,
    /// How long a shard iterator stays valid unused (default 5 min, as Kinesis).
    pub iterator_ttl: Duration,
    /// The arrival time, in ms since the Unix epoch, of a record put at the stream's creation;
    /// later records add the `tokio::time` elapsed since then.
    pub base_epoch_ms: u64,
    /// The read limits each shard enforces over all its readers (default: Kinesis'); `None`
    /// reads without limits.
    pub read_limits: Option<ReadLimits>,
}

/// The read limits of one shard, over every reader of it (every application on the stream).
/// A read past them fails with [`SourceError::Throttled`] and is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// `GetRecords` calls served in any one second (Kinesis: 5).
    pub reads_per_sec: usize,
    /// Bytes of data served a second (Kinesis: 2 MiB). A read is refused while the bytes served
    /// before it would take more than another second at this rate: a 10 MiB read leaves the
    /// shard refusing reads for about four seconds (Kinesis says five).
    pub bytes_per_sec: u64,
}

impl ReadLimits {
    /// Kinesis' limits: 5 reads and 2 MiB a second per shard.
    pub const KINESIS: Self = Self {
        reads_per_sec: 5,
        bytes_per_sec: 2 * 1024 * 1024,
    };
}

impl Default for MemoryStreamConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            retention: Duration::from_secs(24 * 60 * 60),
            iterator_ttl: Duration::from_secs(5 * 60),
            // 2023-11-14T22:13:20Z: a fixed epoch keeps runs identical.
            base_epoch_ms: 1_700_000_000_000,
            read_limits: Some(ReadLimits::KINESIS),
        }
    }
}

/// Faults a [`MemoryStream`] injects, each drawn from its seeded RNG. `Default` injects none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceFaults {
    /// Probability that a read fails with [`SourceError::Throttled`].
    pub throttle_rate: f64,
    /// Probability that a listing, open or read fails with [`SourceError::Transient`].
    pub error_rate: f64,
    /// Every listing, open and read first sleeps a uniformly drawn time in `min..=max`.
    pub latency: (Duration, Duration),
    /// Probability that a read finds its iterator expired (as if it sat unused past the TTL).
    pub iterator_expiry_rate: f64,
}

/// Request counters of a [`MemoryStream`], for test checkers and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Calls to `list_shards`.
    pub list_shards_calls: u64,
    /// Iterators requested: every `open`, and every re-open after an expired iterator.
    pub get_shard_iterator_calls: u64,
    /// Calls to `next_batch`.
    pub get_records_calls: u64,
    /// Records handed out by reads.
    pub records_returned: u64,
    /// Reads that failed with `Throttled`.
    pub throttled: u64,
    /// Calls that failed with an injected `Transient` error.
    pub injected_errors: u64,
    /// Reads that found their iterator expired and re-opened.
    pub expired_iterators: u64,
}

/// Bad input to [`MemoryStream`]'s producer and admin calls.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryStreamError {
    /// No shard has this id.
    #[error("no shard {0} in the stream")]
    UnknownShard(ShardId),
    /// The shard was already split or merged.
    #[error("shard {0} is closed")]
    ShardClosed(ShardId),
    /// A split key must lie in `start + 1 ..= end` of the shard it splits.
    #[error("hash key {hash_key} cannot split shard {shard} (range {range:?})")]
    HashKeyOutOfRange {
        /// The shard.
        shard: ShardId,
        /// Its range.
        range: HashRange,
        /// The offending key.
        hash_key: u128,
    },
    /// Only two distinct shards whose ranges touch can merge.
    #[error("shards {shard} and {adjacent} are not adjacent")]
    NotAdjacent {
        /// The shard to merge.
        shard: ShardId,
        /// The shard that should have been adjacent to it.
        adjacent: ShardId,
    },
    /// The partition key breaks Kinesis' rules.
    #[error("invalid partition key: {0}")]
    InvalidPartitionKey(&'static str),
    /// Data plus partition key exceed [`MAX_RECORD_BYTES`].
    #[error("record of {size} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    RecordTooLarge {
        /// Data plus partition key, in bytes.
        size: usize,
    },
    /// No open shard owns the hash key (cannot happen while the open shards cover the key
    /// space; reported rather than assumed).
    #[error("no open shard owns hash key {0}")]
    NoOpenShard(u128),
}

/// An in-memory Kinesis stream. Cheap to clone: clones share the stream.
///
/// See the [module docs](self) for what it reproduces.
#[derive(Clone, Debug)]
pub struct MemoryStream {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    config: MemoryStreamConfig,
    created_at: Instant,
    state: Mutex<StreamState>,
}

#[derive(Debug)]
struct StreamState {
    /// Keyed by id; ids are zero-padded counters, so this is creation order.
    shards: BTreeMap<ShardId, ShardLog>,
    next_shard_number: u64,
    next_sequence: u128,
    /// Set by [`MemoryStream::trim_before`]: nothing older is retained.
    manual_horizon_ms: u64,
    faults: SourceFaults,
    rng: Rng,
    stats: SourceStats,
}

#[derive(Debug)]
struct ShardLog {
    info: ShardInfo,
    children: Vec<ShardId>,
    closed_at_ms: Option<u64>,
    /// Every record ever written, trimmed or not; arrival times never decrease.
    records: Vec<SourceRecord>,
    /// When the reads of the last second were served (for [`ReadLimits::reads_per_sec`]).
    recent_reads: VecDeque<Instant>,
    /// Until when the bytes served so far keep the shard busy at [`ReadLimits::bytes_per_sec`].
    busy_until: Option<Instant>,
}

impl ShardLog {
    /// Index of the oldest record still in retention.
    fn first_retained(&self, horizon_ms: u64) -> usize {
        self.records.partition_point(|r| r.arrival_ms < horizon_ms)
    }

    /// A closed shard leaves the stream once its end is older than retention.
    fn is_gone(&self, horizon_ms: u64) -> bool {
        self.closed_at_ms.is_some_and(|closed| closed < horizon_ms)
    }

    fn first_after(&self, position: &Position) -> usize {
        self.records.partition_point(|r| r.position <= *position)
    }
}

/// Where a reader's iterator points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    /// The oldest retained record, whichever that is when read (`TRIM_HORIZON`).
    Horizon,
    /// The record at this index of the shard's log (or the tip, when it is the log's length).
    Index(usize),
    /// Past the end (`SHARD_END`): the next read reports the end.
    End,
}

/// What the fault RNG decided for one call.
enum Injected {
    Nothing,
    Throttle,
    Error,
}

impl StreamState {
    fn horizon_ms(&self, now_ms: u64, retention: Duration) -> u64 {
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        now_ms
            .saturating_sub(retention_ms)
            .max(self.manual_horizon_ms)
    }

    fn draw_latency(&mut self) -> Duration {
        let (a, b) = self.faults.latency;
        let (min, max) = if a <= b { (a, b) } else { (b, a) };
        let spread = u64::try_from((max - min).as_nanos()).unwrap_or(u64::MAX);
        if spread == 0 {
            return min;
        }
        min + Duration::from_nanos(self.rng.below(spread.saturating_add(1)))
    }

    /// Draws latency and an outcome for one call; only reads can be throttled.
    fn draw_call(&mut self, can_throttle: bool) -> (Duration, Injected) {
        let latency = self.draw_latency();
        let injected = if can_throttle && self.rng.chance(self.faults.throttle_rate) {
            self.stats.throttled += 1;
            Injected::Throttle
        } else if self.rng.chance(self.faults.error_rate) {
            self.stats.injected_errors += 1;
            Injected::Error
        } else {
            Injected::Nothing
        };
        (latency, injected)
    }

    fn next_shard_id(&mut self) -> ShardId {
        let id = ShardId::from(format!("shardId-{:012}", self.next_shard_number));
        self.next_shard_number += 1;
        id
    }

    fn open_shard_mut(&mut self, id: &ShardId) -> Result<&mut ShardLog, MemoryStreamError> {
        let log = self
            .shards
            .get_mut(id)
            .ok_or_else(|| MemoryStreamError::UnknownShard(id.clone()))?;
        if log.info.open {
            Ok(log)
        } else {
            Err(MemoryStreamError::ShardClosed(id.clone()))
        }
    }

    fn add_child(&mut self, parents: Vec<ShardId>, hash_range: HashRange) -> ShardId {
        let id = self.next_shard_id();
        let info = ShardInfo {
            id: id.clone(),
            parents,
            hash_range,
            open: true,
        };
        self.shards.insert(id.clone(), ShardLog::new(info));
        id
    }

    fn close(&mut self, id: &ShardId, children: Vec<ShardId>, now_ms: u64) {
        if let Some(log) = self.shards.get_mut(id) {
            log.info.open = false;
            log.children = children;
            log.closed_at_ms = Some(now_ms);
        }
    }
}

impl ShardLog {
    fn new(info: ShardInfo) -> Self {
        Self {
            info,
            children: Vec::new(),
            closed_at_ms: None,
            records: Vec::new(),
            recent_reads: VecDeque::new(),
            busy_until: None,
        }
    }
}

/// The inclusive range of shard `index` of `count` shards splitting the key space evenly, as
/// Kinesis does: shard `i` starts at `floor(i * 2^128 / count)`.
fn even_range(index: u128, count: u128) -> HashRange {
    let start = |i: u128| -> u128 {
        if i == 0 {
            // Also keeps `count == 1` (where 2^128 / count overflows) out of the arithmetic.
            return 0;
        }
        // 2^128 = q * count + r, computed without overflowing u128.
        let (mut q, mut r) = (u128::MAX / count, u128::MAX % count + 1);
        if r == count {
            q += 1;
            r = 0;
        }
        // i * r < count^2 fits as long as count < 2^64, which usize guarantees.
        i * q + i * r / count
    };
    let end = if index + 1 == count {
        u128::MAX
    } else {
        start(index + 1) - 1
    };
    HashRange {
        start: start(index),
        end,
    }
}

impl MemoryStream {
    /// A stream of `shard_count` open shards (at least one: 0 counts as 1) with the default
    /// [`MemoryStreamConfig`].
    pub fn new(name: impl Into<String>, shard_count: usize) -> Self {
        Self::with_config(name, shard_count, MemoryStreamConfig::default())
    }

    /// [`MemoryStream::new`] without read limits: for a benchmark of the pipeline's own speed,
    /// or a test that reads in a tight loop.
    pub fn without_read_limits(name: impl Into<String>, shard_count: usize) -> Self {
        let config = MemoryStreamConfig {
            read_limits: None,
            ..MemoryStreamConfig::default()
        };
        Self::with_config(name, shard_count, config)
    }

    /// A stream of `shard_count` open shards (at least one) behaving as `config` says.
    pub fn with_config(
        name: impl Into<String>,
        shard_count: usize,
        config: MemoryStreamConfig,
    ) -> Self {
        let mut state = StreamState {
            shards: BTreeMap::new(),
            next_shard_number: 0,
            next_sequence: FIRST_SEQUENCE_NUMBER,
            manual_horizon_ms: 0,
            faults: SourceFaults::default(),
            rng: Rng::new(config.seed),
            stats: SourceStats::default(),
        };
        let count = shard_count.max(1) as u128;
        for index in 0..count {
            let id = state.next_shard_id();
            let info = ShardInfo::root(id.clone(), even_range(index, count));
            state.shards.insert(id, ShardLog::new(info));
        }
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                config,
                created_at: Instant::now(),
                state: Mutex::new(state),
            }),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &MemoryStreamConfig {
        &self.shared.config
    }

    /// The stream's clock: the arrival time a record put now gets (ms since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.shared.created_at);
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.shared.config.base_epoch_ms.saturating_add(elapsed_ms)
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panic while holding the lock leaves consistent data (every update is one step), so
        // a poisoned lock is still usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn horizon_ms(&self, state: &StreamState) -> u64 {
        state.horizon_ms(self.now_ms(), self.shared.config.retention)
    }

    /// Writes a record routed by the MD5 of `partition_key`, as `PutRecord` does. Returns the
    /// shard it landed in and its position.
    pub fn put(
        &self,
        partition_key: &str,
        data: impl Into<Bytes>,
    ) -> Result<(ShardId, Position), MemoryStreamError> {
        self.put_with_hash_key(partition_key, partition_hash_key(partition_key), data)
    }

    /// Writes a record routed by an explicit hash key (`PutRecord`'s `ExplicitHashKey`).
    pub fn put_with_hash_key(
        &self,
        partition_key: &str,
        hash_key: u128,
        data: impl Into<Bytes>,
    ) -> Result<(ShardId, Position), MemoryStreamError> {
        let data = data.into();
        if partition_key.is_empty() {
            return Err(MemoryStreamError::InvalidPartitionKey("must not be empty"));
        }
        if partition_key.chars().count() > MAX_PARTITION_KEY_CHARS {
            return Err(MemoryStreamError::InvalidPartitionKey(
                "must be at most 256 characters",
            ));
        }
        let size = data.len() + partition_key.len();
        if size > MAX_RECORD_BYTES {
            return Err(MemoryStreamError::RecordTooLarge { size });
        }
        let arrival_ms = self.now_ms();
        let mut state = self.lock();
        let sequence = state.next_sequence;
        let log = state
            .shards
            .values_mut()
            .find(|log| log.info.open && log.info.hash_range.contains(hash_key))
            .ok_or(MemoryStreamError::NoOpenShard(hash_key))?;
        let position = Position::new(SequenceNumber::from_u128(sequence), 0);
        log.records.push(SourceRecord {
            data,
            partition_key: partition_key.to_owned(),
            explicit_hash_key: None,
            position: position.clone(),
            arrival_ms,
        });
        let shard = log.info.id.clone();
        state.next_sequence += 1;
        Ok((shard, position))
    }

    /// Splits an open shard at `new_starting_hash_key` (`SplitShard`): the parent closes, the
    /// first child owns `start ..= key - 1` and the second `key ..= end`.
    pub fn split(
        &self,
        shard: &ShardId,
        new_starting_hash_key: u128,
    ) -> Result<(ShardId, ShardId), MemoryStreamError> {
        let now_ms = self.now_ms();
        let mut state = self.lock();
        let range = state.open_shard_mut(shard)?.info.hash_range;
        if new_starting_hash_key <= range.start || new_starting_hash_key > range.end {
            return Err(MemoryStreamError::HashKeyOutOfRange {
                shard: shard.clone(),
                range,
                hash_key: new_starting_hash_key,
            });
        }
        let lower = HashRange {
            start: range.start,
            end: new_starting_hash_key - 1,
        };
        let upper = HashRange {
            start: new_starting_hash_key,
            end: range.end,
        };
        let first = state.add_child(vec![shard.clone()], lower);
        let second = state.add_child(vec![shard.clone()], upper);
        state.close(shard, vec![first.clone(), second.clone()], now_ms);
        Ok((first, second))
    }

    /// Merges two adjacent open shards (`MergeShards`): both close, and the child, owning the
    /// union of their ranges, names them as parents `[shard, adjacent]`.
    pub fn merge(&self, shard: &ShardId, adjacent: &ShardId) -> Result<ShardId, MemoryStreamError> {
        let now_ms = self.now_ms();
        let mut state = self.lock();
        let a = state.open_shard_mut(shard)?.info.hash_range;
        let b = state.open_shard_mut(adjacent)?.info.hash_range;
        let not_adjacent = || MemoryStreamError::NotAdjacent {
            shard: shard.clone(),
            adjacent: adjacent.clone(),
        };
        let touches =
            |lower: HashRange, upper: HashRange| lower.end.checked_add(1) == Some(upper.start);
        let union = if touches(a, b) {
            HashRange {
                start: a.start,
                end: b.end,
            }
        } else if touches(b, a) {
            HashRange {
                start: b.start,
                end: a.end,
            }
        } else {
            return Err(not_adjacent());
        };
        let child = state.add_child(vec![shard.clone(), adjacent.clone()], union);
        state.close(shard, vec![child.clone()], now_ms);
        state.close(adjacent, vec![child.clone()], now_ms);
        Ok(child)
    }

    /// Drops every record that arrived before `arrival_ms` from retention (and every closed
    /// shard that ended before it), as if retention had passed. Never moves back.
    pub fn trim_before(&self, arrival_ms: u64) {
        let mut state = self.lock();
        state.manual_horizon_ms = state.manual_horizon_ms.max(arrival_ms);
    }

    /// Replaces the injected faults; takes effect on the next call.
    pub fn set_faults(&self, faults: SourceFaults) {
        self.lock().faults = faults;
    }

    /// The faults currently injected.
    pub fn faults(&self) -> SourceFaults {
        self.lock().faults.clone()
    }

    /// The request counters so far.
    pub fn stats(&self) -> SourceStats {
        self.lock().stats
    }

    /// Every shard the stream ever had, in creation order — including those gone from
    /// retention, which [`ShardSource::list_shards`] no longer shows.
    pub fn shards(&self) -> Vec<ShardInfo> {
        self.lock()
            .shards
            .values()
            .map(|log| log.info.clone())
            .collect()
    }

    /// The hash range of a shard (open, closed or gone).
    pub fn hash_range(&self, shard: &ShardId) -> Result<HashRange, MemoryStreamError> {
        self.lock()
            .shards
            .get(shard)
            .map(|log| log.info.hash_range)
            .ok_or_else(|| MemoryStreamError::UnknownShard(shard.clone()))
    }

    /// Every record ever written to `shard`, trimmed or not, in order (empty for an unknown
    /// shard).
    pub fn records(&self, shard: &ShardId) -> Vec<SourceRecord> {
        self.lock()
            .shards
            .get(shard)
            .map(|log| log.records.clone())
            .unwrap_or_default()
    }

    /// Every record ever written, by shard.
    pub fn all_records(&self) -> BTreeMap<ShardId, Vec<SourceRecord>> {
        self.lock()
            .shards
            .iter()
            .map(|(id, log)| (id.clone(), log.records.clone()))
            .collect()
    }

    /// `GetShardIterator`: sleeps the injected latency, may fail with an injected error, then
    /// resolves `from` to a cursor. Also returns the start a re-open with no record returned
    /// must use (a `Latest` start is pinned to the tip as it is now, so re-opening loses
    /// nothing put in between).
    async fn get_shard_iterator(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<(Cursor, Checkpoint), SourceError> {
        let (latency, injected) = {
            let mut state = self.lock();
            state.stats.get_shard_iterator_calls += 1;
            state.draw_call(false)
        };
        sleep_unless_zero(latency).await;
        if let Injected::Error | Injected::Throttle = injected {
            return Err(SourceError::Transient(format!(
                "injected error in GetShardIterator on {shard}"
            )));
        }
        let state = self.lock();
        let horizon_ms = self.horizon_ms(&state);
        let log = match state.shards.get(shard) {
            Some(log) if !log.is_gone(horizon_ms) => log,
            _ => return Err(SourceError::ShardGone(shard.clone())),
        };
        let first_retained = log.first_retained(horizon_ms);
        let resolved = match from {
            Checkpoint::TrimHorizon => (Cursor::Horizon, Checkpoint::TrimHorizon),
            Checkpoint::Latest => {
                let pinned = match log.records.last() {
                    Some(last) => Checkpoint::After(last.position.clone()),
                    None => Checkpoint::TrimHorizon,
                };
                (Cursor::Index(log.records.len()), pinned)
            }
            // Kinesis refuses a timestamp in the future.
            Checkpoint::AtTimestamp(ms) if *ms > self.now_ms() => {
                return Err(SourceError::BadPosition {
                    shard: shard.clone(),
                    position: from.to_string(),
                    reason: format!(
                        "the timestamp is after the stream's clock ({} ms)",
                        self.now_ms()
                    ),
                });
            }
            Checkpoint::AtTimestamp(ms) => {
                let at = log.records.partition_point(|r| r.arrival_ms < *ms);
                (Cursor::Index(at.max(first_retained)), from.clone())
            }
            Checkpoint::After(position) => {
                let next = log.first_after(position);
                if next < first_retained {
                    return Err(SourceError::Trimmed {
                        shard: shard.clone(),
                        position: position.to_string(),
                    });
                }
                (Cursor::Index(next), from.clone())
            }
            Checkpoint::ShardEnd => (Cursor::End, Checkpoint::ShardEnd),
        };
        Ok(resolved)
    }

    /// `GetRecords` at `cursor` once faults were survived: the batch and the cursor after it.
    fn get_records(
        &self,
        shard: &ShardId,
        cursor: Cursor,
        max_records: usize,
    ) -> Result<(Batch, Cursor), SourceError> {
        let mut state = self.lock();
        let horizon_ms = self.horizon_ms(&state);
        let limits = self.shared.config.read_limits;
        let now = Instant::now();
        if let (Some(limits), Some(log)) = (limits, state.shards.get_mut(shard)) {
            let second = Duration::from_secs(1);
            while log
                .recent_reads
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= second)
            {
                log.recent_reads.pop_front();
            }
            let too_many = log.recent_reads.len() >= limits.reads_per_sec;
            let too_much = log.busy_until.is_some_and(|until| until > now + second);
            if too_many || too_much {
                state.stats.throttled += 1;
                return Err(SourceError::Throttled(format!(
                    "shard {shard} is over its read limit ({} reads, {} bytes a second, over \
                     every reader of the shard)",
                    limits.reads_per_sec, limits.bytes_per_sec
                )));
            }
            log.recent_reads.push_back(now);
        }
        let log = match state.shards.get(shard) {
            Some(log) if !log.is_gone(horizon_ms) => log,
            _ => return Err(SourceError::ShardGone(shard.clone())),
        };
        let first_retained = log.first_retained(horizon_ms);
        let start = match cursor {
            Cursor::Horizon => first_retained,
            Cursor::Index(next) if next < first_retained => {
                // Real Kinesis would skip silently to the horizon; saying so lets the engine
                // apply its `TrimmedPolicy` instead of losing records unseen.
                return Err(SourceError::Trimmed {
                    shard: shard.clone(),
                    position: log
                        .records
                        .get(next)
                        .map(|r| r.position.to_string())
                        .unwrap_or_default(),
                });
            }
            Cursor::Index(next) => next.min(log.records.len()),
            Cursor::End => {
                let batch = Batch {
                    records: Vec::new(),
                    millis_behind_latest: Some(0),
                    end: Some(log.children.clone()),
                    more_ready: false,
                };
                return Ok((batch, Cursor::End));
            }
        };

        let limit = max_records.clamp(1, MAX_RECORDS_PER_READ);
        let mut records = Vec::new();
        let mut bytes = 0usize;
        for record in &log.records[start..] {
            let fits = bytes + record.data.len() <= MAX_BYTES_PER_READ;
            // One record always fits, so an oversized record cannot wedge a reader.
            if records.len() == limit || (!fits && !records.is_empty()) {
                break;
            }
            bytes += record.data.len();
            records.push(record.clone());
        }
        let next = start + records.len();
        let at_tip = next == log.records.len();
        let tip_ms = log.records.last().map_or(0, |r| r.arrival_ms);
        let millis_behind_latest = match records.last() {
            Some(last) => tip_ms.saturating_sub(last.arrival_ms),
            None => 0,
        };
        let end = (at_tip && !log.info.open).then(|| log.children.clone());
        let cursor = if end.is_some() {
            Cursor::End
        } else {
            Cursor::Index(next)
        };
        state.stats.records_returned += records.len() as u64;
        if let (Some(limits), Some(log)) = (limits, state.shards.get_mut(shard)) {
            let serving =
                Duration::from_secs_f64(bytes as f64 / limits.bytes_per_sec.max(1) as f64);
            log.busy_until = Some(log.busy_until.map_or(now, |u| u.max(now)) + serving);
        }
        let batch = Batch {
            records,
            millis_behind_latest: Some(millis_behind_latest),
            end,
            more_ready: false,
        };
        Ok((batch, cursor))
    }
}

async fn sleep_unless_zero(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

#[async_trait]
impl ShardSource for MemoryStream {
    fn stream_name(&self) -> &str {
        self.name()
    }

    fn now_ms(&self) -> u64 {
        MemoryStream::now_ms(self)
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        let (latency, injected) = {
            let mut state = self.lock();
            state.stats.list_shards_calls += 1;
            state.draw_call(false)
        };
        sleep_unless_zero(latency).await;
        if let Injected::Error | Injected::Throttle = injected {
            return Err(SourceError::Transient(
                "injected error in ListShards".to_owned(),
            ));
        }
        let state = self.lock();
        let horizon_ms = self.horizon_ms(&state);
        Ok(state
            .shards
            .values()
            .filter(|log| !log.is_gone(horizon_ms))
            .map(|log| log.info.clone())
            .collect())
    }

    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        Ok(Box::new(MemoryShardReader::open(self, shard, from).await?))
    }
}

/// A reader on one shard of a [`MemoryStream`]; see [`ShardSource::open`].
///
/// It holds an "iterator" that expires after [`MemoryStreamConfig::iterator_ttl`] unused. A
/// read that finds it expired re-opens right after the last record it returned (or at its
/// original start if it returned none) before reading, so nothing is lost or repeated.
///
/// Opened at `ShardEnd`, its first read reports the end with the shard's children (none, if
/// the shard is in fact still open).
#[derive(Debug)]
pub struct MemoryShardReader {
    stream: MemoryStream,
    shard: ShardId,
    /// Where a re-open starts when no record was returned yet.
    start: Checkpoint,
    /// `None` once the iterator expired and before the re-open succeeded.
    iterator: Option<Cursor>,
    issued_at: Instant,
    last_returned: Option<Position>,
}

impl MemoryShardReader {
    /// Opens a reader on `shard` at `from` (the same as [`ShardSource::open`], unboxed).
    pub async fn open(
        stream: &MemoryStream,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Self, SourceError> {
        let (cursor, start) = stream.get_shard_iterator(shard, from).await?;
        Ok(Self {
            stream: stream.clone(),
            shard: shard.clone(),
            start,
            iterator: Some(cursor),
            issued_at: Instant::now(),
            last_returned: None,
        })
    }

    /// The shard it reads.
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    /// The position of the last record it returned, if any.
    pub fn last_returned(&self) -> Option<&Position> {
        self.last_returned.as_ref()
    }

    /// Re-opens after an expired iterator: right after the last record returned, never at the
    /// horizon by accident.
    async fn reopen(&mut self) -> Result<Cursor, SourceError> {
        let from = match &self.last_returned {
            Some(position) => Checkpoint::After(position.clone()),
            None => self.start.clone(),
        };
        let (cursor, _) = self.stream.get_shard_iterator(&self.shard, &from).await?;
        Ok(cursor)
    }
}

#[async_trait]
impl ShardReader for MemoryShardReader {
    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError> {
        let ttl = self.stream.shared.config.iterator_ttl;
        {
            let mut guard = self.stream.lock();
            let state = &mut *guard;
            state.stats.get_records_calls += 1;
            let forced = state.rng.chance(state.faults.iterator_expiry_rate);
            let expired = forced || Instant::now().saturating_duration_since(self.issued_at) > ttl;
            if expired && self.iterator.take().is_some() {
                state.stats.expired_iterators += 1;
            }
        }
        let cursor = match self.iterator {
            Some(cursor) => cursor,
            None => {
                // A real re-open (`GetShardIterator`), subject to faults like any other; if it
                // fails, the next call tries again.
                let cursor = self.reopen().await?;
                self.iterator = Some(cursor);
                self.issued_at = Instant::now();
                cursor
            }
        };
        let (latency, injected) = self.stream.lock().draw_call(true);
        sleep_unless_zero(latency).await;
        match injected {
            Injected::Throttle => {
                return Err(SourceError::Throttled(format!(
                    "injected throttle in GetRecords on {}",
                    self.shard
                )));
            }
            Injected::Error => {
                return Err(SourceError::Transient(format!(
                    "injected error in GetRecords on {}",
                    self.shard
                )));
            }
            Injected::Nothing => {}
        }
        let (batch, next) = self.stream.get_records(&self.shard, cursor, max_records)?;
        if let Some(last) = batch.records.last() {
            self.last_returned = Some(last.position.clone());
        }
        // Every successful read hands out a fresh iterator, as `NextShardIterator` does.
        self.iterator = Some(next);
        self.issued_at = Instant::now();
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ranges_cover_the_key_space_without_gaps() {
        for count in [1u128, 2, 3, 7, 64, 1000] {
            let ranges: Vec<_> = (0..count).map(|i| even_range(i, count)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[ranges.len() - 1].end, u128::MAX);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end + 1, pair[1].start, "count {count}");
            }
        }
        // Kinesis' documented boundary for two shards.
        assert_eq!(even_range(1, 2).start, 1u128 << 127);
    }
}
