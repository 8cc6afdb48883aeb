//! Network partitions: a [`FaultProxy`] between one client and its lease store.
//!
//! A partition does not look like an error to the process on the wrong side of it. Its
//! connection stays open, its writes succeed (they only fill buffers), and its reads simply
//! never return — until its own timeouts notice, or the network heals and TCP retransmits
//! everything that was in flight, late but in order. Chaos tests need exactly that, for one
//! consumer process at a time, against a real Redis or PostgreSQL.
//!
//! A [`FaultProxy`] listens on `127.0.0.1` (never another interface), relays every connection
//! to its upstream, and forwards bytes according to a [`ProxyMode`] shared by all its
//! connections and changeable at any time, from any thread, without awaiting:
//!
//! - [`ProxyMode::Pass`] forwards both ways;
//! - [`ProxyMode::BlackHole`] holds what either side sends: read by the proxy, not forwarded, not
//!   dropped and never answered with a reset — the client sees a hang;
//! - [`ProxyMode::BlackHoleToUpstream`] and [`ProxyMode::BlackHoleToClient`] hold one
//!   direction only (requests lost on the way out, or replies lost on the way back).
//!
//! When a direction opens again, what it held is delivered, in order, and then whatever came
//! after — as TCP does when a partition heals within its retransmission timeout. A close is
//! held like any byte: the far side sees the end of the stream only after everything before
//! it. [`FaultProxy::cut`] is the other kind of fault: it closes every open connection, both
//! sides, at once, discarding anything held.
//!
//! ```
//! use std::time::Duration;
//! use kinsumer_testkit::{FaultProxy, ProxyMode};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A stand-in for the lease store, which answers every byte with itself.
//! let server = TcpListener::bind("127.0.0.1:0").await?;
//! let upstream = server.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut connection, _)) = server.accept().await {
//!         tokio::spawn(async move {
//!             let (mut from_client, mut to_client) = connection.split();
//!             tokio::io::copy(&mut from_client, &mut to_client).await
//!         });
//!     }
//! });
//!
//! let proxy = FaultProxy::start(upstream)?;
//! // The client is given the proxy's address instead of the server's.
//! let mut client = TcpStream::connect(proxy.addr()).await?;
//! let mut reply = [0; 4];
//!
//! proxy.set_mode(ProxyMode::BlackHole);
//! client.write_all(b"PING").await?;
//! let waited = tokio::time::timeout(Duration::from_millis(100), client.read(&mut reply)).await;
//! assert!(waited.is_err(), "a partition is a hang, not an error");
//!
//! // The partition heals: the held request goes through, and its reply comes back.
//! proxy.set_mode(ProxyMode::Pass);
//! client.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"PING");
//! assert_eq!(proxy.stats().bytes_to_upstream, 4);
//! # Ok(())
//! # }
//! ```
//!
//! Two ways the proxy differs from a real partition, both harmless for lease-store tests:
//!
//! - a client's `connect` succeeds even while black-holed (the kernel completes the handshake
//!   for the proxy's listener), and the proxy connects to the upstream at once; the client
//!   sees the hang at its first request instead of at `connect`;
//! - TCP keepalives never fire, since the client's own connection (to the proxy) is healthy:
//!   only the client's application-level timeouts can notice the partition — which is what a
//!   chaos test wants to exercise.
//!
//! Each direction of each connection holds at most [`HOLD_LIMIT`] bytes; beyond that the proxy
//! stops reading, kernel buffers fill, and the sender's writes block, as they would behind a
//! real partition.
//!
//! Dropping the proxy (or [`FaultProxy::stop`]) stops accepting and closes every connection;
//! no task is left running. To run a proxy in a process of its own — a chaos test that
//! partitions one consumer *process* — see [`FaultProxy::serve_until`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

/// The most bytes one direction of one connection holds before the proxy stops reading from
/// its sender (1 MiB). The limit is soft by at most one read (16 KiB).
pub const HOLD_LIMIT: usize = 1 << 20;

/// The most bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// How long the accept loop waits after a failed `accept` (out of file descriptors, say)
/// before trying again, so that a persistent failure does not spin a core.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// What a [`FaultProxy`] does with the bytes it reads. Applies to every connection, open or
/// future, from the moment it is set.
///
/// Its [`Display`](fmt::Display) and [`FromStr`] forms are `pass`, `black-hole`,
/// `black-hole-to-upstream` and `black-hole-to-client`, for commands sent to a proxy running
/// in another process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyMode {
    /// Forward both ways (and deliver, in order, whatever was held).
    #[default]
    Pass,
    /// Hold both directions: a full partition.
    BlackHole,
    /// Hold client→upstream bytes (requests); forward upstream→client bytes (replies).
    BlackHoleToUpstream,
    /// Hold upstream→client bytes (replies); forward client→upstream bytes (requests).
    BlackHoleToClient,
}

