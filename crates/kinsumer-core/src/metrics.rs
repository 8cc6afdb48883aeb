//! The metrics a consumer reports, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! kinsumer forces no exporter on you: install any `metrics` recorder (Prometheus, StatsD,
//! OpenTelemetry, …) and these appear; without one they cost next to nothing. Every metric
//! carries the labels `application` and `stream`; per-shard ones add `shard`, per-client ones
//! add `client`.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `kinsumer_records_fetched_total` | counter | shard | records read from the source |
//! | `kinsumer_bytes_fetched_total` | counter | shard | payload bytes read |
//! | `kinsumer_records_delivered_total` | counter | shard | records handed to the application |
//! | `kinsumer_records_acked_total` | counter | shard | records the application acked |
//! | `kinsumer_ack_latency_seconds` | histogram | shard | hand-out → ack: one sample per fetched batch (its first ack) |
//! | `kinsumer_millis_behind_latest` | gauge | shard | how far the reader is behind the tip |
//! | `kinsumer_watermark_lag_records` | gauge | shard | records fetched since the watermark |
//! | `kinsumer_checkpoints_total` | counter | shard, `outcome` = `ok` / `failed` / `lost` | checkpoint writes |
//! | `kinsumer_leases_taken_total` | counter | client, `from` = `free` / `expired` / `self` | takes: an unowned lease, one whose owner died (a takeover), or our own again |
//! | `kinsumer_leases_released_total` | counter | client | graceful handoffs and shutdown releases |
//! | `kinsumer_leases_lost_total` | counter | client | tenures ended because another client holds the lease |
//! | `kinsumer_leases_finished_total` | counter | client | shards read to their end |
//! | `kinsumer_handoff_seconds` | histogram | client | a release: stop → drained → released |
//! | `kinsumer_leases_held` | gauge | client | leases this client holds |
//! | `kinsumer_live_clients` | gauge | client | clients this client sees alive |
//! | `kinsumer_self_fenced_total` | counter | client | times this client fenced itself |
//! | `kinsumer_changes_announced_total` | counter | client | times this client moved the change counter on (after a take, release, finish, join, leave, or a death it judged) |
//! | `kinsumer_leases_vanished_total` | counter | client | lease rows this client held that the store lost (also an `ERROR` in the log) |
//! | `kinsumer_stalls_total` | counter | client, `kind` = `record_not_acked` / `handler_hung` / `not_polled` / `supervisor_stuck` | stalls found (each also a `WARN`; see `kinsumer_core::stall`) |
//! | `kinsumer_batches_skipped_total` | counter | client | batches the failure policy skipped (see `kinsumer_core::failure`) |
//! | `kinsumer_corrupt_rows` | gauge | client, `kind` = `lease` / `client` | rows set aside: they do not decode, or the store cannot take them (each named in the log) |
//!
//! The Kinesis source adds `kinsumer_kinesis_*` counters (GetRecords calls, throttles, expired
//! iterators, malformed aggregates, trimmed checkpoints); see `kinsumer-kinesis`.
//!
//! ```
//! let recorder = metrics_util::debugging::DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || {
//!     metrics::counter!(kinsumer_core::metrics::RECORDS_ACKED, "shard" => "s-1").increment(2);
//! });
//! assert_eq!(snapshotter.snapshot().into_vec().len(), 1);
//! ```

use metrics::{Counter, Gauge, Histogram, Label, counter, gauge, histogram};

use crate::source::ShardId;

