//! KPL aggregation: many user records packed into one Kinesis record.
//!
//! The Kinesis Producer Library writes, in one stream record: the magic bytes `F3 89 9A C2`,
//! a protobuf `AggregatedRecord`, and the MD5 of that protobuf. [`UserRecords`] splits such a
//! record into its user records (one at a time, so an aggregate never costs more memory than
//! its own bytes), numbered by sub-sequence (0, 1, …) under the stream record's
//! sequence number, each with its own partition key. A record without the magic prefix is a
//! plain record (sub-sequence 0). A record *with* the prefix whose checksum or protobuf is
//! invalid is delivered raw, as KCL does, and flagged by [`UserRecords::malformed`] — never a
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
/// prefix, wrong checksum, bad protobuf, or an index outside its table). Expands the whole
/// aggregate at once: a reader uses [`UserRecords`], which does not.
pub fn deaggregate_bytes(data: &[u8]) -> Option<Vec<UserRecord>> {
    let checked = check(data)?;
    let body = body_of(data);
    let mut out = Vec::with_capacity(checked.entries);
    let mut offset = 0;
    while let Some((data, key, hash_key)) =
        next_entry(body, &mut offset, &checked.keys, &checked.hash_keys)
    {
        out.push(UserRecord {
            partition_key: key.to_owned(),
            explicit_hash_key: hash_key.map(str::to_owned),
            data,
        });
    }
    Some(out)
}

/// The user records of one stream record, produced one at a time.
///
/// An aggregate of a megabyte can hold half a million empty user records: expanded whole it
/// would take hundreds of bytes of memory per record, past any read bound. So an aggregate is
/// checked whole once, in [`UserRecords::new`] (magic, checksum, every entry and every table
/// index), then walked entry by entry as records are asked for; meanwhile only the
/// aggregate's own bytes and its key tables are held.
///
/// ```
/// use bytes::Bytes;
/// use kinsumer_core::position::SequenceNumber;
/// use kinsumer_kinesis::kpl::{UserRecord, UserRecords, aggregate};
///
/// let user = |k: &str| UserRecord { partition_key: k.into(), explicit_hash_key: None, data: Bytes::new() };
/// let packed = aggregate(&[user("a"), user("b"), user("a")]);
/// let mut records = UserRecords::new(SequenceNumber::from_u128(7), "outer".into(), packed, 0);
/// assert!(!records.malformed());
/// let second = records.nth(1).expect("three records");
/// assert_eq!((second.partition_key.as_str(), second.position.sub_sequence), ("b", 1));
/// assert_eq!(records.count(), 1);
/// ```
#[derive(Debug)]
pub struct UserRecords {
    sequence: SequenceNumber,
    arrival_ms: u64,
    next_sub: u64,
    malformed: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A plain record, or one delivered raw: `None` once handed out.
    Raw {
        data: Option<Bytes>,
        partition_key: String,
    },
    /// A valid aggregate (`data` whole), walked from `offset` into its body.
    Aggregate {
        data: Bytes,
        offset: usize,
        keys: Vec<String>,
        hash_keys: Vec<String>,
    },
}

impl UserRecords {
    /// Checks one stream record: a valid aggregate yields its user records, numbered by
    /// sub-sequence 0, 1, …; anything else yields the record itself (sub-sequence 0). A record
    /// with the KPL prefix that is not a valid aggregate is delivered raw, as KCL does, and
    /// [`malformed`](Self::malformed) says so — never a panic, never a lost record.
    pub fn new(
        sequence: SequenceNumber,
        partition_key: String,
        data: Bytes,
        arrival_ms: u64,
    ) -> Self {
        let checked = if data.starts_with(&MAGIC) {
            check(&data)
        } else {
            None
        };
        let malformed = data.starts_with(&MAGIC) && checked.is_none();
        let kind = match checked {
            // An aggregate of nothing still occupies a sequence number: keep it as the raw
            // record so the checkpoint can pass it.
            Some(Checked { entries: 0, .. }) | None => Kind::Raw {
                data: Some(data),
                partition_key,
            },
            Some(Checked {
                keys, hash_keys, ..
            }) => Kind::Aggregate {
                data,
                offset: 0,
                keys,
                hash_keys,
            },
        };
        Self {
            sequence,
            arrival_ms,
            next_sub: 0,
            malformed,
            kind,
        }
    }

