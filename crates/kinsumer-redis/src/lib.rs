//! # kinsumer-redis
//!
//! A [`LeaseStore`] on Redis (≥ 6.2; tested on 7.0), over the [`redis`] crate: the contract of
//! [`kinsumer_core::store`] mapped onto Redis hashes and Lua scripts, and nothing more — the
//! protocol lives in the core.
//!
//! ```no_run
//! use kinsumer_core::{Config, Consumer};
//! use kinsumer_redis::RedisLeaseStore;
//! # use kinsumer_testkit::MemoryStream;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let source = MemoryStream::new("orders", 4);
//! // Every process of the fleet uses the same application name (and the same Redis).
//! let store = RedisLeaseStore::connect("redis://127.0.0.1:6379/0", "billing").await?;
//! let config = Config::new("billing");
//! let mut consumer = Consumer::new(config, source, store)?;
//! let records = consumer.records()?;
//! # drop(records);
//! # Ok(())
//! # }
//! ```
//!
//! To share a connection or tune timeouts and reconnection, build the
//! [`ConnectionManager`] yourself and pass it to [`RedisLeaseStore::new`].
//!
//! ## Key layout
//!
//! Every key of an application starts with `kinsumer:{<application>}:`. The braces are a Redis
//! Cluster *hash tag*: all keys of one application hash to one slot, so each script's keys are
//! on one node and the store works unchanged on a cluster. Different applications share nothing
//! and spread over the slots.
//!
//! | key | type | field → value |
//! |---|---|---|
//! | `kinsumer:{billing}:clients` | hash | client id → last heartbeat value, a decimal `u64`, e.g. `worker-1` → `30064771089` |
//! | `kinsumer:{billing}:judged_dead` | hash | client id → the heartbeat value a watcher judged it dead at (dead while it equals the value in `clients`), e.g. `worker-2` → `30064771050` |
//! | `kinsumer:{billing}:changes` | string | the change counter, a decimal `u64`, e.g. `412` |
//! | `kinsumer:{billing}:leases:orders` | hash | shard id → lease row, e.g. `shardId-000000000001` → `{"owner":"worker-1","token":"3","checkpoint":"AFTER:49590338271490256608559692538361571095921575989136588898/0"}` |
//!
//! A client's value is the decimal text of the `u64` its last heartbeat wrote (the engine
//! writes `(incarnation << 32) | sequence`, so values use the whole `u64` range, beyond what a
//! Redis integer — a signed 64-bit number — holds). `HSET` stores it as a string and the store
//! parses it back as a `u64`; nothing on the server does arithmetic on it. A row written by an
//! older version (a small counter bumped by `HINCRBY`, e.g. `17`) reads the same way.
//!
//! A lease row is a JSON object: `token` (a decimal string, so Lua never rounds it), `owner`,
//! `checkpoint` (the text form of [`Checkpoint`]: `TRIM_HORIZON`,
//! `LATEST`, `AT_TIMESTAMP:<ms>`, `AFTER:<seq>/<sub>`, `SHARD_END`), `finished: true`,
//! `parents` (a list of shard ids) and `successor` (the client a release handed the lease to;
//! `take` removes it). Absent fields mean none / false / empty: a new row is
//! `{"token":"0"}`. Nothing has a TTL: the store never judges time, the engine does.
//!
//! Inspect or repair with `redis-cli`:
//! `HGETALL kinsumer:{billing}:clients`, `HGET kinsumer:{billing}:leases:orders shardId-000000000001`.
//!
//! ## The contract on Redis
//!
//! | operation | Redis |
//! |---|---|
//! | `heartbeat` | `HSET clients <client> <beat>` (unconditional) |
//! | `clients` | `HGETALL clients` (one round trip) |
//! | `deregister` | `HDEL judged_dead <client>`, then `HDEL clients <client>` |
//! | `client` | `HGET clients <client>`, `HGET judged_dead <client>` |
//! | `mark_dead` | script: the value in `clients` equal → `HSET judged_dead <client> <value>` |
//! | `changes` | `GET changes` (none is 0) |
//! | `announce` | script: `GET changes`, `SET changes <value + 1>` (a value that does not decode, or a key of another type, is written afresh as 1) |
//! | `leases` | `HGETALL leases:<stream>` (one round trip, whatever the shard count) |
//! | `lease` | `HGET leases:<stream> <shard>` |
//! | `create_if_absent` | script: `HSETNX`, then `HGET` the row now stored |
//! | `take` | script: token equal and not finished → set owner, token + 1, remove successor |
//! | `checkpoint` / `release` / `finish` | one script: owner and token equal (and not finished, except a repeated `finish`) → write |
//! | `delete_finished` | script: finished → `HDEL` |
//! | `reset_checkpoint` | script: unowned and token equal → write |
//! | `replace_corrupt` | `HGET` the raw value and decode it in Rust; if it does not decode (or its token is exhausted), a script writes the new row only while the value is still byte for byte the one read |
//!
//! Every conditional write is one Lua script run with `EVALSHA` (reloaded automatically after
//! a server restart emptied the script cache): Redis runs a script without interleaving any
//! other command, so the check and the write are one atomic step, fenced by the token as the
//! contract asks.
//!
//! ## Errors
//!
//! - A row that does not parse, or a key holding another type, is
//!   [`StoreError::Corrupt`] naming the key and, for a hash, the field
//!   (`kinsumer:{billing}:leases:orders shardId-000000000001`) — never a panic.
//! - A refused or dropped connection, a timeout, `LOADING`, `READONLY`, `TRYAGAIN` and the like
//!   are [`StoreError::Transient`]; authentication or ACL refusals and invalid configuration are
//!   [`StoreError::Fatal`].
//! - Reconnection is the [`ConnectionManager`]'s. A write whose reply was lost (the connection
//!   dropped, or no reply came within the response timeout: 5 s with [`RedisLeaseStore::connect`],
//!   your own with [`RedisLeaseStore::new`]) is *ambiguous*: the store re-reads the row, and the
//!   core's [`outcome::judge`] decides — `Ok` if the row shows the write (for `take`: owner is
//!   the caller, token `expected + 1`, not finished), `LeaseLost`/`NotFound` if the row moved
//!   on, and `Transient` if it still waits for the write, so the engine retries. The store
//!   itself never retries: the engine does, with the core's back-off.
//!
//! ## Durability: what survives a crash
//!
//! Redis acknowledges a write once it is applied in memory; what survives a crash is what its
//! persistence wrote down. The store's guarantees are only as good as that:
//!
//! - **No persistence** (`appendonly no`, no `save`): a restart of Redis loses every lease and
//!   checkpoint. The fleet starts over from its initial position: with `TrimHorizon` records
//!   are delivered again, with `Latest` records written meanwhile are **skipped**.
//! - **RDB snapshots only**: a crash loses the writes since the last snapshot. Checkpoints move
//!   back (more duplicates), and so do tokens: a token handed out after the snapshot is handed
//!   out **again**, and a client that had lost its lease holds it again (the row says so), so a
//!   zombie's writes succeed once more. Fencing is broken for that window.
//! - **AOF with `appendfsync everysec`** (Redis's default once AOF is on): a Redis process crash
//!   loses nothing acknowledged; a machine crash or power loss loses about the last second,
//!   with the same effects as above for that second.
//! - **AOF with `appendfsync always`**: every write is on disk before it is acknowledged;
//!   nothing acknowledged is lost. The store writes little (one heartbeat per client per
//!   `heartbeat_interval`, checkpoints at most every `commit_interval` per shard), so the cost
//!   is small. Tested: a fleet keeps going, and loses no record, across `kill -9` and a restart
//!   of Redis.
//!
//! **Replication and failover.** Redis replicates asynchronously. If the primary acknowledges a
//! `take` and dies before a replica received it, and Sentinel or Cluster promotes that
//! replica, the row is back at the old owner and token: the same token is handed out twice, and
//! the old owner — which the engine told to stop — is the owner again, so its late writes pass
//! the fence. Checkpoints can move back too (duplicates only). `min-replicas-to-write 1` with
//! `min-replicas-max-lag` narrows that window but does not close it, and `WAIT` after a write
//! only tells that a replica received it, not that failover will pick that replica.
//!
//! **Recommended**: one primary with `appendonly yes` and `appendfsync always`, restarted in
//! place by a supervisor (no automatic failover to an asynchronous replica); replicas, if any,
//! for reading and backups. If you need automatic failover, set `min-replicas-to-write` and
//! accept that a failover can break fencing for the writes of its last moments — or use a store
//! with synchronous replication (PostgreSQL, DynamoDB).
//!
//! Also set `maxmemory-policy noeviction` (the default): an `allkeys-*` policy may evict a
//! lease hash, which loses leases and checkpoints as a restart without persistence would.
//!
//! ## TLS
//!
//! `rediss://` URLs need the `tls` feature (rustls with the *ring* provider; the
//! system's root certificates). Without it, no TLS stack is built, and a `rediss://` URL is a
//! [`StoreError::Fatal`] saying which feature to enable.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod errors;
mod row;
mod scripts;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, ScriptInvocation};

