//! One subscription's writer: it owns the room's unidirectional stream, writes the replay a
//! resuming subscriber asked for, then drains the subscriber's bounded queue, writing what is
//! queued in one write, so a burst costs one write rather than one per message.

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use quiver_proto::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wtransport::{Connection, SendStream, VarInt};

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
                    permit.send(frame);
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

/// A subscription's stream while its writer is idle, lent to the hub so that a publication is
/// written straight into it from the fan-out: no queue, no wake-up of the writer task, one hop
/// fewer per delivery. On a shared connection (WebSocket, SSE) what is lent is the writer's
/// sender into the session's outgoing queue, and the hub queues the frame there itself. The lock orders the two: the hub writes directly only while the stream
/// is lent and nothing waits in the queue; otherwise it queues, and the writer takes the stream
/// back before it writes. Either way frames reach the stream in the order the hub saw them.
///
/// A task handing the hub a run of publications may hold the frames for the run's end
/// (`crate::cork`): they wait in `pending`, under the same lock, and every later frame goes
/// after them, so the order is kept there too.
pub struct Direct {
    lent: std::sync::Mutex<Option<Lent>>,
    tally: Arc<crate::metrics::Tally>,
    /// The subscription's queue and overflow token, for what a held run's write leaves over
    /// (`flush`): queued for the writer, or, with no room, the writer ends the subscription
    /// as a slow consumer. Weak: the writer must still see its queue close when the hub drops
    /// the subscription.
    queue: crate::delivery_queue::WeakSender,
    overflow: CancellationToken,
}

/// What an idle writer lends the hub.
pub enum Target {
    /// Its own stream (WebTransport).
    Stream(SendStream),
    /// Its sender (of the rooms' lane) into the session's one outgoing queue.
    Shared(queue::Sender<Bytes>),
}

struct Lent {
    target: Target,
    skip_through: Option<u64>,
    /// A delivery was queued for the writer since the stream was lent (the stream took only
    /// part of it): every later one queues behind it. The hub is the queue's only sender and
    /// queues under this lock, so this says what `!queue.is_empty()` would without touching
    /// the queue's cache lines on every delivery.
    behind: bool,
    /// Frames held for a run's single write (`crate::cork`); empty while `behind`, and always
    /// on a shared connection (its socket's writer joins what is queued by itself).
    pending: Vec<Bytes>,
    /// When the oldest of `pending` entered the hub: what the write leaves goes to the writer
    /// with it, so its latency sample is the run's oldest publication's, not the flush's
    /// (outside audit 120, F3). One instant, not one per frame: a list was an allocation per
    /// stream per run (review 124, R2).
    pending_oldest: Option<std::time::Instant>,
    /// Deliveries taken here and their bytes, not yet added to the session's tally: counted
    /// under the lock already held, and added when the stream goes back to the writer, when
    /// the subscription ends (`Direct::settle`) or with the `Direct` (two atomic additions per
    /// delivery were about 3 % of the server's CPU in a 200-subscriber fan-out).
    sent_bytes: u64,
    sent_messages: u64,
}

impl Lent {
    fn count(&mut self, bytes: usize) {
        self.sent_bytes += bytes as u64;
        self.sent_messages += 1;
    }

    /// Writes what the stream takes of `chunks` without waiting, emptying the chunks it took
    /// whole and cutting the front off the one it took in part; the bytes it took. Out of
    /// stream credit, or the client stopped the stream: some are left, and the writer finds
    /// out which when it writes them (and counts what it writes). (Only own streams hold
    /// frames for a write.)
    fn write_now(&mut self, chunks: &mut [Bytes]) -> u64 {
        let Target::Stream(stream) = &mut self.target else {
            return 0;
        };
        match stream.quic_stream_mut().write_chunks(chunks).now_or_never() {
            Some(Ok(written)) => written.bytes as u64,
            _ => 0,
        }
    }

