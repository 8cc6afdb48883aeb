//! The record stream of a started consumer: records are handed out one by one, each only
//! while its tenure is still ours and this client is not fenced.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::engine::StoppedBy;
use crate::error::ConsumerError;
use crate::health::Health;
use crate::record::Record;
use crate::shutdown::{ShutdownHandle, Stop};
use crate::stall::PollClock;

/// The records of a started consumer. See [`Consumer::records`](crate::Consumer::records).
pub struct Records {
    pub(super) rx: mpsc::Receiver<Vec<Record>>,
    /// The rest of the chunk being handed out.
    pub(super) chunk: std::vec::IntoIter<Record>,
    pub(super) health: Arc<Health>,
    pub(super) stopped_by: StoppedBy,
    pub(super) poll_clock: Arc<PollClock>,
    pub(super) shutdown: Arc<watch::Sender<Stop>>,
    /// `EngineFaults::silent_drops`.
    pub(super) silent_drop: bool,
}

/// Dropping the record stream of a running consumer shuts the consumer down gracefully (with a
/// warning): nobody will take its records any more, so its leases go to clients that will.
impl Drop for Records {
    fn drop(&mut self) {
        if self.silent_drop || *self.shutdown.borrow() != Stop::Run || self.rx.is_closed() {
            return;
        }
        warn!("the record stream of a running consumer was dropped: shutting the consumer down");
        ShutdownHandle(self.shutdown.clone()).shutdown();
    }
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").finish_non_exhaustive()
    }
}

impl Stream for Records {
    type Item = Result<Record, ConsumerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // One clock read per poll, for the poll clock and both checks of the record handed out:
        // this is the per-record path.
        let now = Instant::now();
        self.poll_clock.polled(now);
        loop {
            // Hand out only records whose tenure is still ours: after a handoff or a self-fence,
            // the next owner delivers them. Checked record by record, as each is handed out.
            while let Some(mut record) = self.chunk.next() {
                if self.health.may_hand_out_at(record.from.epoch, now)
                    && record.from.tracker.hand_out_range_at(record.index, 1, now)
                {
                    record.done = false;
                    self.poll_clock.set_holding(self.chunk.len() > 0);
                    return Poll::Ready(Some(Ok(record)));
                }
            }
            self.poll_clock.set_holding(false);
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.chunk = chunk.into_iter(),
                Poll::Ready(None) => {
                    let fatal = self
                        .stopped_by
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    return Poll::Ready(fatal.map(Err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
