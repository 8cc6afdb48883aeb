//! Whether a shard holds a record: `reset --to sequence:N[/S]` is checked against Kinesis
//! before anything is written, so a typo or a number of another shard never becomes a
//! checkpoint that every consumer would fail to start from.
//!
//! The check is one `GetShardIterator AT_SEQUENCE_NUMBER N` and `GetRecords` from there (a few
//! more only while Kinesis returns empty pages of a shard that is behind):
//! - the first record is N → held (and for `N/S`, S is one of its KPL user records);
//! - the first record is later than N → N is not a record the shard holds: older than the
//!   stream's retention (trimmed), or never written;
//! - no record, and the page is at the tip (`MillisBehindLatest` 0) or at a closed shard's end
//!   → N lies past the last record;
//! - Kinesis refuses the number (`InvalidArgumentException`: not this shard's;
//!   `ResourceNotFoundException`, as kinesis-local answers for a number it holds no record
//!   of — the shard itself was just found in the listing) → not held, with its message.
//!
//! A read costs one GetRecords of the shard's 5 per second, shared with the consumers: the reads
//! are 200 ms apart, and there are at most [`MAX_READS`].

use std::time::Duration;

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::ShardIteratorType;
use kinsumer::kinesis::kpl;
use kinsumer::{Position, SequenceNumber, ShardId};

use crate::backends::{CALL_TIMEOUT, SourceUrl, brief, kinesis_client};

/// GetRecords calls before giving up on finding out.
const MAX_READS: usize = 10;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The shard holds the record (and the user record of a KPL aggregate).
    Held,
    /// It does not, and why.
    NotHeld(String),
}

/// Checks that `shard` of `url`'s stream holds the record `position` names. `Err` when Kinesis
/// could not be asked (unreachable, access denied): nothing is known.
pub async fn check(
    url: &SourceUrl,
    shard: &ShardId,
    position: &Position,
) -> Result<Verdict, String> {
    let SourceUrl::Kinesis { stream, aws } = url;
    let client = kinesis_client(aws).await.map_err(|e| e.to_string())?;
    let wanted = &position.sequence;
    let mut request = client
        .get_shard_iterator()
        .shard_id(shard.as_str())
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(wanted.as_str());
    request = if stream.starts_with("arn:") {
        request.stream_arn(stream)
    } else {
        request.stream_name(stream)
    };
    let opened = timed("GetShardIterator", request.send()).await?;
    let mut iterator = match opened {
        Ok(out) => out.shard_iterator().map(str::to_owned),
        Err(err) => {
            let refused = err
                .as_service_error()
                .and_then(|e| e.code())
                .is_some_and(|code| {
                    matches!(
                        code,
                        "InvalidArgumentException" | "ResourceNotFoundException"
                    )
                });
            if refused {
                let why = err
                    .as_service_error()
                    .and_then(|e| e.message())
                    .unwrap_or("no message");
                return Ok(Verdict::NotHeld(format!(
                    "Kinesis refuses sequence number {wanted} for shard {shard}: {why}"
                )));
            }
            return Err(failed("GetShardIterator", &err));
        }
    };
    for read in 0..MAX_READS {
        let Some(current) = iterator.take() else {
            return Ok(Verdict::NotHeld(format!(
                "shard {shard} is closed and holds no record at or after {wanted}: it lies past \
                 the shard's end"
            )));
        };
        if read > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let page = timed(
            "GetRecords",
            client.get_records().shard_iterator(current).limit(1).send(),
        )
        .await?
        .map_err(|err| failed("GetRecords", &err))?;
        if let Some(first) = page.records().first() {
            let found: SequenceNumber = first.sequence_number().parse().map_err(|_| {
                format!(
                    "Kinesis returned a record whose sequence number {:?} does not parse",
                    first.sequence_number()
                )
            })?;
            return Ok(judge(shard, position, &found, first.data().as_ref()));
        }
        if page.millis_behind_latest() == Some(0) && page.next_shard_iterator().is_some() {
            return Ok(Verdict::NotHeld(format!(
                "shard {shard} holds no record at or after {wanted}: it lies past the shard's \
                 tip (the last record written)"
            )));
        }
        iterator = page.next_shard_iterator().map(str::to_owned);
    }
    Ok(Verdict::NotHeld(format!(
        "{MAX_READS} reads of shard {shard} from {wanted} found no record: could not confirm \
         that the shard holds it"
    )))
}

