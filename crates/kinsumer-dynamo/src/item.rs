//! The items of the table: key layout, and lease items to and from [`Lease`]s.
//!
//! Decoding never panics: an attribute that is missing or of the wrong type is a
//! `StoreError::Corrupt` naming the item's key (`<table>/<pk>/<sk>`).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, ClientRow, Lease, canonical_u64};

/// An item as the SDK hands it over.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// Partition key attribute (S).
pub(crate) const PK: &str = "pk";
/// Sort key attribute (S).
pub(crate) const SK: &str = "sk";
/// Client rows: the last heartbeat value (N, a `u64`; a small counter in rows of older versions).
pub(crate) const COUNTER: &str = "counter";
/// Client rows: the heartbeat value a watcher judged the client dead at (N), absent if none.
pub(crate) const JUDGED_DEAD: &str = "judged_dead";
/// The change counter item: its value (N).
pub(crate) const CHANGES: &str = "changes";
/// Client rows: epoch seconds after which DynamoDB's TTL may delete the row (N).
pub(crate) const EXPIRES_AT: &str = "expires_at";
/// Lease rows: the owner (S), absent when unowned.
pub(crate) const OWNER: &str = "owner";
/// Lease rows: the fencing token (N).
pub(crate) const TOKEN: &str = "token";
/// Lease rows: the checkpoint's text form (S), absent until the first commit.
pub(crate) const CHECKPOINT: &str = "checkpoint";
/// Lease rows: the finished mark (BOOL).
pub(crate) const FINISHED: &str = "finished";
/// Lease rows: the parent shard ids (L of S).
pub(crate) const PARENTS: &str = "parents";
/// Lease rows: the client a release handed the lease to (S), absent when none; `take`
/// removes it.
pub(crate) const SUCCESSOR: &str = "successor";

/// Every attribute [`decode_lease`] reads: whether a lease item decodes depends on these only.
pub(crate) const LEASE_ATTRIBUTES: [&str; 6] =
    [TOKEN, OWNER, SUCCESSOR, CHECKPOINT, FINISHED, PARENTS];

/// The partition key of `application`'s client rows. Application names cannot hold `#`
/// (`DynamoConfig::validate`), so keys of different applications never collide.
pub(crate) fn clients_pk(application: &str) -> String {
    format!("clients#{application}")
}

/// The partition key of `application`'s change counter: an item of its own, in a partition
/// of its own (its sort key is [`CHANGES_SK`]).
pub(crate) fn changes_pk(application: &str) -> String {
    format!("changes#{application}")
}

/// The sort key of the change counter item.
pub(crate) const CHANGES_SK: &str = "changes";

/// The key of `application`'s change counter item.
pub(crate) fn changes_key(application: &str) -> Item {
    key(changes_pk(application), CHANGES_SK)
}

/// The partition key of `application`'s lease rows of `stream`.
pub(crate) fn lease_pk(application: &str, stream: &str) -> String {
    format!("lease#{application}#{stream}")
}

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The key of one item.
pub(crate) fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

/// The item [`Lease::new`] describes.
pub(crate) fn new_lease_item(pk: String, shard: &ShardId, parents: &[ShardId]) -> Item {
    let mut item = key(pk, shard.as_str());
    item.insert(TOKEN.to_owned(), n(0));
    item.insert(FINISHED.to_owned(), AttributeValue::Bool(false));
    item.insert(
        PARENTS.to_owned(),
        AttributeValue::L(parents.iter().map(|p| s(p.as_str())).collect()),
    );
    item
}

/// The whole item of `lease` (absent owner, checkpoint and successor left out), as
/// `replace_corrupt` writes it.
pub(crate) fn lease_item(pk: String, lease: &Lease) -> Item {
    let mut item = new_lease_item(pk, &lease.shard, &lease.parents);
    item.insert(TOKEN.to_owned(), n(lease.token));
    item.insert(FINISHED.to_owned(), AttributeValue::Bool(lease.finished));
    let optional = [
        (OWNER, lease.owner.as_ref().map(|o| o.as_str().to_owned())),
        (
            CHECKPOINT,
            lease.checkpoint.as_ref().map(ToString::to_string),
        ),
        (
            SUCCESSOR,
            lease.successor.as_ref().map(|c| c.as_str().to_owned()),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            item.insert(name.to_owned(), s(value));
        }
    }
    item
}

