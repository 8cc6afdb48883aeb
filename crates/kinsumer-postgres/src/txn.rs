//! Checkpoints inside the caller's own transaction: effects and progress commit together, so
//! every record's effect is committed exactly once, even across crashes and handoffs.

use kinsumer_core::position::{Checkpoint, Position};
use kinsumer_core::store::{StoreError, Tenure};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use tracing::{debug, warn};

use crate::error::{is_ambiguous, map_sqlx};
use crate::store::{CpParams, PgLeaseStore, lease_lost, token_param};

/// What a transactional checkpoint found.
#[must_use = "AlreadyCommitted means the effects are already committed: roll back, do not commit"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxCheckpoint {
    /// The checkpoint moved forward to the given position (in the caller's transaction, or —
    /// for [`PgLeaseStore::commit_with_checkpoint`] — committed with the effects).
    Advanced,
    /// The stored checkpoint is already at or past the given position: these records' effects
    /// were committed before (typically by an earlier attempt whose commit reply was lost).
    /// Nothing was written; the transaction must be (and, by `commit_with_checkpoint`, is)
    /// rolled back. Ack the records: they are done.
    AlreadyCommitted,
}

impl PgLeaseStore {
    /// Moves the checkpoint of `tenure`'s lease to *after* `last` **inside `tx`**, the caller's
    /// transaction, fenced by the tenure:
    ///
    /// - `Ok(Advanced)`: written in `tx`; the lease row stays locked by `tx` until it ends, so
    ///   no one can take the lease before `tx` commits or rolls back. Commit `tx`.
    /// - `Ok(AlreadyCommitted)`: the stored checkpoint is at or past `last` (the effects are
    ///   already committed): roll `tx` back.
    /// - `Err(LeaseLost)`: another tenure holds the lease (or it is finished): roll `tx` back;
    ///   the next owner will process these records.
    /// - `Err(NotFound)`: no such lease row; `Err(Transient)`: roll back and retry.
    ///
    /// It only moves forward (strictly), and it marks the lease *monotonic*: from then on the
    /// engine's own `checkpoint`/`release` never move it backwards (see the crate docs).
    ///
    /// Prefer [`Self::commit_with_checkpoint`], which also commits and resolves a lost commit
    /// reply. `tx` must come from a pool on the same database as the store.
    pub async fn checkpoint_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        stream: &str,
        tenure: &Tenure,
        last: &Position,
    ) -> Result<TxCheckpoint, StoreError> {
        let cp = CpParams::of(Some(&Checkpoint::After(last.clone())));
        let shard = &tenure.shard;
        self.count_write();
        let row = sqlx::query(AssertSqlSafe(self.sql().checkpoint_in.clone()))
            .bind(self.application())
            .bind(stream)
            .bind(shard.as_str())
            .bind(tenure.owner.as_str())
            .bind(token_param(tenure.token))
            .bind(&cp.text)
            .bind(&cp.seq)
            .bind(&cp.sub)
            .fetch_one(&mut **tx)
            .await
            .map_err(map_sqlx)?;
        let get = |name: &str| {
            row.try_get::<bool, _>(name)
                .map_err(|e| StoreError::Corrupt {
                    key: self.key(stream, shard),
                    reason: format!("{name}: {e}"),
                })
        };
        match (get("updated")?, get("found")?, get("held")?) {
            (true, _, _) => Ok(TxCheckpoint::Advanced),
            (false, false, _) => Err(StoreError::NotFound {
                shard: shard.clone(),
            }),
            (false, true, true) => Ok(TxCheckpoint::AlreadyCommitted),
            (false, true, false) => Err(lease_lost(shard)),
        }
    }

    /// Checkpoints after `last` in `tx` (see [`Self::checkpoint_in`]) and commits `tx` only if
    /// that succeeded — your effects and the checkpoint commit together or not at all:
    ///
    /// - `Ok(Advanced)`: committed. Ack the records.
    /// - `Ok(AlreadyCommitted)`: rolled back; an earlier attempt had committed them. Ack.
    /// - `Err(LeaseLost)`: rolled back; the lease moved, the next owner processes these
    ///   records. Ack (the engine's fenced commit of this tenure fails anyway) or drop them.
    /// - `Err(Transient)`: rolled back, or the commit's reply was lost and a re-read showed it
    ///   did not apply: retry the whole unit of work (return an error from a batch handler).
    ///
    /// A commit whose reply is lost is resolved by re-reading the lease: a stored checkpoint
    /// at or past `last` means the effects are committed (only a commit of these records can
    /// move it there), so this returns `Ok(Advanced)`.
    pub async fn commit_with_checkpoint(
        &self,
        mut tx: Transaction<'_, Postgres>,
        stream: &str,
        tenure: &Tenure,
        last: &Position,
    ) -> Result<TxCheckpoint, StoreError> {
        let outcome = match self.checkpoint_in(&mut tx, stream, tenure, last).await {
            Ok(outcome) => outcome,
            Err(err) => {
                rollback(tx).await;
                return Err(err);
            }
        };
        if outcome == TxCheckpoint::AlreadyCommitted {
            rollback(tx).await;
            return Ok(outcome);
        }
        match tx.commit().await {
            Ok(()) => Ok(TxCheckpoint::Advanced),
            Err(err) if is_ambiguous(&err) => {
                debug!(error = %err, shard = %tenure.shard, "kinsumer-postgres: commit reply lost, re-reading");
                let target = Checkpoint::After(last.clone());
                let lease = kinsumer_core::store::LeaseStore::lease(self, stream, &tenure.shard)
                    .await
                    .map_err(|e| {
                        StoreError::Transient(format!(
                            "the commit's outcome is unknown and the re-read failed: {e}"
                        ))
                    })?;
                match lease.and_then(|l| l.checkpoint) {
                    Some(stored @ (Checkpoint::After(_) | Checkpoint::ShardEnd))
                        if stored.is_not_before(&target) =>
                    {
                        Ok(TxCheckpoint::Advanced)
                    }
                    _ => Err(StoreError::Transient(format!(
                        "the commit did not apply (its reply was lost: {err}); retry"
                    ))),
                }
            }
            Err(err) => Err(map_sqlx(err)),
        }
    }
}

async fn rollback(tx: Transaction<'_, Postgres>) {
    if let Err(err) = tx.rollback().await {
        // The server rolls back by itself when the connection goes away.
        warn!(error = %err, "kinsumer-postgres: rollback failed");
    }
}
