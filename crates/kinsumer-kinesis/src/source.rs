//! [`KinesisSource`]: the `ShardSource` contract over ListShards, GetShardIterator and
//! GetRecords.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use tracing::{debug, warn};

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::{
    Batch, HashRange, ShardId, ShardInfo, ShardReader, ShardSource, SourceError, SourceRecord,
};

use crate::fan_out::{FanOut, FanOutOptions};
use crate::kpl;

/// Kinesis's largest `Limit` for one GetRecords call.
const MAX_RECORDS_PER_CALL: usize = 10_000;
/// The bytes one GetRecords call aims at: a shard serves 2 MB/s to all its readers, which 5
/// calls a second of 1 MiB already exceed; asking for more per call only costs memory.
const BYTES_PER_CALL: u64 = 1 << 20;

/// A bad stream reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KinesisError {
    /// The ARN does not name a Kinesis stream.
    #[error(
        "invalid stream ARN {arn:?}: expected arn:<partition>:kinesis:<region>:<account>:stream/<name>"
    )]
    InvalidArn {
        /// The text given.
        arn: String,
    },
}

/// Metric names (labels: `stream`, `shard`), next to the core's `kinsumer_*` metrics.
pub const GET_RECORDS: &str = "kinsumer_kinesis_get_records_total";
/// Reads refused for rate.
pub const THROTTLED: &str = "kinsumer_kinesis_throttled_total";
/// Expired iterators replaced.
pub const EXPIRED: &str = "kinsumer_kinesis_expired_iterators_total";
/// KPL-prefixed records that were not valid aggregates.
pub const MALFORMED: &str = "kinsumer_kinesis_malformed_aggregates_total";
/// Checkpoints found fallen off retention.
pub const TRIMMED: &str = "kinsumer_kinesis_trimmed_checkpoints_total";
/// SubscribeToShard calls (fan-out).
pub const SUBSCRIPTIONS: &str = "kinsumer_kinesis_subscriptions_total";

/// Counts one event in `stats` (its `counter`) and in the `metrics` facade.
pub(crate) fn bump(
    stats: &KinesisStats,
    counter: &AtomicU64,
    metric: &'static str,
    shard: &ShardId,
) {
    counter.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(metric, "stream" => stats.stream.clone(), "shard" => shard.to_string())
        .increment(1);
}

/// Counters a [`KinesisSource`] keeps, for tests and metrics.
#[derive(Debug, Default)]
pub struct KinesisStats {
    /// GetRecords calls made.
    pub get_records_calls: AtomicU64,
    /// Calls refused for rate (`ProvisionedThroughputExceeded`, KMS throttling).
    pub throttled: AtomicU64,
    /// Expired iterators replaced (GetRecords answered `ExpiredIteratorException`).
    pub expired_iterators: AtomicU64,
    /// Records with the KPL prefix that were not valid aggregates (delivered raw).
    pub malformed_aggregates: AtomicU64,
    /// SubscribeToShard calls (fan-out mode), the first and every resubscription.
    pub subscriptions: AtomicU64,
    /// Checkpoints found to have fallen off retention (reported as `SourceError::Trimmed`).
    pub trimmed_checkpoints: AtomicU64,
    /// The stream, for the metrics' labels.
    stream: String,
}

impl KinesisStats {
    fn for_stream(stream: &str) -> Arc<Self> {
        Arc::new(Self {
            stream: stream.to_string(),
            ..Self::default()
        })
    }
}

/// How a request names the stream: by name, or by ARN (then the name is the ARN's last part).
#[derive(Clone, Debug)]
pub(crate) struct StreamRef {
    pub(crate) name: String,
    pub(crate) arn: Option<String>,
}

/// A Kinesis data stream as a [`ShardSource`]. Cheap to clone.
///
/// The caller builds the [`Client`] (credentials from the standard AWS chain, region, HTTP
/// client and TLS of their choice); this crate forces none of it.
#[derive(Clone, Debug)]
pub struct KinesisSource {
    pub(crate) client: Client,
    pub(crate) stream: Arc<StreamRef>,
    pub(crate) stats: Arc<KinesisStats>,
    /// `Some` in enhanced fan-out mode.
    fan_out: Option<Arc<FanOut>>,
    /// ListShards page size (the service's default when `None`).
    page_size: Option<i32>,
    /// A listing succeeded once: the stream exists (or existed), so a later "not found" is a
    /// stream deleted and created again, or a restarted service — retried, not fatal.
    listed_once: Arc<AtomicBool>,
}

