//! Backends chosen by URL, the same way in every subcommand.
//!
//! - `--store memory://` (this process only), `redis://…` / `rediss://…`,
//!   `postgres://…` / `postgresql://…`, `dynamodb://TABLE?endpoint=…&region=…`;
//! - `--source kinesis://STREAM?endpoint=…&region=…` (or `kinesis://arn:aws:kinesis:…`).
//!
//! Positions (`reset --to`, `tail --from`) and durations are parsed here too, so every
//! subcommand takes them the same way: see [`StartAt`].
//!
//! AWS credentials come from the standard chain (environment, profile, web identity, IMDS);
//! `endpoint` points a client at an emulator, `region` overrides the chain's region. A URL that
//! does not parse is a [`UrlError`] naming what is wrong, with an example of a good one.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kinsumer::dynamo::{DynamoConfig, DynamoLeaseStore};
use kinsumer::kinesis::KinesisSource;
use kinsumer::layer::{Layered, Timeout};
use kinsumer::postgres::{PgLeaseStore, PgStoreConfig, redact_url};
use kinsumer::redis::RedisLeaseStore;
use kinsumer::testkit::MemoryLeaseStore;
use kinsumer::{Checkpoint, LeaseStore, Position, SequenceNumber};
use percent_encoding::percent_decode_str;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

/// Examples printed with every URL error and in `--help`.
pub const STORE_EXAMPLES: &str = "memory://, redis://127.0.0.1:6379, \
postgres://user:password@127.0.0.1:5432/db, dynamodb://kinsumer?region=eu-west-1";
/// See [`STORE_EXAMPLES`].
pub const SOURCE_EXAMPLES: &str =
    "kinesis://orders?region=eu-west-1, kinesis://orders?endpoint=http://127.0.0.1:4567";

/// A `--store` or `--source` URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    /// Which flag it came from (`--store`, `--source`).
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let examples = if self.flag == "--source" {
            SOURCE_EXAMPLES
        } else {
            STORE_EXAMPLES
        };
        write!(
            f,
            "bad {} URL: {} (examples: {examples})",
            self.flag, self.reason
        )
    }
}

impl std::error::Error for UrlError {}

/// Where an AWS client goes: `endpoint` and `region` from the URL's query, else the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsTarget {
    /// `?endpoint=` (an emulator), if given.
    pub endpoint: Option<String>,
    /// `?region=`, if given.
    pub region: Option<String>,
}

/// A parsed `--store` URL. `Debug` never shows credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: an empty store in this process.
    Memory,
    /// `redis://` or `rediss://`, passed to the Redis client as written.
    Redis(String),
    /// `postgres://` or `postgresql://`, passed to the PostgreSQL client as written; `?schema=`
    /// is taken out and picks the schema (default `kinsumer`).
    Postgres {
        /// The URL without `schema`.
        url: String,
        /// The schema, if given.
        schema: Option<String>,
    },
    /// `dynamodb://TABLE`.
    Dynamo {
        /// The table.
        table: String,
        /// Endpoint and region.
        aws: AwsTarget,
    },
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory://"),
            StoreUrl::Redis(url) => write!(f, "Redis({})", redact(url)),
            StoreUrl::Postgres { url, schema } => {
                write!(f, "Postgres({}, schema {schema:?})", redact(url))
            }
            StoreUrl::Dynamo { table, aws } => write!(f, "Dynamo({table}, {aws:?})"),
        }
    }
}

/// The URL as given, without credentials (for output).
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory://"),
            StoreUrl::Redis(url) => f.write_str(&redact(url)),
            StoreUrl::Postgres { url, schema } => {
                f.write_str(&redact(url))?;
                match schema {
                    Some(schema) if url.contains('?') => write!(f, "&schema={schema}"),
                    Some(schema) => write!(f, "?schema={schema}"),
                    None => Ok(()),
                }
            }
            StoreUrl::Dynamo { table, aws } => {
                write!(f, "dynamodb://{table}")?;
                let query: Vec<String> = [("endpoint", &aws.endpoint), ("region", &aws.region)]
                    .into_iter()
                    .filter_map(|(key, value)| Some(format!("{key}={}", value.as_ref()?)))
                    .collect();
                if !query.is_empty() {
                    write!(f, "?{}", query.join("&"))?;
                }
                Ok(())
            }
        }
    }
}

/// A parsed `--source` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUrl {
    /// `kinesis://STREAM` or `kinesis://arn:aws:kinesis:…:stream/NAME`.
    Kinesis {
        /// A stream name or ARN.
        stream: String,
        /// Endpoint and region.
        aws: AwsTarget,
    },
}

