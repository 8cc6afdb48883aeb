//! The stream a source reads, as its readers share it: the client, how requests name the
//! stream, the counters, and the listing (which also confirms that a shard is gone). Both
//! readers — polling (`source`) and fan-out (`fan_out`) — hold a
//! [`StreamContext`], so neither reaches into the other's module.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::{HashRange, ShardId, ShardInfo, SourceError};

use crate::errors::classify;
use crate::stats::KinesisStats;

/// How a request names the stream: by name, or by ARN (then the name is the ARN's last part).
#[derive(Clone, Debug)]
pub(crate) struct StreamRef {
    pub(crate) name: String,
    pub(crate) arn: Option<String>,
}

/// What a source and its readers share. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct StreamContext {
    pub(crate) client: Client,
    pub(crate) stream: Arc<StreamRef>,
    pub(crate) stats: Arc<KinesisStats>,
    /// ListShards page size (the service's default when `None`).
    pub(crate) page_size: Option<i32>,
    /// A listing succeeded once: the stream exists (or existed), so a later "not found" is a
    /// stream deleted and created again, or a restarted service — retried, not fatal.
    listed_once: Arc<AtomicBool>,
}

impl StreamContext {
    /// The context of the stream `stream` names, over `client`.
    pub(crate) fn new(client: Client, stream: StreamRef) -> Self {
        Self {
            client,
            stats: KinesisStats::for_stream(&stream.name),
            stream: Arc::new(stream),
            page_size: None,
            listed_once: Arc::default(),
        }
    }

    /// Every shard of the stream, paging hidden.
    pub(crate) async fn list_shards(&self) -> Result<Vec<ShardInfo>, SourceError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            // With a NextToken, ListShards refuses the stream name: one or the other.
            let mut req = self.client.list_shards().set_max_results(self.page_size);
            req = match (&next, &self.stream.arn) {
                (Some(token), _) => req.next_token(token),
                (None, Some(arn)) => req.stream_arn(arn),
                (None, None) => req.stream_name(&self.stream.name),
            };
            let out = req.send().await.map_err(|e| {
                let err = classify(&e, None);
                if e.code() == Some("ResourceNotFoundException")
                    && self.listed_once.load(Ordering::Relaxed)
                {
                    return SourceError::Transient(format!(
                        "stream {} is not found, though it was listed before (deleted and \
                         created again, or the service restarted?); retrying: {err}",
                        self.stream.name
                    ));
                }
                err
            })?;
            for s in out.shards() {
                let range = s.hash_key_range().ok_or_else(|| {
                    SourceError::Fatal(format!(
                        "ListShards gave {} no hash key range",
                        s.shard_id()
                    ))
                })?;
                let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(ShardId::from)
                    .collect();
                shards.push(ShardInfo {
                    id: ShardId::from(s.shard_id()),
                    parents,
                    hash_range: HashRange {
                        start: parse_hash_key(range.starting_hash_key(), s.shard_id())?,
                        end: parse_hash_key(range.ending_hash_key(), s.shard_id())?,
                    },
                    // Only the presence of an end matters (emulators report i64::MAX).
                    open: s
                        .sequence_number_range()
                        .is_none_or(|r| r.ending_sequence_number().is_none()),
                });
            }
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_string()),
                _ => {
                    self.listed_once.store(true, Ordering::Relaxed);
                    return Ok(shards);
                }
            }
        }
    }

    /// A shard reported missing may not be: some implementations answer a sequence number
    /// they do not know with ResourceNotFound, and an iterator of a stream that was deleted and
    /// created again (or of a service that restarted) is not found either. Finishing a live
    /// shard's lease would skip its records, so `ShardGone` stands only if a listing agrees;
    /// otherwise a position is treated as trimmed, and anything else is retried.
    pub(crate) async fn confirm_gone(
        &self,
        shard: &ShardId,
        from: &Checkpoint,
        err: SourceError,
    ) -> SourceError {
        let SourceError::ShardGone(_) = &err else {
            return err;
        };
        match self.still_listed(shard).await {
            Ok(false) => err,
            // Unsure: retry later rather than finish a lease on a guess.
            Err(unsure) => unsure,
            Ok(true) => match from {
                Checkpoint::After(p) => SourceError::Trimmed {
                    shard: shard.clone(),
                    position: format!("{p} (not found in a shard that still exists)"),
                },
                _ => SourceError::Transient(format!(
                    "{shard} was answered as not found, but the stream still lists it; retrying"
                )),
            },
        }
    }

    /// Whether the stream's listing has `shard` (a failed listing is a transient error: never
    /// decide a shard is gone on a guess).
    pub(crate) async fn still_listed(&self, shard: &ShardId) -> Result<bool, SourceError> {
        match self.list_shards().await {
            Ok(shards) => Ok(shards.iter().any(|s| &s.id == shard)),
            Err(e) => Err(SourceError::Transient(format!(
                "could not confirm that {shard} is gone: {e}"
            ))),
        }
    }
}

fn parse_hash_key(text: &str, shard: &str) -> Result<u128, SourceError> {
    text.parse().map_err(|_| {
        SourceError::Fatal(format!(
            "ListShards returned hash key {text:?} for {shard}, not a 128-bit integer"
        ))
    })
}
