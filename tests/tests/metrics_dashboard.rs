//! The Grafana dashboard (`deploy/grafana/quiver.json`) only asks for what the server exports:
//! every metric name in every query, and every label it groups by, is on the `/metrics` page of
//! a real instance (over a real nats-server, so the NATS series exist) after a small workload.
//! One test in this file: the metrics registry is process-wide.

use std::collections::{BTreeSet, HashSet};

use quiver_proto::Event;
use quiver_server::config::TenantOverride;
use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::*;

const DASHBOARD: &str = include_str!("../../deploy/grafana/quiver.json");

/// Every PromQL query in the dashboard, with its panel's title.
fn queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_owned()));
            }
        }
    }
    out
}

/// The metric names in a query: identifiers in our namespaces (`quiver_`, `process_`). PromQL
/// functions and label names never start with those.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("quiver_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The labels of every `by (...)` clause in a query.
fn grouped_by(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        rest = &rest[at + 4..];
        let Some(end) = rest.find(')') else { break };
        out.extend(rest[..end].split(',').map(|l| l.trim().to_owned()));
        rest = &rest[end..];
    }
    out
}

/// The series names a page exports: every `# TYPE` name, and for histograms the names of their
/// `_bucket`, `_sum` and `_count` series.
fn exported(page: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in page.lines() {
        let mut words = line.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Whether any series of `metric` (a histogram's included) carries `label`.
fn has_label(page: &str, metric: &str, label: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| metric.strip_suffix(s))
        .unwrap_or(metric);
    page.lines().filter(|l| !l.starts_with('#')).any(|l| {
        l.starts_with(base)
            && l[base.len()..].contains(&format!("{label}=\""))
            && matches!(l.as_bytes().get(base.len()), Some(b'{' | b'_'))
    })
}

#[tokio::test]
async fn every_dashboard_query_names_an_exported_series() -> anyhow::Result<()> {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD)?;
    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let ids: Vec<_> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["id"].as_u64())
        .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "panel ids are unique"
    );

    // A real instance on NATS, with a history namespace and a tenant at a quota.
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        clustered(&nats)(c);
        c.quotas.tenants = vec![TenantOverride {
            tenant: "capped".into(),
            max_subscriptions: Some(1),
            ..Default::default()
        }];
    })
    .await?;
    wait_ready(&server).await?;

    // The workload: history and live rooms, a resume, a quota refusal, a closed session.
    let mut sub = Raw::connect(&server, &full_token("acme", "sub")).await?;
    let mut kept = sub.subscribe("h.room").await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "pub")).await?;
    let first = publisher.published("h.room", b"one").await?;
    publisher.published("h.room", b"two").await?;
    kept.next().await?;
    kept.next().await?;
    let (reply, _) = publisher.subscribe_from("h.room", Some(first)).await?;
    assert!(matches!(reply, Event::Subscribed { .. }));
    let mut capped = Raw::connect(&server, &full_token("capped", "c")).await?;
    let _one = capped.subscribe("a").await?;
    assert!(capped.subscribe("b").await.is_err(), "over the quota");
    capped.close().await;
    let page = wait_metric(&server, "quiver_quic_rtt_seconds_count", &[], |n| n >= 1.0).await?;

    let names = exported(&page);
    let mut missing = BTreeSet::new();
    for (title, expr) in &queries {
        let metrics = metric_names(expr);
        assert!(!metrics.is_empty(), "{title}: no metric in {expr}");
        for name in &metrics {
            if !names.contains(name) {
                missing.insert(format!("{title}: {name}"));
            }
        }
        for label in grouped_by(expr) {
            if label == "le" || label == "instance" {
                continue; // le: every histogram's; instance: added by Prometheus at scrape.
            }
            if !metrics.iter().any(|m| has_label(&page, m, &label)) {
                missing.insert(format!("{title}: label {label} on {metrics:?}"));
            }
        }
    }
    assert!(missing.is_empty(), "not exported:\n{missing:#?}\n{page}");
    Ok(())
}
