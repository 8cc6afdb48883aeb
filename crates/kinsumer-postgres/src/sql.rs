//! Every statement the store runs, built once per store from the validated, quoted schema name.
//! Everything else (application, stream, shard, owner, token, checkpoint) is a bind parameter.
//!
//! Each contract operation is **one** statement. The fenced writes pair the conditional
//! `UPDATE` with a snapshot read of the same key in a CTE, so a refused write tells
//! "the row is missing" (`NotFound`) from "the row is someone else's" (`LeaseLost`) without a
//! second round trip. The `UPDATE`'s own conditions are re-checked by PostgreSQL against the
//! newest row version, so a concurrent `take` can never be overwritten.

use std::sync::Arc;

/// The columns a `ClientRow` is read from.
const CLIENT: &str = "client_id, counter, judged_dead";

/// The columns a `Lease` is read from, in order.
const LEASE: &str = "shard, parents, owner, token, checkpoint, finished, successor";

const KEY: &str = "application = $1 AND stream = $2 AND shard = $3";
const L_KEY: &str = "l.application = $1 AND l.stream = $2 AND l.shard = $3";

/// Whether the checkpoint bound at `$kind/$seq/$sub` would move a monotonic lease `l`
/// certainly backwards (the rule of `Checkpoint::is_not_before`): never `NULL`.
fn backwards(kind: &str, seq: &str, sub: &str) -> String {
    format!(
        "COALESCE(l.monotonic AND ( \
            (l.cp_kind = 4 AND {kind}::smallint <> 4) \
            OR (l.cp_kind = 3 AND {kind}::smallint = 0) \
            OR (l.cp_kind = 3 AND {kind}::smallint = 3 \
                AND ({seq}::numeric, {sub}::numeric) < (l.cp_seq, l.cp_sub))), false)"
    )
}

/// `SET` assignments of the four checkpoint columns from `$text..$sub`, unless `keep` holds.
fn set_checkpoint(keep: &str, text: &str, kind: &str, seq: &str, sub: &str) -> String {
    format!(
        "checkpoint = CASE WHEN {keep} THEN l.checkpoint ELSE {text}::text END, \
         cp_kind = CASE WHEN {keep} THEN l.cp_kind ELSE {kind}::smallint END, \
         cp_seq = CASE WHEN {keep} THEN l.cp_seq ELSE {seq}::numeric END, \
         cp_sub = CASE WHEN {keep} THEN l.cp_sub ELSE {sub}::numeric END"
    )
}

/// The statements of one store (one schema).
#[derive(Debug)]
pub(crate) struct Statements {
    pub heartbeat: Arc<str>,
    pub clients: Arc<str>,
    pub client: Arc<str>,
    pub deregister: Arc<str>,
    pub mark_dead: Arc<str>,
    pub changes: Arc<str>,
    pub announce: Arc<str>,
    pub leases: Arc<str>,
    pub lease: Arc<str>,
    pub create_if_absent: Arc<str>,
    pub take: Arc<str>,
    pub checkpoint: Arc<str>,
    pub release: Arc<str>,
    pub finish: Arc<str>,
    pub delete_finished: Arc<str>,
    pub reset_checkpoint: Arc<str>,
    pub checkpoint_in: Arc<str>,
    /// `replace_corrupt`, in one transaction: lock and read the row ...
    pub lease_for_update: Arc<str>,
    /// ... and, if it does not decode, overwrite every column.
    pub replace_row: Arc<str>,
}

