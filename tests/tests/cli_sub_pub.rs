//! `quiver sub` and `quiver pub` as processes against a real server: what they print, how they
//! publish (--count, --rate, stdin), and what `sub` says when it reconnects.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quiver_server::config::{NamespaceConfig, NatsConfig};
use quiver_tests::nats::NatsServer;
use quiver_tests::process::{cli_command as command, pub_while_its_server_dies, quiver_command};
use quiver_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

struct Sub {
    _child: Child,
    out: Lines<BufReader<ChildStdout>>,
    err: Lines<BufReader<ChildStderr>>,
}

impl Sub {
    /// `quiver sub EXTRA...`, once it says it is subscribed.
    async fn start(server: &TestServer, token: &str, extra: &[&str]) -> Result<Self> {
        let mut child = command(server, "sub", token)?
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let err = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let mut sub = Self {
            _child: child,
            out,
            err,
        };
        sub.stderr_until("quiver: subscribed to").await?;
        Ok(sub)
    }

    async fn line(&mut self) -> Result<String> {
        match tokio::time::timeout(WAIT, self.out.next_line()).await?? {
            Some(line) => Ok(line),
            None => bail!("quiver sub ended"),
        }
    }

    /// Stderr lines up to and including the first containing `needle`.
    async fn stderr_until(&mut self, needle: &str) -> Result<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(WAIT * 3, self.err.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                _ => bail!("no {needle:?} on stderr; saw {seen:#?}"),
            }
        }
    }
}

/// `quiver pub ARGS` with `stdin`; exit status and stderr.
async fn publish(
    server: &TestServer,
    token: &str,
    args: &[&str],
    stdin: &str,
) -> Result<(bool, String)> {
    let mut child = command(server, "pub", token)?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn sub_prints_the_room_with_each_message_and_json() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let mut several = Sub::start(&server, &token, &["a.one", "a.two"]).await?;
    let mut single = Sub::start(&server, &token, &["a.one"]).await?;
    let mut json = Sub::start(&server, &token, &["--format", "json", "a.one", "a.two"]).await?;
    for (room, message) in [("a.one", "hello"), ("a.two", "wor ld")] {
        let (ok, err) = publish(&server, &token, &[room, message], "").await?;
        assert!(ok, "{err}");
    }
    let mut lines = vec![several.line().await?, several.line().await?];
    lines.sort();
    assert_eq!(lines, ["a.one\thello", "a.two\twor ld"]);
    // One room: the payload alone, as before.
    assert_eq!(single.line().await?, "hello");
    let mut objects = Vec::new();
    for _ in 0..2 {
        objects.push(serde_json::from_str::<serde_json::Value>(
            &json.line().await?,
        )?);
    }
    objects.sort_by_key(|o| o["room"].as_str().map(str::to_owned));
    assert_eq!(
        objects,
        [
            serde_json::json!({"room": "a.one", "position": null, "payload": "hello"}),
            serde_json::json!({"room": "a.two", "position": null, "payload": "wor ld"}),
        ]
    );
    // A payload that is not UTF-8 is given in base64.
    let client = quiver_client::Client::connect(client_config(
        &server,
        quiver_client::token_fixed(token.clone()),
    ))
    .await?;
    client.publish_ack("a.two", vec![0xff, 0x00, 0x41]).await?;
    client.close().await;
    let binary: serde_json::Value = serde_json::from_str(&json.line().await?)?;
    assert_eq!(
        binary,
        serde_json::json!({"room": "a.two", "position": null, "payload_base64": "/wBB"})
    );
    Ok(())
}

