//! What a Kinesis source counts: [`KinesisStats`] and the metric names, and [`bump`], which
//! counts one event in both.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kinsumer_core::source::ShardId;

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
/// Every metric above (labels `stream` and `shard`; not `application`: a source does not know
/// which application reads it).
pub const ALL: &[&str] = &[
    GET_RECORDS,
    THROTTLED,
    EXPIRED,
    MALFORMED,
    TRIMMED,
    SUBSCRIPTIONS,
];

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

/// Counters a [`KinesisSource`](crate::KinesisSource) keeps, for tests and metrics.
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
    pub(crate) fn for_stream(stream: &str) -> Arc<Self> {
        Arc::new(Self {
            stream: stream.to_string(),
            ..Self::default()
        })
    }
}
