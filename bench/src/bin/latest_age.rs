//! The `latest` lane under loss (issue 15): the age of the newest value a subscriber holds,
//! sampled every millisecond, while a publisher sends timestamped values at a fixed rate. One
//! run measures one room: a `latest` room (values as QUIC datagrams, never retransmitted) or a
//! reliable room (values on the room's stream, retransmitted in order). The publisher reaches the
//! server over a clean path and the subscriber over a lossy one (`bench/netns.sh`), so loss hits
//! only delivery. Both clients run in this process: one clock for send and receive times.
//! With `--socketio`, the same measurement goes through a Socket.IO 4 peer
//! (`bench/peers/socketio`) instead: reliable TCP, the browser world's usual answer.
//! With `--bulk-rooms N`, the subscriber also takes N bulk rooms on the same session (the
//! priority runs): quinn round-robins streams of equal priority, so a frame of the measured room
//! waits one packet per backlogged bulk stream unless its namespace has a higher priority.
//! `scripts/bench-latest` runs the matrix and writes the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use quiver_client::{parse_cert_hash, token_fixed, Client, ClientConfig, SubEvent, Trust};

#[path = "../socketio_wire.rs"]
mod socketio_wire;

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
    /// Bulk rooms the subscriber also takes, fed with bulk traffic (the priority runs): this
    /// name, or with `--bulk-rooms N` > 1 this name followed by 0..N.
    #[arg(long)]
    bulk_room: Option<String>,
    #[arg(long, default_value_t = 1)]
    bulk_rooms: usize,
    /// Bulk values per second, over all bulk rooms together (round-robin).
    #[arg(long, default_value_t = 2000.0)]
    bulk_rate: f64,
    #[arg(long, default_value_t = 1000)]
    bulk_payload: usize,
    /// Measure a Socket.IO peer instead: `host:port` the subscriber reaches (the lossy path);
    /// `--sub-url`, `--cert-hash` and `--token` are then ignored.
    #[arg(long, requires = "socketio_pub")]
    socketio: Option<String>,
    /// The Socket.IO peer's `host:port` over the clean path (the publisher).
    #[arg(long)]
    socketio_pub: Option<String>,
}

/// Newest send time held by the subscriber, and how many values it received.
#[derive(Default)]
struct Held {
    newest: AtomicU64,
    received: AtomicU64,
}

