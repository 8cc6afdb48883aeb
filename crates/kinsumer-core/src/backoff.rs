//! Back-off: how long to wait before trying a failed call again. Written once, here, and used
//! by the engine and by every backend (a store retrying throttled requests, a fan-out reader
//! subscribing again), so the fleet backs off one way and a simulation replays it exactly.
//!
//! The rule is the usual capped exponential one with jitter:
//!
//! ```text
//! delay(attempt) = min(first × 2^attempt, max) × (1 − jitter / 2),   jitter ∈ [0, 1]
//! ```
//!
//! - `attempt` counts the failures before this wait, from 0: the first retry waits about
//!   `first`, each further one twice as long, never longer than `max` (and no overflow however
//!   many attempts failed: the doubling stops at 2¹⁶).
//! - The jitter takes off up to half: a fleet whose calls failed together (a store restart, a
//!   throttled table) spreads its retries over `[delay / 2, delay]` instead of coming back as
//!   one wave, and the wait is never longer than the cap.
//! - The jitter comes from a seeded [`Rng`], never from the clock or the OS while running:
//!   the same seed gives the same delays, which is what lets the simulation replay a seed
//!   exactly. A backend with no seed of its own is seeded once from the OS
//!   ([`Backoff::from_os_seed`]), so processes of a fleet still spread apart.
//!
//! [`BackoffPolicy`] is the pure rule (first delay and cap); [`Backoff`] is a policy with its
//! own seeded generator, for code that owns one. Code that already owns an [`Rng`] (the
//! engine) calls [`BackoffPolicy::delay`] with a draw of its own.
//!
//! ```
//! use std::time::Duration;
//! use kinsumer_core::backoff::{Backoff, BackoffPolicy};
//!
//! let policy = BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(2));
//! // The pure rule: no jitter gives the whole delay, full jitter half of it.
//! assert_eq!(policy.delay(0, 0.0), Duration::from_millis(100));
//! assert_eq!(policy.delay(3, 0.0), Duration::from_millis(800));
//! assert_eq!(policy.delay(3, 1.0), Duration::from_millis(400));
//! assert_eq!(policy.delay(30, 0.0), Duration::from_secs(2)); // capped
//!
//! // Seeded: the same seed, the same waits.
//! let mut a = Backoff::new(policy, 7);
//! let mut b = Backoff::new(policy, 7);
//! for attempt in 0..5 {
//!     let wait = a.delay(attempt);
//!     assert_eq!(wait, b.delay(attempt));
//!     assert!(wait <= policy.delay(attempt, 0.0) && wait >= policy.delay(attempt, 1.0));
//! }
//! ```

use std::time::Duration;

use crate::rng::{Rng, os_seed};

/// The doubling stops here, so `first × 2^attempt` never overflows before the cap applies.
const MAX_DOUBLINGS: u32 = 16;

/// The pure rule: the first delay and the cap. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The delay before the first retry (attempt 0), before jitter.
    pub first: Duration,
    /// No delay is longer than this.
    pub max: Duration,
}

impl BackoffPolicy {
    /// A policy that starts at `first` and never waits longer than `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The delay before retry number `attempt` (from 0) with `jitter` in `[0, 1]` (clamped):
    /// `min(first × 2^attempt, max)` with up to half of it taken off.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponential = self
            .first
            .saturating_mul(1u32 << attempt.min(MAX_DOUBLINGS));
        let capped = exponential.min(self.max);
        // NaN (not a number a generator gives, but a caller might) counts as no jitter.
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        capped.mul_f64(1.0 - 0.5 * jitter)
    }

    /// The delay before retry number `attempt`, with jitter drawn from `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut Rng) -> Duration {
        self.delay(attempt, rng.unit())
    }
}

/// A [`BackoffPolicy`] with a seeded generator of its own: the back-off of one backend (or one
/// reader). Deterministic for a given seed.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    rng: Rng,
}

impl Backoff {
    /// `policy`, its jitter drawn from a generator seeded with `seed`.
    pub fn new(policy: BackoffPolicy, seed: u64) -> Self {
        Self {
            policy,
            rng: Rng::new(seed),
        }
    }

    /// `policy`, seeded once from the OS: for a backend whose caller gave no seed.
    pub fn from_os_seed(policy: BackoffPolicy) -> Self {
        Self::new(policy, os_seed())
    }

