//! # kinsumer-test-env
//!
//! This repository's own test plumbing — not published, not for users (their test doubles are
//! in `kinsumer-testkit`). Used as a dev-dependency by the backends' tests, the CLI's tests and
//! the benchmark suite (`kinsumer-bench`):
//!
//! - [`services`] — finding the real servers `scripts/services.sh` starts (fail under
//!   `CI=true`, skip loudly elsewhere), and clearing what a test left in them;
//! - `kinesis_local` (feature `kinesis-local`) — a client for the Kinesis emulator, with a
//!   fresh stream per test (`TestStream`, which the source conformance suite drives as a
//!   `StreamAdmin`);
//! - `moto` (feature `moto`) — a client for moto's DynamoDB server, with fresh tables;
//! - [`fleet`] and [`rows`] — waiting for a fleet of consumers to settle, and reading a store's
//!   client rows, the same way in every backend's tests;
//! - `emulator::InjectReplies` (either emulator feature) — replacing some of an emulator's
//!   replies with errors, as the service would send them.

#[cfg(any(feature = "kinesis-local", feature = "moto"))]
pub mod emulator;
pub mod fleet;
#[cfg(feature = "kinesis-local")]
pub mod kinesis_local;
#[cfg(feature = "moto")]
pub mod moto;
pub mod rows;
pub mod services;