/// A payload is text anyone allowed to publish in the room chose: in `text` mode its control
/// characters are escaped, so it stays one line of its own room and writes no escape to the
/// terminal (outside audit 111, F2: `p\na.y\tforged` printed a second line that read as a
/// publication in `a.y`). `--format json` keeps the exact payload.
#[tokio::test]
async fn sub_text_output_keeps_one_line_per_publication() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let mut several = Sub::start(&server, &token, &["a.x", "a.y"]).await?;
    let mut single = Sub::start(&server, &token, &["a.x"]).await?;
    let mut json = Sub::start(&server, &token, &["--format", "json", "a.x"]).await?;
    let client = quiver_client::Client::connect(client_config(
        &server,
        quiver_client::token_fixed(token.clone()),
    ))
    .await?;
    let forged = "p\na.y\tforged \u{1b}[31mred\r";
    client.publish_ack("a.x", forged).await?;
    client.publish_ack("a.x", vec![0xff, b'\n', b'z']).await?;
    // What follows shows that nothing above printed a line of its own.
    client.publish_ack("a.x", "next").await?;
    client.close().await;
    for (sub, prefix) in [(&mut several, "a.x\t"), (&mut single, "")] {
        assert_eq!(
            sub.line().await?,
            format!("{prefix}p\\na.y\\tforged \\u{{1b}}[31mred\\r")
        );
        assert_eq!(sub.line().await?, format!("{prefix}\\xff\\nz"));
        assert_eq!(sub.line().await?, format!("{prefix}next"));
    }
    let exact: serde_json::Value = serde_json::from_str(&json.line().await?)?;
    assert_eq!(exact["payload"], forged);
    Ok(())
}

#[tokio::test]
async fn pub_count_rate_and_stdin() -> Result<()> {
    let server = TestServer::start().await?;
    let token = token("acme", "cli", &["b.>"], &["b.x"], 3600);
    let mut sub = Sub::start(&server, &token, &["b.x"]).await?;

    let (ok, err) = publish(&server, &token, &["b.x", "m{seq}", "--count", "5"], "").await?;
    assert!(ok, "{err}");
    assert!(err.contains("published 5 messages to b.x"), "{err}");
    for n in 1..=5 {
        assert_eq!(sub.line().await?, format!("m{n}"));
    }

    let (ok, err) = publish(&server, &token, &["b.x"], "l1\nl2\n\nl4\n").await?;
    assert!(ok, "{err}");
    for expected in ["l1", "l2", "", "l4"] {
        assert_eq!(sub.line().await?, expected);
    }

    // 4 messages at 20 per second: three waits of 50 ms between them at the least.
    let started = Instant::now();
    let (ok, err) = publish(
        &server,
        &token,
        &["b.x", "r{seq}", "--count", "4", "--rate", "20"],
        "",
    )
    .await?;
    assert!(ok, "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "--rate was not applied"
    );
    for n in 1..=4 {
        assert_eq!(sub.line().await?, format!("r{n}"));
    }

    // Refusals: by the server (no publish permission), and of flags that make no sense.
    let (ok, err) = publish(&server, &token, &["b.y", "nope"], "").await?;
    assert!(!ok);
    assert!(err.contains("publish to b.y"), "{err}");
    let (ok, err) = publish(&server, &token, &["b.x", "--count", "2"], "x\n").await?;
    assert!(!ok);
    assert!(err.contains("--count"), "{err}");
    let (ok, err) = publish(&server, &token, &["b.x", "x", "--rate", "0"], "").await?;
    assert!(!ok);
    assert!(err.contains("--rate"), "{err}");
    Ok(())
}

