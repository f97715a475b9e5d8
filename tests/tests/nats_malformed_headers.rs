//! A NATS message whose header block cannot be read (not `NATS/1.0`, a status that is not a
//! number, a line without a colon) costs only itself. nats-server passes headers through
//! unread, so any publisher allowed on a subject Quiver subscribes to (a tenant's backend with
//! `quiver.<tenant>.>`) can send one; async-nats dropped its whole connection for it, so one
//! such message disconnected every tenant's rooms on the instance, or lost every call and hook
//! in flight (the patch in `vendor/async-nats`). One file of its own: the reconnect counter is
//! process-wide.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use quiver_client::{token_fixed, Client, SubEvent};
use quiver_tests::nats::{clustered, NatsServer};
use quiver_tests::rpc::call_token;
use quiver_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Header blocks async-nats cannot read, each framed correctly.
const MALFORMED: [&str; 4] = [
    "GARBAGE\r\n\r\n",
    "NATS/1.0 abc\r\nQuiver-Status: 200\r\n\r\n",
    "NATS/1.0\r\nno colon here\r\n\r\n",
    "NATS/1.0\r\nBad Name: x\r\n\r\n",
];

/// A NATS connection spoken by hand, as a hostile publisher would.
struct RawNats {
    tcp: BufReader<TcpStream>,
}

impl RawNats {
    async fn connect(nats: &NatsServer) -> Result<Self> {
        let mut tcp = BufReader::new(TcpStream::connect(("127.0.0.1", nats.port)).await?);
        let mut info = String::new();
        tcp.read_line(&mut info).await?;
        anyhow::ensure!(info.starts_with("INFO"), "{info}");
        tcp.get_mut()
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
            .await?;
        Ok(Self { tcp })
    }

    /// An HPUB of `header` (sent as it is) and `body`, then a PING answered: nats-server has
    /// handed the message on to the subscribers' connections.
    async fn hpub(&mut self, subject: &str, header: &str, body: &str) -> Result<()> {
        let total = header.len() + body.len();
        let message = format!(
            "HPUB {subject} {} {total}\r\n{header}{body}\r\n",
            header.len()
        );
        self.tcp.get_mut().write_all(message.as_bytes()).await?;
        self.round_trip().await
    }

    async fn publish(&mut self, subject: &str, body: &str) -> Result<()> {
        let message = format!("PUB {subject} {}\r\n{body}\r\n", body.len());
        self.tcp.get_mut().write_all(message.as_bytes()).await?;
        self.round_trip().await
    }

    async fn round_trip(&mut self) -> Result<()> {
        self.tcp.get_mut().write_all(b"PING\r\n").await?;
        loop {
            let mut line = String::new();
            tokio::time::timeout(WAIT, self.tcp.read_line(&mut line)).await??;
            match line.trim_end() {
                "PONG" => return Ok(()),
                l if l.starts_with("-ERR") => bail!("nats-server refused: {l}"),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn a_malformed_header_block_disconnects_no_room() -> Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(clustered(&nats)).await?;
    wait_ready(&server).await?;
    let alice = Client::connect(client_config(
        &server,
        token_fixed(full_token("acme", "alice")),
    ))
    .await?;
    // Another tenant's subscriber on the same instance: it must not notice.
    let bob = Client::connect(client_config(
        &server,
        token_fixed(full_token("other", "bob")),
    ))
    .await?;
    let mut room = alice.subscribe("chat.lobby").await?;
    let mut theirs = bob.subscribe("chat.lobby").await?;
    let mut raw = RawNats::connect(&nats).await?;
    for (i, header) in MALFORMED.iter().enumerate() {
        raw.hpub("quiver.acme.room.chat.lobby", header, "poison")
            .await?;
        alice.publish_ack("chat.lobby", format!("a{i}")).await?;
        bob.publish_ack("chat.lobby", format!("b{i}")).await?;
    }
    for (sub, prefix) in [(&mut room, "a"), (&mut theirs, "b")] {
        for i in 0..MALFORMED.len() {
            match tokio::time::timeout(WAIT, sub.next()).await? {
                Some(SubEvent::Publication { payload, .. }) => {
                    assert_eq!(payload, format!("{prefix}{i}"), "no poison, no gap")
                }
                other => bail!("expected publication {prefix}{i}, got {other:?}"),
            }
        }
    }
    // A disconnect shows up at once (the client reads the message and drops the connection);
    // give it time to be counted before saying there was none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = server.metrics().await?;
    assert_eq!(metric(&page, "quiver_nats_reconnects_total"), 0.0, "{page}");
    assert_eq!(metric(&page, "quiver_nats_connected"), 1.0, "{page}");
    alice.close().await;
    bob.close().await;
    Ok(())
}

/// A backend that answers each call with a malformed reply first, then the real one, on one
/// connection (so in that order): the call gets the real answer. Before the patch the first
/// reply dropped the server's RPC connection, and the real one with it: every call and hook of
/// every tenant in flight then waited out its deadline.
#[tokio::test]
async fn a_malformed_reply_costs_only_itself() -> Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        clustered(&nats)(c);
        c.rpc.timeout = Duration::from_secs(3);
    })
    .await?;
    wait_ready(&server).await?;
    let listener = async_nats::connect(nats.url()).await?;
    let mut requests = listener.subscribe("quiver.acme.rpc.>").await?;
    listener.flush().await?;
    let mut raw = RawNats::connect(&nats).await?;
    let backend = tokio::spawn(async move {
        let mut n = 0;
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let header = MALFORMED[n % MALFORMED.len()];
            n += 1;
            raw.hpub(&reply, header, "poison").await?;
            raw.publish(&reply, "real").await?;
        }
        anyhow::Ok(())
    });
    let alice = Client::connect(client_config(
        &server,
        token_fixed(call_token("acme", "alice", &["order.*"])),
    ))
    .await?;
    for _ in 0..MALFORMED.len() {
        let answer = alice
            .call("order.place", "x")
            .await
            .context("the call after a malformed reply")?;
        assert_eq!(answer, "real");
    }
    alice.close().await;
    backend.abort();
    Ok(())
}
