//! Positions in a shard: sequence numbers, record positions, checkpoints and start positions.
//!
//! Kinesis sequence numbers are decimal strings of up to 128 bits whose *length varies*, so they
//! must be compared as numbers, never as strings: `"9" < "10"`. [`SequenceNumber`] validates and
//! compares them numerically without a big-integer dependency.
//!
//! ```
//! use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
//!
//! let a: SequenceNumber = "9".parse().unwrap();
//! let b: SequenceNumber = "10".parse().unwrap();
//! assert!(a < b);
//!
//! // A checkpoint is stored as text by every lease store and parses back losslessly.
//! let cp = Checkpoint::After(Position::new(b, 3));
//! assert_eq!(cp.to_string(), "AFTER:10/3");
//! assert_eq!("AFTER:10/3".parse::<Checkpoint>().unwrap(), cp);
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A parse failure for a position or checkpoint, naming the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {rule}")]
pub struct ParsePositionError {
    /// What was being parsed ("sequence number", "checkpoint", ...).
    pub what: &'static str,
    /// The text that failed to parse (truncated to 64 characters).
    pub text: String,
    /// The rule it broke.
    pub rule: &'static str,
}

impl ParsePositionError {
    fn new(what: &'static str, text: &str, rule: &'static str) -> Self {
        let text = text.chars().take(64).collect();
        Self { what, text, rule }
    }
}

/// A shard's sequence number: a non-empty string of ASCII digits, compared as an integer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// Builds a sequence number from an integer (handy for in-memory streams and tests).
    pub fn from_u128(n: u128) -> Self {
        Self(n.to_string().into())
    }

    /// The canonical decimal text (no leading zeros).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SequenceNumber {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParsePositionError::new(
                "sequence number",
                s,
                "must be a non-empty string of decimal digits",
            ));
        }
        if s.len() > 64 {
            return Err(ParsePositionError::new(
                "sequence number",
                s,
                "must have at most 64 digits",
            ));
        }
        // Canonical form: strip leading zeros so that numeric order is (length, text) order.
        let trimmed = s.trim_start_matches('0');
        let canonical = if trimmed.is_empty() { "0" } else { trimmed };
        Ok(Self(canonical.into()))
    }
}

/// A `u64` written as decimal digits only — no sign, no space, no fraction (Rust's own parser
/// takes a leading `+`, which no server-side check of ours does).
pub(crate) fn digits_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        // Both are canonical, so a longer string is a larger number.
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

/// The position of one user record: its sequence number and, for records split out of a KPL
/// aggregate, its sub-sequence number (0 for plain records).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The Kinesis sequence number of the (possibly aggregated) stream record.
    pub sequence: SequenceNumber,
    /// The index of the user record inside an aggregate; 0 for plain records.
    pub sub_sequence: u64,
}

impl Position {
    /// A position from its parts.
    pub fn new(sequence: SequenceNumber, sub_sequence: u64) -> Self {
        Self {
            sequence,
            sub_sequence,
        }
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sequence, self.sub_sequence)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sequence, self.sub_sequence)
    }
}

/// Where a consumer starts a shard that has no checkpoint yet (root shards only: a child shard
/// always starts at its horizon so nothing between its parents' end and its start is skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Only records written after the reader opens.
    Latest,
    /// The first record that arrived at or after this time (milliseconds since the Unix epoch).
    AtTimestamp(u64),
}

/// The progress stored in a lease: where the next reader of the shard starts.
///
/// Text form (as stored by every lease store): `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP:<ms>`,
/// `AFTER:<sequence>/<sub-sequence>`, `SHARD_END`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Start at the oldest retained record.
    TrimHorizon,
    /// Start at the tip (set by an operator's reset).
    Latest,
    /// Start at the first record that arrived at or after this time (ms since the epoch).
    AtTimestamp(u64),
    /// Start right after this record (every record up to and including it is processed).
    After(Position),
    /// The shard was read to its end and every record was processed.
    ShardEnd,
}

impl Checkpoint {
    /// Whether `self` lies at or after `earlier` in the same shard. Sentinels that have no
    /// order against a position (`Latest`, `AtTimestamp`) compare as "not before" anything, so
    /// this only rejects moves that are certainly backwards.
    pub fn is_not_before(&self, earlier: &Checkpoint) -> bool {
        match (self, earlier) {
            (Checkpoint::ShardEnd, _) => true,
            (_, Checkpoint::ShardEnd) => false,
            (Checkpoint::After(a), Checkpoint::After(b)) => a >= b,
            (Checkpoint::TrimHorizon, Checkpoint::After(_)) => false,
            _ => true,
        }
    }
}

