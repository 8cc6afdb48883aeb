//! Enhanced fan-out: records pushed over SubscribeToShard instead of polled with GetRecords.
//!
//! One *stream consumer* per application (Kinesis allows 20 per stream, so never one per
//! client): registered on first use if it does not exist — idempotently, since every client of
//! the fleet may try at once — and waited for until ACTIVE by polling DescribeStreamConsumer.
//! Each shard reader holds one subscription, pumped by its own task into a small channel, and
//! resubscribes from the last continuation sequence number when Kinesis ends a subscription
//! (after 5 minutes) or it fails; `ResourceInUseException` (the previous subscription is not
//! released yet) is retried with the core's seeded back-off ([`kinsumer_core::backoff`]; 400 ms
//! doubling to 10 s, jittered; seed it with [`FanOutOptions::backoff_seed`]). Turn fan-out on
//! with `KinesisSource::with_fan_out`.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{Instrument, debug, info, warn};

use kinsumer_core::backoff::{Backoff, BackoffPolicy};
use kinsumer_core::position::Checkpoint;
use kinsumer_core::rng::stable_hash;
use kinsumer_core::source::{Batch, ShardId, ShardReader, SourceError};

use crate::cursor::{Cursor, start_of};
use crate::errors::{classify, classify_start};
use crate::stats::{SUBSCRIPTIONS, bump};
use crate::stream::StreamContext;

/// The back-off between failed subscriptions: `200 ms × 2^attempt` (the first retry, attempt
/// 1, waits about 400 ms), capped at 10 s, jittered — the core's one rule.
const RESUBSCRIBE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(10));

/// Settings of enhanced fan-out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanOutOptions {
    /// The stream consumer's name: one per application, shared by all its clients.
    pub consumer_name: String,
    /// Resubscribe after this long even if Kinesis has not ended the subscription (default
    /// 5 minutes, when Kinesis ends it anyway).
    pub resubscribe_after: Duration,
    /// The seed of the jitter of resubscription back-off (each shard's reader draws from its
    /// own generator, seeded from this and the shard id); `None` (the default) seeds from the
    /// OS. Set it to make a test's back-off repeat exactly.
    pub backoff_seed: Option<u64>,
}

impl FanOutOptions {
    /// The defaults, for the stream consumer `consumer_name`.
    pub fn new(consumer_name: impl Into<String>) -> Self {
        Self {
            consumer_name: consumer_name.into(),
            resubscribe_after: Duration::from_secs(300),
            backoff_seed: None,
        }
    }

    /// Seeds the jitter of the resubscription back-off (the default seeds it from the OS).
    pub fn with_backoff_seed(mut self, seed: u64) -> Self {
        self.backoff_seed = Some(seed);
        self
    }
}

impl<T: Into<String>> From<T> for FanOutOptions {
    fn from(name: T) -> Self {
        Self::new(name)
    }
}

/// The fan-out state of a source: the options and, once registered, the consumer's ARN.
#[derive(Debug)]
pub(crate) struct FanOut {
    options: FanOutOptions,
    consumer_arn: OnceCell<String>,
}

/// How long a reader waits for an event before returning an empty batch.
const EVENT_WAIT: Duration = Duration::from_secs(1);

/// How often an idle, caught-up subscription checks whether its shard ended.
const END_PROBE_INTERVAL: Duration = Duration::from_secs(3);

impl FanOut {
    pub(crate) fn new(options: FanOutOptions) -> Self {
        Self {
            options,
            consumer_arn: OnceCell::new(),
        }
    }

    async fn stream_arn(source: &StreamContext) -> Result<String, SourceError> {
        if let Some(arn) = &source.stream.arn {
            return Ok(arn.clone());
        }
        let out = source
            .client
            .describe_stream_summary()
            .stream_name(&source.stream.name)
            .send()
            .await
            .map_err(|e| classify(&e, None))?;
        out.stream_description_summary()
            .map(|s| s.stream_arn().to_string())
            .ok_or_else(|| SourceError::Transient("DescribeStreamSummary gave no ARN".into()))
    }

