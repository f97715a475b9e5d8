//! The tasks of one live connection: the control stream's writer and reader, the acceptor of
//! server-opened subscription streams, and one delivery task per subscription stream. They
//! report to the connection task (`connection.rs`) through [`ConnEvent`]s tagged with the
//! connection's epoch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_proto::{decode_event, DecodeError, Event, FrameDecoder, Position, ServerFrame};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wtransport::{Connection, RecvStream, SendStream};

use crate::client::lock;
use crate::connection::{close_info, ConnEvent, EventTx, Outgoing};
use crate::pacer::Pacer;
use crate::subscription::SubEvent;

/// Read size for streams.
const READ_CHUNK: usize = 16 * 1024;
/// Most bytes coalesced into one write on the control stream.
const WRITE_COALESCE: usize = 64 * 1024;

/// Writes commands on the control stream, in order, paced to the server's rate limit and
/// coalesced into larger writes. Never finishes the stream (FACTS.md: no `finish()` on hot
/// paths); the connection's close ends it.
pub(crate) async fn writer(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut pacer: Option<Pacer>,
    events: EventTx,
    epoch: u64,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_COALESCE);
    let mut permits = Vec::new();
    while let Some(first) = rx.recv().await {
        if let Some(p) = pacer.as_mut() {
            let wait = p.reserve(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        batch.clear();
        batch.extend_from_slice(&first.frame);
        permits.push(first.permit);
        // Coalesce whatever else is queued and allowed right now.
        while batch.len() < WRITE_COALESCE && pacer.as_ref().is_none_or(|p| p.ready(Instant::now()))
        {
            match rx.try_recv() {
                Ok(next) => {
                    if let Some(p) = pacer.as_mut() {
                        p.reserve(Instant::now());
                    }
                    batch.extend_from_slice(&next.frame);
                    permits.push(next.permit);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all(&batch).await {
            let _ = events.send((
                epoch,
                ConnEvent::Lost {
                    code: 0,
                    reason: format!("control stream write failed: {e}"),
                },
            ));
            return;
        }
        permits.clear();
    }
}

/// Reads the control stream and hands every frame to the actor.
pub(crate) async fn control_reader(
    mut recv: RecvStream,
    mut dec: FrameDecoder,
    events: EventTx,
    epoch: u64,
) {
    let lost = |reason: String| (epoch, ConnEvent::Lost { code: 0, reason });
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => match decode_event(&body) {
                    Ok(frame) => {
                        if events.send((epoch, ConnEvent::Frame(frame))).is_err() {
                            return;
                        }
                    }
                    Err(DecodeError::UnknownType { id, kind }) => {
                        tracing::debug!(id, kind, "ignoring unknown event type");
                    }
                    Err(e) => {
                        let _ = events.send(lost(format!("malformed control frame: {e}")));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(lost(format!("bad control frame: {e}")));
                    return;
                }
            }
        }
        match read_chunk(&mut recv).await {
            Ok(Some(bytes)) => dec.push(&bytes),
            // The server ended the control stream or the connection: the QUIC close (watched
            // by `watch_closed`) usually carries the code; wait briefly for it.
            Ok(None) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = events.send(lost("control stream ended".into()));
                return;
            }
        }
    }
}

/// Reports the connection's close (with the server's close code, if any).
pub(crate) async fn watch_closed(conn: Connection, events: EventTx, epoch: u64) {
    let err = conn.closed().await;
    let (code, reason) = close_info(&err);
    let _ = events.send((epoch, ConnEvent::Lost { code, reason }));
}

/// Accepts server-opened subscription streams and reads their `SubscriptionStream` header.
pub(crate) async fn accept_streams(
    conn: Connection,
    max_frame: usize,
    events: EventTx,
    epoch: u64,
) {
    let mut headers = JoinSet::new();
    loop {
        tokio::select! {
            res = conn.accept_uni() => match res {
                Ok(recv) => {
                    headers.spawn(read_header(recv, max_frame, events.clone(), epoch));
                }
                Err(_) => return,
            },
            Some(_) = headers.join_next(), if !headers.is_empty() => {}
        }
    }
}

async fn read_header(mut recv: RecvStream, max_frame: usize, events: EventTx, epoch: u64) {
    let mut dec = FrameDecoder::new(max_frame);
    loop {
        match dec.next_frame() {
            Ok(Some(body)) => {
                match decode_event(&body) {
                    Ok(ServerFrame {
                        id,
                        event: Event::SubscriptionStream { room },
                    }) => {
                        let _ = events.send((
                            epoch,
                            ConnEvent::Stream {
                                id,
                                room,
                                recv,
                                dec,
                            },
                        ));
                    }
                    Ok(other) => {
                        tracing::warn!(
                            ?other,
                            "unidirectional stream without SubscriptionStream header"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "bad subscription stream header"),
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bad subscription stream header");
                return;
            }
        }
        match read_chunk(&mut recv).await {
            Ok(Some(bytes)) => dec.push(&bytes),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Delivers one subscription stream's publications to the application's queue. Waits (and so
/// stops reading the stream, letting QUIC flow control push back) while the queue is full.
pub(crate) async fn deliver(
    mut recv: RecvStream,
    mut dec: FrameDecoder,
    tx: mpsc::Sender<SubEvent>,
    last: Arc<Mutex<Option<Position>>>,
    preamble: Option<SubEvent>,
) {
    if let Some(ev) = preamble {
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    loop {
        loop {
            match dec.next_frame() {
                Ok(Some(body)) => match decode_event(&body) {
                    Ok(ServerFrame {
                        event:
                            Event::Publication {
                                room,
                                position,
                                payload,
                            },
                        ..
                    }) => {
                        let ev = SubEvent::Publication {
                            room,
                            position,
                            payload,
                        };
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                        if position.is_some() {
                            *lock(&last) = position;
                        }
                    }
                    Ok(ServerFrame {
                        event: Event::Joined { member, .. },
                        ..
                    }) => {
                        if tx.send(SubEvent::Joined { member }).await.is_err() {
                            return;
                        }
                    }
                    Ok(ServerFrame {
                        event: Event::Left { member, .. },
                        ..
                    }) => {
                        if tx.send(SubEvent::Left { member }).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(DecodeError::UnknownType { .. }) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed frame on subscription stream");
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bad frame on subscription stream");
                    return;
                }
            }
        }
        match read_chunk(&mut recv).await {
            Ok(Some(bytes)) => dec.push(&bytes),
            // Finished (unsubscribed or ended by the server) or reset, or the connection died.
            Ok(None) | Err(_) => return,
        }
    }
}

/// Reads and discards a stale subscription stream until it ends.
pub(crate) async fn drain(mut recv: RecvStream) {
    while let Ok(Some(_)) = read_chunk(&mut recv).await {}
}

/// Reads whatever the stream has (up to [`READ_CHUNK`] bytes) without a per-stream buffer:
/// quinn hands out its own `Bytes`. `Ok(None)` when the stream finished.
pub(crate) async fn read_chunk(recv: &mut RecvStream) -> Result<Option<Bytes>, String> {
    match recv.quic_stream_mut().read_chunk(READ_CHUNK, true).await {
        Ok(Some(chunk)) => Ok(Some(chunk.bytes)),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