    /// The record carried the KPL prefix but was not a valid aggregate: it is delivered raw.
    pub fn malformed(&self) -> bool {
        self.malformed
    }

    /// The sequence number of the stream record.
    pub fn sequence(&self) -> &SequenceNumber {
        &self.sequence
    }

    /// Whether every user record was handed out.
    pub fn is_done(&self) -> bool {
        match &self.kind {
            Kind::Raw { data, .. } => data.is_none(),
            Kind::Aggregate { data, offset, .. } => {
                let (body, mut at) = (body_of(data), *offset);
                // Fields other than entries may follow the last entry.
                std::iter::from_fn(|| next_field(body, &mut at)).all(|(tag, _)| tag != ENTRY_TAG)
            }
        }
    }
}

impl Iterator for UserRecords {
    type Item = SourceRecord;

    fn next(&mut self) -> Option<SourceRecord> {
        let (data, partition_key, explicit_hash_key) = match &mut self.kind {
            Kind::Raw {
                data,
                partition_key,
            } => (data.take()?, std::mem::take(partition_key), None),
            Kind::Aggregate {
                data,
                offset,
                keys,
                hash_keys,
            } => {
                let (data, key, hash_key) = next_entry(body_of(data), offset, keys, hash_keys)?;
                // Checked in `new`: a hash key an entry names is a 128-bit decimal.
                (data, key.to_owned(), hash_key.and_then(|h| h.parse().ok()))
            }
        };
        let position = Position::new(self.sequence.clone(), self.next_sub);
        self.next_sub += 1;
        Some(SourceRecord {
            data,
            partition_key,
            explicit_hash_key,
            position,
            arrival_ms: self.arrival_ms,
        })
    }
}

/// Top-level field numbers of an `AggregatedRecord`.
const KEY_TABLE_TAG: u64 = 1;
const HASH_KEY_TABLE_TAG: u64 = 2;
const ENTRY_TAG: u64 = 3;

/// The protobuf between the magic prefix and the checksum of a checked aggregate.
fn body_of(data: &[u8]) -> &[u8] {
    &data[MAGIC.len()..data.len() - DIGEST_LEN]
}

/// One top-level protobuf field: a length-delimited value, or another wire type skipped.
enum Field<'a> {
    Bytes(&'a [u8]),
    Other,
}

/// Reads the field at `*offset` of `body` and moves past it; `None` at the end or on bytes
/// that are not protobuf.
fn next_field<'a>(body: &'a [u8], offset: &mut usize) -> Option<(u64, Field<'a>)> {
    let mut rest = body.get(*offset..).filter(|r| !r.is_empty())?;
    // As protobuf (and prost) define a key: a field number from 1 on, in 32 bits.
    let key = prost::encoding::decode_varint(&mut rest)
        .ok()
        .filter(|k| *k <= u64::from(u32::MAX) && *k >> 3 != 0)?;
    let field = match key & 7 {
        0 => {
            prost::encoding::decode_varint(&mut rest).ok()?;
            Field::Other
        }
        1 => {
            rest = rest.get(8..)?;
            Field::Other
        }
        2 => {
            let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
            let value = rest.get(..len)?;
            rest = &rest[len..];
            Field::Bytes(value)
        }
        5 => {
            rest = rest.get(4..)?;
            Field::Other
        }
        // Groups (3, 4) and unknown wire types: not what the KPL writes.
        _ => return None,
    };
    *offset = body.len() - rest.len();
    Some((key >> 3, field))
}

