//! The noisy tenant of the neighbour benchmark (`quiver-bench flood`): publisher sessions that
//! publish as fast as their connections take frames, far over the tenant's quota, and count what
//! the server refused (`quota_exceeded`, 115) and what it took; plus a few subscribers in the
//! tenant's rooms, so that an accepted publication costs the server a fan-out, as in real use.
//!
//! Prints `FLOOD_READY` once every session is up, floods until stdin closes (or `--max-secs`),
//! then prints its result as one JSON line. The other tenant's latency is measured by a separate
//! `quiver-bench load` process meanwhile (see `orchestrate/neighbour.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use quiver_proto::{
    decode_event, encode_command, ClientFrame, Command, ErrorCode, Event, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use wtransport::{Connection, SendStream};

use crate::payload::template;
use crate::recorder::{self, Recorder, Totals};
use crate::target::quic::{ClientPool, FrameReader};
use crate::target::Spec;

/// Command ids: publishes carry 0 (nothing is acked), Hello and the closing Ping their own.
const HELLO_ID: u32 = 1;
const PING_ID: u32 = 2;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct FloodParams {
    /// Publisher sessions, each writing publications back to back.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Rooms the publications go to (round-robin).
    #[arg(long, default_value_t = 2)]
    pub rooms: usize,
    /// Subscribers per room (their deliveries are counted, not timed).
    #[arg(long, default_value_t = 2)]
    pub subs_per_room: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publications per second over all publishers; 0 = as fast as the connections take them.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publish frames per write (at most).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Stop after this many seconds if stdin never closes.
    #[arg(long, default_value_t = 60.0)]
    pub max_secs: f64,
    /// When the server closes a publisher (rate abuse, say), open a new session and go on, as
    /// a hostile tenant would; without it such a publisher stops.
    #[arg(long)]
    #[serde(default)]
    pub reconnect: bool,
    /// Publishers' client address (e.g. 127.0.0.2), so the server's per-address limits apply
    /// to them and not to the other tenant's sessions on 127.0.0.1.
    #[arg(long)]
    #[serde(default)]
    pub bind: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloodResult {
    pub params: FloodParams,
    /// From the first publication to the stop.
    pub flood_secs: f64,
    pub sent: u64,
    /// Refused with `quota_exceeded` (115).
    pub refused: u64,
    /// Refused with any other code (should stay 0).
    pub other_refusals: u64,
    /// Sent and not refused: what reached the broker.
    pub accepted: u64,
    /// Publishers whose closing Ping was answered: their refusals are all counted.
    pub settled: usize,
    /// Deliveries the tenant's own subscribers received.
    pub delivered: u64,
    /// Publisher sessions the server closed during the flood (each reopened with `reconnect`).
    #[serde(default)]
    pub closed: u64,
    /// New publisher sessions opened after a close.
    #[serde(default)]
    pub reopened: u64,
    /// Attempts to reopen that the server refused (per-address handshake limit, say).
    #[serde(default)]
    pub reopen_refused: u64,
}

/// Refusals counted by the publishers' control-stream readers.
#[derive(Default)]
struct Refusals {
    quota: AtomicU64,
    other: AtomicU64,
    closed: AtomicU64,
    reopened: AtomicU64,
    reopen_refused: AtomicU64,
}

/// One publisher: floods on its session until `stop`; with `reconnect`, a session the server
/// closes is replaced by a new one (retrying refused opens every 10 ms).
struct Publisher {
    spec: Spec,
    pool: Arc<ClientPool>,
    batch: Arc<Batch>,
    rate: f64,
    sent: Arc<AtomicU64>,
    refusals: Arc<Refusals>,
    stop: CancellationToken,
    reconnect: bool,
}

impl Publisher {
    async fn run(self, first: FloodSession) -> Result<()> {
        let mut session = first;
        loop {
            let outcome = session
                .flood(
                    self.batch.clone(),
                    self.rate,
                    self.sent.clone(),
                    self.refusals.clone(),
                    self.stop.clone(),
                )
                .await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(e) if !self.reconnect || self.stop.is_cancelled() => return Err(e),
                Err(_) => {
                    self.refusals.closed.fetch_add(1, Ordering::Relaxed);
                }
            }
            session = loop {
                if self.stop.is_cancelled() {
                    return Ok(());
                }
                match FloodSession::open(&self.spec, &self.pool).await {
                    Ok(s) => {
                        self.refusals.reopened.fetch_add(1, Ordering::Relaxed);
                        break s;
                    }
                    Err(_) => {
                        self.refusals.reopen_refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
        }
    }
}

pub async fn run(spec: &Spec, p: &FloodParams) -> Result<()> {
    let rooms: Vec<String> = (0..p.rooms.max(1)).map(|r| format!("noisy.r{r}")).collect();
    let subscribers = rooms.len() * p.subs_per_room;
    let publishers = p.publishers.max(1);
    let pool = Arc::new(ClientPool::new(
        spec.cert_hash().ok(),
        subscribers + publishers,
    )?);
    let (subs, _) = super::connect_subscribers(spec, &pool, subscribers, |i| {
        vec![rooms[i % rooms.len()].clone()]
    })
    .await?;
    let pub_pool = match p.bind {
        Some(ip) => Arc::new(ClientPool::bound(
            spec.cert_hash().ok(),
            publishers * 4,
            ip,
        )?),
        None => pool.clone(),
    };
    let mut sessions = Vec::new();
    for _ in 0..publishers {
        sessions.push(FloodSession::open(spec, &pub_pool).await?);
    }

    // Counted only: an empty window (0, 0) records no latency.
    let totals = Arc::new(Totals::default());
    let hist = recorder::shared(1);
    let stop_subs = CancellationToken::new();
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .map(|s| {
            let rec = Recorder::new(hist.clone(), totals.clone(), 0, 0);
            tokio::spawn(s.run(rec, stop_subs.clone()))
        })
        .collect();

    let batch = Arc::new(Batch::new(&rooms, p.payload, p.batch.max(1)));
    let per_publisher = p.rate / publishers as f64;
    let sent = Arc::new(AtomicU64::new(0));
    let refusals = Arc::new(Refusals::default());
    let stop = CancellationToken::new();
    println!("FLOOD_READY");
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let publisher = Publisher {
                spec: spec.clone(),
                pool: pub_pool.clone(),
                batch: batch.clone(),
                rate: per_publisher,
                sent: sent.clone(),
                refusals: refusals.clone(),
                stop: stop.clone(),
                reconnect: p.reconnect,
            };
            tokio::spawn(publisher.run(s))
        })
        .collect();

    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs_f64(p.max_secs),
        tokio::io::stdin().read_to_end(&mut sink),
    )
    .await;
    stop.cancel();
    let flood_secs = started.elapsed().as_secs_f64();
    let mut settled = 0;
    for t in tasks {
        match t.await? {
            Ok(()) => settled += 1,
            Err(e) => eprintln!("flood publisher: {e:#}"),
        }
    }
    // Publications accepted last are still on their way to the tenant's own subscribers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_subs.cancel();
    for t in sub_tasks {
        t.await?;
    }
    pool.close().await;
    if p.bind.is_some() {
        pub_pool.close().await;
    }

    let sent = sent.load(Ordering::Relaxed);
    let refused = refusals.quota.load(Ordering::Relaxed);
    let other_refusals = refusals.other.load(Ordering::Relaxed);
    let result = FloodResult {
        params: p.clone(),
        flood_secs,
        sent,
        refused,
        other_refusals,
        // A reconnecting publisher loses the frames in flight when it is closed (neither
        // accepted nor refused): count what the tenant's subscribers got instead (every
        // publication goes to one room of `subs_per_room` subscribers).
        accepted: if p.reconnect && p.subs_per_room > 0 {
            totals.delivered.load(Ordering::Relaxed) / p.subs_per_room as u64
        } else {
            sent.saturating_sub(refused + other_refusals)
        },
        settled,
        delivered: totals.delivered.load(Ordering::Relaxed),
        closed: refusals.closed.load(Ordering::Relaxed),
        reopened: refusals.reopened.load(Ordering::Relaxed),
        reopen_refused: refusals.reopen_refused.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// `count` Publish frames, rooms round-robin, in one buffer: one write sends them all, or the
/// first few of them (every frame has the same length: room names and payloads do).
struct Batch {
    bytes: Vec<u8>,
    frame_len: usize,
    count: usize,
}

impl Batch {
    fn new(rooms: &[String], payload: usize, count: usize) -> Self {
        let body = template(payload);
        let frames: Vec<_> = (0..count)
            .map(|i| {
                encode_command(&ClientFrame {
                    id: 0,
                    command: Command::Publish {
                        room: rooms[i % rooms.len()].clone(),
                        payload: body.clone().into(),
                        ack: false,
                    },
                })
            })
            .collect();
        Self {
            frame_len: frames.first().map_or(0, |f| f.len()),
            bytes: frames.concat(),
            count,
        }
    }

    /// The first `n` frames (at most all of them).
    fn first(&self, n: usize) -> &[u8] {
        &self.bytes[..n.min(self.count) * self.frame_len]
    }
}

/// A publisher session past Hello/Welcome.
struct FloodSession {
    /// Held so the session stays open.
    _conn: Connection,
    send: SendStream,
    control: FrameReader,
}

impl FloodSession {
    async fn open(spec: &Spec, pool: &ClientPool) -> Result<Self> {
        let token = spec
            .token
            .as_deref()
            .ok_or_else(|| anyhow!("the noisy tenant needs a token"))?;
        let conn = pool
            .connect(&format!("https://{}/v1?token={token}", spec.pub_addr))
            .await?;
        let (mut send, recv) = conn.open_bi().await?.await?;
        let mut control = FrameReader::new(recv);
        send.write_all(&encode_command(&ClientFrame {
            id: HELLO_ID,
            command: Command::Hello {
                version: PROTOCOL_VERSION,
                client: "quiver-bench-flood".into(),
            },
        }))
        .await?;
        loop {
            let body = control
                .next()
                .await?
                .context("control stream ended before Welcome")?;
            match decode_event(&body)?.event {
                Event::Welcome { .. } => break,
                Event::Goodbye { reason, .. } => bail!("server said goodbye: {reason}"),
                _ => {}
            }
        }
        Ok(Self {
            _conn: conn,
            send,
            control,
        })
    }

    /// Writes `batch` until `stop` (at `rate` publications per second, or back to back if 0),
    /// then a Ping; returns once its Pong arrived, so every refusal
    /// of this session's publications has been counted. Replies are read all along: a client
    /// that left them unread would be throttled by its own receive window, not by the quota.
    async fn flood(
        self,
        batch: Arc<Batch>,
        rate: f64,
        sent: Arc<AtomicU64>,
        refusals: Arc<Refusals>,
        stop: CancellationToken,
    ) -> Result<()> {
        let Self {
            _conn,
            mut send,
            control,
        } = self;
        let reader = tokio::spawn(count_refusals(control, refusals));
        // A write is never cancelled halfway (the server would read half a frame): `stop` is
        // checked between batches, and a write stuck for long is an error.
        let started = Instant::now();
        let mut mine: u64 = 0;
        while !stop.is_cancelled() {
            let n = if rate > 0.0 {
                // What is due by now, in bursts of at most a batch (as the `load` publishers pace).
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                if mine >= due {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                (due - mine) as usize
            } else {
                batch.count
            };
            let bytes = batch.first(n);
            tokio::time::timeout(Duration::from_secs(10), send.write_all(bytes))
                .await
                .context("a flood write was stuck for 10 s")??;
            let n = (bytes.len() / batch.frame_len.max(1)) as u64;
            mine += n;
            sent.fetch_add(n, Ordering::Relaxed);
        }
        send.write_all(&encode_command(&ClientFrame {
            id: PING_ID,
            command: Command::Ping,
        }))
        .await?;
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .context("no Pong within 10 s of the flood's end")??
    }
}

/// Counts refusals on a control stream until the Pong to `PING_ID`.
async fn count_refusals(mut control: FrameReader, refusals: Arc<Refusals>) -> Result<()> {
    let quota = ErrorCode::QuotaExceeded.as_u16();
    loop {
        let body = control
            .next()
            .await?
            .context("control stream ended before the Pong")?;
        let frame = decode_event(&body)?;
        match frame.event {
            Event::Error { code, .. } if code == quota => {
                refusals.quota.fetch_add(1, Ordering::Relaxed);
            }
            Event::Error { .. } => {
                refusals.other.fetch_add(1, Ordering::Relaxed);
            }
            Event::Pong if frame.id == PING_ID => return Ok(()),
            Event::Goodbye { reason, .. } => bail!("server said goodbye: {reason}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_whole_frames_rooms_in_turn() {
        let rooms = vec!["noisy.r0".to_owned(), "noisy.r1".to_owned()];
        let batch = Batch::new(&rooms, 100, 3);
        assert_eq!(batch.bytes.len(), 3 * batch.frame_len);
        assert_eq!(batch.first(9).len(), batch.bytes.len());
        let mut decoder = quiver_proto::FrameDecoder::new(quiver_proto::DEFAULT_MAX_FRAME);
        decoder.push(batch.first(2));
        let mut seen = Vec::new();
        while let Some(body) = decoder.next_frame().unwrap() {
            match quiver_proto::decode_command(&body).unwrap().command {
                Command::Publish { room, payload, .. } => {
                    assert_eq!(payload.len(), 100);
                    seen.push(room);
                }
                other => panic!("not a publish: {other:?}"),
            }
        }
        assert_eq!(seen, ["noisy.r0", "noisy.r1"]);
    }
}
