//! [`DynamoLeaseStore`]: the contract mapped onto single-item conditional requests.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};

use kinsumer_core::backoff::{Backoff, BackoffPolicy};
use kinsumer_core::config::{NAME_RULE, is_valid_name};
use kinsumer_core::outcome::{self, LeaseWrite};
use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{
    ClientId, ClientRow, CorruptRow, Lease, LeaseStore, Rows, StoreError, Tenure,
};

use crate::billing;
use crate::errors::{ConditionItem, Failure, classify};
use crate::item::{self, Item, n, s};
use crate::stats::{Counters, DynamoStats, Op};

/// Throttled requests are retried this many times inside the store before
/// [`StoreError::Throttled`] reaches the engine (which backs off further).
const THROTTLE_RETRIES: u32 = 4;
/// The back-off between those retries: 50 ms, doubled each time, capped at 800 ms, jittered
/// (the core's one back-off rule).
const THROTTLE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(50), Duration::from_millis(800));
/// How long one request waits for its reply by default (see [`DynamoConfig::attempt_timeout`]).
const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times `replace_corrupt` tries again when the item changed (to another value that
/// does not decode) between its read and its write.
const REPAIR_ATTEMPTS: usize = 3;
/// How often `open` polls `DescribeTable` while a table is being created, and for how long.
const POLL: Duration = Duration::from_millis(50);
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// How to find (or make) the table. See the [crate docs](crate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoConfig {
    /// The application: every key is qualified by it, so applications sharing a table share
    /// nothing else.
    pub application: String,
    /// The table: `kinsumer-<application>` unless set. Several applications may share one.
    pub table: String,
    /// Create the table (on-demand billing) when it does not exist. Default: `false`, and a
    /// missing table is a [`StoreError::Fatal`] naming it.
    pub create_table_if_missing: bool,
    /// Give client rows an `expires_at` of *now + this* on every heartbeat, and enable
    /// DynamoDB's TTL on that attribute, so rows of clients that died without deregistering
    /// vanish (DynamoDB deletes expired items within a few days; the engine also removes rows
    /// of long-dead clients itself). Default: `None`. At least 60 s.
    pub client_ttl: Option<Duration>,
    /// How long one request waits for its reply before it fails and its outcome counts as
    /// unknown (then the store re-reads the item): the SDK's *operation attempt timeout*,
    /// used only when the caller's client sets none of its own. Default 5 s; more than zero.
    pub attempt_timeout: Duration,
    /// The seed of the jitter of the store's throttling back-off; `None` (the default) seeds
    /// it from the OS. Set it to make a test's back-off repeat exactly.
    pub backoff_seed: Option<u64>,
}

impl DynamoConfig {
    /// The defaults for `application`: table `kinsumer-<application>`, no creation, no TTL.
    pub fn new(application: &str) -> Self {
        Self {
            application: application.to_owned(),
            table: format!("kinsumer-{application}"),
            create_table_if_missing: false,
            client_ttl: None,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            backoff_seed: None,
        }
    }

    /// Waits at most `timeout` for the reply of one request, unless the client sets its own
    /// operation attempt timeout.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Seeds the jitter of the throttling back-off (the default seeds it from the OS).
    pub fn with_backoff_seed(mut self, seed: u64) -> Self {
        self.backoff_seed = Some(seed);
        self
    }

    /// Uses `table` instead of `kinsumer-<application>`.
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Creates the table when it is missing (on-demand billing).
    pub fn create_table_if_missing(mut self, create: bool) -> Self {
        self.create_table_if_missing = create;
        self
    }

    /// Lets DynamoDB's TTL delete rows of clients that stopped heartbeating `ttl` ago.
    pub fn with_client_ttl(mut self, ttl: Duration) -> Self {
        self.client_ttl = Some(ttl);
        self
    }

