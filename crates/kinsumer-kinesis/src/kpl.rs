//! KPL aggregation: many user records packed into one Kinesis record.
//!
//! The Kinesis Producer Library writes, in one stream record: the magic bytes `F3 89 9A C2`,
//! a protobuf `AggregatedRecord`, and the MD5 of that protobuf. [`deaggregate`] splits such a
//! record into its user records, numbered by sub-sequence (0, 1, …) under the stream record's
//! sequence number, each with its own partition key. A record without the magic prefix is a
//! plain record (sub-sequence 0). A record *with* the prefix whose checksum or protobuf is
//! invalid is delivered raw, as KCL does, and counted in [`Deaggregated::malformed`] — never a
//! panic, never a lost record.
//!
//! ```
//! use bytes::Bytes;
//! use kinsumer_kinesis::kpl::{UserRecord, aggregate, deaggregate_bytes};
//!
//! let packed = aggregate(&[
//!     UserRecord { partition_key: "a".into(), explicit_hash_key: None, data: Bytes::from("one") },
//!     UserRecord { partition_key: "b".into(), explicit_hash_key: None, data: Bytes::from("two") },
//! ]);
//! let out = deaggregate_bytes(&packed).expect("a valid aggregate");
//! assert_eq!(out.len(), 2);
//! assert_eq!((out[1].partition_key.as_str(), &out[1].data[..]), ("b", &b"two"[..]));
//! assert!(deaggregate_bytes(b"plain record").is_none());
//! ```

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use kinsumer_core::position::{Position, SequenceNumber};
use kinsumer_core::source::SourceRecord;

/// The four bytes that open every KPL aggregate.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// The protobuf body of an aggregate (the KPL's `AggregatedRecord`).
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    /// Partition keys, referenced by index.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Explicit hash keys, referenced by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<AggregatedEntry>,
}