impl ProxyMode {
    /// Every mode, in declaration order.
    pub const ALL: [ProxyMode; 4] = [
        ProxyMode::Pass,
        ProxyMode::BlackHole,
        ProxyMode::BlackHoleToUpstream,
        ProxyMode::BlackHoleToClient,
    ];

    /// The mode's command name: `pass`, `black-hole`, ...
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::Pass => "pass",
            ProxyMode::BlackHole => "black-hole",
            ProxyMode::BlackHoleToUpstream => "black-hole-to-upstream",
            ProxyMode::BlackHoleToClient => "black-hole-to-client",
        }
    }

    fn forwards(self, direction: Direction) -> bool {
        match (self, direction) {
            (ProxyMode::Pass, _) => true,
            (ProxyMode::BlackHole, _) => false,
            (ProxyMode::BlackHoleToUpstream, Direction::ToUpstream) => false,
            (ProxyMode::BlackHoleToUpstream, Direction::ToClient) => true,
            (ProxyMode::BlackHoleToClient, Direction::ToUpstream) => true,
            (ProxyMode::BlackHoleToClient, Direction::ToClient) => false,
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of the [`ProxyMode`]s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown proxy mode `{0}` (expected pass, black-hole, black-hole-to-upstream or black-hole-to-client)"
)]
pub struct UnknownProxyMode(pub String);

impl FromStr for ProxyMode {
    type Err = UnknownProxyMode;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let name = name.trim();
        ProxyMode::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| UnknownProxyMode(name.to_string()))
    }
}

/// What a [`FaultProxy`] has done so far, for test assertions.
///
/// The byte counters move just *after* a write returns, so a client may see bytes a moment
/// before they are counted: poll for a count rather than asserting it the instant a reply
/// arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections_accepted: u64,
    /// Client connections open now (accepted, and neither finished, cut nor stopped).
    pub connections_open: u64,
    /// Accepted connections whose upstream could not be reached (the client's was closed).
    pub upstream_connect_failures: u64,
    /// Bytes written to the upstream, over all connections.
    pub bytes_to_upstream: u64,
    /// Bytes written to clients, over all connections.
    pub bytes_to_client: u64,
    /// Bytes read from clients and not yet written upstream: what a held direction is holding
    /// (in [`ProxyMode::Pass`], only what is in transit).
    pub held_to_upstream: u64,
    /// Bytes read from the upstream and not yet written to clients.
    pub held_to_client: u64,
}

/// A TCP proxy on `127.0.0.1` that forwards, holds or cuts its connections on command.
///
/// Dropping it stops accepting and closes every connection (shortly after: the accept loop
/// notices on its next turn); [`FaultProxy::stop`] does the same and waits until it is done.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: ProxyControl,
    /// Dropped (or sent on) to stop the accept loop, which then closes every connection.
    stop: oneshot::Sender<()>,
    accept_loop: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1` on a free port and relays every connection to `upstream`, from a
    /// task on the current Tokio runtime. Starts in [`ProxyMode::Pass`].
    ///
    /// Fails if there is no current runtime, or if the listener cannot be set up. The runtime
    /// must have its I/O driver enabled (as `#[tokio::main]` and `#[tokio::test]` do).
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("FaultProxy::start must be called within a Tokio runtime")
        })?;
        // Loopback only: a test proxy must never be reachable from another machine.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _in_runtime = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let addr = listener.local_addr()?;

        let control = ProxyControl::new();
        let (stop, stopped) = oneshot::channel();
        let accept_loop = runtime.spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&control.shared),
            stopped,
        ));
        debug!(%addr, %upstream, "fault proxy started");
        Ok(FaultProxy {
            addr,
            upstream,
            control,
            stop,
            accept_loop,
        })
    }

    /// The address to give a client instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy relays to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// A handle that sets the mode, cuts and reads the counters from anywhere — another task,
    /// another thread — while this proxy runs.
    pub fn control(&self) -> ProxyControl {
        self.control.clone()
    }

    /// See [`ProxyControl::set_mode`].
    pub fn set_mode(&self, mode: ProxyMode) {
        self.control.set_mode(mode);
    }

    /// See [`ProxyControl::mode`].
    pub fn mode(&self) -> ProxyMode {
        self.control.mode()
    }

    /// See [`ProxyControl::cut`].
    pub fn cut(&self) {
        self.control.cut();
    }

    /// See [`ProxyControl::stats`].
    pub fn stats(&self) -> ProxyStats {
        self.control.stats()
    }

    /// Stops accepting, closes every connection, and returns once all of that is done: after
    /// it, connecting to [`FaultProxy::addr`] is refused and the proxy has closed its side of
    /// every connection, to clients and to the upstream alike.
    pub async fn stop(self) {
        let FaultProxy {
            stop, accept_loop, ..
        } = self;
        drop(stop);
        // The loop has no failure of its own to report; should it ever panic, the panic is
        // passed on to the caller's test rather than hidden.
        if let Err(failure) = accept_loop.await
            && failure.is_panic()
        {
            std::panic::resume_unwind(failure.into_panic());
        }
    }

    /// Runs the proxy until `shutdown` completes, then [stops](FaultProxy::stop) it — for a
    /// process that is nothing but a proxy, so that a chaos test can partition one consumer
    /// *process* from its lease store.
    ///
    /// A sketch of such a process, taking modes (and `cut`) one per line on standard input and
    /// stopping when it closes:
    ///
    /// ```no_run
    /// use std::io::BufRead;
    /// use kinsumer_testkit::{FaultProxy, ProxyMode};
    ///
    /// #[tokio::main(flavor = "current_thread")]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let proxy = FaultProxy::start("127.0.0.1:6379".parse()?)?;
    ///     println!("{}", proxy.addr()); // for the test to hand to the consumer under test
    ///     let control = proxy.control();
    ///     let (input_closed, shutdown) = tokio::sync::oneshot::channel::<()>();
    ///     std::thread::spawn(move || {
    ///         for line in std::io::stdin().lock().lines().map_while(Result::ok) {
    ///             match line.trim() {
    ///                 "cut" => control.cut(),
    ///                 other => match other.parse::<ProxyMode>() {
    ///                     Ok(mode) => control.set_mode(mode),
    ///                     Err(unknown) => eprintln!("{unknown}"),
    ///                 },
    ///             }
    ///         }
    ///         drop(input_closed);
    ///     });
    ///     // Closing standard input drops `input_closed`, which completes `shutdown`.
    ///     proxy.serve_until(async { _ = shutdown.await }).await;
    ///     Ok(())
    /// }
    /// ```
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop().await;
    }
}

