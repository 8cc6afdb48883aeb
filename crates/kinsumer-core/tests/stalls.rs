//! No shard stalls silently: one test per kind of stall, each showing that the work moves to
//! another client within its bound and nothing is lost — and, with detection switched off,
//! that the same run stalls.
//!
//! Under the paused clock. Two clients share a `MemoryStream` of two shards; `a` misbehaves,
//! `b` processes everything it is given. Bounds are measured from the moment `a` stalled to the
//! moment `b` delivered a record of a shard `a` held (or took its lease).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kinsumer_core::faults::FaultSwitch;
use kinsumer_core::{
    Config, Consumer, HandlerError, Records, ShardBatch, ShardId, StallKind, StatusHandle,
};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream};
use tokio::time::{Instant, sleep};

const RECORDS: u64 = 200;
const STALL: Duration = Duration::from_secs(30);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn config(client: &str, stall_timeout: Option<Duration>) -> Config {
    let mut c = Config::new("app").with_client_id(client);
    c.rng_seed = Some(u64::from(client.as_bytes()[0]));
    c.stall_timeout = stall_timeout;
    c
}

/// One delivery: client, shard, record id, when.
type Delivery = (String, ShardId, u64, Instant);

/// Record ids acked, and every delivery.
#[derive(Clone, Default)]
struct Book {
    acked: Arc<Mutex<BTreeSet<u64>>>,
    delivered: Arc<Mutex<Vec<Delivery>>>,
}

impl Book {
    fn deliver(&self, client: &str, shard: &ShardId, data: &[u8]) -> u64 {
        let id = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        let entry = (client.to_string(), shard.clone(), id, Instant::now());
        self.delivered.lock().expect("lock").push(entry);
        id
    }

    fn ack(&self, id: u64) {
        self.acked.lock().expect("lock").insert(id);
    }

    fn all_acked(&self) -> bool {
        self.acked.lock().expect("lock").len() as u64 == RECORDS
    }

    fn is_acked(&self, id: u64) -> bool {
        self.acked.lock().expect("lock").contains(&id)
    }

    /// When `client` first delivered a record of `shard` at or after `since`.
    fn first_delivery(&self, client: &str, shard: &ShardId, since: Instant) -> Option<Instant> {
        let log = self.delivered.lock().expect("lock");
        log.iter()
            .find(|(c, s, _, at)| c == client && s == shard && *at >= since)
            .map(|e| e.3)
    }

    /// Ids delivered more than once.
    fn duplicates(&self) -> usize {
        let log = self.delivered.lock().expect("lock");
        let mut seen = BTreeSet::new();
        log.iter().filter(|e| !seen.insert(e.2)).count()
    }
}

fn fill(stream: &MemoryStream) {
    for i in 0..RECORDS {
        put_record(stream, i);
    }
}

/// Puts record `i`: its id as the data, under a key of its own.
fn put_record(stream: &MemoryStream, i: u64) {
    stream
        .put(&format!("key-{i}"), i.to_be_bytes().to_vec())
        .expect("put");
}

/// Puts the records one at a time, `every` apart, from a task of its own: they keep coming
/// while the test goes on.
fn produce_every(stream: &MemoryStream, every: Duration) -> tokio::task::JoinHandle<()> {
    let stream = stream.clone();
    tokio::spawn(async move {
        for i in 0..RECORDS {
            put_record(&stream, i);
            sleep(every).await;
        }
    })
}

/// Two shards, an empty store, and `b`, a client that acks everything, already started.
fn fleet_with_b(stall: Option<Duration>) -> (MemoryStream, MemoryLeaseStore, Book, Consumer) {
    let stream = MemoryStream::new("s", 2);
    let store = MemoryLeaseStore::new();
    let book = Book::default();
    let b = steady("b", stall, &stream, &store, &book);
    (stream, store, book, b)
}

/// A client that acks everything it is given.
fn steady(
    id: &str,
    stall: Option<Duration>,
    stream: &MemoryStream,
    store: &MemoryLeaseStore,
    book: &Book,
) -> Consumer {
    steady_under(config(id, stall), stream, store, book)
}