/// The verdict on the first record at or after the wanted one: `found`, carrying `data`.
fn judge(shard: &ShardId, position: &Position, found: &SequenceNumber, data: &[u8]) -> Verdict {
    let wanted = &position.sequence;
    if found != wanted {
        // AT_SEQUENCE_NUMBER starts at the number or after it, never before.
        return Verdict::NotHeld(format!(
            "shard {shard} holds no record {wanted}: its first record at or after it is {found} \
             — {wanted} is older than the stream's retention (trimmed), or was never written"
        ));
    }
    let sub = position.sub_sequence;
    if sub == 0 {
        return Verdict::Held;
    }
    // A checkpoint N/S is after user record S of aggregate N: S must be one of them. Counted
    // the way a reader walks them (lazily: an aggregate may hold half a million records).
    let users = kpl::UserRecords::new(
        found.clone(),
        String::new(),
        bytes::Bytes::copy_from_slice(data),
        0,
    );
    if !data.starts_with(&kpl::MAGIC) || users.malformed() {
        return Verdict::NotHeld(format!(
            "record {wanted} of shard {shard} is not a KPL aggregate: it has no user record \
             {sub} (use sequence:{wanted})"
        ));
    }
    let count = users.count() as u64;
    if sub < count {
        Verdict::Held
    } else {
        Verdict::NotHeld(format!(
            "record {wanted} of shard {shard} is a KPL aggregate of {count} user records \
             (sub-sequences 0 to {}): it has no user record {sub}",
            count.saturating_sub(1)
        ))
    }
}

/// Runs one call with [`CALL_TIMEOUT`].
async fn timed<T>(call: &str, future: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .map_err(|_| format!("{call} took longer than {} s", CALL_TIMEOUT.as_secs()))
}

fn failed<E, R>(call: &str, err: &SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    format!("{call}: {}", brief(&DisplayErrorContext(err).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinsumer::kinesis::kpl::{UserRecord, aggregate};

    fn seq(n: u128) -> SequenceNumber {
        SequenceNumber::from_u128(n)
    }

    #[test]
    fn the_first_record_decides() {
        let shard = ShardId::from("s");
        let at = |n, s| Position::new(seq(n), s);
        assert_eq!(judge(&shard, &at(5, 0), &seq(5), b"plain"), Verdict::Held);
        let later = judge(&shard, &at(5, 0), &seq(9), b"plain");
        assert!(
            matches!(&later, Verdict::NotHeld(why) if why.contains("first record at or after it is 9")),
            "{later:?}"
        );
        let plain = judge(&shard, &at(5, 1), &seq(5), b"plain");
        assert!(
            matches!(&plain, Verdict::NotHeld(why) if why.contains("not a KPL aggregate")),
            "{plain:?}"
        );
    }

    #[test]
    fn a_sub_sequence_must_be_one_of_the_aggregate_s_user_records() {
        let shard = ShardId::from("s");
        let users: Vec<UserRecord> = (0..3)
            .map(|i| UserRecord {
                partition_key: format!("k{i}"),
                explicit_hash_key: None,
                data: format!("d{i}").into_bytes().into(),
            })
            .collect();
        let data = aggregate(&users);
        let at = |s| Position::new(seq(5), s);
        assert_eq!(judge(&shard, &at(2), &seq(5), &data), Verdict::Held);
        let past = judge(&shard, &at(3), &seq(5), &data);
        assert!(
            matches!(&past, Verdict::NotHeld(why) if why.contains("aggregate of 3 user records")),
            "{past:?}"
        );
    }
}