    /// Counts `bytes` the stream took here that no one else counts: of held frames, or the
    /// front of a frame the writer writes the rest of (`quiver_delivery_bytes_total` and the
    /// tally's bytes, once: outside audit 120, F3, held frames' bytes were counted when held
    /// and their rest again by the writer, and a part taken was counted nowhere).
    fn count_bytes(&mut self, bytes: u64) {
        if bytes > 0 {
            hot::delivery_bytes().increment(bytes);
            self.sent_bytes += bytes;
        }
    }
}

/// How many frames one stream holds for a run before it writes them anyway.
const MAX_PENDING: usize = crate::cork::MAX_RUN;

impl Direct {
    pub fn new(
        tally: Arc<crate::metrics::Tally>,
        queue: &crate::delivery_queue::Sender,
        overflow: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            lent: std::sync::Mutex::new(None),
            tally,
            queue: queue.downgrade(),
            overflow,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Lent>> {
        self.lent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lends the idle writer's stream; `Some` (it comes straight back) if something was queued
    /// meanwhile, and the writer writes that first.
    fn lend_stream(
        &self,
        stream: SendStream,
        queue: &crate::delivery_queue::Receiver,
        skip_through: Option<u64>,
    ) -> Option<SendStream> {
        match self.lend(Target::Stream(stream), queue, skip_through) {
            Err(Target::Stream(stream)) => Some(stream),
            _ => None,
        }
    }

    /// Lends the idle shared writer's sender, as [`Direct::lend_stream`] its stream.
    pub(crate) fn lend_out(
        &self,
        out: queue::Sender<Bytes>,
        queue: &crate::delivery_queue::Receiver,
        skip_through: Option<u64>,
    ) -> Option<queue::Sender<Bytes>> {
        match self.lend(Target::Shared(out), queue, skip_through) {
            Err(Target::Shared(out)) => Some(out),
            _ => None,
        }
    }

    fn lend(
        &self,
        target: Target,
        queue: &crate::delivery_queue::Receiver,
        skip_through: Option<u64>,
    ) -> Result<(), Target> {
        let mut lent = self.lock();
        if !queue.is_empty() {
            return Err(target);
        }
        *lent = Some(Lent {
            target,
            skip_through,
            behind: false,
            pending: Vec::new(),
            pending_oldest: None,
            sent_bytes: 0,
            sent_messages: 0,
        });
        Ok(())
    }

    /// Adds what `lent` counted to the session's tally.
    fn settle_lent(&self, lent: &mut Lent) {
        if lent.sent_messages > 0 {
            self.tally
                .sent(lent.sent_bytes as usize, lent.sent_messages);
            lent.sent_bytes = 0;
            lent.sent_messages = 0;
        }
    }

    /// Adds the deliveries written here so far to the session's tally (the subscription ends;
    /// the session reads its tally for its closing line).
    pub fn settle(&self) {
        if let Some(lent) = self.lock().as_mut() {
            self.settle_lent(lent);
        }
    }

    /// The stream back for the writer. Only a queued delivery (which comes after anything
    /// held), or the subscription's end, makes the writer take it, so frames still held here
    /// belong to a subscription that is ending: they go with it. The session takes it too
    /// when it stops a shared writer, so that nothing more of the room is queued on the
    /// connection (`Session::drop_sub`).
    pub fn reclaim(&self) -> Option<Target> {
        let mut lent = self.lock().take()?;
        self.settle_lent(&mut lent);
        Some(lent.target)
    }

    /// One delivery from the hub: held for a run (`crate::cork`), or written now if the stream
    /// is lent and takes it whole, else queued for the writer (what the stream took already is
    /// not queued again). [`Offered::Written`] leaves the delivery metrics to the hub, which
    /// records them once per fan-out pass: a clock read and a histogram sample per delivery
    /// were ~9 % of the server's CPU in a 100-subscriber fan-out. A held frame's bytes are
    /// counted when the run's write takes them, its latency by the run (`cork::Held::flush`).
    pub fn offer(
        self: &Arc<Self>,
        queue: &crate::delivery_queue::Sender,
        delivery: &Delivery,
    ) -> Result<Offered, mpsc::error::TrySendError<Delivery>> {
        let mut lent = self.lock();
        let Some(idle) = lent.as_mut().filter(|idle| !idle.behind) else {
            return queue.try_send(delivery.clone()).map(|()| Offered::Queued);
        };
        if !fresh(idle.skip_through, delivery) {
            return Ok(Offered::Queued);
        }
        // The connection's queue takes it, or is full (or gone): then the writer takes over and
        // waits for room, and every later delivery queues behind it.
        if let Target::Shared(out) = &idle.target {
            let rest = match out.try_send(delivery.frame.clone()) {
                Ok(()) => {
                    idle.count(delivery.frame.len());
                    return Ok(Offered::Written);
                }
                Err(queue::TrySendError::Full(rest) | queue::TrySendError::Closed(rest)) => rest,
            };
            idle.behind = true;
            return queue
                .try_send(Delivery {
                    offset: delivery.offset,
                    frame: rest,
                    entered: delivery.entered,
                })
                .map(|()| Offered::Queued);
        }
        // Held frames are counted as messages now, their bytes as the write takes them.
        if idle.pending.len() < MAX_PENDING
            && crate::cork::hold(self, idle.pending.is_empty(), delivery.entered)
        {
            idle.pending.push(delivery.frame.clone());
            idle.pending_oldest.get_or_insert(delivery.entered);
            idle.sent_messages += 1;
            return Ok(Offered::Held);
        }
        if !idle.pending.is_empty() {
            idle.pending.push(delivery.frame.clone());
            idle.pending_oldest.get_or_insert(delivery.entered);
            idle.sent_messages += 1;
            self.write_pending(idle, Some(queue));
            return Ok(Offered::Held);
        }
        let mut rest = [delivery.frame.clone()];
        let written = idle.write_now(&mut rest);
        if rest[0].is_empty() {
            // The hub adds a pass's whole frames to the metric at once.
            idle.count(delivery.frame.len());
            return Ok(Offered::Written);
        }
        // The writer counts the rest, and the message.
        idle.count_bytes(written);
        // Out of stream credit, or the client stopped the stream: the writer takes over, and
        // finds out which when it writes the rest.
        let [rest] = rest;
        idle.behind = true;
        queue
            .try_send(Delivery {
                offset: delivery.offset,
                frame: rest,
                entered: delivery.entered,
            })
            .map(|()| Offered::Queued)
    }

    /// Writes what this stream holds for a run (`crate::cork::Held::flush`).
    pub fn flush(&self) {
        let mut lent = self.lock();
        if let Some(idle) = lent.as_mut().filter(|idle| !idle.pending.is_empty()) {
            self.write_pending(idle, None);
        }
    }

    /// Writes the held frames in one write, counting the bytes it took; what the stream does
    /// not take goes to the writer, which counts it as it writes it (each such frame's message
    /// is taken off this tally: the writer counts one for it). No room in the queue for it
    /// ends the subscription (the writer counts the `slow_consumer` end: outside audit 120,
    /// F2).
    fn write_pending(&self, idle: &mut Lent, queue: Option<&crate::delivery_queue::Sender>) {
        let mut pending = std::mem::take(&mut idle.pending);
        let entered = idle
            .pending_oldest
            .take()
            .unwrap_or_else(std::time::Instant::now);
        let written = idle.write_now(&mut pending);
        idle.count_bytes(written);
        let mut left = pending.into_iter().filter(|f| !f.is_empty()).peekable();
        if left.peek().is_none() {
            return;
        }
        // Out of stream credit, or the client stopped the stream: the writer takes over (as
        // in `offer`).
        idle.behind = true;
        let upgraded = queue.is_none().then(|| self.queue.upgrade()).flatten();
        // Unsubscribed meanwhile (the queue is gone): nobody wants the rest.
        let Some(queue) = queue.or(upgraded.as_ref()) else {
            return;
        };
        for frame in left {
            idle.sent_messages = idle.sent_messages.saturating_sub(1);
            let rest = Delivery {
                offset: None,
                frame,
                entered,
            };
            if queue.try_send(rest).is_err() {
                self.overflow.cancel();
                return;
            }
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let lent = self.lent.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut lent) = lent.take() {
            self.settle_lent(&mut lent);
        }
    }
}

/// What [`Direct::offer`] did with a delivery it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// On the stream now (the hub records the delivery metrics).
    Written,
    /// Held for a run's write, or written with the frames held before it: the write counts
    /// its bytes, the run's flush samples its latency (`crate::cork`).
    Held,
    /// Queued for the writer, or already in the replay: the writer accounts for it.
    Queued,
}

/// Whether a live delivery is past the replay (`Writer::skip_through`): older ones were in it.
fn fresh(skip_through: Option<u64>, delivery: &Delivery) -> bool {
    match (skip_through, delivery.offset) {
        (Some(seen), Some(offset)) => offset > seen,
        _ => true,
    }
}

/// Frames waiting for one stream write.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    bytes: usize,
    /// Live publications among them (for the session's tally).
    live: u64,
    /// Bytes of them taken off the queue: still counted against the session's budget, given
    /// back once written (outside audit 120, F1).
    queued: usize,
}