/// Sets a [`FaultProxy`]'s mode, cuts its connections and reads its counters, from any task or
/// thread, without awaiting. Cheap to clone: clones control the same proxy. Outlives the proxy
/// harmlessly (it then controls nothing).
#[derive(Clone, Debug)]
pub struct ProxyControl {
    shared: Arc<Shared>,
}

impl ProxyControl {
    fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                mode: watch::Sender::new(ProxyMode::Pass),
                cuts: watch::Sender::new(0),
                counters: Counters::default(),
            }),
        }
    }

    /// Switches every connection, open and future, to `mode` at once. Bytes already held in a
    /// direction that now forwards are delivered first, in order.
    pub fn set_mode(&self, mode: ProxyMode) {
        // `send_replace` succeeds with or without receivers, and never waits.
        self.shared.mode.send_replace(mode);
        debug!(%mode, "fault proxy mode set");
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.shared.mode.borrow()
    }

    /// Closes every connection the proxy has accepted so far, both sides, discarding anything
    /// held: the client sees the end of the stream (or a reset), the upstream sees the client
    /// go. Connections accepted afterwards are served as usual, in the current mode.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
        debug!("fault proxy cut every connection");
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let counters = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            connections_accepted: load(&counters.connections_accepted),
            connections_open: load(&counters.connections_open),
            upstream_connect_failures: load(&counters.upstream_connect_failures),
            bytes_to_upstream: load(&counters.to_upstream.forwarded),
            bytes_to_client: load(&counters.to_client.forwarded),
            held_to_upstream: load(&counters.to_upstream.held),
            held_to_client: load(&counters.to_client.held),
        }
    }
}

/// The state the proxy, its connections and every [`ProxyControl`] share.
#[derive(Debug)]
struct Shared {
    /// The mode; each direction of each connection watches it, so a change wakes them all.
    mode: watch::Sender<ProxyMode>,
    /// How many times [`ProxyControl::cut`] was called; each connection watches it from the
    /// moment it is accepted, so a cut ends exactly the connections already accepted.
    cuts: watch::Sender<u64>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    upstream_connect_failures: AtomicU64,
    to_upstream: DirectionCounters,
    to_client: DirectionCounters,
}

#[derive(Debug, Default)]
struct DirectionCounters {
    forwarded: AtomicU64,
    held: AtomicU64,
}