impl Statements {
    /// The statements for the quoted schema `s` (validated by the caller).
    pub(crate) fn new(s: &str) -> Self {
        let fenced = |set: &str, extra: &str| -> Arc<str> {
            format!(
                "WITH target AS (SELECT 1 FROM {s}.leases WHERE {KEY}), \
                 upd AS (UPDATE {s}.leases AS l SET {set}, updated_at = now() \
                         WHERE {L_KEY} {extra} RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM upd) AS updated, \
                        EXISTS (SELECT 1 FROM target) AS found"
            )
            .into()
        };
        let held = "AND l.owner = $4 AND l.token = $5";
        // checkpoint / release bind the checkpoint at $6 text, $7 kind, $8 seq, $9 sub;
        // release binds the successor at $10.
        let back = backwards("$7", "$8", "$9");
        let checkpoint = fenced(
            &set_checkpoint(&back, "$6", "$7", "$8", "$9"),
            &format!("{held} AND NOT l.finished"),
        );
        let release = fenced(
            &format!(
                "owner = NULL, successor = $10::text, {}",
                set_checkpoint(
                    &format!("($7::smallint IS NULL OR {back})"),
                    "$6",
                    "$7",
                    "$8",
                    "$9"
                )
            ),
            &format!("{held} AND NOT l.finished"),
        );
        let finish = fenced(
            "finished = true, checkpoint = 'SHARD_END', cp_kind = 4, cp_seq = NULL, cp_sub = NULL",
            held,
        );
        // reset binds $4 expected token, $5 text, $6 kind, $7 seq, $8 sub.
        let reset_checkpoint = fenced(
            &format!(
                "{}, monotonic = false",
                set_checkpoint("false", "$5", "$6", "$7", "$8")
            ),
            "AND l.owner IS NULL AND l.token = $4",
        );
        Self {
            heartbeat: format!(
                "INSERT INTO {s}.clients (application, client_id, counter) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (application, client_id) \
                 DO UPDATE SET counter = EXCLUDED.counter, updated_at = now()"
            )
            .into(),
            clients: format!(
                "SELECT {CLIENT} FROM {s}.clients WHERE application = $1 ORDER BY client_id"
            )
            .into(),
            client: format!(
                "SELECT {CLIENT} FROM {s}.clients WHERE application = $1 AND client_id = $2"
            )
            .into(),
            mark_dead: format!(
                "UPDATE {s}.clients SET judged_dead = $3 \
                 WHERE application = $1 AND client_id = $2 AND counter = $3"
            )
            .into(),
            changes: format!("SELECT counter FROM {s}.changes WHERE application = $1").into(),
            // A counter that cannot grow (negative, or at the end of bigint) starts afresh.
            announce: format!(
                "INSERT INTO {s}.changes AS c (application, counter) VALUES ($1, 1) \
                 ON CONFLICT (application) DO UPDATE SET counter = \
                 CASE WHEN c.counter >= 0 AND c.counter < 9223372036854775807 \
                 THEN c.counter + 1 ELSE 1 END \
                 RETURNING counter"
            )
            .into(),
            deregister: format!(
                "DELETE FROM {s}.clients WHERE application = $1 AND client_id = $2"
            )
            .into(),
            leases: format!(
                "SELECT {LEASE} FROM {s}.leases WHERE application = $1 AND stream = $2 \
                 ORDER BY shard"
            )
            .into(),
            lease: format!("SELECT {LEASE} FROM {s}.leases WHERE {KEY}").into(),
            create_if_absent: format!(
                "WITH ins AS (INSERT INTO {s}.leases (application, stream, shard, parents) \
                              VALUES ($1, $2, $3, $4) \
                              ON CONFLICT (application, stream, shard) DO NOTHING \
                              RETURNING {LEASE}) \
                 SELECT {LEASE} FROM ins \
                 UNION ALL \
                 SELECT {LEASE} FROM {s}.leases \
                 WHERE {KEY} AND NOT EXISTS (SELECT 1 FROM ins)"
            )
            .into(),
            take: format!(
                "WITH target AS (SELECT 1 FROM {s}.leases WHERE {KEY}), \
                 upd AS (UPDATE {s}.leases AS l \
                         SET owner = $4, token = l.token + 1, successor = NULL, \
                             updated_at = now() \
                         WHERE {L_KEY} AND l.token = $5 AND NOT l.finished \
                         RETURNING l.shard, l.parents, l.owner, l.token, l.checkpoint, \
                                   l.finished, l.successor) \
                 SELECT EXISTS (SELECT 1 FROM target) AS found, \
                        u.shard, u.parents, u.owner, u.token, u.checkpoint, u.finished, \
                        u.successor \
                 FROM (VALUES (1)) AS one (x) LEFT JOIN upd AS u ON true"
            )
            .into(),
            checkpoint,
            release,
            finish,
            delete_finished: format!(
                "WITH target AS (SELECT finished FROM {s}.leases WHERE {KEY}), \
                 del AS (DELETE FROM {s}.leases WHERE {KEY} AND finished RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM del) AS deleted, \
                        COALESCE((SELECT finished FROM target), true) AS finished_or_missing"
            )
            .into(),
            reset_checkpoint,
            // checkpoint_in binds $4 owner, $5 token, $6 text, $7 seq, $8 sub: it only moves
            // strictly forward, and marks the lease monotonic.
            checkpoint_in: format!(
                "WITH target AS (SELECT owner, token, finished FROM {s}.leases WHERE {KEY}), \
                 upd AS (UPDATE {s}.leases AS l \
                         SET checkpoint = $6::text, cp_kind = 3, cp_seq = $7::numeric, \
                             cp_sub = $8::numeric, monotonic = true, updated_at = now() \
                         WHERE {L_KEY} {held} AND NOT l.finished \
                           AND NOT COALESCE(l.cp_kind = 3 AND \
                               (l.cp_seq, l.cp_sub) >= ($7::numeric, $8::numeric), false) \
                         RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM upd) AS updated, \
                        EXISTS (SELECT 1 FROM target) AS found, \
                        COALESCE((SELECT t.owner = $4 AND t.token = $5 AND NOT t.finished \
                                  FROM target AS t), false) AS held"
            )
            .into(),
            lease_for_update: format!("SELECT {LEASE} FROM {s}.leases WHERE {KEY} FOR UPDATE")
                .into(),
            // Binds $4 parents, $5 owner, $6 token, $7 text, $8 kind, $9 seq, $10 sub,
            // $11 finished, $12 successor. Like a reset, it clears `monotonic`.
            replace_row: format!(
                "UPDATE {s}.leases SET parents = $4, owner = $5, token = $6, \
                 checkpoint = $7::text, cp_kind = $8::smallint, cp_seq = $9::numeric, \
                 cp_sub = $10::numeric, finished = $11, successor = $12, monotonic = false, \
                 updated_at = now() \
                 WHERE {KEY}"
            )
            .into(),
        }
    }
}
