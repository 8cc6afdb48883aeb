//! The simulation sweep, exact replay, and proof that each invariant check catches a broken
//! engine or store.
//!
//! - `sweep`: seeds `0..KINSUMER_SIM_SEEDS` (default 1000), on every core; fails listing each
//!   failing seed with the command that replays it.
//! - `replay_one_seed`: the seed in `KINSUMER_SIM_SEED` (default 0), with its full report.

use std::time::Instant;

use kinsumer_core::faults::EngineFaults;
use kinsumer_testkit::sim::{Departure, Event, Invariant, Report, Scenario, run};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
        Err(_) => default,
    }
}

#[test]
fn sweep() {
    let seeds = env_u64("KINSUMER_SIM_SEEDS", 1000);
    let first = env_u64("KINSUMER_SIM_FIRST_SEED", 0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let started = Instant::now();
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (first..first + seeds)
                        .filter(|s| s % threads == t)
                        .map(|s| run(&Scenario::from_seed(s)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a sweep thread panicked"))
            .collect()
    });
    let failed: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    let violations: usize = failed.iter().map(|r| r.violations.len()).sum();
    let produced: usize = reports.iter().map(|r| r.produced).sum();
    let duplicates: usize = reports.iter().map(|r| r.duplicates).sum();
    let stalls: usize = reports.iter().map(|r| r.stalls).sum();
    let slowest_settle = reports.iter().map(|r| r.settle).max().unwrap_or_default();
    let beyond_timeout = reports
        .iter()
        .map(|r| r.settle.saturating_sub(r.scenario.call_timeout))
        .max()
        .unwrap_or_default();
    let (longest_free, free_seed) = reports
        .iter()
        .map(|r| (r.longest_free, r.scenario.seed))
        .max()
        .unwrap_or_default();
    println!(
        "sim sweep: {} seeds, {} violations, {} failing seeds; {} records produced, {} duplicates, {} stalls found; {:.1} s wall",
        reports.len(),
        violations,
        failed.len(),
        produced,
        duplicates,
        stalls,
        started.elapsed().as_secs_f64()
    );
    println!(
        "after the faults healed: every record acked within {slowest_settle:?} ({beyond_timeout:?} past call_timeout); a released lease free for at most {longest_free:?} (seed {free_seed})"
    );
    for r in &failed {
        println!("{r}");
    }
    assert_eq!(reports.len() as u64, seeds);
    assert!(
        failed.is_empty(),
        "{} seed(s) broke an invariant (see above)",
        failed.len()
    );
}

/// Log lines stamped with simulated time (seconds since the first line).
#[derive(Default)]
struct SimTime(std::sync::OnceLock<tokio::time::Instant>);

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let base = *self.0.get_or_init(tokio::time::Instant::now);
        write!(w, "{:>9.3}s", base.elapsed().as_secs_f64())
    }
}

/// With `RUST_LOG` set, engine logs in simulated time.
fn init_logs() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_timer(SimTime::default())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

#[test]
fn replay_one_seed() {
    let seed = env_u64("KINSUMER_SIM_SEED", 0);
    init_logs();
    let scenario = Scenario::from_seed(seed);
    println!("{scenario:#?}");
    let report = run(&scenario);
    println!("{report}");
    assert!(report.violations.is_empty(), "{report}");
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    // Seeds with pauses, faults and reshards, whose wake-up order once differed between runs.
    for seed in [3, 11, 42, 785, 847] {
        let a = run(&Scenario::from_seed(seed));
        for _ in 0..2 {
            let b = run(&Scenario::from_seed(seed));
            assert_eq!(a.trace_digest, b.trace_digest, "seed {seed} did not replay");
            assert_eq!((a.delivered, a.duplicates), (b.delivered, b.duplicates));
        }
    }
    let a = run(&Scenario::from_seed(3));
    let c = run(&Scenario::from_seed(4));
    assert_ne!(
        a.trace_digest, c.trace_digest,
        "different seeds should differ"
    );
}

