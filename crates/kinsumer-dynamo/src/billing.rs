//! What DynamoDB bills for the store's items: their size by DynamoDB's rules, and the read
//! units a strongly consistent read of them costs — counted by the store for every read it
//! sends ([`DynamoStats::read_units`](crate::DynamoStats::read_units)), and usable to model a
//! fleet too large to run against a real table.
//!
//! ```
//! use kinsumer_core::source::ShardId;
//! use kinsumer_core::store::{ClientId, Lease};
//! use kinsumer_dynamo::billing;
//!
//! let mut lease = Lease::new(ShardId::from("shardId-000000000001"), vec![]);
//! lease.owner = Some(ClientId::from("ip-10-0-0-1-4000-5f3a9c21"));
//! let size = billing::lease_item_size("orders", "orders-stream", &lease);
//! // 1,000 such rows in one strongly consistent Query (one page): 4 KB a read unit.
//! let units = billing::query_read_units(std::iter::repeat_n(size, 1_000));
//! assert_eq!(units, (size * 1_000).div_ceil(4096) as u64);
//! ```

use aws_sdk_dynamodb::types::AttributeValue;

use kinsumer_core::store::{ClientRow, Lease};

use crate::item::{self, Item};

/// A strongly consistent read costs one read unit per 4 KB (at least one per request).
pub const READ_UNIT_BYTES: usize = 4_096;

/// A `Query` returns at most 1 MB a page; each page is billed on its own.
pub const PAGE_BYTES: usize = 1 << 20;

/// The size DynamoDB bills `item` at: each attribute's name (UTF-8 bytes) plus its value — a
/// string or binary its bytes, a number about one byte per two significant digits plus one, a
/// boolean or null one byte, a list or map 3 bytes plus one per element plus the elements.
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, v)| name.len() + value_size(v))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(list) => 3 + list.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

fn number_size(text: &str) -> usize {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.max(1).div_ceil(2) + 1
}

/// Read units of one strongly consistent request (a `GetItem`, one `Query` page) that read
/// items of these sizes.
pub fn request_read_units(sizes: impl IntoIterator<Item = usize>) -> u64 {
    let bytes: usize = sizes.into_iter().sum();
    bytes.div_ceil(READ_UNIT_BYTES).max(1) as u64
}

/// Read units of a strongly consistent `Query` of items of these sizes, every page billed on
/// its own (a page ends before it passes 1 MB).
pub fn query_read_units(sizes: impl IntoIterator<Item = usize>) -> u64 {
    let (mut units, mut page, mut in_page) = (0, 0, 0usize);
    for size in sizes {
        if page + size > PAGE_BYTES && in_page > 0 {
            units += request_read_units([page]);
            (page, in_page) = (0, 0);
        }
        page += size;
        in_page += 1;
    }
    units + request_read_units([page])
}

/// The size of `lease`'s item in `application`'s table for `stream`.
pub fn lease_item_size(application: &str, stream: &str, lease: &Lease) -> usize {
    item_size(&item::lease_item(
        item::lease_pk(application, stream),
        lease,
    ))
}

/// The size of a client row's item; `expires` when the store writes a TTL attribute
/// (`DynamoConfig::client_ttl`).
pub fn client_item_size(application: &str, row: &ClientRow, expires: bool) -> usize {
    let mut it = item::key(item::clients_pk(application), row.id.as_str());
    it.insert(item::COUNTER.to_owned(), item::n(row.counter));
    if let Some(judged) = row.judged_dead {
        it.insert(item::JUDGED_DEAD.to_owned(), item::n(judged));
    }
    if expires {
        // Epoch seconds: ten digits for centuries to come.
        it.insert(item::EXPIRES_AT.to_owned(), item::n(4_000_000_000));
    }
    item_size(&it)
}

/// The size of the change counter's item at `value`.
pub fn changes_item_size(application: &str, value: u64) -> usize {
    let mut it = item::changes_key(application);
    it.insert(item::CHANGES.to_owned(), item::n(value));
    item_size(&it)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinsumer_core::source::ShardId;

    /// DynamoDB's documented examples: a name plus its value's bytes; numbers by significant
    /// digits.
    #[test]
    fn sizes_follow_dynamodbs_rules() {
        assert_eq!(number_size("0"), 2);
        assert_eq!(number_size("1"), 2);
        assert_eq!(number_size("12"), 2);
        assert_eq!(number_size("123"), 3);
        assert_eq!(number_size("1000000"), 2);
        assert_eq!(number_size("18446744073709551615"), 11);
        let it = Item::from([
            ("pk".to_owned(), AttributeValue::S("abc".into())),
            ("b".to_owned(), AttributeValue::Bool(true)),
            (
                "l".to_owned(),
                AttributeValue::L(vec![AttributeValue::S("xy".into())]),
            ),
        ]);
        assert_eq!(item_size(&it), (2 + 3) + (1 + 1) + (1 + 3 + 1 + 2));
    }

    #[test]
    fn a_read_is_billed_per_4_kb_at_least_one_and_a_query_per_page() {
        assert_eq!(request_read_units([]), 1);
        assert_eq!(request_read_units([100, 100]), 1);
        assert_eq!(request_read_units([4_096, 1]), 2);
        assert_eq!(query_read_units(std::iter::empty()), 1);
        // Two pages of 1 MB and a 4 KB remainder: 256 + 256 + 1, not one rounding of the sum.
        let rows = std::iter::repeat_n(1_024, 2 * 1_024 + 4);
        assert_eq!(query_read_units(rows), 256 + 256 + 1);
        // A page boundary that splits the rounding: 3 rows of 600 KB, each page alone.
        let big = 600 * 1_024;
        assert_eq!(query_read_units([big, big, big]), 3 * 150);
    }

    #[test]
    fn a_leased_row_with_a_checkpoint_is_larger_than_a_new_one() {
        let new = Lease::new(ShardId::from("shardId-000000000001"), vec![]);
        let mut held = new.clone();
        held.owner = Some("ip-10-0-0-1-4000-5f3a9c21".into());
        held.token = 12;
        let fresh = lease_item_size("app", "stream", &new);
        assert!(lease_item_size("app", "stream", &held) > fresh);
        assert!(fresh > "shardId-000000000001".len());
    }
}
