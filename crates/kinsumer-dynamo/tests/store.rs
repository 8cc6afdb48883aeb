//! Behaviour beyond the conformance suite, against moto: corrupt items, a missing table,
//! TTL, ambiguous takes, throttling, and the cost of one checkpoint.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, LeaseStore, StoreError};
use kinsumer_dynamo::aws_sdk_dynamodb::config::retry::RetryConfig;
use kinsumer_dynamo::aws_sdk_dynamodb::types::AttributeValue;
use kinsumer_dynamo::{DynamoConfig, DynamoLeaseStore};
use kinsumer_test_env::emulator::{InjectReplies, ReplaceReplies};
use kinsumer_test_env::rows::client_counters;

fn after(n: u128) -> Checkpoint {
    Checkpoint::After(Position::new(SequenceNumber::from_u128(n), 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_item_is_reported_by_itself_and_the_others_read_on() {
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
    put("lease#tests#s", "no-token", vec![]).await.expect("put");
    put(
        "lease#tests#s",
        "string-token",
        vec![("token", AttributeValue::S("1".into()))],
    )
    .await
    .expect("put");
    put(
        "lease#tests#s",
        "bad-checkpoint",
        vec![
            ("token", AttributeValue::N("1".into())),
            ("checkpoint", AttributeValue::S("AFTER:nope".into())),
        ],
    )
    .await
    .expect("put");
    put(
        "clients#tests",
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
            &format!("lease#tests#s/{shard}"),
        );
        // A write conditioned on the row reports the corruption too (from ALL_OLD).
        corrupt_at(
            store
                .take("s", &id, &ClientId::from("a"), 0)
                .await
                .map(drop),
            &format!("lease#tests#s/{shard}"),
        );
    }
    // The read of every lease names each bad row by itself and returns the good one.
    let good = ShardId::from("good");
    store
        .create_if_absent("s", &good, &[])
        .await
        .expect("create");
    let listed = store
        .leases("s")
        .await
        .expect("the read of every lease succeeds");
    assert_eq!(
        listed.rows.iter().map(|l| &l.shard).collect::<Vec<_>>(),
        [&good]
    );
    let mut named: Vec<String> = listed.corrupt.iter().map(|r| r.key.clone()).collect();
    named.sort();
    let mut expected: Vec<String> = ["bad-checkpoint", "no-token", "string-token"]
        .iter()
        .map(|sk| format!("{table}/lease#tests#s/{sk}"))
        .collect();
    expected.sort();
    assert_eq!(named, expected, "{:?}", listed.corrupt);
    assert!(
        listed
            .corrupt
            .iter()
            .all(|r| r.id.is_some() && !r.reason.is_empty())
    );
    // The same for clients, beside a good one.
    store
        .heartbeat(&ClientId::from("fine"), 3)
        .await
        .expect("heartbeat");
    let clients = store
        .clients()
        .await
        .expect("the read of every client succeeds");
    assert_eq!(
        clients
            .rows
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["fine"]
    );
    assert_eq!(
        clients
            .corrupt
            .iter()
            .map(|r| r.key.clone())
            .collect::<Vec<_>>(),
        [format!("{table}/clients#tests/bad-counter")]
    );
    // A heartbeat writes its value unconditionally: the client repairs its own row.
    store
        .heartbeat(&ClientId::from("bad-counter"), 1)
        .await
        .expect("heartbeat over a bad value");
    let clients = store.clients().await.expect("clients");
    assert!(clients.corrupt.is_empty(), "{:?}", clients.corrupt);
    assert_eq!(clients.rows.len(), 2);
    common::drop_table(&client, &table).await;
}

/// A heartbeat writes its value, the whole u64 range exactly; a row of an older version (a small
/// counter) still reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_values_are_exact_numbers_and_old_rows_still_read() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let store = common::fresh_store(&client, "beats").await;
    let table = store.table().to_owned();
    // A row as the previous version left it: a counter bumped by one per heartbeat.
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("clients#tests".into()))
        .item("sk", AttributeValue::S("old".into()))
        .item("counter", AttributeValue::N("17".into()))
        .send()
        .await
        .expect("put");
    assert_eq!(client_counters(&store).await, [("old".to_owned(), 17)]);
    let stored = |sk: &'static str| {
        let (client, table) = (client.clone(), table.clone());
        async move {
            let row = client
                .get_item()
                .table_name(table)
                .key("pk", AttributeValue::S("clients#tests".into()))
                .key("sk", AttributeValue::S(sk.into()))
                .consistent_read(true)
                .send()
                .await
                .expect("GetItem");
            row.item().and_then(|i| i.get("counter")).cloned()
        }
    };
    // Written, not added: the restarted client replaces the old counter with its own value.
    let (old, new) = (ClientId::from("old"), ClientId::from("new"));
    store.heartbeat(&old, u64::MAX).await.expect("heartbeat");
    store.heartbeat(&new, 1 << 63).await.expect("heartbeat");
    assert_eq!(
        stored("old").await,
        Some(AttributeValue::N("18446744073709551615".into()))
    );
    assert_eq!(
        client_counters(&store).await,
        [("new".to_owned(), 1 << 63), ("old".to_owned(), u64::MAX)]
    );
    // A smaller value replaces a larger one, and a repeat is harmless.
    store.heartbeat(&old, 5).await.expect("heartbeat");
    store.heartbeat(&old, 5).await.expect("heartbeat again");
    assert_eq!(stored("old").await, Some(AttributeValue::N("5".into())));
    assert_eq!(
        client_counters(&store).await,
        [("new".to_owned(), 1 << 63), ("old".to_owned(), 5)]
    );
    common::drop_table(&client, &table).await;
}

