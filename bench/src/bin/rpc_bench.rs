//! Calls per second and their latency through NATS, next to acknowledged publishes over the
//! same session (issue 13). One process: a real `nats-server` child, an in-process Quiver with
//! NATS, an echo backend in a queue group, and `--concurrency` callers on one client session.
//!
//! `cargo run --release -p quiver-bench --bin rpc-bench -- --calls 20000 --concurrency 32`
//! (`nats-server` from `scripts/install-nats`, or `QUIVER_NATS_SERVER`). Prints one Markdown
//! table. Single runs on a shared 2-core machine: compare the two lines, not absolutes.

#[path = "../nats_ports.rs"]
mod nats_ports;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use quiver_client::{token_fixed, Client, ClientConfig, Trust};
use quiver_server::auth::{sign_hs256, unix_now};
use quiver_server::config::NatsConfig;
use quiver_server::{Config, Server};
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    /// Measured operations of each kind (after 1,000 of warm-up).
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Give up after this long, whatever is left.
    #[arg(long, default_value_t = 120)]
    max_secs: u64,
}

const SECRET: &str = "rpc-bench-secret-0123456789abcdef0123";

struct NatsChild(Child);

impl Drop for NatsChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_binary() -> PathBuf {
    std::env::var_os("QUIVER_NATS_SERVER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server"),
        PathBuf::from,
    )
}

async fn start_nats() -> Result<(NatsChild, u16)> {
    // nats-server removes its ports file when it exits; the directory is this process's own.
    let ports_dir = std::env::temp_dir().join(format!("rpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&ports_dir)?;
    let child = Command::new(nats_binary())
        .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(&ports_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nats-server (run scripts/install-nats, or set QUIVER_NATS_SERVER)")?;
    let mut child = NatsChild(child);
    let port = nats_ports::wait(&ports_dir, &mut child.0, Duration::from_secs(5))?;
    Ok((child, port))
}

#[derive(Clone, Copy)]
enum Op {
    Call,
    Publish,
}

struct Measured {
    rate: f64,
    histogram: Histogram<u64>,
    errors: usize,
}

async fn measure(client: &Client, op: Op, n: usize, args: &Args) -> Result<Measured> {
    let payload = Bytes::from(vec![b'x'; args.payload]);
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, payload, histogram, left, errors) = (
            client.clone(),
            payload.clone(),
            histogram.clone(),
            left.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            while left
                .fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1))
                .is_ok()
                && Instant::now() < deadline
            {
                let sent = Instant::now();
                let ok = match op {
                    Op::Call => client.call("bench.echo", payload.clone()).await.is_ok(),
                    Op::Publish => client
                        .publish_ack("bench.room", payload.clone())
                        .await
                        .is_ok(),
                };
                let micros = sent.elapsed().as_micros() as u64;
                if ok {
                    let _ = histogram.lock().await.record(micros.max(1));
                } else {
                    errors.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.lock().await.clone();
    Ok(Measured {
        rate: histogram.len() as f64 / elapsed,
        histogram,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (_nats, port) = start_nats().await?;
    let nats_url = format!("nats://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("quiver-rpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        http: "127.0.0.1:0".parse()?,
        cert_dir: dir.clone(),
        demo: false,
        nats: Some(NatsConfig::new(nats_url.clone())),
        ..Config::default()
    };
    config.auth.jwt_secret = Some(SECRET.into());
    config.tls.self_signed = true;
    // The session's own limits must not be what is measured.
    config.limits.commands_per_second = 1_000_000;
    config.rpc.max_in_flight = args.concurrency.max(1);
    let server = Server::start(config).await?;

    // The backend: echoes, in a queue group, on its own connection.
    let backend = async_nats::connect(&nats_url).await?;
    let mut calls = backend
        .queue_subscribe("quiver.bench.rpc.>".to_owned(), "bench".into())
        .await?;
    backend.flush().await?;
    let responder = backend.clone();
    tokio::spawn(async move {
        while let Some(msg) = calls.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });

    let claims = serde_json::json!({
        "sub": "bench",
        "tenant": "bench",
        "exp": unix_now() + 3600,
        "publish": [">"],
        "subscribe": [">"],
        "call": [">"],
    });
    let token = sign_hs256(SECRET.as_bytes(), &claims)?;
    let mut client_config = ClientConfig::new(
        format!("https://127.0.0.1:{}/v1", server.webtransport_addr().port()),
        token_fixed(token),
    );
    client_config.trust = Trust::CertHashes(vec![server.cert_sha256()]);
    client_config.request_timeout = Duration::from_secs(30);
    let client = Client::connect(client_config).await?;

    let mut rows = Vec::new();
    for (name, op) in [
        ("call (NATS request)", Op::Call),
        ("publish, acked", Op::Publish),
    ] {
        measure(&client, op, 1_000, &args).await?;
        let m = measure(&client, op, args.calls, &args).await?;
        let ms = |q: f64| m.histogram.value_at_quantile(q) as f64 / 1000.0;
        rows.push(format!(
            "| {name} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            m.histogram.len(),
            m.rate,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            m.errors
        ));
    }
    println!(
        "{} operations per kind, {} in flight, {}-byte payloads, one session, nats-server on loopback\n",
        args.calls, args.concurrency, args.payload
    );
    println!("| operation | done | per second | p50 ms | p99 ms | p99.9 ms | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!("{row}");
    }
    client.close().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