/// A condition expression with its attribute names and values, as aliases.
pub(crate) struct Condition {
    pub expression: String,
    pub names: Vec<(String, String)>,
    pub values: Vec<(String, AttributeValue)>,
}

/// A condition that holds while `item` still has exactly the lease attributes it has now
/// (equal values, and the absent ones still absent).
pub(crate) fn unchanged_condition(item: &Item) -> Condition {
    let mut terms = vec!["attribute_exists(#pk)".to_owned()];
    let mut names = vec![("#pk".to_owned(), PK.to_owned())];
    let mut values = Vec::new();
    for (i, attribute) in LEASE_ATTRIBUTES.iter().enumerate() {
        let alias = format!("#a{i}");
        match item.get(*attribute) {
            Some(value) => {
                terms.push(format!("{alias} = :a{i}"));
                values.push((format!(":a{i}"), value.clone()));
            }
            None => terms.push(format!("attribute_not_exists({alias})")),
        }
        names.push((alias, (*attribute).to_owned()));
    }
    Condition {
        expression: terms.join(" AND "),
        names,
        values,
    }
}

fn kind(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::Null(_) => "NULL",
        _ => "an unknown type",
    }
}

fn wrong_type(name: &str, want: &str, got: &AttributeValue) -> String {
    format!(
        "attribute {name:?} must be of type {want}, found {}",
        kind(got)
    )
}

pub(crate) fn number(item: &Item, name: &str) -> Result<Option<u64>, String> {
    match item.get(name) {
        None => Ok(None),
        // DynamoDB writes numbers in canonical form; anything else (a sign, a fraction, an
        // exponent, a value past u64::MAX) is not a token or heartbeat value we wrote.
        Some(AttributeValue::N(text)) => canonical_u64(text).map(Some).ok_or_else(|| {
            format!("attribute {name:?} must be an unsigned 64-bit integer, found {text:?}")
        }),
        Some(other) => Err(wrong_type(name, "N", other)),
    }
}

fn string<'a>(item: &'a Item, name: &str) -> Result<Option<&'a str>, String> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(text)) => Ok(Some(text)),
        Some(other) => Err(wrong_type(name, "S", other)),
    }
}

/// The sort key of an item returned by a query (to name it in errors).
pub(crate) fn sort_key(item: &Item) -> Result<&str, String> {
    string(item, SK)?.ok_or_else(|| format!("the sort key {SK:?} is missing"))
}

/// A client item into a [`ClientRow`].
pub(crate) fn decode_client(item: &Item) -> Result<ClientRow, String> {
    let id = sort_key(item)?;
    let counter = number(item, COUNTER)?
        .ok_or_else(|| format!("the heartbeat value {COUNTER:?} is missing"))?;
    // A judgement that does not decode is none (the safe side: the client counts as alive).
    let judged_dead = number(item, JUDGED_DEAD).ok().flatten();
    Ok(ClientRow {
        judged_dead,
        ..ClientRow::new(ClientId::from(id), counter)
    })
}

