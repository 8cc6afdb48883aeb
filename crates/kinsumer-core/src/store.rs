//! The `LeaseStore` seam: where ownership and progress live.
//!
//! A store is bound to one *application* (its namespace) and holds three kinds of rows:
//! - one [`ClientRow`] per live client, whose `counter` the client rewrites on every heartbeat
//!   with a value it never wrote before (and a watcher may mark judged dead at a value:
//!   [`LeaseStore::mark_dead`]);
//! - one [`Lease`] per (stream, shard), with an owner, a fencing `token`, a checkpoint and a
//!   `finished` mark;
//! - one change counter ([`LeaseStore::changes`]), which a client moves on
//!   ([`LeaseStore::announce`]) after it changed who holds what or who is in the fleet, so
//!   an idle fleet reads one small row per poll instead of every row.
//!
//! Every operation is atomic on one row. The fenced operations (`checkpoint`, `release`,
//! `finish`) succeed only while the row's owner and token still equal the caller's [`Tenure`],
//! and fail with [`StoreError::LeaseLost`] otherwise — never silently. A finished lease is
//! final: `checkpoint` and `release` on it fail with `LeaseLost` too. `take` succeeds only if
//! the stored token still equals the token the caller read. A store never judges time: it stores
//! heartbeat values, and the engine judges liveness on its own monotonic clock.
//!
//! The contract is written once, as `kinsumer_testkit::conformance::lease_store`, and every
//! backend's test suite runs it against a real server.
//!
//! A write whose reply is lost (a timeout, a dropped connection) has an unknown outcome. A
//! store does not guess and does not decide it on its own: it re-reads the row and lets
//! [`crate::outcome`] judge whether the write landed, so every store answers alike (checked
//! with real faults by `kinsumer_testkit::conformance::unknown_outcomes`). A store that
//! retries on its own spaces its retries with [`crate::backoff`].
//!
//! ```
//! use kinsumer_core::store::{ClientId, Lease, Tenure};
//! use kinsumer_core::source::ShardId;
//!
//! let lease = Lease::new(ShardId::from("shard-1"), vec![]);
//! assert_eq!(lease.token, 0);
//! assert!(lease.owner.is_none() && !lease.finished);
//!
//! // Holding a lease means holding a tenure: the owner and the token it was taken with.
//! let tenure = Tenure { shard: lease.shard.clone(), owner: ClientId::from("a"), token: 1 };
//! assert_eq!(tenure.to_string(), "shard-1@a#1");
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::position::Checkpoint;
use crate::source::ShardId;

/// A client's stable id (a process, or one `Consumer` value).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's membership row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRow {
    /// The client.
    pub id: ClientId,
    /// The value of the client's last heartbeat; liveness is "this changed recently, on my
    /// clock". A client never writes the same value twice, not even across restarts under the
    /// same id (see [`Beats`](crate::membership::Beats)), so an unchanged value proves that no
    /// heartbeat landed — a restarted client cannot count back up to the value an observer saw
    /// before it left.
    pub counter: u64,
    /// The heartbeat value at which a watcher judged the client dead
    /// ([`LeaseStore::mark_dead`]), if one did. The client is dead while its counter still
    /// equals it; its next heartbeat (a new value) makes it alive again.
    pub judged_dead: Option<u64>,
}

impl ClientRow {
    /// A row with `counter` that nobody judged dead.
    pub fn new(id: ClientId, counter: u64) -> Self {
        Self {
            id,
            counter,
            judged_dead: None,
        }
    }

    /// Whether a watcher judged the client dead at the value the row still holds.
    ///
    /// ```
    /// use kinsumer_core::store::{ClientId, ClientRow};
    ///
    /// let mut row = ClientRow::new(ClientId::from("a"), 7);
    /// assert!(!row.is_judged_dead());
    /// row.judged_dead = Some(7);
    /// assert!(row.is_judged_dead());
    /// row.counter = 8; // a heartbeat landed since: alive again
    /// assert!(!row.is_judged_dead());
    /// ```
    pub fn is_judged_dead(&self) -> bool {
        self.judged_dead == Some(self.counter)
    }
}

