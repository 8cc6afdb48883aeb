//! Every write kind of [`kinsumer_core::outcome::judge`] against every row a re-read can find
//! after an unknown outcome: landed, not landed, changed by someone else, gone, finished,
//! undecodable. The stores' own tests run the same decisions against real servers through
//! `kinsumer_testkit::conformance::unknown_outcome`.
use kinsumer_core::outcome::*;
use kinsumer_core::position::Checkpoint;
use kinsumer_core::position::{Position, SequenceNumber};
use kinsumer_core::source::ShardId;
use kinsumer_core::store::TOKEN_LIMIT;
use kinsumer_core::store::{ClientId, Lease, StoreError, Tenure};

fn after(n: u128) -> Checkpoint {
    Checkpoint::After(Position::new(SequenceNumber::from_u128(n), 0))
}

fn shard() -> ShardId {
    ShardId::from("shard-1")
}

fn me() -> ClientId {
    ClientId::from("me")
}

fn other() -> ClientId {
    ClientId::from("other")
}

/// A row of `shard-1`: owner, token, checkpoint, finished.
fn row(
    owner: Option<ClientId>,
    token: u64,
    checkpoint: Option<Checkpoint>,
    finished: bool,
) -> Lease {
    Lease {
        owner,
        token,
        checkpoint,
        finished,
        ..Lease::new(shard(), vec![])
    }
}

fn corrupt() -> StoreError {
    StoreError::Corrupt {
        key: "leases/shard-1".to_owned(),
        reason: "token: not a number".to_owned(),
    }
}

fn lost() -> Verdict {
    Verdict::Refused(StoreError::LeaseLost { shard: shard() })
}

fn not_found() -> Verdict {
    Verdict::Refused(StoreError::NotFound { shard: shard() })
}

/// Our tenure of `shard-1`, at token 3.
fn our_tenure() -> Tenure {
    Tenure {
        shard: shard(),
        owner: me(),
        token: 3,
    }
}

/// The case of a row that is gone: `NotFound`, for every write that expects one.
fn gone() -> Case {
    ("gone", None, not_found())
}

/// The case of a row our tenure finished meanwhile: the shard is over, the write lost.
fn finished_by_us() -> Case {
    let row = row(Some(me()), 3, Some(Checkpoint::ShardEnd), true);
    ("finished", Some(Ok(row)), lost())
}

/// The case of a row that no longer decodes: refused as `Corrupt`, as a fresh attempt is.
fn undecodable() -> Case {
    (
        "undecodable",
        Some(Err(corrupt())),
        Verdict::Refused(corrupt()),
    )
}

