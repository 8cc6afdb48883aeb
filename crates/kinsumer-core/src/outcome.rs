//! Unknown outcomes: "did my write land?" — decided once, here, for every store.
//!
//! A conditional write to a lease row can fail *after* it was sent: the reply is lost, the
//! connection drops, the client times out, the server answers 5xx. The server may or may not
//! have applied it. Answering `Transient` would be safe but slow (the engine retries a take
//! that in fact succeeded, finds the token moved, and gives the lease up); answering `Ok` would
//! be wrong when it did not land. So a store re-reads the row and asks [`judge`] what the row
//! now proves:
//!
//! - [`Verdict::Landed`] — the row is as only this write leaves it: report success (a take
//!   returns the row read);
//! - [`Verdict::NotLanded`] — the row still is as the write expected it: it did not land, and
//!   may be sent again;
//! - [`Verdict::Refused`] — the row is now something this write is refused on (another owner
//!   or token, finished, gone, undecodable): report that error, as a fresh attempt would.
//!
//! A store keeps only the translation: it classifies its client's errors into "maybe applied"
//! or not, and supplies the re-read; [`settle`] does the rest. That is why the stores cannot
//! drift apart: DynamoDB, Redis and PostgreSQL used to write this decision three times, and
//! one of them checked `finished` on a take where another did not.
//!
//! How a write is recognised in the row it leaves (why each rule holds):
//!
//! | write | landed when the row… | not landed when the row… |
//! |---|---|---|
//! | `create_if_absent` | exists (whatever it holds: the row now stored is the answer) | is missing |
//! | `take` | has our owner, token `expected + 1`, not finished | has token `expected`, not finished |
//! | `checkpoint` | has our owner and token, not finished, our checkpoint | has our owner and token, not finished, another checkpoint |
//! | `release` | is unowned at our token, not finished | has our owner and token, not finished |
//! | `finish` | has our owner and token, finished | has our owner and token, not finished |
//! | `delete_finished` | is missing | is finished |
//! | `reset_checkpoint` | is unowned at the expected token, with our checkpoint | is unowned at the expected token, with another checkpoint |
//! | `replace_corrupt` | equals the row we wrote | still does not decode, or its token is exhausted |
//!
//! Tokens make these exact: only a `take` changes the owner to someone, and it always moves the
//! token, so "our owner at `expected + 1`" can only be our take, and "unowned at our token"
//! only our release (no other write clears an owner without a take in between). Everything
//! else is `LeaseLost` (a row that moved on), `NotFound` (no row where one must be) or
//! `Corrupt` (a row that no longer decodes) — the errors the contract gives a fresh attempt.
//!
//! ```
//! use kinsumer_core::outcome::{LeaseWrite, RowNow, Verdict, judge};
//! use kinsumer_core::source::ShardId;
//! use kinsumer_core::store::{ClientId, Lease, StoreError};
//!
//! let shard = ShardId::from("shard-1");
//! let me = ClientId::from("me");
//! let take = LeaseWrite::Take { owner: &me, expected_token: 4 };
//!
//! // The reply of our take was lost; the re-read shows us at token 5: it landed.
//! let mut row = Lease::new(shard.clone(), vec![]);
//! row.owner = Some(me.clone());
//! row.token = 5;
//! assert_eq!(judge(&shard, &take, RowNow::Found(&row)), Verdict::Landed);
//!
//! // Someone else took it meanwhile: a conflict, exactly as a fresh take would answer.
//! row.owner = Some(ClientId::from("other"));
//! assert_eq!(
//!     judge(&shard, &take, RowNow::Found(&row)),
//!     Verdict::Refused(StoreError::LeaseLost { shard: shard.clone() })
//! );
//!
//! // Still at token 4: our take never reached the server; it may be sent again.
//! row.owner = None;
//! row.token = 4;
//! assert_eq!(judge(&shard, &take, RowNow::Found(&row)), Verdict::NotLanded);
//! ```

use std::fmt;
use std::future::Future;

use crate::position::Checkpoint;
use crate::source::ShardId;
use crate::store::{ClientId, Lease, StoreError, Tenure};

