//! Hostile items written into a running fleet's DynamoDB table (on moto): attributes of the
//! wrong type, odd numbers, missing keys' attributes. The other shards flow, no consumer stops,
//! and every read names the bad items (the testkit's vandal check); and an item the vandal
//! spoiled is repaired by `replace_corrupt`, which never overwrites a healthy item (the
//! testkit's repair check).

mod common;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::AttributeValue;
use kinsumer_core::rng::Rng;
use kinsumer_core::source::ShardId;
use kinsumer_dynamo::DynamoLeaseStore;
use kinsumer_testkit::conformance::{self, Vandal, hostile_number, hostile_text, lease_field};

struct DynamoVandal {
    client: Client,
    table: String,
}

/// A hostile attribute value: of a random type, or a number no kinsumer code writes.
fn hostile_value(rng: &mut Rng) -> AttributeValue {
    match rng.below(6) {
        0 => AttributeValue::S(hostile_text(rng)),
        1 => AttributeValue::N(
            ["1.5", "-1", "1E3", "18446744073709551616"][rng.below(4) as usize].into(),
        ),
        2 => AttributeValue::Bool(rng.chance(0.5)),
        3 => AttributeValue::L(vec![AttributeValue::N("1".into())]),
        4 => AttributeValue::Null(true),
        _ => AttributeValue::Ss(vec![hostile_number(rng).replace(' ', "x") + "s"]),
    }
}

impl DynamoVandal {
    /// A vandal of the items in `store`'s table, written through `client`.
    fn of(client: &Client, store: &DynamoLeaseStore) -> Self {
        Self {
            client: client.clone(),
            table: store.table().to_owned(),
        }
    }

    /// Sets the `token` attribute of the lease item of `shard`, which must exist.
    async fn set_token(
        &self,
        stream: &str,
        shard: &ShardId,
        token: AttributeValue,
    ) -> Result<UpdateItemOutput, SdkError<UpdateItemError>> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("lease#tests#{stream}")))
            .key("sk", AttributeValue::S(shard.to_string()))
            .update_expression("SET #t = :v")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":v", token)
            .send()
            .await
    }
}

#[async_trait]
impl Vandal for DynamoVandal {
    async fn spoil_lease(&self, stream: &str, shard: &ShardId, rng: &mut Rng) {
        let field = lease_field(rng);
        let _ = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(format!("lease#tests#{stream}")))
            .key("sk", AttributeValue::S(shard.to_string()))
            .update_expression("SET #f = :v")
            .expression_attribute_names("#f", field)
            .expression_attribute_values(":v", hostile_value(rng))
            .send()
            .await; // refused values are fine
    }

    async fn corrupt_lease(&self, stream: &str, shard: &ShardId) {
        // The token as a string: an attribute of the wrong type.
        self.set_token(stream, shard, AttributeValue::S("1".into()))
            .await
            .expect("UpdateItem of a corrupt lease item");
    }

    async fn exhaust_token(&self, stream: &str, shard: &ShardId) {
        self.set_token(stream, shard, AttributeValue::N(i64::MAX.to_string()))
            .await
            .expect("UpdateItem of the token");
    }

    async fn spoil_client(&self, client: &str, rng: &mut Rng) {
        // The heartbeat value, or the judged-dead mark beside it.
        let field = if rng.chance(0.5) {
            "counter"
        } else {
            "judged_dead"
        };
        let _ = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S("clients#tests".into()))
            .key("sk", AttributeValue::S(client.to_owned()))
            .update_expression("SET #c = :v")
            .expression_attribute_names("#c", field)
            .expression_attribute_values(":v", hostile_value(rng))
            .send()
            .await;
    }

    async fn spoil_changes(&self, rng: &mut Rng) {
        let _ = self.set_changes(hostile_value(rng)).await;
    }

    async fn corrupt_changes(&self) {
        self.set_changes(AttributeValue::N("-1".into()))
            .await
            .expect("UpdateItem of the change counter");
    }
}

impl DynamoVandal {
    /// Sets the change counter of the application `tests`.
    async fn set_changes(
        &self,
        value: AttributeValue,
    ) -> Result<UpdateItemOutput, SdkError<UpdateItemError>> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S("changes#tests".into()))
            .key("sk", AttributeValue::S("changes".into()))
            .update_expression("SET #c = :v")
            .expression_attribute_names("#c", "changes")
            .expression_attribute_values(":v", value)
            .send()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_goes_on_while_a_vandal_spoils_rows() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let store = common::fresh_store(&client, "vandal").await;
    let vandal = DynamoVandal::of(&client, &store);
    let report = conformance::fleet_under_vandal(store.clone(), "tests", &vandal, 13).await;
    eprintln!("dynamodb under a vandal: {report:?}");
    assert!(
        report.most_corrupt_seen > 0,
        "the vandal's items were reported: {report:?}"
    );
    common::drop_table(&client, store.table()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_item_is_repaired_and_a_healthy_one_never_overwritten() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let store = common::fresh_store(&client, "repair").await;
    let vandal = DynamoVandal::of(&client, &store);
    conformance::repair_of_a_corrupt_row(&store, &vandal).await;
    common::drop_table(&client, store.table()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_change_counter_is_written_afresh() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let client = common::client(&endpoint);
    let store = common::fresh_store(&client, "changes").await;
    let vandal = DynamoVandal::of(&client, &store);
    conformance::corrupt_change_counter(&store, &vandal).await;
    // Values of every other shape are written afresh too.
    let mut rng = Rng::new(5);
    for _ in 0..12 {
        vandal.spoil_changes(&mut rng).await;
        let value = kinsumer_core::store::LeaseStore::announce(&store)
            .await
            .expect("announce over a hostile counter");
        assert_eq!(
            kinsumer_core::store::LeaseStore::changes(&store)
                .await
                .expect("changes"),
            value
        );
    }
    common::drop_table(&client, store.table()).await;
}

/// `replace_corrupt` whose reply is lost (a `FaultProxy` between the store and moto) is
/// settled by re-reading: see `conformance::unknown_outcome`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_whose_reply_was_lost_is_settled_by_re_reading() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let authority =
        kinsumer_test_env::services::authority(&endpoint).expect("host:port in the endpoint");
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&authority.as_str())
        .expect("resolve moto's address")
        .next()
        .expect("an address");
    let proxy = kinsumer_testkit::FaultProxy::start(upstream).expect("start the proxy");
    let client = common::client(&endpoint);
    let direct = common::fresh_store(&client, "repair-lost").await;
    let vandal = DynamoVandal::of(&client, &direct);
    let through_proxy = endpoint.replacen(&authority, &proxy.addr().to_string(), 1);
    let config = kinsumer_dynamo::DynamoConfig::new("tests").with_table(direct.table());
    let faulty = DynamoLeaseStore::open(common::client(&through_proxy), config)
        .await
        .expect("open through the proxy");
    conformance::unknown_outcome::replace_corrupt_whose_reply_was_lost_is_ok(
        &faulty, &direct, &proxy, &vandal,
    )
    .await;
    common::drop_table(&client, direct.table()).await;
}
