//! Network latency for one client: a [`Latency`] layer that delays its calls on the way *to*
//! the server and on the way *back*.
//!
//! A request can be slow to leave (the server then acts on it late, on rows others wrote in
//! the meantime), and a reply can be slow to come back (the server acted at once, but the
//! client learns of it late, and must not date what it learned by when it arrived). Both are
//! ordinary on a real network and both are where the protocol's evidence rules matter, so the
//! layer draws each separately from a seeded RNG, with a long tail that can pass the client's
//! `call_timeout` — then the call times out while the server may still have applied it.
//!
//! One-shot delays ([`Latency::delay_next_request`], [`Latency::delay_next_reply`]) build an
//! exact interleaving in a deterministic test; a [`LatencyProfile`] gives a simulation its
//! background of jitter. Every delayed call is a scheduling point, so other clients' writes
//! interleave with it.
//!
//! ```
//! use std::time::Duration;
//! use kinsumer_core::layer::Layered;
//! use kinsumer_core::store::{ClientId, LeaseStore};
//! use kinsumer_testkit::latency::Latency;
//! use kinsumer_testkit::MemoryLeaseStore;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryLeaseStore::new();
//! let latency = Latency::new(7);
//! let slow = Layered::new(store.clone(), latency.clone());
//!
//! // The server applies the heartbeat at once; the reply takes 9 s to come back.
//! latency.delay_next_reply("heartbeat", Duration::from_secs(9));
//! let started = tokio::time::Instant::now();
//! slow.heartbeat(&ClientId::from("a"), 1).await?;
//! assert_eq!(started.elapsed(), Duration::from_secs(9));
//! assert_eq!(store.peek_clients().len(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use kinsumer_core::layer::{Layer, Op};
use kinsumer_core::rng::Rng;
use kinsumer_core::source::SourceError;
use kinsumer_core::store::StoreError;

/// The background latency of every call: a uniform draw each way, and now and then a long one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyProfile {
    /// Time before the request reaches the server, drawn uniformly in `min..=max`.
    pub request: (Duration, Duration),
    /// Time before the reply reaches the client, drawn uniformly in `min..=max`.
    pub reply: (Duration, Duration),
    /// Share of calls (each way) that take a draw from `tail` instead.
    pub tail_rate: f64,
    /// The long tail: may pass the client's `call_timeout`.
    pub tail: (Duration, Duration),
}

/// Delays the calls of one client; cheap to clone (clones share the settings). A [`Layer`].
#[derive(Clone, Debug)]
pub struct Latency {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    profile: LatencyProfile,
    /// Only calls of these names get the profile's latency; all when `None`.
    only: Option<&'static [&'static str]>,
    rng: Rng,
    next_request: BTreeMap<&'static str, VecDeque<Duration>>,
    next_reply: BTreeMap<&'static str, VecDeque<Duration>>,
}

/// Which way a delay applies.
#[derive(Clone, Copy)]
enum Way {
    Request,
    Reply,
}

impl Latency {
    /// No latency yet; `seed` seeds the draws of a profile set later.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                profile: LatencyProfile::default(),
                only: None,
                rng: Rng::new(seed),
                next_request: BTreeMap::new(),
                next_reply: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the background latency of every call (or of `only` these call names).
    pub fn set_profile(&self, profile: LatencyProfile, only: Option<&'static [&'static str]>) {
        let mut s = self.lock();
        s.profile = profile;
        s.only = only;
    }

    /// The next call named `op` reaches the server `delay` late (queued after earlier ones).
    pub fn delay_next_request(&self, op: &'static str, delay: Duration) {
        self.lock()
            .next_request
            .entry(op)
            .or_default()
            .push_back(delay);
    }

    /// The reply of the next call named `op` comes back `delay` late.
    pub fn delay_next_reply(&self, op: &'static str, delay: Duration) {
        self.lock()
            .next_reply
            .entry(op)
            .or_default()
            .push_back(delay);
    }

    /// The delay of one call, one way: a one-shot if one is queued, else the profile's draw.
    fn draw(&self, op: &'static str, way: Way) -> Duration {
        let mut s = self.lock();
        let s = &mut *s;
        let queued = match way {
            Way::Request => s.next_request.get_mut(op),
            Way::Reply => s.next_reply.get_mut(op),
        };
        if let Some(delay) = queued.and_then(VecDeque::pop_front) {
            return delay;
        }
        if s.only.is_some_and(|only| !only.contains(&op)) {
            return Duration::ZERO;
        }
        let p = &s.profile;
        let range = if s.rng.chance(p.tail_rate) {
            p.tail
        } else {
            match way {
                Way::Request => p.request,
                Way::Reply => p.reply,
            }
        };
        uniform(&mut s.rng, range)
    }

    async fn around<F: Future>(&self, op: &'static str, call: F) -> F::Output {
        let before = self.draw(op, Way::Request);
        if !before.is_zero() {
            tokio::time::sleep(before).await;
        }
        let output = call.await;
        let after = self.draw(op, Way::Reply);
        if !after.is_zero() {
            tokio::time::sleep(after).await;
        }
        output
    }
}

/// A uniform draw in `min..=max` (either order).
pub(crate) fn uniform(rng: &mut Rng, (a, b): (Duration, Duration)) -> Duration {
    let (min, max) = if a <= b { (a, b) } else { (b, a) };
    let spread = u64::try_from((max - min).as_nanos()).unwrap_or(u64::MAX);
    if spread == 0 {
        return min;
    }
    min + Duration::from_nanos(rng.below(spread.saturating_add(1)))
}

impl Layer for Latency {
    async fn store_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> Result<T, StoreError> {
        self.around(op.name, call).await
    }

    /// Both delays come before a source call: reading a stream changes nothing on the server,
    /// so a late reply is the same as a late request — and a reader's position moves only
    /// when a batch reaches the caller (as a Kinesis iterator does), which a delay after the
    /// in-memory reader moved would break.
    async fn source_call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Op,
        call: impl Future<Output = Result<T, SourceError>> + Send + 'a,
    ) -> Result<T, SourceError> {
        let delay = self.draw(op.name, Way::Request) + self.draw(op.name, Way::Reply);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        call.await
    }
}
