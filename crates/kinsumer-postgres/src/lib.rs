//! # kinsumer-postgres — not implemented yet
//!
//! This crate will hold the PostgreSQL `LeaseStore` over `sqlx`, with transactional checkpoints: a translation of the contract in
//! `kinsumer_core` to its server and nothing more (the protocol lives in the core).
//!
//! **It exports nothing today.** It exists so that the workspace layout and the facade's
//! `postgres` Cargo feature are in place; the work is tracked in issue #6. Until then, use
//! `kinsumer_testkit`'s in-memory implementations.
