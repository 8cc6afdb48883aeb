//! Delivery: how a fetched batch leaves its tenure — registered in the tenure's
//! [`AckTracker`], then moved (not copied) to the record stream as one chunk of [`Record`]s, or
//! to the tenure's batch-handler worker as one [`ShardBatch`].
//!
//! This is the one place where a [`SourceRecord`](crate::source::SourceRecord) becomes
//! something the application can ack: each record or batch carries the index its tracker entry
//! got, so an ack finds its entry without any lookup back through the engine.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::record::{AckTracker, Fetched, Record, ShardBatch};
use crate::store::Tenure;

/// Where the fetcher puts records.
pub(super) enum Sink {
    /// The record stream: one chunk per fetched batch.
    Stream(mpsc::Sender<Vec<Record>>),
    /// The batch-handler worker: the batch's tracker entry (one per batch: the handler acks
    /// whole batches), and the batch.
    Handler(mpsc::Sender<(u64, ShardBatch)>),
}

/// Registers `records` with the tracker (an entry per record for the record stream, one for the
/// batch for a handler) and hands them to the sink (moved, not copied).
/// `false` if the sink is gone.
pub(super) async fn deliver(
    engine: &Engine,
    tenure: &Tenure,
    tracker: &Arc<AckTracker>,
    epoch: u64,
    sink: &Sink,
    records: Vec<crate::source::SourceRecord>,
    millis_behind_latest: Option<u64>,
) -> bool {
    let (Some(first_record), Some(last_record)) = (records.first(), records.last()) else {
        return true;
    };
    match sink {
        Sink::Stream(tx) => {
            // One lock for the whole batch; the records take the indices from `first` on, in
            // order: each is handed out and acked on its own.
            let first = tracker.register_all(
                records
                    .iter()
                    .map(|r| (r.position.clone(), r.memory_size())),
            );
            let from = Arc::new(Fetched {
                tenure: tenure.clone(),
                stream: engine.stream.clone(),
                tracker: tracker.clone(),
                mode: engine.config.ack_mode,
                epoch,
                sampled: AtomicBool::new(false),
            });
            let chunk = (first..)
                .zip(records)
                .map(|(index, r)| Record {
                    inner: r,
                    from: from.clone(),
                    index,
                    done: true, // armed only when the record stream hands it out
                })
                .collect();
            tx.send(chunk).await.is_ok()
        }
        Sink::Handler(tx) => {
            // The handler takes and acks the batch whole: one tracker entry stands for it.
            let entry = tracker.register_batch(
                first_record.position.clone(),
                last_record.position.clone(),
                records.len(),
                records.iter().map(|r| r.memory_size()).sum(),
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