impl From<InitialPosition> for Checkpoint {
    fn from(p: InitialPosition) -> Self {
        match p {
            InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
            InitialPosition::Latest => Checkpoint::Latest,
            InitialPosition::AtTimestamp(t) => Checkpoint::AtTimestamp(t),
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::TrimHorizon => f.write_str("TRIM_HORIZON"),
            Checkpoint::Latest => f.write_str("LATEST"),
            Checkpoint::AtTimestamp(t) => write!(f, "AT_TIMESTAMP:{t}"),
            Checkpoint::After(p) => write!(f, "AFTER:{}/{}", p.sequence, p.sub_sequence),
            Checkpoint::ShardEnd => f.write_str("SHARD_END"),
        }
    }
}

impl FromStr for Checkpoint {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |rule| ParsePositionError::new("checkpoint", s, rule);
        match s {
            "TRIM_HORIZON" => return Ok(Checkpoint::TrimHorizon),
            "LATEST" => return Ok(Checkpoint::Latest),
            "SHARD_END" => return Ok(Checkpoint::ShardEnd),
            _ => {}
        }
        if let Some(ms) = s.strip_prefix("AT_TIMESTAMP:") {
            let t = digits_u64(ms)
                .ok_or_else(|| bad("AT_TIMESTAMP takes milliseconds since the epoch"))?;
            return Ok(Checkpoint::AtTimestamp(t));
        }
        if let Some(rest) = s.strip_prefix("AFTER:") {
            let (seq, sub) = rest
                .split_once('/')
                .ok_or_else(|| bad("AFTER takes <sequence>/<sub-sequence>"))?;
            let sequence = seq.parse::<SequenceNumber>()?;
            let sub_sequence = digits_u64(sub)
                .ok_or_else(|| bad("the sub-sequence must be an unsigned 64-bit integer"))?;
            return Ok(Checkpoint::After(Position::new(sequence, sub_sequence)));
        }
        Err(bad(
            "expected TRIM_HORIZON, LATEST, SHARD_END, AT_TIMESTAMP:<ms> or AFTER:<seq>/<sub>",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        s.parse().expect("valid")
    }

    #[test]
    fn sequence_numbers_compare_numerically_not_as_text() {
        assert!(seq("9") < seq("10"));
        assert!(seq("0009") < seq("10"));
        assert_eq!(seq("007"), seq("7"));
        let big = "49590338271490256608559692538361571095921575989136588898";
        assert!(seq(big) > seq("49590338271490256608559692538361571095921575989136588897"));
        assert!(seq(big) > seq("9"));
    }

    #[test]
    fn bad_sequence_numbers_are_typed_errors() {
        for bad in ["", "12a", "-1", " 1", &"1".repeat(65)] {
            let err = bad.parse::<SequenceNumber>().expect_err(bad);
            assert_eq!(err.what, "sequence number");
        }
    }

    #[test]
    fn checkpoints_round_trip_through_text() {
        let cps = [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp(1_700_000_000_000),
            Checkpoint::After(Position::new(seq("123456789012345678901234567890"), 7)),
            Checkpoint::ShardEnd,
        ];
        for cp in cps {
            assert_eq!(cp.to_string().parse::<Checkpoint>(), Ok(cp.clone()));
        }
        for bad in [
            "",
            "AFTER:1",
            "AFTER:x/1",
            "AFTER:1/-1",
            "AT_TIMESTAMP:",
            "later",
        ] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn positions_order_by_sequence_then_sub_sequence() {
        let a = Position::new(seq("5"), 2);
        let b = Position::new(seq("5"), 3);
        let c = Position::new(seq("40"), 0);
        assert!(a < b && b < c);
        assert!(Checkpoint::After(c.clone()).is_not_before(&Checkpoint::After(a.clone())));
        assert!(!Checkpoint::After(a).is_not_before(&Checkpoint::After(c)));
        assert!(!Checkpoint::TrimHorizon.is_not_before(&Checkpoint::ShardEnd));
    }
}
