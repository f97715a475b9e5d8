//! A tenant's backend flooding the NATS subjects every instance reads (outside cluster audit
//! 112, F2 and F4). Its NATS user is confined to its own tenant's subjects, as
//! docs/deployment.md allows (`quiver.<tenant>.>`); what it floods an instance drops from a
//! full subscription, counts (`quiver_nats_slow_consumer_total{connection}`), and makes up for
//! where it matters: another tenant's revocation is never lost, and a room's subscription holds
//! a bounded number of messages rather than 65,536 of any size.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quiver_proto::{CloseCode, Command, Event, TenantId};
use quiver_server::config::NatsConfig;
use quiver_tests::nats::NatsServer;
use quiver_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Quiver's own NATS user, and tenant `evil`'s backend, confined to its tenant's subjects.
const CONFINED: &str = r#"
authorization {
  users = [
    { user: quiver, password: quiver-pw }
    { user: evil, password: evil-pw,
      permissions: { publish: "quiver.evil.>", subscribe: "quiver.evil.>" } }
  ]
}
"#;

fn instance(nats: &NatsServer) -> impl FnOnce(&mut quiver_server::Config) + '_ {
    move |c| {
        let mut n = NatsConfig::new(nats.url());
        n.user = Some("quiver".into());
        n.password = Some("quiver-pw".into());
        c.nats = Some(n);
    }
}

/// Publishes `body` on `subject` `n` times as the NATS user `evil`, all pipelined in one
/// write with no `PING` between them, then a `PING` answered: nats-server has taken them all
/// and queued them to the subscribers' connections, so a message published after this call
/// (from any connection) reaches an instance after the whole burst. The instance's reader takes
/// a burst faster than its subscription's task can use it, so the subscription fills and stays
/// full to the burst's end.
async fn burst(nats: &NatsServer, subject: &str, body: &str, n: usize) -> Result<()> {
    let port: u16 = nats
        .url()
        .rsplit(':')
        .next()
        .context("a NATS URL with a port")?
        .parse()?;
    let mut tcp =
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
    let mut line = String::new();
    tcp.read_line(&mut line).await?;
    anyhow::ensure!(line.starts_with("INFO"), "{line}");
    let login = r#"CONNECT {"verbose":false,"pedantic":false,"user":"evil","pass":"evil-pw"}"#;
    let mut flood = format!("{login}\r\n");
    flood.push_str(&format!("PUB {subject} {}\r\n{body}\r\n", body.len()).repeat(n));
    flood.push_str("PING\r\n");
    tcp.get_mut().write_all(flood.as_bytes()).await?;
    loop {
        line.clear();
        tokio::time::timeout(WAIT, tcp.read_line(&mut line)).await??;
        match line.trim_end() {
            "PONG" => return Ok(()),
            l if l.starts_with("-ERR") => bail!("nats-server refused the flood: {l}"),
            _ => {}
        }
    }
}

async fn goodbye(raw: &mut Raw) -> Result<u16> {
    loop {
        if let Event::Goodbye { code, .. } = raw.recv().await?.event {
            return Ok(code);
        }
    }
}

/// `name{connection}` on `server`'s page (the metrics registry is process-wide: every server
/// this test started counts there).
async fn count(server: &TestServer, name: &str, connection: &str) -> Result<f64> {
    let page = server.metrics().await?;
    Ok(metric_sum(&page, name, &[("connection", connection)]))
}

/// Control messages in a flood: about 6 MB, far below what nats-server queues for a
/// connection before it drops it (`max_pending`, 64 MiB).
const FLOOD: usize = 50_000;

const DROPS: &str = "quiver_nats_slow_consumer_total";
const LOSSES: &str = "quiver_nats_disconnects_total";
const LOADS: &str = "quiver_revocation_loads_total";

/// The loads of the stored revocations `server`'s page counts (process-wide, like the rest).
async fn loads(server: &TestServer) -> Result<f64> {
    Ok(metric_sum(&server.metrics().await?, LOADS, &[]))
}