/// A client under `config` that acks everything it is given.
fn steady_under(
    config: Config,
    stream: &MemoryStream,
    store: &MemoryLeaseStore,
    book: &Book,
) -> Consumer {
    let id = config.client_id.clone();
    let mut c = Consumer::new(config, stream.clone(), store.clone()).expect("valid");
    let records = c.records().expect("start");
    tokio::spawn(ack_all(id, records, book.clone()));
    c
}

/// `a` on its record stream, with stall detection as `detection` says, and its status.
fn a_on_records(
    detection: Option<Duration>,
    stream: &MemoryStream,
    store: &MemoryLeaseStore,
) -> (Consumer, StatusHandle, Records) {
    let mut a =
        Consumer::new(config("a", detection), stream.clone(), store.clone()).expect("valid");
    let status = a.status();
    let records = a.records().expect("start");
    (a, status, records)
}

async fn ack_all(id: String, mut records: Records, book: Book) {
    while let Some(Ok(r)) = records.next().await {
        let n = book.deliver(&id, r.shard_id(), r.data());
        book.ack(n);
        r.ack();
    }
}

fn owner(store: &MemoryLeaseStore, shard: &ShardId) -> Option<String> {
    store
        .peek_leases("s")
        .into_iter()
        .find(|l| l.shard == *shard)
        .and_then(|l| l.owner.map(|o| o.as_str().to_string()))
}

fn owned(store: &MemoryLeaseStore, client: &str) -> usize {
    store.owned_by("s", client)
}

/// Waits up to `limit` for `done`; the time it became true.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Instant> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return Some(Instant::now());
        }
        sleep(Duration::from_millis(50)).await;
    }
    None
}

fn stalls_of(status: &StatusHandle, kind: StallKind) -> usize {
    status.stalls().iter().filter(|s| s.kind == kind).count()
}

/// A record handed out and never acked holds its shard's checkpoint. Found after
/// `stall_timeout`, the shard is released to b, which delivers the record again; everything
/// is acked. Off: the record is never acked by anyone.
#[tokio::test(start_paused = true)]
async fn a_record_never_acked_moves_its_shard_within_the_stall_timeout() {
    // One thread (the test's runtime): every task reports to this recorder.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshots = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    for detection in [Some(STALL), None] {
        let (stream, store, book, b) = fleet_with_b(detection);
        let (a, status, mut records) = a_on_records(detection, &stream, &store);
        sleep(secs(5)).await; // one shard each
        fill(&stream);
        let (app, held) = (book.clone(), Arc::new(Mutex::new(None)));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = records.next().await {
                let id = app.deliver("a", r.shard_id(), r.data());
                let mut held = keep.lock().expect("lock");
                if held.is_none() {
                    *held = Some((r.shard_id().clone(), id, Instant::now(), r)); // never acked
                } else {
                    app.ack(id);
                    r.ack();
                }
            }
        });
        wait_for(secs(10), || held.lock().expect("lock").is_some())
            .await
            .expect("a was handed a record");
        let (shard, id, since) = {
            let h = held.lock().expect("lock");
            let h = h.as_ref().expect("held");
            (h.0.clone(), h.1, h.2)
        };
        let moved = wait_for(STALL * 3, || {
            book.first_delivery("b", &shard, since).is_some()
        })
        .await;
        match detection {
            Some(limit) => {
                let moved = moved.expect("the shard moved to b");
                let took = moved - since;
                println!("record not acked: shard moved to b {took:?} after the hand-out");
                // The client named takes it at its next full read (every rebalance_interval).
                assert!(took >= limit, "not before stall_timeout: {took:?}");
                assert!(took <= limit + secs(6), "moved {took:?} after the hand-out");
                assert_eq!(stalls_of(&status, StallKind::RecordNotAcked), 1);
                let counted: u64 = snapshots
                    .snapshot()
                    .into_vec()
                    .into_iter()
                    .filter(|(key, ..)| {
                        let key = key.key();
                        key.name() == "kinsumer_stalls_total"
                            && key
                                .labels()
                                .any(|l| l.key() == "kind" && l.value() == "record_not_acked")
                    })
                    .map(|(.., value)| match value {
                        metrics_util::debugging::DebugValue::Counter(n) => n,
                        _ => 0,
                    })
                    .sum();
                assert_eq!(counted, 1, "counted in kinsumer_stalls_total");
                let stall = &status.stalls()[0];
                assert_eq!(stall.shard.as_ref(), Some(&shard), "names the shard");
                assert!(stall.record.is_some(), "names the record");
                wait_for(secs(30), || book.all_acked())
                    .await
                    .expect("nothing lost: every record acked");
            }
            None => {
                assert!(moved.is_none(), "off: the shard never moves");
                assert!(!book.is_acked(id), "off: the held record is never acked");
                assert_eq!(owner(&store, &shard).as_deref(), Some("a"));
                assert!(status.stalls().is_empty());
            }
        }
        a.abort();
        b.shutdown().await.expect("b shuts down");
    }
}

