//! [`KinesisSource`]: the `ShardSource` contract over ListShards, GetShardIterator and
//! GetRecords.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use tracing::{debug, warn};

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::{Batch, ShardId, ShardInfo, ShardReader, ShardSource, SourceError};

use crate::cursor::{Cursor, start_of};
use crate::errors::{KinesisError, classify, classify_start};
use crate::fan_out::{FanOut, FanOutOptions};
use crate::stats::{EXPIRED, GET_RECORDS, KinesisStats, THROTTLED, TRIMMED, bump};
use crate::stream::{StreamContext, StreamRef};

/// Kinesis's largest `Limit` for one GetRecords call.
const MAX_RECORDS_PER_CALL: usize = 10_000;
/// The bytes one GetRecords call aims at: a shard serves 2 MB/s to all its readers, which 5
/// calls a second of 1 MiB already exceed; asking for more per call only costs memory.
const BYTES_PER_CALL: u64 = 1 << 20;

/// A Kinesis data stream as a [`ShardSource`]. Cheap to clone.
///
/// The caller builds the [`Client`] (credentials from the standard AWS chain, region, HTTP
/// client and TLS of their choice); this crate forces none of it.
#[derive(Clone, Debug)]
pub struct KinesisSource {
    /// The client, the stream, the counters and the listing, as every reader shares them.
    shared: StreamContext,
    /// `Some` in enhanced fan-out mode.
    fan_out: Option<Arc<FanOut>>,
}

impl KinesisSource {
    /// The stream named `stream`.
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        let name = stream.into();
        Self {
            shared: StreamContext::new(client, StreamRef { name, arn: None }),
            fan_out: None,
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
            shared: StreamContext::new(
                client,
                StreamRef {
                    name,
                    arn: Some(arn),
                },
            ),
            fan_out: None,
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
            Some(fan_out) => fan_out.deregister(&self.shared).await,
            None => Ok(()),
        }
    }

    /// Asks ListShards for pages of at most `n` shards (1..=10,000), to exercise paging.
    #[doc(hidden)]
    pub fn with_list_page_size(mut self, n: i32) -> Self {
        self.shared.page_size = Some(n.clamp(1, 10_000));
        self
    }

    /// The source's counters.
    pub fn stats(&self) -> &KinesisStats {
        &self.shared.stats
    }
}

#[async_trait]
impl ShardSource for KinesisSource {
    fn stream_name(&self) -> &str {
        &self.shared.stream.name
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        self.shared.list_shards().await
    }

    async fn open(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        if let Some(fan_out) = &self.fan_out {
            return fan_out.open(&self.shared, shard, from).await;
        }
        let mut reader = PollingReader {
            source: self.shared.clone(),
            cursor: Cursor::new(shard.clone(), self.shared.stats.clone()),
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

/// A polling cursor over one shard. See the crate docs for how it starts, resumes and ends.
struct PollingReader {
    source: StreamContext,
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
