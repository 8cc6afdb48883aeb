//! The stored form of a lease: a small JSON object in one hash field, readable with
//! `redis-cli` and editable by the Lua scripts (Redis ships `cjson`).
//!
//! `{"owner":"worker-1","token":"3","checkpoint":"AFTER:49590338271490256608559692538361571095921575989136588898/0","parents":["shardId-000000000000"]}`
//!
//! - `token` is a decimal **string** so that Lua (whose numbers are doubles) compares and
//!   stores it exactly;
//! - `owner`, `checkpoint`, `parents` and `successor` (the client a release handed the lease
//!   to) are left out when absent / empty, `finished` when false;
//! - the checkpoint is [`Checkpoint`]'s text form.

use serde::{Deserialize, Serialize};

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, Lease, canonical_u64};

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    finished: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    parents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    successor: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The stored text of a lease row.
pub(crate) fn encode(lease: &Lease) -> String {
    let row = Row {
        owner: lease.owner.as_ref().map(|o| o.as_str().to_owned()),
        token: lease.token.to_string(),
        checkpoint: lease.checkpoint.as_ref().map(ToString::to_string),
        finished: lease.finished,
        parents: lease
            .parents
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        successor: lease.successor.as_ref().map(|c| c.as_str().to_owned()),
    };
    // Serializing a struct of strings, a bool and a list of strings cannot fail; fall back to
    // a hand-built object rather than panic if it ever did.
    serde_json::to_string(&row).unwrap_or_else(|_| format!("{{\"token\":\"{}\"}}", lease.token))
}

/// Parses a stored row of `shard`; the error says what is wrong with it (the caller names the
/// key).
pub(crate) fn decode(shard: &ShardId, raw: &[u8]) -> Result<Lease, String> {
    let row: Row = serde_json::from_slice(raw).map_err(|e| {
        format!(
            "not a lease row ({e}): {}",
            String::from_utf8_lossy(&raw[..raw.len().min(120)])
        )
    })?;
    // Canonical only: the scripts compare tokens as text, so "01" must not read as 1.
    let token = canonical_u64(&row.token).ok_or_else(|| {
        format!(
            "token {:?} is not an unsigned 64-bit integer in canonical decimal form",
            row.token
        )
    })?;
    let owner = match row.owner {
        Some(owner) if owner.is_empty() => return Err("owner is an empty string".to_owned()),
        Some(owner) => Some(ClientId::from(owner)),
        None => None,
    };
    let successor = match row.successor {
        Some(successor) if successor.is_empty() => {
            return Err("successor is an empty string".to_owned());
        }
        other => other.map(ClientId::from),
    };
    let checkpoint = row
        .checkpoint
        .map(|text| text.parse::<Checkpoint>().map_err(|e| e.to_string()))
        .transpose()?;
    Ok(Lease {
        shard: shard.clone(),
        parents: row.parents.into_iter().map(ShardId::from).collect(),
        owner,
        token,
        checkpoint,
        finished: row.finished,
        successor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinsumer_core::position::Position;

    #[test]
    fn rows_round_trip() {
        let shard = ShardId::from("shardId-000000000007");
        let mut lease = Lease::new(
            shard.clone(),
            vec![ShardId::from("p1"), ShardId::from("p2")],
        );
        assert_eq!(decode(&shard, encode(&lease).as_bytes()), Ok(lease.clone()));
        lease.owner = Some(ClientId::from("worker-1"));
        lease.token = u64::MAX;
        let seq = "49590338271490256608559692538361571095921575989136588898"
            .parse()
            .expect("valid");
        lease.checkpoint = Some(Checkpoint::After(Position::new(seq, 3)));
        lease.finished = true;
        assert_eq!(decode(&shard, encode(&lease).as_bytes()), Ok(lease.clone()));
        lease.successor = Some(ClientId::from("worker-2"));
        assert_eq!(decode(&shard, encode(&lease).as_bytes()), Ok(lease));
    }

    #[test]
    fn a_new_row_is_minimal() {
        let lease = Lease::new(ShardId::from("s"), vec![]);
        assert_eq!(encode(&lease), r#"{"token":"0"}"#);
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let shard = ShardId::from("s");
        for (raw, needle) in [
            ("garbage", "not a lease row"),
            (r#"{"token":5}"#, "not a lease row"),
            (r#"{"token":"-1"}"#, "token"),
            (r#"{"token":"01"}"#, "canonical"),
            (r#"{"token":"+1"}"#, "canonical"),
            (r#"{"token":"18446744073709551616"}"#, "token"),
            (r#"{"token":"1","checkpoint":"AFTER:5/+1"}"#, "sub-sequence"),
            (
                r#"{"token":"1","checkpoint":"AFTER:x/1"}"#,
                "sequence number",
            ),
            (r#"{"token":"1","owner":""}"#, "owner"),
            (r#"{"token":"1","successor":""}"#, "successor"),
            (r#"{"token":"1","successor":7}"#, "not a lease row"),
        ] {
            let err = decode(&shard, raw.as_bytes()).expect_err(raw);
            assert!(err.contains(needle), "{raw}: {err}");
        }
    }
}