impl SourceUrl {
    /// The stream's name (the last part of an ARN).
    pub fn stream_name(&self) -> &str {
        match self {
            SourceUrl::Kinesis { stream, .. } => stream
                .strip_prefix("arn:")
                .and_then(|_| stream.rsplit_once("stream/"))
                .map_or(stream.as_str(), |(_, name)| name),
        }
    }
}

/// `url` with any `user:password@` replaced by `***@`, and the value of every query parameter
/// whose name holds `password` (PostgreSQL's `?password=`, `sslpassword=`) by `***` — see
/// [`redact_url`], which this extends by hiding the user name too. Text that has a scheme but
/// does not parse as a URL keeps only its scheme.
pub fn redact(text: &str) -> String {
    let redacted = redact_url(text);
    match Url::parse(&redacted) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            // Both fail only for URLs that cannot hold credentials, which then hold none.
            let _ = url.set_password(None);
            let _ = url.set_username("***");
            url.to_string()
        }
        _ => redacted,
    }
}

/// `text` (an error message, say) with every URL in it redacted as [`redact`] does: a URL runs
/// from its scheme to the next white space or quote.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The scheme: the letters (and + - .) right before `://`.
        let start = rest[..i]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(j, c)| j + c.len_utf8());
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`'))
            .map_or(rest.len(), |j| i + j);
        out.push_str(&rest[..start]);
        out.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `text` split at its `://` (a bare `host:port` would otherwise parse as scheme `host`).
fn split_scheme<'a>(flag: &'static str, text: &'a str) -> Result<(&'a str, &'a str), UrlError> {
    text.split_once("://").ok_or_else(|| UrlError {
        flag,
        reason: format!("`{}` has no scheme (`…://`)", redact(text)),
    })
}

/// Parses `text` as a URL with an authority (`scheme://…`).
fn parse_url(flag: &'static str, text: &str) -> Result<Url, UrlError> {
    split_scheme(flag, text)?;
    Url::parse(text).map_err(|e| UrlError {
        flag,
        reason: format!("`{}`: {e}", redact(text)),
    })
}

/// The AWS query of `url` (only `endpoint` and `region`), percent-decoded.
fn aws_query(flag: &'static str, url: &Url) -> Result<AwsTarget, UrlError> {
    let fail = |reason: String| UrlError { flag, reason };
    let mut aws = AwsTarget::default();
    for (key, value) in url.query_pairs() {
        if value.is_empty() {
            return Err(fail(format!("`{key}` has no value")));
        }
        match &*key {
            "endpoint" if value.starts_with("http://") || value.starts_with("https://") => {
                aws.endpoint = Some(value.into_owned());
            }
            "endpoint" => {
                return Err(fail(format!(
                    "endpoint `{value}` must start with http:// or https://"
                )));
            }
            "region" => aws.region = Some(value.into_owned()),
            other => {
                return Err(fail(format!(
                    "unknown parameter `{other}` (known: endpoint, region)"
                )));
            }
        }
    }
    Ok(aws)
}

/// The name in `scheme://NAME[/]`: a table or stream, percent-decoded.
fn aws_name(flag: &'static str, what: &str, url: &Url) -> Result<String, UrlError> {
    let fail = |reason: String| UrlError { flag, reason };
    let name = url.host_str().unwrap_or_default();
    if name.is_empty() {
        return Err(fail(format!("no {what} name after `://`")));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(fail(format!(
            "`{}` after the {what} name: a name has no path",
            url.path()
        )));
    }
    percent_decode_str(name)
        .decode_utf8()
        .map(|n| n.into_owned())
        .map_err(|_| fail(format!("the {what} name is not UTF-8")))
}