/// Two applications pointed at one table share no row: each key names its application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_sharing_a_table_share_nothing() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let billing = common::fresh_store(&client, "shared").await;
    let table = billing.table().to_owned();
    let audit = DynamoLeaseStore::open(
        client.clone(),
        DynamoConfig::new("audit").with_table(&table),
    )
    .await
    .expect("open the same table for another application");
    let shard = ShardId::from("shardId-000000000000");
    let a = ClientId::from("a");
    billing.heartbeat(&a, 1).await.expect("heartbeat");
    billing
        .create_if_absent("s", &shard, &[])
        .await
        .expect("create");
    let taken = billing.take("s", &shard, &a, 0).await.expect("take");
    billing
        .checkpoint("s", &taken.tenure().expect("owned"), &after(7))
        .await
        .expect("checkpoint");

    assert_eq!(
        audit.clients().await.expect("clients"),
        kinsumer_core::store::Rows::default()
    );
    assert_eq!(
        audit.leases("s").await.expect("leases"),
        kinsumer_core::store::Rows::default()
    );
    assert_eq!(audit.lease("s", &shard).await.expect("lease"), None);
    // The other application starts its own lease from scratch, at token 0.
    audit
        .create_if_absent("s", &shard, &[])
        .await
        .expect("create");
    let mine = audit.take("s", &shard, &a, 0).await.expect("a fresh lease");
    assert_eq!((mine.token, mine.checkpoint), (1, None));
    assert_eq!(billing.leases("s").await.expect("leases").rows.len(), 1);
    common::drop_table(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_fatal_and_named() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let table = common::unique_table("missing");
    let opened = DynamoLeaseStore::open(
        client.clone(),
        DynamoConfig::new("tests").with_table(&table),
    )
    .await;
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
    match store.heartbeat(&ClientId::from("a"), 1).await {
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
    let config = DynamoConfig::new("tests")
        .with_table(common::unique_table("ttl"))
        .create_table_if_missing(true)
        .with_client_ttl(Duration::from_secs(3600));
    let store = DynamoLeaseStore::open(client.clone(), config)
        .await
        .expect("open");
    let beat = (3 << 32) | 1;
    assert_eq!(store.heartbeat(&ClientId::from("a"), beat).await, Ok(()));
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
        .key("pk", AttributeValue::S("clients#tests".into()))
        .key("sk", AttributeValue::S("a".into()))
        .send()
        .await
        .expect("GetItem");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert_eq!(
        row.item().and_then(|i| i.get("counter")),
        Some(&AttributeValue::N(beat.to_string())),
        "the heartbeat writes its value along with the TTL stamp"
    );
    let expires: u64 = match row.item().and_then(|i| i.get("expires_at")) {
        Some(AttributeValue::N(n)) => n.parse().expect("number"),
        other => panic!("expires_at: {other:?}"),
    };
    assert!(
        (now + 3500..=now + 3700).contains(&expires),
        "{expires} vs {now}"
    );
    // Reopening an existing table with TTL on is fine (idempotent set-up).
    let again = DynamoConfig::new("tests")
        .with_table(store.table())
        .with_client_ttl(Duration::from_secs(3600));
    DynamoLeaseStore::open(client.clone(), again)
        .await
        .expect("reopen");
    common::drop_table(&client, store.table()).await;
}

/// Replaces the server's answer to the first `count` requests of `operation` (after the server
/// handled them) by `status` and `body`: a reply lost after sending, or throttling.
#[derive(Debug)]
struct ReplaceFirst {
    operation: &'static str,
    count: u64,
    status: u16,
    body: &'static str,
    /// Requests of `operation` seen so far.
    seen: AtomicU64,
}

impl ReplaceFirst {
    /// Shared: the test reads `seen` while the client's interceptor holds it.
    fn new(operation: &'static str, count: u64, status: u16, body: &'static str) -> Arc<Self> {
        Arc::new(Self {
            operation,
            count,
            status,
            body,
            seen: AtomicU64::new(0),
        })
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl ReplaceReplies for ReplaceFirst {
    fn replace(&self, operation: &str) -> Option<(u16, String)> {
        if operation != self.operation || self.seen.fetch_add(1, Ordering::Relaxed) >= self.count {
            return None;
        }
        Some((self.status, self.body.to_owned()))
    }
}

const LOST_REPLY: &str =
    r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected"}"#;
const THROTTLED: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"injected"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_take_whose_reply_was_lost_is_settled_as_ours() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let plain = common::client(&endpoint);
    let (stream, shard, me) = ("s", ShardId::from("shard-0"), ClientId::from("me"));
    // Whether the caller's client retries or not, the store turns the SDK's retries off and
    // settles the unknown outcome with one re-read (see the crate docs: one retry layer each).
    for retries in [true, false] {
        let setup = common::fresh_store(&plain, "ambiguous").await;
        setup
            .create_if_absent(stream, &shard, &[])
            .await
            .expect("create");
        let lose = ReplaceFirst::new("UpdateItem", 1, 500, LOST_REPLY);
        let faulty = common::client_with(&endpoint, |b| {
            let b = b.interceptor(InjectReplies(lose.clone()));
            if retries {
                b
            } else {
                b.retry_config(RetryConfig::disabled())
            }
        });
        let config = DynamoConfig::new("tests").with_table(setup.table());
        let store = DynamoLeaseStore::open(faulty, config).await.expect("open");
        let lease = store
            .take(stream, &shard, &me, 0)
            .await
            .unwrap_or_else(|e| panic!("retries {retries}: the applied take must be ours: {e:?}"));
        assert_eq!((lease.owner, lease.token), (Some(me.clone()), 1));
        assert_eq!(lose.seen(), 1, "retries {retries}: the SDK did not retry");
        assert_eq!(store.stats().rereads, 1, "settled by one re-read");
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
        .heartbeat(&ClientId::from("a"), 1)
        .await
        .expect("heartbeat");
    store
        .release(stream, &tenure, Some(&after(u128::from(N) + 1)), None)
        .await
        .expect("release");
    let cost = store.stats().since(&before);
    assert_eq!((cost.heartbeat, cost.release, cost.requests()), (1, 1, 2));
    common::drop_table(&client, store.table()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff_then_reported_as_throttled() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let plain = common::client(&endpoint);
    let setup = common::fresh_store(&plain, "throttle").await;
    let (stream, shard, me) = ("s", ShardId::from("shard-0"), ClientId::from("me"));
    setup
        .create_if_absent(stream, &shard, &[])
        .await
        .expect("create");
    let tenure = setup
        .take(stream, &shard, &me, 0)
        .await
        .expect("take")
        .tenure()
        .expect("owned");
    // The SDK's own retries are off, so every retry seen here is the store's. (The injected
    // answers replace those of requests the server applied: retrying a fenced write that was
    // in fact applied is harmless, it sets the same values under the same condition.)
    let store_over = |inject: &Arc<ReplaceFirst>| {
        let inject = InjectReplies(inject.clone());
        let client = common::client_with(&endpoint, |b| {
            b.interceptor(inject).retry_config(RetryConfig::disabled())
        });
        DynamoLeaseStore::open(client, DynamoConfig::new("tests").with_table(setup.table()))
    };

    // Three throttled replies, then the write goes through: the caller only sees success.
    let few = ReplaceFirst::new("UpdateItem", 3, 400, THROTTLED);
    let store = store_over(&few).await.expect("open");
    let started = std::time::Instant::now();
    store
        .checkpoint(stream, &tenure, &after(7))
        .await
        .expect("a checkpoint throttled 3 times succeeds on the 4th request");
    let waited = started.elapsed();
    assert_eq!(
        few.seen(),
        4,
        "3 throttled requests and one that went through"
    );
    assert_eq!(store.stats().checkpoint, 4, "every retry is counted");
    // Backoff, not a hot loop: at least half of 50 + 100 + 200 ms (the jitter's lower bound).
    assert!(
        waited >= Duration::from_millis(175),
        "three retries backed off for only {waited:?}"
    );
    let row = setup
        .lease(stream, &shard)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(row.checkpoint, Some(after(7)));

    // Throttled for longer than the store retries: a typed, retryable `Throttled` — never
    // LeaseLost, which would make the engine drop a lease it still holds.
    let many = ReplaceFirst::new("UpdateItem", 1_000, 400, THROTTLED);
    let store = store_over(&many).await.expect("open");
    let err = store
        .checkpoint(stream, &tenure, &after(8))
        .await
        .expect_err("throttled throughout");
    assert!(
        matches!(err, StoreError::Throttled(_)) && err.is_retryable(),
        "{err:?}"
    );
    assert_eq!(many.seen(), 5, "the first request and 4 retries");
    common::drop_table(&plain, setup.table()).await;
}