/// Counter, per shard: records read from the source.
pub const RECORDS_FETCHED: &str = "kinsumer_records_fetched_total";
/// Counter, per shard: payload bytes read from the source.
pub const BYTES_FETCHED: &str = "kinsumer_bytes_fetched_total";
/// Counter, per shard: records handed to the application.
pub const RECORDS_DELIVERED: &str = "kinsumer_records_delivered_total";
/// Counter, per shard: records the application acked.
pub const RECORDS_ACKED: &str = "kinsumer_records_acked_total";
/// Histogram, per shard: hand-out → ack, one sample per fetched batch (its first ack).
pub const ACK_LATENCY: &str = "kinsumer_ack_latency_seconds";
/// Gauge, per shard: how far the reader is behind the tip of the shard.
pub const MILLIS_BEHIND_LATEST: &str = "kinsumer_millis_behind_latest";
/// Gauge, per shard: records fetched since the watermark.
pub const WATERMARK_LAG: &str = "kinsumer_watermark_lag_records";
/// Counter, per shard and `outcome` (`ok` / `failed` / `lost`): checkpoint writes.
pub const CHECKPOINTS: &str = "kinsumer_checkpoints_total";
/// Counter, per client and `from` (`free` / `expired` / `self`): leases taken.
pub const LEASES_TAKEN: &str = "kinsumer_leases_taken_total";
/// Counter, per client: graceful handoffs and shutdown releases.
pub const LEASES_RELEASED: &str = "kinsumer_leases_released_total";
/// Counter, per client: tenures ended because another client holds the lease.
pub const LEASES_LOST: &str = "kinsumer_leases_lost_total";
/// Counter, per client: shards read to their end.
pub const LEASES_FINISHED: &str = "kinsumer_leases_finished_total";
/// Histogram, per client: a release, stop → drained → released.
pub const HANDOFF_SECONDS: &str = "kinsumer_handoff_seconds";
/// Gauge, per client: leases this client holds.
pub const LEASES_HELD: &str = "kinsumer_leases_held";
/// Gauge, per client: clients this client sees alive.
pub const LIVE_CLIENTS: &str = "kinsumer_live_clients";
/// Counter, per client: times this client fenced itself.
pub const SELF_FENCED: &str = "kinsumer_self_fenced_total";
/// Counter, per client: times this client moved the change counter on.
pub const ANNOUNCED: &str = "kinsumer_changes_announced_total";
/// Gauge, per client and `kind` (`lease` / `client`): rows set aside as corrupt.
pub const CORRUPT_ROWS: &str = "kinsumer_corrupt_rows";
/// Counter, per client: lease rows this client held that the store lost.
pub const LEASES_VANISHED: &str = "kinsumer_leases_vanished_total";
/// Counter, per client and `kind`: stalls found (see [`crate::stall`]).
pub const STALLS: &str = "kinsumer_stalls_total";
/// Counter, per client: batches the failure policy skipped.
pub const BATCHES_SKIPPED: &str = "kinsumer_batches_skipped_total";

/// Every metric above, for a dashboard or an exporter's descriptions (the repository's Grafana
/// dashboard is checked against it).
pub const ALL: &[&str] = &[
    RECORDS_FETCHED,
    BYTES_FETCHED,
    RECORDS_DELIVERED,
    RECORDS_ACKED,
    ACK_LATENCY,
    MILLIS_BEHIND_LATEST,
    WATERMARK_LAG,
    CHECKPOINTS,
    LEASES_TAKEN,
    LEASES_RELEASED,
    LEASES_LOST,
    LEASES_FINISHED,
    HANDOFF_SECONDS,
    LEASES_HELD,
    LIVE_CLIENTS,
    SELF_FENCED,
    ANNOUNCED,
    CORRUPT_ROWS,
    LEASES_VANISHED,
    STALLS,
    BATCHES_SKIPPED,
];

/// The labels every metric of one consumer carries.
#[derive(Clone, Debug)]
pub(crate) struct Labels {
    application: String,
    stream: String,
    client: String,
}

impl Labels {
    pub(crate) fn new(application: &str, stream: &str, client: &str) -> Self {
        Self {
            application: application.to_string(),
            stream: stream.to_string(),
            client: client.to_string(),
        }
    }

    fn base(&self) -> Vec<Label> {
        vec![
            Label::new("application", self.application.clone()),
            Label::new("stream", self.stream.clone()),
        ]
    }

