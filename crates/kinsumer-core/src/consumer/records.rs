//! The record stream of a started consumer: records are handed out one by one, each only
//! while its tenure is still ours and this client is not fenced.
//!
//! This is the per-record path, so it reads no precise clock and takes no lock: the fence is
//! checked against the coarse clocks (see [`Health::may_hand_out_now`]), a hand-out is a store
//! into the record's [`Run`], and a poll is counted, not dated.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::engine::StoppedBy;
use crate::error::ConsumerError;
use crate::health::Health;
use crate::record::{Record, Run};
use crate::shutdown::{ShutdownHandle, Stop};
use crate::stall::PollClock;

/// The records of a started consumer. See [`Consumer::records`](crate::Consumer::records).
pub struct Records {
    pub(super) rx: mpsc::Receiver<Arc<Run>>,
    /// The run being handed out, and its next record.
    pub(super) run: Option<Arc<Run>>,
    pub(super) next: u32,
    /// Polls so far (published to the poll clock).
    pub(super) polls: u64,
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
        let this = &mut *self;
        this.polls += 1;
        this.poll_clock.polled(this.polls);
        loop {
            // Hand out only records whose tenure is still ours: after a handoff or a self-fence,
            // the next owner delivers them. Checked record by record, as each is handed out; a
            // record refused makes the rest of its run stale too (the epoch only grows, and a
            // revoke is for good), so the run is dropped.
            if let Some(run) = &this.run {
                let index = this.next;
                if index < run.len()
                    && this.health.may_hand_out_now(run.epoch)
                    && run.hand_out(index)
                {
                    this.next = index + 1;
                    this.poll_clock.set_holding(this.next < run.len());
                    return Poll::Ready(Some(Ok(Record::handed_out(run.clone(), index))));
                }
                this.run = None;
            }
            this.poll_clock.set_holding(false);
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(run)) => {
                    this.run = Some(run);
                    this.next = 0;
                }
                Poll::Ready(None) => {
                    let fatal = this
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
