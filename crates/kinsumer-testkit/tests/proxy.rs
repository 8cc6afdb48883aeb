//! The fault proxy, on real loopback sockets against an echo server started by each test.
//!
//! Real sockets need real time: these tests never pause the clock, and each "nothing arrives"
//! check waits a short, real [`HANG`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kinsumer_testkit::proxy::HOLD_LIMIT;
use kinsumer_testkit::{FaultProxy, ProxyMode, ProxyStats, UnknownProxyMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// How long a read must stay unanswered to count as hung.
const HANG: Duration = Duration::from_millis(300);
/// How long anything that should happen may take.
const PROMPTLY: Duration = Duration::from_secs(1);

/// An upstream that sends `greeting` on connect, then echoes every byte until the client's end
/// of the stream, then closes. Counts the connections it has seen close.
struct EchoServer {
    addr: SocketAddr,
    closed: Arc<AtomicUsize>,
}

async fn echo_server(greeting: &'static [u8]) -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&closed);
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            let closed = Arc::clone(&counted);
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = connection.split();
                if to_client.write_all(greeting).await.is_ok() {
                    let _ = tokio::io::copy(&mut from_client, &mut to_client).await;
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    EchoServer { addr, closed }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.set_nodelay(true).unwrap();
    client
}

/// Sends `bytes` and reads them back.
async fn round_trip(client: &mut TcpStream, bytes: &[u8]) {
    client.write_all(bytes).await.unwrap();
    let mut echoed = vec![0; bytes.len()];
    timeout(PROMPTLY, client.read_exact(&mut echoed))
        .await
        .expect("the echo arrives promptly")
        .unwrap();
    assert_eq!(echoed, bytes);
}

/// Reads exactly `len` bytes, promptly.
async fn read_promptly(client: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    timeout(PROMPTLY, client.read_exact(&mut bytes))
        .await
        .expect("the bytes arrive promptly")
        .unwrap();
    bytes
}

/// Asserts that nothing — no byte, no end of stream, no error — arrives for [`HANG`].
async fn assert_hangs(client: &mut TcpStream) {
    let mut byte = [0; 1];
    // `read` is cancel-safe: a timed-out read has consumed nothing.
    if let Ok(read) = timeout(HANG, client.read(&mut byte)).await {
        panic!("expected a hang, the read returned {read:?}");
    }
}

/// Asserts that the connection ends (end of stream, or a reset) promptly.
async fn assert_closed(client: &mut TcpStream) {
    let mut byte = [0; 1];
    match timeout(PROMPTLY, client.read(&mut byte)).await {
        Err(_) => panic!("the connection stayed open"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("read a byte from a connection that should be closed"),
    }
}

/// Waits (promptly) until the proxy's counters satisfy `expected` — they move just after the
/// bytes they count, so a client can be a moment ahead of them.
async fn wait_for_stats(proxy: &FaultProxy, expected: impl Fn(&ProxyStats) -> bool) {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let stats = proxy.stats();
        if expected(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counters never got there: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_closed(server: &EchoServer, count: usize) {
    let deadline = Instant::now() + PROMPTLY;
    while server.closed.load(Ordering::SeqCst) < count {
        assert!(Instant::now() < deadline, "the upstream side stayed open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether connecting to `addr` is refused, trying until [`PROMPTLY`] has passed.
async fn refused_promptly(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + PROMPTLY;
    while Instant::now() < deadline {
        match TcpStream::connect(addr).await {
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    false
}

#[tokio::test]
async fn passes_bytes_both_ways_and_counts_them() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    assert!(proxy.addr().ip().is_loopback(), "listens on loopback only");
    assert_ne!(proxy.addr(), server.addr);
    assert_eq!(proxy.upstream(), server.addr);
    assert_eq!(proxy.mode(), ProxyMode::Pass);

    let mut first = connect(&proxy).await;
    let mut second = connect(&proxy).await;
    round_trip(&mut first, b"hello").await;
    round_trip(&mut second, b"world!").await;
    round_trip(&mut first, b"again").await;

    wait_for_stats(&proxy, |stats| {
        *stats
            == ProxyStats {
                connections_accepted: 2,
                connections_open: 2,
                upstream_connect_failures: 0,
                bytes_to_upstream: 16,
                bytes_to_client: 16,
                held_to_upstream: 0,
                held_to_client: 0,
            }
    })
    .await;
}

#[tokio::test]
async fn black_hole_hangs_the_client_but_keeps_the_connection_open() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let mut client = connect(&proxy).await;
    round_trip(&mut client, b"before").await;
    wait_for_stats(&proxy, |stats| stats.bytes_to_client == 6).await;

    // Set from another OS thread, without a runtime and without awaiting.
    let control = proxy.control();
    std::thread::spawn(move || control.set_mode(ProxyMode::BlackHole))
        .join()
        .unwrap();
    assert_eq!(proxy.mode(), ProxyMode::BlackHole);

    client.write_all(b"lost?").await.unwrap();
    assert_hangs(&mut client).await;
    let stats = proxy.stats();
    assert_eq!(stats.held_to_upstream, 5, "read by the proxy and held");
    assert_eq!(stats.bytes_to_upstream, 6, "nothing new reached the server");
    assert_eq!(stats.connections_open, 1, "the connection stays open");
    assert_eq!(server.closed.load(Ordering::SeqCst), 0);

    // Still the same, open connection: healing it completes the request.
    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(read_promptly(&mut client, 5).await, b"lost?");
}

#[tokio::test]
async fn healing_delivers_held_bytes_late_and_in_order() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let mut client = connect(&proxy).await;
    round_trip(&mut client, b"a").await;

    proxy.set_mode(ProxyMode::BlackHole);
    client.write_all(b"bc").await.unwrap();
    client.write_all(b"de").await.unwrap();
    wait_for_stats(&proxy, |stats| stats.held_to_upstream == 4).await;
    // A reply held on the way back, too: the request gets through, its echo is held.
    proxy.set_mode(ProxyMode::BlackHoleToClient);
    wait_for_stats(&proxy, |stats| {
        stats.held_to_upstream == 0 && stats.held_to_client == 4
    })
    .await;
    proxy.set_mode(ProxyMode::BlackHole);
    client.write_all(b"f").await.unwrap();
    wait_for_stats(&proxy, |stats| stats.held_to_upstream == 1).await;
    assert_hangs(&mut client).await;

    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(read_promptly(&mut client, 5).await, b"bcdef");
    round_trip(&mut client, b"g").await;
    wait_for_stats(&proxy, |stats| {
        stats.bytes_to_upstream == 7
            && stats.bytes_to_client == 7
            && stats.held_to_upstream == 0
            && stats.held_to_client == 0
    })
    .await;
}

#[tokio::test]
async fn a_close_is_held_like_any_byte() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let mut with_last_words = connect(&proxy).await;
    let mut silent = connect(&proxy).await;
    round_trip(&mut with_last_words, b"x").await;
    round_trip(&mut silent, b"y").await;

    proxy.set_mode(ProxyMode::BlackHole);
    with_last_words.write_all(b"last words").await.unwrap();
    with_last_words.shutdown().await.unwrap();
    silent.shutdown().await.unwrap();
    // The server closes on seeing the end of a stream; it must see neither yet.
    assert_hangs(&mut with_last_words).await;
    assert_hangs(&mut silent).await;
    assert_eq!(server.closed.load(Ordering::SeqCst), 0);

    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(read_promptly(&mut with_last_words, 10).await, b"last words");
    assert_closed(&mut with_last_words).await;
    assert_closed(&mut silent).await;
    wait_for_closed(&server, 2).await;
}

#[tokio::test]
async fn a_large_backlog_is_bounded_and_delivered_intact() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let client = connect(&proxy).await;
    let (mut from_proxy, mut to_proxy) = client.into_split();
    let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();

    proxy.set_mode(ProxyMode::BlackHole);
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move { to_proxy.write_all(&sent).await.map(|()| to_proxy) }
    });
    // Let the writer fill whatever it can: the proxy's hold, then the kernel's buffers.
    tokio::time::sleep(HANG).await;
    let stats = proxy.stats();
    assert!(
        stats.held_to_upstream as usize <= HOLD_LIMIT + 16 * 1024,
        "the proxy held more than its limit: {stats:?}"
    );
    assert!(stats.held_to_upstream > 0, "{stats:?}");
    assert_eq!(stats.bytes_to_upstream, 0);

    proxy.set_mode(ProxyMode::Pass);
    let mut received = vec![0; sent.len()];
    timeout(PROMPTLY, from_proxy.read_exact(&mut received))
        .await
        .expect("the backlog arrives promptly")
        .unwrap();
    assert!(received == sent, "the backlog arrived altered or reordered");
    timeout(PROMPTLY, writer)
        .await
        .expect("the writer finishes")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn black_hole_to_upstream_holds_requests_and_forwards_replies() {
    let server = echo_server(b"hello").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    proxy.set_mode(ProxyMode::BlackHoleToUpstream);
    let mut client = connect(&proxy).await;

    // Upstream→client still flows: the server's greeting arrives.
    assert_eq!(read_promptly(&mut client, 5).await, b"hello");
    client.write_all(b"ping").await.unwrap();
    assert_hangs(&mut client).await;
    let stats = proxy.stats();
    assert_eq!(stats.bytes_to_client, 5);
    assert_eq!(stats.bytes_to_upstream, 0);
    assert_eq!(stats.held_to_upstream, 4);
    assert_eq!(stats.held_to_client, 0);

    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(read_promptly(&mut client, 4).await, b"ping");
    wait_for_stats(&proxy, |stats| {
        stats.bytes_to_upstream == 4 && stats.bytes_to_client == 9
    })
    .await;
}

#[tokio::test]
async fn black_hole_to_client_forwards_requests_and_holds_replies() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let mut client = connect(&proxy).await;
    round_trip(&mut client, b"ok").await;

    proxy.set_mode(ProxyMode::BlackHoleToClient);
    client.write_all(b"ping").await.unwrap();
    // The request reaches the server, and its echo reaches the proxy — and stops there.
    wait_for_stats(&proxy, |stats| {
        stats.bytes_to_upstream == 6 && stats.held_to_client == 4
    })
    .await;
    assert_hangs(&mut client).await;
    assert_eq!(proxy.stats().bytes_to_client, 2);

    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(read_promptly(&mut client, 4).await, b"ping");
    wait_for_stats(&proxy, |stats| {
        stats.bytes_to_client == 6 && stats.held_to_client == 0
    })
    .await;
}

#[tokio::test]
async fn cut_closes_every_open_connection_on_both_sides() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let mut talking = connect(&proxy).await;
    let mut hung = connect(&proxy).await;
    round_trip(&mut talking, b"one").await;
    round_trip(&mut hung, b"two").await;
    proxy.set_mode(ProxyMode::BlackHole);
    hung.write_all(b"held").await.unwrap();
    wait_for_stats(&proxy, |stats| stats.held_to_upstream == 4).await;

    proxy.cut();
    assert_closed(&mut talking).await;
    assert_closed(&mut hung).await;
    wait_for_closed(&server, 2).await;
    wait_for_stats(&proxy, |stats| {
        stats.connections_open == 0 && stats.held_to_upstream == 0
    })
    .await;

    // A cut is not sticky: the proxy still serves, in its current mode.
    proxy.set_mode(ProxyMode::Pass);
    let mut later = connect(&proxy).await;
    round_trip(&mut later, b"three").await;
    assert_eq!(proxy.stats().connections_accepted, 3);
}

#[tokio::test]
async fn dropping_the_proxy_stops_accepting_and_closes_its_connections() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let addr = proxy.addr();
    let mut client = connect(&proxy).await;
    round_trip(&mut client, b"hi").await;

    drop(proxy);
    assert_closed(&mut client).await;
    wait_for_closed(&server, 1).await;
    assert!(refused_promptly(addr).await, "still accepting after drop");
}

// On several workers, so that nothing but `stop` itself orders the connections' closing
// before its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_once_everything_is_closed() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let addr = proxy.addr();
    let control = proxy.control();
    let mut client = connect(&proxy).await;
    round_trip(&mut client, b"hi").await;

    timeout(PROMPTLY, proxy.stop())
        .await
        .expect("stop is prompt");
    assert_eq!(control.stats().connections_open, 0);
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    assert_closed(&mut client).await;
}