use kinsumer_core::outcome::{self, LeaseWrite};
use kinsumer_core::position::Checkpoint;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{
    ClientId, ClientRow, CorruptRow, Lease, LeaseStore, Rows, StoreError, Tenure, canonical_u64,
};

use crate::errors::{classify, is_ambiguous};

/// The [`LeaseStore`] of one application on Redis. Cheap to clone: clones share the
/// connection. See the [crate docs](crate) for the key layout and the guarantees.
#[derive(Clone)]
pub struct RedisLeaseStore {
    conn: ConnectionManager,
    application: String,
    prefix: String,
}

impl fmt::Debug for RedisLeaseStore {
    // The connection (and so the URL, which may hold a password) is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLeaseStore")
            .field("application", &self.application)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What a conditional script answered.
enum Reply {
    Ok(Option<Vec<u8>>),
    Lost,
    NotFound,
    Corrupt(String),
    /// `replace_corrupt`'s script: the row is no longer the value read.
    Changed,
}

/// How many times `replace_corrupt` reads a row again that changed between its read and its
/// write (another bad value written meanwhile) before it gives up as transient.
const REPAIR_ATTEMPTS: usize = 3;

impl RedisLeaseStore {
    /// A store for `application` over an existing connection.
    ///
    /// Fails with [`StoreError::Fatal`] if `application` is empty or contains `{` or `}` (it
    /// is the keys' hash tag).
    pub fn new(conn: ConnectionManager, application: &str) -> Result<Self, StoreError> {
        check_application(application)?;
        Ok(Self {
            conn,
            application: application.to_owned(),
            prefix: format!("kinsumer:{{{application}}}:"),
        })
    }

