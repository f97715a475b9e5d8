//! `nats.replicas` on a real three-node NATS cluster (outside audit 112, F5): with 3, losing
//! one nats-server (SIGKILL, the node leading the tenant's history stream) loses nothing Quiver
//! keeps in JetStream: the history published before is still read, new publications are kept,
//! presence still answers, a revocation is still stored and an instance started meanwhile
//! becomes ready and loads it. With 1 (every stream and bucket on one node), the history read
//! after the kill fails. And streams and buckets an earlier configuration made with one copy
//! are brought to the configured count.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::{Command, Event};
use quiver_server::config::{ApiKey, NamespaceConfig, NatsConfig};
use quiver_tests::nats_cluster::NatsCluster;
use quiver_tests::*;

const ADMIN: &str = "admin-key-0123456789abcdef0123456789";

/// How long JetStream and Quiver get to get over a lost node: stream and meta leader elections
/// (a few seconds), async-nats noticing its server gone (pings every 2 s, ~6 s) and
/// reconnecting to another.
const RECOVERY: Duration = Duration::from_secs(40);

/// An instance on `urls` with `replicas`, the history-and-presence namespace `h`, an API key.
fn on_cluster(urls: String, replicas: usize) -> impl Fn(&mut quiver_server::Config) {
    move |c| {
        let mut nats = NatsConfig::new(urls.clone());
        nats.replicas = Some(replicas);
        c.nats = Some(nats);
        c.namespaces.push(NamespaceConfig {
            name: "h".into(),
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            presence: true,
            ..Default::default()
        });
        c.api.keys = vec![ApiKey {
            key: ADMIN.into(),
            tenant: None,
        }];
    }
}

async fn jetstream(cluster: &NatsCluster) -> Result<async_nats::jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls().split(',').collect::<Vec<_>>())
        .await?;
    Ok(async_nats::jetstream::new(client))
}

/// The name of tenant `acme`'s history stream (`QUIVER_<len>_acme_h`).
async fn history_stream(js: &async_nats::jetstream::Context) -> Result<String> {
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let name = name?;
        if name.starts_with("QUIVER_") && name.ends_with("_acme_h") {
            return Ok(name);
        }
    }
    bail!("no history stream for acme")
}

/// The stream's copies and its leader (a node's `server_name`).
async fn replicas_and_leader(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<(usize, String)> {
    let mut stream = js.get_stream(stream).await?;
    let info = stream.info().await?;
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .with_context(|| format!("{} has no leader", info.config.name))?;
    Ok((info.config.num_replicas.max(1), leader))
}

async fn members(raw: &mut Raw, room: &str) -> Result<Vec<String>> {
    match raw.request(Command::Presence { room: room.into() }).await? {
        Event::Presence { members, .. } => Ok(members.into_iter().map(|m| m.user).collect()),
        other => bail!("presence: {other:?}"),
    }
}

/// Waits (bounded by [`RECOVERY`]) until `check` passes; its last error otherwise.
macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let deadline = tokio::time::Instant::now() + RECOVERY;
        loop {
            let outcome: Result<_> = async { $check }.await;
            match outcome {
                Ok(value) => break value,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => bail!("{} within {RECOVERY:?}: {e:#}", $what),
            }
        }
    }};
}

#[tokio::test]
async fn with_three_replicas_losing_a_nats_node_loses_nothing() -> Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let config = on_cluster(cluster.urls(), 3);
    let server = TestServer::start_with(&config).await?;
    wait_ready(&server).await?;
    let mut alice = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let _joined = alice.subscribe("h.room").await?;
    let before: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i])).collect();
    for payload in &before {
        alice.published("h.room", payload).await?;
    }
    let mut reader = Raw::connect(&server, &full_token("acme", "reader")).await?;
    assert_eq!(reader.whole_history("h.room").await?, before);
    // A presence listing on a bucket just made waits on JetStream's first consumer on it: on a
    // loaded machine that can take longer than the 3 s a listing is given.
    eventually!("presence before the kill", {
        let listed = members(&mut reader, "h.room").await?;
        ensure!(listed == ["alice"], "listed {listed:?}");
        Ok(())
    });

    // The node leading the stream is the one whose loss hurts: with one copy it is the only
    // one, and with three the others must elect a new leader.
    let js = jetstream(&cluster).await?;
    let stream = history_stream(&js).await?;
    let (_, leader) = replicas_and_leader(&js, &stream).await?;
    cluster.node_mut(&leader)?.kill();

    // What was published before is still read.
    eventually!(
        "the history published before the kill read back",
        match reader.whole_history("h.room").await {
            Ok(got) if got == before => Ok(()),
            Ok(got) => Err(anyhow::anyhow!("read {got:?}")),
            Err(e) => Err(e),
        }
    );
    // New publications are kept (a retried publish may store twice: only the last is checked).
    eventually!("a publication after the kill", {
        alice.published("h.room", &[9]).await.map(|_| ())
    });
    let after = reader.whole_history("h.room").await?;
    assert_eq!(after[..5], before[..], "{after:?}");
    assert_eq!(after.last(), Some(&Bytes::from_static(&[9])), "{after:?}");
    // Presence still answers, its members still listed.
    eventually!("presence after the kill", {
        let listed = members(&mut reader, "h.room").await?;
        ensure!(listed == ["alice"], "listed {listed:?}");
        Ok(())
    });
    // A revocation is still stored (the API answers 503 when it could not spread it)...
    let stolen = token_with_jti("acme", "mallory", "tok-stolen", 3600);
    let exp = quiver_server::auth::unix_now() + 3600;
    eventually!("a revocation after the kill", {
        let (status, body) = api_post(
            &server,
            "revoke",
            ADMIN,
            serde_json::json!({"tenant": "acme", "jti": "tok-stolen", "expires_at": exp}),
        )
        .await?;
        ensure!(status == 200, "{status}: {body}");
        Ok(())
    });
    // ...and an instance started meanwhile becomes ready (it loads the stored revocations and
    // opens the presence bucket first) and refuses the revoked token.
    let late = TestServer::start_with(&config).await?;
    wait_ready(&late).await?;
    ensure!(
        open_session(&late, &format!("/v1?token={stolen}"))
            .await
            .is_err(),
        "the instance started after the kill accepts a revoked token"
    );
    let mut other = Raw::connect(&late, &full_token("acme", "other")).await?;
    let read_there = other.whole_history("h.room").await?;
    assert_eq!(read_there, after);

    // Each still has three copies as JetStream sees them.
    for name in [stream.as_str(), "KV_quiver_presence", "KV_quiver_revoked"] {
        let (replicas, _) = replicas_and_leader(&js, name).await?;
        assert_eq!(replicas, 3, "{name}");
    }
    Ok(())
}

