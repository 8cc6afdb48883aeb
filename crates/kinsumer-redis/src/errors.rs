//! How a `redis` error becomes a [`StoreError`].
//!
//! | what Redis or the connection said | `StoreError` |
//! |---|---|
//! | I/O (refused, reset, EOF, timeout), `LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY`, `NOREPLICAS`, `OOM`, `MISCONF`, anything unknown | `Transient` |
//! | `WRONGTYPE` (the key holds another kind of value) | `Corrupt`, naming the key |
//! | authentication or ACL refusal, an invalid client configuration (bad URL, TLS without the feature), an error inside a script | `Fatal` |
//!
//! A write whose reply never arrived (an I/O error or a timeout once the command may have
//! been sent) is *ambiguous*; the store settles it by re-reading the row.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use kinsumer_core::store::StoreError;

/// Whether the command may have been applied although no reply arrived.
pub(crate) fn is_ambiguous(err: &RedisError) -> bool {
    matches!(err.kind(), ErrorKind::Io | ErrorKind::Parse)
}

/// Classifies an error of a command on `key` (`key` is named if the value there is corrupt).
pub(crate) fn classify(err: &RedisError, key: &str) -> StoreError {
    if err.code() == Some("WRONGTYPE") {
        return StoreError::Corrupt {
            key: key.to_owned(),
            reason: format!("the key holds a value of another type ({err})"),
        };
    }
    let fatal = match err.kind() {
        ErrorKind::AuthenticationFailed
        | ErrorKind::InvalidClientConfig
        | ErrorKind::Server(ServerErrorKind::NoPerm)
        | ErrorKind::RESP3NotSupported => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) | ErrorKind::Extension => {
            matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
                || err.detail().is_some_and(|d| {
                    d.contains("script") || d.contains("kinsumer:") || d.contains("unknown command")
                })
        }
        _ => false,
    };
    let message = format!("redis: {err}");
    if fatal {
        StoreError::Fatal(message)
    } else {
        StoreError::Transient(message)
    }
}
