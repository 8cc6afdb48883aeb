//! Helpers shared by the integration tests: the server's URL, unique schemas, cleanup.
#![allow(dead_code)]

pub mod private_pg;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kinsumer_postgres::sqlx::{self, AssertSqlSafe, PgPool};
use kinsumer_postgres::{PgLeaseStore, PgStoreConfig};

/// A consumer's config on a fast clock: leases, commits and handoffs within a second or two,
/// so a test of crashes and restarts runs in seconds.
pub fn fast_config(app: &str, client: &str) -> kinsumer_core::Config {
    use std::time::Duration;
    let mut c = kinsumer_core::Config::new(app).with_client_id(client);
    c.heartbeat_interval = Duration::from_millis(200);
    c.lease_ttl = Duration::from_secs(2);
    c.safety_margin = Duration::from_millis(400);
    c.membership_poll_interval = Duration::from_millis(100);
    c.commit_interval = Duration::from_millis(200);
    c.call_timeout = Duration::from_secs(1);
    c.rebalance_interval = Duration::from_secs(1);
    c.drain_timeout = Duration::from_secs(1);
    c
}

pub const DEFAULT_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

/// The shared server's URL, or `None` (skip) when it is not running outside CI.
pub fn url() -> Option<String> {
    kinsumer_test_env::services::require_service("PostgreSQL", "KINSUMER_POSTGRES_URL", DEFAULT_URL)
}

/// A schema name no other test or run uses.
pub fn unique_schema(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "kt_{prefix}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A migrated store for `application` in a fresh schema.
pub async fn store(url: &str, schema: &str, application: &str) -> PgLeaseStore {
    let config = PgStoreConfig::new(url, application).with_schema(schema);
    match PgLeaseStore::connect(config).await {
        Ok(store) => store,
        Err(e) => panic!("connect to {}: {e}", kinsumer_postgres::redact_url(url)),
    }
}

/// Drops a test schema (its name was made by [`unique_schema`]: safe to interpolate).
pub async fn drop_schema(pool: &PgPool, schema: &str) {
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(pool).await {
        eprintln!("could not drop schema {schema}: {e}");
    }
}
