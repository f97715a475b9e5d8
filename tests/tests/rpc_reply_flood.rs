//! A tenant's backend flooding its own tenant's reply subjects (`quiver.<tenant>.reply.>`, which
//! a backend given `quiver.<tenant>.>` may publish on) never costs another tenant's backend its
//! answers: each tenant's replies come through a subscription of their own
//! (outside audit 129, F1: one subscription held every tenant's replies, the flood overflowed
//! it, another tenant's deny was dropped with the junk, its hook timed out and its namespace's
//! `fail_open` allowed what its backend denied). A hook whose answer may have been dropped by
//! its own tenant's full subscription is denied, not left to the fail rule. A backend given
//! `allow_responses` instead of publish rights (docs/deployment.md) cannot flood at all.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use quiver_client::{token_fixed, Client, ErrorCode};
use quiver_server::config::NatsConfig;
use quiver_server::rpc::HookConfig;
use quiver_tests::nats::NatsServer;
use quiver_tests::rpc::call_token;
use quiver_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Quiver's own user, and two tenants' backends, each confined to its tenant's subjects.
const CONFINED: &str = r#"
authorization {
  users = [
    { user: quiver, password: quiver-pw }
    { user: acme, password: acme-pw,
      permissions: { publish: "quiver.acme.>", subscribe: "quiver.acme.>" } }
    { user: evil, password: evil-pw,
      permissions: { publish: "quiver.evil.>", subscribe: "quiver.evil.>" } }
  ]
}
"#;

/// Messages in one burst: about 5 MB, far below what nats-server queues for a connection
/// before it drops it (64 MiB), and 50 times what a reply subscription holds.
const FLOOD: usize = 50_000;

/// Publishes [`FLOOD`] 100-byte messages on `subject` as the NATS user `user` (password
/// `<user>-pw`) on nats-server's `port`, pipelined in one write, then a `PING` answered:
/// nats-server has handed them all on to Quiver's connection, so a message published after
/// this (from any connection) reaches Quiver after the burst.
async fn burst(port: u16, user: &str, subject: &str) -> Result<()> {
    burst_of(port, user, subject, FLOOD, 100).await
}

/// [`burst`] with `count` messages of `size` bytes.
async fn burst_of(port: u16, user: &str, subject: &str, count: usize, size: usize) -> Result<()> {
    tokio::time::timeout(WAIT, burst_within(port, user, subject, count, size))
        .await
        .context("the flood took too long")?
}

async fn burst_within(
    port: u16,
    user: &str,
    subject: &str,
    count: usize,
    size: usize,
) -> Result<()> {
    let mut tcp =
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
    let mut line = String::new();
    tcp.read_line(&mut line).await?;
    anyhow::ensure!(line.starts_with("INFO"), "{line}");
    let body = "x".repeat(size);
    let mut flood = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"user\":\"{user}\",\"pass\":\"{user}-pw\"}}\r\n"
    );
    flood.push_str(&format!("PUB {subject} {}\r\n{body}\r\n", body.len()).repeat(count));
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

