//! # kinsumer-dynamo
//!
//! A [`LeaseStore`](kinsumer_core::store::LeaseStore) on Amazon DynamoDB, over
//! [`aws_sdk_dynamodb`]: the contract of [`kinsumer_core::store`] mapped onto single-item
//! conditional requests, and nothing more — the protocol lives in the core.
//!
//! The caller builds and passes the [`aws_sdk_dynamodb::Client`] (HTTP stack, TLS,
//! credentials, region): this crate picks no TLS stack.
//!
//! ## Retries and timeouts: one layer each
//!
//! The store works on a copy of the caller's client with **the SDK's retries turned off**, and
//! with an *operation attempt timeout* ([`DynamoConfig::attempt_timeout`], 5 s) when the client
//! sets none. Left on, retries would stack three deep — the SDK's (3 attempts by default), the
//! store's and the engine's — so one throttled table would see up to 15 requests per engine
//! attempt, and an SDK retry of a conditional write that had landed would meet its own write.
//! Instead each layer has one job:
//!
//! - the store retries **throttling** only, at most 4 times, with the core's seeded back-off
//!   ([`kinsumer_core::backoff`]; 50 ms doubling to 800 ms, jittered; seed with
//!   [`DynamoConfig::with_backoff_seed`]), then answers `Throttled`;
//! - a request whose outcome is **unknown** (timeout, lost connection, 5xx) is settled by one
//!   consistent `GetItem`, judged by the core ([`kinsumer_core::outcome`]): the store only
//!   translates errors and supplies the read;
//! - everything else that is retryable goes back to the **engine**, which backs off and tries
//!   again.
//!
//! Without a timeout a reply lost on the network would hang the call until the engine's
//! `call_timeout` gave up on it, and the write's outcome would never be settled.
//!
//! ## Key design
//!
//! One table per application by default (`kinsumer-<application>`), partition key `pk` (S),
//! sort key `sk` (S). Every partition key is qualified by the application (and a lease's by its
//! stream), so several streams — and, if you point them at one table, several applications —
//! share a table without sharing a row. Application names cannot contain `#`, so two
//! qualified keys never collide. The items of application `billing`:
//!
//! | item | `pk` | `sk` | other attributes |
//! |---|---|---|---|
//! | client | `clients#billing` | client id, e.g. `worker-1` | `counter` (N, the last heartbeat value), `judged_dead` (N, the value a watcher judged the client dead at; absent when none), `expires_at` (N, epoch s, only with `client_ttl`) |
//! | change counter | `changes#billing` | `changes` | `changes` (N) |
//! | lease | `lease#billing#<stream>`, e.g. `lease#billing#orders` | shard id, e.g. `shardId-000000000001` | `token` (N), `owner` (S, absent when unowned), `checkpoint` (S, [`Checkpoint`](kinsumer_core::Checkpoint) text, absent until the first commit), `finished` (BOOL), `parents` (L of S), `successor` (S, the client a release handed the lease to; absent when none) |
//!
//! A client's `counter` is the value of its last heartbeat, a `u64` over its whole range (the
//! engine writes `(incarnation << 32) | sequence`): a DynamoDB number holds 38 digits, so it is
//! stored exactly as its decimal text and read back as a `u64`. An item written by an older
//! version (a counter bumped by one, e.g. `17`) reads the same way. A `counter` that is not a
//! number is a corrupt item, for `heartbeat` (which does not overwrite it) and `clients` alike.
//!
//! ## Operation → request (one each)
//!
//! | operation | request |
//! |---|---|
//! | `heartbeat` | `UpdateItem` `SET counter = :beat` (the value, unconditionally), condition: counter absent or of type N |
//! | `clients` | `Query pk = "clients#<application>"` (consistent, all pages) |
//! | `deregister` | `DeleteItem` (the judgement goes with the item) |
//! | `client` | `GetItem` (consistent) |
//! | `mark_dead` | `UpdateItem` `SET judged_dead = :v` if `counter = :v` |
//! | `changes` | `GetItem` (consistent) of the change counter; none is 0 |
//! | `announce` | `UpdateItem` `SET changes = if_not_exists(changes, 0) + 1` if absent or of type N, returning the new value; a value that does not decode is written afresh as 1 by a `PutItem` conditioned on the bad value |
//! | `leases` | `Query pk = "lease#<application>#<stream>"` (consistent, all pages) |
//! | `lease` | `GetItem` (consistent) |
//! | `create_if_absent` | `PutItem` if `attribute_not_exists(pk)`; on failure the `ALL_OLD` item is the answer |
//! | `take` | `UpdateItem` `SET owner, token = expected + 1 REMOVE successor` if `token = expected` and not finished |
//! | `checkpoint` / `release` / `finish` | `UpdateItem` if `owner = me AND token = t` (and not finished, except `finish`) |
//! | `delete_finished` | `DeleteItem` if missing or `finished = true` |
//! | `reset_checkpoint` | `UpdateItem` if `owner` absent and `token = expected` |
//! | `replace_corrupt` | consistent `GetItem`, decoded in Rust; if it does not decode, `PutItem` of the new item if every lease attribute still equals (or is still absent as) what was read |
//!
//! Every conditional write asks `ReturnValuesOnConditionCheckFailure = ALL_OLD`: an item comes
//! back → `LeaseLost` (or `Corrupt` if it does not parse), none → `NotFound`, with no second
//! read. An unknown outcome (timeout, lost connection, 5xx) is settled by one consistent
//! `GetItem` (see above); throttling is retried in the store with capped backoff, then
//! `Throttled`; a missing table is `Fatal` naming it. A corrupt item is `Corrupt { key: "<table>/<pk>/<sk>" }`.
//!
//! ## Cost (counted by [`DynamoLeaseStore::stats`])
//!
//! One checkpoint = 1 `UpdateItem`, 0 reads (measured, `tests/store.rs`). An idle fleet of 10
//! clients holding 1,000 leases, default intervals, on moto (`tests/idle_cost.rs`): 5.0
//! writes/s — the heartbeats, one per client per `heartbeat_interval`, and no lease writes.
//! Reads: the engine asks for one `clients()` Query per client per membership poll and one
//! `leases()` Query per client per full lease read, about 52 reads/s for this fleet; on moto
//! (about 0.4 s per 1,000-item Query) we counted 15–44 reads/s, bounded by moto's speed.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod billing;
mod errors;
mod item;
mod stats;
mod store;

/// The AWS SDK this store takes a client of (`aws_sdk_dynamodb::Client`).
pub use aws_sdk_dynamodb;
pub use stats::DynamoStats;
pub use store::{DynamoConfig, DynamoLeaseStore};
