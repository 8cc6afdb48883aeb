//! A live view of one consumer for the application: the leases it holds, how they are doing,
//! the stalls it found, whether it left the fleet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::position::Position;
use crate::record::AckTracker;
use crate::source::ShardId;
use crate::stall::{Stall, StallLog};
use crate::store::Tenure;

/// What one held shard looks like, for [`StatusHandle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub shard: ShardId,
    /// The fencing token of this tenure.
    pub token: u64,
    /// Records fetched in this tenure.
    pub fetched: u64,
    /// The last `millis_behind_latest` the source reported.
    pub millis_behind_latest: Option<u64>,
    /// The watermark (the last record up to which all are acked).
    pub watermark: Option<Position>,
    /// A handoff is draining this shard.
    pub releasing: bool,
}

/// A live view of one consumer: the leases it holds and how they are doing.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle {
    pub(crate) board: Arc<Mutex<BTreeMap<ShardId, ShardStatus>>>,
    pub(crate) trackers: Arc<Mutex<BTreeMap<ShardId, Arc<AckTracker>>>>,
    pub(crate) stalls: Arc<StallLog>,
    /// Out of the fleet because its application stalled (see `Supervisor::leave_until`).
    pub(crate) left_fleet: Arc<std::sync::atomic::AtomicBool>,
}

impl StatusHandle {
    /// The last stalls this consumer found (up to 32, oldest first): what stalled, on which
    /// shard, the record that held it and for how long. See [`crate::stall`].
    pub fn stalls(&self) -> Vec<Stall> {
        self.stalls.all()
    }

    /// Whether the consumer released everything and left the fleet because its application
    /// stalled: its record stream was not polled (it rejoins on the next poll), or its handler
    /// hung twice within 2 × `stall_timeout` (it rejoins after `stall_timeout`).
    pub fn has_left_fleet(&self) -> bool {
        self.left_fleet.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The shards this consumer holds now, with their progress.
    pub fn shards(&self) -> Vec<ShardStatus> {
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        let trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        board
            .values()
            .map(|s| {
                let mut s = s.clone();
                s.watermark = trackers.get(&s.shard).and_then(|t| t.watermark());
                s
            })
            .collect()
    }

    pub(crate) fn update(&self, shard: &ShardId, f: impl FnOnce(&mut ShardStatus)) {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = board.get_mut(shard) {
            f(s);
        }
    }

    pub(crate) fn insert(&self, tenure: &Tenure, tracker: Arc<AckTracker>) {
        let status = ShardStatus {
            shard: tenure.shard.clone(),
            token: tenure.token,
            fetched: 0,
            millis_behind_latest: None,
            watermark: None,
            releasing: false,
        };
        self.board
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenure.shard.clone(), status);
        self.trackers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenure.shard.clone(), tracker);
    }

    pub(crate) fn remove(&self, shard: &ShardId) {
        self.board
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(shard);
        self.trackers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(shard);
    }
}