/// A write to one lease row, described by what it expected and what it writes: enough to
/// recognise it in the row it leaves. One variant per conditional write of
/// [`LeaseStore`](crate::store::LeaseStore); `heartbeat` and `deregister` are unconditional
/// and idempotent, so a store sends them again instead of settling them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseWrite<'a> {
    /// `create_if_absent`: whatever row is stored afterwards is the answer.
    CreateIfAbsent,
    /// `take(owner, expected_token)`.
    Take {
        /// Who takes.
        owner: &'a ClientId,
        /// The token the taker read.
        expected_token: u64,
    },
    /// `checkpoint(tenure, checkpoint)`.
    Checkpoint {
        /// The tenure writing.
        tenure: &'a Tenure,
        /// What it writes.
        checkpoint: &'a Checkpoint,
    },
    /// `release(tenure, ..)`. The checkpoint and successor it writes are not needed to
    /// recognise it: an unowned row at the tenure's token can only be this release.
    Release {
        /// The tenure releasing.
        tenure: &'a Tenure,
    },
    /// `finish(tenure)`.
    Finish {
        /// The tenure finishing.
        tenure: &'a Tenure,
    },
    /// `delete_finished`.
    DeleteFinished,
    /// `reset_checkpoint(expected_token, checkpoint)`, an operator's reset of an unowned lease.
    ResetCheckpoint {
        /// The token the operator read.
        expected_token: u64,
        /// What it writes.
        checkpoint: &'a Checkpoint,
    },
    /// `replace_corrupt(lease)`, an operator's repair of an unusable row.
    ReplaceCorrupt {
        /// The row written.
        lease: &'a Lease,
    },
}

impl LeaseWrite<'_> {
    /// The operation's name, as the `LeaseStore` method is called.
    pub fn name(&self) -> &'static str {
        match self {
            LeaseWrite::CreateIfAbsent => "create_if_absent",
            LeaseWrite::Take { .. } => "take",
            LeaseWrite::Checkpoint { .. } => "checkpoint",
            LeaseWrite::Release { .. } => "release",
            LeaseWrite::Finish { .. } => "finish",
            LeaseWrite::DeleteFinished => "delete_finished",
            LeaseWrite::ResetCheckpoint { .. } => "reset_checkpoint",
            LeaseWrite::ReplaceCorrupt { .. } => "replace_corrupt",
        }
    }
}

impl fmt::Display for LeaseWrite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The row as a re-read found it.
#[derive(Clone, Copy, Debug)]
pub enum RowNow<'a> {
    /// There is no row.
    Missing,
    /// The row, decoded.
    Found(&'a Lease),
    /// The row exists but does not decode: the store's `Corrupt` error naming it.
    Undecodable(&'a StoreError),
}

impl<'a> RowNow<'a> {
    /// The row as a store's read of one lease returns it: `Ok(None)` missing, `Ok(Some)` found,
    /// `Err(Corrupt)` undecodable. Any other error is not a row (the read failed): `None`.
    pub fn from_read(read: &'a Result<Option<Lease>, StoreError>) -> Option<Self> {
        match read {
            Ok(None) => Some(RowNow::Missing),
            Ok(Some(lease)) => Some(RowNow::Found(lease)),
            Err(corrupt @ StoreError::Corrupt { .. }) => Some(RowNow::Undecodable(corrupt)),
            Err(_) => None,
        }
    }
}

/// What a re-read row proves about a write whose outcome was unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The row is as only this write leaves it: report success.
    Landed,
    /// The row is still as the write expected: it did not land; it may be sent again.
    NotLanded,
    /// The row is now something this write is refused on: report this error.
    Refused(StoreError),
}

/// Decides, from the row as it is now, whether `write` on `shard` landed. Pure: see the
/// [module docs](self) for the rules and why they hold.
pub fn judge(shard: &ShardId, write: &LeaseWrite<'_>, now: RowNow<'_>) -> Verdict {
    let lost = || {
        Verdict::Refused(StoreError::LeaseLost {
            shard: shard.clone(),
        })
    };
    let row = match now {
        RowNow::Found(row) => row,
        RowNow::Missing => {
            return match write {
                LeaseWrite::CreateIfAbsent => Verdict::NotLanded,
                LeaseWrite::DeleteFinished => Verdict::Landed,
                _ => Verdict::Refused(StoreError::NotFound {
                    shard: shard.clone(),
                }),
            };
        }
        RowNow::Undecodable(corrupt) => {
            return match write {
                // Still unusable: the repair did not land (it writes a row that decodes).
                LeaseWrite::ReplaceCorrupt { .. } => Verdict::NotLanded,
                _ => Verdict::Refused(corrupt.clone()),
            };
        }
    };
    let held_by =
        |tenure: &Tenure| row.owner.as_ref() == Some(&tenure.owner) && row.token == tenure.token;
    match *write {
        LeaseWrite::CreateIfAbsent => Verdict::Landed,
        LeaseWrite::Take {
            owner,
            expected_token,
        } => {
            let ours = expected_token
                .checked_add(1)
                .is_some_and(|next| row.owner.as_ref() == Some(owner) && row.token == next);
            if row.finished {
                // A finished lease cannot be taken, whoever holds it: a take that landed and
                // was finished since is not a lease to read from.
                lost()
            } else if ours {
                Verdict::Landed
            } else if row.token == expected_token {
                Verdict::NotLanded
            } else {
                lost()
            }
        }
        LeaseWrite::Checkpoint { tenure, checkpoint } => {
            if !held_by(tenure) || row.finished {
                lost()
            } else if row.checkpoint.as_ref() == Some(checkpoint) {
                Verdict::Landed
            } else {
                Verdict::NotLanded
            }
        }
        LeaseWrite::Release { tenure } => {
            if row.finished || row.token != tenure.token {
                lost()
            } else if row.owner.is_none() {
                Verdict::Landed
            } else if row.owner.as_ref() == Some(&tenure.owner) {
                Verdict::NotLanded
            } else {
                lost()
            }
        }
        LeaseWrite::Finish { tenure } => {
            if !held_by(tenure) {
                lost()
            } else if row.finished {
                Verdict::Landed
            } else {
                Verdict::NotLanded
            }
        }
        LeaseWrite::DeleteFinished => {
            if row.finished {
                Verdict::NotLanded
            } else {
                lost()
            }
        }
        LeaseWrite::ResetCheckpoint {
            expected_token,
            checkpoint,
        } => {
            if row.owner.is_some() || row.token != expected_token {
                lost()
            } else if row.checkpoint.as_ref() == Some(checkpoint) {
                Verdict::Landed
            } else {
                Verdict::NotLanded
            }
        }
        LeaseWrite::ReplaceCorrupt { lease } => {
            if row == lease {
                Verdict::Landed
            } else if row.token_exhausted() {
                Verdict::NotLanded
            } else {
                lost()
            }
        }
    }
}

