//! Kinesis's errors, classified (DESIGN §6): [`KinesisError`] for a bad stream reference, and
//! how an API error becomes the core's [`SourceError`].

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::{ShardId, SourceError};

/// A bad stream reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KinesisError {
    /// The ARN does not name a Kinesis stream.
    #[error(
        "invalid stream ARN {arn:?}: expected arn:<partition>:kinesis:<region>:<account>:stream/<name>"
    )]
    InvalidArn {
        /// The text given.
        arn: String,
    },
}

/// An error code of the Kinesis API, classified.
pub(crate) fn classify<E, R>(err: &SdkError<E, R>, shard: Option<&ShardId>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = DisplayErrorContext(err).to_string();
    match err.code() {
        Some(
            "ProvisionedThroughputExceededException"
            | "KMSThrottlingException"
            | "LimitExceededException"
            | "ThrottlingException",
        ) => SourceError::Throttled(text),
        Some("ResourceNotFoundException") => match shard {
            Some(shard) => SourceError::ShardGone(shard.clone()),
            None => SourceError::Fatal(text),
        },
        Some(
            "AccessDeniedException"
            | "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSInvalidStateException"
            | "KMSNotFoundException"
            | "KMSOptInRequired"
            | "InvalidArgumentException"
            | "ValidationException"
            | "UnrecognizedClientException",
        ) => SourceError::Fatal(text),
        // Network failures, timeouts, 5xx, and anything unknown: retry.
        _ => SourceError::Transient(text),
    }
}

/// How far ahead of this host's clock a timestamp may be and still be taken for clock skew
/// between this host and the service (retried) rather than a position in the future.
const CLOCK_SKEW_MS: u64 = 60_000;

/// Classifies an error of a call that started reading at `from`: a starting sequence number
/// Kinesis rejects means the checkpoint fell off retention — `Trimmed`, so the consumer's
/// `TrimmedPolicy` decides.
pub(crate) fn classify_start<E, R>(
    err: &SdkError<E, R>,
    from: &Checkpoint,
    shard: &ShardId,
) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (from, classify(err, Some(shard))) {
        (Checkpoint::After(p), SourceError::Fatal(text))
            if err.code() == Some("InvalidArgumentException") =>
        {
            SourceError::Trimmed {
                shard: shard.clone(),
                position: format!("{p} ({text})"),
            }
        }
        // A timestamp the service refuses as in the future. Near our own clock it is the
        // service's clock that is behind (a start at `Latest` is written down as our time):
        // retried, it passes once the service catches up. Well ahead of our clock it is a bad
        // position — that shard's problem, not the consumer's: set aside until it is reset.
        (Checkpoint::AtTimestamp(ms), SourceError::Fatal(text))
            if err.code() == Some("InvalidArgumentException") =>
        {
            let host_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if *ms <= host_now.saturating_add(CLOCK_SKEW_MS) {
                SourceError::Transient(format!(
                    "{shard}: the service refused {from} (its clock is behind ours?); retrying: {text}"
                ))
            } else {
                SourceError::BadPosition {
                    shard: shard.clone(),
                    position: from.to_string(),
                    reason: text,
                }
            }
        }
        (_, other) => other,
    }
}
