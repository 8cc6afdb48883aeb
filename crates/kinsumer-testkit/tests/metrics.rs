//! The metrics tell the truth: a simulated fleet with a crash, under a recording recorder.

use std::collections::BTreeMap;
use std::time::Duration;

use kinsumer_core::metrics::{
    LEASES_TAKEN, MILLIS_BEHIND_LATEST, RECORDS_ACKED, RECORDS_DELIVERED, WATERMARK_LAG,
};
use kinsumer_testkit::sim::{Event, Scenario, run};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;
/// Counter totals by name (and by name{from=…} for takes).
type Counters = BTreeMap<String, u64>;
/// Every gauge series: name, labels, value.
type Gauges = Vec<(String, Vec<String>, f64)>;

/// Counters summed over their series, and every gauge series.
fn totals(snapshot: Snapshot) -> (Counters, Gauges) {
    let mut counters = BTreeMap::new();
    let mut gauges = Vec::new();
    for (key, _, _, value) in snapshot {
        let name = key.key().name().to_string();
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => {
                *counters.entry(name.clone()).or_default() += n;
                for l in &labels {
                    if l.starts_with("from=") {
                        *counters.entry(format!("{name}{{{l}}}")).or_default() += n;
                    }
                }
            }
            (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                gauges.push((name, labels, v.into_inner()))
            }
            _ => {}
        }
    }
    (counters, gauges)
}

#[test]
fn metrics_match_what_the_fleet_did() {
    let mut scenario = Scenario::calm(11, 3, 3, 600);
    scenario
        .events
        .push((Duration::from_secs(12), Event::Crash));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let report = metrics::with_local_recorder(&recorder, || run(&scenario));
    assert!(report.violations.is_empty(), "{report}");
    let (counters, gauges) = totals(snapshotter.snapshot().into_vec());

    let acked = counters.get(RECORDS_ACKED).copied().unwrap_or(0);
    assert_eq!(
        acked as usize, report.acks,
        "acked counter = the application's acks"
    );
    assert!(
        acked as usize >= report.produced,
        "every record acked at least once"
    );
    let delivered = counters.get(RECORDS_DELIVERED).copied().unwrap_or(0);
    assert_eq!(
        delivered as usize, report.delivered,
        "delivered counter = deliveries seen"
    );
    assert_eq!(
        delivered as usize - report.produced,
        report.duplicates,
        "the excess deliveries are exactly the duplicates"
    );
    let takeovers = counters
        .get(&format!("{LEASES_TAKEN}{{from=expired}}"))
        .copied()
        .unwrap_or(0);
    assert!(
        takeovers >= 1,
        "the crashed client's leases were taken over: {counters:?}"
    );
    for (name, labels, value) in &gauges {
        if name == WATERMARK_LAG || name == MILLIS_BEHIND_LATEST {
            assert_eq!(*value, 0.0, "{name} {labels:?} is not back to 0");
        }
    }
    assert!(
        gauges.iter().any(|(n, _, _)| n == WATERMARK_LAG),
        "lag gauges exist"
    );
}
