//! Request counters: what the store costs DynamoDB, counted by the store itself.

use std::sync::atomic::{AtomicU64, Ordering};

/// One kind of request the store sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Heartbeat,
    Clients,
    Deregister,
    Client,
    MarkDead,
    Changes,
    Announce,
    Leases,
    Lease,
    CreateIfAbsent,
    Take,
    Checkpoint,
    Release,
    Finish,
    DeleteFinished,
    ResetCheckpoint,
    ReplaceCorrupt,
    Reread,
    Admin,
}

const OPS: usize = 19;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: [AtomicU64; OPS],
    items_read: AtomicU64,
    read_units: AtomicU64,
}

impl Counters {
    pub(crate) fn count(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn items(&self, n: usize) {
        self.items_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn read_units(&self, units: u64) {
        self.read_units.fetch_add(units, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DynamoStats {
        let get = |op: Op| self.requests[op as usize].load(Ordering::Relaxed);
        DynamoStats {
            heartbeat: get(Op::Heartbeat),
            clients: get(Op::Clients),
            deregister: get(Op::Deregister),
            client: get(Op::Client),
            mark_dead: get(Op::MarkDead),
            changes: get(Op::Changes),
            announce: get(Op::Announce),
            leases: get(Op::Leases),
            lease: get(Op::Lease),
            create_if_absent: get(Op::CreateIfAbsent),
            take: get(Op::Take),
            checkpoint: get(Op::Checkpoint),
            release: get(Op::Release),
            finish: get(Op::Finish),
            delete_finished: get(Op::DeleteFinished),
            reset_checkpoint: get(Op::ResetCheckpoint),
            replace_corrupt: get(Op::ReplaceCorrupt),
            rereads: get(Op::Reread),
            admin: get(Op::Admin),
            items_read: self.items_read.load(Ordering::Relaxed),
            read_units: self.read_units.load(Ordering::Relaxed),
        }
    }
}

/// DynamoDB requests sent by a store (and its clones), per operation of the contract. Every
/// request sent counts, including the store's own retries after throttling, each page of a
/// `Query`, and the re-reads that settle ambiguous writes. See [`DynamoStats::since`] for rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DynamoStats {
    /// `UpdateItem`s of `heartbeat` (writes).
    pub heartbeat: u64,
    /// `Query` pages of `clients` (reads).
    pub clients: u64,
    /// `DeleteItem`s of `deregister` (writes).
    pub deregister: u64,
    /// `GetItem`s of `client` (reads).
    pub client: u64,
    /// `UpdateItem`s of `mark_dead` (writes).
    pub mark_dead: u64,
    /// `GetItem`s of `changes` (reads).
    pub changes: u64,
    /// `UpdateItem`s and repairing `PutItem`s of `announce` (writes).
    pub announce: u64,
    /// `Query` pages of `leases` (reads).
    pub leases: u64,
    /// `GetItem`s of `lease` (reads).
    pub lease: u64,
    /// `PutItem`s of `create_if_absent` (writes).
    pub create_if_absent: u64,
    /// `UpdateItem`s of `take` (writes).
    pub take: u64,
    /// `UpdateItem`s of `checkpoint` (writes).
    pub checkpoint: u64,
    /// `UpdateItem`s of `release` (writes).
    pub release: u64,
    /// `UpdateItem`s of `finish` (writes).
    pub finish: u64,
    /// `DeleteItem`s of `delete_finished` (writes).
    pub delete_finished: u64,
    /// `UpdateItem`s of `reset_checkpoint` (writes).
    pub reset_checkpoint: u64,
    /// `PutItem`s of `replace_corrupt` (writes; its first read counts under `lease`).
    pub replace_corrupt: u64,
    /// `GetItem`s that settled an ambiguous write (reads).
    pub rereads: u64,
    /// Table administration: `DescribeTable`, `CreateTable`, TTL set-up.
    pub admin: u64,
    /// Items returned by all reads (what read capacity is billed on, with their size).
    pub items_read: u64,
    /// Read units the reads cost: per `GetItem` or `Query` page (all strongly consistent), the
    /// items' size by DynamoDB's rules rounded up to 4 KB, at least 1 ([`crate::billing`]).
    pub read_units: u64,
}

impl DynamoStats {
    /// Read requests (`Query` pages and `GetItem`s).
    pub fn reads(&self) -> u64 {
        self.clients + self.client + self.changes + self.leases + self.lease + self.rereads
    }

    /// Write requests (`UpdateItem`, `PutItem`, `DeleteItem`).
    pub fn writes(&self) -> u64 {
        self.heartbeat
            + self.deregister
            + self.mark_dead
            + self.announce
            + self.create_if_absent
            + self.take
            + self.checkpoint
            + self.release
            + self.finish
            + self.delete_finished
            + self.reset_checkpoint
            + self.replace_corrupt
    }

    /// Every request of the contract's operations (table administration excluded).
    pub fn requests(&self) -> u64 {
        self.reads() + self.writes()
    }

    /// The requests sent since `earlier` (a snapshot of the same store).
    pub fn since(&self, earlier: &DynamoStats) -> DynamoStats {
        DynamoStats {
            heartbeat: self.heartbeat.saturating_sub(earlier.heartbeat),
            clients: self.clients.saturating_sub(earlier.clients),
            deregister: self.deregister.saturating_sub(earlier.deregister),
            client: self.client.saturating_sub(earlier.client),
            mark_dead: self.mark_dead.saturating_sub(earlier.mark_dead),
            changes: self.changes.saturating_sub(earlier.changes),
            announce: self.announce.saturating_sub(earlier.announce),
            leases: self.leases.saturating_sub(earlier.leases),
            lease: self.lease.saturating_sub(earlier.lease),
            create_if_absent: self
                .create_if_absent
                .saturating_sub(earlier.create_if_absent),
            take: self.take.saturating_sub(earlier.take),
            checkpoint: self.checkpoint.saturating_sub(earlier.checkpoint),
            release: self.release.saturating_sub(earlier.release),
            finish: self.finish.saturating_sub(earlier.finish),
            delete_finished: self.delete_finished.saturating_sub(earlier.delete_finished),
            reset_checkpoint: self
                .reset_checkpoint
                .saturating_sub(earlier.reset_checkpoint),
            replace_corrupt: self.replace_corrupt.saturating_sub(earlier.replace_corrupt),
            rereads: self.rereads.saturating_sub(earlier.rereads),
            admin: self.admin.saturating_sub(earlier.admin),
            items_read: self.items_read.saturating_sub(earlier.items_read),
            read_units: self.read_units.saturating_sub(earlier.read_units),
        }
    }

    /// The sum of two snapshots (e.g. the stores of a fleet).
    pub fn plus(&self, other: &DynamoStats) -> DynamoStats {
        DynamoStats {
            heartbeat: self.heartbeat + other.heartbeat,
            clients: self.clients + other.clients,
            deregister: self.deregister + other.deregister,
            client: self.client + other.client,
            mark_dead: self.mark_dead + other.mark_dead,
            changes: self.changes + other.changes,
            announce: self.announce + other.announce,
            leases: self.leases + other.leases,
            lease: self.lease + other.lease,
            create_if_absent: self.create_if_absent + other.create_if_absent,
            take: self.take + other.take,
            checkpoint: self.checkpoint + other.checkpoint,
            release: self.release + other.release,
            finish: self.finish + other.finish,
            delete_finished: self.delete_finished + other.delete_finished,
            reset_checkpoint: self.reset_checkpoint + other.reset_checkpoint,
            replace_corrupt: self.replace_corrupt + other.replace_corrupt,
            rereads: self.rereads + other.rereads,
            admin: self.admin + other.admin,
            items_read: self.items_read + other.items_read,
            read_units: self.read_units + other.read_units,
        }
    }
}
