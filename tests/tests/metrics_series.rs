//! The operator's series after a small real workload: fan-out by namespace, bytes out, delivery
//! and command latency, resumes, the reconnect proxy, QUIC path samples, the process's own
//! figures, and HELP text for every series. One test in this file: the metrics registry is
//! process-wide, so the counts here are this server's alone.

use std::time::Duration;

use quiver_proto::{Command, ErrorCode, Event, Position, Recovery};
use quiver_server::config::NamespaceConfig;
use quiver_tests::*;

#[tokio::test]
async fn a_small_workload_shows_in_every_series() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.namespaces.push(NamespaceConfig {
            name: "chat".into(),
            history_size: 100,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        })
    })
    .await?;
    let idle = server.metrics().await?;
    // The served certificate's notAfter, set before the first session (it was set before the
    // recorder existed, and lost).
    let expiry = metric(&idle, "quiver_tls_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 400.0 * 86_400.0,
        "certificate expiry {expiry}, now {now}"
    );
    // Configured namespaces, and the rest, are on the page before any traffic.
    for series in [
        r#"quiver_hub_publications_total{namespace="chat"} 0"#,
        r#"quiver_hub_publications_total{namespace="other"} 0"#,
        r#"quiver_deliveries_total{namespace="chat"} 0"#,
        "quiver_delivery_bytes_total 0",
        "quiver_delivery_latency_seconds_count 0",
        "quiver_broker_lag_seconds_count 0",
        "quiver_quic_rtt_seconds_count 0",
        r#"quiver_command_duration_seconds_count{command="publish"} 0"#,
        r#"quiver_sessions_reopened_total{transport="webtransport"} 0"#,
        "quiver_nats_connected 0",
        "quiver_history_bytes 0",
        "quiver_tls_reload_failures_total 0",
        r#"quiver_jwks_reloads_total{outcome="failed"} 0"#,
        r#"quiver_api_refusals_total{code="unauthorized"} 0"#,
        r#"quiver_connections_refused_total{listener="http",reason="request_timeout"} 0"#,
    ] {
        assert!(
            idle.lines().any(|l| l == series),
            "missing {series}:\n{idle}"
        );
    }
    assert!(
        idle.contains(r#"quiver_build_info{version=""#) && idle.contains(r#"profile=""#),
        "{idle}"
    );

    let mut sub = Raw::connect(&server, &full_token("acme", "sub")).await?;
    let mut lobby = sub.subscribe("chat.lobby").await?;
    let mut misc = sub.subscribe("misc").await?;
    let mut publisher = Raw::connect(&server, &full_token("acme", "pub")).await?;
    let mut first = None;
    for i in 0..3u8 {
        let p = publisher.published("chat.lobby", &[i; 10]).await?;
        first.get_or_insert(p);
    }
    for i in 0..2u8 {
        publisher.publish("misc", &[i; 10]).await?;
    }
    for _ in 0..3 {
        lobby.next().await?;
    }
    for _ in 0..2 {
        misc.next().await?;
    }

    // A History command counts under its own label, not a catch-all.
    let history = publisher
        .request(Command::History {
            room: "chat.lobby".into(),
            since: None,
            limit: 10,
        })
        .await?;
    assert!(matches!(history, Event::History { .. }), "{history:?}");
    // A command type this server does not know counts as `other` (outside audit 48, F1: it was
    // refused and counted in `quiver_commands_total`, but `other` never moved).
    publisher.send_bytes(&[0, 0, 0, 2, 9, 42]).await?;
    let refused = publisher.recv().await?;
    assert!(
        matches!(refused.event, Event::Error { code, .. } if code == ErrorCode::UnknownCommand.as_u16()),
        "{refused:?}"
    );

    let page = wait_metric(&server, "quiver_delivery_latency_seconds_count", &[], |n| {
        n >= 1.0
    })
    .await?;
    let ns = |name, ns| metric_sum(&page, name, &[("namespace", ns)]);
    assert_eq!(ns("quiver_hub_publications_total", "chat"), 3.0);
    assert_eq!(ns("quiver_hub_publications_total", "other"), 2.0);
    assert_eq!(ns("quiver_deliveries_total", "chat"), 3.0);
    assert_eq!(ns("quiver_deliveries_total", "other"), 2.0);
    assert_eq!(
        metric_sum(
            &page,
            "quiver_tenant_deliveries_total",
            &[("tenant", "acme")]
        ),
        5.0
    );
    // One sample per write: at most one per delivery.
    assert!(metric(&page, "quiver_delivery_latency_seconds_count") <= 5.0);
    // Stream headers and five publications of ten bytes each, at least.
    assert!(
        metric(&page, "quiver_delivery_bytes_total") > 50.0,
        "{page}"
    );
    let commands = |c| {
        metric_sum(
            &page,
            "quiver_command_duration_seconds_count",
            &[("command", c)],
        )
    };
    assert_eq!(commands("publish"), 5.0);
    assert_eq!(commands("subscribe"), 2.0);
    assert_eq!(commands("history"), 1.0);
    // Three publications of ten bytes kept in chat.lobby's history, with their bookkeeping.
    assert!(metric(&page, "quiver_history_bytes") >= 30.0, "{page}");
    assert_eq!(commands("other"), 1.0);
    assert_eq!(metric(&page, "quiver_publications_total"), 5.0);
    // Two Subscribes, five Publishes, one History, one unknown (a session's opening Hello is not
    // counted).
    assert_eq!(metric(&page, "quiver_commands_total"), 9.0);

    // Resumes: from a kept position (recovered), and on a room that keeps no history (failed).
    let (reply, _replayed) = sub.subscribe_from("chat.other", first).await?;
    assert!(matches!(reply, Event::Subscribed { .. }));
    let mut late = Raw::connect(&server, &full_token("acme", "late")).await?;
    let (reply, _) = late.subscribe_from("chat.lobby", first).await?;
    assert!(
        matches!(
            reply,
            Event::Subscribed {
                recovery: Recovery::Recovered { replayed: 2 },
                ..
            }
        ),
        "{reply:?}"
    );
    let gone = Position {
        epoch: 1,
        offset: 1,
    };
    let (reply, _) = late.subscribe_from("misc", Some(gone)).await?;
    assert!(
        matches!(
            reply,
            Event::Subscribed {
                recovery: Recovery::Failed,
                ..
            }
        ),
        "{reply:?}"
    );
    let page = server.metrics().await?;
    let resumes = |ns, result| {
        metric_sum(
            &page,
            "quiver_resumes_total",
            &[("namespace", ns), ("result", result)],
        )
    };
    // `chat.other` has no history from `first`'s epoch: failed as well.
    assert_eq!(
        metric_sum(
            &page,
            "quiver_resumes_requested_total",
            &[("namespace", "chat")]
        ),
        2.0
    );
    assert_eq!(resumes("chat", "recovered"), 1.0);
    assert_eq!(resumes("chat", "failed"), 1.0);
    assert_eq!(resumes("other", "failed"), 1.0);
    assert_eq!(resumes("other", "recovered"), 0.0);

    // The same user again, while its first session is open: a reconnect by the proxy's rule;
    // another user is not.
    assert_eq!(
        metric_sum(&page, "quiver_sessions_reopened_total", &[]),
        0.0
    );
    let again = Raw::connect(&server, &full_token("acme", "sub")).await?;
    let page = server.metrics().await?;
    assert_eq!(
        metric_sum(
            &page,
            "quiver_sessions_reopened_total",
            &[("transport", "webtransport")]
        ),
        1.0
    );

    // A closed WebTransport session leaves one sample of its path.
    again.conn().close(0u32.into(), b"");
    drop(again);
    let page = wait_metric(&server, "quiver_quic_rtt_seconds_count", &[], |n| n >= 1.0).await?;
    assert!(metric(&page, "quiver_quic_rtt_seconds_sum") > 0.0, "{page}");
    assert_eq!(
        metric(&page, "quiver_quic_lost_packets_count"),
        metric(&page, "quiver_quic_rtt_seconds_count")
    );

    // The process's own figures, read at scrape time.
    assert!(
        metric(&page, "process_resident_memory_bytes") > 0.0,
        "{page}"
    );
    assert!(metric(&page, "process_open_fds") > 0.0, "{page}");
    assert!(page.contains("process_cpu_seconds_total"), "{page}");

    // Every Quiver series says what it counts.
    for line in page.lines().filter(|l| l.starts_with("# TYPE quiver_")) {
        let name = line.split(' ').nth(2).unwrap_or_default();
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 20),
            "no HELP for {name}"
        );
    }
    // Each name is typed once: Prometheus refuses a page with two families of one name (the
    // hot paths' histograms are rendered apart from the recorder's series: nothing may record
    // under their names there too).
    let mut typed: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let all = typed.len();
    typed.sort_unstable();
    typed.dedup();
    assert_eq!(typed.len(), all, "a name typed twice:\n{page}");
    Ok(())
}