/// The first token no store takes from: PostgreSQL's `bigint` ends at 2⁶³ − 1 and a take
/// writes token + 1. Takes alone never get there (one a nanosecond would take 292 years): a
/// row that holds it was written so, by hand or by a bug, and only a repair frees it.
pub const TOKEN_LIMIT: u64 = i64::MAX as u64;

/// One shard's lease row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The shard.
    pub shard: ShardId,
    /// The shard's parents (from the listing at creation), so eligibility needs no listing.
    pub parents: Vec<ShardId>,
    /// The client holding it, if any.
    pub owner: Option<ClientId>,
    /// The fencing token: +1 on every `take`.
    pub token: u64,
    /// Where the next reader starts; `None` until the first commit.
    pub checkpoint: Option<Checkpoint>,
    /// Set by `finish` once the shard was read to its end and everything was processed.
    pub finished: bool,
    /// The client a graceful `release` handed the lease to, if it named one; cleared by
    /// `take`. The named client takes the lease at once, whatever its own plan says: a
    /// handoff must not wait for the views of the fleet to agree (a client that just started
    /// still counts a client that crashed just before as alive, and plans leases for it). A
    /// hint, not a right: any client may take a free lease, as before.
    pub successor: Option<ClientId>,
}

impl Lease {
    /// The row `create_if_absent` writes: unowned, token 0, no checkpoint.
    pub fn new(shard: ShardId, parents: Vec<ShardId>) -> Self {
        Self {
            shard,
            parents,
            owner: None,
            token: 0,
            checkpoint: None,
            finished: false,
            successor: None,
        }
    }

    /// Whether the token is at or past [`TOKEN_LIMIT`]: no take can move the lease again on
    /// every store, so it can only be repaired (`replace_corrupt`), like a row that does not
    /// decode.
    pub fn token_exhausted(&self) -> bool {
        self.token >= TOKEN_LIMIT
    }

    /// The tenure this row grants, if it has an owner.
    pub fn tenure(&self) -> Option<Tenure> {
        self.owner.as_ref().map(|owner| Tenure {
            shard: self.shard.clone(),
            owner: owner.clone(),
            token: self.token,
        })
    }
}

/// The right to write a lease: held from a successful `take` until the lease is released,
/// finished or lost.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenure {
    /// The shard.
    pub shard: ShardId,
    /// Who holds it.
    pub owner: ClientId,
    /// The token `take` set.
    pub token: u64,
}

impl fmt::Display for Tenure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.shard, self.owner, self.token)
    }
}

/// A `u64` in its one canonical decimal form (`0`, or digits without a leading zero; no sign):
/// how stores that keep numbers as text must read tokens and heartbeat values, so that text
/// compared by the server (a Lua script compares strings) and the value the engine read agree.
/// `"01"`, `"+1"`, `" 1"`, `"1.0"` and anything past `u64::MAX` are `None`.
///
/// ```
/// use kinsumer_core::store::canonical_u64;
/// assert_eq!(canonical_u64("18446744073709551615"), Some(u64::MAX));
/// for odd in ["01", "+1", "-1", " 1", "1.0", "1e3", "", "18446744073709551616"] {
///     assert_eq!(canonical_u64(odd), None, "{odd:?}");
/// }
/// ```
pub fn canonical_u64(text: &str) -> Option<u64> {
    let canonical = text == "0"
        || (text.starts_with(|c: char| matches!(c, '1'..='9'))
            && text.bytes().all(|b| b.is_ascii_digit()));
    if canonical { text.parse().ok() } else { None }
}

/// The fencing token a `take` expecting `expected_token` writes, or why it cannot: at `max`,
/// the largest token the store holds, the token cannot grow, and the row is corrupt (an
/// operator replaces it) — never wrapped around to a token an old owner once held.
///
/// ```
/// use kinsumer_core::store::next_token;
/// assert_eq!(next_token(7, u64::MAX), Ok(8));
/// assert!(next_token(u64::MAX, u64::MAX).is_err());
/// assert!(next_token(i64::MAX as u64, i64::MAX as u64).is_err()); // a bigint column
/// ```
pub fn next_token(expected_token: u64, max: u64) -> Result<u64, String> {
    if expected_token >= max {
        return Err(format!(
            "the fencing token is at {expected_token}, the largest this store holds: it cannot \
             grow (replace the row)"
        ));
    }
    Ok(expected_token + 1)
}

