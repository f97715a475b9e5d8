//! The WebSocket reader: cuts each server message into frames, one at a time, and routes each
//! where WebTransport would have delivered it: control events to the state machine, each
//! subscription's frames to a [`SubStream`] of its own, keyed by room (see `websocket.rs` for
//! the rules).
//!
//! A message is bounded by what PROTOCOL.md §9.2 lets a server put in one (less than 16 KiB of
//! frames, then one more), and its frames are decoded and routed one after the other, never
//! collected: a hostile server's 16 MiB message of 6-byte `Pong`s made a `Vec` of 2.8 million
//! frames, about 500 MB (outside audit 103, F2). What a routed frame may then hold is bounded
//! as before: control frames by the connection's credit, a room's by its share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::SplitStream;
use futures::StreamExt;
use quiver_proto::{decode_event, DecodeError, Event, FrameDecoder, ServerFrame, LENGTH_PREFIX};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{close_frame_info, Ws};
use crate::connection::{ConnEvent, EventTx};
use crate::error::{clip, ClientError};
use crate::heartbeat::Liveness;
use crate::transport::{event_bytes, frame_room, SubStream, WsShare, WS_SUB_BYTES, WS_SUB_QUEUE};

/// What a server message holds besides its last frame: the server adds no frame to a message
/// that holds 16 KiB already (PROTOCOL.md §9.2).
const BATCH: usize = 16 * 1024;

/// The largest message a server may send in a session whose frames are at most `max_frame`:
/// less than [`BATCH`] bytes of frames, then one frame and its length prefix.
pub(super) fn max_message(max_frame: usize) -> usize {
    BATCH + LENGTH_PREFIX + max_frame
}

/// A message of `len` bytes over `max` is a protocol error: the connection ends (and the
/// client reconnects) before any of it is decoded.
fn message_fits(len: usize, max: usize) -> Result<(), ClientError> {
    if len > max {
        return Err(ClientError::Protocol(format!(
            "the server sent a message of {len} bytes, over the {max} one may hold (16 KiB of \
             frames and one more frame, PROTOCOL.md 9.2)"
        )));
    }
    Ok(())
}

/// Routes the frames of the message in `dec`, one at a time; the message must end at a frame's
/// end. `Ok(false)` once the state machine is gone or the connection is to end.
async fn route_buffered(dec: &mut FrameDecoder, router: &mut Router) -> Result<bool, ClientError> {
    while let Some(body) = dec
        .next_frame()
        .map_err(|e| ClientError::Protocol(format!("bad frame: {e}")))?
    {
        match decode_event(&body) {
            Ok(frame) => {
                if !router.route(frame).await {
                    return Ok(false);
                }
            }
            Err(DecodeError::UnknownType { id, kind }) => {
                tracing::debug!(id, kind, "ignoring unknown event type");
            }
            Err(e) => return Err(ClientError::Protocol(format!("malformed frame: {e}"))),
        }
    }
    if dec.buffered() != 0 {
        return Err(ClientError::Protocol(
            "a frame spans two WebSocket messages (PROTOCOL.md 9.2)".into(),
        ));
    }
    Ok(true)
}

/// Reads the socket until it ends or breaks the protocol. `dec` holds what followed `Welcome`
/// in its message of `first` bytes (decoded under the handshake's default limit until then);
/// from here frames may be `max_frame` long.
pub(super) async fn reader(
    mut stream: SplitStream<Ws>,
    mut dec: FrameDecoder,
    first: usize,
    max_frame: usize,
    mut router: Router,
    liveness: Arc<Liveness>,
) {
    dec.set_max_frame(max_frame);
    let max = max_message(max_frame);
    let first = match message_fits(first, max) {
        Ok(()) => route_buffered(&mut dec, &mut router).await,
        Err(e) => Err(e),
    };
    let (code, reason) = match first {
        Ok(false) => return,
        Err(e) => (0, e.to_string()),
        Ok(true) => loop {
            let Some(msg) = stream.next().await else {
                break (0, "connection closed".to_string());
            };
            // A server's ping proves nothing: a server that floods pings and reads nothing
            // would look alive for ever (outside audit). Frames and the pongs to the client's
            // own heartbeat pings do.
            if !matches!(msg, Ok(Message::Ping(_))) {
                liveness.touch();
            }
            match msg {
                Ok(Message::Binary(data)) => {
                    let routed = match message_fits(data.len(), max) {
                        Ok(()) => {
                            dec.push(&data);
                            route_buffered(&mut dec, &mut router).await
                        }
                        Err(e) => Err(e),
                    };
                    match routed {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => break (0, e.to_string()),
                    }
                }
                Ok(Message::Close(frame)) => break close_frame_info(frame),
                Ok(Message::Text(_)) => break (0, "server sent a text message".to_string()),
                // Pings are answered by tungstenite (what waits to be written is bounded);
                // pongs only prove the server alive.
                Ok(_) => {}
                Err(e) => break (0, e.to_string()),
            }
        },
    };
    router.send(ConnEvent::Lost { code, reason });
}