/// `pub --unreliable`: datagrams to a `latest` room reach a real `quiver sub`; a room that is
/// not `latest` and a session without datagrams (WebSocket) are refused up front, because the
/// server drops a refused datagram without a word.
#[tokio::test]
async fn pub_unreliable_sends_datagrams_to_latest_rooms() -> Result<()> {
    let server = TestServer::start_with(|c| {
        add_latest_namespace(c, "game");
    })
    .await?;
    let token = full_token("acme", "cli");
    let mut sub = Sub::start(&server, &token, &["game.pos"]).await?;
    let received = |page: &str| metric_sum(page, "quiver_datagrams_received_total", &[]);
    let before = received(&server.metrics().await?);
    let (ok, err) = publish(
        &server,
        &token,
        &[
            "--unreliable",
            "game.pos",
            "p{seq}",
            "--count",
            "3",
            "--rate",
            "20",
        ],
        "",
    )
    .await?;
    assert!(ok, "{err}");
    assert!(err.contains("sent 3 messages to game.pos"), "{err}");
    // A `latest` room promises the newest value, not every one: what arrives is in order and
    // ends with the last (nothing is lost on loopback).
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("p3") {
        seen.push(sub.line().await?);
    }
    assert!(
        seen.iter()
            .all(|l| ["p1", "p2", "p3"].contains(&l.as_str())),
        "{seen:?}"
    );
    // They came as datagrams (the registry is shared by the process: at least ours).
    let after = received(&server.metrics().await?);
    assert!(
        after - before >= 3.0,
        "datagrams received {before} -> {after}"
    );

    let (ok, err) = publish(&server, &token, &["--unreliable", "live.pos", "x"], "").await?;
    assert!(!ok);
    assert!(
        err.contains("live.pos is not in a `latest` namespace"),
        "{err}"
    );

    let out = tokio::time::timeout(
        WAIT,
        Command::from(quiver_command(server.dir.path())?)
            .args(["pub", "--transport", "websocket", "--ws-url"])
            .arg(format!("ws://{}/v1/ws", server.http))
            .args(["--token", &token, "--unreliable", "game.pos", "x"])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--unreliable needs QUIC datagrams"), "{err}");
    Ok(())
}

/// `pub --unreliable` whose stdin has a bad line after good ones: it fails on the bad line, and
/// the good lines' datagrams still go out, the last one included, so the subscriber of the
/// `latest` room ends with it. quinn sends queued datagrams with its next packets and closing
/// the connection discards what is still queued, so `pub` flushes before it closes on every
/// path (review 127, R5: the bad line returned before the ping, and the datagrams before it were
/// dropped). A burst of lines is over the command rate: the client paces datagrams with its
/// commands and holds the room's newest value for the pacer, which `pub` must wait for (h9: a
/// ping alone went ahead of it, and the close dropped it: the subscriber's last value was the
/// burst's 8th line of 200).
#[tokio::test]
async fn pub_unreliable_sends_what_came_before_a_bad_line() -> Result<()> {
    unreliable_burst(200, true, 20).await
}

/// A burst of 200 lines over the command rate (20 a second), each a datagram: `pub` exits 0
/// having sent them all, and the subscriber's last value is the last line (the room's newest,
/// held for the pacer, goes before the close).
#[tokio::test]
async fn pub_unreliable_burst_ends_with_its_last_line() -> Result<()> {
    unreliable_burst(200, false, 20).await
}

/// The same burst with the command rate far above it (nothing held for the pacer): the server
/// reads the datagrams it has received before it takes the control stream's end (the client's
/// close) as the session's end (before, the subscriber's last value was line 13 to 73 of 200:
/// `server/src/transport/webtransport.rs`, `take_datagrams_left`).
#[tokio::test]
async fn pub_unreliable_burst_under_a_high_rate_ends_with_its_last_line() -> Result<()> {
    unreliable_burst(200, false, 1_000_000).await
}

/// Pipes `good` lines (and a line that is not UTF-8 after them, if `bad_line`) into
/// `pub --unreliable game.bad` against a server allowing `rate` commands a second; the
/// subscriber of the room must end with the last good line.
async fn unreliable_burst(good: usize, bad_line: bool, rate: u32) -> Result<()> {
    let server = TestServer::start_with(|c| {
        add_latest_namespace(c, "game");
        c.limits.commands_per_second = rate;
    })
    .await?;
    let token = full_token("acme", "cli");
    let mut sub = Sub::start(&server, &token, &["game.bad"]).await?;
    let mut child = command(&server, "pub", &token)?
        .args(["--unreliable", "game.bad"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = Vec::new();
    for n in 1..=good {
        input.extend_from_slice(format!("good line {n}\n").as_bytes());
    }
    if bad_line {
        input.extend_from_slice(b"\xff\n");
    }
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(&input).await?;
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    let err = String::from_utf8_lossy(&out.stderr);
    if bad_line {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("line {}: not UTF-8", good + 1)),
            "{err}"
        );
    } else {
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains(&format!("sent {good} messages to game.bad")),
            "{err}"
        );
    }
    // A `latest` room promises the newest value: the last good line comes (a few datagrams on
    // loopback are not lost), whatever came before it.
    let last = format!("good line {good}");
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        match sub.line().await {
            Ok(line) => seen.push(line),
            Err(e) => {
                let page = server.metrics().await?;
                let counts: Vec<_> = page
                    .lines()
                    .filter(|l| l.starts_with("quiver_datagrams_") && !l.ends_with(" 0"))
                    .collect();
                bail!(
                    "{e}: the last good line never came; got {} lines, the last {:?}; pub \
                     said:\n{err}\nthe process's datagram counts: {counts:?}",
                    seen.len(),
                    seen.last()
                )
            }
        }
    }
    Ok(())
}