/// One user record inside an aggregate (the KPL's `Record`).
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedEntry {
    /// Index into `partition_key_table`.
    #[prost(uint64, tag = "1")]
    pub partition_key_index: u64,
    /// Index into `explicit_hash_key_table`, if the producer gave one.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The payload.
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
    /// KPL tags (unused by kinsumer, kept so aggregates round-trip).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A KPL tag.
#[derive(Clone, PartialEq, Message)]
pub struct Tag {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// A user record: what a producer put, before or after aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Its partition key.
    pub partition_key: String,
    /// Its explicit hash key (decimal), if the producer gave one.
    pub explicit_hash_key: Option<String>,
    /// The payload.
    pub data: Bytes,
}

/// Packs user records into one KPL aggregate (magic, protobuf, MD5), as the KPL does.
pub fn aggregate(records: &[UserRecord]) -> Bytes {
    let mut keys: Vec<String> = Vec::new();
    let mut hash_keys: Vec<String> = Vec::new();
    let index_of = |table: &mut Vec<String>, key: &str| -> u64 {
        match table.iter().position(|k| k == key) {
            Some(i) => i as u64,
            None => {
                table.push(key.to_string());
                (table.len() - 1) as u64
            }
        }
    };
    let mut entries = Vec::with_capacity(records.len());
    for r in records {
        let partition_key_index = index_of(&mut keys, &r.partition_key);
        let explicit_hash_key_index = r
            .explicit_hash_key
            .as_deref()
            .map(|h| index_of(&mut hash_keys, h));
        entries.push(AggregatedEntry {
            partition_key_index,
            explicit_hash_key_index,
            data: r.data.clone(),
            tags: Vec::new(),
        });
    }
    let body = AggregatedRecord {
        partition_key_table: keys,
        explicit_hash_key_table: hash_keys,
        records: entries,
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    Bytes::from(out)
}

/// The user records of a KPL aggregate, or `None` if `data` is not a valid aggregate (no magic
/// prefix, wrong checksum, bad protobuf, or an index outside its table).
pub fn deaggregate_bytes(data: &[u8]) -> Option<Vec<UserRecord>> {
    let rest = data.strip_prefix(&MAGIC)?;
    let split = rest.len().checked_sub(DIGEST_LEN)?;
    let (body, digest) = rest.split_at(split);
    if Md5::digest(body).as_slice() != digest {
        return None;
    }
    let aggregate = AggregatedRecord::decode(body).ok()?;
    let lookup = |table: &[String], i: u64| -> Option<String> {
        table.get(usize::try_from(i).ok()?).cloned()
    };
    aggregate
        .records
        .into_iter()
        .map(|e| {
            Some(UserRecord {
                partition_key: lookup(&aggregate.partition_key_table, e.partition_key_index)?,
                explicit_hash_key: match e.explicit_hash_key_index {
                    // A hash key is a 128-bit decimal; anything else makes the aggregate invalid.
                    Some(i) => Some(
                        lookup(&aggregate.explicit_hash_key_table, i)
                            .filter(|h| h.parse::<u128>().is_ok())?,
                    ),
                    None => None,
                },
                data: e.data,
            })
        })
        .collect()
}

/// What [`deaggregate`] made of one stream record.
#[derive(Debug)]
pub struct Deaggregated {
    /// The user records, in order, with sub-sequence numbers 0, 1, ….
    pub records: Vec<SourceRecord>,
    /// The record carried the KPL prefix but was not a valid aggregate; it is delivered raw.
    pub malformed: bool,
}

/// Turns one stream record into the user records it holds.
pub fn deaggregate(
    sequence: &SequenceNumber,
    partition_key: &str,
    data: Bytes,
    arrival_ms: u64,
) -> Deaggregated {
    let raw = |data: Bytes| SourceRecord {
        data,
        partition_key: partition_key.to_string(),
        explicit_hash_key: None,
        position: Position::new(sequence.clone(), 0),
        arrival_ms,
    };
    if !data.starts_with(&MAGIC) {
        return Deaggregated {
            records: vec![raw(data)],
            malformed: false,
        };
    }
    match deaggregate_bytes(&data) {
        // An aggregate of nothing still occupies a sequence number: keep it as the raw record
        // so the checkpoint can pass it.
        Some(users) if !users.is_empty() => Deaggregated {
            records: users
                .into_iter()
                .enumerate()
                .map(|(i, u)| SourceRecord {
                    data: u.data,
                    partition_key: u.partition_key,
                    explicit_hash_key: u.explicit_hash_key.and_then(|h| h.parse().ok()),
                    position: Position::new(sequence.clone(), i as u64),
                    arrival_ms,
                })
                .collect(),
            malformed: false,
        },
        Some(_) => Deaggregated {
            records: vec![raw(data)],
            malformed: false,
        },
        None => Deaggregated {
            records: vec![raw(data)],
            malformed: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinsumer_core::rng::Rng;

    fn user(key: &str, data: &str) -> UserRecord {
        UserRecord {
            partition_key: key.into(),
            explicit_hash_key: None,
            data: Bytes::from(data.to_string()),
        }
    }

    #[test]
    fn round_trip_with_shared_keys_and_explicit_hash_keys() {
        let mut records = vec![user("a", "1"), user("b", "2"), user("a", "3")];
        records[1].explicit_hash_key = Some("340282366920938463463374607431768211455".into());
        let packed = aggregate(&records);
        assert_eq!(deaggregate_bytes(&packed), Some(records));
        let seq: SequenceNumber = "49590338271490256608559692538361571095921575989136588898"
            .parse()
            .expect("valid");
        let out = deaggregate(&seq, "outer", packed, 7);
        assert!(!out.malformed);
        assert_eq!(out.records[1].explicit_hash_key, Some(u128::MAX));
        assert_eq!(out.records[0].explicit_hash_key, None);
        let subs: Vec<u64> = out
            .records
            .iter()
            .map(|r| r.position.sub_sequence)
            .collect();
        assert_eq!(subs, vec![0, 1, 2]);
        assert_eq!(out.records[2].partition_key, "a");
    }

    #[test]
    fn an_explicit_hash_key_that_is_not_a_number_makes_the_aggregate_invalid() {
        let mut r = user("a", "1");
        r.explicit_hash_key = Some("not a number".into());
        assert_eq!(deaggregate_bytes(&aggregate(&[r])), None);
    }

    #[test]
    fn corrupt_aggregates_are_delivered_raw_and_flagged() {
        let seq = SequenceNumber::from_u128(5);
        let mut packed = aggregate(&[user("a", "1")]).to_vec();
        let last = packed.len() - 1;
        packed[last] ^= 0xff; // checksum no longer matches
        let out = deaggregate(&seq, "k", Bytes::from(packed.clone()), 0);
        assert!(out.malformed);
        assert_eq!(out.records.len(), 1);
        assert_eq!(&out.records[0].data[..], &packed[..]);
        let plain = deaggregate(&seq, "k", Bytes::from_static(b"hello"), 0);
        assert!(!plain.malformed && plain.records[0].position.sub_sequence == 0);
    }

    /// Any bytes in, no panic out: random bytes, and random damage to valid aggregates (with a
    /// recomputed checksum, so the protobuf parser itself is exercised).
    #[test]
    fn any_bytes_are_safe() {
        let mut rng = Rng::new(42);
        let seq = SequenceNumber::from_u128(1);
        let valid = aggregate(&[user("a", "payload"), user("b", "more")]).to_vec();
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.below(64) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
                if rng.chance(0.5) {
                    b.splice(0..0, MAGIC);
                }
                b
            } else {
                let mut body = valid[MAGIC.len()..valid.len() - DIGEST_LEN].to_vec();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(body.len() as u64) as usize;
                    body[i] = rng.below(256) as u8;
                }
                let mut b = MAGIC.to_vec();
                b.extend_from_slice(&body);
                b.extend_from_slice(&Md5::digest(&body));
                b
            };
            let out = deaggregate(&seq, "k", Bytes::from(bytes), 0);
            assert!(!out.records.is_empty());
        }
    }
}