/// A write's unknown outcome, resolved: the verdict and the row it was judged on (a landed
/// `take` or `create_if_absent` returns that row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// What the row proves.
    pub verdict: Verdict,
    /// The row as re-read (`None`: missing or undecodable).
    pub row: Option<Lease>,
}

/// Re-reads the row with `reread` and [`judge`]s it. `Err` only when the re-read itself
/// failed (not a row: a lost connection, a timeout), with the re-read's error.
///
/// `reread` is the store's read of one lease (`LeaseStore::lease`, or the same read without
/// the store's own retries): `Ok(None)` for no row, `Err(Corrupt)` for a row that does not
/// decode.
pub async fn reread_and_judge<F, Fut>(
    shard: &ShardId,
    write: &LeaseWrite<'_>,
    reread: F,
) -> Result<Resolution, StoreError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<Lease>, StoreError>>,
{
    let read = reread().await;
    let Some(now) = RowNow::from_read(&read) else {
        return Err(read.err().unwrap_or_else(|| {
            StoreError::Transient("the re-read failed without an error".to_owned())
        }));
    };
    let verdict = judge(shard, write, now);
    Ok(Resolution {
        verdict,
        row: read.ok().flatten(),
    })
}

/// The row a settled `take` or `create_if_absent` returns: a landed one always has it (it was
/// judged on it), so none is `Transient`. `key` names the row in the message.
pub fn landed_row(row: Option<Lease>, key: &str) -> Result<Lease, StoreError> {
    row.ok_or_else(|| {
        StoreError::Transient(format!(
            "{key}: the write landed but the row was not returned; retry"
        ))
    })
}

/// The whole "did my write land?" for a store that leaves retrying to the engine: re-reads,
/// judges, and answers as the contract wants. `what` names the write and its row in messages
/// (e.g. `take on <key>`), `cause` is why the outcome is unknown (the client's error).
///
/// - landed: `Ok` with the row re-read (a `take` or `create_if_absent` returns it);
/// - not landed: `Transient` (the engine retries, and the retry is safe: the row still
///   expects the write);
/// - refused: that error (`LeaseLost`, `NotFound`, `Corrupt`);
/// - the re-read failed: `Transient` saying so.
pub async fn settle<F, Fut>(
    shard: &ShardId,
    write: LeaseWrite<'_>,
    what: &str,
    cause: &str,
    reread: F,
) -> Result<Option<Lease>, StoreError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<Lease>, StoreError>>,
{
    match reread_and_judge(shard, &write, reread).await {
        Ok(Resolution {
            verdict: Verdict::Landed,
            row,
        }) => Ok(row),
        Ok(Resolution {
            verdict: Verdict::NotLanded,
            ..
        }) => Err(StoreError::Transient(format!(
            "{what}: the outcome was unknown ({cause}) and the row shows the write did not \
             land; retry"
        ))),
        Ok(Resolution {
            verdict: Verdict::Refused(refused),
            ..
        }) => Err(refused),
        Err(reread) => Err(StoreError::Transient(format!(
            "{what}: the outcome was unknown ({cause}) and re-reading the row failed ({reread})"
        ))),
    }
}
