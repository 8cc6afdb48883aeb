//! # kinsumer-postgres — the lease store in PostgreSQL, with transactional checkpoints
//!
//! [`PgLeaseStore`] implements `kinsumer_core`'s [`LeaseStore`](kinsumer_core::store::LeaseStore)
//! over [`sqlx`]: a translation of the contract to conditional SQL statements and nothing more
//! (the protocol lives in the core). Its one feature no other store has is
//! [`PgLeaseStore::commit_with_checkpoint`]: a handler writes its results **and** the
//! checkpoint in one PostgreSQL transaction, so each record's effect is committed exactly once,
//! even across crashes, handoffs and lost commit replies.
//!
//! ```no_run
//! use kinsumer_postgres::{PgLeaseStore, PgStoreConfig};
//! # async fn demo() -> Result<(), kinsumer_core::store::StoreError> {
//! let config = PgStoreConfig::new("postgres://app:secret@db:5432/app", "billing")
//!     .with_schema("kinsumer");
//! let store = PgLeaseStore::connect(config).await?; // creates/migrates the schema
//! # let _ = store; Ok(()) }
//! ```
//!
//! ## Exactly-once effects
//!
//! Write the effects of a batch and the checkpoint after its last record in **one**
//! transaction, fenced by the lease tenure that delivered the batch
//! ([`ShardBatch::tenure`](kinsumer_core::record::ShardBatch::tenure),
//! [`Record::tenure`](kinsumer_core::record::Record::tenure)):
//!
//! ```no_run
//! use kinsumer_core::record::ShardBatch;
//! use kinsumer_core::consumer::HandlerError;
//! use kinsumer_core::store::StoreError;
//! use kinsumer_postgres::{PgLeaseStore, TxCheckpoint};
//!
//! async fn handle(store: &PgLeaseStore, stream: &str, batch: ShardBatch) -> Result<(), HandlerError> {
//!     let Some(last) = batch.records.last() else { return Ok(()) };
//!     let mut tx = store.begin().await?;
//!     for record in &batch.records {
//!         sqlx::query("INSERT INTO orders (seq, body) VALUES ($1, $2)")
//!             .bind(record.position.sequence.as_str())
//!             .bind(record.data.as_ref())
//!             .execute(&mut *tx)
//!             .await?;
//!     }
//!     // Checkpoint after the last record *in the same transaction*, then commit — or roll back.
//!     match store.commit_with_checkpoint(tx, stream, &batch.tenure, &last.position).await {
//!         // Committed now, or by an earlier attempt: the batch is done; returning Ok acks it.
//!         Ok(TxCheckpoint::Advanced | TxCheckpoint::AlreadyCommitted) => Ok(()),
//!         // Rolled back: the lease moved and the next owner processes these records.
//!         Err(StoreError::LeaseLost { .. }) => Ok(()),
//!         // Rolled back (or a lost commit reply that did not apply): retry the batch.
//!         Err(e) => Err(e.into()),
//!     }
//! }
//! ```
//!
//! Why this is exactly once:
//! - **Fencing.** The checkpoint is `UPDATE … WHERE owner = $me AND token = $token`. If the
//!   lease moved (this process is a zombie: paused, partitioned, presumed dead), it fails with
//!   `LeaseLost` and the whole transaction rolls back: a zombie commits nothing. If it
//!   succeeds, the lease row stays locked until the commit, so a `take` by another client waits
//!   and then starts exactly after this batch.
//! - **Crash.** Effects and checkpoint commit atomically; the next owner starts after the last
//!   committed checkpoint, so nothing is applied twice or skipped.
//! - **Lost commit reply / retried batch.** The transactional checkpoint only moves strictly
//!   forward: a retried batch whose first commit did land finds the checkpoint already there
//!   and gets [`TxCheckpoint::AlreadyCommitted`] (rolled back, nothing applied twice).
//!   [`PgLeaseStore::commit_with_checkpoint`] also resolves a lost commit reply itself by
//!   re-reading the lease.
//!
//! The handler still acks the records to the engine (a [`BatchHandler`] does by returning
//! `Ok`; with [`Consumer::records`] call [`Record::ack`] after `commit_with_checkpoint`), so
//! the engine's in-memory watermark and handoffs move on. Use the pool of the store
//! ([`PgLeaseStore::begin`], [`PgLeaseStore::pool`]) or any pool on the same database.
//! [`PgLeaseStore::checkpoint_in`] is the lower-level step, for callers who commit themselves.
//!
//! [`BatchHandler`]: kinsumer_core::consumer::BatchHandler
//! [`Consumer::records`]: kinsumer_core::Consumer::records
//! [`Record::ack`]: kinsumer_core::record::Record::ack
//!
//! ## The monotonic-checkpoint rule
//!
//! The engine also commits its acked watermark every `commit_interval` and on release. With
//! transactional checkpoints that watermark can lag behind what a handler's transaction already
//! committed (the transaction commits before the records are acked). Writing it would move the
//! checkpoint **backwards**, and after a crash the next owner would apply those records again.
//!
//! So a lease that was ever checkpointed by `checkpoint_in` is marked `monotonic`, and from
//! then on the plain `checkpoint` and `release` never move it backwards: a backwards
//! checkpoint is a **successful no-op** (the write is fenced as usual — a wrong tenure is still
//! `LeaseLost` — but the stored checkpoint stays). "Backwards" is the rule of
//! [`Checkpoint::is_not_before`](kinsumer_core::position::Checkpoint::is_not_before), computed
//! in SQL on `(cp_seq, cp_sub)` as `numeric` (sequence numbers compare as integers, never as
//! text). Why a no-op and not an error: the engine's lagging watermark is not a fault, and an
//! error would end the tenure. Why only for such leases: the contract (and its conformance
//! suite) requires the plain `checkpoint` to store exactly what it is given. Only
//! `reset_checkpoint` (an operator's reset of an unowned lease) and `replace_corrupt` (an
//! operator's repair of a row that does not decode) move a monotonic lease anywhere, and they
//! clear the mark.
//!
//! ## Schema
//!
//! Owned by the store, in a configurable schema (default `kinsumer`; validated against
//! `^[a-z_][a-z0-9_]{0,62}$` and always quoted; everything else is a bind parameter).
//! [`PgLeaseStore::migrate`] (run by [`PgLeaseStore::connect`] unless
//! `migrate_on_connect = false`) creates or upgrades it in one transaction under
//! `pg_advisory_xact_lock(hashtext('kinsumer-postgres:' || schema))`, recording the version
//! in `schema_version`, so many processes may run it at once. Version 3 ([`ddl`]):
//!
//! ```sql
//! CREATE SCHEMA IF NOT EXISTS "kinsumer";
//! CREATE TABLE IF NOT EXISTS "kinsumer".schema_version (
//!     singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
//!     version   integer NOT NULL
//! );
//! CREATE TABLE IF NOT EXISTS "kinsumer".clients (
//!     application text        NOT NULL,
//!     client_id   text        NOT NULL,
//!     counter     bigint      NOT NULL CHECK (counter > 0),
//!     updated_at  timestamptz NOT NULL DEFAULT now(),   -- informational only
//!     PRIMARY KEY (application, client_id)
//! );
//! CREATE TABLE IF NOT EXISTS "kinsumer".leases (
//!     application text        NOT NULL,
//!     stream      text        NOT NULL,
//!     shard       text        NOT NULL,
//!     parents     text[]      NOT NULL DEFAULT '{}',
//!     owner       text,                                  -- NULL: unowned
//!     token       bigint      NOT NULL DEFAULT 0 CHECK (token >= 0),
//!     checkpoint  text,          -- canonical text (Checkpoint's Display): what is read back
//!     cp_kind     smallint CHECK (cp_kind BETWEEN 0 AND 4), -- TRIM_HORIZON, LATEST,
//!                                                       -- AT_TIMESTAMP, AFTER, SHARD_END
//!     cp_seq      numeric(64,0), -- AFTER: the sequence number, comparable in SQL
//!     cp_sub      numeric(20,0), -- AFTER: the sub-sequence number (a u64)
//!     monotonic   boolean     NOT NULL DEFAULT false,   -- see the monotonic rule
//!     finished    boolean     NOT NULL DEFAULT false,
//!     updated_at  timestamptz NOT NULL DEFAULT now(),   -- informational only
//!     PRIMARY KEY (application, stream, shard)
//! );
//! ALTER TABLE "kinsumer".leases ADD COLUMN IF NOT EXISTS successor text; -- version 2:
//!                            -- the client a release handed the lease to; take clears it
//! ALTER TABLE "kinsumer".clients ADD COLUMN IF NOT EXISTS judged_dead bigint; -- version 3:
//!                            -- the heartbeat value a watcher judged the client dead at
//! CREATE TABLE IF NOT EXISTS "kinsumer".changes (      -- version 3: the change counter
//!     application text   PRIMARY KEY,
//!     counter     bigint NOT NULL
//! );
//! ```
//!
//! A process of an earlier version refuses to start against a newer schema (processes already
//! running go on working, and ignore the columns and tables they do not know): upgrade the
//! fleet, then restart it.
//!
//! `clients.counter` is the value of the client's last heartbeat, written as the engine chose
//! it (`(incarnation << 32) | sequence`, always in `1..=i64::MAX`, so it fits the `bigint` and
//! its `CHECK` as it is). The store never computes with it. A row written by an earlier
//! version (a counter bumped by one) reads the same, and processes of that version can share
//! the table with this one during a rolling upgrade.
//!
//! ## One statement per operation
//!
//! | operation | SQL |
//! |---|---|
//! | `heartbeat` | `INSERT … VALUES ($1, $2, $beat) ON CONFLICT DO UPDATE SET counter = EXCLUDED.counter` (unconditional) |
//! | `clients` / `client` | `SELECT client_id, counter, judged_dead … WHERE application = $1 [AND client_id = $2]` |
//! | `deregister` | `DELETE … WHERE application = $1 AND client_id = $2` (the judgement goes with the row) |
//! | `mark_dead` | `UPDATE clients SET judged_dead = $3 WHERE … AND counter = $3` (one row updated: marked) |
//! | `changes` | `SELECT counter FROM changes WHERE application = $1` (no row: 0) |
//! | `announce` | `INSERT INTO changes … VALUES ($1, 1) ON CONFLICT DO UPDATE SET counter = counter + 1 RETURNING counter` (a negative or exhausted counter starts afresh at 1) |
//! | `leases` / `lease` | `SELECT … WHERE application = $1 AND stream = $2 [AND shard = $3]` |
//! | `create_if_absent` | `WITH ins AS (INSERT … ON CONFLICT DO NOTHING RETURNING …) SELECT … FROM ins UNION ALL SELECT … existing row` |
//! | `take` | `WITH target AS (SELECT key), upd AS (UPDATE … SET owner, token = token + 1 WHERE token = $exp AND NOT finished RETURNING …) SELECT found, upd.*` |
//! | `checkpoint` | `WITH target, upd AS (UPDATE … SET checkpoint = CASE WHEN backwards-and-monotonic THEN old ELSE new END WHERE owner = $4 AND token = $5 AND NOT finished) SELECT updated, found` |
//! | `release` | the same, also `SET owner = NULL` (checkpoint only if given) |
//! | `finish` | the same fence without `NOT finished`, `SET finished = true, checkpoint = 'SHARD_END'` |
//! | `delete_finished` | `WITH target, del AS (DELETE … WHERE finished) SELECT deleted, finished_or_missing` |
//! | `reset_checkpoint` | fenced on `owner IS NULL AND token = $exp`; clears `monotonic` |
//! | `checkpoint_in` | fenced like `checkpoint`, and only if `(cp_seq, cp_sub) < new`; `SELECT updated, found, held` |
//! | `replace_corrupt` | the one operation of two statements, in one transaction: `SELECT … FOR UPDATE`, decoded by the same Rust code as every read, then — only if it does not decode — `UPDATE` of every column (clears `monotonic`) |
//!
//! Zero rows updated is told apart in the same statement: the CTE `target` reads the key in the
//! statement's snapshot, so `found = false` is `NotFound` and `found = true` is `LeaseLost`.
//! The `UPDATE`'s own `WHERE` is re-checked by PostgreSQL on the newest row version, so a
//! concurrent `take` is never overwritten. A row that does not parse is
//! `StoreError::Corrupt` naming `application/stream/shard`.
//!
//! ## Connections, timeouts, retries, TLS
//!
//! [`PgStoreConfig`]: pool size (`max_connections`, `min_connections`, `idle_timeout`,
//! `acquire_timeout`), a server-side `statement_timeout` (default 5 s) and
//! `idle_in_transaction_session_timeout` (60 s) on every connection, `test_before_acquire`
//! (a protocol ping, not a statement), and `max_retries`/`retry_backoff` for transient failures
//! (connection lost, server restarting, serialization failure, deadlock, timeout: all
//! `StoreError::Transient` once retries are spent), spaced by the core's seeded back-off
//! ([`kinsumer_core::backoff`]; `backoff_seed`), and a client-side `response_timeout`
//! (default 10 s) after which a statement's outcome counts as unknown. A write whose reply was
//! lost is *ambiguous*: the unconditional ones (`heartbeat`, `deregister`) are simply sent
//! again; every conditional write on a lease row re-reads the row and lets the core decide
//! ([`kinsumer_core::outcome`]): landed → its answer, refused → `LeaseLost`/`NotFound`, not
//! landed → sent again. TLS uses rustls (ring, webpki
//! roots) behind the crate feature `tls`: set `sslmode` in the URL or
//! [`PgStoreConfig::ssl_mode`] / [`PgStoreConfig::ssl_root_cert`]. The URL's password never
//! appears in `Debug` output, errors or logs ([`redact_url`]).
//!
//! ## Cost
//!
//! Idle, a fleet costs one write per client per `heartbeat_interval` (no per-lease renewal),
//! plus the engine's reads (`clients` every `membership_poll_interval`, `leases` every
//! `rebalance_interval`). [`PgLeaseStore::stats`] counts the statements sent.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod schema;
mod sql;
mod store;
mod txn;

pub use config::{PgSslMode, PgStoreConfig, redact_url};
pub use schema::{SCHEMA_VERSION, ddl};
pub use store::{PgLeaseStore, PgStoreStats};
pub use txn::TxCheckpoint;

pub use sqlx;
