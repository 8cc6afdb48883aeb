//! The record stream of a started consumer: records are handed out one by one (or the rest of
//! a fetched batch at once, [`Records::next_run`]), each hand-out only while its tenure is
//! still ours and this client is not fenced.
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
use crate::record::{Record, RecordRun, Run};
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

impl Records {
    /// The next run: the records of one fetched batch not handed out yet (up to
    /// `Config::max_records_per_read`, consecutive, of one shard), handed out together and
    /// acked together with [`RecordRun::ack`]. `None` when the stream ended, like
    /// [`StreamExt::next`](futures::StreamExt::next) on the stream; the two mix (after a few
    /// records one by one, the run is the rest of their batch).
    ///
    /// This is the record stream's fast path: its lease and this client's health are checked
    /// once for the run, not once per record, so — like a batch handler's batch — a run is
    /// handed out whole even if the lease is lost while it is processed (its late checkpoint
    /// is refused, and the next owner delivers it again).
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: kinsumer_core::Consumer) -> Result<(), kinsumer_core::ConsumerError> {
    /// let mut records = consumer.records()?;
    /// while let Some(run) = records.next_run().await {
    ///     let run = run?;
    ///     for record in run.records() {
    ///         println!("{} bytes", record.data.len());
    ///     }
    ///     run.ack();
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_run(&mut self) -> Option<Result<RecordRun, ConsumerError>> {
        std::future::poll_fn(|cx| self.poll_next_run(cx)).await
    }

    /// [`Records::next_run`] as a poll.
    pub fn poll_next_run(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<RecordRun, ConsumerError>>> {
        self.poll_take(cx, Take::Rest).map(|taken| {
            taken.map(|t| t.map(|(run, from, to)| RecordRun::handed_out(run, from, to)))
        })
    }

    /// Hands out the next record, or the rest of its run: `(run, from, to)`.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        take: Take,
    ) -> Poll<Option<Result<Stretch, ConsumerError>>> {
        self.polls += 1;
        self.poll_clock.polled(self.polls);
        loop {
            // Hand out only records whose tenure is still ours: after a handoff or a self-fence,
            // the next owner delivers them. Checked at each hand-out (of a record, or of the
            // rest of a run); a hand-out refused makes the rest of its run stale too (the epoch
            // only grows, and a revoke is for good), so the run is dropped.
            if let Some(run) = self.run.take() {
                let from = self.next;
                let to = match take {
                    Take::One => from + 1,
                    Take::Rest => run.len(),
                };
                if from < run.len()
                    && self.health.may_hand_out_now(run.epoch)
                    && run.hand_out(from, to)
                {
                    self.next = to;
                    let holding = to < run.len();
                    self.poll_clock.set_holding(holding);
                    if holding {
                        self.run = Some(run.clone());
                    }
                    return Poll::Ready(Some(Ok((run, from, to))));
                }
            }
            self.poll_clock.set_holding(false);
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(run)) => {
                    self.run = Some(run);
                    self.next = 0;
                }
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

/// Records `from..to` of a run, handed out: `(run, from, to)`.
type Stretch = (Arc<Run>, u32, u32);

/// What a hand-out takes of the current run.
#[derive(Clone, Copy)]
enum Take {
    /// Its next record.
    One,
    /// The rest of it.
    Rest,
}

impl Stream for Records {
    type Item = Result<Record, ConsumerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_take(cx, Take::One)
            .map(|taken| taken.map(|t| t.map(|(run, index, _)| Record::handed_out(run, index))))
    }
}