/// A row that a read of every row could not decode: named, with what is wrong with it. The
/// engine sets it aside — never guesses at its owner, token or checkpoint — and goes on with
/// every other row; an operator sees it in `kinsumer status` and repairs it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CorruptRow {
    /// The store's key of the row, as an operator looks it up (a Redis hash and field, a
    /// table and primary key, a DynamoDB item's keys).
    pub key: String,
    /// The shard (of a lease row) or client (of a client row) the row is of, if that much could
    /// be read.
    pub id: Option<String>,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for CorruptRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl From<CorruptRow> for StoreError {
    fn from(row: CorruptRow) -> Self {
        StoreError::Corrupt {
            key: row.key,
            reason: row.reason,
        }
    }
}

/// A read of every row of one kind: those that decode, in order, and those that do not. One
/// bad row never fails the read of the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rows<T> {
    /// The rows that decode, sorted by shard or client id.
    pub rows: Vec<T>,
    /// The rows that do not, sorted by key.
    pub corrupt: Vec<CorruptRow>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Self::all(Vec::new())
    }
}

impl<T> Rows<T> {
    /// A read in which every row decoded.
    pub fn all(rows: Vec<T>) -> Self {
        Self {
            rows,
            corrupt: Vec::new(),
        }
    }

    /// Sorts `corrupt` by key (stores collect them in their own order).
    pub fn new(rows: Vec<T>, mut corrupt: Vec<CorruptRow>) -> Self {
        corrupt.sort();
        Self { rows, corrupt }
    }
}

/// An error from a lease store, classified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The lease's owner or token is no longer the caller's (or `take` lost the race).
    #[error("lease on shard {shard} is lost: another owner or token holds it")]
    LeaseLost {
        /// The shard.
        shard: ShardId,
    },
    /// The lease row does not exist.
    #[error("no lease for shard {shard}")]
    NotFound {
        /// The shard.
        shard: ShardId,
    },
    /// The store refused for rate; back off and retry.
    #[error("lease store throttled: {0}")]
    Throttled(String),
    /// A passing failure, or an outcome that is unknown (a timeout after sending); retry, and
    /// re-read to learn what happened.
    #[error("transient lease store error: {0}")]
    Transient(String),
    /// A row that does not parse.
    #[error("corrupt row at {key}: {reason}")]
    Corrupt {
        /// The store's key of the row.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing will fix this by retrying (missing table, access denied, bad configuration).
    #[error("fatal lease store error: {0}")]
    Fatal(String),
}

impl StoreError {
    /// The variant, as a short name for logs and metrics: `lease_lost`, `not_found`,
    /// `throttled`, `transient`, `corrupt` or `fatal`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::LeaseLost { .. } => "lease_lost",
            StoreError::NotFound { .. } => "not_found",
            StoreError::Throttled(_) => "throttled",
            StoreError::Transient(_) => "transient",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Fatal(_) => "fatal",
        }
    }

    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Throttled(_) | StoreError::Transient(_))
    }
}