    /// Connects to `url` (`redis://[user:password@]host:port[/db]`, or `rediss://` with the
    /// `tls` feature) and returns a store for `application`.
    ///
    /// The connection reconnects on its own: each attempt times out after 2 s, retries back off
    /// up to 1 s apart, and a command without a reply for 5 s fails as transient (the engine's
    /// own `call_timeout` bounds every call too). An unreachable server is
    /// [`StoreError::Transient`]; a bad URL or refused credentials [`StoreError::Fatal`]. The
    /// URL is never included in an error or in `Debug` output.
    pub async fn connect(url: &str, application: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            let hint = if url.starts_with("rediss:") && cfg!(not(feature = "tls")) {
                " (rediss:// needs kinsumer-redis's `tls` feature: `redis-tls` in the kinsumer crate)"
            } else {
                ""
            };
            StoreError::Fatal(format!("invalid Redis URL: {}{hint}", e.category()))
        })?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(5);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| match classify(&e, &address) {
                StoreError::Transient(m) => {
                    StoreError::Transient(format!("cannot connect to Redis at {address}: {m}"))
                }
                StoreError::Fatal(m) => {
                    StoreError::Fatal(format!("cannot connect to Redis at {address}: {m}"))
                }
                other => other,
            })?;
        Self::new(conn, application)
    }

    /// The application this store serves.
    pub fn application(&self) -> &str {
        &self.application
    }

    /// The prefix of every key of the application: `kinsumer:{<application>}:`.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash of client heartbeat values: `kinsumer:{<application>}:clients`.
    pub fn clients_key(&self) -> String {
        format!("{}clients", self.prefix)
    }

    /// The hash of the heartbeat values clients were judged dead at:
    /// `kinsumer:{<application>}:judged_dead`.
    pub fn judged_dead_key(&self) -> String {
        format!("{}judged_dead", self.prefix)
    }

    /// The change counter (a decimal string): `kinsumer:{<application>}:changes`.
    pub fn changes_key(&self) -> String {
        format!("{}changes", self.prefix)
    }

    /// The hash of `stream`'s lease rows: `kinsumer:{<application>}:leases:<stream>`.
    pub fn leases_key(&self, stream: &str) -> String {
        format!("{}leases:{stream}", self.prefix)
    }

    /// How a lease row is named in errors: the hash key and the field, as `HGET` takes them.
    fn row_name(&self, stream: &str, shard: &ShardId) -> String {
        format!("{} {shard}", self.leases_key(stream))
    }

    fn corrupt(&self, stream: &str, shard: &ShardId, reason: String) -> StoreError {
        StoreError::Corrupt {
            key: self.row_name(stream, shard),
            reason,
        }
    }

    fn decode(&self, stream: &str, shard: &ShardId, raw: &[u8]) -> Result<Lease, StoreError> {
        row::decode(shard, raw).map_err(|reason| self.corrupt(stream, shard, reason))
    }

    /// Runs a conditional script on `stream`'s lease hash and reads its status reply.
    async fn run(
        &self,
        stream: &str,
        shard: &ShardId,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<Reply, RedisError> {
        let mut conn = self.conn.clone();
        let parts: Vec<Vec<u8>> = invocation.invoke_async(&mut conn).await?;
        let mut parts = parts.into_iter();
        let status = parts.next().unwrap_or_default();
        let detail = parts.next();
        Ok(match status.as_slice() {
            b"OK" => Reply::Ok(detail),
            b"LOST" => Reply::Lost,
            b"NOTFOUND" => Reply::NotFound,
            b"CHANGED" => Reply::Changed,
            b"CORRUPT" => Reply::Corrupt(
                detail
                    .map(|d| String::from_utf8_lossy(&d).into_owned())
                    .unwrap_or_default(),
            ),
            other => Reply::Corrupt(format!(
                "unexpected script reply {:?} for {}",
                String::from_utf8_lossy(other),
                self.row_name(stream, shard)
            )),
        })
    }

    /// Turns a script's reply into the contract's answer for `shard`: `OK`'s value, or the
    /// refusal.
    fn answer(
        &self,
        stream: &str,
        shard: &ShardId,
        reply: Reply,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match reply {
            Reply::Ok(value) => Ok(value),
            Reply::Lost | Reply::Changed => Err(StoreError::LeaseLost {
                shard: shard.clone(),
            }),
            Reply::NotFound => Err(StoreError::NotFound {
                shard: shard.clone(),
            }),
            Reply::Corrupt(reason) => Err(self.corrupt(stream, shard, reason)),
        }
    }

    /// The raw value of a lease row (`None`: no row).
    async fn raw_lease(
        &self,
        stream: &str,
        shard: &ShardId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(self.leases_key(stream))
            .arg(shard.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &self.row_name(stream, shard)))
    }

    /// Every field of the hash `key` and its value, as bytes: a field that does not decode is
    /// one corrupt row, not a failed read.
    async fn fields(&self, key: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, key))
    }

    /// Settles a write whose reply was lost: the store only translates (is the error one that
    /// may hide an applied write?) and re-reads; the core decides ([`kinsumer_core::outcome`]).
    async fn settle(
        &self,
        write: LeaseWrite<'_>,
        stream: &str,
        shard: &ShardId,
        err: RedisError,
    ) -> Result<Option<Lease>, StoreError> {
        let name = self.row_name(stream, shard);
        if !is_ambiguous(&err) {
            return Err(classify(&err, &name));
        }
        let what = format!("{write} on {name}");
        outcome::settle(
            shard,
            write,
            &what,
            &format!("the reply was lost: {err}"),
            // The connection the reply was lost on may be the one broken: a re-read that meets
            // it is sent once more (the manager reconnects), not taken as the answer.
            || async {
                match self.lease(stream, shard).await {
                    Err(e) if e.is_retryable() => self.lease(stream, shard).await,
                    read => read,
                }
            },
        )
        .await
    }

    /// A fenced write (`checkpoint` / `release` / `finish`), settled as `write` when its
    /// reply is lost.
    async fn fenced(
        &self,
        write: LeaseWrite<'_>,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        let shard = &tenure.shard;
        let checkpoint = checkpoint.map(ToString::to_string).unwrap_or_default();
        let successor = successor.map_or("", ClientId::as_str);
        let mut invocation = scripts::FENCED.prepare_invoke();
        invocation
            .key(self.leases_key(stream))
            .arg(shard.as_str())
            .arg(tenure.owner.as_str())
            .arg(tenure.token.to_string())
            .arg(write.name())
            .arg(checkpoint)
            .arg(successor);
        match self.run(stream, shard, &invocation).await {
            Ok(reply) => self.answer(stream, shard, reply).map(drop),
            Err(err) => self.settle(write, stream, shard, err).await.map(drop),
        }
    }
}