/// A batch handler call that never returns. Found after `stall_timeout`, the call is
/// cancelled and the shard released to b; everything is acked. Off: the shard stays stuck.
#[tokio::test(start_paused = true)]
async fn a_hung_batch_handler_moves_its_shard_within_the_stall_timeout() {
    for detection in [Some(STALL), None] {
        let (stream, store, book, b) = fleet_with_b(detection);
        let hung: Arc<Mutex<Option<(ShardId, Instant)>>> = Arc::default();
        let (app, first) = (book.clone(), hung.clone());
        let handler = move |batch: ShardBatch| {
            let (app, first) = (app.clone(), first.clone());
            async move {
                let hang = {
                    let mut first = first.lock().expect("lock");
                    let hang = first.is_none();
                    if hang {
                        *first = Some((batch.shard.clone(), Instant::now()));
                    }
                    hang
                };
                if hang {
                    std::future::pending::<()>().await; // the first call never returns
                }
                for r in batch.records.iter() {
                    let id = app.deliver("a", &batch.shard, &r.data);
                    app.ack(id);
                }
                Ok::<(), HandlerError>(())
            }
        };
        let a =
            Consumer::new(config("a", detection), stream.clone(), store.clone()).expect("valid");
        let (status, stop) = (a.status(), a.shutdown_handle());
        let run = tokio::spawn(a.run(handler));
        sleep(secs(5)).await; // one shard each
        fill(&stream);
        wait_for(secs(10), || hung.lock().expect("lock").is_some())
            .await
            .expect("a's handler was called");
        let (shard, since) = hung.lock().expect("lock").clone().expect("hung");
        let moved = wait_for(STALL * 3, || {
            book.first_delivery("b", &shard, since).is_some()
        })
        .await;
        match detection {
            Some(limit) => {
                let took = moved.expect("the shard moved to b") - since;
                println!("handler hung: shard moved to b {took:?} after the call began");
                assert!(
                    took >= limit && took <= limit + secs(6),
                    "moved after {took:?}"
                );
                assert_eq!(stalls_of(&status, StallKind::HandlerHung), 1);
                wait_for(secs(30), || book.all_acked())
                    .await
                    .expect("nothing lost: every record acked");
            }
            None => {
                assert!(moved.is_none(), "off: the shard never moves");
                assert_eq!(owner(&store, &shard).as_deref(), Some("a"));
                assert!(!book.all_acked());
            }
        }
        stop.abort();
        let _ = run.await;
        b.shutdown().await.expect("b shuts down");
    }
}

/// The application stops polling its record stream (a deadlock, a full queue downstream)
/// while keeping it. After `stall_timeout` a releases everything and leaves the fleet: b
/// takes both shards, everything is acked; polled again, a rejoins. Off: a's shard waits.
#[tokio::test(start_paused = true)]
async fn a_record_stream_not_polled_leaves_the_fleet_until_polled_again() {
    for detection in [Some(STALL), None] {
        let (stream, store, book, b) = fleet_with_b(detection);
        let (a, status, mut records) = a_on_records(detection, &stream, &store);
        sleep(secs(5)).await; // one shard each
        fill(&stream);
        // Take (and ack) one record, then stop polling.
        let r = records.next().await.expect("open").expect("ok");
        let id = book.deliver("a", r.shard_id(), r.data());
        book.ack(id);
        let shard = r.shard_id().clone();
        r.ack();
        let since = Instant::now();
        let moved = wait_for(STALL * 3, || owned(&store, "b") == 2).await;
        match detection {
            Some(limit) => {
                let took = moved.expect("b took a's shard") - since;
                println!("stream not polled: b took a's shard {took:?} after the last poll");
                assert!(took >= limit && took <= limit + secs(2), "after {took:?}");
                assert!(status.has_left_fleet());
                assert_eq!(stalls_of(&status, StallKind::NotPolled), 1);
                assert!(
                    store.peek_clients().iter().all(|c| c.id.as_str() != "a"),
                    "a deregistered"
                );
                wait_for(secs(30), || book.all_acked())
                    .await
                    .expect("nothing lost: every record acked");
                // Polled again, a rejoins and gets its share back.
                let app = book.clone();
                tokio::spawn(async move { ack_all("a".into(), records, app).await });
                wait_for(secs(30), || owned(&store, "a") == 1)
                    .await
                    .expect("a rejoined and took a shard");
                assert!(!status.has_left_fleet());
                a.shutdown().await.expect("a shuts down");
            }
            None => {
                assert!(moved.is_none(), "off: a keeps its shard");
                assert_eq!(owner(&store, &shard).as_deref(), Some("a"));
                assert!(!book.all_acked(), "off: a's records wait");
                drop(records);
                a.abort();
            }
        }
        b.shutdown().await.expect("b shuts down");
    }
}

