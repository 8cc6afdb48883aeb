//! Behaviour beyond the conformance suite, against moto: corrupt items, a missing table,
//! TTL, ambiguous takes, and the cost of one checkpoint.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, LeaseStore, StoreError};
use kinsumer_dynamo::aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut;
use kinsumer_dynamo::aws_sdk_dynamodb::config::retry::RetryConfig;
use kinsumer_dynamo::aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use kinsumer_dynamo::aws_sdk_dynamodb::types::AttributeValue;
use kinsumer_dynamo::{DynamoConfig, DynamoLeaseStore};

fn after(n: u128) -> Checkpoint {
    Checkpoint::After(Position::new(SequenceNumber::from_u128(n), 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_items_are_typed_errors_naming_the_key() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let store = common::fresh_store(&client, "corrupt").await;
    let table = store.table().to_owned();
    let put = |pk: &str, sk: &str, attrs: Vec<(&str, AttributeValue)>| {
        let mut req = client
            .put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(pk.into()))
            .item("sk", AttributeValue::S(sk.into()));
        for (k, v) in attrs {
            req = req.item(k, v);
        }
        req.send()
    };
    put("lease#s", "no-token", vec![]).await.expect("put");
    put(
        "lease#s",
        "string-token",
        vec![("token", AttributeValue::S("1".into()))],
    )
    .await
    .expect("put");
    put(
        "lease#s",
        "bad-checkpoint",
        vec![
            ("token", AttributeValue::N("1".into())),
            ("checkpoint", AttributeValue::S("AFTER:nope".into())),
        ],
    )
    .await
    .expect("put");
    put(
        "clients",
        "bad-counter",
        vec![("counter", AttributeValue::S("x".into()))],
    )
    .await
    .expect("put");

    let corrupt_at = |result: Result<_, StoreError>, key: &str| match result {
        Err(StoreError::Corrupt { key: k, reason }) => {
            assert_eq!(k, format!("{table}/{key}"), "{reason}");
        }
        other => panic!("{key}: expected Corrupt, got {other:?}"),
    };
    for shard in ["no-token", "string-token", "bad-checkpoint"] {
        let id = ShardId::from(shard);
        corrupt_at(
            store.lease("s", &id).await.map(drop),
            &format!("lease#s/{shard}"),
        );
        // A write conditioned on the row reports the corruption too (from ALL_OLD).
        corrupt_at(
            store
                .take("s", &id, &ClientId::from("a"), 0)
                .await
                .map(drop),
            &format!("lease#s/{shard}"),
        );
    }
    let listed = store.leases("s").await;
    assert!(
        matches!(&listed, Err(StoreError::Corrupt { key, .. }) if key.starts_with(&format!("{table}/lease#s/"))),
        "{listed:?}"
    );
    corrupt_at(
        store
            .heartbeat(&ClientId::from("bad-counter"))
            .await
            .map(drop),
        "clients/bad-counter",
    );
    corrupt_at(store.clients().await.map(drop), "clients/bad-counter");
    common::drop_table(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_fatal_and_named() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let table = common::unique_table("missing");
    let opened =
        DynamoLeaseStore::open(client.clone(), DynamoConfig::new("x").with_table(&table)).await;
    match opened {
        Err(StoreError::Fatal(m)) => {
            assert!(
                m.contains(&table) && m.contains("create_table_if_missing"),
                "{m}"
            )
        }
        other => panic!("expected Fatal, got {other:?}"),
    }
    // A table deleted under a running store: every call says which table is missing.
    let store = common::fresh_store(&client, "deleted").await;
    common::drop_table(&client, store.table()).await;
    match store.heartbeat(&ClientId::from("a")).await {
        Err(StoreError::Fatal(m)) => assert!(m.contains(store.table()), "{m}"),
        other => panic!("expected Fatal, got {other:?}"),
    }
    match store.leases("s").await {
        Err(StoreError::Fatal(m)) => assert!(m.contains(store.table()), "{m}"),
        other => panic!("expected Fatal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ttl_stamps_rows_and_enables_ttl() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let config = DynamoConfig::new("x")
        .with_table(common::unique_table("ttl"))
        .create_table_if_missing(true)
        .with_client_ttl(Duration::from_secs(3600));
    let store = DynamoLeaseStore::open(client.clone(), config)
        .await
        .expect("open");
    assert_eq!(store.heartbeat(&ClientId::from("a")).await, Ok(1));
    let ttl = client
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .expect("DescribeTimeToLive");
    let desc = ttl.time_to_live_description().expect("a TTL description");
    assert_eq!(desc.attribute_name(), Some("expires_at"));
    let row = client
        .get_item()
        .table_name(store.table())
        .key("pk", AttributeValue::S("clients".into()))
        .key("sk", AttributeValue::S("a".into()))
        .send()
        .await
        .expect("GetItem");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expires: u64 = match row.item().and_then(|i| i.get("expires_at")) {
        Some(AttributeValue::N(n)) => n.parse().expect("number"),
        other => panic!("expires_at: {other:?}"),
    };
    assert!(
        (now + 3500..=now + 3700).contains(&expires),
        "{expires} vs {now}"
    );
    // Reopening an existing table with TTL on is fine (idempotent set-up).
    let again = DynamoConfig::new("x")
        .with_table(store.table())
        .with_client_ttl(Duration::from_secs(3600));
    DynamoLeaseStore::open(client.clone(), again)
        .await
        .expect("reopen");
    common::drop_table(&client, store.table()).await;
}

/// Replaces the answer to the first `UpdateItem` (after the server applied it) by a 500, as a
/// reply lost after sending would look.
#[derive(Debug, Default)]
struct LoseFirstUpdate {
    updates: AtomicU64,
}

impl Intercept for LoseFirstUpdate {
    fn name(&self) -> &'static str {
        "lose-first-update"
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<Metadata>().map(Metadata::name) != Some("UpdateItem") {
            return Ok(());
        }
        if self.updates.fetch_add(1, Ordering::Relaxed) > 0 {
            return Ok(());
        }
        let response = ctx.response_mut();
        *response.status_mut() = StatusCode::try_from(500)?;
        *response.body_mut() = SdkBody::from(
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected"}"#,
        );
        Ok(())
    }
}

#[derive(Debug)]
struct Shared(Arc<LoseFirstUpdate>);

impl Intercept for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut BeforeDeserializationInterceptorContextMut<'_>,
        rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.modify_before_deserialization(ctx, rc, cfg)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_take_whose_reply_was_lost_is_settled_as_ours() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let plain = common::client(&endpoint);
    let (stream, shard, me) = ("s", ShardId::from("shard-0"), ClientId::from("me"));
    // With the SDK's retries: the retry finds the row taken by us (ALL_OLD) and says so.
    // Without them: the store re-reads the row.
    for retries in [true, false] {
        let setup = common::fresh_store(&plain, "ambiguous").await;
        setup
            .create_if_absent(stream, &shard, &[])
            .await
            .expect("create");
        let lose = Arc::new(LoseFirstUpdate::default());
        let faulty = common::client_with(&endpoint, |b| {
            let b = b.interceptor(Shared(lose.clone()));
            if retries {
                b
            } else {
                b.retry_config(RetryConfig::disabled())
            }
        });
        let config = DynamoConfig::new("x").with_table(setup.table());
        let store = DynamoLeaseStore::open(faulty, config).await.expect("open");
        let lease = store
            .take(stream, &shard, &me, 0)
            .await
            .unwrap_or_else(|e| panic!("retries {retries}: the applied take must be ours: {e:?}"));
        assert_eq!((lease.owner, lease.token), (Some(me.clone()), 1));
        assert_eq!(
            lose.updates.load(Ordering::Relaxed),
            if retries { 2 } else { 1 }
        );
        if !retries {
            assert_eq!(store.stats().rereads, 1, "settled by one re-read");
        }
        // A take that was not applied is not mistaken for ours: someone else's token.
        let other = store
            .take(stream, &shard, &ClientId::from("other"), 0)
            .await;
        assert!(
            matches!(other, Err(StoreError::LeaseLost { .. })),
            "{other:?}"
        );
        common::drop_table(&plain, setup.table()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkpoint_is_one_write_and_no_read() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let store = common::fresh_store(&client, "cost").await;
    let (stream, shard) = ("s", ShardId::from("shard-0"));
    store
        .create_if_absent(stream, &shard, &[])
        .await
        .expect("create");
    let lease = store
        .take(stream, &shard, &ClientId::from("a"), 0)
        .await
        .expect("take");
    let tenure = lease.tenure().expect("owned");
    const N: u64 = 100;
    let before = store.stats();
    for i in 1..=N {
        store
            .checkpoint(stream, &tenure, &after(u128::from(i)))
            .await
            .expect("checkpoint");
    }
    let cost = store.stats().since(&before);
    println!(
        "per checkpoint: {:.2} requests ({:.2} UpdateItem writes, {:.2} reads)",
        cost.requests() as f64 / N as f64,
        cost.writes() as f64 / N as f64,
        cost.reads() as f64 / N as f64
    );
    assert_eq!((cost.checkpoint, cost.writes(), cost.reads()), (N, N, 0));
    let before = store.stats();
    store
        .heartbeat(&ClientId::from("a"))
        .await
        .expect("heartbeat");
    store
        .release(stream, &tenure, Some(&after(u128::from(N) + 1)))
        .await
        .expect("release");
    let cost = store.stats().since(&before);
    assert_eq!((cost.heartbeat, cost.release, cost.requests()), (1, 1, 2));
    common::drop_table(&client, store.table()).await;
}
