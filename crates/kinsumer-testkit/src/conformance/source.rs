//! The [`ShardSource`] contract: [`shard_source`] checks a source on a fresh two-shard stream,
//! driven through a [`StreamAdmin`] — listing, read-back exactly once in order, `After` and
//! `Latest` starts, and split and merge handing over to the children.

use crate::memory_stream::{MemoryStream, partition_hash_key};
use kinsumer_core::position::{Checkpoint, Position};
use kinsumer_core::source::{
    HashRange, ShardId, ShardInfo, ShardReader, ShardSource, SourceError, SourceRecord,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;

/// What a test needs to drive a stream besides reading it: produce and reshard.
///
/// [`MemoryStream`] implements it; `kinsumer-kinesis` implements it against an emulator.
#[async_trait]
pub trait StreamAdmin: Send + Sync {
    /// Writes one record, routed by the MD5 of `partition_key`.
    async fn put(&self, partition_key: &str, data: &[u8]) -> Result<(), String>;

    /// Splits an open shard: the children own `start ..= key - 1` and `key ..= end`.
    async fn split(&self, shard: &ShardId, new_starting_hash_key: u128) -> Result<(), String>;

    /// Merges two adjacent open shards.
    async fn merge(&self, shard: &ShardId, adjacent: &ShardId) -> Result<(), String>;
}

#[async_trait]
impl StreamAdmin for MemoryStream {
    async fn put(&self, partition_key: &str, data: &[u8]) -> Result<(), String> {
        MemoryStream::put(self, partition_key, data.to_vec())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn split(&self, shard: &ShardId, new_starting_hash_key: u128) -> Result<(), String> {
        MemoryStream::split(self, shard, new_starting_hash_key)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn merge(&self, shard: &ShardId, adjacent: &ShardId) -> Result<(), String> {
        MemoryStream::merge(self, shard, adjacent)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// How many times an eventually consistent outcome is polled, and how long apart.
const POLL_ATTEMPTS: usize = 100;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The batch size the checks ask for.
const BATCH: usize = 1000;

/// Runs the [`ShardSource`] contract on a **fresh stream of two open shards**, which the check
/// reshards (the stream is left split and merged).
///
/// # Panics
///
/// On the first violation, naming the check.
pub async fn shard_source(source: &dyn ShardSource, admin: &dyn StreamAdmin) {
    let mut model = StreamModel::default();
    let roots = listing_shows_two_open_root_shards(source).await;
    model.track(&roots);
    records_are_read_back_exactly_once_in_order(source, admin, &mut model).await;
    open_after_starts_after_the_position(source, &model).await;
    a_timestamp_in_the_future_is_a_bad_position(source, &model).await;
    latest_sees_only_later_records(source, admin, &mut model).await;
    split_closes_the_parent_and_hands_over_to_its_children(source, admin, &mut model).await;
    merge_closes_both_parents_and_hands_over_to_the_child(source, admin, &mut model).await;
}

/// What the checks know of the stream: shards, and the records put into each.
#[derive(Default)]
struct StreamModel {
    shards: BTreeMap<ShardId, ShardInfo>,
    /// Per shard, the (partition key, data) put into it, in order.
    written: BTreeMap<ShardId, Vec<(String, Vec<u8>)>>,
    /// Per shard, the records read back from its horizon.
    read: BTreeMap<ShardId, Vec<SourceRecord>>,
}

impl StreamModel {
    fn track(&mut self, shards: &[ShardInfo]) {
        for info in shards {
            self.shards.insert(info.id.clone(), info.clone());
        }
    }

    /// The open shard owning `partition_key`'s hash key.
    fn route(&self, check: &str, partition_key: &str) -> ShardId {
        let hash_key = partition_hash_key(partition_key);
        match self
            .shards
            .values()
            .find(|s| s.open && s.hash_range.contains(hash_key))
        {
            Some(info) => info.id.clone(),
            None => panic!("shard_source conformance [{check}]: no open shard owns {hash_key}"),
        }
    }

    async fn put(&mut self, check: &str, admin: &dyn StreamAdmin, key: &str, data: &str) {
        if let Err(err) = admin.put(key, data.as_bytes()).await {
            panic!("shard_source conformance [{check}]: put {key:?} failed: {err}");
        }
        let shard = self.route(check, key);
        self.written
            .entry(shard)
            .or_default()
            .push((key.to_owned(), data.as_bytes().to_vec()));
    }

    /// A partition key (with this prefix) that routes to `shard`.
    fn key_for(&self, check: &str, shard: &ShardId, prefix: &str) -> String {
        for i in 0..10_000 {
            let key = format!("{prefix}-{i}");
            if self.route(check, &key) == *shard {
                return key;
            }
        }
        panic!("shard_source conformance [{check}]: no key routes to {shard}")
    }
}

async fn open(
    check: &str,
    source: &dyn ShardSource,
    shard: &ShardId,
    from: &Checkpoint,
) -> Box<dyn ShardReader> {
    for _ in 0..POLL_ATTEMPTS {
        match source.open(shard, from).await {
            Ok(reader) => return reader,
            Err(err) if err.is_retryable() => tokio::time::sleep(POLL_INTERVAL).await,
            Err(err) => panic!("shard_source conformance [{check}]: open {shard} at {from}: {err}"),
        }
    }
    panic!("shard_source conformance [{check}]: open {shard} at {from} kept failing")
}

async fn list(check: &str, source: &dyn ShardSource) -> Vec<ShardInfo> {
    for _ in 0..POLL_ATTEMPTS {
        match source.list_shards().await {
            Ok(shards) => return shards,
            Err(err) if err.is_retryable() => tokio::time::sleep(POLL_INTERVAL).await,
            Err(err) => panic!("shard_source conformance [{check}]: list_shards: {err}"),
        }
    }
    panic!("shard_source conformance [{check}]: list_shards kept failing")
}

/// Reads until `want` records arrived or the shard ended, within the poll budget. Returns the
/// records and the end, if reached.
async fn read_some(
    check: &str,
    reader: &mut dyn ShardReader,
    want: usize,
    until_end: bool,
) -> (Vec<SourceRecord>, Option<Vec<ShardId>>) {
    let mut records = Vec::new();
    for _ in 0..POLL_ATTEMPTS {
        match reader.next_batch(BATCH).await {
            Ok(batch) => {
                records.extend(batch.records);
                if batch.end.is_some() {
                    return (records, batch.end);
                }
                if records.len() >= want && !until_end {
                    return (records, None);
                }
            }
            Err(err) if err.is_retryable() => {}
            Err(err) => panic!("shard_source conformance [{check}]: next_batch: {err}"),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    if until_end {
        panic!(
            "shard_source conformance [{check}]: the shard never reported its end \
             (read {} records)",
            records.len()
        );
    }
    (records, None)
}

/// Reads once more (retrying transient errors) and asserts nothing new is there.
async fn assert_caught_up(check: &str, reader: &mut dyn ShardReader, what: &str) {
    for _ in 0..POLL_ATTEMPTS {
        match reader.next_batch(BATCH).await {
            Ok(batch) => {
                assert!(
                    batch.records.is_empty(),
                    "shard_source conformance [{check}]: {what}: expected an empty batch, got \
                     {:?}",
                    batch.records
                );
                return;
            }
            Err(err) if err.is_retryable() => tokio::time::sleep(POLL_INTERVAL).await,
            Err(err) => panic!("shard_source conformance [{check}]: next_batch: {err}"),
        }
    }
    panic!("shard_source conformance [{check}]: next_batch kept failing")
}

fn assert_strictly_increasing(check: &str, shard: &ShardId, records: &[SourceRecord]) {
    for pair in records.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "shard_source conformance [{check}]: positions of {shard} must strictly increase: \
             {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
}

fn assert_records_match(
    check: &str,
    shard: &ShardId,
    records: &[SourceRecord],
    written: &[(String, Vec<u8>)],
) {
    let got: Vec<(&str, &[u8])> = records
        .iter()
        .map(|r| (r.partition_key.as_str(), &r.data[..]))
        .collect();
    let want: Vec<(&str, &[u8])> = written
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_slice()))
        .collect();
    assert_eq!(
        got, want,
        "shard_source conformance [{check}]: {shard} must yield exactly what was put into it, \
         once each, in order"
    );
}

fn assert_covers_key_space(check: &str, shards: &[&ShardInfo]) {
    let mut ranges: Vec<HashRange> = shards.iter().map(|s| s.hash_range).collect();
    ranges.sort();
    let covers = ranges.first().is_some_and(|r| r.start == 0)
        && ranges.last().is_some_and(|r| r.end == u128::MAX)
        && ranges
            .windows(2)
            .all(|w| w[0].end.checked_add(1) == Some(w[1].start));
    assert!(
        covers,
        "shard_source conformance [{check}]: open shards must cover the key space without gaps \
         or overlaps: {ranges:?}"
    );
}

async fn listing_shows_two_open_root_shards(source: &dyn ShardSource) -> Vec<ShardInfo> {
    const CHECK: &str = "listing_shows_two_open_root_shards";
    let shards = list(CHECK, source).await;
    assert_eq!(
        shards.len(),
        2,
        "shard_source conformance [{CHECK}]: the stream must be fresh with 2 shards, got \
         {shards:?}"
    );
    let ids: BTreeSet<&ShardId> = shards.iter().map(|s| &s.id).collect();
    assert_eq!(
        ids.len(),
        shards.len(),
        "shard_source conformance [{CHECK}]: shard ids must be unique"
    );
    assert!(
        shards.iter().all(|s| s.open && s.parents.is_empty()),
        "shard_source conformance [{CHECK}]: all shards open with no parents: {shards:?}"
    );
    assert_covers_key_space(CHECK, &shards.iter().collect::<Vec<_>>());
    shards
}

async fn records_are_read_back_exactly_once_in_order(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "records_are_read_back_exactly_once_in_order";
    for i in 0..24 {
        let (key, data) = (format!("key-{i}"), format!("record-{i}"));
        model.put(CHECK, admin, &key, &data).await;
    }
    let shards: Vec<ShardId> = model.shards.keys().cloned().collect();
    for shard in shards {
        let written = model.written.get(&shard).cloned().unwrap_or_default();
        let mut reader = open(CHECK, source, &shard, &Checkpoint::TrimHorizon).await;
        let (records, end) = read_some(CHECK, reader.as_mut(), written.len(), false).await;
        assert!(
            end.is_none(),
            "shard_source conformance [{CHECK}]: open shard {shard} reported an end"
        );
        assert_caught_up(CHECK, reader.as_mut(), "a caught-up reader").await;
        assert_records_match(CHECK, &shard, &records, &written);
        assert_strictly_increasing(CHECK, &shard, &records);
        model.read.insert(shard, records);
    }
}

async fn open_after_starts_after_the_position(source: &dyn ShardSource, model: &StreamModel) {
    const CHECK: &str = "open_after_starts_after_the_position";
    let Some((shard, records)) = model.read.iter().find(|(_, records)| records.len() >= 3) else {
        panic!("shard_source conformance [{CHECK}]: no shard got 3 records to test with")
    };
    let (first, second) = (&records[0], &records[1]);
    let sub_sequence_after = Position::new(
        first.position.sequence.clone(),
        first.position.sub_sequence + 1,
    );
    for (what, position) in [
        ("a record's position", first.position.clone()),
        ("a sub-sequence after a record", sub_sequence_after),
    ] {
        let from = Checkpoint::After(position);
        let mut reader = open(CHECK, source, shard, &from).await;
        let (read, _) = read_some(CHECK, reader.as_mut(), records.len() - 1, false).await;
        assert_eq!(
            read.first().map(|r| &r.position),
            Some(&second.position),
            "shard_source conformance [{CHECK}]: After({what}) must start at the next record"
        );
        assert_eq!(
            read.len(),
            records.len() - 1,
            "shard_source conformance [{CHECK}]: After({what}) must yield every later record"
        );
    }
    let Some(last) = records.last() else { return };
    let mut reader = open(
        CHECK,
        source,
        shard,
        &Checkpoint::After(last.position.clone()),
    )
    .await;
    assert_caught_up(CHECK, reader.as_mut(), "After(the last record)").await;
}

/// A position the source refuses is `BadPosition` — that shard's problem — never `Fatal`,
/// which would stop a consumer (and, in turn, every consumer that takes the shard).
async fn a_timestamp_in_the_future_is_a_bad_position(
    source: &dyn ShardSource,
    model: &StreamModel,
) {
    const CHECK: &str = "a_timestamp_in_the_future_is_a_bad_position";
    let Some(shard) = model.shards.keys().next() else {
        panic!("shard_source conformance [{CHECK}]: no shard to test with")
    };
    let in_a_day = Checkpoint::AtTimestamp(source.now_ms() + 24 * 3600 * 1000);
    match source.open(shard, &in_a_day).await {
        Err(SourceError::BadPosition { shard: s, .. }) => assert_eq!(&s, shard),
        Err(other) => {
            panic!("shard_source conformance [{CHECK}]: expected BadPosition, got {other:?}")
        }
        Ok(_) => {
            panic!("shard_source conformance [{CHECK}]: expected BadPosition, the open succeeded")
        }
    }
}

async fn latest_sees_only_later_records(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "latest_sees_only_later_records";
    let Some((shard, _)) = model.read.iter().find(|(_, r)| !r.is_empty()) else {
        panic!("shard_source conformance [{CHECK}]: no shard got a record")
    };
    let shard = shard.clone();
    let mut reader = open(CHECK, source, &shard, &Checkpoint::Latest).await;
    assert_caught_up(CHECK, reader.as_mut(), "a Latest reader before any put").await;
    let key = model.key_for(CHECK, &shard, "latest");
    model.put(CHECK, admin, &key, "after-latest").await;
    let (records, _) = read_some(CHECK, reader.as_mut(), 1, false).await;
    let got: Vec<(&str, &[u8])> = records
        .iter()
        .map(|r| (r.partition_key.as_str(), &r.data[..]))
        .collect();
    assert_eq!(
        got,
        vec![(key.as_str(), &b"after-latest"[..])],
        "shard_source conformance [{CHECK}]: a Latest reader sees exactly the later record"
    );
}

/// Polls the listing until `done` holds for it.
async fn await_listing(
    check: &str,
    source: &dyn ShardSource,
    what: &str,
    done: impl Fn(&[ShardInfo]) -> bool,
) -> Vec<ShardInfo> {
    let mut shards = Vec::new();
    for _ in 0..POLL_ATTEMPTS {
        shards = list(check, source).await;
        if done(&shards) {
            return shards;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("shard_source conformance [{check}]: the listing never showed {what}: {shards:?}")
}

/// Reads `parent` from its horizon to its end; checks its records and that the end names
/// exactly `children`.
async fn assert_reads_to_end(
    check: &str,
    source: &dyn ShardSource,
    model: &StreamModel,
    parent: &ShardId,
    children: &BTreeSet<ShardId>,
) {
    let mut reader = open(check, source, parent, &Checkpoint::TrimHorizon).await;
    let (records, end) = read_some(check, reader.as_mut(), 0, true).await;
    let written = model.written.get(parent).cloned().unwrap_or_default();
    assert_records_match(check, parent, &records, &written);
    assert_strictly_increasing(check, parent, &records);
    let end: BTreeSet<ShardId> = end.unwrap_or_default().into_iter().collect();
    assert_eq!(
        &end, children,
        "shard_source conformance [{check}]: the end of {parent} must name its children"
    );
}

/// Puts a record routed into `child` and reads it back from the child's horizon.
async fn assert_child_takes_writes(
    check: &str,
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
    child: &ShardId,
) {
    let key = model.key_for(check, child, "child");
    model.put(check, admin, &key, "into-child").await;
    let written = model.written.get(child).cloned().unwrap_or_default();
    let mut reader = open(check, source, child, &Checkpoint::TrimHorizon).await;
    let (records, _) = read_some(check, reader.as_mut(), written.len(), false).await;
    assert_records_match(check, child, &records, &written);
}

async fn split_closes_the_parent_and_hands_over_to_its_children(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "split_closes_the_parent_and_hands_over_to_its_children";
    let Some(parent) = model
        .shards
        .values()
        .filter(|s| s.open)
        .max_by_key(|s| model.written.get(&s.id).map_or(0, Vec::len))
        .cloned()
    else {
        panic!("shard_source conformance [{CHECK}]: no open shard")
    };
    let range = parent.hash_range;
    let key = range.start + (range.end - range.start) / 2 + 1;
    if let Err(err) = admin.split(&parent.id, key).await {
        panic!(
            "shard_source conformance [{CHECK}]: split {} failed: {err}",
            parent.id
        );
    }
    let shards = await_listing(CHECK, source, "the split", |shards| {
        let closed = shards.iter().any(|s| s.id == parent.id && !s.open);
        let children = shards.iter().filter(|s| s.parents == [parent.id.clone()]);
        closed && children.count() == 2
    })
    .await;
    let mut children: Vec<&ShardInfo> = shards
        .iter()
        .filter(|s| s.parents == [parent.id.clone()])
        .collect();
    children.sort_by_key(|s| s.hash_range);
    let ranges: Vec<HashRange> = children.iter().map(|s| s.hash_range).collect();
    assert_eq!(
        ranges,
        vec![
            HashRange {
                start: range.start,
                end: key - 1
            },
            HashRange {
                start: key,
                end: range.end
            },
        ],
        "shard_source conformance [{CHECK}]: the children split the parent's range at the key"
    );
    assert!(
        children.iter().all(|s| s.open),
        "shard_source conformance [{CHECK}]: the children are open"
    );
    let open: Vec<&ShardInfo> = shards.iter().filter(|s| s.open).collect();
    assert_covers_key_space(CHECK, &open);
    model.track(&shards);

    let child_ids: BTreeSet<ShardId> = children.iter().map(|s| s.id.clone()).collect();
    assert_reads_to_end(CHECK, source, model, &parent.id, &child_ids).await;
    for child in &child_ids {
        assert_child_takes_writes(CHECK, source, admin, model, child).await;
    }
}

async fn merge_closes_both_parents_and_hands_over_to_the_child(
    source: &dyn ShardSource,
    admin: &dyn StreamAdmin,
    model: &mut StreamModel,
) {
    const CHECK: &str = "merge_closes_both_parents_and_hands_over_to_the_child";
    let mut open: Vec<ShardInfo> = model.shards.values().filter(|s| s.open).cloned().collect();
    open.sort_by_key(|s| s.hash_range);
    let Some((a, b)) = open
        .windows(2)
        .find(|w| w[0].hash_range.end.checked_add(1) == Some(w[1].hash_range.start))
        .map(|w| (w[0].clone(), w[1].clone()))
    else {
        panic!("shard_source conformance [{CHECK}]: no two adjacent open shards: {open:?}")
    };
    for parent in [&a, &b] {
        let key = model.key_for(CHECK, &parent.id, "before-merge");
        model.put(CHECK, admin, &key, "before-merge").await;
    }
    if let Err(err) = admin.merge(&a.id, &b.id).await {
        panic!(
            "shard_source conformance [{CHECK}]: merge {} + {} failed: {err}",
            a.id, b.id
        );
    }
    let parents: BTreeSet<ShardId> = [a.id.clone(), b.id.clone()].into();
    let is_child = |s: &ShardInfo| s.parents.iter().cloned().collect::<BTreeSet<_>>() == parents;
    let shards = await_listing(CHECK, source, "the merge", |shards| {
        let closed = shards
            .iter()
            .filter(|s| parents.contains(&s.id) && !s.open)
            .count();
        closed == 2 && shards.iter().any(is_child)
    })
    .await;
    let children: Vec<&ShardInfo> = shards.iter().filter(|s| is_child(s)).collect();
    assert_eq!(
        children.len(),
        1,
        "shard_source conformance [{CHECK}]: a merge has one child: {children:?}"
    );
    let child = children[0];
    assert_eq!(
        (child.hash_range, child.parents.len(), child.open),
        (
            HashRange {
                start: a.hash_range.start,
                end: b.hash_range.end
            },
            2,
            true
        ),
        "shard_source conformance [{CHECK}]: the child is open, owns the union and names both \
         parents"
    );
    let open: Vec<&ShardInfo> = shards.iter().filter(|s| s.open).collect();
    assert_covers_key_space(CHECK, &open);
    model.track(&shards);

    let child_id: BTreeSet<ShardId> = [child.id.clone()].into();
    for parent in [&a, &b] {
        assert_reads_to_end(CHECK, source, model, &parent.id, &child_id).await;
    }
    assert_child_takes_writes(CHECK, source, admin, model, &child.id).await;
}
