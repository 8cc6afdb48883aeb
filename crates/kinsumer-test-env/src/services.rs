//! Finding the real servers that backend integration tests run against.
//!
//! Every backend test asks [`require_service`] for its server's URL: the environment variable
//! when set, else the default the project's `scripts/services/*.sh` starts. If nothing answers
//! there, the test fails under `CI=true` — a missing service is a failure, never a silent pass —
//! and otherwise skips with a loud message naming the variable to set.
//!
//! URLs are read with the `url` crate, so credentials may hold any character percent-encoded
//! (`%40` for `@`, `%2F` for `/`):
//!
//! ```
//! use kinsumer_test_env::services::authority;
//! assert_eq!(authority("redis://user:pw@127.0.0.1:6379/0"), Some("127.0.0.1:6379".into()));
//! assert_eq!(authority("http://localhost:4567"), Some("localhost:4567".into()));
//! assert_eq!(authority("postgres://u:p%40ss%2Fword@db:5432/x"), Some("db:5432".into()));
//! ```

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use kinsumer_core::store::{ClientId, LeaseStore};

/// The `host:port` of a URL, without scheme, credentials or path: `None` when `url` does not
/// parse or names no port (explicitly, or by its scheme's default, as `http` has 80).
pub fn authority(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str().filter(|h| !h.is_empty())?;
    let port = parsed.port_or_known_default()?;
    Some(format!("{host}:{port}"))
}

/// Whether something accepts TCP connections at the URL's `host:port` within two seconds.
pub fn reachable(url: &str) -> bool {
    let Some(addrs) = authority(url).and_then(|a| a.to_socket_addrs().ok()) else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The PostgreSQL server the tests use (`$KINSUMER_POSTGRES_URL`, or the one
/// `scripts/services/postgres.sh` starts), as [`require_service`] finds it.
pub fn postgres_url() -> Option<String> {
    require_service(
        "PostgreSQL",
        "KINSUMER_POSTGRES_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/postgres",
    )
}

/// The Redis server the tests use (`$KINSUMER_REDIS_URL`, or 127.0.0.1:6379), as
/// [`require_service`] finds it.
pub fn redis_url() -> Option<String> {
    require_service("Redis", "KINSUMER_REDIS_URL", "redis://127.0.0.1:6379")
}

/// The URL of `service` from `$var` (or `default`), if it answers. When it does not: panics
/// under `CI=true`; otherwise prints a loud skip notice and returns `None`.
pub fn require_service(service: &str, var: &str, default: &str) -> Option<String> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    if reachable(&url) {
        return Some(url);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{service} is not reachable at {url}: CI=true requires it (start it with scripts/services.sh, or set {var})"
    );
    eprintln!(
        "\n*** SKIPPED: {service} is not reachable at {url}. Set {var} (or run scripts/services.sh) to run this test. ***\n"
    );
    None
}

/// Removes every lease of `stream` and every client row of a store's application, through the
/// fenced operations (take, finish, delete), so a test leaves nothing behind in a shared server
/// whatever the store. Best effort: errors are ignored.
pub async fn clear(store: &dyn LeaseStore, stream: &str) {
    let me = ClientId::from("test-cleanup");
    for lease in store.leases(stream).await.unwrap_or_default().rows {
        if !lease.finished
            && let Ok(taken) = store.take(stream, &lease.shard, &me, lease.token).await
            && let Some(tenure) = taken.tenure()
        {
            let _ = store.finish(stream, &tenure).await;
        }
        let _ = store.delete_finished(stream, &lease.shard).await;
    }
    for client in store.clients().await.unwrap_or_default().rows {
        let _ = store.deregister(&client.id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `p@ss/word`, percent-encoded as a URL's userinfo must be.
    const ENCODED: &str = "p%40ss%2Fword";

    #[test]
    fn a_percent_encoded_password_with_at_and_slash_works() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        for scheme in ["redis", "postgres", "http"] {
            let url = format!("{scheme}://user:{ENCODED}@127.0.0.1:{port}/db?sslmode=disable");
            assert_eq!(authority(&url), Some(format!("127.0.0.1:{port}")), "{url}");
            assert!(reachable(&url), "{url}");
            // The `url` crate reads the password whole, so it decodes back to what was meant.
            let parsed = url::Url::parse(&url).expect("parses");
            let password = parsed.password().expect("has a password");
            let decoded = url::form_urlencoded::parse(format!("p={password}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned());
            assert_eq!(decoded.as_deref(), Some("p@ss/word"), "{url}");
        }
        drop(listener);
    }

    #[test]
    fn authority_needs_a_host_and_a_port() {
        assert_eq!(authority("redis://127.0.0.1"), None);
        assert_eq!(authority("not a url"), None);
        assert_eq!(authority("http://[::1]:4567/"), Some("[::1]:4567".into()));
        assert_eq!(authority("http://localhost"), Some("localhost:80".into()));
        assert!(!reachable("redis://127.0.0.1"));
    }
}