/// What a backend does with a hook request before it answers.
#[derive(Clone, Copy)]
enum Before {
    Nothing,
    /// Floods, as this tenant's NATS user, the tenant's reply subjects on the instance the
    /// request came from (what that user may publish on).
    Flood(&'static str),
    /// The same with large messages from [`CUTTERS`] connections at once, more than
    /// nats-server holds for Quiver's connection ([`CUT`]): it cuts that connection.
    Cut(&'static str),
}

/// nats-server's `max_pending` in [`another_tenants_flood_that_cuts_the_connection_never_turns_a_deny_into_an_allow`]: what it holds for a connection before it cuts
/// it as a slow consumer (64 MiB by default; less here, so a smaller flood does it).
const CUT: &str = "max_pending: 2MB";
/// Connections flooding at once in a [`Before::Cut`], each sending [`CUT_COUNT`] messages of
/// [`CUT_SIZE`] bytes: 40 MiB, 20 times nats-server's [`CUT`].
const CUTTERS: usize = 4;
const CUT_COUNT: usize = 40;
const CUT_SIZE: usize = 256 * 1024;

/// A tenant's publish-hook backend as the NATS user `user`: answers every hook `{"allow":
/// allow}` with reason "<user> says no", after doing `before` (told, per request, on
/// `orders`); every request's reply subject goes to `seen`.
async fn hook_backend(
    nats: &NatsServer,
    user: &'static str,
    allow: bool,
    mut orders: mpsc::UnboundedReceiver<Before>,
    seen: mpsc::UnboundedSender<String>,
) -> Result<(async_nats::Client, tokio::task::JoinHandle<()>)> {
    let client = tokio::time::timeout(
        WAIT,
        async_nats::ConnectOptions::with_user_and_password(user.into(), format!("{user}-pw"))
            .connect(nats.url()),
    )
    .await??;
    let mut requests = tokio::time::timeout(
        WAIT,
        client.queue_subscribe(format!("quiver.{user}.hook.>"), "backends".into()),
    )
    .await??;
    tokio::time::timeout(WAIT, client.flush()).await??;
    let responder = client.clone();
    let port = nats.port;
    let task = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply.clone() else {
                continue;
            };
            let _ = seen.send(reply.to_string());
            let before = orders.try_recv().unwrap_or(Before::Nothing);
            if let Before::Flood(tenant) = before {
                let instance = reply.split('.').nth(3).unwrap_or_default().to_owned();
                let subject = format!("quiver.{tenant}.reply.{instance}.junk");
                // Three bursts back to back; the answer goes once the first has reached the
                // instance, so it arrives in the middle of the flood.
                let (first, first_done) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let mut first = Some(first);
                    for _ in 0..3 {
                        if let Err(e) = burst(port, tenant, &subject).await {
                            eprintln!("flood: {e}");
                        }
                        if let Some(first) = first.take() {
                            let _ = first.send(());
                        }
                    }
                });
                let _ = first_done.await;
            }
            if let Before::Cut(tenant) = before {
                let instance = reply.split('.').nth(3).unwrap_or_default().to_owned();
                let subject = format!("quiver.{tenant}.reply.{instance}.junk");
                for _ in 0..CUTTERS {
                    let subject = subject.clone();
                    tokio::spawn(async move {
                        if let Err(e) = burst_of(port, tenant, &subject, CUT_COUNT, CUT_SIZE).await
                        {
                            eprintln!("flood: {e}");
                        }
                    });
                }
                // The answer goes as the flood fills what nats-server holds for Quiver.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let answer = serde_json::json!({"allow": allow, "reason": format!("{user} says no")});
            let _ = responder
                .publish(reply, Bytes::from(answer.to_string()))
                .await;
            let _ = responder.flush().await;
        }
    });
    Ok((client, task))
}

async fn server(nats: &NatsServer, timeout: Duration) -> Result<TestServer> {
    TestServer::start_with(|c| {
        let mut n = NatsConfig::new(nats.url());
        n.user = Some("quiver".into());
        n.password = Some("quiver-pw".into());
        c.nats = Some(n);
        c.rpc.hooks = vec![HookConfig {
            namespace: "pub".into(),
            subscribe: false,
            publish: true,
            timeout,
            // A failure is an allow here: only the backend's own deny keeps a publication out.
            fail_open: true,
        }];
    })
    .await
}

async fn connect(server: &TestServer, tenant: &str) -> Result<Client> {
    let token = call_token(tenant, "u", &[]);
    Ok(tokio::time::timeout(
        WAIT,
        Client::connect(client_config(server, token_fixed(token))),
    )
    .await??)
}

