//! One subscription's writer: it owns the room's unidirectional stream, writes the replay a
//! resuming subscriber asked for, then drains the subscriber's bounded queue, writing what is
//! queued in one write, so a burst costs one write rather than one per message.

use std::sync::Arc;

use bytes::Bytes;
use quiver_proto::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wtransport::{Connection, SendStream, VarInt};

use super::direct::{fresh, Direct, Target};
use super::write::{open, write, Batch, NotWritten, Stall};
use crate::hub::Delivery;
use crate::latest::{self, Slot};
use crate::metrics::hot;
// Upper bound of one coalesced write (the replay's batch size too).
use crate::replay::MAX_BATCH;
use crate::transport::queue;

/// Reported to the session when a writer ends on its own.
#[derive(Debug)]
pub struct Ended {
    pub sub_id: u64,
    /// Why, to tell the client in an `Unsubscribed`; `None` when the connection is gone (there
    /// is no one to tell).
    pub cause: Option<(ErrorCode, &'static str)>,
}

/// Why the hub ended a subscription (it cancels the subscription's `overflow` token either
/// way): the queue overflowed, unless a cause was set first.
#[derive(Debug, Default)]
pub struct HubEnd(std::sync::OnceLock<(ErrorCode, &'static str)>);

impl HubEnd {
    /// Records why, before the hub cancels the token; the first cause set stays.
    pub fn set(&self, cause: (ErrorCode, &'static str)) {
        let _ = self.0.set(cause);
    }

    /// The cause the session tells the client.
    pub fn cause(&self) -> (ErrorCode, &'static str) {
        self.0
            .get()
            .copied()
            .unwrap_or((ErrorCode::SlowConsumer, "subscriber queue overflowed"))
    }
}

/// Where a subscription's frames go.
pub enum Sink {
    /// Its own unidirectional stream: the design.
    OwnStream(Connection),
    /// The session's one outgoing channel, shared by every subscription: WebSocket and SSE,
    /// and WebTransport under `ablation.single_stream` (the head-of-line benchmark).
    Shared(queue::Sender<Bytes>),
}

pub struct Writer {
    pub sink: Sink,
    pub sub_id: u64,
    /// The id the client knows the subscription by (its datagrams carry it): per session.
    pub wire_id: u64,
    /// `SubscriptionStream` frame (own streams), then the replayed publications: written
    /// first, a batch at a time.
    pub preamble: crate::replay::Preamble,
    /// Live deliveries at or below this offset were already in the replay: skipped, so the seam
    /// between history and live has neither gap nor duplicate.
    pub skip_through: Option<u64>,
    pub queue: crate::delivery_queue::Receiver,
    /// Cancelled when the queue overflows, and by the session when it ends the subscription
    /// (`Unsubscribe` and the like; `ended_by_session` is set first): one token to watch, so
    /// a waiting write polls no more than it did before the session could end it.
    pub overflow: CancellationToken,
    /// Why the hub cancelled `overflow`.
    pub hub_end: Arc<HubEnd>,
    /// Set (never watched) before the session cancels `overflow`: the writer then ends
    /// quietly, and a writer blocked on a client that gives no stream credit resets its stream
    /// (code 0) rather than hold the stream, its task and a replay until the connection ends.
    pub ended_by_session: CancellationToken,
    pub ended: mpsc::UnboundedSender<Ended>,
    /// How long opening the stream may wait for the client's stream credit.
    pub open_deadline: std::time::Duration,
    /// How long the stream may take no byte while frames wait for it (`timeouts.reply`):
    /// past that the subscription ends as a slow consumer, so a client that withholds credit
    /// in a quiet room (where the queue never overflows) holds no replay or frames for ever.
    /// `None` in `latest` rooms, which are never ended for falling behind: their writer holds
    /// one batch at most, the newest value waiting in its slot.
    pub stall_deadline: Option<std::time::Duration>,
    /// The session's traffic, for its closing log line.
    pub tally: std::sync::Arc<crate::metrics::Tally>,
    /// The room, for `Latest` frames.
    pub room: String,
    /// In `latest` rooms: where the newest publication waits (`crate::latest`).
    pub latest: Option<Arc<Slot>>,
    /// The stream's send priority (its namespace's `priority`).
    pub priority: i32,
    /// Where the writer lends its idle stream (or, on a shared connection, its place in the
    /// session's outgoing queue) to the hub: every room but `latest` rooms.
    pub direct: Option<Arc<Direct>>,
}

impl Writer {
    /// Runs until the queue's sender is dropped (unsubscribed: the stream is finished when it is
    /// dropped), the queue overflows (the stream is reset and the session told), or the peer goes
    /// away.
    pub async fn run(mut self) {
        let conn = match &self.sink {
            Sink::OwnStream(conn) => conn.clone(),
            Sink::Shared(out) => {
                let out = out.clone();
                return self.run_shared(out).await;
            }
        };
        let stream = tokio::select! {
            _ = self.overflow.cancelled() => return self.report_overflow(),
            opened = tokio::time::timeout(self.open_deadline, open(&conn)) => match opened {
                Ok(Some(s)) => s,
                Ok(None) => return,
                // A silent hole is the worst answer: say why the room delivers nothing.
                Err(_) => {
                    let _ = self.ended.send(Ended {
                        sub_id: self.sub_id,
                        cause: Some((ErrorCode::StreamLimit, "the client's stream limit left no room for this subscription's stream")),
                    });
                    return;
                }
            },
        };
        stream.set_priority(self.priority);
        // Resolves when the client stops the stream (STOP_SENDING). Watched while the writer is
        // idle, so a stopped subscription in a quiet room ends at once rather than at the next
        // publication (a busy writer learns it from its failing write). It owns what it needs,
        // so it outlives lending the stream to the hub.
        let mut stopped = std::pin::pin!(stream.quic_stream().stopped());
        let slot = self.latest.clone();
        // The frames of one write, as the hub encoded them: quinn takes `Bytes` without copying,
        // so a frame is never copied between the hub and the QUIC send buffer.
        let mut batch = Batch::default();
        // When the oldest live frame in `batch` reached the hub (the replay has none).
        let mut oldest = None;
        // `None` while the stream is lent to the hub (the writer is idle).
        let mut stream = Some(stream);
        // Why the loop ended, when it was not an overflow: the stream took nothing for
        // `stall_deadline`, or the replay's rest could not be read.
        let mut ending = None;
        let mut stall = self.stall_deadline.map(Stall::new);
        loop {
            // The header and the replay first, encoded a batch at a time as the stream takes
            // them; nothing live goes before their end.
            if batch.is_empty() && !self.preamble.is_done() {
                let next = tokio::select! {
                    biased;
                    _ = self.overflow.cancelled() => break,
                    next = self.preamble.next_batch() => next,
                };
                match next {
                    Ok(Some(replayed)) => batch.push(replayed, false),
                    Ok(None) => {}
                    Err(e) => {
                        ending = Some(crate::replay::ended_by(&e));
                        break;
                    }
                }
            }
            if batch.is_empty() {
                if let Some(direct) = &self.direct {
                    if let Some(idle) = stream.take() {
                        stream = direct.lend_stream(idle, &self.queue, self.skip_through);
                    }
                }
                tokio::select! {
                    biased;
                    _ = self.overflow.cancelled() => {
                        // Ended by the session while idle: what was written ends cleanly.
                        if self.ended_by_session.is_cancelled() {
                            drop(self.reclaim(stream));
                            return;
                        }
                        break;
                    }
                    msg = self.queue.recv() => match msg {
                        Some(first) if self.fresh(&first) => {
                            batch.push_queued(first.frame);
                            oldest = Some(first.entered);
                        }
                        Some(skipped) => self.queue.give_back(skipped.frame.len()),
                        None => {
                            drop(self.reclaim(stream));
                            return;
                        }
                    },
                    // A datagram when it fits (once the connection's datagram buffer has room
                    // for it), else a frame for this stream.
                    frame = latest::send_with_room(slot.as_deref(), &conn, self.wire_id, &self.room) => {
                        if let Some(frame) = frame {
                            batch.push(frame, false);
                        }
                    }
                    // Completes once: every outcome returns.
                    stop = &mut stopped => {
                        drop(self.reclaim(stream));
                        if matches!(stop, Ok(Some(_))) {
                            self.report_stopped();
                        }
                        return;
                    }
                }
                stream = self.reclaim(stream);
            }
            let most = self.queue.batch_limit(MAX_BATCH);
            while batch.bytes < most && self.preamble.is_done() {
                match self.queue.try_recv() {
                    Ok(more) if self.fresh(&more) => {
                        batch.push_queued(more.frame);
                        oldest.get_or_insert(more.entered);
                    }
                    Ok(skipped) => self.queue.give_back(skipped.frame.len()),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let Some(out) = stream.as_mut() else {
                return;
            };
            tokio::select! {
                biased;
                _ = self.overflow.cancelled() => break,
                written = write(out.quic_stream_mut(), &mut batch.chunks, stall.as_mut()) => match written {
                    Ok(()) => {}
                    Err(NotWritten::Stalled) => {
                        ending = Some((
                            ErrorCode::SlowConsumer,
                            "the client took nothing from this subscription's stream for too long",
                        ));
                        break;
                    }
                    // The client stopped the stream: the subscription is over, and it is told.
                    Err(NotWritten::Failed(wtransport::quinn::WriteError::Stopped(_))) => return self.report_stopped(),
                    // The connection is gone: the session ends too.
                    Err(NotWritten::Failed(_)) => {
                        let _ = self.ended.send(Ended { sub_id: self.sub_id, cause: None });
                        return;
                    }
                },
            }
            hot::delivery_bytes().increment(batch.bytes as u64);
            self.tally.sent(batch.bytes, batch.live);
            // Written: the queued frames' bytes leave the session's budget only now (outside
            // audit 120, F1: a batch waiting for credit was outside it).
            self.queue.give_back(batch.queued);
            if let Some(entered) = oldest.take() {
                hot::delivery_latency().record(entered.elapsed().as_secs_f64());
            }
            batch.clear();
        }
        // Overflowed, stalled or the replay broke; or ended by the session while the client
        // withheld the credit for the rest, which is not waited for (code 0, and the session
        // says why itself).
        let code = if self.ended_by_session.is_cancelled() {
            0
        } else {
            let (code, _) = ending.unwrap_or_else(|| self.hub_end.cause());
            u32::from(code.as_u16())
        };
        if let Some(mut stream) = self.reclaim(stream) {
            let _ = stream.reset(VarInt::from_u32(code));
        }
        match ending {
            Some(cause) if !self.ended_by_session.is_cancelled() => self.report_end(cause),
            _ => self.report_overflow(),
        }
    }

    /// Tells the session the subscription ended, and why. A `slow_consumer` end is counted
    /// here, once per subscription, whoever found it (the hub, a run's flush, the stall
    /// deadline): the hub and the flush each counted theirs, so most were counted twice and
    /// stall endings never (outside audit 120, F2).
    fn report_end(&self, cause: (ErrorCode, &'static str)) {
        if cause.0 == ErrorCode::SlowConsumer {
            hot::slow_consumer_ends().increment(1);
        }
        let _ = self.ended.send(Ended {
            sub_id: self.sub_id,
            cause: Some(cause),
        });
    }

    /// The client stopped the stream: the session ends the subscription and says so.
    fn report_stopped(&self) {
        let _ = self.ended.send(Ended {
            sub_id: self.sub_id,
            cause: Some((
                ErrorCode::StreamStopped,
                "the client stopped this subscription's stream",
            )),
        });
    }

    /// The stream back from the hub, if it was lent.
    fn reclaim(&self, stream: Option<SendStream>) -> Option<SendStream> {
        stream.or_else(|| match self.direct.as_ref()?.reclaim()? {
            Target::Stream(stream) => Some(stream),
            Target::Shared(_) => None,
        })
    }

    /// The session's outgoing queue back from the hub, if it was lent.
    fn reclaim_out(&self, out: Option<queue::Sender<Bytes>>) -> Option<queue::Sender<Bytes>> {
        out.or_else(|| match self.direct.as_ref()?.reclaim()? {
            Target::Shared(out) => Some(out),
            Target::Stream(_) => None,
        })
    }

    fn fresh(&self, delivery: &Delivery) -> bool {
        fresh(self.skip_through, delivery)
    }

    /// The writer of a subscription on a shared connection (WebSocket, SSE): frames go into
    /// the session's outgoing queue. An overflow ends it whatever it is waiting for (room in
    /// that queue, a replay's turn, the broker): a client that stopped reading would otherwise
    /// keep a dropped subscription counted, present in its room and holding its queue until
    /// the session itself ends (outside audit).
    async fn run_shared(mut self, out: queue::Sender<Bytes>) {
        let overflow = self.overflow.clone();
        let overflowed = tokio::select! {
            biased;
            _ = overflow.cancelled() => true,
            _ = self.write_shared(out) => false,
        };
        if overflowed {
            self.report_overflow();
        }
    }

    async fn write_shared(&mut self, out: queue::Sender<Bytes>) {
        // The replay, in batches of whole frames as the connection takes them.
        loop {
            let batch = match self.preamble.next_batch().await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => {
                    let _ = self.ended.send(Ended {
                        sub_id: self.sub_id,
                        cause: Some(crate::replay::ended_by(&e)),
                    });
                    return;
                }
            };
            let len = batch.len() as u64;
            if out.send(batch).await.is_err() {
                return;
            }
            hot::delivery_bytes().increment(len);
            self.tally.sent(len as usize, 0);
        }
        let slot = self.latest.clone();
        // The `latest` value still in the outgoing queue: the next waits until it is written.
        let mut in_flight = None;
        // `None` while lent to the hub (the writer is idle): the hub then queues this room's
        // frames on the connection itself, one task hop fewer per delivery.
        let mut out = Some(out);
        loop {
            if let Some(direct) = &self.direct {
                if let Some(idle) = out.take() {
                    out = direct.lend_out(idle, &self.queue, self.skip_through);
                }
            }
            let delivery = tokio::select! {
                biased;
                msg = self.queue.recv() => match msg {
                    Some(m) => m,
                    None => return,
                },
                value = latest::next_after(slot.as_deref(), in_flight.as_ref()) => {
                    // (`latest` rooms lend nothing: `out` is here.)
                    let Some(out) = out.as_ref() else {
                        return;
                    };
                    // Conflation on a shared connection: one value at a time in the outgoing
                    // queue; when there is room, what is newest by then goes.
                    let Ok(permit) = out.reserve().await else {
                        return;
                    };
                    let (sequence, payload) = slot.as_deref().and_then(Slot::take).unwrap_or(value);
                    let (frame, done) = latest::tracked(latest::latest_frame(&self.room, sequence, payload));
                    in_flight = Some(done);
                    // Counted as a value's frame on an own stream is (audit 134, F3: on a
                    // shared connection it was counted nowhere; over SSE the adapter adds what
                    // its text takes beyond the frame).
                    let len = frame.len();
                    permit.send(frame);
                    hot::delivery_bytes().increment(len as u64);
                    self.tally.sent(len, 0);
                    continue;
                }
            };
            // Queued by the hub: it found the connection's queue full (or keeps order behind
            // such a delivery), so the writer takes its place back and waits for room.
            out = self.reclaim_out(out);
            let len = delivery.frame.len() as u64;
            if !self.fresh(&delivery) {
                self.queue.give_back(len as usize);
                continue;
            }
            let Some(sender) = out.as_ref() else {
                return;
            };
            // Counted against the session's budget while it waits for room in the
            // connection's queue (outside audit 120, F1).
            if sender.send(delivery.frame).await.is_err() {
                return;
            }
            self.queue.give_back(len as usize);
            hot::delivery_bytes().increment(len);
            self.tally.sent(len as usize, 1);
            hot::delivery_latency().record(delivery.entered.elapsed().as_secs_f64());
        }
    }

    /// Tells the session the hub ended the subscription (its queue overflowed, or
    /// [`HubEnd`]'s cause), unless it was the session that ended it (it cancels the same token).
    fn report_overflow(&self) {
        if self.ended_by_session.is_cancelled() {
            return;
        }
        self.report_end(self.hub_end.cause());
    }
}