#[tokio::test]
async fn serve_until_serves_until_shutdown_completes() {
    let server = echo_server(b"").await;
    let proxy = FaultProxy::start(server.addr).unwrap();
    let addr = proxy.addr();
    let (shut_down, shutdown) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve_until(async {
        let _ = shutdown.await;
    }));

    let mut client = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut client, b"served").await;
    assert!(!serving.is_finished());

    shut_down.send(()).unwrap();
    timeout(PROMPTLY, serving)
        .await
        .expect("serving ends promptly")
        .unwrap();
    assert_closed(&mut client).await;
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn an_unreachable_upstream_closes_the_client_and_is_counted() {
    // A port that was just free: nothing listens there.
    let vacated = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = vacated.local_addr().unwrap();
    drop(vacated);

    let proxy = FaultProxy::start(upstream).unwrap();
    let mut client = connect(&proxy).await;
    assert_closed(&mut client).await;
    wait_for_stats(&proxy, |stats| {
        stats.connections_accepted == 1
            && stats.upstream_connect_failures == 1
            && stats.connections_open == 0
    })
    .await;
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    let upstream = SocketAddr::from(([127, 0, 0, 1], 6379));
    let error = FaultProxy::start(upstream).unwrap_err();
    assert!(error.to_string().contains("Tokio runtime"), "{error}");
}

#[test]
fn modes_parse_from_their_names() {
    for mode in ProxyMode::ALL {
        assert_eq!(mode.to_string().parse::<ProxyMode>(), Ok(mode));
    }
    assert_eq!(
        " black-hole-to-client\n".parse::<ProxyMode>(),
        Ok(ProxyMode::BlackHoleToClient)
    );
    assert_eq!(
        "blackhole".parse::<ProxyMode>(),
        Err(UnknownProxyMode("blackhole".into()))
    );
}