    /// The consumer's ARN, registering it (idempotently) and waiting until ACTIVE.
    async fn consumer_arn(&self, source: &StreamContext) -> Result<String, SourceError> {
        self.consumer_arn
            .get_or_try_init(|| async {
                let stream_arn = Self::stream_arn(source).await?;
                let name = &self.options.consumer_name;
                let client = &source.client;
                let registered = client
                    .register_stream_consumer()
                    .stream_arn(&stream_arn)
                    .consumer_name(name)
                    .send()
                    .await;
                let arn = match registered {
                    Ok(out) => out
                        .consumer()
                        .map(|c| c.consumer_arn().to_string())
                        .ok_or_else(|| {
                            SourceError::Transient("RegisterStreamConsumer gave no consumer".into())
                        })?,
                    // Registered already (by us earlier, or by another client just now).
                    Err(e) if e.code() == Some("ResourceInUseException") => client
                        .describe_stream_consumer()
                        .stream_arn(&stream_arn)
                        .consumer_name(name)
                        .send()
                        .await
                        .map_err(|e| classify(&e, None))?
                        .consumer_description()
                        .map(|c| c.consumer_arn().to_string())
                        .ok_or_else(|| {
                            SourceError::Transient("DescribeStreamConsumer gave no consumer".into())
                        })?,
                    Err(e) => return Err(classify(&e, None)),
                };
                wait_active(client, &arn).await?;
                info!(consumer = %name, "enhanced fan-out consumer is ACTIVE");
                Ok(arn)
            })
            .await
            .cloned()
    }

    pub(crate) async fn open(
        &self,
        source: &StreamContext,
        shard: &ShardId,
        from: &Checkpoint,
    ) -> Result<Box<dyn ShardReader>, SourceError> {
        let mut cursor = Cursor::new(shard.clone(), source.stats.clone());
        let Some(start) = start_of(from) else {
            return Ok(Box::new(FanOutReader::ended(cursor)));
        };
        let consumer_arn = self.consumer_arn(source).await?;
        cursor.starting_at(from);
        // One event waiting: with the one the reader hands out and the one the pump holds,
        // three events at most are in memory (an event carries up to a few MB).
        let (tx, events) = mpsc::channel(1);
        let pump = Pump {
            client: source.client.clone(),
            source: source.clone(),
            consumer_arn,
            shard: shard.clone(),
            from: from.clone(),
            resubscribe_after: self.options.resubscribe_after,
            backoff: Backoff::seeded_or_os(
                RESUBSCRIBE_BACKOFF,
                self.options
                    .backoff_seed
                    .map(|seed| seed ^ stable_hash(&[shard.as_str().as_bytes()])),
            ),
            tx,
        };
        // In the caller's span (the tenure's): its log lines name the shard and token.
        let task = tokio::spawn(pump.run(start).in_current_span());
        Ok(Box::new(FanOutReader {
            cursor,
            events,
            pump: Some(task.abort_handle()),
            ended: None,
            behind: None,
        }))
    }

    pub(crate) async fn deregister(&self, source: &StreamContext) -> Result<(), SourceError> {
        let arn = self.consumer_arn(source).await?;
        source
            .client
            .deregister_stream_consumer()
            .consumer_arn(arn)
            .send()
            .await
            .map_err(|e| classify(&e, None))?;
        Ok(())
    }
}

async fn wait_active(client: &Client, consumer_arn: &str) -> Result<(), SourceError> {
    for _ in 0..1200 {
        let out = client
            .describe_stream_consumer()
            .consumer_arn(consumer_arn)
            .send()
            .await
            .map_err(|e| classify(&e, None))?;
        if out
            .consumer_description()
            .is_some_and(|c| *c.consumer_status() == ConsumerStatus::Active)
        {
            return Ok(());
        }
        sleep(Duration::from_millis(100)).await;
    }
    Err(SourceError::Transient(format!(
        "stream consumer {consumer_arn} is not ACTIVE after 2 minutes"
    )))
}