/// Runs `scenario` and asserts it broke `invariant` — the check can fail — and that the same
/// scenario without the deliberate bugs (no engine faults, a store that fences, stall detection
/// on) breaks nothing, so it is the bug that was caught. Returns the report of the fixed run.
fn assert_caught(scenario: Scenario, invariant: Invariant) -> Report {
    init_logs();
    let report = run(&scenario);
    assert!(
        report.broke(invariant),
        "a deliberately broken run did not break {invariant:?}:\n{report}"
    );
    let mut fixed = scenario;
    fixed.engine_faults = EngineFaults::default();
    fixed.store_ignores_fencing = false;
    fixed.stall_timeout = fixed.stall_timeout.or(busy(0).stall_timeout);
    let report = run(&fixed);
    assert!(report.violations.is_empty(), "without the bug:\n{report}");
    report
}

fn busy(seed: u64) -> Scenario {
    let mut s = Scenario::calm(seed, 2, 2, 400);
    s.produce_for = std::time::Duration::from_secs(30);
    s
}

#[test]
fn catches_an_engine_that_delivers_twice() {
    let mut s = busy(1);
    s.engine_faults = EngineFaults {
        deliver_twice: true,
        ..EngineFaults::default()
    };
    assert_caught(s, Invariant::OrderWithinTenure);
}

#[test]
fn catches_an_engine_that_skips_a_record() {
    let mut s = busy(2);
    s.engine_faults = EngineFaults {
        skip_first_record: true,
        ..EngineFaults::default()
    };
    assert_caught(s, Invariant::NoGap);
}

#[test]
fn catches_an_engine_that_commits_unacked_records() {
    let mut s = busy(3);
    s.records = 1500; // more than slow handlers keep up with: a backlog of fetched records
    s.slow_handler = true;
    s.engine_faults = EngineFaults {
        commit_unacked: true,
        ..EngineFaults::default()
    };
    // Crashes while slow handlers hold records that were committed but not acked.
    for at in [8, 14, 20] {
        s.events
            .push((std::time::Duration::from_secs(at), Event::Crash));
        s.events
            .push((std::time::Duration::from_secs(at), Event::Join));
    }
    assert_caught(s, Invariant::EveryRecordAcked);
}

#[test]
fn catches_an_engine_that_ignores_parents() {
    let mut s = busy(4);
    s.shards = 1;
    s.clients = 3;
    s.records = 1500; // a backlog in the parent when it splits
    s.slow_handler = true;
    s.engine_faults = EngineFaults {
        ignore_parents: true,
        ..EngineFaults::default()
    };
    s.events
        .push((std::time::Duration::from_secs(5), Event::Split));
    assert_caught(s, Invariant::ParentsFirst);
}

#[test]
fn catches_an_engine_that_does_not_balance() {
    let mut s = busy(5);
    s.shards = 6;
    s.clients = 1;
    s.engine_faults = EngineFaults {
        greedy: true,
        ..EngineFaults::default()
    };
    s.events
        .push((std::time::Duration::from_secs(5), Event::Join));
    s.events
        .push((std::time::Duration::from_secs(6), Event::Join));
    assert_caught(s, Invariant::Balanced);
}

#[test]
fn catches_an_engine_that_moves_a_checkpoint_back() {
    let mut s = busy(7);
    s.engine_faults = EngineFaults {
        release_stale_checkpoint: true,
        ..EngineFaults::default()
    };
    // A join makes the first client hand a shard off mid-stream.
    s.events
        .push((std::time::Duration::from_secs(12), Event::Join));
    assert_caught(s, Invariant::CheckpointMonotonic);
}

/// A zombie: an engine that does not self-fence keeps writing while its heartbeats and reads
/// hang for longer than the lease TTL, and another client took its lease. The store's token check is then all that
/// protects the lease — and the simulation sees when a store lacks it.
#[test]
fn catches_a_store_that_ignores_fencing() {
    init_logs();
    let mut s = busy(6);
    s.records = 800;
    s.engine_faults = EngineFaults {
        no_self_fencing: true,
        ..EngineFaults::default()
    };
    // Clocks that drift apart, so the zombie's commits do not tick in step with its reads.
    s.max_clock_drift = 0.05;
    s.events.push((
        std::time::Duration::from_secs(10),
        Event::HalfPartition(std::time::Duration::from_secs(20)),
    ));
    // A fencing store rejects the zombie's writes: no write breaks. (What the zombie hands out
    // after the takeover is the engine's fault, which no store can prevent: whether it hands out
    // any depends on when it reads, so that check is not asserted either way here.)
    let report = run(&s);
    assert!(!report.broke(Invariant::FencedWrites), "{report}");
    assert!(!report.broke(Invariant::CheckpointMonotonic), "{report}");
    // A store that ignores the token lets them through, and both checks see it.
    s.store_ignores_fencing = true;
    let report = run(&s);
    assert!(report.broke(Invariant::FencedWrites), "{report}");
    assert!(report.broke(Invariant::CheckpointMonotonic), "{report}");
}