/// Where ownership and progress live, for one application. See the module docs for the
/// contract; every method is one atomic operation on one row.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// The application whose rows this store holds, when it is bound to one (every server
    /// store is: it is given the name when opened). [`Consumer::new`](crate::Consumer::new)
    /// refuses a store bound to another application than its `Config`'s, so the name is
    /// checked where it is given twice. `None` (the default): not bound to one.
    fn application(&self) -> Option<&str> {
        None
    }

    /// Writes `beat` as `client`'s heartbeat value, creating its row. Unconditional: the
    /// client chooses values it never used before, so writing one again (a retry) is harmless.
    /// `beat` is in `1..=i64::MAX`, so a store of signed 64-bit integers keeps it as it is, and
    /// processes of an earlier version (which bumped the same value by one) can share the
    /// store during a rolling upgrade.
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError>;

    /// Every client row; a row that does not decode is in [`Rows::corrupt`], not an error.
    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError>;

    /// Removes `client`'s row (a graceful leave). Removing a missing row is not an error.
    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError>;

    /// One client row, if it exists (`Corrupt` if it does not decode): what a watcher reads
    /// of the few clients it watches, instead of every row.
    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError>;

    /// Records that `client` was judged dead at heartbeat value `counter`
    /// ([`ClientRow::judged_dead`]), if its row still holds `counter`: `Ok(true)` if the row
    /// now says so, `Ok(false)` if a heartbeat moved the row on or there is no row. Atomic: a
    /// heartbeat that lands first wins, so a client whose heartbeats land is never marked.
    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError>;

    /// The application's change counter: 0 until the first [`LeaseStore::announce`]. A client
    /// that reads the same value as before knows no client announced a change since, and
    /// reads nothing else.
    async fn changes(&self) -> Result<u64, StoreError>;

    /// Moves the change counter on and returns its new value: concurrent announces each move
    /// it, so it never shows a value twice. A stored counter that does not decode (or cannot
    /// grow) is written afresh as 1, so one bad value cannot silence the fleet.
    async fn announce(&self) -> Result<u64, StoreError>;

    /// Every lease row of `stream`; a row that does not decode is in [`Rows::corrupt`], not an
    /// error.
    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError>;

    /// One lease row, if it exists (`Corrupt` if it does not decode).
    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError>;

    /// Creates the row [`Lease::new`] describes unless one exists; returns the row now stored.
    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError>;

    /// Sets `owner` and `token = expected_token + 1` and clears `successor`, if the stored
    /// token equals `expected_token` and the lease is not finished; returns the new row.
    /// Otherwise `LeaseLost` (or `NotFound`).
    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError>;

    /// Stores `checkpoint` while `tenure` still holds the lease and it is not finished.
    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError>;

    /// Clears the owner (keeping the token), stores `checkpoint` if given and sets
    /// `successor` to the client the lease is handed to (or clears it), while `tenure` still
    /// holds the lease and it is not finished.
    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError>;

    /// Marks the lease finished with checkpoint `ShardEnd`, keeping owner and token (so a
    /// repeated `finish` by the same tenure succeeds), while `tenure` still holds the lease.
    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError>;

    /// Deletes the row if it is finished (a shard that left the stream). Deleting a missing row
    /// is not an error; deleting an unfinished one is `LeaseLost`.
    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError>;

    /// Overwrites the checkpoint of an **unowned** lease (an operator's reset); `LeaseLost` if
    /// a client owns it, so a reset never races a live reader.
    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError>;

    /// Writes `lease` as the row of `lease.shard` — an operator's repair — **only while the
    /// stored row exists and the engine cannot use it**: it does not decode, or its token is
    /// [exhausted](Lease::token_exhausted) (no take can move it again). Atomic as the server
    /// allows: the store checks, in the same step as the write, that the row is still the
    /// unusable one it read (or still unusable), so a repair never overwrites a healthy row,
    /// whether another operator repaired it meanwhile or it was deleted and created again.
    /// `LeaseLost` if the row is usable, `NotFound` if there is none.
    ///
    /// The caller chooses every field: the row's own token cannot be read (or cannot grow), so
    /// it chooses one of its own (see `kinsumer reset`), and the parents from the stream's
    /// listing (a child written without its parents would be read before them).
    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError>;
}

#[async_trait]
impl<T: LeaseStore + ?Sized> LeaseStore for Arc<T> {
    fn application(&self) -> Option<&str> {
        (**self).application()
    }
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        (**self).heartbeat(client, beat).await
    }
    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        (**self).clients().await
    }
    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        (**self).deregister(client).await
    }
    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        (**self).client(client).await
    }
    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        (**self).mark_dead(client, counter).await
    }
    async fn changes(&self) -> Result<u64, StoreError> {
        (**self).changes().await
    }
    async fn announce(&self) -> Result<u64, StoreError> {
        (**self).announce().await
    }
    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        (**self).leases(stream).await
    }
    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        (**self).lease(stream, shard).await
    }
    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        (**self).create_if_absent(stream, shard, parents).await
    }
    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        (**self).take(stream, shard, owner, expected_token).await
    }
    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        (**self).checkpoint(stream, tenure, checkpoint).await
    }
    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        (**self)
            .release(stream, tenure, checkpoint, successor)
            .await
    }
    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        (**self).finish(stream, tenure).await
    }
    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        (**self).delete_finished(stream, shard).await
    }
    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        (**self)
            .reset_checkpoint(stream, shard, expected_token, checkpoint)
            .await
    }
    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        (**self).replace_corrupt(stream, lease).await
    }
}