impl KinesisSource {
    /// The stream named `stream`.
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        let name = stream.into();
        Self {
            client,
            stats: KinesisStats::for_stream(&name),
            stream: Arc::new(StreamRef { name, arn: None }),
            fan_out: None,
            page_size: None,
            listed_once: Arc::default(),
        }
    }

    /// The stream with this ARN (requests name it by ARN, as cross-account access needs).
    pub fn from_arn(client: Client, arn: impl Into<String>) -> Result<Self, KinesisError> {
        let arn = arn.into();
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let name = match parts.as_slice() {
            ["arn", _, "kinesis", _, _, resource] => resource
                .strip_prefix("stream/")
                .filter(|n| !n.is_empty() && !n.contains('/')),
            _ => None,
        };
        let Some(name) = name.map(str::to_string) else {
            return Err(KinesisError::InvalidArn { arn });
        };
        Ok(Self {
            client,
            stats: KinesisStats::for_stream(&name),
            stream: Arc::new(StreamRef {
                name,
                arn: Some(arn),
            }),
            fan_out: None,
            page_size: None,
            listed_once: Arc::default(),
        })
    }

    /// Reads through enhanced fan-out instead of polling: one stream consumer named
    /// `options.consumer_name` (use the application's name: the same for every client of the fleet,
    /// as Kinesis allows 20 per stream), registered on first use if missing, and one
    /// SubscribeToShard per shard read. See [`fan_out`](crate::fan_out).
    pub fn with_fan_out(mut self, options: impl Into<FanOutOptions>) -> Self {
        self.fan_out = Some(Arc::new(FanOut::new(options.into())));
        self
    }

    /// In fan-out mode, deregisters the stream consumer (when the application is retired).
    pub async fn deregister_fan_out(&self) -> Result<(), SourceError> {
        match &self.fan_out {
            Some(fan_out) => fan_out.deregister(self).await,
            None => Ok(()),
        }
    }

    /// Asks ListShards for pages of at most `n` shards (1..=10,000), to exercise paging.
    #[doc(hidden)]
    pub fn with_list_page_size(mut self, n: i32) -> Self {
        self.page_size = Some(n.clamp(1, 10_000));
        self
    }

    /// A shard reported missing may not be: some implementations answer a sequence number
    /// they do not know with ResourceNotFound, and an iterator of a stream that was deleted and
    /// created again (or of a service that restarted) is not found either. Finishing a live
    /// shard's lease would skip its records, so `ShardGone` stands only if a listing agrees;
    /// otherwise a position is treated as trimmed, and anything else is retried.
    pub(crate) async fn confirm_gone(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
        err: SourceError,
    ) -> SourceError {
        let SourceError::ShardGone(_) = &err else {
            return err;
        };
        match self.still_listed(shard).await {
            Ok(false) => err,
            // Unsure: retry later rather than finish a lease on a guess.
            Err(unsure) => unsure,
            Ok(true) => match from {
                Checkpoint::After(p) => SourceError::Trimmed {
                    shard: shard.clone(),
                    position: format!("{p} (not found in a shard that still exists)"),
                },
                _ => SourceError::Transient(format!(
                    "{shard} was answered as not found, but the stream still lists it; retrying"
                )),
            },
        }
    }

    /// Whether the stream's listing has `shard` (a failed listing is a transient error: never
    /// decide a shard is gone on a guess).
    pub(crate) async fn still_listed(&self, shard: &ShardId) -> Result<bool, SourceError> {
        match self.list_shards().await {
            Ok(shards) => Ok(shards.iter().any(|s| &s.id == shard)),
            Err(e) => Err(SourceError::Transient(format!(
                "could not confirm that {shard} is gone: {e}"
            ))),
        }
    }

    /// The source's counters.
    pub fn stats(&self) -> &KinesisStats {
        &self.stats
    }
}