#[test]
fn a_correct_fleet_passes_the_same_scenarios() {
    // The scenarios above, without the deliberate bugs, break nothing.
    let mut s = busy(6);
    s.records = 800;
    s.events.push((
        std::time::Duration::from_secs(10),
        Event::Pause(std::time::Duration::from_secs(20)),
    ));
    s.events
        .push((std::time::Duration::from_secs(12), Event::Split));
    s.events
        .push((std::time::Duration::from_secs(14), Event::Crash));
    s.events
        .push((std::time::Duration::from_secs(14), Event::Join));
    let report = run(&s);
    assert!(report.violations.is_empty(), "{report}");
}

/// An engine that judges a client dead after half the TTL, and a client paused past half the
/// TTL and short of it: alive, and it comes back.
fn hasty_judge_of_a_paused_client() -> Scenario {
    let mut s = busy(7);
    s.engine_faults = EngineFaults {
        hasty_death: true,
        ..EngineFaults::default()
    };
    s.events.push((
        std::time::Duration::from_secs(10),
        Event::Pause(std::time::Duration::from_secs(7)),
    ));
    s
}

#[test]
fn catches_an_engine_that_takes_leases_from_live_clients() {
    assert_caught(hasty_judge_of_a_paused_client(), Invariant::NoTheft);
}

#[test]
fn catches_an_engine_that_marks_live_clients_dead() {
    // Its watcher marks the paused client: the mark alone is the violation.
    assert_caught(hasty_judge_of_a_paused_client(), Invariant::NoFalseDeath);
}

#[test]
fn catches_an_engine_that_hands_out_records_after_a_takeover() {
    let mut s = busy(8);
    s.engine_faults = EngineFaults {
        no_self_fencing: true,
        ..EngineFaults::default()
    };
    // A zombie that neither fences itself nor is stopped by the store (whose checks would end
    // its tenure at its next commit), cut off from the store's reads past the TTL: its lease
    // moves while it goes on reading and handing out.
    s.store_ignores_fencing = true;
    s.events.push((
        std::time::Duration::from_secs(10),
        Event::HalfPartition(std::time::Duration::from_secs(20)),
    ));
    assert_caught(s, Invariant::NoHandOutAfterTakeover);
}

#[test]
fn catches_an_engine_that_releases_less_than_was_acked() {
    let mut s = busy(9);
    s.engine_faults = EngineFaults {
        release_stale_checkpoint: true,
        ..EngineFaults::default()
    };
    s.events
        .push((std::time::Duration::from_secs(12), Event::Join));
    s.events
        .push((std::time::Duration::from_secs(20), Event::Leave));
    assert_caught(s, Invariant::DuplicatesBounded);
}

#[test]
fn catches_an_engine_whose_handoffs_wait_for_a_joiner_to_judge_the_dead() {
    // Calm: the checks' own probe crashes a client and starts another within the dead row's
    // lifetime; with one plan only and releases that name nobody (the engine before either
    // fix), the joiner leaves some of what it is handed unowned.
    let mut s = busy(10);
    s.clients = 3;
    s.shards = 6;
    s.engine_faults = EngineFaults {
        single_plan: true,
        anonymous_release: true,
        never_mark: true,
        ..EngineFaults::default()
    };
    assert_caught(s, Invariant::Liveness);
}