/// Waits (at most `within`) until `connection`'s drops on `server`'s page are above `before`;
/// returns how many more there are.
async fn drops_counted(
    server: &TestServer,
    connection: &str,
    before: f64,
    within: Duration,
) -> Result<f64> {
    let deadline = Instant::now() + within;
    loop {
        let drops = count(server, DROPS, connection).await? - before;
        if drops > 0.0 || Instant::now() >= deadline {
            return Ok(drops);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Revokes `jti` of tenant `acme` as another instance's `POST /api/v1/revoke` does
/// (`control.rs`): stored in the bucket first; the broadcast on the tenant's revoke subject is
/// returned, to be published (with [`broadcast`]) at the moment the test chooses.
async fn store_revocation(nats: &NatsServer, jti: &str) -> Result<(async_nats::Client, Vec<u8>)> {
    let quiver =
        async_nats::ConnectOptions::with_user_and_password("quiver".into(), "quiver-pw".into())
            .connect(nats.url())
            .await?;
    let js = async_nats::jetstream::new(quiver.clone());
    let store = js.get_key_value("quiver_revoked").await?;
    let key = quiver_server::revocation::key(&TenantId::parse("acme")?, jti);
    let until = quiver_server::auth::unix_now() + 3600;
    store.put(&key, until.to_string().into()).await?;
    let body = serde_json::to_vec(&serde_json::json!({"key": key, "until": until}))?;
    Ok((quiver, body))
}

async fn broadcast(quiver: &async_nats::Client, body: Vec<u8>) -> Result<()> {
    quiver
        .publish("quiver.acme.control.revoke", body.into())
        .await?;
    quiver.flush().await?;
    Ok(())
}

/// Tenant `evil` floods `subject` with `body` on an instance holding tenant `acme`'s session
/// with the token `stolen`, which is revoked elsewhere meanwhile (stored before the flood,
/// broadcast right behind it). The session must end and the token open no session here,
/// whatever the flood made the instance drop (some drops counted); and the control connection
/// was never lost (a reconnect loads the revocations again by itself, which would hide a lost
/// broadcast). Without the fixes the broadcast was among the dropped, nearly every run.
/// `reloads`: whether the drops make the instance load the stored revocations again (only
/// drops of revocations do).
async fn a_revocation_survives_a_flood_of(
    subject: &str,
    body: String,
    reloads: bool,
) -> Result<()> {
    let nats = NatsServer::start_with_config(CONFINED).await?;
    let mut server = TestServer::start_with(instance(&nats)).await?;
    let stolen = token_with_jti("acme", "alice", "stolen", 3600);
    let mut alice = Raw::connect(&server, &stolen).await?;
    // Other sessions on the instance: each control message looks through them all (under the
    // registry's lock), which is what makes a flood cost more to apply than to read.
    let mut bystanders = Vec::new();
    for i in 0..150 {
        let token = full_token("bystander", &format!("u{i}"));
        bystanders.push(Raw::connect_via(Via::WebSocket, &server, &token).await?);
    }
    // The control plane subscribes as the instance starts; give NATS a moment to register it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (drops_before, losses_before, loads_before) = (
        count(&server, DROPS, "control").await?,
        count(&server, LOSSES, "control").await?,
        loads(&server).await?,
    );

    let (quiver, revocation) = store_revocation(&nats, "stolen").await?;
    burst(&nats, subject, &body, FLOOD).await?;
    // Right behind the flood: it reaches the instance while the flood's last messages fill
    // the subscription, if it shares it.
    broadcast(&quiver, revocation).await?;
    let code = tokio::time::timeout(Duration::from_secs(5), goodbye(&mut alice))
        .await
        .with_context(|| {
            format!(
                "{subject}: the session using the revoked token is still open 5 s after the flood"
            )
        })??;
    assert_eq!(code, CloseCode::Disconnected.as_u16());
    assert!(
        open_session(&server, &format!("/v1?token={stolen}"))
            .await
            .is_err(),
        "{subject}: a new session with the revoked token was admitted"
    );
    let drops = drops_counted(&server, "control", drops_before, Duration::from_secs(5)).await?;
    assert!(
        drops > 0.0,
        "{subject}: the flood of {FLOOD} messages made no drop counted on the control connection"
    );
    if reloads {
        // The revocation was stored before the flood: the first load catches it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while loads(&server).await? == loads_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            loads(&server).await? > loads_before,
            "{subject}: revocations dropped, and the stored ones not loaded again"
        );
    } else {
        // The instance looks for drops once a second: give it two looks and a load's time.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(
            loads(&server).await? - loads_before,
            0.0,
            "{subject}: no revocation was dropped, and the whole store was loaded again (review 113, F1)"
        );
    }
    assert_eq!(
        count(&server, LOSSES, "control").await? - losses_before,
        0.0,
        "{subject}: the control connection was lost (a reconnect reloads the revocations by itself)"
    );
    drop(bystanders);
    server.stop().await;
    Ok(())
}

