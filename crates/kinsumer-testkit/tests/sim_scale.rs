//! The simulation at scale: a fleet of 100 clients on 10,000 shards, on the memory store in
//! virtual time, started together on a store without rows (balanced within 8 s), through a
//! join, a leave and a crash while records flow — then the calm
//! phase's own probes (a join, a crash, a join, a departure) — judged by every oracle of the
//! simulation, as the sweep judges its small fleets.
//!
//! Its wall time is what the engine's CPU costs at this size (every client plans over 10,000
//! leases at each full read); it is printed, and bounded only by CI's own limit.

use std::time::{Duration, Instant};

use kinsumer_testkit::sim::{Event, Scenario, run};

#[test]
fn a_fleet_of_100_clients_on_10000_shards_through_a_join_a_leave_and_a_crash() {
    let secs = Duration::from_secs;
    let mut scenario = Scenario::calm(1, 10_000, 100, 3_000);
    scenario.produce_for = secs(45);
    // Started together on a store without rows: balanced before the join.
    scenario.balanced_by = Some(secs(8));
    scenario.events = vec![
        (secs(10), Event::Join),
        (secs(25), Event::Leave),
        (secs(40), Event::Crash),
    ];
    let wall = Instant::now();
    let report = run(&scenario);
    println!("{report}");
    println!("wall time: {:.1} s", wall.elapsed().as_secs_f64());
    assert!(report.violations.is_empty(), "{report}");
    assert!(
        report.produced > 0 && report.delivered >= report.produced,
        "every record delivered: {report}"
    );
}
