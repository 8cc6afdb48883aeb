//! The [`Cursor`] both readers (polling and fan-out) read through, and [`start_of`], where a
//! read starts for a checkpoint.

use std::collections::VecDeque;
use std::sync::Arc;

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use tracing::warn;

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::{ShardId, SourceError, SourceRecord};

use crate::kpl;
use crate::stats::{KinesisStats, MALFORMED, TRIMMED, bump};

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