impl Counters {
    fn direction(&self, direction: Direction) -> &DirectionCounters {
        match direction {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// Accepts until told to stop (or until the [`FaultProxy`] is dropped), then closes the
/// listener and every connection, and returns once they are all gone.
async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    // Owning the connection tasks here is what makes stopping complete: when this loop ends,
    // the set aborts them all, and each one's sockets close as its task is dropped.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // Completes when the proxy is stopped or dropped.
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    shared.counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
                    // Subscribed here, before the task first runs, so that a cut made right
                    // after this accept reaches this connection too.
                    let cuts = shared.cuts.subscribe();
                    debug!(%peer, "fault proxy accepted a connection");
                    connections.spawn(serve_connection(
                        client,
                        upstream,
                        Arc::clone(&shared),
                        cuts,
                    ));
                }
                Err(error) => {
                    warn!(%error, "fault proxy failed to accept a connection; retrying");
                    tokio::select! {
                        _ = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                    }
                }
            },
            // Reap finished connections, so a long-running proxy does not accumulate them.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(failure) = finished
                    && failure.is_panic()
                {
                    warn!("a fault proxy connection task panicked");
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
    debug!("fault proxy stopped");
}

/// Counts a connection as open for as long as its task lives, however it ends (aborted too).
struct OpenConnection<'a>(&'a AtomicU64);

impl<'a> OpenConnection<'a> {
    fn new(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut cuts: watch::Receiver<u64>,
) {
    let _open = OpenConnection::new(&shared.counters.connections_open);
    tokio::select! {
        // Returning drops both sockets: the cut closes both sides.
        _ = cuts.changed() => debug!("fault proxy connection cut"),
        relayed = relay(client, upstream, &shared) => {
            if let Err(error) = relayed {
                debug!(%error, "fault proxy connection ended with an error");
            }
        }
    }
}

/// Connects to the upstream and pumps both directions until both have ended, or either fails.
async fn relay(mut client: TcpStream, upstream: SocketAddr, shared: &Shared) -> io::Result<()> {
    let mut upstream = match TcpStream::connect(upstream).await {
        Ok(upstream) => upstream,
        Err(error) => {
            shared
                .counters
                .upstream_connect_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
    };
    // The proxy must add no delay of its own: a small reply should not wait for Nagle.
    for socket in [&client, &upstream] {
        if let Err(error) = socket.set_nodelay(true) {
            debug!(%error, "fault proxy could not disable Nagle's algorithm");
        }
    }
    let (from_client, to_client) = client.split();
    let (from_upstream, to_upstream) = upstream.split();
    tokio::try_join!(
        pump(from_client, to_upstream, Direction::ToUpstream, shared),
        pump(from_upstream, to_client, Direction::ToClient, shared),
    )?;
    Ok(())
}

/// Bytes read and not yet written in one direction, reflected in its `held` counter even when
/// the connection is aborted with some still inside.
struct Held<'a> {
    bytes: BytesMut,
    counter: &'a AtomicU64,
}

impl<'a> Held<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        Self {
            bytes: BytesMut::new(),
            counter,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.counter
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }

    fn consume(&mut self, count: usize) {
        self.bytes.advance(count);
        self.counter.fetch_sub(count as u64, Ordering::Relaxed);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.counter
            .fetch_sub(self.bytes.len() as u64, Ordering::Relaxed);
    }
}

/// What one turn of a [`pump`] did.
enum Step {
    Read(usize),
    Wrote(usize),
    ModeChanged,
}

/// Copies one direction, holding bytes (and the end of the stream) while the mode says so.
///
/// Reading and writing go on concurrently, through a queue of held bytes: reads append while
/// the queue is under [`HOLD_LIMIT`], writes drain it while the direction forwards. Both
/// operations are cancel-safe, so a mode change can interrupt either without losing a byte.
async fn pump<R, W>(mut from: R, mut to: W, direction: Direction, shared: &Shared) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counters = shared.counters.direction(direction);
    let mut modes = shared.mode.subscribe();
    let mut held = Held::new(&counters.held);
    let mut chunk = vec![0; READ_CHUNK];
    let mut sender_finished = false;
    loop {
        let forwarding = modes.borrow_and_update().forwards(direction);
        if forwarding && sender_finished && held.bytes.is_empty() {
            // The end of the stream is passed on only after every byte before it.
            to.shutdown().await?;
            return Ok(());
        }
        let may_read = !sender_finished && held.bytes.len() < HOLD_LIMIT;
        let may_write = forwarding && !held.bytes.is_empty();
        let step = tokio::select! {
            read = from.read(&mut chunk), if may_read => Step::Read(read?),
            written = to.write(&held.bytes), if may_write => Step::Wrote(written?),
            // Never fails: the sender lives in `shared`, which outlives this pump.
            _ = modes.changed() => Step::ModeChanged,
        };
        match step {
            Step::Read(0) => sender_finished = true,
            Step::Read(count) => held.push(&chunk[..count]),
            Step::Wrote(0) => return Err(io::ErrorKind::WriteZero.into()),
            Step::Wrote(count) => {
                held.consume(count);
                counters
                    .forwarded
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Step::ModeChanged => {}
        }
    }
}
