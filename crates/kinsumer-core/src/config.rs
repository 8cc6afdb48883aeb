//! Consumer configuration, with the defaults of the design and validation that names the field
//! and the rule it broke.
//!
//! ```
//! use std::time::Duration;
//! use kinsumer_core::config::{Config, ConfigError};
//!
//! let config = Config::new("orders-app").with_client_id("worker-1");
//! assert!(config.validate().is_ok());
//! assert_eq!(config.lease_ttl, Duration::from_secs(10));
//!
//! // A heartbeat that cannot beat twice within the lease TTL is rejected, by name.
//! let mut bad = config.clone();
//! bad.heartbeat_interval = Duration::from_secs(6);
//! let err = bad.validate().unwrap_err();
//! assert!(matches!(err, ConfigError::Invalid { field: "heartbeat_interval", .. }));
//! ```

use std::time::Duration;

use crate::faults::EngineFaults;
use crate::position::InitialPosition;

/// The longest any configured duration may be.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// What to do when a stored checkpoint fell off the stream's retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrimmedPolicy {
    /// Resume at the oldest retained record, with a warning (the default).
    ResumeAtTrimHorizon,
    /// Stop the consumer with an error naming the shard: an operator decides, and resets it.
    Fail,
}

/// How records handed out by [`crate::Consumer::records`] are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// The caller calls [`crate::Record::ack`] after processing (the default).
    Explicit,
    /// A record is acked when the caller drops it — after processing, not when it is handed
    /// out, so a crash mid-processing still redelivers it.
    OnDrop,
}

/// An invalid configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field broke a rule.
    #[error("invalid config: `{field}` {rule}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// The rule it broke, with the value.
        rule: String,
    },
}

/// Everything a consumer needs to know besides its source and store.
#[derive(Clone, Debug)]
pub struct Config {
    /// The application: a group of clients sharing the work (a namespace in every store).
    pub application: String,
    /// This client's stable id; default `hostname-pid-random`.
    pub client_id: String,
    /// How often this client bumps its heartbeat counter (default 2 s).
    pub heartbeat_interval: Duration,
    /// How long a client's counter may stand still before others consider it dead (default 10 s).
    pub lease_ttl: Duration,
    /// A client whose own heartbeat has failed for `lease_ttl - safety_margin` stops handing out
    /// records and drops its leases before anyone may take them (default 2 s).
    pub safety_margin: Duration,
    /// How often the acked watermark is written, if it moved (default 1 s).
    pub commit_interval: Duration,
    /// The least time between two reads of one shard that is behind (default 200 ms: Kinesis
    /// allows 5 per second per shard, shared by every application on the stream).
    pub poll_interval: Duration,
    /// The least time between two reads of one shard that is caught up: its last read returned
    /// nothing, or fewer records than asked for at the tip (`millis_behind_latest` 0). Default
    /// 1 s, as KCL's idle time between reads: an idle shard costs one read a second, so other
    /// applications on the stream keep most of the shard's 5 reads/s. Never less than
    /// `poll_interval`; a reader that is pushed its records (enhanced fan-out) is not slowed.
    pub idle_poll_interval: Duration,
    /// The most records one read asks for (default 10,000, Kinesis's maximum).
    pub max_records_per_read: usize,
    /// How often client rows are read to notice joins and leaves, and how often a client polls a
    /// lease it waits for during a handoff (default 200 ms).
    pub membership_poll_interval: Duration,
    /// How often every lease row is read and the assignment recomputed even when no client
    /// joined, left or died (those trigger it at once); default 5 s. It is how a client learns
    /// of leases other clients created (children after a reshard). On a slow store the read is
    /// spaced further: at least 2 × live clients × the last read's duration apart, so a
    /// fleet's full reads never keep the store busy more than about half the time.
    pub rebalance_interval: Duration,
    /// How often the stream's shards are listed to find new ones (default 30 s; also after
    /// every shard end).
    pub shard_sync_interval: Duration,
    /// How long a handoff or shutdown waits for records already handed out to be acked before
    /// it releases with what is acked (default 5 s).
    pub drain_timeout: Duration,
    /// The longest a graceful shutdown takes, whatever the store does (default 25 s, so a
    /// process fits Kubernetes' default 30 s grace period with time to exit). It covers leaving
    /// the membership, the drain, the final checkpoints and releases; what is not done by then
    /// is left as after a crash (leases expire after `lease_ttl`). Must exceed `drain_timeout`.
    pub shutdown_timeout: Duration,
    /// How long the application may make no progress before the consumer gives up the work it
    /// holds (default 5 min, as Kafka's `max.poll.interval.ms`; `None` turns it off):
    /// - a record handed out by [`crate::Consumer::records`] and not acked for this long, or a
    ///   batch handler call that has not returned for this long: the shard is released (what is
    ///   acked is committed) to another client;
    /// - a record stream not polled for this long while records wait in it: the consumer
    ///   releases every lease and leaves the fleet until it is polled again.
    ///
    /// Each stall is logged with the shard and the record holding it, counted in
    /// `kinsumer_stalls_total` and listed by [`crate::StatusHandle::stalls`]. Set it above the
    /// longest a record or batch may legitimately take.
    pub stall_timeout: Option<Duration>,
    /// The most un-acked records one shard may have fetched (default 10,000).
    pub max_unacked_records: usize,
    /// The most un-acked bytes one shard may have fetched (default 16 MiB).
    pub max_unacked_bytes: usize,
    /// Where a root shard with no checkpoint starts (default `TrimHorizon`).
    pub initial_position: InitialPosition,
    /// What to do when a checkpoint fell off retention.
    pub on_trimmed: TrimmedPolicy,
    /// How records of the record stream are acked.
    pub ack_mode: AckMode,
    /// The longest back-off after repeated errors (default 10 s).
    pub max_backoff: Duration,
    /// A store or source call that takes longer fails as transient (default 10 s), so a hung
    /// connection cannot freeze rebalancing or shutdown.
    pub call_timeout: Duration,
    /// Seed of the jitter RNG; `None` seeds from the OS. Set it for reproducible simulations.
    pub rng_seed: Option<u64>,
    /// Faults for kinsumer's own tests, public with the `engine-faults` feature only.
    #[cfg(feature = "engine-faults")]
    #[doc(hidden)]
    pub faults: EngineFaults,
    #[cfg(not(feature = "engine-faults"))]
    pub(crate) faults: EngineFaults,
}