/// A lease item into a [`Lease`] of `shard`.
pub(crate) fn decode_lease(shard: &ShardId, item: &Item) -> Result<Lease, String> {
    let token =
        number(item, TOKEN)?.ok_or_else(|| format!("the fencing token {TOKEN:?} is missing"))?;
    let owner = string(item, OWNER)?.map(ClientId::from);
    let successor = string(item, SUCCESSOR)?.map(ClientId::from);
    let checkpoint = string(item, CHECKPOINT)?
        .map(|text| {
            text.parse::<Checkpoint>()
                .map_err(|e| format!("attribute {CHECKPOINT:?}: {e}"))
        })
        .transpose()?;
    let finished = match item.get(FINISHED) {
        None => false,
        Some(AttributeValue::Bool(b)) => *b,
        Some(other) => return Err(wrong_type(FINISHED, "BOOL", other)),
    };
    let parents = match item.get(PARENTS) {
        None => Vec::new(),
        Some(AttributeValue::L(list)) => list
            .iter()
            .map(|p| match p {
                AttributeValue::S(id) => Ok(ShardId::from(id.as_str())),
                other => Err(format!(
                    "attribute {PARENTS:?} must list strings, found {}",
                    kind(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        // Accepted too: a string set, as an operator might write by hand.
        Some(AttributeValue::Ss(set)) => set.iter().map(|p| ShardId::from(p.as_str())).collect(),
        Some(other) => return Err(wrong_type(PARENTS, "L", other)),
    };
    Ok(Lease {
        shard: shard.clone(),
        parents,
        owner,
        token,
        checkpoint,
        finished,
        successor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_item_decodes_to_lease_new() {
        let shard = ShardId::from("shardId-000000000003");
        let parents = vec![ShardId::from("shardId-000000000001")];
        let item = new_lease_item(lease_pk("app", "orders"), &shard, &parents);
        assert_eq!(
            decode_lease(&shard, &item),
            Ok(Lease::new(shard.clone(), parents))
        );
    }

    #[test]
    fn a_lease_item_decodes_to_the_lease() {
        let shard = ShardId::from("shardId-000000000003");
        let mut lease = Lease::new(shard.clone(), vec![ShardId::from("shardId-000000000001")]);
        lease.token = 1_795_676_400_000;
        lease.checkpoint = Some(Checkpoint::TrimHorizon);
        assert_eq!(
            decode_lease(&shard, &lease_item(lease_pk("a", "s"), &lease)),
            Ok(lease.clone())
        );
        lease.owner = Some(ClientId::from("o"));
        lease.successor = Some(ClientId::from("h"));
        lease.finished = true;
        assert_eq!(
            decode_lease(&shard, &lease_item(lease_pk("a", "s"), &lease)),
            Ok(lease)
        );
    }

    #[test]
    fn the_unchanged_condition_names_every_lease_attribute() {
        let mut item = new_lease_item(lease_pk("a", "s"), &ShardId::from("x"), &[]);
        item.insert(TOKEN.to_owned(), s("01"));
        let Condition {
            expression,
            names,
            values,
        } = unchanged_condition(&item);
        for attribute in LEASE_ATTRIBUTES {
            assert!(names.iter().any(|(_, n)| n == attribute), "{attribute}");
        }
        // token, finished and parents are present; owner, successor, checkpoint absent.
        assert_eq!(values.len(), 3, "{expression}");
        assert_eq!(expression.matches("attribute_not_exists").count(), 3);
        assert!(values.iter().any(|(_, v)| *v == s("01")));
    }

    #[test]
    fn corrupt_items_are_errors_not_panics() {
        let shard = ShardId::from("s");
        let base = new_lease_item(lease_pk("app", "orders"), &shard, &[]);
        let cases: Vec<(&str, Option<AttributeValue>, &str)> = vec![
            (TOKEN, None, "missing"),
            (TOKEN, Some(s("1")), "type N"),
            (TOKEN, Some(AttributeValue::N("-1".into())), "unsigned"),
            (OWNER, Some(n(3)), "type S"),
            (SUCCESSOR, Some(AttributeValue::Bool(true)), "type S"),
            (CHECKPOINT, Some(s("AFTER:x")), "checkpoint"),
            (FINISHED, Some(s("yes")), "BOOL"),
            (PARENTS, Some(AttributeValue::L(vec![n(1)])), "strings"),
        ];
        for (name, value, expect) in cases {
            let mut item = base.clone();
            match value {
                Some(v) => item.insert(name.to_owned(), v),
                None => item.remove(name),
            };
            let err = decode_lease(&shard, &item).expect_err(name);
            assert!(err.contains(expect), "{name}: {err}");
        }
        let mut client = key(clients_pk("app"), "a");
        client.insert(COUNTER.to_owned(), s("7"));
        assert!(decode_client(&client).is_err());
        client.remove(SK);
        assert!(decode_client(&client).is_err());
    }
}
