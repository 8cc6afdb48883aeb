//! The schema the store owns: validated name, versioned DDL, and a `migrate` that is safe to
//! run from many processes at once.

use kinsumer_core::store::StoreError;
use sqlx::{AssertSqlSafe, PgPool};

/// A migration failure: a statement's error (retryable or not) or a refusal. Here, beside
/// the migration, so that the store (which runs it) imports the schema and never the reverse.
pub(crate) enum MigrateError {
    Sql(sqlx::Error),
    Store(StoreError),
}

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = 3;

/// Checks a schema name against `^[a-z_][a-z0-9_]{0,62}$` (so it needs no escaping and fits
/// PostgreSQL's 63-byte identifiers).
pub(crate) fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= 63 {
        Ok(())
    } else {
        Err(StoreError::Fatal(format!(
            "PgStoreConfig.schema must match ^[a-z_][a-z0-9_]{{0,62}}$, got {:?}",
            schema.chars().take(80).collect::<String>()
        )))
    }
}

/// `"schema"`: the validated name, quoted.
pub(crate) fn quote(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// The statements that bring a schema from version `n - 1` to `n`, for `n = 1..`. `{s}` is the
/// quoted schema. Never edit a released step: add a new one.
const MIGRATIONS: &[&[&str]] = &[
    // 1: clients and leases.
    &[
        "CREATE TABLE IF NOT EXISTS {s}.clients (
            application text        NOT NULL,
            client_id   text        NOT NULL,
            counter     bigint      NOT NULL CHECK (counter > 0),
            updated_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (application, client_id)
        )",
        "CREATE TABLE IF NOT EXISTS {s}.leases (
            application text        NOT NULL,
            stream      text        NOT NULL,
            shard       text        NOT NULL,
            parents     text[]      NOT NULL DEFAULT '{}',
            owner       text,
            token       bigint      NOT NULL DEFAULT 0 CHECK (token >= 0),
            checkpoint  text,
            cp_kind     smallint    CHECK (cp_kind BETWEEN 0 AND 4),
            cp_seq      numeric(64,0),
            cp_sub      numeric(20,0),
            monotonic   boolean     NOT NULL DEFAULT false,
            finished    boolean     NOT NULL DEFAULT false,
            updated_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (application, stream, shard)
        )",
    ],
    // 2: the client a release handed the lease to (NULL: nobody named); `take` clears it.
    &["ALTER TABLE {s}.leases ADD COLUMN IF NOT EXISTS successor text"],
    // 3: a watcher's judgement (the heartbeat value a client was judged dead at), and the
    // change counter an idle fleet polls instead of every row.
    &[
        "ALTER TABLE {s}.clients ADD COLUMN IF NOT EXISTS judged_dead bigint",
        "CREATE TABLE IF NOT EXISTS {s}.changes (
            application text   PRIMARY KEY,
            counter     bigint NOT NULL
        )",
    ],
];

/// The DDL of the current version for `schema` (for documentation and operators).
pub fn ddl(schema: &str) -> Result<String, StoreError> {
    validate_schema(schema)?;
    let s = quote(schema);
    let mut out = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};\n\
         CREATE TABLE IF NOT EXISTS {s}.schema_version (\n    \
         singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),\n    \
         version   integer NOT NULL\n);\n"
    );
    for step in MIGRATIONS {
        for stmt in *step {
            out.push_str(&stmt.replace("{s}", &s));
            out.push_str(";\n");
        }
    }
    Ok(out)
}

/// Creates or upgrades the schema to [`SCHEMA_VERSION`] in one transaction, under a
/// transaction-scoped advisory lock keyed by the schema's name, so concurrent runs (several
/// processes starting at once) serialize and all but the first find nothing to do.
pub(crate) async fn migrate(pool: &PgPool, schema: &str) -> Result<(), MigrateError> {
    validate_schema(schema).map_err(MigrateError::Store)?;
    let s = quote(schema);
    let mut tx = pool.begin().await.map_err(MigrateError::Sql)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kinsumer-postgres:' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(MigrateError::Sql)?;
    let setup = [
        format!("CREATE SCHEMA IF NOT EXISTS {s}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.schema_version (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                version   integer NOT NULL
            )"
        ),
    ];
    for stmt in setup {
        // The schema name is validated above: no untrusted text reaches the SQL.
        sqlx::query(AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await
            .map_err(MigrateError::Sql)?;
    }
    let current: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT version FROM {s}.schema_version"
    )))
    .fetch_optional(&mut *tx)
    .await
    .map_err(MigrateError::Sql)?;
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(MigrateError::Store(StoreError::Fatal(format!(
            "schema {schema} is at version {current}, newer than this kinsumer-postgres \
             understands ({SCHEMA_VERSION}): upgrade the library"
        ))));
    }
    let start = usize::try_from(current).unwrap_or(0);
    for step in MIGRATIONS.iter().skip(start) {
        for stmt in *step {
            sqlx::query(AssertSqlSafe(stmt.replace("{s}", &s)))
                .execute(&mut *tx)
                .await
                .map_err(MigrateError::Sql)?;
        }
    }
    if current != SCHEMA_VERSION {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {s}.schema_version (singleton, version) VALUES (true, $1)
             ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version"
        )))
        .bind(SCHEMA_VERSION)
        .execute(&mut *tx)
        .await
        .map_err(MigrateError::Sql)?;
    }
    tx.commit().await.map_err(MigrateError::Sql)?;
    Ok(())
}
