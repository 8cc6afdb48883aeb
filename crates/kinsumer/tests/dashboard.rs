//! The Grafana dashboard in `dashboards/kinsumer.json` queries only what kinsumer exports: every
//! metric name is one of `kinsumer::metrics::ALL` or `kinsumer::kinesis::METRICS` (histograms
//! also as `_bucket`, `_sum`, `_count`), every label it matches or groups by is one that metric
//! carries, every `$variable` is defined — and it shows what an operator needs: lag per shard,
//! leases per client, handoffs, stalls and checkpoint errors.

use std::collections::BTreeSet;

use serde_json::Value;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../dashboards/kinsumer.json"
);

/// Labels of the core's metrics: every one has `application` and `stream`, then `shard` or
/// `client`, and some `outcome`, `from` or `kind`; a summary adds `quantile`, a histogram `le`.
const CORE_LABELS: &[&str] = &[
    "application",
    "stream",
    "shard",
    "client",
    "outcome",
    "from",
    "kind",
    "quantile",
    "le",
];
/// Labels of the Kinesis source's counters: it does not know the application.
const KINESIS_LABELS: &[&str] = &["stream", "shard"];

/// A metric named in a query, with the labels its selector matches.
#[derive(Debug)]
struct Selector {
    name: String,
    labels: Vec<String>,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The identifier at the start of `text`.
fn ident(text: &str) -> &str {
    let end = text
        .bytes()
        .position(|b| !is_ident(b))
        .unwrap_or(text.len());
    &text[..end]
}

/// The metric selectors of a PromQL expression (`kinsumer_x{a="b", c!~"d"}`) and the labels of
/// its `by (...)` clauses.
fn parse(expr: &str) -> (Vec<Selector>, Vec<String>) {
    let bytes = expr.as_bytes();
    let (mut selectors, mut by) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_ident(bytes[i - 1]);
        if starts_word && expr[i..].starts_with("kinsumer_") {
            let name = ident(&expr[i..]);
            let end = i + name.len();
            let mut labels = Vec::new();
            if bytes.get(end) == Some(&b'{') {
                let close = expr[end..].find('}').expect("a closed selector") + end;
                for matcher in expr[end + 1..close].split(',') {
                    labels.push(ident(matcher.trim()).to_owned());
                }
            }
            selectors.push(Selector {
                name: name.to_owned(),
                labels,
            });
            i = end;
        } else if starts_word && expr[i..].starts_with("by (") {
            let close = expr[i..].find(')').expect("a closed by") + i;
            by.extend(expr[i + 4..close].split(',').map(|l| l.trim().to_owned()));
            i = close;
        } else {
            i += 1;
        }
    }
    (selectors, by)
}

/// The exported metric a queried name stands for, and the labels it carries.
fn exported(name: &str) -> Option<(&'static str, &'static [&'static str])> {
    let core = kinsumer::metrics::ALL.iter().map(|m| (*m, CORE_LABELS));
    let kinesis = kinsumer::kinesis::METRICS
        .iter()
        .map(|m| (*m, KINESIS_LABELS));
    let all: Vec<_> = core.chain(kinesis).collect();
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|b| all.iter().any(|(m, _)| m == b))
        })
        .unwrap_or(name);
    all.into_iter().find(|(m, _)| *m == base)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("dashboards/kinsumer.json");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_labels() {
    let dashboard = dashboard();
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .map(|v| v["name"].as_str().expect("a name"))
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut queried = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let (selectors, by) = parse(expr);
            assert!(
                !selectors.is_empty(),
                "{title}: queries no kinsumer metric: {expr}"
            );
            let mut carried = BTreeSet::new();
            for s in &selectors {
                let (metric, labels) = exported(&s.name)
                    .unwrap_or_else(|| panic!("{title}: {} is not exported: {expr}", s.name));
                queried.insert(metric);
                carried.extend(labels.iter().copied());
                for label in &s.labels {
                    assert!(
                        labels.contains(&label.as_str()),
                        "{title}: {metric} has no label {label}: {expr}"
                    );
                }
            }
            for label in &by {
                assert!(
                    carried.contains(label.as_str()),
                    "{title}: grouped by {label}, which no metric of the query carries: {expr}"
                );
            }
            for (i, _) in expr.match_indices('$') {
                let name = ident(&expr[i + 1..]);
                assert!(variables.contains(name), "{title}: ${name} is not defined");
            }
        }
    }
    use kinsumer::metrics::{
        CHECKPOINTS, HANDOFF_SECONDS, LEASES_HELD, LEASES_RELEASED, MILLIS_BEHIND_LATEST, STALLS,
    };
    for needed in [
        MILLIS_BEHIND_LATEST,
        LEASES_HELD,
        LEASES_RELEASED,
        HANDOFF_SECONDS,
        STALLS,
        CHECKPOINTS,
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

/// The checker itself catches what it is for.
#[test]
fn the_checker_catches_an_unknown_metric_or_label() {
    let (selectors, by) = parse(
        r#"sum by (client) (rate(kinsumer_leases_taken_total{application="$application", from="free"}[5m]))"#,
    );
    assert_eq!(selectors.len(), 1);
    assert_eq!(selectors[0].labels, ["application", "from"]);
    assert_eq!(by, ["client"]);
    assert!(exported("kinsumer_leases_taken_total").is_some());
    assert!(exported("kinsumer_handoff_seconds_bucket").is_some());
    assert!(
        exported("kinsumer_leases_taken").is_none(),
        "a name without its suffix"
    );
    assert!(exported("kinsumer_no_such_metric_total").is_none());
    let (_, labels) = exported("kinsumer_kinesis_throttled_total").expect("a Kinesis metric");
    assert!(!labels.contains(&"application"));
}