impl Held {
    fn on_value(&self, sent_ns: u64) {
        self.newest.fetch_max(sent_ns, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
    }
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

/// What one run started: the measured room's mode, the publisher (returns how many values it
/// sent), and the subscriber side to shut down after sampling.
struct Started {
    mode: String,
    publisher: tokio::task::JoinHandle<Result<u64>>,
    sub_client: Option<Client>,
    reader: tokio::task::JoinHandle<()>,
}

/// Bulk rooms' traffic at the subscriber.
#[derive(Default)]
struct Bulk {
    received: AtomicU64,
    /// Bulk subscriptions the server ended (e.g. 112 `slow_consumer`): the backlog that makes
    /// priority matter is gone then, so the report says so.
    ended: AtomicU64,
}

/// The measured publisher's clock: `rate` ticks per second for `total`, late ticks caught up
/// (the sent count stays `rate × total` on a busy machine).
struct Paced {
    tick: tokio::time::Interval,
    end: tokio::time::Instant,
}

impl Paced {
    fn new(rate: f64, total: Duration) -> Self {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Self {
            tick,
            end: tokio::time::Instant::now() + total,
        }
    }

    /// Waits for the next tick; false once the time is up.
    async fn next(&mut self) -> bool {
        if tokio::time::Instant::now() >= self.end {
            return false;
        }
        self.tick.tick().await;
        true
    }
}

/// A payload of `size` bytes (at least 8) starting with the send time.
fn stamped(size: usize) -> Vec<u8> {
    let mut payload = vec![0u8; size.max(8)];
    payload[..8].copy_from_slice(&now_ns().to_be_bytes());
    payload
}

async fn start_quiver(args: &Args, held: Arc<Held>, bulk: Arc<Bulk>) -> Result<Started> {
    let hash = parse_cert_hash(&args.cert_hash).context("--cert-hash")?;
    let sub_client = Client::connect(config(&args.sub_url, hash, &args.token)).await?;
    let pub_client = Client::connect(config(&args.pub_url, hash, &args.token)).await?;
    let mut sub = sub_client.subscribe(&args.room).await?;
    let mode = format!("{:?}", sub.mode()).to_lowercase();
    let total = Duration::from_secs_f64(args.warmup + args.duration);
    if let Some(prefix) = &args.bulk_room {
        let rooms: Vec<String> = if args.bulk_rooms > 1 {
            (0..args.bulk_rooms)
                .map(|i| format!("{prefix}{i}"))
                .collect()
        } else {
            vec![prefix.clone()]
        };
        // Bulk traffic on other rooms of the same session, counted and thrown away.
        for room in &rooms {
            let mut s = sub_client.subscribe(room).await?;
            let bulk = bulk.clone();
            tokio::spawn(async move {
                while let Some(ev) = s.recv().await {
                    match ev {
                        SubEvent::Publication { .. } => {
                            bulk.received.fetch_add(1, Ordering::Relaxed);
                        }
                        SubEvent::Ended { .. } => {
                            bulk.ended.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            });
        }
        let bulk_pub = Client::connect(config(&args.pub_url, hash, &args.token)).await?;
        let (size, rate) = (args.bulk_payload, args.bulk_rate);
        tokio::spawn(async move {
            // Batches every 10 ms: tokio's timer cannot tick every 0.5 ms.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = tokio::time::Instant::now() + total;
            let (mut due, mut next) = (0.0f64, 0usize);
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                due += rate / 100.0;
                while due >= 1.0 {
                    due -= 1.0;
                    let room = &rooms[next % rooms.len()];
                    next += 1;
                    if bulk_pub.publish(room, vec![0u8; size]).await.is_err() {
                        return;
                    }
                }
            }
            bulk_pub.close().await;
        });
    }
    let reader = tokio::spawn(async move {
        while let Some(ev) = sub.recv().await {
            if let SubEvent::Publication { payload, .. } = ev {
                if let Some(t) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    held.on_value(u64::from_be_bytes(t));
                }
            }
        }
    });
    let (room, size, rate) = (args.room.clone(), args.payload, args.rate);
    let publisher = tokio::spawn(async move {
        let (mut paced, mut sent) = (Paced::new(rate, total), 0u64);
        while paced.next().await {
            pub_client.publish(&room, stamped(size)).await?;
            sent += 1;
        }
        pub_client.close().await;
        anyhow::Ok(sent)
    });
    Ok(Started {
        mode,
        publisher,
        sub_client: Some(sub_client),
        reader,
    })
}

/// The same values through the Socket.IO peer: the send time travels as 20 decimal digits
/// (Socket.IO payloads here are strings), padded to `--payload` bytes.
async fn start_socketio(args: &Args, held: Arc<Held>) -> Result<Started> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let sub_addr = args.socketio.as_deref().context("--socketio")?;
    let pub_addr = args.socketio_pub.as_deref().context("--socketio-pub")?;
    let mut sub = socketio_wire::open(sub_addr).await?;
    sub.send(Message::text(format!("420[\"join\",\"{}\"]", args.room)))
        .await?;
    socketio_wire::wait_ack(&mut sub, 0).await?;
    let mut publ = socketio_wire::open(pub_addr).await?;
    let reader = tokio::spawn(async move {
        while let Ok(text) = socketio_wire::next_text(&mut sub).await {
            // 42["msg","<room>","<20 digits>x..."]
            let Some(rest) = text.strip_prefix("42[\"msg\",\"") else {
                continue;
            };
            let Some((_, payload)) = rest.split_once("\",\"") else {
                continue;
            };
            if let Some(t) = payload.get(..20).and_then(|d| d.parse::<u64>().ok()) {
                held.on_value(t);
            }
        }
    });
    let total = Duration::from_secs_f64(args.warmup + args.duration);
    let (room, size, rate) = (args.room.clone(), args.payload.max(20), args.rate);
    let publisher = tokio::spawn(async move {
        let (mut paced, mut sent) = (Paced::new(rate, total), 0u64);
        while paced.next().await {
            let payload = format!("{:020}{}", now_ns(), "x".repeat(size - 20));
            publ.send(Message::text(format!(
                "42[\"pub\",\"{room}\",\"{payload}\"]"
            )))
            .await?;
            sent += 1;
        }
        // Everything before the acknowledged `sync` has been emitted to the room.
        socketio_wire::sync(&mut publ).await?;
        let _ = publ.close(None).await;
        anyhow::Ok(sent)
    });
    Ok(Started {
        mode: "socketio".into(),
        publisher,
        sub_client: None,
        reader,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let held = Arc::new(Held::default());
    let bulk = Arc::new(Bulk::default());
    let started = if args.socketio.is_some() {
        start_socketio(&args, held.clone()).await?
    } else {
        start_quiver(&args, held.clone(), bulk.clone()).await?
    };

    // Sample the age of the newest value every millisecond after the warm-up.
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let mut stale_samples = 0u64;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let newest = held.newest.load(Ordering::Relaxed);
        if newest == 0 {
            stale_samples += 1;
            continue;
        }
        let age_us = now_ns().saturating_sub(newest) / 1000;
        hist.record(age_us.clamp(1, 60_000_000))?;
    }
    let sent = started.publisher.await??;
    if let Some(c) = started.sub_client {
        c.close().await;
    }
    started.reader.abort();
    if hist.is_empty() {
        bail!("no value ever arrived");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "room": args.room,
            "mode": started.mode,
            "rate": args.rate,
            "payload": args.payload,
            "sent": sent,
            "received": held.received.load(Ordering::Relaxed),
            "samples": hist.len(),
            "samples_without_value": stale_samples,
            "bulk_room": args.bulk_room,
            "bulk_rooms": if args.bulk_room.is_some() { args.bulk_rooms } else { 0 },
            "bulk_rate": args.bulk_rate,
            "bulk_received": bulk.received.load(Ordering::Relaxed),
            "bulk_ended": bulk.ended.load(Ordering::Relaxed),
            "age_p50_ms": ms(0.5),
            "age_p90_ms": ms(0.9),
            "age_p99_ms": ms(0.99),
            "age_max_ms": hist.max() as f64 / 1000.0,
        })
    );
    Ok(())
}