impl std::str::FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        const FLAG: &str = "--store";
        let fail = |reason: &str| UrlError {
            flag: FLAG,
            reason: reason.to_owned(),
        };
        let url = parse_url(FLAG, text)?;
        let has_host = url.host_str().is_some_and(|h| !h.is_empty());
        match url.scheme() {
            "memory" if !has_host && matches!(url.path(), "" | "/") && url.query().is_none() => {
                Ok(StoreUrl::Memory)
            }
            "memory" => Err(fail("memory:// takes nothing after `://`")),
            "redis" | "rediss" if has_host => Ok(StoreUrl::Redis(text.to_owned())),
            "redis" | "rediss" => Err(fail("no host after redis://")),
            "postgres" | "postgresql" if text.ends_with("://") => {
                Err(fail("no host after postgres://"))
            }
            "postgres" | "postgresql" => {
                // `schema` is ours; every other parameter goes to the PostgreSQL client.
                let mut schema = None;
                let mut kept = Vec::new();
                for (key, value) in url.query_pairs() {
                    match &*key {
                        "schema" if !value.is_empty() => schema = Some(value.into_owned()),
                        _ => kept.push((key.into_owned(), value.into_owned())),
                    }
                }
                let url = if schema.is_none() {
                    text.to_owned() // as written
                } else {
                    let mut url = url.clone();
                    url.set_query(None);
                    if !kept.is_empty() {
                        url.query_pairs_mut().extend_pairs(kept);
                    }
                    url.to_string()
                };
                Ok(StoreUrl::Postgres { url, schema })
            }
            "dynamodb" => Ok(StoreUrl::Dynamo {
                table: aws_name(FLAG, "table", &url)?,
                aws: aws_query(FLAG, &url)?,
            }),
            other => Err(fail(&format!(
                "unknown scheme `{other}://` (known: memory, redis, rediss, postgres, dynamodb)"
            ))),
        }
    }
}

impl std::str::FromStr for SourceUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        const FLAG: &str = "--source";
        let (scheme, rest) = split_scheme(FLAG, text)?;
        match scheme {
            // An ARN is no URL authority (its colons are not a port): the query is parsed
            // on its own.
            "kinesis" if rest.starts_with("arn:") => {
                let (arn, query) = rest.split_once('?').unwrap_or((rest, ""));
                let url = parse_url(FLAG, &format!("kinesis://arn?{query}"))?;
                Ok(SourceUrl::Kinesis {
                    stream: arn.to_owned(),
                    aws: aws_query(FLAG, &url)?,
                })
            }
            "kinesis" => {
                let url = parse_url(FLAG, text)?;
                Ok(SourceUrl::Kinesis {
                    stream: aws_name(FLAG, "stream", &url)?,
                    aws: aws_query(FLAG, &url)?,
                })
            }
            other => Err(UrlError {
                flag: FLAG,
                reason: format!("unknown scheme `{other}://` (known: kinesis)"),
            }),
        }
    }
}

/// `error` without the AWS SDK's debug dump: the SDK's `DisplayErrorContext` ends a readable
/// message with ` (ServiceError(… raw response, headers …))`, which is no help on a terminal.
pub fn brief(error: &str) -> String {
    const DUMPS: [&str; 5] = [
        " (ServiceError(",
        " (DispatchFailure(",
        " (TimeoutError(",
        " (ResponseError(",
        " (ConstructionFailure(",
    ];
    let end = DUMPS
        .iter()
        .filter_map(|dump| error.find(dump))
        .min()
        .unwrap_or(error.len());
    error[..end].to_owned()
}

/// An error opening a backend: what was being opened, and why it failed.
#[derive(Debug)]
pub struct OpenError(pub String);

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

/// The shared AWS configuration for `aws`: the standard chain, then the URL's overrides.
pub async fn aws_config(
    aws: &AwsTarget,
) -> Result<kinsumer::aws::aws_config::SdkConfig, OpenError> {
    // The library's loader: the standard chain over its one rustls (ring) HTTP client.
    let mut loader = kinsumer::aws::loader();
    if let Some(region) = &aws.region {
        loader = loader.region(kinsumer::aws::aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &aws.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(OpenError(
            "no AWS region: add `?region=…` to the URL or set AWS_REGION".to_owned(),
        ));
    }
    Ok(config)
}

/// How a subcommand uses a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads and fenced writes of what exists: never creates or migrates anything (a missing
    /// PostgreSQL schema, or one at another version, is an error saying so).
    Existing,
    /// As a consumer: a PostgreSQL schema is created or migrated.
    Consumer,
}

/// Opens the lease store `url` for `application`. Never creates a DynamoDB table: a missing
/// table is an error naming it.
pub async fn open_store(
    url: &StoreUrl,
    application: &str,
    access: Access,
) -> Result<Arc<dyn LeaseStore>, OpenError> {
    // A server that accepts connections and never answers must not hang the command.
    tokio::time::timeout(OPEN_TIMEOUT, open_store_now(url, application, access))
        .await
        .map_err(|_| OpenError(format!("{url}: no answer in {} s", OPEN_TIMEOUT.as_secs())))?
}