    fn with(&self, extra: &[(&'static str, String)]) -> Vec<Label> {
        let mut labels = self.base();
        labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.clone())));
        labels
    }

    fn client(&self) -> Vec<Label> {
        self.with(&[("client", self.client.clone())])
    }

    /// A client-level counter, e.g. `LEASES_TAKEN` with `from`.
    pub(crate) fn client_counter(
        &self,
        name: &'static str,
        extra: &[(&'static str, &str)],
    ) -> Counter {
        let mut labels = self.client();
        labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.to_string())));
        counter!(name, labels)
    }

    pub(crate) fn client_gauge(&self, name: &'static str) -> Gauge {
        gauge!(name, self.client())
    }

    /// A client-level gauge with more labels, e.g. `CORRUPT_ROWS` with `kind`.
    pub(crate) fn client_gauge_with(
        &self,
        name: &'static str,
        extra: &[(&'static str, &str)],
    ) -> Gauge {
        let mut labels = self.client();
        labels.extend(extra.iter().map(|(k, v)| Label::new(*k, v.to_string())));
        gauge!(name, labels)
    }

    pub(crate) fn client_histogram(&self, name: &'static str) -> Histogram {
        histogram!(name, self.client())
    }

    /// The handles of one shard's metrics, made once per tenure so the hot path only touches
    /// atomics.
    pub(crate) fn shard(&self, shard: &ShardId) -> ShardMetrics {
        let labels = self.with(&[("shard", shard.to_string())]);
        let outcome = |o: &str| {
            let mut l = labels.clone();
            l.push(Label::new("outcome", o.to_string()));
            counter!(CHECKPOINTS, l)
        };
        ShardMetrics {
            fetched: counter!(RECORDS_FETCHED, labels.clone()),
            bytes: counter!(BYTES_FETCHED, labels.clone()),
            delivered: counter!(RECORDS_DELIVERED, labels.clone()),
            acked: counter!(RECORDS_ACKED, labels.clone()),
            ack_latency: histogram!(ACK_LATENCY, labels.clone()),
            behind: gauge!(MILLIS_BEHIND_LATEST, labels.clone()),
            watermark_lag: gauge!(WATERMARK_LAG, labels.clone()),
            checkpoint_ok: outcome("ok"),
            checkpoint_failed: outcome("failed"),
            checkpoint_lost: outcome("lost"),
        }
    }
}

/// One shard's metric handles.
#[derive(Clone)]
pub(crate) struct ShardMetrics {
    pub(crate) fetched: Counter,
    pub(crate) bytes: Counter,
    pub(crate) delivered: Counter,
    pub(crate) acked: Counter,
    pub(crate) ack_latency: Histogram,
    pub(crate) behind: Gauge,
    pub(crate) watermark_lag: Gauge,
    pub(crate) checkpoint_ok: Counter,
    pub(crate) checkpoint_failed: Counter,
    pub(crate) checkpoint_lost: Counter,
}

impl ShardMetrics {
    /// Handles that record nothing (for trackers made outside a consumer: unit tests).
    #[cfg(test)]
    pub(crate) fn noop() -> Self {
        Self {
            fetched: Counter::noop(),
            bytes: Counter::noop(),
            delivered: Counter::noop(),
            acked: Counter::noop(),
            ack_latency: Histogram::noop(),
            behind: Gauge::noop(),
            watermark_lag: Gauge::noop(),
            checkpoint_ok: Counter::noop(),
            checkpoint_failed: Counter::noop(),
            checkpoint_lost: Counter::noop(),
        }
    }
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardMetrics")
    }
}

#[cfg(test)]
mod tests {
    /// `ALL` lists every metric name this file declares, and the module docs' table names each.
    #[test]
    fn all_lists_every_metric() {
        let source = include_str!("metrics.rs");
        let declared: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter(|l| l.contains(": &str = \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(declared.len(), super::ALL.len(), "{declared:?}");
        for name in declared {
            assert!(super::ALL.contains(&name), "{name} is not in ALL");
            assert!(
                source.contains(&format!("//! | `{name}` |")),
                "{name} is not in the table of the module docs"
            );
        }
    }
}
