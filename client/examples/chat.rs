//! A minimal chat: subscribes to a room, prints what arrives, publishes every line typed.
//!
//! ```text
//! quiver serve --listen '[::]:4433' --cert-dir certs --jwt-secret S   # prints cert_sha256
//! TOKEN=$(quiver token --jwt-secret S --tenant t --user alice --subscribe '>' --publish '>')
//! cargo run -p quiver-client --example chat -- \
//!     --url https://127.0.0.1:4433/v1 --cert-hash HEX --token "$TOKEN" --room chat.lobby
//! ```
//!
//! Options: `--url` (repeatable), `--ws-url` (repeatable, e.g. `ws://127.0.0.1:8080/v1/ws`),
//! `--transport webtransport|websocket|auto` (default auto: WebSocket when WebTransport fails),
//! `--token` (or env `QUIVER_TOKEN`), `--cert-hash HEX` (repeatable) or `--ca-file PEM`
//! (default: system roots), `--room` (default `chat.lobby`).
//! With `--send TEXT` it publishes TEXT (acknowledged), prints the position and exits.

use std::time::Duration;

use futures::StreamExt;
use quiver_client::{
    parse_cert_hash, token_fixed, Client, ClientConfig, SubEvent, Transport, Trust,
};
use tokio::io::{AsyncBufReadExt, BufReader};

fn usage() -> ! {
    eprintln!(
        "usage: chat --url URL [--url URL...] [--ws-url URL...] [--transport T] [--token JWT] \
         [--cert-hash HEX...|--ca-file PEM] [--room ROOM] [--send TEXT]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut urls = Vec::new();
    let mut ws_urls = Vec::new();
    let mut transport = Transport::Auto;
    let mut token = std::env::var("QUIVER_TOKEN").ok();
    let mut hashes = Vec::new();
    let mut ca_file = None;
    let mut room = "chat.lobby".to_string();
    let mut send = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--url" => urls.push(value()),
            "--ws-url" => ws_urls.push(value()),
            "--transport" => transport = value().parse().map_err(anyhow::Error::msg)?,
            "--token" => token = Some(value()),
            "--cert-hash" => hashes.push(parse_cert_hash(&value())?),
            "--ca-file" => ca_file = Some(value()),
            "--room" => room = value(),
            "--send" => send = Some(value()),
            _ => usage(),
        }
    }
    let Some(token) = token else { usage() };
    if urls.is_empty() && ws_urls.is_empty() {
        usage()
    }

    let mut config = ClientConfig::new(String::new(), token_fixed(token)).with_transport(transport);
    config.urls = urls;
    config.ws_urls = ws_urls;
    config.trust = match (hashes.is_empty(), ca_file) {
        (false, _) => Trust::CertHashes(hashes),
        (true, Some(path)) => Trust::CaFile(path.into()),
        (true, None) => Trust::System,
    };
    let client = Client::connect(config).await?;
    let welcome = client.welcome().expect("connected");
    eprintln!(
        "connected over {}: session {} user {} tenant {}",
        welcome.transport, welcome.session, welcome.user, welcome.tenant
    );

    if let Some(text) = send {
        let position = client.publish_ack(&room, text).await?;
        println!("published at {position:?}");
        client.close().await;
        return Ok(());
    }

    let mut sub = client.subscribe(&room).await?;
    eprintln!(
        "subscribed to {room}; rtt {:?}; type lines to publish",
        client.ping().await.unwrap_or(Duration::ZERO)
    );

    let mut state = client.state();
    let printer = tokio::spawn(async move {
        while let Some(ev) = sub.next().await {
            match ev {
                SubEvent::Publication {
                    room,
                    position,
                    payload,
                } => println!(
                    "[{room}{}] {}",
                    position
                        .map(|p| format!(" #{}", p.offset))
                        .unwrap_or_default(),
                    String::from_utf8_lossy(&payload)
                ),
                SubEvent::Resubscribed { recovery } => eprintln!("(resubscribed: {recovery:?})"),
                SubEvent::Joined { member } => eprintln!("({} joined)", member.user),
                SubEvent::Left { member } => eprintln!("({} left)", member.user),
                SubEvent::Ended { code, reason } => {
                    eprintln!("(subscription ended: {code} {reason})")
                }
            }
        }
    });
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            eprintln!("(state: {:?})", *state.borrow());
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if let Err(e) = client.publish(&room, line).await {
            eprintln!("(publish failed: {e})");
        }
    }
    // Writes what `publish` accepted above (within 5 s) before the session closes.
    client.close().await;
    let _ = printer.await;
    Ok(())
}
