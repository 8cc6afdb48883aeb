//! Connection, pool, timeout, retry and TLS settings of a [`crate::PgLeaseStore`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use kinsumer_core::store::StoreError;
use percent_encoding::percent_decode_str;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use url::Url;

pub use sqlx::postgres::PgSslMode;

use crate::schema::validate_schema;

/// How to reach PostgreSQL and how to behave there. `PgStoreConfig::new(url, application)`
/// gives the defaults; every field is public.
///
/// The URL is the usual `postgres://user:password@host:port/database?sslmode=...`. It is never
/// printed: `Debug` shows it with the password replaced by `***`.
#[derive(Clone)]
pub struct PgStoreConfig {
    /// The server's URL (may hold a password: never logged).
    pub url: String,
    /// The application: the namespace of every row this store reads or writes.
    pub application: String,
    /// The schema holding the store's tables (default `kinsumer`); must match
    /// `^[a-z_][a-z0-9_]{0,62}$`, and is always quoted in SQL.
    pub schema: String,
    /// Most pooled connections (default 10).
    pub max_connections: u32,
    /// Connections kept open even when idle (default 0).
    pub min_connections: u32,
    /// How long a call waits for a pooled connection before failing as transient (default 5 s).
    pub acquire_timeout: Duration,
    /// The server-side `statement_timeout` of every store connection (default 5 s): a statement
    /// stuck on a lock fails as transient instead of hanging. `Duration::ZERO` leaves the
    /// server's setting.
    pub statement_timeout: Duration,
    /// The server-side `idle_in_transaction_session_timeout` (default 60 s): a process that
    /// stalls inside a transaction holding a lease row's lock is cut off, so a takeover is never
    /// blocked for long. `Duration::ZERO` leaves the server's setting.
    pub idle_in_transaction_timeout: Duration,
    /// Idle connections are closed after this (default 10 min).
    pub idle_timeout: Option<Duration>,
    /// Whether a pooled connection is pinged (a protocol `Sync`, not a statement) before use,
    /// so a connection broken by a server restart is replaced instead of failing a call
    /// (default true).
    pub test_before_acquire: bool,
    /// How many times a call that failed transiently (connection lost, server restarting,
    /// serialization failure, timeout) is retried inside the store before it returns
    /// `StoreError::Transient` (default 2; the engine retries on its own too).
    pub max_retries: u32,
    /// The pause before the first retry; doubled for each further one up to 64 times this,
    /// with up to half taken off by jitter (the core's back-off; default 100 ms).
    pub retry_backoff: Duration,
    /// The seed of that jitter; `None` (the default) seeds it from the OS. Set it to make a
    /// test's back-off repeat exactly.
    pub backoff_seed: Option<u64>,
    /// How long the store waits for the reply to one statement (default 10 s). A reply that
    /// does not come in time — the network lost it, the server hangs — fails the statement as
    /// a lost connection would: its outcome is unknown, so a write is settled by re-reading
    /// the row. Client-side, unlike `statement_timeout`, so it also bounds a reply lost after
    /// the server answered. `Duration::ZERO` waits forever (the engine's `call_timeout` still
    /// bounds each call, but then an unknown outcome is never settled by the store).
    pub response_timeout: Duration,
    /// Whether [`crate::PgLeaseStore::connect`] runs [`crate::PgLeaseStore::migrate`]
    /// (default true).
    pub migrate_on_connect: bool,
    /// TLS mode; `None` keeps the URL's `sslmode` (default `prefer`). Modes that require TLS
    /// (`Require`, `VerifyCa`, `VerifyFull`) need the crate feature `tls`.
    pub ssl_mode: Option<PgSslMode>,
    /// A PEM file of root certificates to verify the server with (`VerifyCa`/`VerifyFull`).
    pub ssl_root_cert: Option<PathBuf>,
}

impl PgStoreConfig {
    /// The defaults for `url` and `application`.
    pub fn new(url: impl Into<String>, application: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            application: application.into(),
            schema: "kinsumer".to_owned(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(600)),
            test_before_acquire: true,
            max_retries: 2,
            retry_backoff: Duration::from_millis(100),
            backoff_seed: None,
            response_timeout: Duration::from_secs(10),
            migrate_on_connect: true,
            ssl_mode: None,
            ssl_root_cert: None,
        }
    }

    /// The same config with this schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Checks the fields and builds the connect and pool options.
    pub(crate) fn build(&self) -> Result<(PgConnectOptions, PgPoolOptions), StoreError> {
        validate_schema(&self.schema)?;
        if self.application.is_empty() {
            return Err(StoreError::Fatal(
                "PgStoreConfig.application must not be empty".to_owned(),
            ));
        }
        if self.max_connections == 0 || self.min_connections > self.max_connections {
            return Err(StoreError::Fatal(format!(
                "PgStoreConfig.max_connections must be >= 1 and >= min_connections, got {} and {}",
                self.max_connections, self.min_connections
            )));
        }
        // Never echo the URL: it may hold a password.
        let mut options = PgConnectOptions::from_str(&self.url).map_err(|e| {
            StoreError::Fatal(format!(
                "PgStoreConfig.url ({}) does not parse: {}",
                redact_url(&self.url),
                redact_text(&e.to_string(), &self.url)
            ))
        })?;
        if let Some(mode) = self.ssl_mode {
            options = options.ssl_mode(mode);
        }
        if let Some(path) = &self.ssl_root_cert {
            options = options.ssl_root_cert(path);
        }
        let needs_tls = matches!(
            options.get_ssl_mode(),
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
        );
        if needs_tls && !cfg!(feature = "tls") {
            return Err(StoreError::Fatal(
                "PgStoreConfig: sslmode requires TLS, but kinsumer-postgres was built without \
                 its `tls` feature (`postgres-tls` in the kinsumer crate)"
                    .to_owned(),
            ));
        }
        let mut settings: Vec<(&str, String)> = Vec::new();
        if !self.statement_timeout.is_zero() {
            settings.push((
                "statement_timeout",
                self.statement_timeout.as_millis().to_string(),
            ));
        }
        if !self.idle_in_transaction_timeout.is_zero() {
            settings.push((
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout.as_millis().to_string(),
            ));
        }
        options = options
            .options(settings)
            .application_name("kinsumer-postgres");
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(self.acquire_timeout)
            .idle_timeout(self.idle_timeout)
            .test_before_acquire(self.test_before_acquire);
        Ok((options, pool))
    }
}

