//! A write whose connection dies mid-operation has an unknown outcome; the store settles it by
//! re-reading the row. A one-shot TCP proxy in front of Redis cuts the connection either after
//! the command reached the server (the reply is lost: the write happened) or before (it did
//! not).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, LeaseStore, StoreError};
use kinsumer_redis::RedisLeaseStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASS: u8 = 0;
/// Forward the next command, then drop the connection instead of its reply.
const LOSE_REPLY: u8 = 1;
/// Drop the connection instead of forwarding the next command.
const LOSE_REQUEST: u8 = 2;

/// Starts the proxy to `upstream` (`host:port`) and returns its port and its fault switch.
async fn proxy(upstream: String) -> (u16, Arc<AtomicU8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mode = Arc::new(AtomicU8::new(PASS));
    let switch = mode.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let mode = mode.clone();
            tokio::spawn(async move {
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
                loop {
                    tokio::select! {
                        n = client_rx.read(&mut up) => {
                            let Ok(n @ 1..) = n else { return };
                            if mode.compare_exchange(LOSE_REQUEST, PASS, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                                return; // both halves dropped: the client sees the connection die
                            }
                            if server_tx.write_all(&up[..n]).await.is_err() { return; }
                        }
                        n = server_rx.read(&mut down) => {
                            let Ok(n @ 1..) = n else { return };
                            if mode.compare_exchange(LOSE_REPLY, PASS, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                                return;
                            }
                            if client_tx.write_all(&down[..n]).await.is_err() { return; }
                        }
                    }
                }
            });
        }
    });
    (port, switch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_are_settled_by_re_reading() {
    let Some(url) = common::redis_url() else {
        return;
    };
    let upstream = kinsumer_test_env::services::authority(&url).expect("host:port");
    let (port, mode) = proxy(upstream).await;
    let app = common::unique_app("ambiguous");
    let store = RedisLeaseStore::connect(&format!("redis://127.0.0.1:{port}"), &app)
        .await
        .expect("connect through the proxy");
    let direct = RedisLeaseStore::connect(&url, &app).await.expect("connect");
    let (stream, me) = ("orders", ClientId::from("me"));
    let (a, b) = (ShardId::from("shard-a"), ShardId::from("shard-b"));
    // Warm up: every script is loaded, so the next command is one EVALSHA.
    for shard in [&a, &b] {
        store
            .create_if_absent(stream, shard, &[])
            .await
            .expect("create");
    }
    let warm = store.take(stream, &b, &me, 0).await.expect("take b");
    let warm = warm.tenure().expect("owned");
    store
        .checkpoint(stream, &warm, &Checkpoint::TrimHorizon)
        .await
        .expect("checkpoint b");

    // The take reaches Redis, its reply is lost: the re-read shows it, so it succeeded.
    mode.store(LOSE_REPLY, Ordering::SeqCst);
    let taken = store
        .take(stream, &a, &me, 0)
        .await
        .expect("settled by re-reading");
    assert_eq!((taken.owner.clone(), taken.token), (Some(me.clone()), 1));
    assert_eq!(mode.load(Ordering::SeqCst), PASS, "the fault fired");
    let tenure = taken.tenure().expect("owned");

    // A checkpoint whose reply is lost: applied, and so reported.
    let cp = Checkpoint::AtTimestamp(42);
    mode.store(LOSE_REPLY, Ordering::SeqCst);
    store
        .checkpoint(stream, &tenure, &cp)
        .await
        .expect("settled by re-reading");
    assert_eq!(mode.load(Ordering::SeqCst), PASS, "the fault fired");
    let row = direct.lease(stream, &a).await.expect("lease").expect("row");
    assert_eq!(row.checkpoint, Some(cp));

    // A checkpoint that never reached Redis: the re-read does not show it, so the outcome is
    // reported unknown (retry), never as success.
    let cp = Checkpoint::AtTimestamp(43);
    mode.store(LOSE_REQUEST, Ordering::SeqCst);
    let lost = store.checkpoint(stream, &tenure, &cp).await;
    assert!(matches!(lost, Err(StoreError::Transient(_))), "{lost:?}");
    assert_eq!(mode.load(Ordering::SeqCst), PASS, "the fault fired");
    store.checkpoint(stream, &tenure, &cp).await.expect("retry");
    let row = direct.lease(stream, &a).await.expect("lease").expect("row");
    assert_eq!(row.checkpoint, Some(cp));

    // A release whose reply is lost: settled as done.
    mode.store(LOSE_REPLY, Ordering::SeqCst);
    store
        .release(stream, &tenure, None, None)
        .await
        .expect("settled by re-reading");
    assert_eq!(mode.load(Ordering::SeqCst), PASS, "the fault fired");
    let row = direct.lease(stream, &a).await.expect("lease").expect("row");
    assert_eq!((row.owner, row.token), (None, 1));

    common::cleanup(&url, &app).await;
}