/// Sends each frame where it belongs: to a room's share, or to the state machine.
pub(super) struct Router {
    /// Room → (id of its `SubscriptionStream`, its share).
    subs: HashMap<String, (u32, mpsc::Sender<ServerFrame>, Arc<AtomicUsize>)>,
    events: EventTx,
    /// The connection's `CONTROL_CREDIT`: one place per control frame handed on.
    credit: Arc<tokio::sync::Semaphore>,
    epoch: u64,
}

/// Rooms the reader keeps a share for at once: far above any client's subscriptions (256 by
/// default), so only a server announcing streams for rooms the client never subscribed to
/// reaches it, and its connection then ends (outside client audit 13, F2: a share per such
/// room, kept for ever, grew the client by 300 MB a second).
const MAX_SHARES: usize = 4_096;

impl Router {
    pub(super) fn new(events: EventTx, credit: Arc<tokio::sync::Semaphore>, epoch: u64) -> Self {
        Router {
            subs: HashMap::new(),
            events,
            credit,
            epoch,
        }
    }

    /// `false` once the state machine is gone, or the connection is to end.
    async fn route(&mut self, frame: ServerFrame) -> bool {
        let room = match &frame.event {
            Event::SubscriptionStream { room } => {
                if self.subs.len() >= MAX_SHARES && !self.subs.contains_key(room) {
                    // Shares the state machine dropped (rooms it never subscribed to) go first.
                    self.subs.retain(|_, (_, tx, _)| !tx.is_closed());
                    if self.subs.len() >= MAX_SHARES {
                        self.send(ConnEvent::Lost {
                            code: 0,
                            reason: format!(
                                "the server announced subscription streams for more than \
                                 {MAX_SHARES} rooms"
                            ),
                        });
                        return false;
                    }
                }
                // A place in the control credit first, as any control frame takes: a server
                // repeating `SubscriptionStream` waits for the state machine like one
                // repeating anything else (outside audit 115, F8).
                let Ok(place) = self.credit.clone().acquire_owned().await else {
                    return false;
                };
                let (tx, rx) = mpsc::channel(WS_SUB_QUEUE);
                let bytes = Arc::new(AtomicUsize::new(0));
                // A newer subscription of the room replaces the older share, which then ends.
                self.subs
                    .insert(room.clone(), (frame.id, tx, bytes.clone()));
                return self.send(ConnEvent::Stream {
                    id: frame.id,
                    room: room.clone(),
                    stream: SubStream::WebSocket(WsShare { rx, bytes }),
                    credit: Some(place),
                });
            }
            Event::Unsubscribed { room, .. } => {
                self.subs.remove(room);
                return self.send_frame(frame).await;
            }
            event => match frame_room(event) {
                Some(room) => room,
                None => return self.send_frame(frame).await,
            },
        };
        // Routed by the room it names: a frame of a room with no current share (another room's,
        // or a stale subscription's) is dropped.
        let Some((id, tx, bytes)) = self.subs.get(room) else {
            tracing::trace!(room = %clip(room), "dropping a frame of no current subscription");
            return true;
        };
        let size = event_bytes(&frame);
        // Counted in before the delivery task can take it out. Every frame weighs at least
        // `EVENT_OVERHEAD`, so the bytes decide before the channel's count does.
        let sent = if bytes.fetch_add(size, Ordering::Relaxed) + size > WS_SUB_BYTES {
            Err(mpsc::error::TrySendError::Full(frame))
        } else {
            tx.try_send(frame)
        };
        let (frame, overflow) = match sent {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(frame)) => (frame, Some(*id)),
            // The state machine dropped the share: a stale subscription.
            Err(mpsc::error::TrySendError::Closed(frame)) => (frame, None),
        };
        // The share is gone either way: what it holds is still delivered, nothing more.
        bytes.fetch_sub(size, Ordering::Relaxed);
        let room = frame_room(&frame.event).unwrap_or_default().to_owned();
        self.subs.remove(&room);
        match overflow {
            Some(id) => self.send(ConnEvent::Overflow { id, room }),
            None => true,
        }
    }

    fn send(&self, ev: ConnEvent) -> bool {
        self.events.send((self.epoch, ev)).is_ok()
    }

    /// Hands a control frame on, waiting while the state machine is behind (`CONTROL_CREDIT`):
    /// the reader then stops reading, and TCP holds the server back.
    async fn send_frame(&self, frame: ServerFrame) -> bool {
        let Ok(place) = self.credit.clone().acquire_owned().await else {
            return false;
        };
        self.send(ConnEvent::Frame(frame, place))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_proto::{encode_event, DEFAULT_MAX_FRAME};
    use std::time::Duration;

    fn frame(id: u32, event: Event) -> ServerFrame {
        ServerFrame { id, event }
    }

    fn publication(room: &str, payload: &'static str) -> ServerFrame {
        frame(
            0,
            Event::Publication {
                room: room.into(),
                position: None,
                payload: payload.into(),
            },
        )
    }

    #[tokio::test]
    async fn messages_hold_whole_frames() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let a = encode_event(&frame(1, Event::Pong));
        let b = encode_event(&frame(2, Event::Pong));
        dec.push(&[a.as_ref(), b.as_ref()].concat());
        assert!(matches!(
            route_buffered(&mut dec, &mut router).await,
            Ok(true)
        ));
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        // Half a frame in one message is a protocol error.
        dec.push(&b[..b.len() - 1]);
        let err = route_buffered(&mut dec, &mut router).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    }

    /// A message larger than 16 KiB and one frame is refused before it is decoded, naming its
    /// size (outside audit 103, F2).
    #[test]
    fn messages_are_bounded_by_max_frame() {
        let max = max_message(DEFAULT_MAX_FRAME);
        assert_eq!(max, 65_536 + 4 + 16 * 1024);
        assert!(message_fits(max, max).is_ok());
        let err = message_fits(1024 * 1024, max).unwrap_err().to_string();
        assert!(err.contains("1048576 bytes"), "{err}");
    }

    fn router(tx: EventTx) -> Router {
        let credit = tokio::sync::Semaphore::new(crate::connection::CONTROL_CREDIT);
        Router::new(tx, Arc::new(credit), 1)
    }

    /// The reader stops once `CONTROL_CREDIT` control frames wait for the state machine, and
    /// goes on when one is handled (outside client audit 13, F1: a `Pong` flood grew the
    /// client without bound).
    #[tokio::test]
    async fn the_reader_waits_for_the_state_machine() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        for _ in 0..crate::connection::CONTROL_CREDIT {
            assert!(router.route(frame(1, Event::Pong)).await);
        }
        let waits = tokio::time::timeout(
            Duration::from_millis(200),
            router.route(frame(1, Event::Pong)),
        );
        assert!(
            waits.await.is_err(),
            "a frame past the credit was handed on"
        );
        // One handled (its credit dropped with the event): the next goes through.
        drop(rx.try_recv().unwrap());
        let goes =
            tokio::time::timeout(Duration::from_secs(1), router.route(frame(1, Event::Pong)));
        assert!(goes.await.unwrap());
    }

    /// A server repeating `SubscriptionStream` for one room is held to the same credit: the
    /// reader stops once `CONTROL_CREDIT` announcements wait (outside audit 115, F8: each went
    /// on the unbounded event channel).
    #[tokio::test]
    async fn repeated_stream_announcements_wait_for_the_state_machine() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        let announce = |id| {
            frame(
                id,
                Event::SubscriptionStream {
                    room: "chat.x".into(),
                },
            )
        };
        for id in 0..crate::connection::CONTROL_CREDIT as u32 {
            assert!(router.route(announce(id)).await);
        }
        let waits = tokio::time::timeout(Duration::from_millis(200), router.route(announce(0)));
        assert!(
            waits.await.is_err(),
            "an announcement past the credit was handed on"
        );
        drop(rx.try_recv().unwrap());
        let goes = tokio::time::timeout(Duration::from_secs(1), router.route(announce(1)));
        assert!(goes.await.unwrap());
    }

    /// Shares of rooms the state machine dropped make room for new ones; a server that keeps
    /// announcing streams past `MAX_SHARES` live ones ends the connection (audit 13, F2).
    #[tokio::test]
    async fn shares_are_bounded() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        let announce = |i: usize| {
            frame(
                1,
                Event::SubscriptionStream {
                    room: format!("r.{i}"),
                },
            )
        };
        // Dropped as they come, as the state machine drops a stream for a room it never
        // subscribed to.
        for i in 0..MAX_SHARES * 2 {
            assert!(router.route(announce(i)).await);
            drop(rx.try_recv().unwrap());
        }
        assert!(router.subs.len() <= MAX_SHARES);
        // Held: past the bound the connection ends, saying why.
        let mut held = Vec::new();
        let mut i = MAX_SHARES * 2;
        loop {
            i += 1;
            if !router.route(announce(i)).await {
                break;
            }
            // The state machine keeps the share and gives the announcement's credit back.
            let Ok((_, ConnEvent::Stream { stream, .. })) = rx.try_recv() else {
                panic!("expected a stream");
            };
            held.push(stream);
            assert!(held.len() <= MAX_SHARES, "no bound");
        }
        let (_, ev) = rx.try_recv().unwrap();
        assert!(matches!(ev, ConnEvent::Lost { ref reason, .. } if reason.contains("more than")));
    }

    #[tokio::test]
    async fn router_tells_subscriptions_apart() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        router.epoch = 7;
        // Before any SubscriptionStream: stale, dropped.
        assert!(router.route(publication("a", "early")).await);
        assert!(rx.try_recv().is_err());
        // SubscriptionStream(a, id 3): a share for room a.
        router
            .route(frame(3, Event::SubscriptionStream { room: "a".into() }))
            .await;
        let (epoch, ev) = rx.try_recv().unwrap();
        assert_eq!(epoch, 7);
        let ConnEvent::Stream {
            id,
            room,
            stream: SubStream::WebSocket(mut share),
            ..
        } = ev
        else {
            panic!("expected a stream");
        };
        assert_eq!((id, room.as_str()), (3, "a"));
        router.route(publication("a", "one")).await;
        router.route(publication("b", "other room")).await;
        let member = quiver_proto::Member {
            user: "u".into(),
            session: "s".into(),
        };
        router
            .route(frame(
                0,
                Event::Joined {
                    room: "b".into(),
                    member,
                },
            ))
            .await;
        // Control events go to the state machine.
        router.route(frame(9, Event::Pong)).await;
        assert!(matches!(rx.try_recv(), Ok((_, ConnEvent::Frame(..)))));
        let got = share.rx.recv().await.unwrap();
        assert!(matches!(got.event, Event::Publication { ref payload, .. } if payload == "one"));
        // Unsubscribed ends the share; later frames of the room are stale.
        router
            .route(frame(
                0,
                Event::Unsubscribed {
                    room: "a".into(),
                    code: 112,
                    reason: "slow".into(),
                },
            ))
            .await;
        assert!(matches!(rx.try_recv(), Ok((_, ConnEvent::Frame(..)))));
        router.route(publication("a", "late")).await;
        assert!(share.rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_full_share_overflows_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        router
            .route(frame(5, Event::SubscriptionStream { room: "r".into() }))
            .await;
        let Ok((_, ConnEvent::Stream { stream, .. })) = rx.try_recv() else {
            panic!("expected a stream");
        };
        for _ in 0..WS_SUB_QUEUE + 10 {
            router.route(publication("r", "x")).await;
        }
        match rx.try_recv() {
            Ok((_, ConnEvent::Overflow { id, room })) => assert_eq!((id, room.as_str()), (5, "r")),
            _ => panic!("expected an overflow"),
        }
        assert!(rx.try_recv().is_err(), "reported once");
        drop(stream);
    }

    /// A replay of 5,000 small publications fits a share (a count of 1,024 did not: an outside
    /// audit saw a legitimate replay of 5,000 end after about 1,200); 8 MiB of payloads is as
    /// far as a share goes.
    #[tokio::test]
    async fn a_replay_fits_and_bytes_bound_the_share() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        router
            .route(frame(5, Event::SubscriptionStream { room: "r".into() }))
            .await;
        let Ok((_, ConnEvent::Stream { stream, .. })) = rx.try_recv() else {
            panic!("expected a stream");
        };
        for _ in 0..5000 {
            router.route(publication("r", "twenty bytes of data")).await;
        }
        assert!(rx.try_recv().is_err(), "5,000 small frames overflowed");
        drop(stream);

        router
            .route(frame(6, Event::SubscriptionStream { room: "s".into() }))
            .await;
        let Ok((_, ConnEvent::Stream { stream, .. })) = rx.try_recv() else {
            panic!("expected a stream");
        };
        // Each weighs 1 MiB with its room and overhead.
        let big = |i: usize| {
            frame(
                0,
                Event::Publication {
                    room: "s".into(),
                    position: None,
                    payload: vec![i as u8; 1024 * 1024 - 129].into(),
                },
            )
        };
        for i in 0..8 {
            router.route(big(i)).await;
        }
        assert!(rx.try_recv().is_err(), "8 MiB fits");
        router.route(big(8)).await;
        assert!(matches!(
            rx.try_recv(),
            Ok((_, ConnEvent::Overflow { id: 6, .. }))
        ));
        drop(stream);
    }

    /// Presence events weigh their member and room (outside audit G2: they weighed nothing, and
    /// ~2,000 of 1 MB were held per room), and every frame weighs a fixed overhead, so neither
    /// large members nor a flood of empty ones get past 8 MiB.
    #[tokio::test]
    async fn presence_events_and_tiny_frames_are_weighed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut router = router(tx);
        let joined = |room: &str, user: usize| {
            frame(
                0,
                Event::Joined {
                    room: room.into(),
                    member: quiver_proto::Member {
                        user: "u".repeat(user),
                        session: "s".into(),
                    },
                },
            )
        };
        router
            .route(frame(5, Event::SubscriptionStream { room: "r".into() }))
            .await;
        let Ok((_, ConnEvent::Stream { stream, .. })) = rx.try_recv() else {
            panic!("expected a stream");
        };
        for _ in 0..15 {
            router.route(joined("r", 512 * 1024)).await;
        }
        assert!(rx.try_recv().is_err(), "15 × 512 KiB fit");
        router.route(joined("r", 512 * 1024)).await;
        assert!(matches!(
            rx.try_recv(),
            Ok((_, ConnEvent::Overflow { id: 5, .. }))
        ));
        drop(stream);

        router
            .route(frame(6, Event::SubscriptionStream { room: "t".into() }))
            .await;
        let Ok((_, ConnEvent::Stream { stream, .. })) = rx.try_recv() else {
            panic!("expected a stream");
        };
        let fit = WS_SUB_BYTES / event_bytes(&joined("t", 0));
        assert!(fit < WS_SUB_QUEUE);
        for _ in 0..fit {
            router.route(joined("t", 0)).await;
        }
        assert!(rx.try_recv().is_err(), "{fit} empty frames fit");
        router.route(joined("t", 0)).await;
        assert!(matches!(
            rx.try_recv(),
            Ok((_, ConnEvent::Overflow { id: 6, .. }))
        ));
        drop(stream);
    }
}
