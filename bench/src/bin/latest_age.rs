//! The `latest` lane under loss (issue 15): the age of the newest value a subscriber holds,
//! sampled every millisecond, while a publisher sends timestamped values at a fixed rate. One
//! run measures one room: a `latest` room (values as QUIC datagrams, never retransmitted) or a
//! reliable room (values on the room's stream, retransmitted in order). The publisher reaches the
//! server over a clean path and the subscriber over a lossy one (`bench/netns.sh`), so loss hits
//! only delivery. Both clients run in this process: one clock for send and receive times.
//! `scripts/bench-latest` runs the matrix and writes the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use quiver_client::{parse_cert_hash, token_fixed, Client, ClientConfig, SubEvent, Trust};

#[derive(Parser, Debug)]
struct Args {
    /// WebTransport URL the subscriber connects to (the lossy path).
    #[arg(long)]
    sub_url: String,
    /// WebTransport URL the publisher connects to (the clean path).
    #[arg(long)]
    pub_url: String,
    #[arg(long)]
    cert_hash: String,
    #[arg(long)]
    token: String,
    #[arg(long)]
    room: String,
    /// Values per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// A label for the JSON line (e.g. the loss percentage).
    #[arg(long, default_value = "")]
    label: String,
    /// A second room the subscriber also takes, fed with bulk traffic (the priority runs).
    #[arg(long)]
    bulk_room: Option<String>,
    #[arg(long, default_value_t = 2000.0)]
    bulk_rate: f64,
    #[arg(long, default_value_t = 1000)]
    bulk_payload: usize,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn config(url: &str, hash: [u8; 32], token: &str) -> ClientConfig {
    let mut c = ClientConfig::new(url.to_string(), token_fixed(token.to_string()));
    c.trust = Trust::CertHashes(vec![hash]);
    c
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let hash = parse_cert_hash(&args.cert_hash).context("--cert-hash")?;
    let sub_client = Client::connect(config(&args.sub_url, hash, &args.token)).await?;
    let pub_client = Client::connect(config(&args.pub_url, hash, &args.token)).await?;
    let mut sub = sub_client.subscribe(&args.room).await?;
    let mode = format!("{:?}", sub.mode()).to_lowercase();
    // Bulk traffic on another room of the same session, read and thrown away.
    let bulk_received = Arc::new(AtomicU64::new(0));
    if let Some(bulk_room) = &args.bulk_room {
        let mut bulk = sub_client.subscribe(bulk_room).await?;
        let count = bulk_received.clone();
        tokio::spawn(async move {
            while let Some(ev) = bulk.recv().await {
                if matches!(ev, SubEvent::Publication { .. }) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let bulk_pub = Client::connect(config(&args.pub_url, hash, &args.token)).await?;
        let (room, size, rate) = (bulk_room.clone(), args.bulk_payload, args.bulk_rate);
        let total = Duration::from_secs_f64(args.warmup + args.duration);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = tokio::time::Instant::now() + total;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                if bulk_pub.publish(&room, vec![0u8; size]).await.is_err() {
                    break;
                }
            }
            bulk_pub.close().await;
        });
    }

    // Newest send time held by the subscriber, and how many values it received.
    let newest = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let (newest, received) = (newest.clone(), received.clone());
        async move {
            while let Some(ev) = sub.recv().await {
                if let SubEvent::Publication { payload, .. } = ev {
                    if payload.len() >= 8 {
                        let mut t = [0u8; 8];
                        t.copy_from_slice(&payload[..8]);
                        newest.fetch_max(u64::from_be_bytes(t), Ordering::Relaxed);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });

    let total = Duration::from_secs_f64(args.warmup + args.duration);
    let publisher = tokio::spawn({
        let (room, size, rate) = (args.room.clone(), args.payload.max(8), args.rate);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = tokio::time::Instant::now() + total;
            let mut sent = 0u64;
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&now_ns().to_be_bytes());
                pub_client.publish(&room, payload).await?;
                sent += 1;
            }
            pub_client.close().await;
            anyhow::Ok(sent)
        }
    });

    // Sample the age of the newest value every millisecond after the warm-up.
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let mut stale_samples = 0u64;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let held = newest.load(Ordering::Relaxed);
        if held == 0 {
            stale_samples += 1;
            continue;
        }
        let age_us = now_ns().saturating_sub(held) / 1000;
        hist.record(age_us.clamp(1, 60_000_000))?;
    }
    let sent = publisher.await??;
    sub_client.close().await;
    reader.abort();
    if hist.is_empty() {
        bail!("no value ever arrived");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "room": args.room,
            "mode": mode,
            "rate": args.rate,
            "payload": args.payload,
            "sent": sent,
            "received": received.load(Ordering::Relaxed),
            "samples": hist.len(),
            "samples_without_value": stale_samples,
            "bulk_room": args.bulk_room,
            "bulk_received": bulk_received.load(Ordering::Relaxed),
            "age_p50_ms": ms(0.5),
            "age_p90_ms": ms(0.9),
            "age_p99_ms": ms(0.99),
            "age_max_ms": hist.max() as f64 / 1000.0,
        })
    );
    Ok(())
}
