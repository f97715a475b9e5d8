//! End-to-end checks against a real `quiver` server binary.
//!
//! Skipped (passing) unless `LIVE_QUIVER_BIN` names the server binary, e.g.
//! `cargo build -p quiver-server && LIVE_QUIVER_BIN=$PWD/target/debug/quiver cargo test -p quiver-client --test live`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use quiver_client::{
    parse_cert_hash, token_fixed, token_fn, Client, ClientConfig, ClientError, ConnectionState,
    ErrorCode, Recovery, SubEvent, Trust,
};

const SECRET: &str = "live-test-secret";

struct Server {
    child: Child,
    port: u16,
    hash: [u8; 32],
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bin() -> Option<String> {
    std::env::var("LIVE_QUIVER_BIN").ok()
}

fn start_server(bin: &str, dir: &std::path::Path, port: u16) -> Server {
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("[::]:{port}"),
            "--http",
            "127.0.0.1:0",
        ])
        .arg("--cert-dir")
        .arg(dir)
        .args(["--jwt-secret", SECRET, "--no-demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        let line = lines.next().expect("server exited").expect("read stdout");
        if let Some(json) = line.strip_prefix("QUIVER_READY ") {
            break json.to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let field = |name: &str| {
        let start = ready.find(&format!("\"{name}\":\"")).unwrap() + name.len() + 4;
        let end = ready[start..].find('"').unwrap() + start;
        ready[start..end].to_string()
    };
    let wt = field("webtransport");
    let port = wt.rsplit(':').next().unwrap().parse().unwrap();
    let hash = parse_cert_hash(&field("cert_sha256")).unwrap();
    Server { child, port, hash }
}

fn token(bin: &str, user: &str, sub: &str, publ: &str, ttl: &str) -> String {
    let out = Command::new(bin)
        .args([
            "token",
            "--jwt-secret",
            SECRET,
            "--tenant",
            "t",
            "--user",
            user,
        ])
        .args(["--subscribe", sub, "--publish", publ, "--ttl", ttl])
        .output()
        .expect("quiver token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn config(server: &Server, token: quiver_client::TokenProvider) -> ClientConfig {
    let mut cfg = ClientConfig::new(format!("https://127.0.0.1:{}/v1", server.port), token);
    cfg.trust = Trust::CertHashes(vec![server.hash]);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("quiver-client-live-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn next(sub: &mut quiver_client::Subscription) -> SubEvent {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("event within 5 s")
        .expect("subscription open")
}

#[tokio::test]
async fn pubsub_errors_and_refusal() {
    let Some(bin) = bin() else { return };
    let server = start_server(&bin, &tmpdir("basic"), 0);
    let tok = token(&bin, "alice", "chat.>", "chat.>", "1h");
    let client = Client::connect(config(&server, token_fixed(tok)))
        .await
        .unwrap();
    let w = client.welcome().unwrap();
    assert_eq!((w.user.as_str(), w.tenant.as_str()), ("alice", "t"));
    assert!(matches!(
        *client.state().borrow(),
        ConnectionState::Connected { .. }
    ));
    assert!(client.ping().await.unwrap() < Duration::from_secs(1));

    let mut sub = client.subscribe("chat.lobby").await.unwrap();
    client.publish("chat.lobby", "one").await.unwrap();
    let _pos = client.publish_ack("chat.lobby", "two").await.unwrap();
    for want in ["one", "two"] {
        match next(&mut sub).await {
            SubEvent::Publication { room, payload, .. } => {
                assert_eq!(room, "chat.lobby");
                assert_eq!(payload, want.as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    // Permissions and validation come back as server errors.
    let err = client.subscribe("news").await.unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::PermissionDenied), "{err}");
    let err = client.publish_ack("news", "x").await.unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::PermissionDenied), "{err}");
    let err = client.subscribe("chat..bad").await.unwrap_err();
    assert_eq!(err.error_code(), Some(ErrorCode::InvalidRoom), "{err}");
    let err = client.subscribe("chat.lobby").await.unwrap_err();
    assert_eq!(
        err.error_code(),
        Some(ErrorCode::AlreadySubscribed),
        "{err}"
    );

    // Unsubscribe ends the stream; subscribing again works.
    client.unsubscribe("chat.lobby").await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .is_none());
    let mut sub = client.subscribe("chat.lobby").await.unwrap();
    client.publish("chat.lobby", "three").await.unwrap();
    assert!(
        matches!(next(&mut sub).await, SubEvent::Publication { payload, .. } if payload == "three")
    );
    drop(sub);
    // Dropping unsubscribes: subscribing again is accepted by the server.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _sub = client.subscribe("chat.lobby").await.unwrap();

    client.close().await;
    assert_eq!(*client.state().borrow(), ConnectionState::Closed);
    assert!(matches!(
        client.ping().await,
        Err(ClientError::Closed { code: 0, .. })
    ));

    // A bad token: refused at once, no retrying.
    let start = std::time::Instant::now();
    let err = Client::connect(config(&server, token_fixed("not-a-jwt")))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn reconnects_resubscribes_and_flushes() {
    let Some(bin) = bin() else { return };
    let dir = tmpdir("reconnect");
    let server = start_server(&bin, &dir, 0);
    let port = server.port;
    let tok = token(&bin, "bob", ">", ">", "1h");
    let mut cfg = config(&server, token_fixed(tok.clone()));
    cfg.backoff.max = Duration::from_millis(300);
    cfg.keep_alive = Duration::from_millis(500);
    cfg.idle_timeout = Duration::from_secs(2);
    let client = Client::connect(cfg).await.unwrap();
    let first_session = client.welcome().unwrap().session;
    let mut sub = client.subscribe("room.a").await.unwrap();
    client.publish_ack("room.a", "before").await.unwrap();
    assert!(
        matches!(next(&mut sub).await, SubEvent::Publication { payload, .. } if payload == "before")
    );

    drop(server);
    let mut state = client.state();
    tokio::time::timeout(
        Duration::from_secs(40),
        state.wait_for(|s| !matches!(s, ConnectionState::Connected { .. })),
    )
    .await
    .expect("notices the loss")
    .unwrap();
    // Buffered while disconnected.
    client.publish("room.a", "while-down").await.unwrap();
    assert!(matches!(
        client.ping().await,
        Err(ClientError::NotConnected)
    ));

    let _server = start_server(&bin, &dir, port);
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| matches!(s, ConnectionState::Connected { .. })),
    )
    .await
    .expect("reconnects")
    .unwrap();
    assert_ne!(client.welcome().unwrap().session, first_session);
    match next(&mut sub).await {
        SubEvent::Resubscribed { recovery } => {
            // A fresh in-memory server cannot replay: Failed or NotRequested, never Recovered.
            assert!(
                !matches!(recovery, Recovery::Recovered { .. }),
                "{recovery:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(next(&mut sub).await, SubEvent::Publication { payload, .. } if payload == "while-down")
    );

    // A crash (no Goodbye): noticed through the idle timeout, then the same recovery.
    let session = client.welcome().unwrap().session;
    drop(_server);
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| !matches!(s, ConnectionState::Connected { .. })),
    )
    .await
    .expect("notices the crash")
    .unwrap();
    let _server = start_server(&bin, &dir, port);
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| matches!(s, ConnectionState::Connected { .. })),
    )
    .await
    .expect("reconnects after the crash")
    .unwrap();
    assert_ne!(client.welcome().unwrap().session, session);
    assert!(matches!(
        next(&mut sub).await,
        SubEvent::Resubscribed { .. }
    ));
    client.publish_ack("room.a", "after-crash").await.unwrap();
    assert!(
        matches!(next(&mut sub).await, SubEvent::Publication { payload, .. } if payload == "after-crash")
    );
    client.close().await;
    assert!(tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn refreshes_token_before_expiry() {
    let Some(bin) = bin() else { return };
    let server = start_server(&bin, &tmpdir("refresh"), 0);
    let b = bin.clone();
    let provider = token_fn(move || {
        let b = b.clone();
        async move { Ok(token(&b, "carol", ">", ">", "4s")) }
    });
    let client = Client::connect(config(&server, provider)).await.unwrap();
    let session = client.welcome().unwrap().session;
    let exp0 = client.welcome().unwrap().expires_at.unwrap();
    let mut sub = client.subscribe("r").await.unwrap();
    // Well past the first token's expiry: still the same session.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let w = client.welcome().unwrap();
    assert_eq!(w.session, session, "no reconnect");
    assert!(w.expires_at.unwrap() > exp0, "expiry moved on");
    client.publish("r", "still here").await.unwrap();
    assert!(
        matches!(next(&mut sub).await, SubEvent::Publication { payload, .. } if payload == "still here")
    );
    client.close().await;
}

#[tokio::test]
async fn slow_consumer_ends_subscription_without_unbounded_memory() {
    let Some(bin) = bin() else { return };
    let server = start_server(&bin, &tmpdir("slow"), 0);
    let tok = token(&bin, "dave", ">", ">", "1h");
    let mut cfg = config(&server, token_fixed(tok.clone()));
    cfg.subscription_buffer = 8;
    let reader = Client::connect(cfg).await.unwrap();
    let mut sub = reader.subscribe("firehose").await.unwrap();
    let mut cfg = config(&server, token_fixed(tok));
    cfg.pace_commands = false;
    let publisher = Client::connect(cfg).await.unwrap();
    let payload = vec![b'x'; 8000];
    // Publish far more than the subscription and QUIC windows hold, without reading.
    let limit = publisher
        .welcome()
        .unwrap()
        .limits
        .commands_per_second
        .max(1);
    // The server queues 1,024 frames per subscription; QUIC windows and our 8-event queue hold
    // a few hundred more. Publish 2,400 without reading, then read what is left.
    for _ in 0..12 {
        for _ in 0..limit {
            let _ = publisher.publish("firehose", payload.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let mut ended = None;
    let mut received = 0;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        match ev {
            SubEvent::Ended { code, .. } => ended = Some(code),
            SubEvent::Publication { .. } => received += 1,
            other => panic!("{other:?}"),
        }
    }
    eprintln!("received {received} before the end");
    assert!(received < 12 * limit as usize);
    eprintln!("slow consumer outcome: {ended:?}");
    assert_eq!(ended, Some(ErrorCode::SlowConsumer.as_u16()));
    // The session survives; subscribing again works.
    let _again = reader.subscribe("firehose").await.unwrap();
    assert!(reader.ping().await.is_ok());
}