/// a's supervisor stops stepping while its heartbeat task runs on. The watchdog stops the
/// heartbeats, so a fences itself and b — which joined meanwhile and waits for a handoff that
/// never comes — takes every shard after the TTL. Off: b waits forever.
#[tokio::test(start_paused = true)]
async fn a_stuck_supervisor_stops_heartbeating_and_its_shards_move() {
    for watchdog in [true, false] {
        let stream = MemoryStream::new("s", 2);
        let store = MemoryLeaseStore::new();
        let book = Book::default();
        let switch = FaultSwitch::default();
        let mut cfg = config("a", Some(STALL));
        cfg.faults.stuck_supervisor = Some(switch.clone());
        cfg.faults.no_watchdog = !watchdog;
        let watchdog_bound = cfg.lease_ttl - cfg.safety_margin - cfg.heartbeat_interval;
        let bound = watchdog_bound + cfg.lease_ttl + secs(2);
        let a = steady_under(cfg, &stream, &store, &book);
        let status = a.status();
        sleep(secs(5)).await;
        assert_eq!(owned(&store, "a"), 2);
        switch.set(true);
        let since = Instant::now();
        let b = steady("b", Some(STALL), &stream, &store, &book);
        fill(&stream);
        let moved = wait_for(bound * 3, || owned(&store, "b") == 2).await;
        if watchdog {
            let took = moved.expect("b took every shard") - since;
            println!("stuck supervisor: b took both shards {took:?} after it got stuck");
            assert!(took <= bound, "after {took:?} (bound {bound:?})");
            assert_eq!(stalls_of(&status, StallKind::SupervisorStuck), 1);
            wait_for(secs(30), || book.all_acked())
                .await
                .expect("nothing lost: every record acked");
        } else {
            assert!(moved.is_none(), "off: b never gets a shard");
            assert_eq!(owned(&store, "b"), 0);
        }
        a.abort();
        b.shutdown().await.expect("b shuts down");
    }
}

/// The application drops its record stream but keeps the consumer: the consumer shuts down
/// gracefully in the background, and its shards reach b within a second, with nothing
/// delivered twice. Off (the old behaviour): a sits idle on its leases.
#[tokio::test(start_paused = true)]
async fn a_dropped_record_stream_shuts_the_consumer_down() {
    for handled in [true, false] {
        let (stream, store, _book, b) = fleet_with_b(Some(STALL));
        let mut cfg = config("a", None); // not the stall detection: the drop itself
        cfg.faults.silent_drops = !handled;
        let mut a = Consumer::new(cfg, stream.clone(), store.clone()).expect("valid");
        let records = a.records().expect("start");
        sleep(secs(5)).await; // one shard each
        fill(&stream);
        let reader = tokio::spawn(async move {
            let mut records = records;
            let mut n = 0;
            while let Some(Ok(r)) = records.next().await {
                let id = book_of(&r);
                n += 1;
                r.ack();
                if n == 20 {
                    return (id, records);
                }
            }
            panic!("ended early");
        });
        let (_, records) = reader.await.expect("read");
        sleep(secs(5)).await;
        assert_eq!(owned(&store, "a"), 1);
        let since = Instant::now();
        drop(records);
        let moved = wait_for(secs(60), || owned(&store, "b") == 2).await;
        if handled {
            let took = moved.expect("b took a's shard") - since;
            println!("dropped Records: b took a's shard {took:?} after the drop");
            assert!(took <= secs(1), "after {took:?}");
            a.shutdown().await.expect("already shut down: joins");
        } else {
            assert!(moved.is_none(), "off: a keeps its shard");
            a.abort();
        }
        b.shutdown().await.expect("b shuts down");
    }
}

