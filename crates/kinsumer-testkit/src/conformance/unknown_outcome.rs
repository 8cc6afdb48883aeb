//! The contract for writes whose outcome is unknown — "did my write land?" — checked with real
//! faults against a backend's real server.
//!
//! A [`FaultProxy`] sits between the store under test (`faulty`, whose client connects to
//! [`FaultProxy::addr`]) and its server; a second store of the same application (`direct`)
//! reaches the server without it, to set rows up and to read what really happened. For each
//! conditional write of [`LeaseStore`]:
//!
//! - **the reply is lost**: the request reaches the server and is applied, and the proxy holds
//!   the reply back ([`ProxyMode::BlackHoleToClient`]) until the row shows the write, then cuts
//!   every connection ([`FaultProxy::cut`]) so the reply never arrives. The store cannot tell
//!   from its client whether the write landed; it must re-read the row and report success
//!   (a take returns the lease, never `LeaseLost`);
//! - **the request is lost**, and (for a take) someone else takes the lease meanwhile: the
//!   proxy holds the request ([`ProxyMode::BlackHoleToUpstream`]) and cuts. A take must then
//!   report `LeaseLost`; a checkpoint must report either `Ok` with the row showing it (a store
//!   that sends a write again once a re-read proved it did not land) or a retryable error with
//!   the row not showing it — never `Ok` for a write that is not there.
//!
//! After each call the row is read directly and compared with what the write leaves.
//!
//! Replies the store waits for *before* its write (a connection check, a statement prepared on
//! a new connection, the read of `replace_corrupt`) are let through one at a time while the row
//! does not show the write yet: the client waits for each before it sends more, so what is held
//! while the row is unchanged is never the write's reply. In the rare run where the write's
//! reply slips through in that instant, the fault did not fire and the check tries again on a
//! fresh row; it fails if that happens [`ATTEMPTS`] times in a row.
//!
//! ```no_run
//! # async fn run(
//! #     faulty: impl kinsumer_core::LeaseStore,
//! #     direct: impl kinsumer_core::LeaseStore,
//! #     proxy: kinsumer_testkit::FaultProxy,
//! # ) {
//! // `faulty` connects through `proxy`, `direct` to the server itself; both serve one
//! // application.
//! kinsumer_testkit::conformance::unknown_outcomes(&faulty, &direct, &proxy).await;
//! # }
//! ```
//!
//! The store's client must notice a cut connection (every client does: the socket closes).
//! Nothing here depends on the store's response timeout, so the checks take no longer than
//! the round trips they make.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use kinsumer_core::position::{Checkpoint, Position, SequenceNumber};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::{ClientId, Lease, LeaseStore, StoreError};

use crate::conformance::Vandal;
use crate::conformance::store::support::{must, owned};
use crate::proxy::{FaultProxy, ProxyMode};

/// How many fresh rows a check tries before it gives up on the fault firing.
pub const ATTEMPTS: u32 = 5;

/// How often the row and the proxy are looked at while a write is under way.
const POLL: Duration = Duration::from_millis(5);

/// How many polls a write may take to land (or a request to reach the proxy): 60 s, far beyond
/// any round trip, so only a write that never arrives fails the check.
const MAX_POLLS: u32 = 12_000;

const STREAM: &str = "conformance-unknown-outcome";

/// Runs every check below with `faulty` (its client connected through `proxy`) and `direct`
/// (the same application, straight to the server). `replace_corrupt` needs a corrupt row, made
/// by the backend's [`Vandal`]: see [`replace_corrupt_whose_reply_was_lost_is_ok`].
///
/// # Panics
///
/// On the first violation, naming the check.
pub async fn unknown_outcomes<F: LeaseStore, D: LeaseStore>(
    faulty: &F,
    direct: &D,
    proxy: &FaultProxy,
) {
    create_if_absent_whose_reply_was_lost_returns_the_row(faulty, direct, proxy).await;
    take_whose_reply_was_lost_returns_the_lease(faulty, direct, proxy).await;
    take_lost_to_another_owner_meanwhile_is_lease_lost(faulty, direct, proxy).await;
    checkpoint_whose_reply_was_lost_is_ok(faulty, direct, proxy).await;
    checkpoint_whose_request_was_lost_is_never_ok_without_the_row(faulty, direct, proxy).await;
    release_whose_reply_was_lost_is_ok(faulty, direct, proxy).await;
    finish_whose_reply_was_lost_is_ok(faulty, direct, proxy).await;
    delete_finished_whose_reply_was_lost_is_ok(faulty, direct, proxy).await;
    reset_checkpoint_whose_reply_was_lost_is_ok(faulty, direct, proxy).await;
}