/// The rule for application names and client ids, as [`is_valid_name`] checks it.
pub const NAME_RULE: &str = "1-128 characters of [A-Za-z0-9-_.:]";

/// Whether `name` may be an application name or a client id: 1–128 characters of
/// `[A-Za-z0-9-_.:]`. Stores may build keys on it: a valid name never holds `#`, `/` or a
/// space, so qualified keys of different names never collide.
pub fn is_valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl Config {
    /// The defaults of the design, for `application`, with a generated client id.
    pub fn new(application: impl Into<String>) -> Self {
        Self {
            application: application.into(),
            client_id: default_client_id(),
            heartbeat_interval: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            safety_margin: Duration::from_secs(2),
            commit_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            idle_poll_interval: Duration::from_secs(1),
            max_records_per_read: 10_000,
            membership_poll_interval: Duration::from_millis(200),
            rebalance_interval: Duration::from_secs(5),
            shard_sync_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(25),
            stall_timeout: Some(Duration::from_secs(300)),
            max_unacked_records: 10_000,
            max_unacked_bytes: 16 << 20,
            initial_position: InitialPosition::TrimHorizon,
            on_trimmed: TrimmedPolicy::ResumeAtTrimHorizon,
            ack_mode: AckMode::Explicit,
            max_backoff: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
            rng_seed: None,
            faults: EngineFaults::default(),
        }
    }

    /// The same config with this client id.
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Checks every rule; the first broken one is returned, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, rule: String) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { field, rule })
        }
        if !is_valid_name(&self.application) {
            return invalid(
                "application",
                format!("must be {NAME_RULE}, got {:?}", self.application),
            );
        }
        if !is_valid_name(&self.client_id) {
            return invalid(
                "client_id",
                format!("must be {NAME_RULE}, got {:?}", self.client_id),
            );
        }
        let durations = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("lease_ttl", self.lease_ttl),
            ("safety_margin", self.safety_margin),
            ("commit_interval", self.commit_interval),
            ("poll_interval", self.poll_interval),
            ("idle_poll_interval", self.idle_poll_interval),
            ("membership_poll_interval", self.membership_poll_interval),
            ("rebalance_interval", self.rebalance_interval),
            ("shard_sync_interval", self.shard_sync_interval),
            ("drain_timeout", self.drain_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            (
                "stall_timeout",
                self.stall_timeout.unwrap_or(Duration::from_secs(1)),
            ),
            ("max_backoff", self.max_backoff),
            ("call_timeout", self.call_timeout),
        ];
        for (field, value) in durations {
            if value.is_zero() && field != "drain_timeout" {
                return invalid(field, "must be greater than zero".into());
            }
            // Bounded so that no deadline computed from it can overflow.
            if value > MAX_DURATION {
                return invalid(field, format!("must be at most one day (got {value:?})"));
            }
        }
        if self.heartbeat_interval * 2 >= self.lease_ttl {
            return invalid(
                "heartbeat_interval",
                format!(
                    "must be less than lease_ttl / 2 (got {:?} with lease_ttl {:?})",
                    self.heartbeat_interval, self.lease_ttl
                ),
            );
        }
        if self.safety_margin + self.heartbeat_interval >= self.lease_ttl {
            return invalid(
                "safety_margin",
                format!(
                    "plus heartbeat_interval must be less than lease_ttl (got {:?} + {:?} with lease_ttl {:?})",
                    self.safety_margin, self.heartbeat_interval, self.lease_ttl
                ),
            );
        }
        if self.drain_timeout >= self.shutdown_timeout {
            return invalid(
                "shutdown_timeout",
                format!(
                    "must be greater than drain_timeout (got {:?} with drain_timeout {:?})",
                    self.shutdown_timeout, self.drain_timeout
                ),
            );
        }
        if self.membership_poll_interval >= self.lease_ttl {
            return invalid(
                "membership_poll_interval",
                format!("must be less than lease_ttl ({:?})", self.lease_ttl),
            );
        }
        if !(1..=10_000).contains(&self.max_records_per_read) {
            return invalid(
                "max_records_per_read",
                format!(
                    "must be between 1 and 10000 (got {})",
                    self.max_records_per_read
                ),
            );
        }
        if self.max_unacked_records == 0 {
            return invalid("max_unacked_records", "must be at least 1".into());
        }
        if self.max_unacked_bytes < 1 << 20 {
            return invalid(
                "max_unacked_bytes",
                format!(
                    "must be at least 1 MiB, the largest Kinesis record (got {})",
                    self.max_unacked_bytes
                ),
            );
        }
        Ok(())
    }
}