fn book_of(r: &kinsumer_core::Record) -> u64 {
    u64::from_be_bytes(r.data()[..8].try_into().expect("8 bytes"))
}

/// The application drops a started consumer without `shutdown()`: it shuts down gracefully in
/// the background, so its shard reaches b within a second and nothing acked is delivered
/// again. Off (the old behaviour): a crash — b waits out the TTL and delivers again what was
/// acked since the last commit.
#[tokio::test(start_paused = true)]
async fn a_dropped_consumer_shuts_down_gracefully_in_the_background() {
    for handled in [true, false] {
        let (stream, store, book, b) = fleet_with_b(Some(STALL));
        let mut cfg = config("a", Some(STALL));
        cfg.faults.silent_drops = !handled;
        let a = steady_under(cfg.clone(), &stream, &store, &book);
        sleep(secs(5)).await;
        assert_eq!(owned(&store, "a"), 1);
        // Records keep coming; a acks them up to the moment it is dropped (mid commit window).
        let producer = produce_every(&stream, Duration::from_millis(20));
        sleep(Duration::from_millis(1_500)).await;
        let since = Instant::now();
        drop(a);
        let moved = wait_for(secs(60), || owned(&store, "b") == 2).await;
        let took = moved.expect("b took a's shard") - since;
        producer.await.expect("produced");
        wait_for(secs(30), || book.all_acked())
            .await
            .expect("nothing lost: every record acked");
        if handled {
            println!("dropped Consumer: b took a's shard {took:?} after the drop");
            assert!(took <= secs(1), "after {took:?}");
            assert_eq!(
                book.duplicates(),
                0,
                "a graceful release: nothing delivered twice"
            );
        } else {
            // Judged dead `lease_ttl` after its last heartbeat, sent up to an interval before.
            let least = cfg.lease_ttl - cfg.heartbeat_interval;
            assert!(took >= least, "off: a crash, taken after {took:?}");
        }
        b.shutdown().await.expect("b shuts down");
    }
}

/// Every call of a's batch handler hangs (its downstream is gone). A hang releases one shard,
/// but the fleet's balanced plan hands a a share again; the second hang within 2 ×
/// `stall_timeout` takes a out of the fleet for `stall_timeout`, so b holds every shard and
/// the backlog is handled. Before, b handed a shard back to a at each rebalance and its
/// checkpoint stood still (found by the simulation).
#[tokio::test(start_paused = true)]
async fn a_handler_that_hangs_again_takes_its_client_out_of_the_fleet() {
    let (stream, store, book, b) = fleet_with_b(Some(STALL));
    let calls = Arc::new(Mutex::new(0u32));
    let counted = calls.clone();
    let handler = move |_batch: ShardBatch| {
        let counted = counted.clone();
        async move {
            *counted.lock().expect("lock") += 1;
            std::future::pending::<Result<(), HandlerError>>().await
        }
    };
    let a = Consumer::new(config("a", Some(STALL)), stream.clone(), store.clone()).expect("valid");
    let (status, stop) = (a.status(), a.shutdown_handle());
    let run = tokio::spawn(a.run(handler));
    sleep(secs(5)).await; // one shard each
    let producer = produce_every(&stream, Duration::from_millis(500));
    let left = wait_for(STALL * 6, || status.has_left_fleet()).await;
    assert!(left.is_some(), "a left the fleet: {:?}", status.stalls());
    assert!(stalls_of(&status, StallKind::HandlerHung) >= 2);
    producer.await.expect("produced");
    wait_for(STALL * 4, || book.all_acked())
        .await
        .expect("nothing lost: b handled every record");
    assert!(
        *calls.lock().expect("lock") >= 2,
        "a's handler was called again"
    );
    stop.shutdown();
    let _ = run.await;
    b.shutdown().await.expect("b shuts down");
}