/// An error code of the Kinesis API, classified.
pub(crate) fn classify<E, R>(err: &SdkError<E, R>, shard: Option<&ShardId>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = DisplayErrorContext(err).to_string();
    match err.code() {
        Some(
            "ProvisionedThroughputExceededException"
            | "KMSThrottlingException"
            | "LimitExceededException"
            | "ThrottlingException",
        ) => SourceError::Throttled(text),
        Some("ResourceNotFoundException") => match shard {
            Some(shard) => SourceError::ShardGone(shard.clone()),
            None => SourceError::Fatal(text),
        },
        Some(
            "AccessDeniedException"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSNotFoundException"
            | "KMSOptInRequired"
            | "InvalidArgumentException"
            | "ValidationException"
            | "UnrecognizedClientException",
        ) => SourceError::Fatal(text),
        // Network failures, timeouts, 5xx, and anything unknown: retry.
        _ => SourceError::Transient(text),
    }
}

fn parse_hash_key(text: &str, shard: &str) -> Result<u128, SourceError> {
    text.parse().map_err(|_| {
        SourceError::Fatal(format!(
            "ListShards returned hash key {text:?} for {shard}, not a 128-bit integer"
        ))
    })
}

#[async_trait]
impl ShardSource for KinesisSource {
    fn stream_name(&self) -> &str {
        &self.stream.name
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            // With a NextToken, ListShards refuses the stream name: one or the other.
            let mut req = self.client.list_shards().set_max_results(self.page_size);
            req = match (&next, &self.stream.arn) {
                (Some(token), _) => req.next_token(token),
                (None, Some(arn)) => req.stream_arn(arn),
                (None, None) => req.stream_name(&self.stream.name),
            };
            let out = req.send().await.map_err(|e| {
                let err = classify(&e, None);
                if e.code() == Some("ResourceNotFoundException")
                    && self.listed_once.load(Ordering::Relaxed)
                {
                    return SourceError::Transient(format!(
                        "stream {} is not found, though it was listed before (deleted and \
                         created again, or the service restarted?); retrying: {err}",
                        self.stream.name
                    ));
                }
                err
            })?;
            for s in out.shards() {
                let range = s.hash_key_range().ok_or_else(|| {
                    SourceError::Fatal(format!(
                        "ListShards gave {} no hash key range",
                        s.shard_id()
                    ))
                })?;
                let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(ShardId::from)
                    .collect();
                shards.push(ShardInfo {
                    id: ShardId::from(s.shard_id()),
                    parents,
                    hash_range: HashRange {
                        start: parse_hash_key(range.starting_hash_key(), s.shard_id())?,
                        end: parse_hash_key(range.ending_hash_key(), s.shard_id())?,
                    },
                    // Only the presence of an end matters (emulators report i64::MAX).
                    open: s
                        .sequence_number_range()
                        .is_none_or(|r| r.ending_sequence_number().is_none()),
                });
            }
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_string()),
                _ => {
                    self.listed_once.store(true, Ordering::Relaxed);
                    return Ok(shards);
                }
            }
        }
    }

    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        if let Some(fan_out) = &self.fan_out {
            return fan_out.open(self, shard, from).await;
        }
        let mut reader = PollingReader {
            source: self.clone(),
            cursor: Cursor::new(shard.clone(), self.stats.clone()),
            start: from.clone(),
            iterator: None,
            end: None,
            behind: None,
            read_records: 0,
            read_bytes: 0,
        };
        reader.reopen(from.clone()).await?;
        Ok(Box::new(reader))
    }
}

/// What polling and fan-out readers share: turning the service's records into user records,
/// skipping what was delivered already, and noticing a checkpoint that fell off retention.
///
/// The service counts stream records, the consumer's bounds count user records: one read may
/// return 10,000 aggregates of thousands of user records each. So the records read are queued
/// here whole, and handed out at most `max_records` user records at a time ([`Cursor::pop`]);
/// the reader asks the service again only once the queue is empty. What the queue holds is at
/// most one response of the service, in the service's own bytes.
pub(crate) struct Cursor {
    pub(crate) shard: ShardId,
    stats: Arc<KinesisStats>,
    /// Records at or before this position were delivered already (a resume inside an
    /// aggregate, or after a re-open): skip them.
    skip_through: Option<Position>,
    /// After `After(p)`: the first record read must be `p`'s own; if it is later, `p` fell off
    /// retention and what followed it may be gone.
    expect_first: Option<SequenceNumber>,
    /// The last record handed out.
    last: Option<Position>,
    /// Stream records read and not yet handed out whole, in order.
    queue: VecDeque<kpl::UserRecords>,
}