/// What the pump hands the reader.
enum Event {
    Records {
        records: Vec<aws_sdk_kinesis::types::Record>,
        millis_behind_latest: i64,
        /// `Some(children)` at the end of a closed shard.
        end: Option<Vec<ShardId>>,
    },
    Error(SourceError),
}

/// Keeps one shard subscribed and forwards its events, in order.
struct Pump {
    client: Client,
    source: StreamContext,
    consumer_arn: String,
    shard: ShardId,
    from: Checkpoint,
    resubscribe_after: Duration,
    /// Spaces resubscriptions after failures (seeded per shard, so readers spread apart).
    backoff: Backoff,
    tx: mpsc::Sender<Event>,
}

type Start = (
    ShardIteratorType,
    Option<String>,
    Option<aws_sdk_kinesis::primitives::DateTime>,
);

impl Pump {
    /// Whether the shard ended right after `continuation`: `Some(children)` if a read there
    /// finds no record and no next iterator.
    async fn probe_end(&self, continuation: &str) -> Option<Vec<ShardId>> {
        let mut req = self
            .client
            .get_shard_iterator()
            .shard_id(self.shard.as_str())
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(continuation);
        req = match &self.source.stream.arn {
            Some(arn) => req.stream_arn(arn),
            None => req.stream_name(&self.source.stream.name),
        };
        let iterator = req.send().await.ok()?.shard_iterator()?.to_string();
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(1)
            .send()
            .await
            .ok()?;
        (out.records().is_empty() && out.next_shard_iterator().is_none()).then(|| {
            out.child_shards()
                .iter()
                .map(|c| ShardId::from(c.shard_id()))
                .collect()
        })
    }

