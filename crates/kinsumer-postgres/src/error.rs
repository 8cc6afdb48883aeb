//! Classifying `sqlx` errors into the core's [`StoreError`].

use kinsumer_core::store::StoreError;

/// Whether an error may be fixed by retrying the same call (connection lost, server restarting,
/// pool exhausted, serialization failure, deadlock, timeout).
pub(crate) fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// Whether a failed call may have been applied by the server (its reply was lost): only errors
/// of the connection itself. A database error means the statement failed and was rolled back.
pub(crate) fn is_ambiguous(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
    )
}

fn transient_code(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, ...)
        || matches!(
            code,
            "40001" // serialization_failure
                | "40P01" // deadlock_detected
                | "55P03" // lock_not_available
                | "57014" // query_canceled (statement_timeout)
                | "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now (starting up / shutting down)
                | "25P03" // idle_in_transaction_session_timeout
        )
}

/// Maps an error to the core's classification. Messages never hold the connection URL.
pub(crate) fn map_sqlx(err: sqlx::Error) -> StoreError {
    if is_retryable(&err) {
        return StoreError::Transient(format!("postgres: {err}"));
    }
    match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let hint = match code.as_str() {
                "42P01" | "3F000" => " (are the store's tables created? run PgLeaseStore::migrate)",
                _ => "",
            };
            StoreError::Fatal(format!("postgres error {code}: {}{hint}", db.message()))
        }
        _ => StoreError::Fatal(format!("postgres: {err}")),
    }
}
