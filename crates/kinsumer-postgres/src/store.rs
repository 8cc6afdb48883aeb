//! [`PgLeaseStore`]: the `LeaseStore` contract translated to PostgreSQL statements.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kinsumer_core::backoff::{Backoff, BackoffPolicy};
use kinsumer_core::outcome::{self, LeaseWrite, Verdict};
use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{
    ClientId, ClientRow, CorruptRow, Lease, LeaseStore, Rows, StoreError, Tenure,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row, Transaction};
use tracing::debug;

use crate::config::PgStoreConfig;
use crate::error::{is_ambiguous, is_retryable, map_sqlx};
use crate::schema::{self, MigrateError, quote, validate_schema};
use crate::sql::Statements;

/// Statement counts of one store (all clones share them): what the store costs the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgStoreStats {
    /// Read-only statements sent (`clients`, `leases`, `lease`, re-reads).
    pub reads: u64,
    /// Writing statements sent (`heartbeat`, `take`, `checkpoint`, ... and `checkpoint_in`).
    pub writes: u64,
    /// Statements re-sent after a transient failure.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    retries: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

struct Inner {
    pool: PgPool,
    application: String,
    schema: String,
    sql: Statements,
    max_retries: u32,
    /// The back-off between the store's own retries (the core's rule, seeded).
    backoff: Mutex<Backoff>,
    /// How long a statement waits for its reply before its outcome counts as unknown
    /// (`Duration::ZERO`: no bound).
    response_timeout: Duration,
    counters: Counters,
}

/// The most the store's retry back-off grows: 64 times `retry_backoff` (6 doublings).
const BACKOFF_DOUBLINGS: u32 = 64;

/// The defaults of [`PgLeaseStore::from_pool`] (those of [`PgStoreConfig::new`]).
const DEFAULT_RETRIES: u32 = 2;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a store retries and how long it waits for a reply.
struct Patience {
    max_retries: u32,
    retry_backoff: Duration,
    backoff_seed: Option<u64>,
    response_timeout: Duration,
}

/// What a write sent through [`PgLeaseStore::resolving`] answered.
enum Answer<T> {
    /// The server's own reply.
    Replied(T),
    /// No reply came, and a re-read showed the write landed: the row read (if there is one).
    Landed(Option<Lease>),
}

/// A [`LeaseStore`] in PostgreSQL, for one application. Cheap to clone (clones share the pool).
///
/// See the [crate docs](crate) for the schema, the SQL of each operation, and the
/// exactly-once pattern ([`PgLeaseStore::commit_with_checkpoint`]).
#[derive(Clone)]
pub struct PgLeaseStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PgLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's options hold the password: show only what is safe.
        f.debug_struct("PgLeaseStore")
            .field("application", &self.inner.application)
            .field("schema", &self.inner.schema)
            .field("pool_size", &self.inner.pool.size())
            .finish()
    }
}

/// The four bind values of a checkpoint: canonical text, kind, sequence and sub-sequence (the
/// numbers as decimal text, cast to `numeric` in SQL).
pub(crate) struct CpParams {
    pub text: Option<String>,
    pub kind: Option<i16>,
    pub seq: Option<String>,
    pub sub: Option<String>,
}

/// Binds a checkpoint's four parameters (text, kind, sequence, sub-sequence: the columns of
/// every statement that writes one, in that order) within a statement's chain of binds.
trait BindCheckpoint<'q> {
    fn bind_checkpoint(self, cp: &'q CpParams) -> Self;
}

impl<'q> BindCheckpoint<'q> for PgQuery<'q> {
    fn bind_checkpoint(self, cp: &'q CpParams) -> Self {
        self.bind(&cp.text)
            .bind(cp.kind)
            .bind(&cp.seq)
            .bind(&cp.sub)
    }
}

impl CpParams {
    pub(crate) fn of(cp: Option<&Checkpoint>) -> Self {
        let Some(cp) = cp else {
            return Self {
                text: None,
                kind: None,
                seq: None,
                sub: None,
            };
        };
        let (kind, seq, sub) = match cp {
            Checkpoint::TrimHorizon => (0, None, None),
            Checkpoint::Latest => (1, None, None),
            Checkpoint::AtTimestamp(_) => (2, None, None),
            Checkpoint::After(p) => (
                3,
                Some(p.sequence.as_str().to_owned()),
                Some(p.sub_sequence.to_string()),
            ),
            Checkpoint::ShardEnd => (4, None, None),
        };
        Self {
            text: Some(cp.to_string()),
            kind: Some(kind),
            seq,
            sub,
        }
    }
}