/// `hostname-pid-random`, from what the OS offers without extra dependencies.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        crate::rng::os_seed() as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(c: &Config) -> &'static str {
        match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            Ok(()) => "ok",
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::new("app");
        assert_eq!(field_of(&c), "ok");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.commit_interval, Duration::from_secs(1));
        assert!(c.poll_interval >= Duration::from_millis(200));
        assert!(c.client_id.split('-').count() >= 3, "{}", c.client_id);
    }

    #[test]
    fn each_rule_names_its_field() {
        let base = Config::new("app").with_client_id("c1");
        type Breaker = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("application", Box::new(|c| c.application = String::new())),
            ("application", Box::new(|c| c.application = "a b".into())),
            ("client_id", Box::new(|c| c.client_id = "x/y".into())),
            (
                "heartbeat_interval",
                Box::new(|c| c.heartbeat_interval = Duration::ZERO),
            ),
            (
                "heartbeat_interval",
                Box::new(|c| c.heartbeat_interval = Duration::from_secs(5)),
            ),
            ("lease_ttl", Box::new(|c| c.lease_ttl = Duration::ZERO)),
            (
                "safety_margin",
                Box::new(|c| c.safety_margin = Duration::from_secs(8)),
            ),
            (
                "commit_interval",
                Box::new(|c| c.commit_interval = Duration::ZERO),
            ),
            (
                "poll_interval",
                Box::new(|c| c.poll_interval = Duration::ZERO),
            ),
            (
                "safety_margin",
                Box::new(|c| c.safety_margin = Duration::ZERO),
            ),
            (
                "drain_timeout",
                Box::new(|c| c.drain_timeout = Duration::MAX),
            ),
            (
                "heartbeat_interval",
                Box::new(|c| c.heartbeat_interval = Duration::MAX),
            ),
            (
                "call_timeout",
                Box::new(|c| c.call_timeout = Duration::ZERO),
            ),
            (
                "max_records_per_read",
                Box::new(|c| c.max_records_per_read = 10_001),
            ),
            (
                "max_records_per_read",
                Box::new(|c| c.max_records_per_read = 0),
            ),
            (
                "max_unacked_records",
                Box::new(|c| c.max_unacked_records = 0),
            ),
            ("max_unacked_bytes", Box::new(|c| c.max_unacked_bytes = 10)),
            (
                "membership_poll_interval",
                Box::new(|c| c.membership_poll_interval = Duration::from_secs(60)),
            ),
            (
                "stall_timeout",
                Box::new(|c| c.stall_timeout = Some(Duration::ZERO)),
            ),
            (
                "stall_timeout",
                Box::new(|c| c.stall_timeout = Some(Duration::MAX)),
            ),
            (
                "shutdown_timeout",
                Box::new(|c| c.shutdown_timeout = Duration::from_secs(5)),
            ),
        ];
        for (field, break_it) in cases {
            let mut c = base.clone();
            break_it(&mut c);
            assert_eq!(field_of(&c), field);
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(field), "{msg}");
        }
    }
}
