//! A store that comes back broken stops the consumer and says why — even while the consumer
//! had fenced itself during the outage (before, a fenced consumer never looked at what its
//! heartbeats failed with, sat idle forever, and `shutdown` returned `Ok`).

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kinsumer_core::layer::{Layer, Layered, Op};
use kinsumer_core::source::SourceError;
use kinsumer_core::store::StoreError;
use kinsumer_core::{Config, Consumer, ConsumerError};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
use tokio::time::sleep;
use tracing_subscriber::fmt::format::FmtSpan;

const UP: u8 = 0;
const DOWN: u8 = 1;
const BROKEN: u8 = 2;
const SLOW: u8 = 3;

/// Every store call passes (`UP`), takes 4 s (`SLOW`), hangs (`DOWN`, an outage) or fails as
/// fatal (`BROKEN`: the table was dropped, the credentials revoked).
#[derive(Clone, Default)]
struct Outage(Arc<AtomicU8>);

impl Layer for Outage {
    async fn store_call<'a, T: Send + 'a>(
        &'a self,
        _op: &'a Op,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> Result<T, StoreError> {
        match self.0.load(Ordering::SeqCst) {
            UP => call.await,
            SLOW => {
                sleep(Duration::from_secs(4)).await;
                call.await
            }
            DOWN => std::future::pending().await,
            _ => Err(StoreError::Fatal(
                "table kinsumer-app does not exist".into(),
            )),
        }
    }

    async fn source_call<'a, T: Send + 'a>(
        &'a self,
        _op: &'a Op,
        call: impl Future<Output = Result<T, SourceError>> + Send + 'a,
    ) -> Result<T, SourceError> {
        call.await
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_comes_back_broken_after_an_outage_stops_the_consumer_with_its_error() {
    let stream = MemoryStream::new("s", 2);
    let outage = Outage::default();
    let store = Layered::new(MemoryLeaseStore::new(), outage.clone());
    let mut config = Config::new("app").with_client_id("a");
    config.rng_seed = Some(1);
    let mut consumer = Consumer::new(config, stream.clone(), store).expect("valid");
    let mut records = consumer.records().expect("start");
    let reader = tokio::spawn(async move {
        while let Some(next) = records.next().await {
            match next {
                Ok(r) => r.ack(),
                Err(e) => return Some(e),
            }
        }
        None
    });
    sleep(Duration::from_secs(5)).await;
    // An outage longer than the TTL: the consumer fences itself.
    outage.0.store(DOWN, Ordering::SeqCst);
    sleep(Duration::from_secs(30)).await;
    // The store answers again, but every call is refused for good.
    outage.0.store(BROKEN, Ordering::SeqCst);
    let stopped = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the record stream ends within seconds of the store coming back broken")
        .expect("reader");
    match stopped {
        Some(ConsumerError::Store(StoreError::Fatal(m))) => {
            assert!(m.contains("does not exist"), "{m}")
        }
        other => panic!("the stream ends with the store's fatal error, got {other:?}"),
    }
    match consumer.shutdown().await {
        Err(ConsumerError::Store(StoreError::Fatal(_))) => {}
        other => panic!("shutdown reports it too, got {other:?}"),
    }
}

/// A store that restarts empty (Redis without persistence): every lease row is gone. Nothing
/// can bring back the checkpoints, but it must not pass in silence — with `Latest`, the shards
/// start again at the tip and what arrived since the last commit is skipped. The client whose
/// rows vanished says so at ERROR, naming the shard and what it costs.
#[tokio::test(start_paused = true)]
async fn a_store_that_lost_its_leases_is_reported_loudly() {
    use kinsumer_core::InitialPosition;
    let (captured, _guard) = common::capture_logs(tracing::Level::INFO, FmtSpan::NONE);

    let stream = MemoryStream::new("s", 2);
    let store = MemoryLeaseStore::new();
    let empty = store.snapshot();
    let mut config = Config::new("app").with_client_id("a");
    config.initial_position = InitialPosition::Latest;
    config.rng_seed = Some(3);
    let mut consumer = Consumer::new(config, stream.clone(), store.clone()).expect("valid");
    let mut records = consumer.records().expect("start");
    tokio::spawn(async move {
        while let Some(Ok(r)) = records.next().await {
            r.ack();
        }
    });
    sleep(Duration::from_secs(5)).await;
    assert_eq!(store.peek_leases("s").len(), 2);
    store.lose_writes_since(&empty); // restarted empty
    sleep(Duration::from_secs(10)).await;
    let log = captured.text();
    assert!(
        log.contains("ERROR") && log.contains("vanished") && log.contains("with Latest"),
        "the loss is said at ERROR: {log}"
    );
    consumer.shutdown().await.expect("shutdown");
}

/// Shutdown fits Kubernetes' default 30 s grace period: it ends within `shutdown_timeout`
/// (25 s by default) on its slowest paths — a drain that times out (a record handed out is
/// never acked) against a store that stopped answering, or one that takes 4 s per call. Before,
/// it took up to `drain_timeout` + 3 × `call_timeout` = 35 s, and 54 s before that.
#[tokio::test(start_paused = true)]
async fn shutdown_fits_a_30_s_grace_period_on_its_slowest_paths() {
    for (state, name) in [(DOWN, "frozen"), (SLOW, "slow")] {
        let stream = MemoryStream::new("s", 2);
        for i in 0..20u64 {
            stream
                .put(&format!("k{i}"), i.to_be_bytes().to_vec())
                .expect("put");
        }
        let outage = Outage::default();
        let memory = MemoryLeaseStore::new();
        let store = Layered::new(memory.clone(), outage.clone());
        let mut config = Config::new("app").with_client_id("a");
        config.rng_seed = Some(2);
        let bound = config.shutdown_timeout;
        assert!(bound <= Duration::from_secs(30) - Duration::from_secs(5));
        let mut consumer = Consumer::new(config, stream.clone(), store).expect("valid");
        let mut records = consumer.records().expect("start");
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            let mut first = true;
            while let Some(Ok(r)) = records.next().await {
                if std::mem::take(&mut first) {
                    keep.lock().expect("lock").push(r); // never acked: the drain times out
                } else {
                    r.ack();
                }
            }
        });
        sleep(Duration::from_secs(5)).await;
        assert_eq!(
            held.lock().expect("lock").len(),
            1,
            "{name}: a record is held"
        );
        outage.0.store(state, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let _ = consumer.shutdown().await;
        let took = started.elapsed();
        println!("{name} store, drain timing out: shutdown took {took:?} (bound {bound:?})");
        assert!(
            took <= bound,
            "{name}: shutdown took {took:?} (bound {bound:?})"
        );
        if state == SLOW {
            // Slow, not gone: everything was done within the bound.
            let leases = memory.peek_leases("s");
            assert!(
                leases.iter().all(|l| l.owner.is_none()),
                "slow: every lease released: {leases:?}"
            );
            assert!(memory.peek_clients().is_empty(), "slow: deregistered");
        }
    }
}