/// Publishes into `pub.x` until the hook's backend has been asked (its subscription reaches
/// nats-server on another connection); the first answer.
async fn publish_once_asked(
    client: &Client,
    seen: &mut mpsc::UnboundedReceiver<String>,
) -> Result<Result<(), quiver_client::ClientError>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let result = tokio::time::timeout(WAIT, client.publish_ack("pub.x", "hello"))
            .await?
            .map(|_| ());
        if seen.try_recv().is_ok() {
            return Ok(result);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the hook never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const DROPS: &str = "quiver_nats_slow_consumer_total";

/// acme and evil on one instance, each with a publish-hook backend (acme's denies, evil's
/// allows), each tenant's hook asked once: evil's backend has seen the instance's reply subject.
struct TwoTenants {
    server: TestServer,
    acme: Client,
    evil: Client,
    /// What acme's backend does before each answer.
    acme_orders: mpsc::UnboundedSender<Before>,
    _evil_orders: mpsc::UnboundedSender<Before>,
    _backends: [(async_nats::Client, tokio::task::JoinHandle<()>); 2],
}

async fn two_tenants(nats: &NatsServer, timeout: Duration) -> Result<TwoTenants> {
    let server = server(nats, timeout).await?;
    let (acme_orders, acme_rx) = mpsc::unbounded_channel();
    let (acme_seen_tx, mut acme_seen) = mpsc::unbounded_channel();
    let acme_backend = hook_backend(nats, "acme", false, acme_rx, acme_seen_tx).await?;
    let (evil_orders, evil_rx) = mpsc::unbounded_channel();
    let (evil_seen_tx, mut evil_seen) = mpsc::unbounded_channel();
    let evil_backend = hook_backend(nats, "evil", true, evil_rx, evil_seen_tx).await?;
    let evil = connect(&server, "evil").await?;
    let acme = connect(&server, "acme").await?;
    // evil's backend allows its own publication and has seen the instance's reply subject.
    publish_once_asked(&evil, &mut evil_seen)
        .await?
        .context("evil's own publication")?;
    let first = publish_once_asked(&acme, &mut acme_seen).await?;
    assert!(first.is_err(), "acme's backend denies: {first:?}");
    Ok(TwoTenants {
        server,
        acme,
        evil,
        acme_orders,
        _evil_orders: evil_orders,
        _backends: [acme_backend, evil_backend],
    })
}

async fn rpc_drops(server: &TestServer) -> Result<f64> {
    Ok(metric_sum(
        &server.metrics().await?,
        DROPS,
        &[("connection", "rpc")],
    ))
}

/// Rounds of the flood: each is one denied publication whose answer comes in the middle of a
/// flood.
const ROUNDS: usize = 8;

/// Tenant evil's backend floods its own reply subjects on acme's instance (it learns the
/// instance from its own hook's reply subject) just before acme's backend answers acme's
/// hook with a deny: the deny holds in a namespace that fails open.
#[tokio::test]
async fn another_tenants_reply_flood_never_turns_a_deny_into_an_allow() -> Result<()> {
    let nats = NatsServer::start_with_config(CONFINED).await?;
    // Generous: acme's answer, read behind the flood on the instance's one connection for
    // replies, is not late on a loaded machine (a timeout in a flood is denied too, but this
    // test is about acme's own answer being heard).
    let TwoTenants {
        server,
        acme,
        evil,
        acme_orders,
        // Bound, not `..`: the backends and evil's orders live to the test's end.
        _evil_orders,
        _backends,
    } = two_tenants(&nats, Duration::from_secs(5)).await?;

    let before = rpc_drops(&server).await?;
    for round in 0..ROUNDS {
        // As acme's backend answers, evil's NATS user floods evil's reply subjects on the
        // instance (learnt from its own hook's reply subject): acme's answer reaches the
        // instance in the middle of the flood.
        acme_orders.send(Before::Flood("evil"))?;
        let result = tokio::time::timeout(WAIT, acme.publish_ack("pub.x", "secret")).await?;
        match result {
            Ok(_) => bail!("round {round}: acme's backend denied, and the publication went out"),
            Err(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::PermissionDenied), "{e}");
                assert!(e.to_string().contains("acme says no"), "round {round}: {e}");
            }
        }
    }
    // The floods did overflow a subscription of the instance's: evil's own.
    let drops = rpc_drops(&server).await? - before;
    assert!(drops > 0.0, "the flood dropped nothing: not a test");
    tokio::time::timeout(WAIT, acme.close()).await?;
    tokio::time::timeout(WAIT, evil.close()).await?;
    Ok(())
}

/// A tenant's own backend floods its tenant's reply subjects before it answers: its answer may
/// be dropped by the tenant's full subscription, which is not the backend failing to answer,
/// so the hook is denied ("this instance dropped the tenant's replies"), never allowed by
/// `fail_open`.
#[tokio::test]
async fn a_hook_whose_answer_may_have_been_dropped_here_is_denied() -> Result<()> {
    let nats = NatsServer::start_with_config(CONFINED).await?;
    let server = server(&nats, Duration::from_secs(2)).await?;
    let (acme_orders, acme_rx) = mpsc::unbounded_channel();
    let (acme_seen_tx, mut acme_seen) = mpsc::unbounded_channel();
    let (_acme, _a) = hook_backend(&nats, "acme", false, acme_rx, acme_seen_tx).await?;
    let acme = connect(&server, "acme").await?;
    let first = publish_once_asked(&acme, &mut acme_seen).await?;
    assert!(first.is_err(), "acme's backend denies: {first:?}");

    let before = rpc_drops(&server).await?;
    let mut dropped_here = 0;
    for round in 0..ROUNDS {
        acme_orders.send(Before::Flood("acme"))?;
        let result = tokio::time::timeout(WAIT, acme.publish_ack("pub.x", "secret")).await?;
        match result {
            Ok(_) => bail!("round {round}: acme's backend denied, and the publication went out"),
            Err(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::PermissionDenied), "{e}");
                let text = e.to_string();
                if text.contains("dropped the tenant's replies") {
                    dropped_here += 1;
                } else {
                    assert!(text.contains("acme says no"), "round {round}: {text}");
                }
            }
        }
    }
    let drops = rpc_drops(&server).await? - before;
    eprintln!("{dropped_here} of {ROUNDS} answers dropped here, {drops} drops counted");
    // The path this is about was taken (review 130, R3: it passed when no answer was dropped).
    assert!(dropped_here > 0, "no answer was dropped here: not a test");
    assert!(drops > 0.0, "the flood dropped nothing: not a test");
    tokio::time::timeout(WAIT, acme.close()).await?;
    Ok(())
}