/// A fresh shard id for every row any check uses, so checks and their attempts never meet.
fn fresh_shard() -> ShardId {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    ShardId::from(format!(
        "shardId-unknown-{:06}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn after(sequence: u128) -> Checkpoint {
    Checkpoint::After(Position::new(SequenceNumber::from_u128(sequence), 0))
}

/// The row as the server holds it now, read without the proxy.
async fn read<D: LeaseStore>(check: &str, direct: &D, shard: &ShardId) -> Option<Lease> {
    must(check, "lease (direct)", direct.lease(STREAM, shard).await)
}

/// Runs `write` so that it reaches the server but its reply is lost (see the module docs), and
/// returns its result — or `None` if the fault did not fire (the write's reply slipped
/// through): try again on a fresh row.
async fn with_reply_lost<T, W, L, LFut>(
    check: &str,
    proxy: &FaultProxy,
    write: W,
    landed: L,
) -> Option<T>
where
    W: Future<Output = T>,
    L: Fn() -> LFut,
    LFut: Future<Output = bool>,
{
    let done = AtomicBool::new(false);
    proxy.set_mode(ProxyMode::BlackHoleToClient);
    let write = async {
        let result = write.await;
        done.store(true, Ordering::SeqCst);
        result
    };
    let watch = async {
        for _ in 0..MAX_POLLS {
            if done.load(Ordering::SeqCst) {
                proxy.set_mode(ProxyMode::Pass);
                return false;
            }
            // Held *before* the row is read: if the row does not show the write yet, these
            // bytes answer something the client sent before its write.
            let held = proxy.stats().held_to_client;
            if landed().await {
                // Discard the held reply with the connections, then let the re-read through.
                proxy.cut();
                proxy.set_mode(ProxyMode::Pass);
                return true;
            }
            if held > 0 {
                let_held_replies_through(proxy).await;
            }
            tokio::time::sleep(POLL).await;
        }
        proxy.set_mode(ProxyMode::Pass);
        panic!("unknown_outcome conformance [{check}]: the write never reached the server");
    };
    let (result, fired) = tokio::join!(write, watch);
    fired.then_some(result)
}

/// Delivers what the proxy holds for clients, then holds replies again.
async fn let_held_replies_through(proxy: &FaultProxy) {
    proxy.set_mode(ProxyMode::Pass);
    for _ in 0..MAX_POLLS {
        if proxy.stats().held_to_client == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    proxy.set_mode(ProxyMode::BlackHoleToClient);
}

/// Runs `write` with its request held at the proxy; once the proxy holds a request, runs
/// `meanwhile` (another client's write, straight to the server) and cuts every connection, so
/// the held request never arrives.
async fn with_request_lost<T, W, M>(check: &str, proxy: &FaultProxy, write: W, meanwhile: M) -> T
where
    W: Future<Output = T>,
    M: Future<Output = ()>,
{
    proxy.set_mode(ProxyMode::BlackHoleToUpstream);
    let cut = async {
        for _ in 0..MAX_POLLS {
            if proxy.stats().held_to_upstream > 0 {
                meanwhile.await;
                proxy.cut();
                proxy.set_mode(ProxyMode::Pass);
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        proxy.set_mode(ProxyMode::Pass);
        panic!("unknown_outcome conformance [{check}]: the write never reached the proxy");
    };
    let (result, ()) = tokio::join!(write, cut);
    result
}

/// Runs `attempt` on fresh rows until the fault fires in one (`Some`), at most [`ATTEMPTS`]
/// times.
async fn until_the_fault_fires(check: &str, mut attempt: impl AsyncFnMut() -> Option<()>) {
    for _ in 0..ATTEMPTS {
        if attempt().await.is_some() {
            return;
        }
    }
    fault_never_fired(check)
}

fn fault_never_fired(check: &str) -> ! {
    panic!(
        "unknown_outcome conformance [{check}]: the write's reply was never lost in {ATTEMPTS} \
         attempts (it slipped through each time); is the store's client connected through the \
         proxy?"
    )
}

/// `create_if_absent` whose reply is lost returns the row now stored.
pub async fn create_if_absent_whose_reply_was_lost_returns_the_row(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "create_if_absent_whose_reply_was_lost_returns_the_row";
    until_the_fault_fires(CHECK, async || {
        let (shard, parent) = (fresh_shard(), fresh_shard());
        let parents = [parent];
        let outcome = with_reply_lost(
            CHECK,
            proxy,
            faulty.create_if_absent(STREAM, &shard, &parents),
            || async { read(CHECK, direct, &shard).await.is_some() },
        )
        .await;
        let created = outcome?;
        let expected = Lease::new(shard.clone(), parents.to_vec());
        assert_eq!(
            created.as_ref(),
            Ok(&expected),
            "unknown_outcome conformance [{CHECK}]: the store must return the row it created"
        );
        assert_eq!(read(CHECK, direct, &shard).await, Some(expected));
        Some(())
    })
    .await
}

/// A take whose reply is lost returns the lease (ours, at the next token) — never
/// `LeaseLost` — and the row shows it.
pub async fn take_whose_reply_was_lost_returns_the_lease(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "take_whose_reply_was_lost_returns_the_lease";
    let me = ClientId::from("unknown-outcome-me");
    until_the_fault_fires(CHECK, async || {
        let shard = fresh_shard();
        // Held and released by a client that left: token 1, unowned.
        let before = owned(CHECK, direct, STREAM, &shard, "gone").await;
        must(
            CHECK,
            "release (direct)",
            direct.release(STREAM, &before, None, None).await,
        );
        let outcome = with_reply_lost(
            CHECK,
            proxy,
            faulty.take(STREAM, &shard, &me, 1),
            || async {
                read(CHECK, direct, &shard)
                    .await
                    .is_some_and(|row| row.owner.as_ref() == Some(&me))
            },
        )
        .await;
        let taken = outcome?;
        let taken = must(CHECK, "take whose reply was lost", taken);
        assert_eq!(
            (taken.owner.as_ref(), taken.token, taken.finished),
            (Some(&me), 2, false),
            "unknown_outcome conformance [{CHECK}]: the take landed, so it is ours"
        );
        assert_eq!(read(CHECK, direct, &shard).await, Some(taken));
        Some(())
    })
    .await
}

/// A take whose request is lost while another client takes the lease is `LeaseLost`, and the
/// row is the other client's.
pub async fn take_lost_to_another_owner_meanwhile_is_lease_lost(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "take_lost_to_another_owner_meanwhile_is_lease_lost";
    let (me, rival) = (
        ClientId::from("unknown-outcome-me"),
        ClientId::from("rival"),
    );
    let shard = fresh_shard();
    must(
        CHECK,
        "create_if_absent (direct)",
        direct.create_if_absent(STREAM, &shard, &[]).await,
    );
    let rival_takes = async {
        must(
            CHECK,
            "take (rival, direct)",
            direct.take(STREAM, &shard, &rival, 0).await,
        );
    };
    let result = with_request_lost(
        CHECK,
        proxy,
        faulty.take(STREAM, &shard, &me, 0),
        rival_takes,
    )
    .await;
    assert!(
        matches!(result, Err(StoreError::LeaseLost { .. })),
        "unknown_outcome conformance [{CHECK}]: the rival holds the lease, so our take is \
         LeaseLost, got {result:?}"
    );
    let row = read(CHECK, direct, &shard).await;
    assert_eq!(
        row.as_ref().map(|r| (r.owner.as_ref(), r.token)),
        Some((Some(&rival), 1)),
        "unknown_outcome conformance [{CHECK}]: the row is the rival's"
    );
}

/// A checkpoint whose reply is lost is `Ok`, and the row holds it.
pub async fn checkpoint_whose_reply_was_lost_is_ok(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "checkpoint_whose_reply_was_lost_is_ok";
    let checkpoint = after(49_590_338_271_490_256_608_559_692_538_361_571_095);
    until_the_fault_fires(CHECK, async || {
        let shard = fresh_shard();
        let tenure = owned(CHECK, direct, STREAM, &shard, "unknown-outcome-me").await;
        let outcome = with_reply_lost(
            CHECK,
            proxy,
            faulty.checkpoint(STREAM, &tenure, &checkpoint),
            || async {
                read(CHECK, direct, &shard)
                    .await
                    .is_some_and(|row| row.checkpoint.as_ref() == Some(&checkpoint))
            },
        )
        .await;
        let result = outcome?;
        must(CHECK, "checkpoint whose reply was lost", result);
        let row = read(CHECK, direct, &shard).await;
        assert_eq!(
            row.map(|r| (r.owner, r.token, r.checkpoint, r.finished)),
            Some((
                Some(tenure.owner.clone()),
                tenure.token,
                Some(checkpoint.clone()),
                false
            )),
            "unknown_outcome conformance [{CHECK}]: the row holds the checkpoint, still ours"
        );
        Some(())
    })
    .await
}

/// A checkpoint whose request never arrived is reported `Ok` only if the row holds it (a store
/// may send it again once a re-read proved it did not land); otherwise the error is
/// retryable, and the row holds the checkpoint before.
pub async fn checkpoint_whose_request_was_lost_is_never_ok_without_the_row(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "checkpoint_whose_request_was_lost_is_never_ok_without_the_row";
    let shard = fresh_shard();
    let tenure = owned(CHECK, direct, STREAM, &shard, "unknown-outcome-me").await;
    let (first, second) = (after(10), after(20));
    must(
        CHECK,
        "checkpoint (direct)",
        direct.checkpoint(STREAM, &tenure, &first).await,
    );
    let result = with_request_lost(
        CHECK,
        proxy,
        faulty.checkpoint(STREAM, &tenure, &second),
        async {},
    )
    .await;
    let stored = read(CHECK, direct, &shard).await.and_then(|r| r.checkpoint);
    match result {
        Ok(()) => assert_eq!(
            stored,
            Some(second),
            "unknown_outcome conformance [{CHECK}]: Ok, so the row must hold the checkpoint"
        ),
        Err(err) => {
            assert!(
                err.is_retryable(),
                "unknown_outcome conformance [{CHECK}]: a write that did not land is retryable, \
                 got {err:?}"
            );
            assert_eq!(
                stored,
                Some(first),
                "unknown_outcome conformance [{CHECK}]: not reported done, and not done"
            );
        }
    }
}

/// A release whose reply is lost is `Ok`, and the row is unowned at the same token, with the
/// checkpoint and successor the release wrote.
pub async fn release_whose_reply_was_lost_is_ok(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "release_whose_reply_was_lost_is_ok";
    let (checkpoint, heir) = (after(77), ClientId::from("heir"));
    until_the_fault_fires(CHECK, async || {
        let shard = fresh_shard();
        let tenure = owned(CHECK, direct, STREAM, &shard, "unknown-outcome-me").await;
        let outcome = with_reply_lost(
            CHECK,
            proxy,
            faulty.release(STREAM, &tenure, Some(&checkpoint), Some(&heir)),
            || async {
                read(CHECK, direct, &shard)
                    .await
                    .is_some_and(|row| row.owner.is_none())
            },
        )
        .await;
        let result = outcome?;
        must(CHECK, "release whose reply was lost", result);
        let row = read(CHECK, direct, &shard).await;
        assert_eq!(
            row.map(|r| (r.owner, r.token, r.checkpoint, r.successor)),
            Some((
                None,
                tenure.token,
                Some(checkpoint.clone()),
                Some(heir.clone())
            )),
            "unknown_outcome conformance [{CHECK}]: the row is released as written"
        );
        Some(())
    })
    .await
}

/// A finish whose reply is lost is `Ok`, and the row is finished at `ShardEnd`, still ours.
pub async fn finish_whose_reply_was_lost_is_ok(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "finish_whose_reply_was_lost_is_ok";
    until_the_fault_fires(CHECK, async || {
        let shard = fresh_shard();
        let tenure = owned(CHECK, direct, STREAM, &shard, "unknown-outcome-me").await;
        let outcome = with_reply_lost(CHECK, proxy, faulty.finish(STREAM, &tenure), || async {
            read(CHECK, direct, &shard)
                .await
                .is_some_and(|row| row.finished)
        })
        .await;
        let result = outcome?;
        must(CHECK, "finish whose reply was lost", result);
        let row = read(CHECK, direct, &shard).await;
        assert_eq!(
            row.map(|r| (r.owner, r.token, r.checkpoint, r.finished)),
            Some((
                Some(tenure.owner.clone()),
                tenure.token,
                Some(Checkpoint::ShardEnd),
                true
            )),
            "unknown_outcome conformance [{CHECK}]: the row is finished, still ours"
        );
        Some(())
    })
    .await
}

/// A `delete_finished` whose reply is lost is `Ok`, and the row is gone.
pub async fn delete_finished_whose_reply_was_lost_is_ok(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "delete_finished_whose_reply_was_lost_is_ok";
    until_the_fault_fires(CHECK, async || {
        let shard = fresh_shard();
        let tenure = owned(CHECK, direct, STREAM, &shard, "unknown-outcome-me").await;
        must(
            CHECK,
            "finish (direct)",
            direct.finish(STREAM, &tenure).await,
        );
        let outcome = with_reply_lost(
            CHECK,
            proxy,
            faulty.delete_finished(STREAM, &shard),
            || async { read(CHECK, direct, &shard).await.is_none() },
        )
        .await;
        let result = outcome?;
        must(CHECK, "delete_finished whose reply was lost", result);
        assert_eq!(read(CHECK, direct, &shard).await, None);
        Some(())
    })
    .await
}

/// A `reset_checkpoint` whose reply is lost is `Ok`, and the unowned row holds the new
/// checkpoint at the same token.
pub async fn reset_checkpoint_whose_reply_was_lost_is_ok(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
) {
    const CHECK: &str = "reset_checkpoint_whose_reply_was_lost_is_ok";
    until_the_fault_fires(CHECK, async || {
        let shard = fresh_shard();
        let tenure = owned(CHECK, direct, STREAM, &shard, "gone").await;
        must(
            CHECK,
            "release (direct)",
            direct
                .release(STREAM, &tenure, Some(&after(500)), None)
                .await,
        );
        let outcome = with_reply_lost(
            CHECK,
            proxy,
            faulty.reset_checkpoint(STREAM, &shard, tenure.token, &Checkpoint::TrimHorizon),
            || async {
                read(CHECK, direct, &shard)
                    .await
                    .is_some_and(|row| row.checkpoint == Some(Checkpoint::TrimHorizon))
            },
        )
        .await;
        let result = outcome?;
        must(CHECK, "reset_checkpoint whose reply was lost", result);
        let row = read(CHECK, direct, &shard).await;
        assert_eq!(
            row.map(|r| (r.owner, r.token, r.checkpoint)),
            Some((None, tenure.token, Some(Checkpoint::TrimHorizon))),
            "unknown_outcome conformance [{CHECK}]: the row holds the reset checkpoint"
        );
        Some(())
    })
    .await
}

/// A `replace_corrupt` whose reply is lost is `Ok`, and the row reads back as written. The
/// row is made undecodable by the backend's `vandal` (on the server, through `direct`'s
/// application).
pub async fn replace_corrupt_whose_reply_was_lost_is_ok(
    faulty: &impl LeaseStore,
    direct: &impl LeaseStore,
    proxy: &FaultProxy,
    vandal: &dyn Vandal,
) {
    const CHECK: &str = "replace_corrupt_whose_reply_was_lost_is_ok";
    until_the_fault_fires(CHECK, async || {
        let shard = fresh_shard();
        must(
            CHECK,
            "create_if_absent (direct)",
            direct.create_if_absent(STREAM, &shard, &[]).await,
        );
        vandal.corrupt_lease(STREAM, &shard).await;
        let repaired = Lease {
            token: 1_795_676_400_000,
            checkpoint: Some(after(42)),
            ..Lease::new(shard.clone(), vec![ShardId::from("shardId-parent")])
        };
        let outcome = with_reply_lost(
            CHECK,
            proxy,
            faulty.replace_corrupt(STREAM, &repaired),
            || async { direct.lease(STREAM, &shard).await == Ok(Some(repaired.clone())) },
        )
        .await;
        let result = outcome?;
        must(CHECK, "replace_corrupt whose reply was lost", result);
        assert_eq!(read(CHECK, direct, &shard).await, Some(repaired));
        Some(())
    })
    .await
}