impl Cursor {
    pub(crate) fn new(shard: ShardId, stats: Arc<KinesisStats>) -> Self {
        Self {
            shard,
            stats,
            skip_through: None,
            expect_first: None,
            last: None,
            queue: VecDeque::new(),
        }
    }

    /// Notes that reading (re)starts at `from`.
    pub(crate) fn starting_at(&mut self, from: &Checkpoint) {
        self.queue.clear();
        if let Checkpoint::After(p) = from {
            self.skip_through = Some(p.clone());
            self.expect_first = Some(p.sequence.clone());
        }
    }

    /// Where to re-open so that nothing is skipped or repeated: right after the last record
    /// handed out, or at `start` if none was.
    pub(crate) fn resume_point(&self, start: &Checkpoint) -> Checkpoint {
        self.last
            .clone()
            .map_or_else(|| start.clone(), Checkpoint::After)
    }

    /// Whether every record read was handed out.
    pub(crate) fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues the records of one response of the service (their bytes moved, not copied).
    pub(crate) fn push(
        &mut self,
        records: Vec<aws_sdk_kinesis::types::Record>,
    ) -> Result<(), SourceError> {
        for r in records {
            let sequence: SequenceNumber = r.sequence_number.parse().map_err(|e| {
                SourceError::Fatal(format!("Kinesis returned a bad sequence number: {e}"))
            })?;
            if let Some(expected) = self.expect_first.take()
                && sequence > expected
            {
                bump(
                    &self.stats,
                    &self.stats.trimmed_checkpoints,
                    TRIMMED,
                    &self.shard,
                );
                self.queue.clear();
                return Err(SourceError::Trimmed {
                    shard: self.shard.clone(),
                    position: format!("{expected} (the first record still retained is {sequence})"),
                });
            }
            let arrival_ms = r
                .approximate_arrival_timestamp
                .and_then(|t| t.to_millis().ok())
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or(0);
            let data = Bytes::from(r.data.into_inner());
            let users = kpl::UserRecords::new(sequence, r.partition_key, data, arrival_ms);
            if users.malformed() {
                bump(
                    &self.stats,
                    &self.stats.malformed_aggregates,
                    MALFORMED,
                    &self.shard,
                );
                warn!(shard = %self.shard, sequence = %users.sequence(), "record has the KPL prefix but is not a valid aggregate; delivering it raw");
            }
            self.queue.push_back(users);
        }
        Ok(())
    }

    /// Hands out up to `max_records` user records from the queue (at least one is asked for),
    /// minus those delivered already.
    pub(crate) fn pop(&mut self, max_records: usize) -> Vec<SourceRecord> {
        let max = max_records.max(1);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            match front.next() {
                Some(user) => {
                    if self
                        .skip_through
                        .as_ref()
                        .is_none_or(|s| user.position > *s)
                    {
                        out.push(user);
                    }
                }
                None => {
                    self.queue.pop_front();
                }
            }
        }
        // Drop a finished record at the front now, so `is_drained` is true as soon as the last
        // user record is out (the shard's end is reported with it).
        while self.queue.front().is_some_and(kpl::UserRecords::is_done) {
            self.queue.pop_front();
        }
        if let Some(last) = out.last() {
            self.last = Some(last.position.clone());
            self.skip_through = None;
        }
        out
    }
}

/// The iterator type, and its sequence number or timestamp, that starts reading at `from`
/// (`None` for `ShardEnd`). `After(seq/sub)` starts AT `seq`, not after it: a resume inside a
/// KPL aggregate must read that record again and skip the sub-records already processed.
pub(crate) fn start_of(
    from: &Checkpoint,
) -> Option<(ShardIteratorType, Option<String>, Option<DateTime>)> {
    Some(match from {
        Checkpoint::TrimHorizon => (ShardIteratorType::TrimHorizon, None, None),
        Checkpoint::Latest => (ShardIteratorType::Latest, None, None),
        Checkpoint::AtTimestamp(ms) => (
            ShardIteratorType::AtTimestamp,
            None,
            Some(DateTime::from_millis(
                i64::try_from(*ms).unwrap_or(i64::MAX),
            )),
        ),
        Checkpoint::After(p) => (
            ShardIteratorType::AtSequenceNumber,
            Some(p.sequence.to_string()),
            None,
        ),
        Checkpoint::ShardEnd => return None,
    })
}

