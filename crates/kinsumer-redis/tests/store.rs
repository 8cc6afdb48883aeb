//! The Redis store beyond the shared contract: its key layout, isolation between applications
//! and streams, corrupt values, and what it says about connections.

mod common;

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, LeaseStore, StoreError, Tenure};
use kinsumer_redis::RedisLeaseStore;
use kinsumer_test_env::rows::client_counters;

fn shard(n: u32) -> ShardId {
    ShardId::from(format!("shardId-{n:012}"))
}

async fn hget(conn: &mut redis::aio::MultiplexedConnection, key: &str, field: &str) -> String {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(conn)
        .await
        .expect("hget")
}

async fn store(url: &str, tag: &str) -> RedisLeaseStore {
    RedisLeaseStore::connect(url, &common::unique_app(tag))
        .await
        .expect("connect")
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let store = store(&url, "layout").await;
    let app = store.application().to_owned();
    assert_eq!(store.key_prefix(), format!("kinsumer:{{{app}}}:"));
    assert_eq!(store.clients_key(), format!("kinsumer:{{{app}}}:clients"));
    assert_eq!(
        store.leases_key("orders"),
        format!("kinsumer:{{{app}}}:leases:orders")
    );

    // A beat beyond i64::MAX, as the engine writes them: incarnation in the high bits.
    let beat = (0xDEAD_BEEF_u64 << 32) | 17;
    store
        .heartbeat(&ClientId::from("worker-1"), beat)
        .await
        .expect("heartbeat");
    store
        .create_if_absent("orders", &shard(1), &[shard(0)])
        .await
        .expect("create");
    let tenure = store
        .take("orders", &shard(1), &ClientId::from("worker-1"), 0)
        .await
        .expect("take")
        .tenure()
        .expect("owned");
    let cp: Checkpoint = "AFTER:49590338271490256608559692538361571095921575989136588898/0"
        .parse()
        .expect("valid");
    store
        .checkpoint("orders", &tenure, &cp)
        .await
        .expect("checkpoint");

    let mut conn = common::raw_connection(&url).await;
    let counter: String = redis::cmd("HGET")
        .arg(store.clients_key())
        .arg("worker-1")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(counter, beat.to_string(), "the decimal text of the u64");
    assert_eq!(counter, "16045690981097406481");
    let row: String = redis::cmd("HGET")
        .arg(store.leases_key("orders"))
        .arg(shard(1).as_str())
        .query_async(&mut conn)
        .await
        .expect("hget");
    let row: serde_json::Value = serde_json::from_str(&row).expect("JSON");
    assert_eq!(
        row,
        serde_json::json!({
            "owner": "worker-1",
            "token": "1",
            "checkpoint": "AFTER:49590338271490256608559692538361571095921575989136588898/0",
            "parents": ["shardId-000000000000"],
        })
    );
    // A watcher's mark sits beside the value it was made at; the change counter is a string.
    let marked = store
        .mark_dead(&ClientId::from("worker-1"), beat)
        .await
        .expect("mark_dead");
    assert!(marked);
    assert_eq!(store.announce().await.expect("announce"), 1);
    let mark: String = redis::cmd("HGET")
        .arg(store.judged_dead_key())
        .arg("worker-1")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(mark, beat.to_string());
    let changes: String = redis::cmd("GET")
        .arg(store.changes_key())
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(changes, "1");
    assert_eq!(
        store.judged_dead_key(),
        format!("kinsumer:{{{app}}}:judged_dead")
    );
    assert_eq!(store.changes_key(), format!("kinsumer:{{{app}}}:changes"));
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("kinsumer:{{{app}}}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    keys.sort();
    let mut expected = vec![
        store.changes_key(),
        store.clients_key(),
        store.judged_dead_key(),
        store.leases_key("orders"),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    common::cleanup(&url, &app).await;
}

#[tokio::test]
async fn heartbeat_values_are_decimal_u64_text_and_old_rows_still_read() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let store = store(&url, "beats").await;
    let mut conn = common::raw_connection(&url).await;
    // A row as the previous version left it: a small counter bumped by HINCRBY.
    let _: i64 = redis::cmd("HINCRBY")
        .arg(store.clients_key())
        .arg("old")
        .arg(17)
        .query_async(&mut conn)
        .await
        .expect("hincrby");
    let key = store.clients_key();
    assert_eq!(client_counters(&store).await, [("old".to_owned(), 17)]);
    // The restarted client overwrites it with a value of its own, here the largest u64.
    store
        .heartbeat(&ClientId::from("old"), u64::MAX)
        .await
        .expect("heartbeat");
    assert_eq!(hget(&mut conn, &key, "old").await, "18446744073709551615");
    // Values are written, not added: a smaller one replaces a larger one, a repeat is harmless.
    store
        .heartbeat(&ClientId::from("new"), 1 << 63)
        .await
        .expect("heartbeat");
    store
        .heartbeat(&ClientId::from("old"), 3)
        .await
        .expect("heartbeat");
    store
        .heartbeat(&ClientId::from("old"), 3)
        .await
        .expect("heartbeat again");
    assert_eq!(hget(&mut conn, &key, "old").await, "3");
    assert_eq!(hget(&mut conn, &key, "new").await, "9223372036854775808");
    assert_eq!(
        client_counters(&store).await,
        [("new".to_owned(), 1 << 63), ("old".to_owned(), 3)]
    );
    common::cleanup(&url, store.application()).await;
}

#[tokio::test]
async fn applications_and_streams_do_not_interfere() {
    let Some(url) = common::redis_url() else {
        return;
    };
    // Three applications, each with the same two stream names, shard ids and client ids.
    let stores = [
        store(&url, "iso-a").await,
        store(&url, "iso-b").await,
        store(&url, "iso-c").await,
    ];
    let streams = ["orders", "payments"];
    for (i, store) in stores.iter().enumerate() {
        for n in 0..=i as u64 {
            store
                .heartbeat(&ClientId::from("worker"), 100 * (i as u64 + 1) + n)
                .await
                .expect("heartbeat");
        }
        for (j, stream) in streams.iter().enumerate() {
            for n in 0..=j as u32 {
                store
                    .create_if_absent(stream, &shard(n), &[])
                    .await
                    .expect("create");
            }
            let owner = ClientId::from(format!("owner-{i}-{j}"));
            let tenure = store
                .take(stream, &shard(0), &owner, 0)
                .await
                .expect("take");
            let tenure = tenure.tenure().expect("owned");
            let cp = Checkpoint::AtTimestamp(1_000 * i as u64 + j as u64);
            store
                .checkpoint(stream, &tenure, &cp)
                .await
                .expect("checkpoint");
        }
    }
    for (i, store) in stores.iter().enumerate() {
        let clients = store.clients().await.expect("clients").rows;
        assert_eq!(clients.len(), 1);
        // The last value this application's client wrote, untouched by the others'.
        assert_eq!(
            clients[0].counter,
            100 * (i as u64 + 1) + i as u64,
            "{}",
            store.application()
        );
        for (j, stream) in streams.iter().enumerate() {
            let leases = store.leases(stream).await.expect("leases").rows;
            assert_eq!(leases.len(), j + 1, "{} {stream}", store.application());
            let first = &leases[0];
            assert_eq!(first.owner, Some(ClientId::from(format!("owner-{i}-{j}"))));
            assert_eq!(first.token, 1);
            assert_eq!(
                first.checkpoint,
                Some(Checkpoint::AtTimestamp(1_000 * i as u64 + j as u64))
            );
        }
        // A write fenced in one application cannot touch another's row of the same name.
        let foreign = Tenure {
            shard: shard(0),
            owner: ClientId::from("owner-0-0"),
            token: 1,
        };
        let result = store.finish("orders", &foreign).await;
        if i == 0 {
            result.expect("its own tenure");
        } else {
            assert!(
                matches!(result, Err(StoreError::LeaseLost { .. })),
                "{result:?}"
            );
        }
    }
    for store in &stores {
        common::cleanup(&url, store.application()).await;
    }
}

#[tokio::test]
async fn a_corrupt_row_is_reported_by_itself_and_the_others_read_on() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let store = store(&url, "corrupt").await;
    let mut conn = common::raw_connection(&url).await;
    let stream = "orders";
    let hash = store.leases_key(stream);
    let owner = ClientId::from("a");
    let bad_rows = [
        "not json",
        r#"["a list"]"#,
        r#"{"token":5}"#,
        r#"{"token":"minus one"}"#,
        r#"{"token":"1","owner":7}"#,
        r#"{"token":"1","checkpoint":"AFTER:12x/0"}"#,
        r#"{"token":"1","finished":"yes"}"#,
        r#"{"token":"1","parents":"p"}"#,
        r#"{"token":"01"}"#,
        r#"{"token":"+1"}"#,
        r#"{"token":"18446744073709551616"}"#,
        r#"{"token":"1","checkpoint":"AFTER:5/+1"}"#,
        r#"{"token":"1","successor":["x"]}"#,
        r#"{"token":"1","owner":""}"#,
        "\u{1b}[31m{\"token\":\"1\"}",
    ];
    // A good row beside the bad ones: every read of the leases still returns it.
    let good = ShardId::from("good");
    store
        .create_if_absent(stream, &good, &[])
        .await
        .expect("create");
    for (n, raw) in bad_rows.iter().enumerate() {
        let id = shard(n as u32);
        let _: i64 = redis::cmd("HSET")
            .arg(&hash)
            .arg(id.as_str())
            .arg(*raw)
            .query_async(&mut conn)
            .await
            .expect("hset");
        let name = format!("{hash} {id}");
        let tenure = Tenure {
            shard: id.clone(),
            owner: owner.clone(),
            token: 1,
        };
        let cp = Checkpoint::TrimHorizon;
        let results = [
            ("lease", store.lease(stream, &id).await.map(drop)),
            (
                "create_if_absent",
                store.create_if_absent(stream, &id, &[]).await.map(drop),
            ),
            ("take", store.take(stream, &id, &owner, 1).await.map(drop)),
            ("checkpoint", store.checkpoint(stream, &tenure, &cp).await),
            ("release", store.release(stream, &tenure, None, None).await),
            ("finish", store.finish(stream, &tenure).await),
            ("delete_finished", store.delete_finished(stream, &id).await),
            (
                "reset_checkpoint",
                store.reset_checkpoint(stream, &id, 1, &cp).await,
            ),
        ];
        for (op, result) in results {
            match result {
                Err(StoreError::Corrupt { key, reason }) => {
                    assert_eq!(key, name, "{op} on {raw}: {reason}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{op} on {raw}: expected Corrupt naming {name}, got {other:?}"),
            }
        }
        let read = store.leases(stream).await.expect("leases");
        assert_eq!(
            read.rows.iter().map(|l| &l.shard).collect::<Vec<_>>(),
            [&good],
            "{raw}: the good row reads on"
        );
        assert_eq!(read.corrupt.len(), 1, "{raw}: {:?}", read.corrupt);
        assert_eq!(read.corrupt[0].key, name, "{raw}");
        assert_eq!(read.corrupt[0].id.as_deref(), Some(id.as_str()), "{raw}");
        let _: i64 = redis::cmd("HDEL")
            .arg(&hash)
            .arg(id.as_str())
            .query_async(&mut conn)
            .await
            .expect("hdel");
    }

    // A key holding another type, and a heartbeat counter that is not a number.
    let _: () = redis::cmd("SET")
        .arg(&hash)
        .arg("a string")
        .query_async(&mut conn)
        .await
        .expect("set");
    let result = store.leases(stream).await;
    assert!(
        matches!(&result, Err(StoreError::Corrupt { key, .. }) if *key == hash),
        "{result:?}"
    );
    let result = store.take(stream, &shard(0), &owner, 0).await;
    assert!(
        matches!(&result, Err(StoreError::Corrupt { key, .. }) if key.starts_with(&hash)),
        "{result:?}"
    );
    let _: i64 = redis::cmd("HSET")
        .arg(store.clients_key())
        .arg("a")
        .arg("lots")
        .query_async(&mut conn)
        .await
        .expect("hset");
    let name = format!("{} a", store.clients_key());
    store
        .heartbeat(&ClientId::from("b"), 7)
        .await
        .expect("heartbeat");
    // Not a number, negative (no version wrote one), or not in canonical form: the row is
    // reported by itself, and the other client reads on.
    for odd in ["lots", "-3", "+3", "03", "3.0", "18446744073709551616", ""] {
        let _: i64 = redis::cmd("HSET")
            .arg(store.clients_key())
            .arg("a")
            .arg(odd)
            .query_async(&mut conn)
            .await
            .expect("hset");
        let read = store.clients().await.expect("clients");
        assert_eq!(
            read.rows.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["b"],
            "{odd:?}"
        );
        assert_eq!(read.corrupt.len(), 1, "{odd:?}");
        assert_eq!(read.corrupt[0].key, name, "{odd:?}");
    }
    let _: i64 = redis::cmd("HDEL")
        .arg(store.clients_key())
        .arg("b")
        .query_async(&mut conn)
        .await
        .expect("hdel");
    // A heartbeat writes its value unconditionally, so it repairs the row.
    store.heartbeat(&owner, 5).await.expect("heartbeat");
    let clients = store.clients().await.expect("clients").rows;
    assert_eq!(
        clients
            .iter()
            .map(|c| (c.id.as_str(), c.counter))
            .collect::<Vec<_>>(),
        [("a", 5)]
    );
    // The client hash holding another type: both name the key.
    let _: () = redis::cmd("SET")
        .arg(store.clients_key())
        .arg("a string")
        .query_async(&mut conn)
        .await
        .expect("set");
    let result = store.heartbeat(&owner, 6).await;
    assert!(
        matches!(&result, Err(StoreError::Corrupt { key, .. }) if *key == store.clients_key()),
        "{result:?}"
    );
    let result = store.clients().await;
    assert!(
        matches!(&result, Err(StoreError::Corrupt { key, .. }) if *key == store.clients_key()),
        "{result:?}"
    );
    common::cleanup(&url, store.application()).await;
}

#[tokio::test]
async fn connection_problems_are_classified_and_urls_stay_secret() {
    // Nothing listens on port 1: transient, and the password is not in the message.
    let err = RedisLeaseStore::connect("redis://user:hunter2@127.0.0.1:1", "app")
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, StoreError::Transient(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    let err = RedisLeaseStore::connect("redis://user:hunter2@host:notaport", "app")
        .await
        .expect_err("bad URL");
    assert!(matches!(err, StoreError::Fatal(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    #[cfg(not(feature = "tls"))]
    {
        let err = RedisLeaseStore::connect("rediss://127.0.0.1:6380", "app")
            .await
            .expect_err("no TLS without the feature");
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }

    let Some(url) = common::redis_url() else {
        return;
    };
    let store = RedisLeaseStore::connect(&url, "debug-app")
        .await
        .expect("connect");
    let debug = format!("{store:?}");
    assert!(
        debug.contains("debug-app") && !debug.contains("redis://"),
        "{debug}"
    );
    let bad = RedisLeaseStore::connect(&url, "a{b}").await;
    assert!(matches!(bad, Err(StoreError::Fatal(_))), "{bad:?}");
}
