//! Delivery: how a fetched batch leaves its tenure — registered in the tenure's
//! [`AckTracker`] as one entry, then moved (not copied) to the record stream as one [`Run`]
//! (its records handed out and acked one by one through the run's counters), or to the
//! tenure's batch-handler worker as one [`ShardBatch`].
//!
//! This is the one place where a [`SourceRecord`](crate::source::SourceRecord) becomes
//! something the application can ack: a run carries what its records ack into, a batch the
//! index its tracker entry got, so an ack finds its entry without any lookup back through the
//! engine.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::record::{AckTracker, Run, ShardBatch};
use crate::store::Tenure;

/// Where the fetcher puts records.
pub(super) enum Sink {
    /// The record stream: one run per fetched batch.
    Stream(mpsc::Sender<Arc<Run>>),
    /// The batch-handler worker: the batch's tracker entry (one per batch: the handler acks
    /// whole batches), and the batch.
    Handler(mpsc::Sender<(u64, ShardBatch)>),
}

/// One read of the shard, as the fetcher passes it on.
pub(super) struct Fetched {
    pub(super) records: Vec<crate::source::SourceRecord>,
    /// Their memory, as [`SourceRecord::memory_size`] counts it.
    ///
    /// [`SourceRecord::memory_size`]: crate::source::SourceRecord::memory_size
    pub(super) bytes: usize,
    pub(super) millis_behind_latest: Option<u64>,
}

/// Registers the fetched records with the tracker (one entry for the batch) and hands them to
/// the sink (moved, not copied).
/// `false` if the sink is gone.
pub(super) async fn deliver(
    engine: &Engine,
    tenure: &Tenure,
    tracker: &Arc<AckTracker>,
    epoch: u64,
    sink: &Sink,
    fetched: Fetched,
) -> bool {
    let Fetched {
        records,
        bytes,
        millis_behind_latest,
    } = fetched;
    let (Some(first_record), Some(last_record)) = (records.first(), records.last()) else {
        return true;
    };
    match sink {
        Sink::Stream(tx) => {
            let run = Arc::new(Run::new(
                records,
                bytes,
                tenure.clone(),
                engine.stream.clone(),
                engine.config.ack_mode,
                epoch,
                tracker.shared(),
            ));
            tracker.register_run(run.clone());
            tx.send(run).await.is_ok()
        }
        Sink::Handler(tx) => {
            // The handler takes and acks the batch whole: one tracker entry stands for it.
            let entry = tracker.register_batch(
                first_record.position.clone(),
                last_record.position.clone(),
                records.len(),
                bytes,
            );
            let batch = ShardBatch {
                shard: tenure.shard.clone(),
                records: records.into(),
                lease_token: tenure.token,
                tenure: tenure.clone(),
                stream: engine.stream.clone(),
                millis_behind_latest,
            };
            tx.send((entry, batch)).await.is_ok()
        }
    }
}