/// On NATS (history survives a server restart): after the server restarts, `sub` says the
/// connection was lost, that it reconnected, and per room whether recovery worked.
#[tokio::test]
async fn sub_reports_reconnects_and_recovery() -> Result<()> {
    let nats = NatsServer::start().await?;
    let mut server = TestServer::start_with(|c| {
        c.nats = Some(NatsConfig::new(nats.url()));
        c.namespaces = vec![NamespaceConfig {
            name: "h".into(),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        }];
    })
    .await?;
    let token = full_token("acme", "cli");
    let mut sub = Sub::start(
        &server,
        &token,
        &["--format", "json", "h.room", "live.room"],
    )
    .await?;
    let (ok, err) = publish(&server, &token, &["h.room", "before"], "").await?;
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(&sub.line().await?)?;
    assert_eq!(first["payload"], "before");
    // Positions are strings: u64 epochs do not survive JSON numbers in JavaScript.
    assert!(first["position"]["epoch"].is_string(), "{first}");

    server.restart().await?;
    let mut seen = sub.stderr_until("reconnected over webtransport").await?;
    let lost = seen.iter().any(|l| l.contains("connection lost"));
    seen.extend(sub.stderr_until("live.room:").await?);
    let text = seen.join("\n");
    assert!(lost, "{text}");
    if !text.contains("h.room: recovered") {
        seen.extend(sub.stderr_until("h.room:").await?);
    }
    let text = seen.join("\n");
    assert!(
        text.contains("h.room: recovered, 0 missed message(s) replayed"),
        "{text}"
    );
    assert!(
        text.contains("live.room: resubscribed without recovery"),
        "{text}"
    );

    // And it keeps printing.
    let (ok, err) = publish(&server, &token, &["live.room", "after"], "").await?;
    assert!(ok, "{err}");
    let next: serde_json::Value = serde_json::from_str(&sub.line().await?)?;
    assert_eq!(
        (next["room"].as_str(), next["payload"].as_str()),
        (Some("live.room"), Some("after"))
    );
    Ok(())
}

/// `quiver pub --url A,B` whose server dies with acknowledgements in flight: those messages are
/// reported as maybe published (not sent again: at most once), the client moves to B and the
/// rest are published there, and the run ends with a failure that says so. It used to stop at
/// the first lost acknowledgement, publishing nothing more (outside failover audit 2, N1).
#[tokio::test]
async fn pub_moves_to_the_next_url_when_its_server_dies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = quiver_tests::process::QuiverProcess::start(dir.path(), None, &[])?;
    let b = quiver_tests::process::QuiverProcess::start(dir.path(), None, &[])?;
    let token = full_token("acme", "cli");
    let mut watcher = Raw::connect_at(b.wt_port, b.hash, &token).await?;
    let mut room = watcher.subscribe("live.failover").await?;
    // One certificate (one directory) for both.
    let urls = format!("{},{}", a.url(), b.url());
    let out = pub_while_its_server_dies(
        dir.path(),
        &mut a,
        &urls,
        &token,
        &["live.failover", "m{seq}", "--count", "300", "--rate", "50"],
        WAIT * 3,
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The rest reached B's subscriber.
    let mut got = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), room.payload()).await {
        got += 1;
    }
    // Published on A before the kill (about 50), lost in flight, or on B.
    assert!(got >= 150, "B got {got} of 300; pub said:\n{stderr}");
    // Acknowledgements lost with A make the run fail, saying why; none lost, it succeeds.
    assert!(
        out.status.success() || stderr.contains("may or may not have been published"),
        "{stderr}"
    );
    assert_eq!(a.hash, b.hash);
    Ok(())
}