/// The next user record at or after `*offset` of a checked aggregate's `body`; `None` at the
/// end.
fn next_entry<'t>(
    body: &[u8],
    offset: &mut usize,
    keys: &'t [String],
    hash_keys: &'t [String],
) -> Option<(Bytes, &'t str, Option<&'t str>)> {
    loop {
        if let (ENTRY_TAG, Field::Bytes(bytes)) = next_field(body, offset)? {
            return decode_entry(bytes, keys, hash_keys);
        }
    }
}

/// One entry: its data, and its partition key and explicit hash key looked up in the tables.
/// `None` if it does not decode or names a key its table lacks.
fn decode_entry<'t>(
    bytes: &[u8],
    keys: &'t [String],
    hash_keys: &'t [String],
) -> Option<(Bytes, &'t str, Option<&'t str>)> {
    // Decoding from a slice copies the data: a user record kept does not keep the whole
    // aggregate alive, so the bytes counted against the read bound are the bytes held.
    let entry = AggregatedEntry::decode(bytes).ok()?;
    let key = keys.get(usize::try_from(entry.partition_key_index).ok()?)?;
    let hash_key = match entry.explicit_hash_key_index {
        Some(i) => Some(hash_keys.get(usize::try_from(i).ok()?)?.as_str()),
        None => None,
    };
    Some((entry.data, key, hash_key))
}

/// What checking an aggregate whole found.
struct Checked {
    keys: Vec<String>,
    hash_keys: Vec<String>,
    entries: usize,
}