    async fn run(mut self, mut start: Start) {
        let mut attempt = 0u32;
        let mut next_probe = Instant::now() + END_PROBE_INTERVAL;
        loop {
            let position = StartingPosition::builder()
                .r#type(start.0.clone())
                .set_sequence_number(start.1.clone())
                .set_timestamp(start.2)
                .build();
            let Ok(position) = position else {
                let _ = self
                    .tx
                    .send(Event::Error(SourceError::Fatal(
                        "bad starting position".into(),
                    )))
                    .await;
                return;
            };
            bump(
                &self.source.stats,
                &self.source.stats.subscriptions,
                SUBSCRIPTIONS,
                &self.shard,
            );
            let subscribed = self
                .client
                .subscribe_to_shard()
                .consumer_arn(&self.consumer_arn)
                .shard_id(self.shard.as_str())
                .starting_position(position)
                .send()
                .await;
            let mut out = match subscribed {
                Ok(out) => out,
                Err(e) => {
                    // ResourceInUse: the previous subscription is not released yet. Wait, quietly.
                    if e.code() != Some("ResourceInUseException") {
                        let err = classify_start(&e, &self.from, &self.shard);
                        let err = self.source.confirm_gone(&self.shard, &self.from, err).await;
                        let fatal = !err.is_retryable();
                        if self.tx.send(Event::Error(err)).await.is_err() || fatal {
                            return;
                        }
                    }
                    attempt = attempt.saturating_add(1);
                    sleep(self.backoff.delay(attempt)).await;
                    continue;
                }
            };
            let until = Instant::now() + self.resubscribe_after;
            loop {
                // A free slot first, then the next event off the wire: an event waits in the
                // channel or is handed out by the reader, never a third one in between.
                let slot = tokio::select! {
                    biased;
                    _ = sleep_until(until) => {
                        debug!(shard = %self.shard, "resubscribing before the subscription expires");
                        break;
                    }
                    slot = self.tx.reserve() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return, // the reader is gone
                    },
                };
                let event = tokio::select! {
                    biased;
                    _ = sleep_until(until) => {
                        debug!(shard = %self.shard, "resubscribing before the subscription expires");
                        break;
                    }
                    event = out.event_stream.recv() => event,
                };
                match event {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(mut e))) => {
                        // Only a delivered event proves the subscription works: a refusal
                        // (ResourceInUse) arrives as the stream's first message, after an OK.
                        attempt = 0;
                        let children: Vec<ShardId> = e
                            .child_shards()
                            .iter()
                            .map(|c| ShardId::from(c.shard_id()))
                            .collect();
                        let continuation = e.continuation_sequence_number().to_string();
                        let caught_up = e.records().is_empty() && e.millis_behind_latest() == 0;
                        let mut end = (!children.is_empty()).then_some(children);
                        // Kinesis names the children in the last event of a closed shard; not
                        // every implementation does, so an idle, caught-up subscription checks
                        // now and then whether its shard has ended.
                        if end.is_none()
                            && caught_up
                            && !continuation.is_empty()
                            && Instant::now() >= next_probe
                        {
                            next_probe = Instant::now() + END_PROBE_INTERVAL;
                            end = self.probe_end(&continuation).await;
                        }
                        let at_end = end.is_some();
                        // Moved, not copied: an event may carry megabytes.
                        slot.send(Event::Records {
                            records: std::mem::take(&mut e.records),
                            millis_behind_latest: e.millis_behind_latest(),
                            end,
                        });
                        if at_end {
                            return; // the shard ended
                        }
                        if !continuation.is_empty() {
                            start = (
                                ShardIteratorType::AfterSequenceNumber,
                                Some(continuation),
                                None,
                            );
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break, // Kinesis ended the subscription: resubscribe
                    Err(e) => {
                        warn!(shard = %self.shard, error = %aws_sdk_kinesis::error::DisplayErrorContext(&e), "fan-out subscription failed; resubscribing");
                        attempt = attempt.saturating_add(1);
                        sleep(self.backoff.delay(attempt)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// A fan-out cursor over one shard.
struct FanOutReader {
    cursor: Cursor,
    events: mpsc::Receiver<Event>,
    pump: Option<AbortHandle>,
    /// `Some(children)` once the shard's end was seen.
    ended: Option<Vec<ShardId>>,
    behind: Option<u64>,
}

impl FanOutReader {
    fn ended(cursor: Cursor) -> Self {
        Self {
            cursor,
            events: mpsc::channel(1).1,
            pump: None,
            ended: Some(Vec::new()),
            behind: None,
        }
    }
}

impl Drop for FanOutReader {
    fn drop(&mut self) {
        if let Some(pump) = &self.pump {
            pump.abort();
        }
    }
}

#[async_trait::async_trait]
impl ShardReader for FanOutReader {
    /// Records are pushed: a call reads nothing from the stream, so a caught-up shard need not
    /// be called less often.
    fn is_pushed(&self) -> bool {
        true
    }

    async fn next_batch(&mut self, max_records: usize) -> Result<Batch, SourceError> {
        // Records of an event are handed out at most `max_records` at a time; the next event
        // is received only once they are all out (the pump waits meanwhile).
        if self.cursor.is_drained() {
            if let Some(children) = &self.ended {
                return Ok(Batch {
                    end: Some(children.clone()),
                    ..Batch::default()
                });
            }
            match timeout(EVENT_WAIT, self.events.recv()).await {
                Err(_) => {
                    return Ok(Batch {
                        millis_behind_latest: self.behind,
                        ..Batch::default()
                    });
                }
                Ok(None) => {
                    return Err(SourceError::Transient(format!(
                        "the fan-out subscription of {} stopped",
                        self.cursor.shard
                    )));
                }
                Ok(Some(Event::Error(e))) => return Err(e),
                Ok(Some(Event::Records {
                    records,
                    millis_behind_latest,
                    end,
                })) => {
                    self.behind = u64::try_from(millis_behind_latest).ok();
                    self.ended = end;
                    self.cursor.push(records)?;
                }
            }
        }
        let records = self.cursor.pop(max_records);
        let drained = self.cursor.is_drained();
        Ok(Batch {
            records,
            millis_behind_latest: self.behind,
            end: self.ended.clone().filter(|_| drained),
            more_ready: !drained,
        })
    }
}