/// A deployment that ran with one copy and is restarted with `replicas = 3`: its history
/// stream and its buckets are brought to three copies, history kept.
#[tokio::test]
async fn streams_and_buckets_made_with_one_copy_are_brought_to_the_configured_count() -> Result<()>
{
    let cluster = NatsCluster::start().await?;
    let mut server = TestServer::start_with(on_cluster(cluster.urls(), 1)).await?;
    wait_ready(&server).await?;
    let mut alice = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let _joined = alice.subscribe("h.room").await?;
    alice.published("h.room", b"kept").await?;
    let js = jetstream(&cluster).await?;
    let stream = history_stream(&js).await?;
    for name in [stream.as_str(), "KV_quiver_presence", "KV_quiver_revoked"] {
        assert_eq!(replicas_and_leader(&js, name).await?.0, 1, "{name}");
    }
    drop(alice);

    server
        .restart_with(|c| {
            if let Some(nats) = &mut c.nats {
                nats.replicas = Some(3);
            }
        })
        .await?;
    wait_ready(&server).await?;
    let mut bob = Raw::connect(&server, &full_token("acme", "bob")).await?;
    let _joined = bob.subscribe("h.room").await?;
    assert_eq!(
        bob.whole_history("h.room").await?,
        [Bytes::from_static(b"kept")]
    );
    for name in [stream.as_str(), "KV_quiver_presence", "KV_quiver_revoked"] {
        assert_eq!(replicas_and_leader(&js, name).await?.0, 3, "{name}");
    }
    drop(bob);

    // Unset, nothing is lowered (review 118, F1: an upgrade with the default brought streams
    // an operator had raised by hand back to one copy).
    server
        .restart_with(|c| {
            if let Some(nats) = &mut c.nats {
                nats.replicas = None;
            }
        })
        .await?;
    wait_ready(&server).await?;
    let mut carol = Raw::connect(&server, &full_token("acme", "carol")).await?;
    let _joined = carol.subscribe("h.room").await?;
    assert_eq!(
        carol.whole_history("h.room").await?,
        [Bytes::from_static(b"kept")]
    );
    let (status, _) = api_post(
        &server,
        "revoke",
        ADMIN,
        serde_json::json!({
            "tenant": "acme",
            "jti": "unset-check",
            "expires_at": quiver_server::auth::unix_now() + 3600,
        }),
    )
    .await?;
    assert_eq!(status, 200);
    for name in [stream.as_str(), "KV_quiver_presence", "KV_quiver_revoked"] {
        assert_eq!(replicas_and_leader(&js, name).await?.0, 3, "{name}, unset");
    }
    Ok(())
}

/// More than one copy asked of a single nats-server (no cluster), which refuses every new
/// stream and bucket of more copies: said at start, naming the setting, so the operator does
/// not first learn it from failing history and presence.
#[tokio::test]
async fn replicas_on_a_single_nats_server_are_warned_about() -> Result<()> {
    let nats = quiver_tests::nats::NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        "[nats]\nreplicas = 3\n\n[[namespaces]]\nname = \"h\"\nhistory_size = 10\n\
         history_ttl = \"1m\"\n",
    )?;
    let server = quiver_tests::process::QuiverProcess::start(
        dir.path(),
        Some(&config),
        &["--nats", &nats.url()],
    )?;
    let stderr = || std::fs::read_to_string(dir.path().join("quiver-stderr.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stderr()?.contains("this NATS server is part of no cluster") {
        ensure!(
            std::time::Instant::now() < deadline,
            "no warning; stderr:\n{}",
            stderr()?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stderr()?.contains("replicas=3"), "{}", stderr()?);
    drop(server);
    Ok(())
}