/// Checks `data` as a KPL aggregate without expanding it: the magic prefix, the checksum, the
/// key tables, and that every entry decodes and names keys its tables hold (an explicit hash
/// key must be a 128-bit decimal). `None` if any of it fails.
fn check(data: &[u8]) -> Option<Checked> {
    let rest = data.strip_prefix(&MAGIC)?;
    let split = rest.len().checked_sub(DIGEST_LEN)?;
    let (body, digest) = rest.split_at(split);
    if Md5::digest(body).as_slice() != digest {
        return None;
    }
    // The tables may come after the entries that use them: read them first.
    let (mut keys, mut hash_keys) = (Vec::new(), Vec::new());
    let mut offset = 0;
    while offset < body.len() {
        match next_field(body, &mut offset)? {
            (KEY_TABLE_TAG, Field::Bytes(b)) => keys.push(String::from_utf8(b.to_vec()).ok()?),
            (HASH_KEY_TABLE_TAG, Field::Bytes(b)) => {
                hash_keys.push(String::from_utf8(b.to_vec()).ok()?)
            }
            (KEY_TABLE_TAG | HASH_KEY_TABLE_TAG | ENTRY_TAG, Field::Other) => return None,
            _ => {}
        }
    }
    let mut entries = 0;
    let mut offset = 0;
    while offset < body.len() {
        if let (ENTRY_TAG, Field::Bytes(b)) = next_field(body, &mut offset)? {
            let (_, _, hash_key) = decode_entry(b, &keys, &hash_keys)?;
            // A hash key is a 128-bit decimal; anything else makes the aggregate invalid.
            if hash_key.is_some_and(|h| h.parse::<u128>().is_err()) {
                return None;
            }
            entries += 1;
        }
    }
    Some(Checked {
        keys,
        hash_keys,
        entries,
    })
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
        let out = UserRecords::new(seq, "outer".into(), packed, 7);
        assert!(!out.malformed());
        let out: Vec<SourceRecord> = out.collect();
        assert_eq!(out[1].explicit_hash_key, Some(u128::MAX));
        assert_eq!(out[0].explicit_hash_key, None);
        assert_eq!(out[2].arrival_ms, 7);
        let subs: Vec<u64> = out.iter().map(|r| r.position.sub_sequence).collect();
        assert_eq!(subs, vec![0, 1, 2]);
        assert_eq!(out[2].partition_key, "a");
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
        let out = UserRecords::new(seq.clone(), "k".into(), Bytes::from(packed.clone()), 0);
        assert!(out.malformed());
        let out: Vec<SourceRecord> = out.collect();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], &packed[..]);
        let plain = UserRecords::new(seq.clone(), "k".into(), Bytes::from_static(b"hello"), 0);
        assert!(!plain.malformed());
        let plain: Vec<SourceRecord> = plain.collect();
        assert_eq!((plain.len(), plain[0].position.sub_sequence), (1, 0));
        // An aggregate of nothing is kept as the record itself (valid, not malformed).
        let empty = UserRecords::new(seq, "k".into(), aggregate(&[]), 0);
        assert!(!empty.malformed());
        assert_eq!(empty.count(), 1);
    }

    /// The KPL writes the key tables first, but protobuf allows any order: tables after the
    /// entries that use them are read all the same.
    #[test]
    fn tables_after_entries_are_read() {
        let entry = AggregatedEntry {
            partition_key_index: 1,
            explicit_hash_key_index: None,
            data: Bytes::from_static(b"x"),
            tags: Vec::new(),
        }
        .encode_to_vec();
        let mut body = vec![0x1a, entry.len() as u8];
        body.extend_from_slice(&entry);
        for key in ["a", "b"] {
            body.extend_from_slice(&[0x0a, 1]);
            body.extend_from_slice(key.as_bytes());
        }
        let mut packed = MAGIC.to_vec();
        packed.extend_from_slice(&body);
        packed.extend_from_slice(&Md5::digest(&body));
        let out: Vec<SourceRecord> =
            UserRecords::new(SequenceNumber::from_u128(1), "k".into(), packed.into(), 0).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].partition_key.as_str(), &out[0].data[..]),
            ("b", &b"x"[..])
        );
    }

    /// Half a million empty user records in under a megabyte: walked one at a time, each with
    /// its own sub-sequence, and a resume can stop anywhere in it.
    #[test]
    fn a_huge_aggregate_is_walked_lazily() {
        let packed = aggregate(&vec![user("a", ""); 490_000]);
        assert!(packed.len() < 1 << 20, "{} bytes", packed.len());
        let mut records = UserRecords::new(SequenceNumber::from_u128(9), "k".into(), packed, 0);
        let first: Vec<SourceRecord> = records.by_ref().take(3).collect();
        assert_eq!(first[2].position.sub_sequence, 2);
        let last = records.last().expect("more records");
        assert_eq!(last.position.sub_sequence, 489_999);
    }

    /// The user records of an aggregate as prost decodes the whole message (after the same
    /// checksum test): an independent reading to compare the lazy walk with.
    fn decode_whole(data: &[u8]) -> Option<Vec<(String, Bytes)>> {
        let rest = data.strip_prefix(&MAGIC)?;
        let (body, digest) = rest.split_at(rest.len().checked_sub(DIGEST_LEN)?);
        if Md5::digest(body).as_slice() != digest {
            return None;
        }
        let whole = AggregatedRecord::decode(body).ok()?;
        whole
            .records
            .iter()
            .map(|e| {
                let key = whole
                    .partition_key_table
                    .get(e.partition_key_index as usize)?;
                if let Some(i) = e.explicit_hash_key_index {
                    whole
                        .explicit_hash_key_table
                        .get(i as usize)?
                        .parse::<u128>()
                        .ok()?;
                }
                Some((key.clone(), e.data.clone()))
            })
            .collect()
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
            let whole = decode_whole(&bytes);
            let out = UserRecords::new(seq.clone(), "k".into(), Bytes::from(bytes.clone()), 0);
            let malformed = out.malformed();
            let out: Vec<SourceRecord> = out.collect();
            assert!(!out.is_empty());
            // What the lazy walk accepts, prost's decoder of the whole message reads alike.
            if !malformed && out[0].data != bytes {
                let whole = whole.expect("prost reads what the walk accepted");
                assert_eq!(out.len(), whole.len());
                assert!(
                    out.iter()
                        .zip(&whole)
                        .all(|(o, (key, data))| &o.partition_key == key && o.data == *data)
                );
            } else {
                assert_eq!((out.len(), &out[0].data[..]), (1, &bytes[..]));
                assert_eq!(
                    malformed,
                    bytes.starts_with(&MAGIC) && whole.is_none_or(|w| !w.is_empty())
                );
            }
        }
    }
}