impl fmt::Debug for PgStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("application", &self.application)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .field("idle_timeout", &self.idle_timeout)
            .field("test_before_acquire", &self.test_before_acquire)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("backoff_seed", &self.backoff_seed)
            .field("response_timeout", &self.response_timeout)
            .field("migrate_on_connect", &self.migrate_on_connect)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// `url` fit to print: the password of its user-info and the value of every query parameter
/// whose name holds `password` (`password=`, libpq's `sslpassword=`) replaced by `***`. Text
/// that is not a URL with an authority keeps only its scheme when it may hold credentials (a
/// URL with a typo, say): what cannot be parsed cannot be shown safely. Any URL, not only
/// PostgreSQL's: the `kinsumer` binary redacts every store URL with it.
///
/// ```
/// use kinsumer_postgres::redact_url;
/// assert_eq!(
///     redact_url("postgres://app:s3cret@db:5432/x?password=s3cret&sslmode=require"),
///     "postgres://app:***@db:5432/x?password=***&sslmode=require"
/// );
/// assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
/// assert_eq!(redact_url("redis://:p%40ss%2Fw@cache:6379"), "redis://:***@cache:6379");
/// assert_eq!(redact_url("mysql://u:s3cret@h:99999/db"), "mysql://***");
/// assert_eq!(redact_url("user:s3cret@host"), "***");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut parsed = match Url::parse(url) {
        Ok(parsed) if !parsed.cannot_be_a_base() => parsed,
        // `localhost:6379` parses as scheme `localhost`; with no `@` it holds no user-info.
        Ok(_) if !url.contains('@') => return url.to_owned(),
        _ => {
            return url
                .split_once("://")
                .map_or_else(|| "***".to_owned(), |(scheme, _)| format!("{scheme}://***"));
        }
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let secret = |key: &str| key.to_ascii_lowercase().contains("password");
    if parsed.query_pairs().any(|(key, _)| secret(key.as_ref())) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if secret(key.as_ref()) {
                    "***".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// `text` with the URL's password removed, as written in the URL (percent-encoded) and as the
/// server saw it (decoded), for error messages.
fn redact_text(text: &str, url: &str) -> String {
    let Some(written) = Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .filter(|p| !p.is_empty())
    else {
        return text.to_owned();
    };
    let decoded = percent_decode_str(&written)
        .decode_utf8_lossy()
        .into_owned();
    text.replace(&written, "***").replace(&decoded, "***")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A password holding `@`, `/` or `:` is percent-encoded in the URL: it never shows,
    /// written or decoded, and a URL that does not parse shows nothing past its scheme.
    #[test]
    fn passwords_with_url_delimiters_never_show() {
        let url = "postgres://app:p%40ss%2Fw%3Ard@db:5432/x";
        assert_eq!(redact_url(url), "postgres://app:***@db:5432/x");
        let message = "password authentication failed for p@ss/w:rd (p%40ss%2Fw%3Ard)";
        let redacted = redact_text(message, url);
        assert_eq!(redacted, "password authentication failed for *** (***)");
        assert_eq!(
            redact_url("postgres://app:s3cret@db:99999/x"),
            "postgres://***"
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config = PgStoreConfig::new("postgres://u:hunter2@h:5432/db", "app");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("u:***@h:5432"), "{shown}");
    }

    #[test]
    fn bad_schema_names_are_refused() {
        for bad in ["", "Kinsumer", "a-b", "x\"; drop", "1abc", &"a".repeat(64)] {
            let config = PgStoreConfig::new("postgres://h/db", "app").with_schema(bad);
            assert!(
                matches!(config.build(), Err(StoreError::Fatal(_))),
                "{bad} should be refused"
            );
        }
        let ok = PgStoreConfig::new("postgres://h/db", "app").with_schema("_k9");
        assert!(ok.build().is_ok());
    }

    #[test]
    fn a_bad_url_error_does_not_leak_the_password() {
        let config = PgStoreConfig::new("postgres://u:hunter2@h:notaport/db", "app");
        match config.build() {
            Err(StoreError::Fatal(msg)) => assert!(!msg.contains("hunter2"), "{msg}"),
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }
}