    /// `policy` seeded with `seed` if there is one, and from the OS otherwise.
    pub fn seeded_or_os(policy: BackoffPolicy, seed: Option<u64>) -> Self {
        Self::new(policy, seed.unwrap_or_else(os_seed))
    }

    /// The rule this back-off follows.
    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }

    /// The delay before retry number `attempt` (from 0), with the next jitter.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        self.policy.delay_with(attempt, &mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// The engine's rule (`100 ms × 2^attempt`, capped at `max`, with up to half taken off by
    /// the jitter) — and no overflow however many attempts failed.
    #[test]
    fn delay_doubles_from_first_is_capped_and_jitter_takes_off_at_most_half() {
        let max = Duration::from_secs(10);
        let policy = BackoffPolicy::new(MS(100), max);
        assert_eq!(policy.delay(0, 0.0), MS(100));
        assert_eq!(policy.delay(1, 0.0), MS(200));
        assert_eq!(policy.delay(3, 0.0), MS(800));
        assert_eq!(policy.delay(3, 1.0), MS(400));
        assert_eq!(policy.delay(7, 0.0), max);
        assert_eq!(policy.delay(u32::MAX, 0.0), max);
        assert_eq!(policy.delay(u32::MAX, 1.0), max / 2);
        // Jitter out of [0, 1] is clamped: never longer than the cap, never under half.
        assert_eq!(policy.delay(2, -3.0), MS(400));
        assert_eq!(policy.delay(2, 7.0), MS(200));
        assert_eq!(policy.delay(2, f64::NAN), MS(400));
        for attempt in 0..40 {
            for jitter in [0.0, 0.25, 0.5, 0.99, 1.0] {
                let d = policy.delay(attempt, jitter);
                assert!(
                    d <= max && d >= MS(50),
                    "attempt {attempt}, jitter {jitter}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn a_huge_first_delay_saturates_at_the_cap_instead_of_overflowing() {
        let policy = BackoffPolicy::new(Duration::MAX, Duration::from_secs(1));
        assert_eq!(policy.delay(20, 0.0), Duration::from_secs(1));
        let zero = BackoffPolicy::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.delay(5, 0.5), Duration::ZERO);
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_another_seed_others() {
        let policy = BackoffPolicy::new(MS(50), MS(800));
        let delays = |seed| {
            let mut backoff = Backoff::new(policy, seed);
            (0..16).map(|a| backoff.delay(a)).collect::<Vec<_>>()
        };
        assert_eq!(delays(42), delays(42));
        assert_ne!(delays(42), delays(43));
        for (attempt, d) in delays(42).into_iter().enumerate() {
            let attempt = attempt as u32;
            assert!(
                d <= policy.delay(attempt, 0.0) && d >= policy.delay(attempt, 1.0),
                "{attempt}: {d:?}"
            );
        }
    }

    /// A seeded back-off draws exactly what `delay_with` draws from a generator of the same
    /// seed: the engine (which owns its generator) and a backend (which owns a `Backoff`) follow
    /// one rule.
    #[test]
    fn a_backoff_draws_like_the_policy_with_a_generator_of_the_same_seed() {
        let policy = BackoffPolicy::new(MS(100), Duration::from_secs(10));
        let mut owned = Backoff::new(policy, 9);
        let mut rng = Rng::new(9);
        for attempt in 0..10 {
            assert_eq!(owned.delay(attempt), policy.delay_with(attempt, &mut rng));
        }
        assert_eq!(owned.policy(), policy);
        assert_eq!(
            Backoff::seeded_or_os(policy, Some(9)).delay(3),
            Backoff::new(policy, 9).delay(3)
        );
    }

    #[test]
    fn jitter_spreads_delays_over_the_lower_half() {
        let policy = BackoffPolicy::new(MS(1000), MS(1000));
        let mut backoff = Backoff::new(policy, 1);
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.delay(0)).collect();
        let below_three_quarters = delays.iter().filter(|d| **d < MS(750)).count();
        // Uniform jitter: about half the waits are in [500, 750) ms.
        assert!(
            (350..650).contains(&below_three_quarters),
            "{below_three_quarters}"
        );
    }
}