/// A room's NATS subscription holds a bounded number of messages (about 256 MiB of
/// `max_payload`-sized ones: 4,369 at the defaults), not async-nats's 65,536 of any size:
/// `evil` pipelining 30,000 messages into a room with subscribers here, faster than the room's
/// task fans them out, makes the instance drop (and count) some. Before, all 30,000 were
/// buffered: with 60 KB messages, 1.8 GB for one room.
async fn a_rooms_subscription_holds_a_bounded_number_of_messages() -> Result<()> {
    let nats = NatsServer::start_with_config(CONFINED).await?;
    let mut server = TestServer::start_with(|c| {
        instance(&nats)(c);
        // The subscribers keep every frame queued (they never read): the room's task does
        // the whole fan-out for each message, and no subscription ends meanwhile.
        c.limits.subscriber_queue = 100_000;
        c.limits.session_queue_bytes = 64 << 20;
    })
    .await?;
    let mut subscribers = Vec::new();
    for i in 0..50 {
        let mut raw = Raw::connect_via(
            Via::WebSocket,
            &server,
            &full_token("evil", &format!("u{i}")),
        )
        .await?;
        let reply = raw
            .request(Command::Subscribe {
                room: "r".into(),
                resume: None,
            })
            .await?;
        assert!(matches!(reply, Event::Subscribed { .. }), "{reply:?}");
        subscribers.push(raw);
    }
    let (drops_before, losses_before) = (
        count(&server, DROPS, "broker").await?,
        count(&server, LOSSES, "broker").await?,
    );
    burst(&nats, "quiver.evil.room.r", &"p".repeat(64), 30_000).await?;
    let drops = drops_counted(&server, "broker", drops_before, Duration::from_secs(10)).await?;
    assert!(
        drops > 0.0,
        "30,000 messages pipelined into a room with 50 subscribers: none dropped, all buffered"
    );
    assert_eq!(
        count(&server, LOSSES, "broker").await? - losses_before,
        0.0,
        "the broker's connection was lost: nats-server, not the instance, dropped the flood"
    );
    drop(subscribers);
    server.stop().await;
    Ok(())
}

/// The three floods one after another: the metrics registry is process-wide, so tests run
/// side by side would count each other's drops and losses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_nats_flood_is_bounded_and_loses_no_revocation() -> Result<()> {
    // The audit's case (F2): `evil` floods its own disconnect subject with well-formed
    // disconnects. Revocations have a subscription of their own, so the broadcast is not
    // among the dropped (it was: one subscription read every tenant's `quiver.*.control.*`),
    // and what is dropped is no reason to load the whole store again (review 113, F1: every
    // instance did, once a second for as long as the flood lasted, which also hid a lost
    // broadcast from this test).
    let disconnect = serde_json::json!({
        "selector": {"user": "nobody"},
        "reason": "x".repeat(40),
    });
    a_revocation_survives_a_flood_of(
        "quiver.evil.control.disconnect",
        disconnect.to_string(),
        false,
    )
    .await?;
    // `evil` floods its own revoke subject with well-formed revocations of its own tokens, so
    // `acme`'s broadcast shares the full subscription and can be dropped: the drop makes the
    // instance load the stored revocations again, and the token is revoked here all the same
    // (before, only a reconnect did).
    let key = quiver_server::revocation::key(&TenantId::parse("evil")?, "its-own");
    let until = quiver_server::auth::unix_now() + 3600;
    let revoke = serde_json::json!({"key": key, "until": until});
    a_revocation_survives_a_flood_of("quiver.evil.control.revoke", revoke.to_string(), true)
        .await?;
    // F4.
    a_rooms_subscription_holds_a_bounded_number_of_messages().await
}