    /// Checks the application and table names and the TTL, naming the field.
    pub fn validate(&self) -> Result<(), StoreError> {
        // The engine's rule for application names: no `#`, so qualified keys never collide.
        if !is_valid_name(&self.application) {
            return Err(StoreError::Fatal(format!(
                "invalid application name {:?} (DynamoConfig::application): {NAME_RULE}",
                self.application
            )));
        }
        let name_ok = (3..=255).contains(&self.table.len())
            && self
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(StoreError::Fatal(format!(
                "invalid DynamoDB table name {:?} (DynamoConfig::table): 3 to 255 characters \
                 of a-z, A-Z, 0-9, '_', '-' and '.'",
                self.table
            )));
        }
        if let Some(ttl) = self.client_ttl
            && ttl < Duration::from_secs(60)
        {
            return Err(StoreError::Fatal(format!(
                "DynamoConfig::client_ttl is {ttl:?}: it must be at least 60 s (DynamoDB \
                 deletes expired items lazily, and far longer than lease_ttl is wise)"
            )));
        }
        if self.attempt_timeout.is_zero() {
            return Err(StoreError::Fatal(
                "DynamoConfig::attempt_timeout is zero: it must be more than zero (a request \
                 with no time to answer always fails)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// The [`LeaseStore`] of one application on a DynamoDB table. Cheap to clone: clones share
/// the client and the [`stats`](Self::stats). See the [crate docs](crate).
#[derive(Clone)]
pub struct DynamoLeaseStore {
    client: Client,
    application: Arc<str>,
    table: Arc<str>,
    client_ttl: Option<Duration>,
    counters: Arc<Counters>,
    /// The throttling back-off, shared by clones so their jitter keeps drawing one sequence.
    backoff: Arc<Mutex<Backoff>>,
}

impl fmt::Debug for DynamoLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoLeaseStore")
            .field("application", &self.application)
            .field("table", &self.table)
            .field("client_ttl", &self.client_ttl)
            .finish_non_exhaustive()
    }
}

/// `Ok` of a request, or its classified failure.
type Sent<T> = Result<T, Failure>;

impl DynamoLeaseStore {
    /// A store on the table `config` names, over the caller's client (which brings its own
    /// HTTP stack, TLS, credentials and region). The store uses a copy of the client with the
    /// SDK's retries off and, if the client sets none, an attempt timeout of
    /// [`DynamoConfig::attempt_timeout`] (see the [crate docs](crate) for why).
    ///
    /// Checks the table with `DescribeTable`; creates it (and waits, polling every 50 ms, until
    /// it is `ACTIVE`) if it is missing and `create_table_if_missing` is set, and otherwise
    /// fails with a [`StoreError::Fatal`] naming it. With `client_ttl`, enables TTL on
    /// `expires_at` if it is not already.
    pub async fn open(client: Client, config: DynamoConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let store = Self {
            client: store_client(&client, config.attempt_timeout),
            application: config.application.as_str().into(),
            table: config.table.as_str().into(),
            client_ttl: config.client_ttl,
            counters: Arc::default(),
            backoff: Arc::new(Mutex::new(Backoff::seeded_or_os(
                THROTTLE_BACKOFF,
                config.backoff_seed,
            ))),
        };
        store.ensure_table(config.create_table_if_missing).await?;
        if config.client_ttl.is_some() {
            store.ensure_ttl().await?;
        }
        Ok(store)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Requests sent so far by this store and its clones.
    pub fn stats(&self) -> DynamoStats {
        self.counters.snapshot()
    }

    fn missing_table(&self) -> StoreError {
        StoreError::Fatal(format!(
            "DynamoDB table {:?} does not exist: create it (partition key \"pk\" S, sort key \
             \"sk\" S) or open the store with DynamoConfig::create_table_if_missing(true)",
            self.table
        ))
    }

    /// `None`: the table is missing.
    async fn table_status(&self) -> Result<Option<TableStatus>, StoreError> {
        let out = self
            .send(Op::Admin, || {
                self.client.describe_table().table_name(&*self.table).send()
            })
            .await;
        match out {
            Ok(out) => Ok(Some(
                out.table()
                    .and_then(|t| t.table_status().cloned())
                    .unwrap_or(TableStatus::Active),
            )),
            Err(Failure::NoTable) => Ok(None),
            Err(f) => Err(self.plain(f, "DescribeTable")),
        }
    }

    async fn ensure_table(&self, create: bool) -> Result<(), StoreError> {
        if self.table_status().await?.is_none() {
            if !create {
                return Err(self.missing_table());
            }
            let attribute = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
            };
            let key = |name: &str, kind| {
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(kind)
                    .build()
            };
            let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Fatal(e.to_string());
            let request = self
                .client
                .create_table()
                .table_name(&*self.table)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(attribute(item::PK).map_err(build)?)
                .attribute_definitions(attribute(item::SK).map_err(build)?)
                .key_schema(key(item::PK, KeyType::Hash).map_err(build)?)
                .key_schema(key(item::SK, KeyType::Range).map_err(build)?);
            match self.send(Op::Admin, || request.clone().send()).await {
                Ok(_) => {}
                // Another process created it meanwhile: wait for it like for ours.
                Err(Failure::Other(StoreError::Transient(m))) if m.contains("ResourceInUse") => {}
                Err(f) => return Err(self.plain(f, "CreateTable")),
            }
        }
        let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
        loop {
            match self.table_status().await? {
                Some(TableStatus::Active) => return Ok(()),
                Some(_) | None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                status => {
                    return Err(StoreError::Transient(format!(
                        "DynamoDB table {:?} is not ACTIVE after {CREATE_TIMEOUT:?} ({status:?})",
                        self.table
                    )));
                }
            }
        }
    }

    async fn ensure_ttl(&self) -> Result<(), StoreError> {
        let out = self
            .send(Op::Admin, || {
                self.client
                    .describe_time_to_live()
                    .table_name(&*self.table)
                    .send()
            })
            .await
            .map_err(|f| self.plain(f, "DescribeTimeToLive"))?;
        let on = out.time_to_live_description().is_some_and(|d| {
            matches!(
                d.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            ) && d.attribute_name() == Some(item::EXPIRES_AT)
        });
        if on {
            return Ok(());
        }
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(item::EXPIRES_AT)
            .build()
            .map_err(|e| StoreError::Fatal(e.to_string()))?;
        self.send(Op::Admin, || {
            self.client
                .update_time_to_live()
                .table_name(&*self.table)
                .time_to_live_specification(spec.clone())
                .send()
        })
        .await
        .map_err(|f| self.plain(f, "UpdateTimeToLive"))?;
        Ok(())
    }

    /// Sends one request (`attempt` builds and sends it), counting it, and retrying it with
    /// capped exponential backoff while it is throttled.
    async fn send<T, E, F, Fut>(&self, op: Op, attempt: F) -> Sent<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ConditionItem + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut tries = 0;
        loop {
            self.counters.count(op);
            match attempt().await.map_err(classify) {
                Err(Failure::Throttled(_)) if tries < THROTTLE_RETRIES => {
                    let delay = self
                        .backoff
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .delay(tries);
                    tries += 1;
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// A failure with no item to reason about, as a [`StoreError`] naming `what`.
    fn plain(&self, failure: Failure, what: &str) -> StoreError {
        match failure {
            Failure::NoTable => self.missing_table(),
            Failure::Throttled(m) => StoreError::Throttled(format!("{what}: {m}")),
            Failure::Ambiguous(m) => StoreError::Transient(format!("{what}: {m}")),
            Failure::Other(e) => e,
            Failure::Condition(_) => {
                StoreError::Transient(format!("{what}: unexpected conditional-check failure"))
            }
        }
    }

    fn clients_pk(&self) -> String {
        item::clients_pk(&self.application)
    }

    fn lease_pk(&self, stream: &str) -> String {
        item::lease_pk(&self.application, stream)
    }

    fn key_name(&self, pk: &str, sk: &str) -> String {
        format!("{}/{pk}/{sk}", self.table)
    }

    fn lease_key_name(&self, stream: &str, shard: &ShardId) -> String {
        self.key_name(&self.lease_pk(stream), shard.as_str())
    }

    fn corrupt(&self, stream: &str, shard: &ShardId, reason: String) -> StoreError {
        StoreError::Corrupt {
            key: self.lease_key_name(stream, shard),
            reason,
        }
    }

    fn decode(&self, stream: &str, shard: &ShardId, item: &Item) -> Result<Lease, StoreError> {
        item::decode_lease(shard, item).map_err(|reason| self.corrupt(stream, shard, reason))
    }

    fn expires_at(&self) -> Option<u64> {
        let ttl = self.client_ttl?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        Some((now + ttl).as_secs())
    }

    /// `GetItem` (strongly consistent) of one lease row.
    async fn get(&self, op: Op, stream: &str, shard: &ShardId) -> Sent<Option<Item>> {
        self.get_item(op, item::key(self.lease_pk(stream), shard.as_str()))
            .await
    }

    /// `GetItem` (strongly consistent) of the item at `key`.
    async fn get_item(&self, op: Op, key: Item) -> Sent<Option<Item>> {
        let out = self
            .send(op, || {
                self.client
                    .get_item()
                    .table_name(&*self.table)
                    .set_key(Some(key.clone()))
                    .consistent_read(true)
                    .send()
            })
            .await?;
        let item = out.item().cloned();
        self.counters.items(usize::from(item.is_some()));
        self.counters.read_units(billing::request_read_units(
            item.iter().map(billing::item_size),
        ));
        Ok(item)
    }

    /// How the change counter item is named in errors.
    fn changes_name(&self) -> String {
        self.key_name(&item::changes_pk(&self.application), item::CHANGES_SK)
    }

    /// Every item of one partition, strongly consistent, all pages.
    async fn query(&self, op: Op, pk: &str) -> Sent<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .send(op, || {
                    self.client
                        .query()
                        .table_name(&*self.table)
                        .key_condition_expression("#pk = :pk")
                        .expression_attribute_names("#pk", item::PK)
                        .expression_attribute_values(":pk", s(pk))
                        .consistent_read(true)
                        .set_exclusive_start_key(start.clone())
                        .send()
                })
                .await?;
            self.counters.items(page.items().len());
            self.counters.read_units(billing::request_read_units(
                page.items().iter().map(billing::item_size),
            ));
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// The contract's answer to a failed write on a lease row; only the translation is here,
    /// the decision is the core's ([`kinsumer_core::outcome`]).
    ///
    /// - conditional-check failure with the old item → `LeaseLost` (or `Corrupt` if that item
    ///   does not parse); without an item → `NotFound`;
    /// - an unknown outcome → one consistent re-read, judged by the core;
    /// - anything else as classified.
    async fn settle(
        &self,
        write: LeaseWrite<'_>,
        stream: &str,
        shard: &ShardId,
        failure: Failure,
    ) -> Result<Option<Lease>, StoreError> {
        let name = self.lease_key_name(stream, shard);
        match failure {
            // The server refused this very request (the SDK does not retry it, see
            // `store_client`): the item it was refused on is never "our earlier write", so a
            // second release by the same tenure is `LeaseLost`, as the contract says.
            Failure::Condition(Some(old)) => {
                self.decode(stream, shard, &old)?;
                Err(StoreError::LeaseLost {
                    shard: shard.clone(),
                })
            }
            Failure::Condition(None) => Err(StoreError::NotFound {
                shard: shard.clone(),
            }),
            Failure::Ambiguous(message) => {
                outcome::settle(
                    shard,
                    write,
                    &format!("{write} on {name}"),
                    &message,
                    || self.reread(stream, shard),
                )
                .await
            }
            other => Err(self.plain(other, &format!("{write} on {name}"))),
        }
    }

    /// One consistent read of a lease row, to settle an unknown outcome.
    async fn reread(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        let item = self
            .get(Op::Reread, stream, shard)
            .await
            .map_err(|f| self.plain(f, "GetItem"))?;
        item.map(|item| self.decode(stream, shard, &item))
            .transpose()
    }

    /// One conditional `UpdateItem` on a lease row, returning the new item.
    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        op: Op,
        stream: &str,
        shard: &ShardId,
        update: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Sent<Option<Item>> {
        let mut request = self
            .client
            .update_item()
            .table_name(&*self.table)
            .set_key(Some(item::key(self.lease_pk(stream), shard.as_str())))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (alias, name) in names {
            request = request.expression_attribute_names(*alias, *name);
        }
        for (alias, value) in values {
            request = request.expression_attribute_values(alias, value);
        }
        let out = self.send(op, || request.clone().send()).await?;
        Ok(out.attributes().cloned())
    }

    /// A fenced write (`checkpoint` / `release` / `finish`): conditioned on owner and token
    /// (and on not finished, unless `allow_finished`), settled as `write` if ambiguous.
    #[allow(clippy::too_many_arguments)]
    async fn fenced(
        &self,
        op: Op,
        write: LeaseWrite<'_>,
        stream: &str,
        tenure: &Tenure,
        update: &str,
        allow_finished: bool,
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Result<(), StoreError> {
        let condition = if allow_finished {
            "#o = :o AND #t = :t"
        } else {
            "#o = :o AND #t = :t AND (attribute_not_exists(#f) OR #f = :false)"
        };
        values.push((":o", s(tenure.owner.as_str())));
        values.push((":t", n(tenure.token)));
        if !allow_finished {
            values.push((":false", AttributeValue::Bool(false)));
        }
        let names = [
            ("#o", item::OWNER),
            ("#t", item::TOKEN),
            ("#f", item::FINISHED),
            ("#c", item::CHECKPOINT),
            ("#s", item::SUCCESSOR),
        ];
        let names: Vec<(&str, &str)> = names
            .into_iter()
            .filter(|(alias, _)| update.contains(alias) || condition.contains(alias))
            .collect();
        let shard = &tenure.shard;
        match self
            .update(op, stream, shard, update, condition, &names, values)
            .await
        {
            Ok(_) => Ok(()),
            Err(failure) => self.settle(write, stream, shard, failure).await.map(drop),
        }
    }
}

/// The store's copy of the caller's client: the SDK's retries off, and an attempt timeout if
/// the client sets none.
///
/// Retries would otherwise stack three deep — the SDK's (3 attempts by default), the store's
/// (throttling) and the engine's — multiplying the requests a throttled table receives, and an
/// SDK retry of a conditional write that had landed meets its own write. So the store keeps
/// one retry of its own, for throttling only (with the core's back-off), settles every unknown
/// outcome by re-reading, and leaves everything else to the engine.
fn store_client(client: &Client, attempt_timeout: Duration) -> Client {
    let config = client.config();
    let mut builder = config.to_builder().retry_config(RetryConfig::disabled());
    let timeouts = config.timeout_config().cloned();
    if timeouts
        .as_ref()
        .and_then(TimeoutConfig::operation_attempt_timeout)
        .is_none()
    {
        let timeouts = timeouts
            .map(|t| t.to_builder())
            .unwrap_or_else(TimeoutConfig::builder)
            .operation_attempt_timeout(attempt_timeout)
            .build();
        builder = builder.timeout_config(timeouts);
    }
    Client::from_conf(builder.build())
}

#[async_trait]
impl LeaseStore for DynamoLeaseStore {
    fn application(&self) -> Option<&str> {
        Some(&self.application)
    }
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        let name = self.key_name(&self.clients_pk(), client.as_str());
        // A DynamoDB number holds 38 digits: the whole u64 range, written as its decimal text.
        let mut update = "SET #c = :beat".to_owned();
        let expires_at = self.expires_at();
        if expires_at.is_some() {
            update.push_str(", #e = :e");
        }
        let mut request = self
            .client
            .update_item()
            .table_name(&*self.table)
            .set_key(Some(item::key(self.clients_pk(), client.as_str())))
            .update_expression(update)
            // Unconditional, as on every store: the row is this client's own, so a value an
            // operator or a bug left in it (of another type, say) is overwritten — a live
            // client repairs its row with its next heartbeat instead of fencing itself.
            .expression_attribute_names("#c", item::COUNTER)
            .expression_attribute_values(":beat", n(beat))
            .return_values(ReturnValue::None);
        if let Some(at) = expires_at {
            request = request
                .expression_attribute_names("#e", item::EXPIRES_AT)
                .expression_attribute_values(":e", n(at));
        }
        // Not settled by re-reading: writing the same value again is harmless.
        self.send(Op::Heartbeat, || request.clone().send())
            .await
            .map_err(|failure| self.plain(failure, &format!("heartbeat on {name}")))?;
        Ok(())
    }

    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        let items = self
            .query(Op::Clients, &self.clients_pk())
            .await
            .map_err(|f| self.plain(f, &format!("clients() on {}", self.table)))?;
        let (mut rows, mut corrupt) = (Vec::new(), Vec::new());
        for it in &items {
            match item::decode_client(it) {
                Ok(row) => rows.push(row),
                Err(reason) => {
                    let sk = item::sort_key(it).ok();
                    corrupt.push(CorruptRow {
                        key: self.key_name(&self.clients_pk(), sk.unwrap_or("?")),
                        id: sk.map(str::to_owned),
                        reason,
                    });
                }
            }
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Rows::new(rows, corrupt))
    }

    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        // Idempotent: an unknown outcome is retried by the engine like any transient error.
        self.send(Op::Deregister, || {
            self.client
                .delete_item()
                .table_name(&*self.table)
                .set_key(Some(item::key(self.clients_pk(), client.as_str())))
                .send()
        })
        .await
        .map(drop)
        .map_err(|f| {
            let name = self.key_name(&self.clients_pk(), client.as_str());
            self.plain(f, &format!("deregister on {name}"))
        })
    }

    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        let name = self.key_name(&self.clients_pk(), client.as_str());
        let found = self
            .get_item(Op::Client, item::key(self.clients_pk(), client.as_str()))
            .await
            .map_err(|f| self.plain(f, &format!("client on {name}")))?;
        found
            .map(|it| {
                item::decode_client(&it).map_err(|reason| StoreError::Corrupt {
                    key: name.clone(),
                    reason,
                })
            })
            .transpose()
    }

    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        let result = self
            .send(Op::MarkDead, || {
                self.client
                    .update_item()
                    .table_name(&*self.table)
                    .set_key(Some(item::key(self.clients_pk(), client.as_str())))
                    .update_expression("SET #j = :v")
                    // Only while the row still holds the value judged: a heartbeat that
                    // landed first wins (and a missing row fails the condition too).
                    .condition_expression("#c = :v")
                    .expression_attribute_names("#j", item::JUDGED_DEAD)
                    .expression_attribute_names("#c", item::COUNTER)
                    .expression_attribute_values(":v", n(counter))
                    .return_values(ReturnValue::None)
                    .send()
            })
            .await;
        // Idempotent: an unknown outcome is retried by the engine like any transient error.
        match result {
            Ok(_) => Ok(true),
            Err(Failure::Condition(_)) => Ok(false),
            Err(f) => {
                let name = self.key_name(&self.clients_pk(), client.as_str());
                Err(self.plain(f, &format!("mark_dead on {name}")))
            }
        }
    }

    async fn changes(&self) -> Result<u64, StoreError> {
        let key = item::changes_key(&self.application);
        let found = self
            .get_item(Op::Changes, key)
            .await
            .map_err(|f| self.plain(f, &format!("changes on {}", self.changes_name())))?;
        let Some(found) = found else {
            return Ok(0);
        };
        item::number(&found, item::CHANGES)
            .map(Option::unwrap_or_default)
            .map_err(|reason| StoreError::Corrupt {
                key: self.changes_name(),
                reason,
            })
    }

    async fn announce(&self) -> Result<u64, StoreError> {
        let what = || format!("announce on {}", self.changes_name());
        // A few rounds: each either moves a good counter or writes a bad one afresh; a
        // repair lost to another client's is followed by one more try.
        for _ in 0..3 {
            let result = self
                .send(Op::Announce, || {
                    self.client
                        .update_item()
                        .table_name(&*self.table)
                        .set_key(Some(item::changes_key(&self.application)))
                        .update_expression("SET #c = if_not_exists(#c, :zero) + :one")
                        .condition_expression("attribute_not_exists(#c) OR attribute_type(#c, :n)")
                        .expression_attribute_names("#c", item::CHANGES)
                        .expression_attribute_values(":zero", n(0))
                        .expression_attribute_values(":one", n(1))
                        .expression_attribute_values(":n", s("N"))
                        .return_values(ReturnValue::UpdatedNew)
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        )
                        .send()
                })
                .await;
            // What is stored, if it does not decode: a number of the wrong form (`None` for
            // a value of another type).
            let bad_number = match result {
                Ok(out) => {
                    let new = out.attributes().cloned().unwrap_or_default();
                    match item::number(&new, item::CHANGES) {
                        Ok(Some(value))
                            if (1..kinsumer_core::store::TOKEN_LIMIT).contains(&value) =>
                        {
                            return Ok(value);
                        }
                        _ => new.get(item::CHANGES).cloned(),
                    }
                }
                Err(Failure::Condition(_)) => None,
                Err(f) => return Err(self.plain(f, &what())),
            };
            let mut fresh = item::changes_key(&self.application);
            fresh.insert(item::CHANGES.to_owned(), n(1));
            let repaired = self
                .send(Op::Announce, || {
                    let request = self
                        .client
                        .put_item()
                        .table_name(&*self.table)
                        .set_item(Some(fresh.clone()))
                        .expression_attribute_names("#c", item::CHANGES);
                    match &bad_number {
                        Some(bad) => request
                            .condition_expression("#c = :bad")
                            .expression_attribute_values(":bad", bad.clone()),
                        None => request
                            .condition_expression(
                                "attribute_exists(#c) AND NOT attribute_type(#c, :n)",
                            )
                            .expression_attribute_values(":n", s("N")),
                    }
                    .send()
                })
                .await;
            match repaired {
                Ok(_) => return Ok(1),
                Err(Failure::Condition(_)) => continue,
                Err(f) => return Err(self.plain(f, &what())),
            }
        }
        Err(StoreError::Transient(format!(
            "{}: the change counter kept changing under a repair",
            what()
        )))
    }

    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        let pk = self.lease_pk(stream);
        let items = self
            .query(Op::Leases, &pk)
            .await
            .map_err(|f| self.plain(f, &format!("leases() on {}/{pk}", self.table)))?;
        let (mut leases, mut corrupt) = (Vec::new(), Vec::new());
        for it in &items {
            let sk = item::sort_key(it);
            match sk
                .clone()
                .and_then(|sk| item::decode_lease(&ShardId::from(sk), it))
            {
                Ok(lease) => leases.push(lease),
                Err(reason) => {
                    let sk = sk.ok();
                    corrupt.push(CorruptRow {
                        key: self.key_name(&pk, sk.unwrap_or("?")),
                        id: sk.map(str::to_owned),
                        reason,
                    });
                }
            }
        }
        leases.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(Rows::new(leases, corrupt))
    }

    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        let item = self.get(Op::Lease, stream, shard).await.map_err(|f| {
            let name = self.lease_key_name(stream, shard);
            self.plain(f, &format!("lease on {name}"))
        })?;
        item.map(|it| self.decode(stream, shard, &it)).transpose()
    }

    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        let new = item::new_lease_item(self.lease_pk(stream), shard, parents);
        let result = self
            .send(Op::CreateIfAbsent, || {
                self.client
                    .put_item()
                    .table_name(&*self.table)
                    .set_item(Some(new.clone()))
                    .condition_expression("attribute_not_exists(#pk)")
                    .expression_attribute_names("#pk", item::PK)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
            })
            .await;
        match result {
            Ok(_) => Ok(Lease::new(shard.clone(), parents.to_vec())),
            // It exists: the row now stored is the answer, and ALL_OLD carried it.
            Err(Failure::Condition(Some(old))) => self.decode(stream, shard, &old),
            // Whatever happened, the row now stored is the answer.
            Err(failure) => {
                let row = self
                    .settle(LeaseWrite::CreateIfAbsent, stream, shard, failure)
                    .await?;
                outcome::landed_row(row, &self.lease_key_name(stream, shard))
            }
        }
    }

    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        let next = kinsumer_core::store::next_token(expected_token, u64::MAX)
            .map_err(|reason| self.corrupt(stream, shard, reason))?;
        let result = self
            .update(
                Op::Take,
                stream,
                shard,
                "SET #o = :o, #t = :next REMOVE #s",
                "#t = :expected AND (attribute_not_exists(#f) OR #f = :false)",
                &[
                    ("#o", item::OWNER),
                    ("#t", item::TOKEN),
                    ("#f", item::FINISHED),
                    ("#s", item::SUCCESSOR),
                ],
                vec![
                    (":o", s(owner.as_str())),
                    (":next", n(next)),
                    (":expected", n(expected_token)),
                    (":false", AttributeValue::Bool(false)),
                ],
            )
            .await;
        let write = LeaseWrite::Take {
            owner,
            expected_token,
        };
        match result {
            Ok(Some(new)) => self.decode(stream, shard, &new),
            Ok(None) => Err(self.corrupt(
                stream,
                shard,
                "UpdateItem returned no attributes for ALL_NEW".to_owned(),
            )),
            Err(failure) => {
                let row = self.settle(write, stream, shard, failure).await?;
                outcome::landed_row(row, &self.lease_key_name(stream, shard))
            }
        }
    }

    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.fenced(
            Op::Checkpoint,
            LeaseWrite::Checkpoint { tenure, checkpoint },
            stream,
            tenure,
            "SET #c = :c",
            false,
            vec![(":c", s(checkpoint.to_string()))],
        )
        .await
    }

    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        let mut values = Vec::new();
        let mut set = Vec::new();
        if let Some(cp) = checkpoint {
            set.push("#c = :c");
            values.push((":c", s(cp.to_string())));
        }
        let mut remove = vec!["#o"];
        match successor {
            Some(heir) => {
                set.push("#s = :s");
                values.push((":s", s(heir.as_str())));
            }
            None => remove.push("#s"),
        }
        let mut update = format!("REMOVE {}", remove.join(", "));
        if !set.is_empty() {
            update.push_str(&format!(" SET {}", set.join(", ")));
        }
        let update = update.as_str();
        self.fenced(
            Op::Release,
            LeaseWrite::Release { tenure },
            stream,
            tenure,
            update,
            false,
            values,
        )
        .await
    }

    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        self.fenced(
            Op::Finish,
            LeaseWrite::Finish { tenure },
            stream,
            tenure,
            "SET #f = :true, #c = :end",
            true,
            vec![
                (":true", AttributeValue::Bool(true)),
                (":end", s(Checkpoint::ShardEnd.to_string())),
            ],
        )
        .await
    }

    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        let result = self
            .send(Op::DeleteFinished, || {
                self.client
                    .delete_item()
                    .table_name(&*self.table)
                    .set_key(Some(item::key(self.lease_pk(stream), shard.as_str())))
                    .condition_expression("attribute_not_exists(#pk) OR #f = :true")
                    .expression_attribute_names("#pk", item::PK)
                    .expression_attribute_names("#f", item::FINISHED)
                    .expression_attribute_values(":true", AttributeValue::Bool(true))
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(failure) => self
                .settle(LeaseWrite::DeleteFinished, stream, shard, failure)
                .await
                .map(drop),
        }
    }

    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let result = self
            .update(
                Op::ResetCheckpoint,
                stream,
                shard,
                "SET #c = :c",
                "attribute_not_exists(#o) AND #t = :t",
                &[
                    ("#o", item::OWNER),
                    ("#t", item::TOKEN),
                    ("#c", item::CHECKPOINT),
                ],
                vec![(":c", s(checkpoint.to_string())), (":t", n(expected_token))],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(failure) => {
                let write = LeaseWrite::ResetCheckpoint {
                    expected_token,
                    checkpoint,
                };
                self.settle(write, stream, shard, failure).await.map(drop)
            }
        }
    }

    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        let shard = &lease.shard;
        let name = self.lease_key_name(stream, shard);
        let new = item::lease_item(self.lease_pk(stream), lease);
        let mut current = self
            .get(Op::Lease, stream, shard)
            .await
            .map_err(|f| self.plain(f, &format!("replace_corrupt on {name}")))?;
        for _ in 0..REPAIR_ATTEMPTS {
            let Some(old) = current else {
                return Err(StoreError::NotFound {
                    shard: shard.clone(),
                });
            };
            if item::decode_lease(shard, &old).is_ok_and(|usable| !usable.token_exhausted()) {
                return Err(StoreError::LeaseLost {
                    shard: shard.clone(),
                });
            }
            // Decoding reads only these attributes: while each is as read, the item is still
            // unusable, so a repaired or re-created item is never overwritten.
            let condition = item::unchanged_condition(&old);
            let result = self
                .send(Op::ReplaceCorrupt, || {
                    let mut request = self
                        .client
                        .put_item()
                        .table_name(&*self.table)
                        .set_item(Some(new.clone()))
                        .condition_expression(condition.expression.as_str())
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        );
                    for (alias, attribute) in &condition.names {
                        request = request.expression_attribute_names(alias, attribute);
                    }
                    for (alias, value) in &condition.values {
                        request = request.expression_attribute_values(alias, value.clone());
                    }
                    request.send()
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                // Changed meanwhile: judge the item as it is now (gone: `NotFound`).
                Err(Failure::Condition(now)) => current = now,
                Err(Failure::Ambiguous(message)) => {
                    let write = LeaseWrite::ReplaceCorrupt { lease };
                    let what = format!("{write} on {name}");
                    return outcome::settle(shard, write, &what, &message, || {
                        self.reread(stream, shard)
                    })
                    .await
                    .map(drop);
                }
                Err(failure) => {
                    return Err(self.plain(failure, &format!("replace_corrupt on {name}")));
                }
            }
        }
        Err(StoreError::Transient(format!(
            "replace_corrupt on {name}: the item changed between each read and write \
             ({REPAIR_ATTEMPTS} times); retry"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_field_it_rejects() {
        let ok = DynamoConfig::new("billing");
        assert_eq!(ok.table, "kinsumer-billing");
        assert!(ok.validate().is_ok());
        let bad = DynamoConfig::new("billing").with_table("a b");
        assert!(
            matches!(bad.validate(), Err(StoreError::Fatal(m)) if m.contains("DynamoConfig::table"))
        );
        for app in ["", "a#b"] {
            let bad = DynamoConfig::new(app).with_table("kinsumer-x");
            assert!(
                matches!(bad.validate(), Err(StoreError::Fatal(m)) if m.contains("DynamoConfig::application")),
                "{app:?}"
            );
        }
        let short = ok.with_client_ttl(Duration::from_secs(5));
        assert!(matches!(short.validate(), Err(StoreError::Fatal(m)) if m.contains("client_ttl")));
    }

    #[test]
    fn a_zero_attempt_timeout_is_refused_by_name() {
        let zero = DynamoConfig::new("billing").with_attempt_timeout(Duration::ZERO);
        assert!(
            matches!(zero.validate(), Err(StoreError::Fatal(m)) if m.contains("attempt_timeout"))
        );
    }
}