/// Rounds of [`another_tenants_flood_that_cuts_the_connection_never_turns_a_deny_into_an_allow`]:
/// it stops after the first whose answer was lost with the connection.
const CUT_ROUNDS: usize = 6;

async fn rpc_disconnects(server: &TestServer) -> Result<f64> {
    Ok(metric_sum(
        &server.metrics().await?,
        "quiver_nats_disconnects_total",
        &[("connection", "rpc")],
    ))
}

/// Tenant evil's backend floods its reply subjects on acme's instance with large messages, so
/// hard that nats-server cuts Quiver's connection for replies (its `max_pending`) and the
/// client reconnects at once, as acme's backend answers acme's hook with a deny: that answer is
/// lost with the connection, and the hook is denied, not allowed by `fail_open` as if the
/// backend had never answered (review 130, R1: it was a plain timeout, and allowed).
#[tokio::test]
async fn another_tenants_flood_that_cuts_the_connection_never_turns_a_deny_into_an_allow(
) -> Result<()> {
    let nats = NatsServer::start_with_config(&format!("{CUT}\n{CONFINED}")).await?;
    let TwoTenants {
        server,
        acme,
        evil,
        acme_orders,
        // Bound, not `..`: the backends and evil's orders live to the test's end.
        _evil_orders,
        _backends,
    } = two_tenants(&nats, Duration::from_secs(2)).await?;

    let before = rpc_disconnects(&server).await?;
    let mut lost = 0;
    for round in 0..CUT_ROUNDS {
        acme_orders.send(Before::Cut("evil"))?;
        let result = tokio::time::timeout(WAIT, acme.publish_ack("pub.x", "secret")).await?;
        match result {
            Ok(_) => bail!("round {round}: acme's backend denied, and the publication went out"),
            Err(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::PermissionDenied), "{e}");
                let text = e.to_string();
                if text.contains("connection for replies was lost") {
                    lost += 1;
                    break;
                }
                assert!(text.contains("acme says no"), "round {round}: {text}");
            }
        }
        // The flood's last connections finish before the next round.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cut = rpc_disconnects(&server).await? - before;
    eprintln!("{lost} answers lost with the connection, {cut} disconnects");
    assert!(
        cut > 0.0,
        "nats-server never cut the connection: not a test"
    );
    // Whether a cut takes an answer with it is timing: on a loaded machine most runs lose one
    // (and the hook is denied "lost with the connection"), on an idle one the answers beat the
    // cuts (a fresh run: 17 cuts, no answer lost), so only the cuts are required; the deny held
    // in every round either way.
    tokio::time::timeout(WAIT, acme.close()).await?;
    tokio::time::timeout(WAIT, evil.close()).await?;
    Ok(())
}

/// The NATS permissions docs/deployment.md gives a backend that only answers: subscribe on its
/// tenant's rpc and hook subjects, `allow_responses` and no publish right. It answers its hooks,
/// and nats-server refuses its flood of its tenant's reply subjects.
#[tokio::test]
async fn a_backend_with_allow_responses_answers_and_cannot_flood() -> Result<()> {
    let nats = NatsServer::start_with_config(
        r#"
authorization {
  users = [
    { user: quiver, password: quiver-pw }
    { user: acme, password: acme-pw,
      permissions: { subscribe: ["quiver.acme.rpc.>", "quiver.acme.hook.>"],
                     publish: { deny: ">" },
                     allow_responses: true } }
  ]
}
"#,
    )
    .await?;
    let server = server(&nats, Duration::from_secs(2)).await?;
    let (_orders, acme_rx) = mpsc::unbounded_channel();
    let (acme_seen_tx, mut acme_seen) = mpsc::unbounded_channel();
    let (_acme, _a) = hook_backend(&nats, "acme", false, acme_rx, acme_seen_tx).await?;
    let acme = connect(&server, "acme").await?;
    let first = publish_once_asked(&acme, &mut acme_seen).await?;
    let e = first.err().context("acme's backend denies")?;
    assert!(
        e.to_string().contains("acme says no"),
        "its answer came: {e}"
    );
    // Its next request's reply subject names the instance, as the auditor's backend learnt it.
    let result = tokio::time::timeout(WAIT, acme.publish_ack("pub.x", "again")).await?;
    assert!(result.is_err(), "{result:?}");
    let reply = tokio::time::timeout(WAIT, acme_seen.recv())
        .await?
        .context("the backend saw the request")?;
    let instance = reply
        .split('.')
        .nth(3)
        .context("an instance in the reply subject")?;
    let flood = burst(
        nats.port,
        "acme",
        &format!("quiver.acme.reply.{instance}.junk"),
    )
    .await;
    let refused = flood.expect_err("nats-server took the flood").to_string();
    assert!(refused.contains("Permissions Violation"), "{refused}");
    tokio::time::timeout(WAIT, acme.close()).await?;
    Ok(())
}