/// A token as bound: tokens above `i64::MAX` cannot be stored, so they bind as -1, which no
/// row holds (`CHECK (token >= 0)`): the write is refused as it should be.
pub(crate) fn token_param(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(-1)
}

pub(crate) fn lease_lost(shard: &ShardId) -> StoreError {
    StoreError::LeaseLost {
        shard: shard.clone(),
    }
}

fn not_found(shard: &ShardId) -> StoreError {
    StoreError::NotFound {
        shard: shard.clone(),
    }
}

/// A statement of the store with its parameters bound as far as they are.
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

impl PgLeaseStore {
    /// One of the store's statements on one lease row, with the parameters every such
    /// statement starts with bound: the application, the stream, the shard.
    fn on_row<'q>(&'q self, sql: &str, stream: &'q str, shard: &'q ShardId) -> PgQuery<'q> {
        sqlx::query(AssertSqlSafe(sql.to_owned()))
            .bind(&self.inner.application)
            .bind(stream)
            .bind(shard.as_str())
    }

    /// Connects a pool as `config` says and, if `config.migrate_on_connect`, runs
    /// [`Self::migrate`].
    pub async fn connect(config: PgStoreConfig) -> Result<Self, StoreError> {
        let (options, pool_options) = config.build()?;
        let pool = pool_options.connect_lazy_with(options);
        let store = Self::build(
            pool,
            &config.application,
            &config.schema,
            Patience {
                max_retries: config.max_retries,
                retry_backoff: config.retry_backoff,
                backoff_seed: config.backoff_seed,
                response_timeout: config.response_timeout,
            },
        )?;
        if config.migrate_on_connect {
            store.retrying(Kind::Write, || store.migrate_once()).await?;
        }
        Ok(store)
    }

    /// A store over a pool the caller built (its connections' settings are the caller's), with
    /// 2 retries of 100 ms back-off (seeded from the OS) and a 10 s response timeout. Does not
    /// migrate: call [`Self::migrate`].
    pub fn from_pool(
        pool: PgPool,
        application: impl Into<String>,
        schema: &str,
    ) -> Result<Self, StoreError> {
        Self::build(
            pool,
            &application.into(),
            schema,
            Patience {
                max_retries: DEFAULT_RETRIES,
                retry_backoff: DEFAULT_RETRY_BACKOFF,
                backoff_seed: None,
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            },
        )
    }

    fn build(
        pool: PgPool,
        application: &str,
        schema: &str,
        patience: Patience,
    ) -> Result<Self, StoreError> {
        validate_schema(schema)?;
        let policy = BackoffPolicy::new(
            patience.retry_backoff,
            patience.retry_backoff.saturating_mul(BACKOFF_DOUBLINGS),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                sql: Statements::new(&quote(schema)),
                pool,
                application: application.to_owned(),
                schema: schema.to_owned(),
                max_retries: patience.max_retries,
                backoff: Mutex::new(Backoff::seeded_or_os(policy, patience.backoff_seed)),
                response_timeout: patience.response_timeout,
                counters: Counters::default(),
            }),
        })
    }

    /// Creates the schema and tables, or upgrades them to [`crate::SCHEMA_VERSION`]: one
    /// transaction under `pg_advisory_xact_lock`, so any number of processes may run it at
    /// once. Idempotent.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.retrying(Kind::Write, || self.migrate_once()).await
    }

    /// Checks, without changing anything, that the schema exists at the version this build
    /// reads and writes — for read-only tools (`kinsumer status`), which must neither create a
    /// schema nor need the right to: a missing schema (a typo in its name) or one at another
    /// version is a `Fatal` error saying so.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let schema = &self.inner.schema;
        let table = format!("{}.schema_version", schema::quote(schema));
        let exists: Option<String> = self
            .retrying(Kind::Read, || {
                sqlx::query_scalar("SELECT to_regclass($1)::text")
                    .bind(&table)
                    .fetch_one(&self.inner.pool)
            })
            .await?;
        if exists.is_none() {
            return Err(StoreError::Fatal(format!(
                "schema {schema} has no kinsumer tables in this database: no consumer has used \
                 it yet, or the schema name is wrong"
            )));
        }
        let version: Option<i32> = self
            .retrying(Kind::Read, || {
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {table}")))
                    .fetch_optional(&self.inner.pool)
            })
            .await?;
        match version {
            Some(v) if v == crate::SCHEMA_VERSION => Ok(()),
            other => Err(StoreError::Fatal(format!(
                "schema {schema} is at version {}, this build reads version {}: {}",
                other.map_or("none".to_owned(), |v| v.to_string()),
                crate::SCHEMA_VERSION,
                if other.is_some_and(|v| v > crate::SCHEMA_VERSION) {
                    "upgrade this tool"
                } else {
                    "start a consumer of this version (it migrates the schema), or run PgLeaseStore::migrate"
                }
            ))),
        }
    }

    async fn migrate_once(&self) -> Result<(), sqlx::Error> {
        match schema::migrate(&self.inner.pool, &self.inner.schema).await {
            Ok(()) => Ok(()),
            Err(MigrateError::Sql(e)) => Err(e),
            Err(MigrateError::Store(e)) => Err(sqlx::Error::Configuration(e.to_string().into())),
        }
    }

    /// The pool: begin your own transactions on it for [`Self::checkpoint_in`] and
    /// [`Self::commit_with_checkpoint`].
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Begins a transaction on the store's pool (for [`Self::commit_with_checkpoint`]).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.inner.pool.begin().await.map_err(map_sqlx)
    }

    /// The application this store serves.
    pub fn application(&self) -> &str {
        &self.inner.application
    }

    /// The schema holding its tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The statements sent so far by this store and its clones.
    pub fn stats(&self) -> PgStoreStats {
        let c = &self.inner.counters;
        PgStoreStats {
            reads: c.reads.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn sql(&self) -> &Statements {
        &self.inner.sql
    }

    pub(crate) fn count_write(&self) {
        self.inner.counters.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn key(&self, stream: &str, shard: &ShardId) -> String {
        format!("{}/{stream}/{shard}", self.inner.application)
    }

    fn count(&self, kind: Kind) {
        let c = &self.inner.counters;
        match kind {
            Kind::Read => c.reads.fetch_add(1, Ordering::Relaxed),
            Kind::Write => c.writes.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The pause before retry number `retry` (from 1), by the core's back-off rule.
    fn backoff(&self, retry: u32) -> Duration {
        self.inner
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delay(retry.saturating_sub(1))
    }

    /// `statement`, failing as a lost connection (an ambiguous error: the statement may have
    /// been applied) when no reply comes within the response timeout.
    async fn bounded<T>(
        &self,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let limit = self.inner.response_timeout;
        if limit.is_zero() {
            return statement.await;
        }
        match tokio::time::timeout(limit, statement).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within PgStoreConfig::response_timeout ({limit:?})"),
            ))),
        }
    }

    /// Runs an idempotent statement (a read, a heartbeat, a deregistration), retrying
    /// transient failures: sending it again is how an ambiguous one is resolved.
    async fn retrying<T, F, Fut>(&self, kind: Kind, mut run: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut attempt = 0;
        loop {
            self.count(kind);
            match self.bounded(run()).await {
                Ok(value) => return Ok(value),
                Err(err) if is_retryable(&err) && attempt < self.inner.max_retries => {
                    attempt += 1;
                    self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %err, attempt, "kinsumer-postgres: retrying a statement");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(err) => return Err(map_sqlx(err)),
            }
        }
    }

    /// Runs a conditional write on one lease row. A clean transient failure is retried; an
    /// ambiguous one (no reply) is settled by re-reading the row, judged by the core
    /// ([`kinsumer_core::outcome`]): landed → [`Answer::Landed`], refused → that error, not
    /// landed → sent again (the row still expects it, so sending again is safe).
    async fn resolving<T, F, Fut>(
        &self,
        stream: &str,
        shard: &ShardId,
        write: LeaseWrite<'_>,
        mut run: F,
    ) -> Result<Answer<T>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut attempt = 0;
        loop {
            self.count(Kind::Write);
            let err = match self.bounded(run()).await {
                Ok(value) => return Ok(Answer::Replied(value)),
                Err(err) => err,
            };
            if !is_retryable(&err) {
                return Err(map_sqlx(err));
            }
            if is_ambiguous(&err) {
                debug!(error = %err, %shard, %write, "kinsumer-postgres: ambiguous write, re-reading");
                let resolution =
                    outcome::reread_and_judge(shard, &write, || self.lease(stream, shard))
                        .await
                        .map_err(|reread| {
                            StoreError::Transient(format!(
                                "{write} of {}: the outcome was unknown ({err}) and re-reading \
                                 the row failed ({reread})",
                                self.key(stream, shard)
                            ))
                        })?;
                match resolution.verdict {
                    Verdict::Landed => return Ok(Answer::Landed(resolution.row)),
                    Verdict::Refused(refused) => return Err(refused),
                    Verdict::NotLanded => {}
                }
            }
            if attempt >= self.inner.max_retries {
                return Err(map_sqlx(err));
            }
            attempt += 1;
            self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    fn parse_lease(&self, stream: &str, row: &PgRow) -> Result<Lease, StoreError> {
        self.decode_lease(stream, row).map_err(StoreError::from)
    }

    /// A lease row, or what is wrong with it.
    fn decode_lease(&self, stream: &str, row: &PgRow) -> Result<Lease, CorruptRow> {
        let shard: String = row.try_get("shard").map_err(|e| CorruptRow {
            key: format!("{}/{stream}/?", self.inner.application),
            id: None,
            reason: format!("shard: {e}"),
        })?;
        let shard = ShardId::from(shard);
        let corrupt = |field: &str, reason: String| CorruptRow {
            key: self.key(stream, &shard),
            id: Some(shard.to_string()),
            reason: format!("{field}: {reason}"),
        };
        let parents: Vec<String> = row
            .try_get("parents")
            .map_err(|e| corrupt("parents", e.to_string()))?;
        let owner: Option<String> = row
            .try_get("owner")
            .map_err(|e| corrupt("owner", e.to_string()))?;
        let token: i64 = row
            .try_get("token")
            .map_err(|e| corrupt("token", e.to_string()))?;
        let token =
            u64::try_from(token).map_err(|_| corrupt("token", format!("negative: {token}")))?;
        let checkpoint: Option<String> = row
            .try_get("checkpoint")
            .map_err(|e| corrupt("checkpoint", e.to_string()))?;
        let checkpoint = checkpoint
            .map(|text| text.parse::<Checkpoint>())
            .transpose()
            .map_err(|e| corrupt("checkpoint", e.to_string()))?;
        let finished: bool = row
            .try_get("finished")
            .map_err(|e| corrupt("finished", e.to_string()))?;
        let successor: Option<String> = row
            .try_get("successor")
            .map_err(|e| corrupt("successor", e.to_string()))?;
        for (field, id) in [("owner", &owner), ("successor", &successor)] {
            if id.as_deref() == Some("") {
                return Err(corrupt(field, "an empty client id".to_owned()));
            }
        }
        Ok(Lease {
            shard: shard.clone(),
            parents: parents.into_iter().map(ShardId::from).collect(),
            owner: owner.map(ClientId::from),
            token,
            checkpoint,
            finished,
            successor: successor.map(ClientId::from),
        })
    }

    /// Reads the two flags of a fenced write's reply.
    fn flags(
        &self,
        stream: &str,
        shard: &ShardId,
        row: &PgRow,
        names: [&str; 2],
    ) -> Result<(bool, bool), StoreError> {
        let get = |name: &str| {
            row.try_get::<bool, _>(name)
                .map_err(|e| StoreError::Corrupt {
                    key: self.key(stream, shard),
                    reason: format!("{name}: {e}"),
                })
        };
        Ok((get(names[0])?, get(names[1])?))
    }

    /// Runs a fenced write (`checkpoint`, `release`, `finish`, `reset_checkpoint`): `Ok` if it
    /// applied, `LeaseLost` if the row exists but the fence refused, `NotFound` if it does not
    /// exist; an unknown outcome is settled as `write`.
    async fn fenced<F, Fut>(
        &self,
        stream: &str,
        shard: &ShardId,
        write: LeaseWrite<'_>,
        run: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<PgRow, sqlx::Error>>,
    {
        let row = match self.resolving(stream, shard, write, run).await? {
            Answer::Replied(row) => row,
            Answer::Landed(_) => return Ok(()),
        };
        match self.flags(stream, shard, &row, ["updated", "found"])? {
            (true, _) => Ok(()),
            (false, true) => Err(lease_lost(shard)),
            (false, false) => Err(not_found(shard)),
        }
    }
}

impl PgLeaseStore {
    /// One attempt of `replace_corrupt`: the row locked, judged by [`Self::decode_lease`] (the
    /// decoder of every read), rewritten only if it does not decode or its token is exhausted,
    /// committed. The outer
    /// `Result` is the database's, the inner one the contract's answer.
    async fn replace_corrupt_once(
        &self,
        stream: &str,
        lease: &Lease,
        token: i64,
        cp: &CpParams,
    ) -> Result<Result<(), StoreError>, sqlx::Error> {
        let shard = &lease.shard;
        let mut tx = self.inner.pool.begin().await?;
        let row = sqlx::query(AssertSqlSafe(self.inner.sql.lease_for_update.clone()))
            .bind(&self.inner.application)
            .bind(stream)
            .bind(shard.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let refusal = match row {
            None => Some(not_found(shard)),
            Some(row)
                if self
                    .decode_lease(stream, &row)
                    .is_ok_and(|usable| !usable.token_exhausted()) =>
            {
                Some(lease_lost(shard))
            }
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            tx.rollback().await?;
            return Ok(Err(refusal));
        }
        let parents: Vec<String> = lease
            .parents
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        sqlx::query(AssertSqlSafe(self.inner.sql.replace_row.clone()))
            .bind(&self.inner.application)
            .bind(stream)
            .bind(shard.as_str())
            .bind(&parents)
            .bind(lease.owner.as_ref().map(ClientId::as_str))
            .bind(token)
            .bind_checkpoint(cp)
            .bind(lease.finished)
            .bind(lease.successor.as_ref().map(ClientId::as_str))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}

impl PgLeaseStore {
    /// A client row as read by `clients` or `client`; a mark that does not decode is no
    /// judgement (the safe side: the client counts as alive).
    fn decode_client(&self, row: &PgRow) -> Result<ClientRow, CorruptRow> {
        let id: String = row.try_get("client_id").map_err(|e| CorruptRow {
            key: format!("{}/client/?", self.inner.application),
            id: None,
            reason: e.to_string(),
        })?;
        let corrupt = |reason: String| CorruptRow {
            key: format!("{}/client/{id}", self.inner.application),
            id: Some(id.clone()),
            reason,
        };
        let counter: i64 = row.try_get("counter").map_err(|e| corrupt(e.to_string()))?;
        let counter = u64::try_from(counter)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| corrupt(format!("counter {counter} is not positive")))?;
        if id.is_empty() {
            return Err(corrupt("an empty client id".to_owned()));
        }
        let judged: Option<i64> = row.try_get("judged_dead").unwrap_or(None);
        Ok(ClientRow {
            judged_dead: judged.and_then(|j| u64::try_from(j).ok()),
            ..ClientRow::new(ClientId::from(id), counter)
        })
    }
}

#[async_trait]
impl LeaseStore for PgLeaseStore {
    fn application(&self) -> Option<&str> {
        Some(&self.inner.application)
    }
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        // An unconditional upsert of the value: idempotent, so an ambiguous one is simply sent
        // again.
        let sql = &self.inner.sql.heartbeat;
        let beat = i64::try_from(beat).ok().filter(|b| *b > 0).ok_or_else(|| {
            StoreError::Fatal(format!(
                "heartbeat value {beat} for {client} is outside 1..=i64::MAX (the contract's range)"
            ))
        })?;
        self.retrying(Kind::Write, || {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(&self.inner.application)
                .bind(client.as_str())
                .bind(beat)
                .execute(&self.inner.pool)
        })
        .await?;
        Ok(())
    }

    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        let sql = &self.inner.sql.clients;
        let rows = self
            .retrying(Kind::Read, || {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(&self.inner.application)
                    .fetch_all(&self.inner.pool)
            })
            .await?;
        let (mut good, mut corrupt) = (Vec::new(), Vec::new());
        for row in &rows {
            match self.decode_client(row) {
                Ok(client) => good.push(client),
                Err(bad) => corrupt.push(bad),
            }
        }
        Ok(Rows::new(good, corrupt))
    }

    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        let sql = &self.inner.sql.deregister;
        self.retrying(Kind::Write, || {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(&self.inner.application)
                .bind(client.as_str())
                .execute(&self.inner.pool)
        })
        .await?;
        Ok(())
    }

    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        let sql = &self.inner.sql.client;
        let row = self
            .retrying(Kind::Read, || {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(&self.inner.application)
                    .bind(client.as_str())
                    .fetch_optional(&self.inner.pool)
            })
            .await?;
        row.map(|row| self.decode_client(&row).map_err(StoreError::from))
            .transpose()
    }

    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        // A value past bigint is one no row holds: nothing to mark.
        let Ok(counter) = i64::try_from(counter) else {
            return Ok(false);
        };
        let sql = &self.inner.sql.mark_dead;
        // Idempotent: an ambiguous one is simply sent again.
        let done = self
            .retrying(Kind::Write, || {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(&self.inner.application)
                    .bind(client.as_str())
                    .bind(counter)
                    .execute(&self.inner.pool)
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn changes(&self) -> Result<u64, StoreError> {
        let sql = &self.inner.sql.changes;
        let counter: Option<i64> = self
            .retrying(Kind::Read, || {
                sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                    .bind(&self.inner.application)
                    .fetch_optional(&self.inner.pool)
            })
            .await?;
        let Some(counter) = counter else {
            return Ok(0);
        };
        u64::try_from(counter).map_err(|_| StoreError::Corrupt {
            key: format!("{}/changes", self.inner.application),
            reason: format!("the change counter {counter} is negative"),
        })
    }

    async fn announce(&self) -> Result<u64, StoreError> {
        let sql = &self.inner.sql.announce;
        // Sent again after an ambiguous failure: the counter may move twice, which is only
        // one more change.
        let counter: i64 = self
            .retrying(Kind::Write, || {
                sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                    .bind(&self.inner.application)
                    .fetch_one(&self.inner.pool)
            })
            .await?;
        u64::try_from(counter).map_err(|_| StoreError::Corrupt {
            key: format!("{}/changes", self.inner.application),
            reason: format!("announce returned the counter {counter}"),
        })
    }

    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        let sql = &self.inner.sql.leases;
        let rows = self
            .retrying(Kind::Read, || {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(&self.inner.application)
                    .bind(stream)
                    .fetch_all(&self.inner.pool)
            })
            .await?;
        let mut leases = Vec::new();
        let mut corrupt = Vec::new();
        for row in &rows {
            match self.decode_lease(stream, row) {
                Ok(lease) => leases.push(lease),
                Err(bad) => corrupt.push(bad),
            }
        }
        Ok(Rows::new(leases, corrupt))
    }

    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        let sql = &self.inner.sql.lease;
        let row = self
            .retrying(Kind::Read, || {
                self.on_row(sql, stream, shard)
                    .fetch_optional(&self.inner.pool)
            })
            .await?;
        row.map(|row| self.parse_lease(stream, &row)).transpose()
    }

    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        let sql = &self.inner.sql.create_if_absent;
        let parents: Vec<String> = parents.iter().map(|p| p.as_str().to_owned()).collect();
        // Zero rows only when another call inserted the row concurrently and committed after
        // this statement's snapshot: the next statement (a new snapshot) sees it.
        for _ in 0..3 {
            let answer = self
                .resolving(stream, shard, LeaseWrite::CreateIfAbsent, || {
                    self.on_row(sql, stream, shard)
                        .bind(&parents)
                        .fetch_optional(&self.inner.pool)
                })
                .await?;
            match answer {
                Answer::Replied(Some(row)) => return self.parse_lease(stream, &row),
                Answer::Landed(Some(lease)) => return Ok(lease),
                Answer::Replied(None) | Answer::Landed(None) => {}
            }
        }
        Err(StoreError::Transient(format!(
            "create_if_absent of {} raced a concurrent create three times",
            self.key(stream, shard)
        )))
    }

    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        // The next token must fit the column (a bigint): a row at its largest value cannot be
        // taken, and says so instead of failing with a numeric overflow.
        kinsumer_core::store::next_token(expected_token, i64::MAX as u64).map_err(|reason| {
            StoreError::Corrupt {
                key: self.key(stream, shard),
                reason,
            }
        })?;
        let sql = &self.inner.sql.take;
        let write = LeaseWrite::Take {
            owner,
            expected_token,
        };
        let answer = self
            .resolving(stream, shard, write, || {
                self.on_row(sql, stream, shard)
                    .bind(owner.as_str())
                    .bind(token_param(expected_token))
                    .fetch_one(&self.inner.pool)
            })
            .await?;
        let row = match answer {
            Answer::Replied(row) => row,
            // Applied, learned from a re-read: that row is the answer.
            Answer::Landed(lease) => return lease.ok_or_else(|| not_found(shard)),
        };
        let found: bool = row.try_get("found").map_err(|e| StoreError::Corrupt {
            key: self.key(stream, shard),
            reason: format!("found: {e}"),
        })?;
        let taken: Option<String> = row.try_get("shard").map_err(|e| StoreError::Corrupt {
            key: self.key(stream, shard),
            reason: format!("shard: {e}"),
        })?;
        match (taken, found) {
            (Some(_), _) => self.parse_lease(stream, &row),
            (None, true) => Err(lease_lost(shard)),
            (None, false) => Err(not_found(shard)),
        }
    }

    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let sql = &self.inner.sql.checkpoint;
        let cp = CpParams::of(Some(checkpoint));
        let write = LeaseWrite::Checkpoint { tenure, checkpoint };
        self.fenced(stream, &tenure.shard, write, || {
            self.on_row(sql, stream, &tenure.shard)
                .bind(tenure.owner.as_str())
                .bind(token_param(tenure.token))
                .bind_checkpoint(&cp)
                .fetch_one(&self.inner.pool)
        })
        .await
    }

    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        let sql = &self.inner.sql.release;
        let cp = CpParams::of(checkpoint);
        let shard = &tenure.shard;
        self.fenced(stream, shard, LeaseWrite::Release { tenure }, || {
            self.on_row(sql, stream, shard)
                .bind(tenure.owner.as_str())
                .bind(token_param(tenure.token))
                .bind_checkpoint(&cp)
                .bind(successor.map(ClientId::as_str))
                .fetch_one(&self.inner.pool)
        })
        .await
    }

    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        let sql = &self.inner.sql.finish;
        self.fenced(stream, &tenure.shard, LeaseWrite::Finish { tenure }, || {
            self.on_row(sql, stream, &tenure.shard)
                .bind(tenure.owner.as_str())
                .bind(token_param(tenure.token))
                .fetch_one(&self.inner.pool)
        })
        .await
    }

    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        let sql = &self.inner.sql.delete_finished;
        let answer = self
            .resolving(stream, shard, LeaseWrite::DeleteFinished, || {
                self.on_row(sql, stream, shard).fetch_one(&self.inner.pool)
            })
            .await?;
        let row = match answer {
            Answer::Replied(row) => row,
            Answer::Landed(_) => return Ok(()),
        };
        match self.flags(stream, shard, &row, ["deleted", "finished_or_missing"])? {
            (true, _) | (false, true) => Ok(()),
            (false, false) => Err(lease_lost(shard)),
        }
    }

    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let sql = &self.inner.sql.reset_checkpoint;
        let cp = CpParams::of(Some(checkpoint));
        let write = LeaseWrite::ResetCheckpoint {
            expected_token,
            checkpoint,
        };
        self.fenced(stream, shard, write, || {
            self.on_row(sql, stream, shard)
                .bind(token_param(expected_token))
                .bind_checkpoint(&cp)
                .fetch_one(&self.inner.pool)
        })
        .await
    }

    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        let shard = &lease.shard;
        let token = i64::try_from(lease.token).map_err(|_| {
            StoreError::Fatal(format!(
                "replace_corrupt of {}: token {} does not fit the bigint column (at most {})",
                self.key(stream, shard),
                lease.token,
                i64::MAX
            ))
        })?;
        let cp = CpParams::of(lease.checkpoint.as_ref());
        // The commit's reply may be what is lost: the core judges the row re-read.
        let write = LeaseWrite::ReplaceCorrupt { lease };
        match self
            .resolving(stream, shard, write, || {
                self.replace_corrupt_once(stream, lease, token, &cp)
            })
            .await?
        {
            Answer::Replied(answer) => answer,
            Answer::Landed(_) => Ok(()),
        }
    }
}