/// How far ahead of this host's clock a timestamp may be and still be taken for clock skew
/// between this host and the service (retried) rather than a position in the future.
const CLOCK_SKEW_MS: u64 = 60_000;

/// Classifies an error of a call that started reading at `from`: a starting sequence number
/// Kinesis rejects means the checkpoint fell off retention — `Trimmed`, so the consumer's
/// `TrimmedPolicy` decides.
pub(crate) fn classify_start<E, R>(
    err: &SdkError<E, R>,
    from: &Checkpoint,
    shard: &ShardId,
) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (from, classify(err, Some(shard))) {
        (Checkpoint::After(p), SourceError::Fatal(text))
            if err.code() == Some("InvalidArgumentException") =>
        {
            SourceError::Trimmed {
                shard: shard.clone(),
                position: format!("{p} ({text})"),
            }
        }
        // A timestamp the service refuses as in the future. Near our own clock it is the
        // service's clock that is behind (a start at `Latest` is written down as our time):
        // retried, it passes once the service catches up. Well ahead of our clock it is a bad
        // position — that shard's problem, not the consumer's: set aside until it is reset.
        (Checkpoint::AtTimestamp(ms), SourceError::Fatal(text))
            if err.code() == Some("InvalidArgumentException") =>
        {
            let host_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if *ms <= host_now.saturating_add(CLOCK_SKEW_MS) {
                SourceError::Transient(format!(
                    "{shard}: the service refused {from} (its clock is behind ours?); retrying: {text}"
                ))
            } else {
                SourceError::BadPosition {
                    shard: shard.clone(),
                    position: from.to_string(),
                    reason: text,
                }
            }
        }
        (_, other) => other,
    }
}

/// A polling cursor over one shard. See the crate docs for how it starts, resumes and ends.
struct PollingReader {
    source: KinesisSource,
    cursor: Cursor,
    /// Where it was opened, to re-open there if an iterator expires before any record.
    start: Checkpoint,
    iterator: Option<String>,
    /// `Some(children)` once the service said the shard ends (reported when the cursor has
    /// handed out every record read).
    end: Option<Vec<ShardId>>,
    /// The last `millis_behind_latest` the service gave.
    behind: Option<u64>,
    /// Stream records and their bytes read so far: their ratio sizes the next call.
    read_records: u64,
    read_bytes: u64,
}

impl PollingReader {
    /// Gets a fresh iterator for `from`.
    async fn reopen(&mut self, from: Checkpoint) -> Result<(), SourceError> {
        let Some((kind, sequence, timestamp)) = start_of(&from) else {
            self.end = Some(Vec::new());
            return Ok(());
        };
        let stream = &self.source.stream;
        let shard = &self.cursor.shard;
        let mut req = self
            .source
            .client
            .get_shard_iterator()
            .shard_id(shard.as_str())
            .shard_iterator_type(kind)
            .set_starting_sequence_number(sequence)
            .set_timestamp(timestamp);
        req = match &stream.arn {
            Some(arn) => req.stream_arn(arn),
            None => req.stream_name(&stream.name),
        };
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                let err = classify_start(&e, &from, shard);
                let err = self.source.confirm_gone(shard, &from, err).await;
                if matches!(err, SourceError::Trimmed { .. }) {
                    bump(
                        &self.source.stats,
                        &self.source.stats.trimmed_checkpoints,
                        TRIMMED,
                        shard,
                    );
                }
                return Err(err);
            }
        };
        self.cursor.starting_at(&from);
        self.iterator = out.shard_iterator().map(str::to_string);
        if self.iterator.is_none() {
            self.end = Some(Vec::new());
        }
        Ok(())
    }

    /// How many stream records to ask for when `max_records` user records are wanted: about
    /// [`BYTES_PER_CALL`] at the size of the records read so far, and a single record while no
    /// size is known. A response is held whole while its user records are handed out (and
    /// parsing it takes a few times its size), so its size counts against memory as surely as
    /// the records handed out do; a shard gives no more than 2 MB/s anyway.
    fn limit(&self, max_records: usize) -> usize {
        let max = max_records.clamp(1, MAX_RECORDS_PER_CALL);
        match self.read_bytes.checked_div(self.read_records) {
            None => 1,
            Some(average) => {
                let fit = BYTES_PER_CALL / average.max(1);
                max.min(usize::try_from(fit).unwrap_or(usize::MAX)).max(1)
            }
        }
    }

    /// Up to `max_records` records from the cursor's queue; the shard's end only once the
    /// queue is empty.
    fn batch_from_queue(&mut self, max_records: usize, probed: bool) -> Batch {
        let records = self.cursor.pop(max_records);
        let drained = self.cursor.is_drained();
        Batch {
            records,
            millis_behind_latest: self.behind,
            end: self.end.clone().filter(|_| drained),
            more_ready: !drained || probed,
        }
    }
}

