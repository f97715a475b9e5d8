//! What an instance's refresh of its cluster presence entries costs is on `/metrics`: the
//! entries it holds and how long its last refresh took (outside audit 101, F1: the refresh's
//! cost grows with the entries, and one longer than its period lets present members expire,
//! unannounced). One instance in this file: the metrics registry is process-wide.

use std::time::Duration;

use quiver_server::config::NamespaceConfig;
use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::*;

#[tokio::test]
async fn presence_entries_and_their_refresh_are_measured() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        clustered(&nats)(c);
        if let Some(nats) = &mut c.nats {
            // The shortest: a refresh every second.
            nats.presence_ttl = Duration::from_secs(3);
        }
        c.namespaces.push(NamespaceConfig {
            name: "p".into(),
            presence: true,
            ..Default::default()
        });
    })
    .await?;
    wait_ready(&server).await?;
    let (mut sessions, mut streams) = (Vec::new(), Vec::new());
    for (user, rooms) in [("ada", 3), ("bob", 2)] {
        let mut raw = Raw::connect(&server, &full_token("acme", user)).await?;
        for i in 0..rooms {
            streams.push(raw.subscribe(&format!("p.room{i}")).await?);
        }
        streams.push(raw.subscribe("live").await?);
        sessions.push(raw);
    }
    // Five entries (a room without presence holds none), refreshed within a second or so.
    let page = wait_metric(&server, "quiver_presence_entries", &[], |n| n == 5.0).await?;
    assert_eq!(metric(&page, "quiver_presence_entries"), 5.0, "{page}");
    let page = wait_metric(&server, "quiver_presence_refresh_seconds", &[], |s| s > 0.0).await?;
    let took = metric(&page, "quiver_presence_refresh_seconds");
    assert!(
        took > 0.0 && took < 1.0,
        "a refresh of 5 entries took {took} s"
    );
    drop((streams, sessions));
    Ok(())
}