impl Batch {
    /// A frame of the replay's or a `latest` value: not the queue's.
    fn push(&mut self, frame: Bytes, live: bool) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.live += u64::from(live);
        self.chunks.push(frame);
    }

    /// A live delivery taken off the queue.
    fn push_queued(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.push(frame, true);
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
        self.live = 0;
        self.queued = 0;
    }
}

/// Why [`Stall::write`] gave up.
enum NotWritten {
    /// The stream took no byte for the deadline.
    Stalled,
    Failed(wtransport::quinn::WriteError),
}

/// A writer's stall deadline: its writes give up once the stream has taken no byte for a whole
/// deadline (so a stall is noticed between one and two deadlines after it began). One timer
/// per writer, made at its first write that has to wait and reset at most once per deadline,
/// not once per write: a fan-out's writers wait on flow control all the time.
struct Stall {
    deadline: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Bytes written so far, and when the timer was last armed.
    written: u64,
    armed_at: u64,
}

impl Stall {
    fn new(deadline: std::time::Duration) -> Self {
        Self {
            deadline,
            timer: None,
            written: 0,
            armed_at: 0,
        }
    }

    /// Writes every chunk, as quinn's `write_all_chunks` does, unless the stream stalls. A
    /// write that goes through at once costs what it did without the deadline: the timer is
    /// polled only once a write has to wait.
    async fn write(
        &mut self,
        stream: &mut wtransport::quinn::SendStream,
        mut chunks: &mut [Bytes],
    ) -> Result<(), NotWritten> {
        while !chunks.is_empty() {
            let written = tokio::select! {
                biased;
                written = stream.write_chunks(chunks) => written.map_err(NotWritten::Failed)?,
                stalled = self.tick() => {
                    if stalled {
                        return Err(NotWritten::Stalled);
                    }
                    continue;
                }
            };
            self.written += written.bytes as u64;
            chunks = &mut chunks[written.chunks..];
        }
        Ok(())
    }

    /// Resolves when the timer fires: `true` if nothing was written during a whole deadline,
    /// else the timer is armed again.
    async fn tick(&mut self) -> bool {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        // Elapsed while nothing waited (the writer was idle, or writes went through at once):
        // the stall, if any, starts now.
        if timer.is_elapsed() {
            timer.as_mut().reset(tokio::time::Instant::now() + deadline);
            self.armed_at = self.written;
        }
        timer.as_mut().await;
        if self.written == self.armed_at {
            return true;
        }
        timer.as_mut().reset(tokio::time::Instant::now() + deadline);
        self.armed_at = self.written;
        false
    }
}

/// One batch's write: under the stall deadline, if the room has one.
async fn write(
    stream: &mut wtransport::quinn::SendStream,
    chunks: &mut [Bytes],
    stall: Option<&mut Stall>,
) -> Result<(), NotWritten> {
    match stall {
        Some(stall) => stall.write(stream, chunks).await,
        None => stream
            .write_all_chunks(chunks)
            .await
            .map_err(NotWritten::Failed),
    }
}

async fn open(conn: &Connection) -> Option<wtransport::SendStream> {
    conn.open_uni().await.ok()?.await.ok()
}