#[test]
fn a_handler_stalled_past_the_iterator_lifetime_resumes_where_it_stopped() {
    // No forced expiry: the stalled client's buffer fills, its fetcher stops, and its idle
    // iterator expires by itself (5 minutes); every invariant must still hold. Without stall
    // detection, which would give the stalled client's shard to the other within 30 s (and so
    // read it again before the iterator could expire).
    let mut s = busy(11);
    s.stall_timeout = None;
    s.events.push((
        std::time::Duration::from_secs(5),
        Event::HandlerStall(std::time::Duration::from_secs(330)),
    ));
    let report = run(&s);
    assert!(report.violations.is_empty(), "{report}");
    assert!(
        report.expired_iterators > 0,
        "the stall let an iterator expire: {report}"
    );
}

#[test]
fn plans_that_disagree_over_a_released_lease_are_read_again() {
    // Found by the sweep: a leaver released three leases; one survivor read the rows before the
    // other's takes and the other after, and each planned one free lease for the other — it
    // stayed free until the next periodic read (5.2 s). A client whose plan leaves free leases
    // to others now reads again two polls later if they are still free.
    let report = run(&Scenario::from_seed(12307));
    assert!(report.violations.is_empty(), "{report}");
    assert!(
        report.longest_free < std::time::Duration::from_secs(1),
        "{:?}",
        report.longest_free
    );
}

#[test]
fn catches_an_engine_whose_releases_name_no_successor() {
    // Calm: the probe's second joiner is slow to start (for this seed, slower than the others
    // are to release), so leases are released to it before its first read of the leases; it
    // counts the crashed client alive and plans some of them for it. Unless the release names
    // it, such a lease stays free until the joiner's first TTL has passed (10.5 s here).
    let mut s = busy(12);
    s.clients = 3;
    s.shards = 6;
    s.engine_faults = EngineFaults {
        anonymous_release: true,
        never_mark: true,
        ..EngineFaults::default()
    };
    assert_caught(s, Invariant::Liveness);
}

/// `busy(seed)` with one event at 5 s.
fn busy_with(seed: u64, event: Event) -> Scenario {
    let mut s = busy(seed);
    s.events.push((std::time::Duration::from_secs(5), event));
    s
}

#[test]
fn catches_an_engine_without_stall_detection() {
    // A client's application hangs holding a record, or stops polling its record stream, while
    // its process heartbeats on: without stall detection its shard never moves and its records
    // are never acked. With it, the work moves within `stall_timeout` and everything passes.
    for (seed, event) in [(13, Event::Hang), (14, Event::StopPolling)] {
        let mut s = busy_with(seed, event);
        s.stall_timeout = None;
        let fixed = assert_caught(s, Invariant::Liveness);
        assert!(fixed.stalls > 0, "the stall was found: {fixed}");
    }
}

/// Found by the simulation: a client whose batch handler hangs for good gave a shard up after
/// `stall_timeout`, and the client it named handed the shard straight back at its next
/// rebalance (its balanced plan still counts the hung client), with a drain shorter than its
/// first batch of the backlog — so the shard's checkpoint did not move from 5 s to 135 s. Now a
/// handler that hangs again within 2 × `stall_timeout` takes its client out of the fleet for
/// `stall_timeout`.
#[test]
fn a_batch_handler_hung_for_good_does_not_hold_its_shards() {
    let mut s = busy_with(15, Event::Hang);
    s.batch_handler = true;
    let report = run(&s);
    assert!(report.violations.is_empty(), "{report}");
}

/// Found by the simulation (seeds 4554, 5851, 5976, 8503, 11162 among others): "not polled" was
/// judged from the last call of `poll_next` and counted as waiting the records a tenure fetched
/// before a self-fence, which the stream never hands out. An application waiting in
/// `records.next()` is not polled again until a record can be handed out, so a client whose
/// supervisor sat in a slow store call across a self-fence was judged not polled and left the
/// fleet for good. Now only what the application has not taken counts as waiting — chunks
/// queued in the stream's channel, or the rest of a chunk it took a record of.
#[test]
fn a_client_waiting_in_a_poll_is_not_left_out_of_the_fleet() {
    let report = run(&Scenario::from_seed(11162));
    assert!(report.violations.is_empty(), "{report}");
}