/// A judged-dead mark as stored: a value that does not decode is no judgement (the safe side:
/// the client counts as alive).
fn judged_at(raw: Option<&[u8]>) -> Option<u64> {
    raw.and_then(|raw| std::str::from_utf8(raw).ok())
        .and_then(canonical_u64)
}

#[async_trait]
impl LeaseStore for RedisLeaseStore {
    fn application(&self) -> Option<&str> {
        Some(&self.application)
    }
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        let key = self.clients_key();
        let mut conn = self.conn.clone();
        // The decimal text of the u64: a hash field is a string, so the whole range fits (no
        // signed 64-bit integer on the way, unlike `HINCRBY`). Unconditional: a lost reply is
        // not settled by re-reading, the engine retries it like any transient error (writing
        // the same value again is harmless).
        let _added: i64 = redis::cmd("HSET")
            .arg(&key)
            .arg(client.as_str())
            .arg(beat.to_string())
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &key))?;
        Ok(())
    }

    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        let key = self.clients_key();
        // Two reads, not one snapshot: a mark holds only at the value it was made at, so a
        // mark read with a later value means nothing, whichever hash is read first.
        let fields = self.fields(&key).await?;
        let judged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = self
            .fields(&self.judged_dead_key())
            .await?
            .into_iter()
            .collect();
        let mut rows = Vec::new();
        let mut corrupt = Vec::new();
        for (id, counter) in fields {
            let shown = String::from_utf8_lossy(&id).into_owned();
            let bad = |reason: String| CorruptRow {
                key: format!("{key} {shown}"),
                id: Some(shown.clone()),
                reason,
            };
            let Ok(id) = String::from_utf8(id) else {
                corrupt.push(bad("the client id is not UTF-8".to_owned()));
                continue;
            };
            match std::str::from_utf8(&counter).ok().and_then(canonical_u64) {
                Some(counter) => rows.push(ClientRow {
                    judged_dead: judged_at(judged.get(id.as_bytes()).map(Vec::as_slice)),
                    ..ClientRow::new(ClientId::from(id), counter)
                }),
                None => corrupt.push(bad(format!(
                    "the heartbeat value {:?} is not an unsigned 64-bit integer in canonical decimal form",
                    String::from_utf8_lossy(&counter)
                ))),
            }
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Rows::new(rows, corrupt))
    }

    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        let key = self.clients_key();
        let mut conn = self.conn.clone();
        // Idempotent: a lost reply is retried by the engine as any transient error. The mark
        // goes first, then the row: a client registering again under the id is not born dead.
        let judged_key = self.judged_dead_key();
        let _removed: i64 = redis::cmd("HDEL")
            .arg(&judged_key)
            .arg(client.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &judged_key))?;
        let _removed: i64 = redis::cmd("HDEL")
            .arg(&key)
            .arg(client.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &key))?;
        Ok(())
    }

    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        let key = self.clients_key();
        let mut conn = self.conn.clone();
        let counter: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&key)
            .arg(client.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &key))?;
        let judged_key = self.judged_dead_key();
        let judged: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&judged_key)
            .arg(client.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &judged_key))?;
        let Some(counter) = counter else {
            return Ok(None);
        };
        match std::str::from_utf8(&counter).ok().and_then(canonical_u64) {
            Some(value) => Ok(Some(ClientRow {
                judged_dead: judged_at(judged.as_deref()),
                ..ClientRow::new(client.clone(), value)
            })),
            None => Err(StoreError::Corrupt {
                key: format!("{key} {client}"),
                reason: format!(
                    "the heartbeat value {:?} is not an unsigned 64-bit integer in canonical decimal form",
                    String::from_utf8_lossy(&counter)
                ),
            }),
        }
    }

    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        let key = self.clients_key();
        let mut conn = self.conn.clone();
        // Idempotent: a lost reply is retried by the engine as any transient error.
        let marked: i64 = scripts::MARK_DEAD
            .key(&key)
            .key(self.judged_dead_key())
            .arg(client.as_str())
            .arg(counter.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &key))?;
        Ok(marked == 1)
    }

    async fn changes(&self) -> Result<u64, StoreError> {
        let key = self.changes_key();
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &key))?;
        let Some(value) = value else {
            return Ok(0);
        };
        std::str::from_utf8(&value)
            .ok()
            .and_then(canonical_u64)
            .ok_or_else(|| StoreError::Corrupt {
                key,
                reason: format!(
                    "the change counter {:?} is not an unsigned 64-bit integer in canonical decimal form",
                    String::from_utf8_lossy(&value)
                ),
            })
    }

    async fn announce(&self) -> Result<u64, StoreError> {
        let key = self.changes_key();
        let mut conn = self.conn.clone();
        let text: String = scripts::ANNOUNCE
            .key(&key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &key))?;
        canonical_u64(&text).ok_or_else(|| StoreError::Corrupt {
            key,
            reason: format!("the announce script answered {text:?}"),
        })
    }

    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        let key = self.leases_key(stream);
        let fields = self.fields(&key).await?;
        let mut leases = Vec::new();
        let mut corrupt = Vec::new();
        for (shard, raw) in fields {
            let shown = String::from_utf8_lossy(&shard).into_owned();
            let decoded = String::from_utf8(shard)
                .map_err(|_| "the shard id is not UTF-8".to_owned())
                .and_then(|shard| row::decode(&ShardId::from(shard), &raw));
            match decoded {
                Ok(lease) => leases.push(lease),
                Err(reason) => corrupt.push(CorruptRow {
                    key: format!("{key} {shown}"),
                    id: Some(shown),
                    reason,
                }),
            }
        }
        leases.sort_by(|a, b| a.shard.cmp(&b.shard));
        Ok(Rows::new(leases, corrupt))
    }

    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        let raw = self.raw_lease(stream, shard).await?;
        raw.map(|raw| self.decode(stream, shard, &raw)).transpose()
    }

    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        let new = row::encode(&Lease::new(shard.clone(), parents.to_vec()));
        let mut conn = self.conn.clone();
        let stored: Result<Option<Vec<u8>>, RedisError> = scripts::CREATE
            .key(self.leases_key(stream))
            .arg(shard.as_str())
            .arg(new)
            .invoke_async(&mut conn)
            .await;
        match stored {
            Ok(Some(raw)) => self.decode(stream, shard, &raw),
            Ok(None) => Err(StoreError::Transient(format!(
                "create_if_absent on {}: the row vanished right after being written; retry",
                self.row_name(stream, shard)
            ))),
            // Whatever happened, the row now stored is the answer.
            Err(err) => {
                let row = self
                    .settle(LeaseWrite::CreateIfAbsent, stream, shard, err)
                    .await?;
                outcome::landed_row(row, &self.row_name(stream, shard))
            }
        }
    }

    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        let next = kinsumer_core::store::next_token(expected_token, u64::MAX)
            .map_err(|reason| self.corrupt(stream, shard, reason))?;
        let mut invocation = scripts::TAKE.prepare_invoke();
        invocation
            .key(self.leases_key(stream))
            .arg(shard.as_str())
            .arg(owner.as_str())
            .arg(expected_token.to_string())
            .arg(next.to_string());
        match self.run(stream, shard, &invocation).await {
            Ok(reply) => match self.answer(stream, shard, reply)? {
                Some(raw) => self.decode(stream, shard, &raw),
                None => Err(self.corrupt(
                    stream,
                    shard,
                    "the take script answered OK without the row".to_owned(),
                )),
            },
            Err(err) => {
                let write = LeaseWrite::Take {
                    owner,
                    expected_token,
                };
                let row = self.settle(write, stream, shard, err).await?;
                outcome::landed_row(row, &self.row_name(stream, shard))
            }
        }
    }

    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let write = LeaseWrite::Checkpoint { tenure, checkpoint };
        self.fenced(write, stream, tenure, Some(checkpoint), None)
            .await
    }

    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        let write = LeaseWrite::Release { tenure };
        self.fenced(write, stream, tenure, checkpoint, successor)
            .await
    }

    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        let write = LeaseWrite::Finish { tenure };
        self.fenced(write, stream, tenure, None, None).await
    }

    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        let mut invocation = scripts::DELETE_FINISHED.prepare_invoke();
        invocation.key(self.leases_key(stream)).arg(shard.as_str());
        match self.run(stream, shard, &invocation).await {
            Ok(reply) => self.answer(stream, shard, reply).map(drop),
            Err(err) => self
                .settle(LeaseWrite::DeleteFinished, stream, shard, err)
                .await
                .map(drop),
        }
    }

    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        let mut invocation = scripts::RESET.prepare_invoke();
        invocation
            .key(self.leases_key(stream))
            .arg(shard.as_str())
            .arg(expected_token.to_string())
            .arg(checkpoint.to_string());
        match self.run(stream, shard, &invocation).await {
            Ok(reply) => self.answer(stream, shard, reply).map(drop),
            Err(err) => {
                let write = LeaseWrite::ResetCheckpoint {
                    expected_token,
                    checkpoint,
                };
                self.settle(write, stream, shard, err).await.map(drop)
            }
        }
    }

    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        // Read the raw value, judge it with the decoder every read uses, and let the script
        // write only while the value is still exactly that.
        let shard = &lease.shard;
        let new = row::encode(lease);
        for _ in 0..REPAIR_ATTEMPTS {
            let Some(raw) = self.raw_lease(stream, shard).await? else {
                return Err(StoreError::NotFound {
                    shard: shard.clone(),
                });
            };
            if row::decode(shard, &raw).is_ok_and(|usable| !usable.token_exhausted()) {
                return Err(StoreError::LeaseLost {
                    shard: shard.clone(),
                });
            }
            let mut invocation = scripts::REPLACE_CORRUPT.prepare_invoke();
            invocation
                .key(self.leases_key(stream))
                .arg(shard.as_str())
                .arg(raw.as_slice())
                .arg(new.as_str());
            match self.run(stream, shard, &invocation).await {
                Ok(Reply::Changed) => continue,
                Ok(reply) => return self.answer(stream, shard, reply).map(drop),
                Err(err) => {
                    let write = LeaseWrite::ReplaceCorrupt { lease };
                    return self.settle(write, stream, shard, err).await.map(drop);
                }
            }
        }
        Err(StoreError::Transient(format!(
            "replace_corrupt on {}: the row changed between each read and write \
             ({REPAIR_ATTEMPTS} times); retry",
            self.row_name(stream, shard)
        )))
    }
}

/// The application name is the keys' hash tag: it must be non-empty and brace-free.
fn check_application(application: &str) -> Result<(), StoreError> {
    if application.is_empty() || application.contains(['{', '}']) {
        return Err(StoreError::Fatal(format!(
            "invalid application name {application:?} for the Redis lease store: it must be \
             non-empty and contain no '{{' or '}}' (it is the keys' hash tag)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_that_break_the_hash_tag_are_refused() {
        for bad in ["", "a{b", "a}b"] {
            let err = check_application(bad);
            assert!(matches!(err, Err(StoreError::Fatal(_))), "{bad:?}: {err:?}");
        }
        assert!(check_application("billing-1.prod:eu").is_ok());
    }
}