/// A token given with `--token` cannot be replaced: once the server ends the session because it
/// expired (3002), `sub` says so and exits non-zero, rather than reconnect with it for ever
/// (outside audit 26: every reconnect was refused, and `sub` ran until killed).
#[tokio::test]
async fn sub_with_a_given_token_exits_when_it_expires() -> Result<()> {
    let server = TestServer::start().await?;
    let exp = quiver_server::auth::unix_now() + 2;
    let mut sub = Sub::start(&server, &token_expiring_at("acme", "lapsing", exp), &["a"]).await?;
    sub.stderr_until("expired; run again with a fresh one")
        .await?;
    let status = tokio::time::timeout(WAIT, sub._child.wait()).await??;
    assert!(!status.success(), "{status:?}");
    Ok(())
}

/// A room `sub` cannot print fast enough (its stdout is not read) ends as `slow_consumer`;
/// `sub` subscribes again, resuming after the last message it printed, so a history room's
/// output has every message once, in order (outside audit 26: `sub` exited with an error).
#[tokio::test]
async fn sub_that_falls_behind_subscribes_again_and_resumes() -> Result<()> {
    const MESSAGES: usize = 4_000;
    let server = TestServer::start_with(|c| {
        c.limits.subscriber_queue = 8;
        // The publisher is not what is tested: no pacing.
        c.limits.commands_per_second = 100_000;
        add_history_namespace(c, "h", MESSAGES);
    })
    .await?;
    let token = full_token("acme", "cli");
    let mut sub = Sub::start(&server, &token, &["h.room"]).await?;
    // 8 MiB: more than the pipe, the client's queue for the room (1,024 events) and the
    // stream's flow-control window hold, so the server's queue of 8 overflows.
    let client = quiver_client::Client::connect(client_config(
        &server,
        quiver_client::token_fixed(token.clone()),
    ))
    .await?;
    let filler = "x".repeat(2_042);
    for n in 0..MESSAGES {
        client.publish("h.room", format!("{n:06}{filler}")).await?;
    }
    client.publish_ack("h.room", "end").await?;
    client.close().await;
    for n in 0..MESSAGES {
        let line = sub.line().await?;
        assert_eq!(
            line.get(..6),
            Some(format!("{n:06}").as_str()),
            "message {n}"
        );
    }
    assert_eq!(sub.line().await?, "end");
    let said = sub.stderr_until("recovered").await?.join("\n");
    assert!(
        said.contains("h.room: fell behind (") && said.contains("subscribing again"),
        "{said}"
    );
    Ok(())
}

/// `pub` with a given token: one that expires mid-run ends the run at once saying so, and one
/// already expired is refused saying so, on both transports (outside audit 26: it waited for
/// a reconnect refused every time and said "timed out"; over WebTransport a refusal carries no
/// reason the client can read).
#[tokio::test]
async fn pub_with_a_given_token_says_when_it_expired() -> Result<()> {
    let server = TestServer::start().await?;
    let exp = quiver_server::auth::unix_now() + 2;
    let lapsing = token_expiring_at("acme", "lapsing", exp);
    let started = Instant::now();
    let (ok, err) = publish(
        &server,
        &lapsing,
        &["a", "m{seq}", "--count", "200", "--rate", "20"],
        "",
    )
    .await?;
    assert!(!ok);
    assert!(err.contains("expired; run again with a fresh one"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "ended after {:?}",
        started.elapsed()
    );
    let ws_url = format!("ws://{}/v1/ws", server.http);
    for transport in [
        &["--transport", "webtransport"][..],
        &["--transport", "websocket", "--ws-url", &ws_url],
    ] {
        let mut child = Command::from(quiver_command(server.dir.path())?);
        child
            .arg("pub")
            .args([
                "--url",
                &server.url(),
                "--cert-hash",
                &hex::encode(server.hash),
            ])
            .args(transport)
            .args(["--token", &lapsing, "a", "late"])
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(WAIT, child.output()).await??;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("expired"), "{transport:?}: {err}");
    }
    Ok(())
}
