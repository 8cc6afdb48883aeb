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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::{Position, SequenceNumber};
    use crate::store::TOKEN_LIMIT;

    fn after(n: u128) -> Checkpoint {
        Checkpoint::After(Position::new(SequenceNumber::from_u128(n), 0))
    }

    fn shard() -> ShardId {
        ShardId::from("shard-1")
    }

    fn me() -> ClientId {
        ClientId::from("me")
    }

    fn other() -> ClientId {
        ClientId::from("other")
    }

    /// A row of `shard-1`: owner, token, checkpoint, finished.
    fn row(
        owner: Option<ClientId>,
        token: u64,
        checkpoint: Option<Checkpoint>,
        finished: bool,
    ) -> Lease {
        Lease {
            owner,
            token,
            checkpoint,
            finished,
            ..Lease::new(shard(), vec![])
        }
    }

    fn corrupt() -> StoreError {
        StoreError::Corrupt {
            key: "leases/shard-1".to_owned(),
            reason: "token: not a number".to_owned(),
        }
    }

    fn lost() -> Verdict {
        Verdict::Refused(StoreError::LeaseLost { shard: shard() })
    }

    fn not_found() -> Verdict {
        Verdict::Refused(StoreError::NotFound { shard: shard() })
    }

    /// What each row means for one write: (case, row now — `None` missing, `Some(Err)`
    /// undecodable — and the verdict).
    type Cases = Vec<(&'static str, Option<Result<Lease, StoreError>>, Verdict)>;

    fn check(write: LeaseWrite<'_>, cases: Cases) {
        // Every write is judged on each kind of row: landed, not landed, changed by someone
        // else, gone, finished, undecodable.
        let kinds = [
            "landed",
            "not landed",
            "changed",
            "gone",
            "finished",
            "undecodable",
        ];
        for kind in kinds {
            assert!(
                cases.iter().any(|(case, ..)| case.starts_with(kind)),
                "{write}: no case for {kind:?}"
            );
        }
        for (case, now, expected) in cases {
            let now_row = match &now {
                None => RowNow::Missing,
                Some(Ok(lease)) => RowNow::Found(lease),
                Some(Err(e)) => RowNow::Undecodable(e),
            };
            assert_eq!(
                judge(&shard(), &write, now_row),
                expected,
                "{write}: {case}"
            );
        }
    }

    #[test]
    fn create_if_absent_landed_whenever_a_row_is_there() {
        check(
            LeaseWrite::CreateIfAbsent,
            vec![
                (
                    "landed: the new row",
                    Some(Ok(row(None, 0, None, false))),
                    Verdict::Landed,
                ),
                ("not landed: no row", None, Verdict::NotLanded),
                (
                    "changed: another creator's row, taken since",
                    Some(Ok(row(Some(other()), 4, Some(after(9)), false))),
                    Verdict::Landed,
                ),
                (
                    "gone: no row (the same as not landed)",
                    None,
                    Verdict::NotLanded,
                ),
                (
                    "finished: the row now stored",
                    Some(Ok(row(Some(other()), 2, Some(Checkpoint::ShardEnd), true))),
                    Verdict::Landed,
                ),
                (
                    "undecodable",
                    Some(Err(corrupt())),
                    Verdict::Refused(corrupt()),
                ),
            ],
        );
    }

    #[test]
    fn take_landed_only_as_our_owner_at_the_next_token_unfinished() {
        let me = me();
        check(
            LeaseWrite::Take {
                owner: &me,
                expected_token: 3,
            },
            vec![
                (
                    "landed",
                    Some(Ok(row(Some(me.clone()), 4, Some(after(1)), false))),
                    Verdict::Landed,
                ),
                (
                    "not landed: still at the token read, dead owner",
                    Some(Ok(row(Some(other()), 3, None, false))),
                    Verdict::NotLanded,
                ),
                (
                    "not landed: still at the token read, unowned",
                    Some(Ok(row(None, 3, None, false))),
                    Verdict::NotLanded,
                ),
                (
                    "changed: someone else took it",
                    Some(Ok(row(Some(other()), 4, None, false))),
                    lost(),
                ),
                (
                    "changed: taken by us and then by someone else",
                    Some(Ok(row(Some(other()), 5, None, false))),
                    lost(),
                ),
                (
                    "changed: ours, but at a later token (not this take)",
                    Some(Ok(row(Some(me.clone()), 5, None, false))),
                    lost(),
                ),
                (
                    "changed: released since, at the next token",
                    Some(Ok(row(None, 4, None, false))),
                    lost(),
                ),
                ("gone", None, not_found()),
                (
                    "finished: ours at the next token, finished since",
                    Some(Ok(row(
                        Some(me.clone()),
                        4,
                        Some(Checkpoint::ShardEnd),
                        true,
                    ))),
                    lost(),
                ),
                (
                    "finished: at the token read",
                    Some(Ok(row(Some(other()), 3, Some(Checkpoint::ShardEnd), true))),
                    lost(),
                ),
                (
                    "undecodable",
                    Some(Err(corrupt())),
                    Verdict::Refused(corrupt()),
                ),
            ],
        );
        // A take from the largest token cannot land (there is no next token): never `Landed`.
        let top = LeaseWrite::Take {
            owner: &me,
            expected_token: u64::MAX,
        };
        let at_top = row(Some(me.clone()), u64::MAX, None, false);
        assert_eq!(
            judge(&shard(), &top, RowNow::Found(&at_top)),
            Verdict::NotLanded
        );
    }

    #[test]
    fn checkpoint_landed_when_our_tenure_holds_our_checkpoint() {
        let tenure = Tenure {
            shard: shard(),
            owner: me(),
            token: 3,
        };
        let cp = after(20);
        check(
            LeaseWrite::Checkpoint {
                tenure: &tenure,
                checkpoint: &cp,
            },
            vec![
                (
                    "landed",
                    Some(Ok(row(Some(me()), 3, Some(after(20)), false))),
                    Verdict::Landed,
                ),
                (
                    "not landed: the previous checkpoint",
                    Some(Ok(row(Some(me()), 3, Some(after(10)), false))),
                    Verdict::NotLanded,
                ),
                (
                    "not landed: no checkpoint yet",
                    Some(Ok(row(Some(me()), 3, None, false))),
                    Verdict::NotLanded,
                ),
                (
                    "changed: taken by someone else",
                    Some(Ok(row(Some(other()), 4, Some(after(20)), false))),
                    lost(),
                ),
                (
                    "changed: released (by us, meanwhile)",
                    Some(Ok(row(None, 3, Some(after(20)), false))),
                    lost(),
                ),
                ("gone", None, not_found()),
                (
                    "finished",
                    Some(Ok(row(Some(me()), 3, Some(Checkpoint::ShardEnd), true))),
                    lost(),
                ),
                (
                    "undecodable",
                    Some(Err(corrupt())),
                    Verdict::Refused(corrupt()),
                ),
            ],
        );
    }

    #[test]
    fn release_landed_when_the_row_is_unowned_at_our_token() {
        let tenure = Tenure {
            shard: shard(),
            owner: me(),
            token: 3,
        };
        check(
            LeaseWrite::Release { tenure: &tenure },
            vec![
                (
                    "landed",
                    Some(Ok(row(None, 3, Some(after(20)), false))),
                    Verdict::Landed,
                ),
                (
                    "landed: and an operator reset the checkpoint since",
                    Some(Ok(row(None, 3, Some(after(5)), false))),
                    Verdict::Landed,
                ),
                (
                    "not landed: still ours",
                    Some(Ok(row(Some(me()), 3, Some(after(10)), false))),
                    Verdict::NotLanded,
                ),
                (
                    "changed: taken by someone else",
                    Some(Ok(row(Some(other()), 4, None, false))),
                    lost(),
                ),
                (
                    "changed: released and taken by nobody yet at another token",
                    Some(Ok(row(None, 4, None, false))),
                    lost(),
                ),
                (
                    "changed: another owner at our token (a repair)",
                    Some(Ok(row(Some(other()), 3, None, false))),
                    lost(),
                ),
                ("gone", None, not_found()),
                (
                    "finished",
                    Some(Ok(row(Some(me()), 3, Some(Checkpoint::ShardEnd), true))),
                    lost(),
                ),
                (
                    "undecodable",
                    Some(Err(corrupt())),
                    Verdict::Refused(corrupt()),
                ),
            ],
        );
    }

    #[test]
    fn finish_landed_when_our_tenure_holds_a_finished_row() {
        let tenure = Tenure {
            shard: shard(),
            owner: me(),
            token: 3,
        };
        check(
            LeaseWrite::Finish { tenure: &tenure },
            vec![
                (
                    "landed",
                    Some(Ok(row(Some(me()), 3, Some(Checkpoint::ShardEnd), true))),
                    Verdict::Landed,
                ),
                (
                    "not landed",
                    Some(Ok(row(Some(me()), 3, Some(after(10)), false))),
                    Verdict::NotLanded,
                ),
                (
                    "changed: taken by someone else",
                    Some(Ok(row(Some(other()), 4, None, false))),
                    lost(),
                ),
                (
                    "changed: released",
                    Some(Ok(row(None, 3, None, false))),
                    lost(),
                ),
                ("gone", None, not_found()),
                (
                    "finished by someone else",
                    Some(Ok(row(Some(other()), 4, Some(Checkpoint::ShardEnd), true))),
                    lost(),
                ),
                (
                    "undecodable",
                    Some(Err(corrupt())),
                    Verdict::Refused(corrupt()),
                ),
            ],
        );
    }

    #[test]
    fn delete_finished_landed_when_the_row_is_gone() {
        check(
            LeaseWrite::DeleteFinished,
            vec![
                ("landed: no row", None, Verdict::Landed),
                (
                    "not landed: still there, finished",
                    Some(Ok(row(Some(me()), 3, Some(Checkpoint::ShardEnd), true))),
                    Verdict::NotLanded,
                ),
                (
                    "changed: created again, unfinished",
                    Some(Ok(row(None, 0, None, false))),
                    lost(),
                ),
                ("gone (the same as landed)", None, Verdict::Landed),
                (
                    "finished (the same as not landed)",
                    Some(Ok(row(None, 7, Some(Checkpoint::ShardEnd), true))),
                    Verdict::NotLanded,
                ),
                (
                    "undecodable",
                    Some(Err(corrupt())),
                    Verdict::Refused(corrupt()),
                ),
            ],
        );
    }

    #[test]
    fn reset_checkpoint_landed_when_the_unowned_row_holds_our_checkpoint() {
        let cp = Checkpoint::TrimHorizon;
        check(
            LeaseWrite::ResetCheckpoint {
                expected_token: 3,
                checkpoint: &cp,
            },
            vec![
                (
                    "landed",
                    Some(Ok(row(None, 3, Some(Checkpoint::TrimHorizon), false))),
                    Verdict::Landed,
                ),
                (
                    "not landed",
                    Some(Ok(row(None, 3, Some(after(10)), false))),
                    Verdict::NotLanded,
                ),
                (
                    "changed: taken since",
                    Some(Ok(row(
                        Some(other()),
                        4,
                        Some(Checkpoint::TrimHorizon),
                        false,
                    ))),
                    lost(),
                ),
                (
                    "changed: owned at the token read",
                    Some(Ok(row(Some(other()), 3, None, false))),
                    lost(),
                ),
                (
                    "changed: released at another token",
                    Some(Ok(row(None, 5, Some(Checkpoint::TrimHorizon), false))),
                    lost(),
                ),
                ("gone", None, not_found()),
                (
                    "finished",
                    Some(Ok(row(Some(me()), 3, Some(Checkpoint::ShardEnd), true))),
                    lost(),
                ),
                (
                    "undecodable",
                    Some(Err(corrupt())),
                    Verdict::Refused(corrupt()),
                ),
            ],
        );
    }

    #[test]
    fn replace_corrupt_landed_when_the_row_is_ours_and_not_while_it_stays_unusable() {
        let repair = Lease {
            parents: vec![ShardId::from("parent")],
            ..row(None, 9, Some(after(3)), false)
        };
        check(
            LeaseWrite::ReplaceCorrupt { lease: &repair },
            vec![
                ("landed", Some(Ok(repair.clone())), Verdict::Landed),
                (
                    "not landed: still undecodable",
                    Some(Err(corrupt())),
                    Verdict::NotLanded,
                ),
                (
                    "not landed: still at an exhausted token",
                    Some(Ok(row(Some(other()), TOKEN_LIMIT, None, false))),
                    Verdict::NotLanded,
                ),
                (
                    "changed: repaired by someone else",
                    Some(Ok(row(None, 1, None, false))),
                    lost(),
                ),
                (
                    "changed: our row, but taken since",
                    Some(Ok(Lease {
                        owner: Some(other()),
                        token: 10,
                        ..repair.clone()
                    })),
                    lost(),
                ),
                ("gone", None, not_found()),
                (
                    "finished: a usable finished row",
                    Some(Ok(row(Some(other()), 2, Some(Checkpoint::ShardEnd), true))),
                    lost(),
                ),
                (
                    "undecodable (the same as not landed)",
                    Some(Err(corrupt())),
                    Verdict::NotLanded,
                ),
            ],
        );
    }

    #[test]
    fn every_write_has_its_name() {
        let (me, cp) = (me(), Checkpoint::Latest);
        let tenure = Tenure {
            shard: shard(),
            owner: me.clone(),
            token: 1,
        };
        let lease = row(None, 0, None, false);
        let names: Vec<String> = [
            LeaseWrite::CreateIfAbsent,
            LeaseWrite::Take {
                owner: &me,
                expected_token: 0,
            },
            LeaseWrite::Checkpoint {
                tenure: &tenure,
                checkpoint: &cp,
            },
            LeaseWrite::Release { tenure: &tenure },
            LeaseWrite::Finish { tenure: &tenure },
            LeaseWrite::DeleteFinished,
            LeaseWrite::ResetCheckpoint {
                expected_token: 0,
                checkpoint: &cp,
            },
            LeaseWrite::ReplaceCorrupt { lease: &lease },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "create_if_absent",
                "take",
                "checkpoint",
                "release",
                "finish",
                "delete_finished",
                "reset_checkpoint",
                "replace_corrupt"
            ]
        );
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn settle_answers_as_the_contract_wants() {
        let me = me();
        let take = LeaseWrite::Take {
            owner: &me,
            expected_token: 0,
        };
        let ours = row(Some(me.clone()), 1, None, false);
        let landed = block_on(settle(
            &shard(),
            take,
            "take on k",
            "reply lost",
            || async { Ok(Some(ours.clone())) },
        ));
        assert_eq!(landed, Ok(Some(ours.clone())));

        let not_landed = block_on(settle(
            &shard(),
            take,
            "take on k",
            "reply lost",
            || async { Ok(Some(row(None, 0, None, false))) },
        ));
        assert!(
            matches!(&not_landed, Err(StoreError::Transient(m)) if m.contains("take on k") && m.contains("reply lost") && m.contains("did not land")),
            "{not_landed:?}"
        );

        let refused = block_on(settle(
            &shard(),
            take,
            "take on k",
            "reply lost",
            || async { Ok(Some(row(Some(other()), 1, None, false))) },
        ));
        assert_eq!(refused, Err(StoreError::LeaseLost { shard: shard() }));

        let undecodable = block_on(settle(
            &shard(),
            take,
            "take on k",
            "reply lost",
            || async { Err(corrupt()) },
        ));
        assert_eq!(undecodable, Err(corrupt()));

        let reread_failed = block_on(settle(
            &shard(),
            take,
            "take on k",
            "reply lost",
            || async { Err(StoreError::Transient("connection refused".to_owned())) },
        ));
        assert!(
            matches!(&reread_failed, Err(StoreError::Transient(m)) if m.contains("re-reading") && m.contains("connection refused")),
            "{reread_failed:?}"
        );
    }

    #[test]
    fn reread_and_judge_returns_the_row_and_fails_only_when_the_read_does() {
        let resolution = block_on(reread_and_judge(
            &shard(),
            &LeaseWrite::CreateIfAbsent,
            || async { Ok(Some(row(None, 0, None, false))) },
        ));
        assert_eq!(
            resolution,
            Ok(Resolution {
                verdict: Verdict::Landed,
                row: Some(row(None, 0, None, false))
            })
        );
        let fatal = StoreError::Fatal("access denied".to_owned());
        let failed = block_on(reread_and_judge(
            &shard(),
            &LeaseWrite::CreateIfAbsent,
            || async { Err(fatal.clone()) },
        ));
        assert_eq!(failed, Err(fatal));
    }
}
