//! The client's first connect over several URLs (PROTOCOL.md §1, §9.1: a 429 means "retry
//! later, or another instance"): an instance that answers 429 is passed over for the next one,
//! as one that is down is; a refusal for good (404, a bad token) still fails at once.

use quiver_client::{token_fixed, Client, ClientConfig, ClientError, Transport};
use quiver_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A listener that answers every request with `status` and closes; its `ws://` URL.
async fn answering(status: &'static str) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/v1/ws", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

fn config(first: String, server: &TestServer) -> ClientConfig {
    let mut config = ClientConfig::new(String::new(), token_fixed(full_token("acme", "first")))
        .with_transport(Transport::WebSocket);
    config.ws_urls = vec![first, format!("ws://{}/v1/ws", server.http)];
    config
}

#[tokio::test]
async fn a_busy_first_instance_is_passed_over() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let busy = answering("429 Too Many Requests").await?;
    let client = Client::connect(config(busy, &server)).await?;
    client.ping().await?;
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn a_refusal_for_good_still_fails_at_once() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let wrong = answering("404 Not Found").await?;
    match Client::connect(config(wrong, &server)).await {
        Err(ClientError::Refused {
            status: Some(404), ..
        }) => Ok(()),
        Err(other) => anyhow::bail!("expected the 404, got {other:?}"),
        Ok(_) => anyhow::bail!("connected past a 404"),
    }
}
