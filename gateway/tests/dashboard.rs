//! The Grafana dashboard in `docs/` queries only metrics the gateway
//! serves: every `gateway_*` name in its queries is in the pinned
//! Prometheus text (`data/metrics.prom`).

use std::collections::BTreeSet;
use std::path::Path;

/// Every `gateway_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("gateway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_grafana_dashboard_queries_only_served_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("../docs/grafana-dashboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    let mut queried = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("each panel queries");
        for t in targets {
            queried.extend(metric_names(
                t["expr"].as_str().expect("a PromQL expression"),
            ));
        }
    }
    let served = std::fs::read_to_string(root.join("tests/data/metrics.prom")).unwrap();
    let served: BTreeSet<String> = served
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let unknown: Vec<&String> = queried.difference(&served).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody serves: {unknown:?}"
    );
    assert!(queried.len() >= 15, "{queried:?}");
}
