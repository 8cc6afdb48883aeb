//! Both conformance suites against the in-memory implementations — and proof that the suites
//! catch a broken store.

use async_trait::async_trait;
use kinsumer_core::faults::EngineFaults;
use kinsumer_core::position::Checkpoint;
use kinsumer_core::rng::Rng;
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, ClientRow, Lease, LeaseStore, Rows, StoreError, Tenure};
use kinsumer_testkit::conformance::{Vandal, hostile_text};
use kinsumer_testkit::{MemoryLeaseStore, MemoryStream, StoreFaults, conformance};

#[tokio::test(start_paused = true)]
async fn memory_lease_store_conforms() {
    conformance::lease_store(|| async { MemoryLeaseStore::new() }).await;
}

#[tokio::test(start_paused = true)]
async fn memory_stream_conforms() {
    let stream = MemoryStream::new("conformance", 2);
    conformance::shard_source(&stream, &stream).await;
    // The suite resharded it: one split and one merge.
    assert_eq!(stream.shards().len(), 5);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "lease_store conformance")]
async fn the_lease_store_suite_catches_a_store_that_ignores_fencing() {
    conformance::lease_store(|| async {
        let store = MemoryLeaseStore::new();
        store.set_faults(StoreFaults {
            ignore_fencing: true,
            ..StoreFaults::default()
        });
        store
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_memory_fleet_survives_a_crash_and_a_graceful_leave() {
    let stream = MemoryStream::new("fleet", 4);
    let report =
        conformance::consumer_fleet(stream.clone(), &stream, MemoryLeaseStore::new(), "fleet")
            .await;
    assert_eq!(report.records, 640);
    assert_eq!(report.deliveries, report.records + report.duplicates);
}

/// The fleet check on a memory stream and store, with one engine fault switched on.
async fn fleet_with_fault(fault: fn(&mut EngineFaults)) {
    let stream = MemoryStream::new("fleet", 4);
    conformance::consumer_fleet_with(
        stream.clone(),
        &stream,
        MemoryLeaseStore::new(),
        "fleet",
        |mut c| {
            fault(&mut c.faults);
            c
        },
    )
    .await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "consumer_fleet [every record delivered]")]
async fn the_fleet_check_catches_a_consumer_that_skips_records() {
    fleet_with_fault(|f| f.skip_first_record = true).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "consumer_fleet [duplicates only after the crash]")]
async fn the_fleet_check_catches_handoffs_that_release_a_stale_checkpoint() {
    fleet_with_fault(|f| f.release_stale_checkpoint = true).await;
}

/// Spoils rows of a memory store through its test hooks: garbage, as far as every read can tell.
struct MemoryVandal(MemoryLeaseStore);

#[async_trait]
impl Vandal for MemoryVandal {
    async fn spoil_lease(&self, stream: &str, shard: &ShardId, rng: &mut Rng) {
        self.0.corrupt_lease(stream, shard, &hostile_text(rng));
    }

    async fn spoil_client(&self, client: &str, rng: &mut Rng) {
        self.0
            .corrupt_client(&ClientId::from(client), &hostile_text(rng));
    }

    async fn spoil_changes(&self, _rng: &mut Rng) {
        self.0.corrupt_changes();
    }

    async fn corrupt_changes(&self) {
        self.0.corrupt_changes();
    }

    async fn corrupt_lease(&self, stream: &str, shard: &ShardId) {
        self.0
            .corrupt_lease(stream, shard, "garbage written by the repair check");
    }

    async fn exhaust_token(&self, stream: &str, shard: &ShardId) {
        let mut lease = self
            .0
            .peek_leases(stream)
            .into_iter()
            .find(|l| &l.shard == shard)
            .expect("the row exists");
        lease.token = kinsumer_core::store::TOKEN_LIMIT;
        self.0.put_lease(stream, lease);
    }
}

#[tokio::test(start_paused = true)]
async fn memory_lease_store_repairs_corrupt_rows() {
    let store = MemoryLeaseStore::new();
    conformance::repair_of_a_corrupt_row(&store, &MemoryVandal(store.clone())).await;
}

#[tokio::test(start_paused = true)]
async fn memory_lease_store_writes_a_corrupt_change_counter_afresh() {
    let store = MemoryLeaseStore::new();
    conformance::corrupt_change_counter(&store, &MemoryVandal(store.clone())).await;
}

/// A memory store with one slip of the contract, which the checks must notice.
struct Careless(MemoryLeaseStore, Slip);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slip {
    /// Its repair writes whatever row is there, healthy or not.
    Repair,
    /// Its `mark_dead` marks a client at whatever value its row holds.
    Mark,
}

#[async_trait]
impl LeaseStore for Careless {
    async fn heartbeat(&self, client: &ClientId, beat: u64) -> Result<(), StoreError> {
        self.0.heartbeat(client, beat).await
    }
    async fn clients(&self) -> Result<Rows<ClientRow>, StoreError> {
        self.0.clients().await
    }
    async fn deregister(&self, client: &ClientId) -> Result<(), StoreError> {
        self.0.deregister(client).await
    }
    async fn client(&self, client: &ClientId) -> Result<Option<ClientRow>, StoreError> {
        self.0.client(client).await
    }
    async fn mark_dead(&self, client: &ClientId, counter: u64) -> Result<bool, StoreError> {
        if self.1 != Slip::Mark {
            return self.0.mark_dead(client, counter).await;
        }
        // Marks the row at whatever value it holds now: a heartbeat that landed since the
        // watcher's read no longer saves the client.
        match self.0.client(client).await? {
            Some(row) => self.0.mark_dead(client, row.counter).await,
            None => Ok(false),
        }
    }
    async fn changes(&self) -> Result<u64, StoreError> {
        self.0.changes().await
    }
    async fn announce(&self) -> Result<u64, StoreError> {
        self.0.announce().await
    }
    async fn leases(&self, stream: &str) -> Result<Rows<Lease>, StoreError> {
        self.0.leases(stream).await
    }
    async fn lease(&self, stream: &str, shard: &ShardId) -> Result<Option<Lease>, StoreError> {
        self.0.lease(stream, shard).await
    }
    async fn create_if_absent(
        &self,
        stream: &str,
        shard: &ShardId,
        parents: &[ShardId],
    ) -> Result<Lease, StoreError> {
        self.0.create_if_absent(stream, shard, parents).await
    }
    async fn take(
        &self,
        stream: &str,
        shard: &ShardId,
        owner: &ClientId,
        expected_token: u64,
    ) -> Result<Lease, StoreError> {
        self.0.take(stream, shard, owner, expected_token).await
    }
    async fn checkpoint(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.0.checkpoint(stream, tenure, checkpoint).await
    }
    async fn release(
        &self,
        stream: &str,
        tenure: &Tenure,
        checkpoint: Option<&Checkpoint>,
        successor: Option<&ClientId>,
    ) -> Result<(), StoreError> {
        self.0.release(stream, tenure, checkpoint, successor).await
    }
    async fn finish(&self, stream: &str, tenure: &Tenure) -> Result<(), StoreError> {
        self.0.finish(stream, tenure).await
    }
    async fn delete_finished(&self, stream: &str, shard: &ShardId) -> Result<(), StoreError> {
        self.0.delete_finished(stream, shard).await
    }
    async fn reset_checkpoint(
        &self,
        stream: &str,
        shard: &ShardId,
        expected_token: u64,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.0
            .reset_checkpoint(stream, shard, expected_token, checkpoint)
            .await
    }
    async fn replace_corrupt(&self, stream: &str, lease: &Lease) -> Result<(), StoreError> {
        if self.1 != Slip::Repair {
            return self.0.replace_corrupt(stream, lease).await;
        }
        self.0.repair_lease(stream, &lease.shard);
        self.0.put_lease(stream, lease.clone());
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "lease_store conformance [repair_of_a_corrupt_row]")]
async fn the_repair_check_catches_a_store_that_overwrites_healthy_rows() {
    let store = MemoryLeaseStore::new();
    let careless = Careless(store.clone(), Slip::Repair);
    conformance::repair_of_a_corrupt_row(&careless, &MemoryVandal(store)).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "lease_store conformance [mark_dead_holds_only_at_the_current_value]")]
async fn the_contract_catches_a_store_that_marks_a_client_whose_heartbeat_landed() {
    conformance::lease_store(|| async { Careless(MemoryLeaseStore::new(), Slip::Mark) }).await;
}