/// How long opening a store may take.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn open_store_now(
    url: &StoreUrl,
    application: &str,
    access: Access,
) -> Result<Arc<dyn LeaseStore>, OpenError> {
    let store: Arc<dyn LeaseStore> = match url {
        StoreUrl::Memory => Arc::new(MemoryLeaseStore::new()),
        StoreUrl::Redis(url) => Arc::new(
            RedisLeaseStore::connect(url, application)
                .await
                .map_err(|e| OpenError(format!("Redis at {}: {e}", redact(url))))?,
        ),
        StoreUrl::Postgres { url, schema } => {
            let mut config = PgStoreConfig::new(url.clone(), application);
            if let Some(schema) = schema {
                config = config.with_schema(schema.clone());
            }
            config.migrate_on_connect = access == Access::Consumer;
            let failed =
                |e: kinsumer::StoreError| OpenError(format!("PostgreSQL at {}: {e}", redact(url)));
            let store = PgLeaseStore::connect(config).await.map_err(failed)?;
            if access == Access::Existing {
                store.check_schema().await.map_err(failed)?;
            }
            Arc::new(store)
        }
        StoreUrl::Dynamo { table, aws } => {
            let sdk = aws_config(aws).await?;
            let client = kinsumer::dynamo::aws_sdk_dynamodb::Client::new(&sdk);
            let config = DynamoConfig::new(application).with_table(table.clone());
            Arc::new(
                DynamoLeaseStore::open(client, config)
                    .await
                    .map_err(|e| OpenError(format!("DynamoDB table {table}: {e}")))?,
            )
        }
    };
    Ok(match access {
        // An operator's command: every call of it has a time limit, so a store that accepts
        // connections and stops answering ends the command with an error instead of hanging
        // it. A consumer limits its calls itself (`call_timeout`).
        Access::Existing => Arc::new(Layered::new(store, Timeout(CALL_TIMEOUT))),
        Access::Consumer => store,
    })
}

/// How long one store or source call of an operator's command may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kinesis client for `aws` (for the calls `KinesisSource` does not make, such as
/// `reset`'s check of a sequence number).
pub async fn kinesis_client(aws: &AwsTarget) -> Result<aws_sdk_kinesis::Client, OpenError> {
    // Resolving the region may ask the instance metadata service: bounded too.
    let sdk = tokio::time::timeout(OPEN_TIMEOUT, aws_config(aws))
        .await
        .map_err(|_| {
            OpenError(format!(
                "the AWS configuration took over {} s to load",
                OPEN_TIMEOUT.as_secs()
            ))
        })??;
    Ok(aws_sdk_kinesis::Client::new(&sdk))
}