#[async_trait]
impl ShardReader for PollingReader {
    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError> {
        if !self.cursor.is_drained() {
            return Ok(self.batch_from_queue(max_records, false));
        }
        let Some(iterator) = self.iterator.clone().filter(|_| self.end.is_none()) else {
            return Ok(Batch {
                end: Some(self.end.clone().unwrap_or_default()),
                ..Batch::default()
            });
        };
        // The service counts stream records (an aggregate yields more user records, which wait
        // in the cursor's queue), and bytes only up to 10 MiB a call: size the call by both.
        let limit = self.limit(max_records);
        let stats = &self.source.stats;
        bump(
            stats,
            &stats.get_records_calls,
            GET_RECORDS,
            &self.cursor.shard,
        );
        let mut req = self
            .source
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX));
        if let Some(arn) = &self.source.stream.arn {
            req = req.stream_arn(arn);
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if e.code() == Some("ExpiredIteratorException") => {
                // Re-open right after the last record returned, or where we started if none:
                // never at the horizon by accident.
                bump(stats, &stats.expired_iterators, EXPIRED, &self.cursor.shard);
                let from = self.cursor.resume_point(&self.start);
                debug!(shard = %self.cursor.shard, from = %from, "iterator expired; re-opening");
                self.reopen(from).await?;
                return Ok(Batch::default());
            }
            Err(e) => {
                let err = classify(&e, Some(&self.cursor.shard));
                if matches!(err, SourceError::Throttled(_)) {
                    bump(stats, &stats.throttled, THROTTLED, &self.cursor.shard);
                }
                if let SourceError::ShardGone(_) = err {
                    // Gone only if a listing agrees. A shard still listed had its iterator
                    // invalidated (the stream deleted and created again, a restarted
                    // service): read on from right after the last record handed out.
                    let from = self.cursor.resume_point(&self.start);
                    let shard = self.cursor.shard.clone();
                    return match self.source.still_listed(&shard).await? {
                        false => Err(err),
                        true => {
                            warn!(shard = %shard, from = %from, "GetRecords answered not found for a shard the stream still lists; re-opening");
                            self.iterator = None;
                            self.reopen(from).await?;
                            Ok(Batch::default())
                        }
                    };
                }
                return Err(err);
            }
        };
        self.behind = out.millis_behind_latest.and_then(|m| u64::try_from(m).ok());
        match out.next_shard_iterator {
            Some(next) => self.iterator = Some(next),
            None => {
                self.end = Some(
                    out.child_shards
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| ShardId::from(c.shard_id))
                        .collect(),
                );
            }
        }
        // The first record of a reader measured the records' size: read on at once.
        let probed = self.read_records == 0 && !out.records.is_empty() && self.end.is_none();
        self.read_records += out.records.len() as u64;
        self.read_bytes += out
            .records
            .iter()
            .map(|r| r.data.as_ref().len() as u64)
            .sum::<u64>();
        self.cursor.push(out.records)?;
        Ok(self.batch_from_queue(max_records, probed))
    }
}