/// Found by the sweep beyond its first 10,000 seeds (seed 10804): while a parent's lease row did
/// not decode (set aside) and the parent was no longer listed, a client took its child and
/// delivered two records of it (at 24.9 s) before the parent finished (52.3 s). A parent whose
/// row is set aside now always holds its children back.
#[test]
fn a_child_waits_for_a_parent_whose_row_is_set_aside() {
    let report = run(&Scenario::from_seed(10804));
    assert!(report.violations.is_empty(), "{report}");
}

/// Found by the sweep beyond its first 10,000 seeds (seed 18297): a free lease's take was
/// refused while its row was garbage (24.1–27.5 s); the client set the row aside "until it
/// changes", but the repair wrote back the very row it had read, so it never tried again — and
/// the others left the lease to it, as the plan said: free from 11.9 s until a client joined at
/// 121.8 s. A take refused because the row no longer decodes now sets it aside only until a
/// read decodes it again (a row refused for its exhausted token still waits for a change).
#[test]
fn a_lease_refused_while_corrupt_is_taken_once_repaired() {
    let report = run(&Scenario::from_seed(18297));
    assert!(report.violations.is_empty(), "{report}");
}

#[test]
fn catches_an_engine_without_a_watchdog() {
    // A client's supervisor gets stuck while its heartbeat task and tenures go on: without the
    // watchdog it stays alive to the fleet and keeps its leases, though nothing it holds is
    // managed any more — its shards never go to the live clients.
    let mut s = busy_with(16, Event::StuckSupervisor);
    s.engine_faults = EngineFaults {
        no_watchdog: true,
        ..EngineFaults::default()
    };
    let fixed = assert_caught(s, Invariant::Balanced);
    assert!(fixed.stalls > 0, "the watchdog found it: {fixed}");
}

#[test]
fn catches_an_engine_that_ignores_dropped_records_or_consumers() {
    let silent = EngineFaults {
        silent_drops: true,
        ..EngineFaults::default()
    };
    // A record stream dropped mid-run: the old engine idles on its leases for good. Without
    // stall detection, which would find the stream not polled and move the leases too.
    let mut s = busy_with(17, Event::DropRecords);
    s.stall_timeout = None;
    s.engine_faults = silent.clone();
    let mut handled = s.clone();
    assert_caught(s, Invariant::Liveness);
    handled.engine_faults = EngineFaults::default();
    let report = run(&handled);
    assert!(
        report.violations.is_empty() && report.stalls == 0,
        "the drop alone: {report}"
    );
    // The calm phase's last probe drops a consumer, or its record stream: the drop oracle sees
    // the leases expire (a crash) or stay held, instead of being released.
    for (seed, how) in [(18, Departure::DropConsumer), (19, Departure::DropRecords)] {
        let mut s = busy(seed);
        s.clients = 3;
        s.shards = 6;
        s.last_departure = how;
        s.engine_faults = silent.clone();
        let report = run(&s);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.detail.contains("dropped without release")),
            "{how:?}: {report}"
        );
        assert_caught(s, Invariant::Liveness);
    }
}

#[test]
fn a_fleet_starting_on_no_rows_is_balanced_between_slow_full_reads() {
    // 20 clients start together on 400 shards without rows, every call 5–10 ms each way and
    // a read of every lease 500 ms more, so full reads are paced about 20 s apart (2 × live ×
    // the read's duration). Each row is created by
    // one client; the others must learn of the rows planned for them between full reads. Before
    // a client planned over the whole stream (the rows another client is to create included)
    // and read those rows when the change counter moved, it planned over the rows it had seen
    // and found the rest at its next full read: not balanced at 5 s.
    let ms = std::time::Duration::from_millis;
    for seed in 1..=3 {
        let mut s = Scenario::calm(seed, 400, 20, 200);
        s.full_read_latency = ms(500);
        s.network = Some(kinsumer_testkit::LatencyProfile {
            request: (ms(5), ms(10)),
            reply: (ms(5), ms(10)),
            tail_rate: 0.0,
            tail: (ms(0), ms(0)),
        });
        s.balanced_by = Some(ms(5_000));
        let report = run(&s);
        assert!(report.violations.is_empty(), "seed {seed}: {report}");
    }
}