/// Opens the source `url`.
pub async fn open_source(url: &SourceUrl) -> Result<KinesisSource, OpenError> {
    match url {
        SourceUrl::Kinesis { stream, aws } => {
            let client = kinesis_client(aws)
                .await
                .map_err(|e| OpenError(format!("Kinesis stream {stream}: {e}")))?;
            if stream.starts_with("arn:") {
                KinesisSource::from_arn(client, stream.clone())
                    .map_err(|e| OpenError(format!("Kinesis stream {stream}: {e}")))
            } else {
                Ok(KinesisSource::new(client, stream.clone()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Positions and durations, given the same way to every subcommand (`reset --to`, `tail --from`).

/// Examples printed with every position error and in `--help`.
pub const POSITION_EXAMPLES: &str = "trim-horizon, latest, timestamp:2026-11-26T07:00:00Z, \
timestamp:2026-11-26T08:00:00.250+01:00, sequence:49590338271490256608559692538361571095921575989136588898";

/// A position in a shard named on the command line.
///
/// `sequence:N` means *after* record N, as if N was the last record processed (the checkpoint
/// `AFTER:N/0`); for a record of a KPL aggregate, `sequence:N/S` means after its user record S.
/// `tail --from sequence:N` therefore prints the records that follow N, the same records a
/// consumer would deliver after `reset --to sequence:N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// `trim-horizon`: the oldest record still retained.
    TrimHorizon,
    /// `latest`: only records written after the reader opens.
    Latest,
    /// `timestamp:RFC3339`: the first record that arrived at or after this time (ms since the
    /// Unix epoch).
    Timestamp(u64),
    /// `sequence:N[/S]`: right after this record.
    After(Position),
}

impl StartAt {
    /// The checkpoint a reader (or a reset lease) starts from.
    pub fn checkpoint(&self) -> Checkpoint {
        match self {
            StartAt::TrimHorizon => Checkpoint::TrimHorizon,
            StartAt::Latest => Checkpoint::Latest,
            StartAt::Timestamp(ms) => Checkpoint::AtTimestamp(*ms),
            StartAt::After(p) => Checkpoint::After(p.clone()),
        }
    }

    /// Whether this names one record, which exists in one shard only.
    pub fn is_sequence(&self) -> bool {
        matches!(self, StartAt::After(_))
    }
}

/// A position that does not parse: what is wrong, with examples of good ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionError(String);

impl fmt::Display for PositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad position: {} (examples: {POSITION_EXAMPLES})",
            self.0
        )
    }
}

impl std::error::Error for PositionError {}

impl std::str::FromStr for StartAt {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, PositionError> {
        let (kind, value) = match text.split_once(':') {
            Some((kind, value)) => (kind, Some(value)),
            None => (text, None),
        };
        match (kind.to_ascii_lowercase().replace('_', "-").as_str(), value) {
            ("trim-horizon", None) => Ok(StartAt::TrimHorizon),
            ("latest", None) => Ok(StartAt::Latest),
            ("timestamp", Some(time)) => parse_rfc3339(time)
                .map(StartAt::Timestamp)
                .map_err(|e| PositionError(format!("timestamp `{time}`: {e}"))),
            ("sequence", Some(number)) => {
                let (sequence, sub) = number.split_once('/').unwrap_or((number, "0"));
                let sequence = sequence.parse::<SequenceNumber>().map_err(|_| {
                    PositionError(format!(
                        "`{sequence}` is not a sequence number (decimal digits, at most 64)"
                    ))
                })?;
                let sub = sub
                    .parse::<u64>()
                    .map_err(|_| PositionError(format!("`{sub}` is not a sub-sequence number")))?;
                Ok(StartAt::After(Position::new(sequence, sub)))
            }
            _ => Err(PositionError(format!(
                "`{text}` is not trim-horizon, latest, timestamp:… or sequence:…"
            ))),
        }
    }
}

/// A checkpoint as people read it: `after 4959…/0` becomes `after 4959…`, timestamps in RFC 3339.
pub fn checkpoint_text(checkpoint: Option<&Checkpoint>) -> String {
    match checkpoint {
        None => "none yet".to_owned(),
        Some(Checkpoint::TrimHorizon) => "trim horizon".to_owned(),
        Some(Checkpoint::Latest) => "latest".to_owned(),
        Some(Checkpoint::AtTimestamp(ms)) => format!("at {}", format_rfc3339(*ms)),
        Some(Checkpoint::After(p)) if p.sub_sequence == 0 => format!("after {}", p.sequence),
        Some(Checkpoint::After(p)) => format!("after {}/{}", p.sequence, p.sub_sequence),
        Some(Checkpoint::ShardEnd) => "shard end".to_owned(),
    }
}

/// Parses an RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `z` and a space
/// for `T` accepted) into milliseconds since the Unix epoch. Digits of the fraction past
/// milliseconds are dropped. Times before 1970 are refused: no stream holds them.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    const SHAPE: &str = "expected YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)";
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("{e}; {SHAPE}"))?;
    let nanos = time.unix_timestamp_nanos();
    if nanos < 0 {
        return Err("before 1970".to_owned());
    }
    u64::try_from(nanos / 1_000_000).map_err(|_| "too far in the future".to_owned())
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.fffZ` (past the year 9999, which
/// RFC 3339 cannot write, as the number of milliseconds).
pub fn format_rfc3339(ms: u64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) if t.year() <= 9999 => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        _ => format!("{ms} ms after 1970"),
    }
}

/// A number of seconds from the command line (`--sample 0.5`): finite, not negative, at most a
/// day.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds (e.g. 2 or 0.5)"))?;
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("`{text}` seconds: must be between 0 and 86400"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that answered the connection and then stops answering (black-holed through
    /// a proxy) ends an operator's read with an error naming the time limit, instead of
    /// hanging `status` or `reset`: every call of an operator's command has the same limit,
    /// whatever its client library would wait.
    #[tokio::test]
    async fn an_operators_store_call_without_an_answer_ends_in_an_error() {
        let Some(url) = kinsumer_test_env::services::postgres_url() else {
            return;
        };
        let direct = StoreUrl::Postgres {
            url: url.clone(),
            schema: None,
        };
        // The schema exists (a consumer made it), as `status` requires.
        open_store(&direct, "cli-time-limit", Access::Consumer)
            .await
            .expect("open directly");
        let authority = kinsumer_test_env::services::authority(&url).expect("host:port");
        let upstream = std::net::ToSocketAddrs::to_socket_addrs(&authority)
            .ok()
            .and_then(|mut a| a.next())
            .expect("the server's address");
        let proxy = kinsumer_testkit::FaultProxy::start(upstream).expect("proxy");
        let via = StoreUrl::Postgres {
            url: url.replacen(&authority, &proxy.addr().to_string(), 1),
            schema: None,
        };
        let store = open_store(&via, "cli-time-limit", Access::Existing)
            .await
            .expect("open through the proxy");
        proxy.set_mode(kinsumer_testkit::ProxyMode::BlackHole);
        let read = tokio::time::timeout(CALL_TIMEOUT * 3, store.leases("s")).await;
        match read {
            // The command's own limit, not whatever the client library may give up after.
            Ok(Err(e)) => assert!(
                e.to_string()
                    .contains(&format!("timed out after {CALL_TIMEOUT:?}")),
                "{e}"
            ),
            Ok(Ok(_)) => panic!("a read through a black hole succeeded"),
            Err(_) => panic!("the read hung past {:?}", CALL_TIMEOUT * 3),
        }
        proxy.stop().await;
    }

    #[test]
    fn store_urls_parse() {
        assert_eq!("memory://".parse::<StoreUrl>(), Ok(StoreUrl::Memory));
        assert_eq!(
            "redis://:pw@127.0.0.1:6379/2".parse::<StoreUrl>(),
            Ok(StoreUrl::Redis("redis://:pw@127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            "postgres://u:p@h/db?schema=ops&sslmode=disable".parse::<StoreUrl>(),
            Ok(StoreUrl::Postgres {
                url: "postgres://u:p@h/db?sslmode=disable".into(),
                schema: Some("ops".into())
            })
        );
        assert_eq!(
            "dynamodb://leases?endpoint=http://127.0.0.1:5000&region=us-east-1".parse::<StoreUrl>(),
            Ok(StoreUrl::Dynamo {
                table: "leases".into(),
                aws: AwsTarget {
                    endpoint: Some("http://127.0.0.1:5000".into()),
                    region: Some("us-east-1".into())
                }
            })
        );
    }

    #[test]
    fn bad_store_urls_say_what_is_wrong() {
        let cases = [
            ("localhost:6379", "has no scheme"),
            ("mysql://h/db", "unknown scheme `mysql://`"),
            ("dynamodb://", "no table name"),
            (
                "dynamodb://t?endpoint=localhost:5000",
                "must start with http://",
            ),
            (
                "dynamodb://t?regoin=eu-west-1",
                "unknown parameter `regoin`",
            ),
            ("dynamodb://t?region=", "`region` has no value"),
            ("memory://x", "takes nothing"),
            ("redis://", "no host"),
        ];
        for (url, expected) in cases {
            let err = url.parse::<StoreUrl>().expect_err(url).to_string();
            assert!(err.contains(expected), "{url}: {err}");
            assert!(err.contains("examples: memory://"), "{url}: {err}");
        }
    }

    #[test]
    fn source_urls_parse_and_name_their_stream() {
        let url: SourceUrl = "kinesis://orders?region=eu-west-1".parse().unwrap();
        assert_eq!(url.stream_name(), "orders");
        let arn: SourceUrl = "kinesis://arn:aws:kinesis:eu-west-1:123456789012:stream/orders"
            .parse()
            .unwrap();
        assert_eq!(arn.stream_name(), "orders");
        let err = "kafka://orders"
            .parse::<SourceUrl>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown scheme `kafka://`") && err.contains("kinesis://orders"));
    }

    #[test]
    fn credentials_never_show() {
        let url: StoreUrl = "postgres://user:secret@h:5432/db".parse().unwrap();
        assert!(!format!("{url:?}").contains("secret"));
        assert_eq!(url.to_string(), "postgres://***@h:5432/db");
        let url: StoreUrl = "postgres://u:secret@h/db?sslmode=disable&schema=ops"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://***@h/db?sslmode=disable&schema=ops"
        );
        let url: StoreUrl = "dynamodb://t?region=eu-west-1".parse().unwrap();
        assert_eq!(url.to_string(), "dynamodb://t?region=eu-west-1");
        assert_eq!(redact("redis://:secret@h:6379"), "redis://***@h:6379");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact("postgres://u@h/db?password=Secret&sslpassword=S2&schema=x"),
            "postgres://***@h/db?password=***&sslpassword=***&schema=x"
        );
        let url: StoreUrl = "postgres://u@h/db?password=Secret".parse().unwrap();
        assert!(!url.to_string().contains("Secret"), "{url}");
        assert!(!format!("{url:?}").contains("Secret"), "{url:?}");
    }

    /// A password holding `@`, `/` or `:` is written percent-encoded, as in any URL; it parses,
    /// goes to the client as written (which decodes it), and never shows, whole or in part —
    /// nor does a password whose `@` was left unencoded.
    #[test]
    fn passwords_with_url_delimiters_parse_and_never_show() {
        let url: StoreUrl = "postgres://kin:p%40ss%2Fw%3Ard@h:5432/db?schema=ops"
            .parse()
            .unwrap();
        assert_eq!(
            url,
            StoreUrl::Postgres {
                url: "postgres://kin:p%40ss%2Fw%3Ard@h:5432/db".into(),
                schema: Some("ops".into())
            }
        );
        assert_eq!(url.to_string(), "postgres://***@h:5432/db?schema=ops");
        for text in [
            "redis://kin:p%40ss%2Fw%3Ard@h:6379",
            "redis://kin:p@ss@h:6379",
            "postgres://kin:p@ss@h/db?sslpassword=a%26b&x=1",
        ] {
            let redacted = redact(text);
            for secret in ["kin", "p%40", "p@", "ss@", "a%26b", "a&b"] {
                assert!(!redacted.contains(secret), "{text} -> {redacted}");
            }
        }
        // Not a URL at all: only the scheme is left.
        assert_eq!(redact("mysql://u:Secret@h:99999/db"), "mysql://***");
        // Names are percent-decoded too; a path after one is refused.
        let url: StoreUrl = "dynamodb://my%2Dtable?region=r".parse().unwrap();
        assert!(matches!(url, StoreUrl::Dynamo { ref table, .. } if table == "my-table"));
        let err = "dynamodb://t/x"
            .parse::<StoreUrl>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("a name has no path"), "{err}");
        let err = "kinesis://arn:aws:kinesis:r:1:stream/s?regoin=r"
            .parse::<SourceUrl>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown parameter `regoin`"), "{err}");
    }

    /// The same against a real server: a Redis user whose password holds `@`, `/` and `:`
    /// logs in with the percent-encoded URL, and the wrong password is refused (so the
    /// password really is what was checked).
    #[tokio::test]
    async fn a_redis_password_with_url_delimiters_logs_in() {
        let Some(base) = kinsumer_test_env::services::redis_url() else {
            return;
        };
        let client = redis::Client::open(base.as_str()).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let user = "kinsumer-cli-url-test";
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(">p@ss/w:rd")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
        let authority = kinsumer_test_env::services::authority(&base).expect("host:port");
        let open = |password: &str| {
            let url = format!("redis://{user}:{password}@{authority}");
            async move {
                let url: StoreUrl = url.parse().expect("parses");
                let store = open_store(&url, "cli-url-test", Access::Existing).await?;
                store
                    .leases("cli-url-test-stream")
                    .await
                    .map_err(|e| OpenError(e.to_string()))
            }
        };
        let opened = open("p%40ss%2Fw%3Ard").await;
        let refused = open("p%40ss%2Fw%3Arx").await;
        let _: () = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(user)
            .query_async(&mut admin)
            .await
            .expect("ACL DELUSER");
        opened.expect("the right password logs in");
        let refused = refused
            .expect_err("a wrong password is refused")
            .to_string();
        assert!(
            !refused.contains("p%40ss") && !refused.contains("p@ss"),
            "{refused}"
        );
    }

    #[test]
    fn urls_in_messages_are_redacted() {
        let message = "error: invalid value 'mysql://u:Secret@h/db' for '--store <URL>': \
                       no store for scheme mysql (postgres://x:Two@h/db?password=Three)";
        let redacted = redact_text(message);
        for secret in ["Secret", "Two", "Three"] {
            assert!(!redacted.contains(secret), "{redacted}");
        }
        assert!(redacted.contains("'mysql://***@h/db'"), "{redacted}");
        assert_eq!(redact_text("no url here"), "no url here");
        // Any text, multi-byte characters next to the scheme or the end included, never panics.
        for text in [
            "…://",
            "(…://x:y@h)",
            "é://a:b@c",
            "://",
            "a://",
            "x://…",
            "`s://u:p@h`…",
            "redis://:p@h… and postgres://u:q@h/d?password=r…",
        ] {
            let redacted = redact_text(text);
            assert!(
                !redacted.contains(":p@") && !redacted.contains("=r"),
                "{text} -> {redacted}"
            );
        }
    }

    #[test]
    fn rfc3339_times_parse_to_epoch_millis() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00.5Z", 500),
            ("1970-01-01T00:00:01.123456z", 1_123),
            ("2000-02-29T12:00:00Z", 951_825_600_000),
            ("2026-11-26T07:00:00Z", 1_795_676_400_000),
            ("2026-11-26T08:00:00+01:00", 1_795_676_400_000),
            ("2026-11-26 02:30:00-04:30", 1_795_676_400_000),
            ("2024-12-31T23:59:59.999Z", 1_735_689_599_999),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_rfc3339(text), Ok(ms), "{text}");
        }
        for ms in [0, 951_825_600_000, 1_735_689_599_999, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Ok(ms));
        }
        assert_eq!(
            format_rfc3339(1_795_676_400_250),
            "2026-11-26T07:00:00.250Z"
        );
        // A corrupt checkpoint far in the future still reads as something.
        assert_eq!(
            format_rfc3339(u64::MAX),
            format!("{} ms after 1970", u64::MAX)
        );
    }

    #[test]
    fn bad_rfc3339_times_say_why() {
        let cases = [
            ("2026-11-26", "'separator' component"),
            ("2026-11-26T07:00:00", "'offset hour' component"),
            ("2026-02-29T07:00:00Z", "day was not in range"),
            ("2026-13-01T07:00:00Z", "month was not in range"),
            ("2026-11-26T24:00:00Z", "hour was not in range"),
            ("2026-11-26T07:00:00.Z", "'subsecond' component"),
            ("2026-11-26T07:00:00+1:00", "'offset hour' component"),
            ("2026-11-26T07:00:00+25:00", "'offset hour' component"),
            ("1969-12-31T23:59:59Z", "before 1970"),
            ("1969-12-31T23:59:59.9995Z", "before 1970"),
            ("2026-11-26T07:00:00Zjunk", "trailing characters"),
            ("２026-11-26T07:00:00Z", "'year' component"),
        ];
        for (text, expected) in cases {
            let err = parse_rfc3339(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn positions_parse_to_checkpoints() {
        let at = |s: &str| s.parse::<StartAt>().map(|p| p.checkpoint());
        assert_eq!(at("trim-horizon"), Ok(Checkpoint::TrimHorizon));
        assert_eq!(at("TRIM_HORIZON"), Ok(Checkpoint::TrimHorizon));
        assert_eq!(at("latest"), Ok(Checkpoint::Latest));
        assert_eq!(
            at("timestamp:2026-11-26T07:00:00Z"),
            Ok(Checkpoint::AtTimestamp(1_795_676_400_000))
        );
        let seq = "49590338271490256608559692538361571095921575989136588898";
        assert_eq!(
            at(&format!("sequence:{seq}")),
            Ok(Checkpoint::After(Position::new(seq.parse().unwrap(), 0)))
        );
        assert_eq!(
            at("sequence:42/3"),
            Ok(Checkpoint::After(Position::new(
                SequenceNumber::from_u128(42),
                3
            )))
        );
        for (bad, expected) in [
            ("earliest", "`earliest` is not trim-horizon"),
            ("timestamp:yesterday", "timestamp `yesterday`"),
            ("sequence:12a", "`12a` is not a sequence number"),
            ("sequence:12/x", "`x` is not a sub-sequence"),
        ] {
            let err = bad.parse::<StartAt>().expect_err(bad).to_string();
            assert!(err.contains(expected), "{bad}: {err}");
            assert!(err.contains("examples: trim-horizon"), "{bad}: {err}");
        }
    }

    #[test]
    fn checkpoints_read_as_text() {
        let after = |s: u64| Checkpoint::After(Position::new(SequenceNumber::from_u128(42), s));
        assert_eq!(checkpoint_text(None), "none yet");
        assert_eq!(checkpoint_text(Some(&after(0))), "after 42");
        assert_eq!(checkpoint_text(Some(&after(3))), "after 42/3");
        assert_eq!(
            checkpoint_text(Some(&Checkpoint::AtTimestamp(1_795_676_400_000))),
            "at 2026-11-26T07:00:00.000Z"
        );
    }

    #[test]
    fn sdk_dumps_are_cut_from_errors() {
        let error = "fatal source error: service error: ResourceNotFoundException: Stream x not \
found (ServiceError(ServiceError { source: ResourceNotFoundException { .. }, raw: Response { .. } }))";
        assert_eq!(
            brief(error),
            "fatal source error: service error: ResourceNotFoundException: Stream x not found"
        );
        assert_eq!(brief("no lease (yet)"), "no lease (yet)");
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("soon").unwrap_err().contains("not a number"));
    }
}
