//! The pause gate: a paused client neither sends calls nor sees their replies.

use std::time::Duration;

use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardSource;
use kinsumer_core::store::{ClientId, LeaseStore};
use kinsumer_testkit::{Gate, GatedSource, GatedStore, MemoryLeaseStore, MemoryStream};

#[tokio::test(start_paused = true)]
async fn a_paused_store_call_is_neither_sent_nor_answered_until_resumed() {
    let store = MemoryLeaseStore::new();
    let gate = Gate::new();
    let gated = GatedStore::new(store.clone(), gate.clone());
    assert!(!gate.is_paused());
    gated.heartbeat(&ClientId::from("a"), 1).await.unwrap();

    gate.pause();
    let call = tokio::spawn({
        let gated = gated.clone();
        async move { gated.heartbeat(&ClientId::from("a"), 2).await }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!call.is_finished());
    assert_eq!(store.peek_clients()[0].counter, 1, "not sent while paused");
    gate.resume();
    call.await.unwrap().unwrap();
    assert_eq!(store.peek_clients()[0].counter, 2, "sent once resumed");
}

#[tokio::test(start_paused = true)]
async fn a_reply_is_held_while_paused_after_sending() {
    let store = MemoryLeaseStore::new();
    store.set_faults(kinsumer_testkit::StoreFaults {
        latency: (Duration::from_secs(1), Duration::from_secs(1)),
        ..Default::default()
    });
    let gate = Gate::new();
    let gated = GatedStore::new(store.clone(), gate.clone());
    let call = tokio::spawn(async move { gated.heartbeat(&ClientId::from("a"), 1).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.pause();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Applied by the store, but the paused client has not seen the reply.
    assert_eq!(store.peek_clients()[0].counter, 1);
    assert!(!call.is_finished());
    gate.resume();
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn readers_opened_through_a_gated_source_are_gated_too() {
    let stream = MemoryStream::new("gated", 1);
    let shard = stream.shards()[0].id.clone();
    stream.put("k", "x").unwrap();
    let gate = Gate::new();
    let source = GatedSource::new(stream.clone(), gate.clone());
    assert_eq!(source.stream_name(), "gated");
    let mut reader = source.open(&shard, &Checkpoint::TrimHorizon).await.unwrap();
    gate.pause();
    let read = tokio::spawn(async move { reader.next_batch(10).await });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!read.is_finished());
    assert_eq!(stream.stats().get_records_calls, 0);
    gate.resume();
    assert_eq!(read.await.unwrap().unwrap().records.len(), 1);
}