/// What each row means for one write: (case, row now — `None` missing, `Some(Err)`
/// undecodable — and the verdict).
type Case = (&'static str, Option<Result<Lease, StoreError>>, Verdict);
/// See [`Case`].
type Cases = Vec<Case>;

fn check(write: LeaseWrite<'_>, cases: Cases) {
    // Every write is judged on each kind of row: landed, not landed, changed by someone
    // else, gone, finished, undecodable.
    let kinds = [
        "landed",
        "not landed",
        "changed",
        "gone",
        "finished",
        "undecodable",
    ];
    for kind in kinds {
        assert!(
            cases.iter().any(|(case, ..)| case.starts_with(kind)),
            "{write}: no case for {kind:?}"
        );
    }
    for (case, now, expected) in cases {
        let now_row = match &now {
            None => RowNow::Missing,
            Some(Ok(lease)) => RowNow::Found(lease),
            Some(Err(e)) => RowNow::Undecodable(e),
        };
        assert_eq!(
            judge(&shard(), &write, now_row),
            expected,
            "{write}: {case}"
        );
    }
}

#[test]
fn create_if_absent_landed_whenever_a_row_is_there() {
    check(
        LeaseWrite::CreateIfAbsent,
        vec![
            (
                "landed: the new row",
                Some(Ok(row(None, 0, None, false))),
                Verdict::Landed,
            ),
            ("not landed: no row", None, Verdict::NotLanded),
            (
                "changed: another creator's row, taken since",
                Some(Ok(row(Some(other()), 4, Some(after(9)), false))),
                Verdict::Landed,
            ),
            (
                "gone: no row (the same as not landed)",
                None,
                Verdict::NotLanded,
            ),
            (
                "finished: the row now stored",
                Some(Ok(row(Some(other()), 2, Some(Checkpoint::ShardEnd), true))),
                Verdict::Landed,
            ),
            undecodable(),
        ],
    );
}

#[test]
fn take_landed_only_as_our_owner_at_the_next_token_unfinished() {
    let me = me();
    check(
        LeaseWrite::Take {
            owner: &me,
            expected_token: 3,
        },
        vec![
            (
                "landed",
                Some(Ok(row(Some(me.clone()), 4, Some(after(1)), false))),
                Verdict::Landed,
            ),
            (
                "not landed: still at the token read, dead owner",
                Some(Ok(row(Some(other()), 3, None, false))),
                Verdict::NotLanded,
            ),
            (
                "not landed: still at the token read, unowned",
                Some(Ok(row(None, 3, None, false))),
                Verdict::NotLanded,
            ),
            (
                "changed: someone else took it",
                Some(Ok(row(Some(other()), 4, None, false))),
                lost(),
            ),
            (
                "changed: taken by us and then by someone else",
                Some(Ok(row(Some(other()), 5, None, false))),
                lost(),
            ),
            (
                "changed: ours, but at a later token (not this take)",
                Some(Ok(row(Some(me.clone()), 5, None, false))),
                lost(),
            ),
            (
                "changed: released since, at the next token",
                Some(Ok(row(None, 4, None, false))),
                lost(),
            ),
            gone(),
            (
                "finished: ours at the next token, finished since",
                Some(Ok(row(
                    Some(me.clone()),
                    4,
                    Some(Checkpoint::ShardEnd),
                    true,
                ))),
                lost(),
            ),
            (
                "finished: at the token read",
                Some(Ok(row(Some(other()), 3, Some(Checkpoint::ShardEnd), true))),
                lost(),
            ),
            undecodable(),
        ],
    );
    // A take from the largest token cannot land (there is no next token): never `Landed`.
    let top = LeaseWrite::Take {
        owner: &me,
        expected_token: u64::MAX,
    };
    let at_top = row(Some(me.clone()), u64::MAX, None, false);
    assert_eq!(
        judge(&shard(), &top, RowNow::Found(&at_top)),
        Verdict::NotLanded
    );
}

#[test]
fn checkpoint_landed_when_our_tenure_holds_our_checkpoint() {
    let tenure = our_tenure();
    let cp = after(20);
    check(
        LeaseWrite::Checkpoint {
            tenure: &tenure,
            checkpoint: &cp,
        },
        vec![
            (
                "landed",
                Some(Ok(row(Some(me()), 3, Some(after(20)), false))),
                Verdict::Landed,
            ),
            (
                "not landed: the previous checkpoint",
                Some(Ok(row(Some(me()), 3, Some(after(10)), false))),
                Verdict::NotLanded,
            ),
            (
                "not landed: no checkpoint yet",
                Some(Ok(row(Some(me()), 3, None, false))),
                Verdict::NotLanded,
            ),
            (
                "changed: taken by someone else",
                Some(Ok(row(Some(other()), 4, Some(after(20)), false))),
                lost(),
            ),
            (
                "changed: released (by us, meanwhile)",
                Some(Ok(row(None, 3, Some(after(20)), false))),
                lost(),
            ),
            gone(),
            finished_by_us(),
            undecodable(),
        ],
    );
}

#[test]
fn release_landed_when_the_row_is_unowned_at_our_token() {
    let tenure = our_tenure();
    check(
        LeaseWrite::Release { tenure: &tenure },
        vec![
            (
                "landed",
                Some(Ok(row(None, 3, Some(after(20)), false))),
                Verdict::Landed,
            ),
            (
                "landed: and an operator reset the checkpoint since",
                Some(Ok(row(None, 3, Some(after(5)), false))),
                Verdict::Landed,
            ),
            (
                "not landed: still ours",
                Some(Ok(row(Some(me()), 3, Some(after(10)), false))),
                Verdict::NotLanded,
            ),
            (
                "changed: taken by someone else",
                Some(Ok(row(Some(other()), 4, None, false))),
                lost(),
            ),
            (
                "changed: released and taken by nobody yet at another token",
                Some(Ok(row(None, 4, None, false))),
                lost(),
            ),
            (
                "changed: another owner at our token (a repair)",
                Some(Ok(row(Some(other()), 3, None, false))),
                lost(),
            ),
            gone(),
            finished_by_us(),
            undecodable(),
        ],
    );
}

#[test]
fn finish_landed_when_our_tenure_holds_a_finished_row() {
    let tenure = our_tenure();
    check(
        LeaseWrite::Finish { tenure: &tenure },
        vec![
            (
                "landed",
                Some(Ok(row(Some(me()), 3, Some(Checkpoint::ShardEnd), true))),
                Verdict::Landed,
            ),
            (
                "not landed",
                Some(Ok(row(Some(me()), 3, Some(after(10)), false))),
                Verdict::NotLanded,
            ),
            (
                "changed: taken by someone else",
                Some(Ok(row(Some(other()), 4, None, false))),
                lost(),
            ),
            (
                "changed: released",
                Some(Ok(row(None, 3, None, false))),
                lost(),
            ),
            gone(),
            (
                "finished by someone else",
                Some(Ok(row(Some(other()), 4, Some(Checkpoint::ShardEnd), true))),
                lost(),
            ),
            undecodable(),
        ],
    );
}

#[test]
fn delete_finished_landed_when_the_row_is_gone() {
    check(
        LeaseWrite::DeleteFinished,
        vec![
            ("landed: no row", None, Verdict::Landed),
            (
                "not landed: still there, finished",
                Some(Ok(row(Some(me()), 3, Some(Checkpoint::ShardEnd), true))),
                Verdict::NotLanded,
            ),
            (
                "changed: created again, unfinished",
                Some(Ok(row(None, 0, None, false))),
                lost(),
            ),
            ("gone (the same as landed)", None, Verdict::Landed),
            (
                "finished (the same as not landed)",
                Some(Ok(row(None, 7, Some(Checkpoint::ShardEnd), true))),
                Verdict::NotLanded,
            ),
            undecodable(),
        ],
    );
}

#[test]
fn reset_checkpoint_landed_when_the_unowned_row_holds_our_checkpoint() {
    let cp = Checkpoint::TrimHorizon;
    check(
        LeaseWrite::ResetCheckpoint {
            expected_token: 3,
            checkpoint: &cp,
        },
        vec![
            (
                "landed",
                Some(Ok(row(None, 3, Some(Checkpoint::TrimHorizon), false))),
                Verdict::Landed,
            ),
            (
                "not landed",
                Some(Ok(row(None, 3, Some(after(10)), false))),
                Verdict::NotLanded,
            ),
            (
                "changed: taken since",
                Some(Ok(row(
                    Some(other()),
                    4,
                    Some(Checkpoint::TrimHorizon),
                    false,
                ))),
                lost(),
            ),
            (
                "changed: owned at the token read",
                Some(Ok(row(Some(other()), 3, None, false))),
                lost(),
            ),
            (
                "changed: released at another token",
                Some(Ok(row(None, 5, Some(Checkpoint::TrimHorizon), false))),
                lost(),
            ),
            gone(),
            finished_by_us(),
            undecodable(),
        ],
    );
}

#[test]
fn replace_corrupt_landed_when_the_row_is_ours_and_not_while_it_stays_unusable() {
    let repair = Lease {
        parents: vec![ShardId::from("parent")],
        ..row(None, 9, Some(after(3)), false)
    };
    check(
        LeaseWrite::ReplaceCorrupt { lease: &repair },
        vec![
            ("landed", Some(Ok(repair.clone())), Verdict::Landed),
            (
                "not landed: still undecodable",
                Some(Err(corrupt())),
                Verdict::NotLanded,
            ),
            (
                "not landed: still at an exhausted token",
                Some(Ok(row(Some(other()), TOKEN_LIMIT, None, false))),
                Verdict::NotLanded,
            ),
            (
                "changed: repaired by someone else",
                Some(Ok(row(None, 1, None, false))),
                lost(),
            ),
            (
                "changed: our row, but taken since",
                Some(Ok(Lease {
                    owner: Some(other()),
                    token: 10,
                    ..repair.clone()
                })),
                lost(),
            ),
            gone(),
            (
                "finished: a usable finished row",
                Some(Ok(row(Some(other()), 2, Some(Checkpoint::ShardEnd), true))),
                lost(),
            ),
            (
                "undecodable (the same as not landed)",
                Some(Err(corrupt())),
                Verdict::NotLanded,
            ),
        ],
    );
}

#[test]
fn every_write_has_its_name() {
    let (me, cp) = (me(), Checkpoint::Latest);
    let tenure = Tenure {
        shard: shard(),
        owner: me.clone(),
        token: 1,
    };
    let lease = row(None, 0, None, false);
    let names: Vec<String> = [
        LeaseWrite::CreateIfAbsent,
        LeaseWrite::Take {
            owner: &me,
            expected_token: 0,
        },
        LeaseWrite::Checkpoint {
            tenure: &tenure,
            checkpoint: &cp,
        },
        LeaseWrite::Release { tenure: &tenure },
        LeaseWrite::Finish { tenure: &tenure },
        LeaseWrite::DeleteFinished,
        LeaseWrite::ResetCheckpoint {
            expected_token: 0,
            checkpoint: &cp,
        },
        LeaseWrite::ReplaceCorrupt { lease: &lease },
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        names,
        [
            "create_if_absent",
            "take",
            "checkpoint",
            "release",
            "finish",
            "delete_finished",
            "reset_checkpoint",
            "replace_corrupt"
        ]
    );
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

#[test]
fn settle_answers_as_the_contract_wants() {
    let me = me();
    let take = LeaseWrite::Take {
        owner: &me,
        expected_token: 0,
    };
    let ours = row(Some(me.clone()), 1, None, false);
    let landed = block_on(settle(
        &shard(),
        take,
        "take on k",
        "reply lost",
        || async { Ok(Some(ours.clone())) },
    ));
    assert_eq!(landed, Ok(Some(ours.clone())));

    let not_landed = block_on(settle(
        &shard(),
        take,
        "take on k",
        "reply lost",
        || async { Ok(Some(row(None, 0, None, false))) },
    ));
    assert!(
        matches!(&not_landed, Err(StoreError::Transient(m)) if m.contains("take on k") && m.contains("reply lost") && m.contains("did not land")),
        "{not_landed:?}"
    );

    let refused = block_on(settle(
        &shard(),
        take,
        "take on k",
        "reply lost",
        || async { Ok(Some(row(Some(other()), 1, None, false))) },
    ));
    assert_eq!(refused, Err(StoreError::LeaseLost { shard: shard() }));

    let undecodable = block_on(settle(
        &shard(),
        take,
        "take on k",
        "reply lost",
        || async { Err(corrupt()) },
    ));
    assert_eq!(undecodable, Err(corrupt()));

    let reread_failed = block_on(settle(
        &shard(),
        take,
        "take on k",
        "reply lost",
        || async { Err(StoreError::Transient("connection refused".to_owned())) },
    ));
    assert!(
        matches!(&reread_failed, Err(StoreError::Transient(m)) if m.contains("re-reading") && m.contains("connection refused")),
        "{reread_failed:?}"
    );
}

#[test]
fn reread_and_judge_returns_the_row_and_fails_only_when_the_read_does() {
    let resolution = block_on(reread_and_judge(
        &shard(),
        &LeaseWrite::CreateIfAbsent,
        || async { Ok(Some(row(None, 0, None, false))) },
    ));
    assert_eq!(
        resolution,
        Ok(Resolution {
            verdict: Verdict::Landed,
            row: Some(row(None, 0, None, false))
        })
    );
    let fatal = StoreError::Fatal("access denied".to_owned());
    let failed = block_on(reread_and_judge(
        &shard(),
        &LeaseWrite::CreateIfAbsent,
        || async { Err(fatal.clone()) },
    ));
    assert_eq!(failed, Err(fatal));
}
