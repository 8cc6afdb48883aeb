//! # kinsumer-kinesis — not implemented yet
//!
//! This crate will hold the Kinesis `ShardSource` (polling, enhanced fan-out, KPL de-aggregation) over `aws-sdk-kinesis`: a translation of the contract in
//! `kinsumer_core` to its server and nothing more (the protocol lives in the core).
//!
//! **It exports nothing today.** It exists so that the workspace layout and the facade's
//! `kinesis` Cargo feature are in place; the work is tracked in issue #3. Until then, use
//! `kinsumer_testkit`'s in-memory implementations.
