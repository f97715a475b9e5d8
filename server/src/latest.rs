//! The `latest` lane (PROTOCOL.md §10): rooms where only the newest value matters.
//!
//! A `latest` subscriber has no queue of publications but a [`Slot`] holding the newest value
//! not yet sent. The hub replaces it on every publication (conflation: a subscriber that cannot
//! keep up skips stale values instead of queueing them, and is never a slow consumer), and the
//! subscription's writer takes whatever is newest when it can send. It goes as a QUIC datagram
//! when the session supports them and it fits the path's current maximum datagram size
//! ([`send`]); otherwise as a `Latest` frame on the room's stream, with the same per-subscription
//! sequence, so the client can drop values older than the newest it applied.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use quiver_proto::datagram::Latest;
use quiver_proto::{encode_event, Event, ServerFrame};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wtransport::Connection;

use crate::metrics as m;

/// The newest value of one `latest` subscription that its writer has not sent yet.
#[derive(Default)]
pub struct Slot {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    /// The sequence of the newest value put; values are numbered 1, 2, … per subscription.
    sequence: u64,
    pending: Option<Bytes>,
}

impl Slot {
    /// Puts a new value, replacing the one waiting (counted as conflated).
    pub fn put(&self, payload: Bytes) {
        let replaced = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.sequence += 1;
            state.pending.replace(payload).is_some()
        };
        if replaced {
            m::hot::latest_conflated().increment(1);
        }
        self.ready.notify_one();
    }

    /// Takes the waiting value and its sequence, if any.
    pub fn take(&self) -> Option<(u64, Bytes)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let sequence = state.sequence;
        state.pending.take().map(|p| (sequence, p))
    }

    /// Waits until a value is waiting, without taking it. Cancel-safe.
    async fn waiting(&self) {
        loop {
            if self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pending
                .is_some()
            {
                return;
            }
            // As in `next`: a put between the look and here left a permit.
            self.ready.notified().await;
        }
    }

    /// Waits for a value and takes it. Cancel-safe: nothing is taken until it returns.
    pub async fn next(&self) -> (u64, Bytes) {
        loop {
            if let Some(value) = self.take() {
                return value;
            }
            // `notify_one` stores a permit when nobody waits, so a put between `take` and here
            // is not missed.
            self.ready.notified().await;
        }
    }
}

/// Waits on an optional slot: pending forever without one (reliable subscriptions).
pub async fn next(slot: Option<&Slot>) -> (u64, Bytes) {
    match slot {
        Some(slot) => slot.next().await,
        None => std::future::pending().await,
    }
}

/// How soon a `latest` writer looks again for room in a congested connection's datagram
/// buffer, the first time; it waits twice as long each time after, up to [`ROOM_POLL_MAX`]:
/// meanwhile its values conflate in its slot. Backing off keeps a client that stops
/// acknowledging with hundreds of `latest` rooms from costing tens of thousands of wake-ups a
/// second (review 109, F1).
const ROOM_POLL: Duration = Duration::from_millis(5);
const ROOM_POLL_MAX: Duration = Duration::from_millis(80);

/// Makes "is there room, take the newest value, send it" one step per connection (striped by
/// connection, [`room_step`]: held while quinn's connection state is looked at and the datagram
/// queued, never across an await), so writers of several rooms of
/// one connection that find room at the same instant on several threads cannot overfill the
/// buffer together (review 109, F2).
static ROOM_STEPS: [Mutex<()>; 64] = [const { Mutex::new(()) }; 64];

/// The stripe of [`ROOM_STEPS`] for a connection's `stable_id` (its state's address): its bits
/// mixed (Fibonacci hashing, the top 6 bits of the product), since an allocator hands out
/// same-sized blocks at equally aligned addresses and the address mod 64 was the same for
/// every connection: one lock for the whole server (outside audit 117, F2).
fn room_step(id: usize) -> &'static Mutex<()> {
    let mixed = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
    &ROOM_STEPS[mixed as usize % ROOM_STEPS.len()]
}

/// Waits for a value and for room for it in the connection's datagram buffer, then takes it
/// (the newest by then) and sends it ([`send`]): `Some` frame when it must go on the stream
/// instead. Cancel-safe: nothing is taken until it returns. A value is sent only into room,
/// never past it: quinn makes room by dropping the oldest datagram of the buffer, whichever
/// room it was for, so a flood in one room erased the newest value of the session's other
/// rooms, each sent once and counted as sent (outside audit 108, F2). The newest value of each
/// room now waits in its own slot while the connection is congested.
pub async fn send_with_room(
    slot: Option<&Slot>,
    conn: &Connection,
    subscription: u64,
    room: &str,
) -> Option<Bytes> {
    let Some(slot) = slot else {
        return std::future::pending().await;
    };
    let mut poll = ROOM_POLL;
    loop {
        slot.waiting().await;
        {
            let _step = room_step(conn.stable_id())
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // The path's datagram size, looked up once for the room and the send.
            let max = conn.max_datagram_size();
            if has_room(conn, max) {
                let (sequence, payload) = slot.take()?;
                return send(conn, max, subscription, room, sequence, payload);
            }
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(ROOM_POLL_MAX);
    }
}

/// The most an HTTP/3 datagram's header (its quarter stream id, a QUIC varint) adds to a payload.
const DATAGRAM_HEADER_MAX: usize = 8;

/// Whether a datagram of up to `max` bytes (the session's [`Connection::max_datagram_size`])
/// can be sent now without dropping one waiting; always when the session takes none (the value
/// goes on the stream).
fn has_room(conn: &Connection, max: Option<usize>) -> bool {
    max.is_none_or(|max| {
        conn.quic_connection().datagram_send_buffer_space() >= max + DATAGRAM_HEADER_MAX
    })
}

/// Sends one value as a datagram if the session takes datagrams (`max`: their largest payload,
/// `None` for none) and it fits; otherwise returns the `Latest` frame to write on the room's
/// stream.
fn send(
    conn: &Connection,
    max: Option<usize>,
    subscription: u64,
    room: &str,
    sequence: u64,
    payload: Bytes,
) -> Option<Bytes> {
    let datagram = Latest {
        subscription,
        sequence,
        payload: &payload,
    }
    .encode();
    // The maximum follows the path MTU.
    if max.is_some_and(|max| datagram.len() <= max) {
        match conn.send_datagram(&datagram) {
            Ok(()) => {
                m::hot::datagrams_sent().increment(1);
                return None;
            }
            // Gone: the session ends on its own; nothing to write either.
            Err(wtransport::error::SendDatagramError::NotConnected) => return None,
            // The path shrank under us, or the peer takes none: the stream it is.
            Err(_) => {}
        }
    }
    m::hot::latest_on_stream().increment(1);
    Some(latest_frame(room, sequence, payload))
}

/// A frame on a shared connection that says when the connection's writer is done with it (has
/// dropped every copy): a `latest` subscription keeps one value at a time in the shared
/// outgoing queue, so values published meanwhile conflate in its slot, not in that queue.
struct InFlight {
    frame: Bytes,
    done: CancellationToken,
}

impl AsRef<[u8]> for InFlight {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

/// The frame as `Bytes` whose last drop cancels the returned token.
pub fn tracked(frame: Bytes) -> (Bytes, CancellationToken) {
    let done = CancellationToken::new();
    let frame = Bytes::from_owner(InFlight {
        frame,
        done: done.clone(),
    });
    (frame, done)
}

/// Resolves once the previous value left the outgoing queue (at once if there was none), then
/// takes the next value.
pub async fn next_after(
    slot: Option<&Slot>,
    in_flight: Option<&CancellationToken>,
) -> (u64, Bytes) {
    if let Some(previous) = in_flight {
        previous.cancelled().await;
    }
    next(slot).await
}

/// The `Latest` frame for a value that goes on a stream or a shared connection.
pub fn latest_frame(room: &str, sequence: u64, payload: Bytes) -> Bytes {
    encode_event(&ServerFrame {
        id: 0,
        event: Event::Latest {
            room: room.to_owned(),
            sequence,
            payload,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_keeps_only_the_newest_value() {
        let slot = Slot::default();
        assert!(slot.take().is_none());
        for n in 0..1000u32 {
            slot.put(Bytes::from(n.to_be_bytes().to_vec()));
        }
        let (sequence, payload) = slot.next().await;
        assert_eq!(sequence, 1000);
        assert_eq!(&payload[..], &999u32.to_be_bytes());
        assert!(slot.take().is_none(), "nothing older is left behind");
        slot.put(Bytes::from_static(b"x"));
        assert_eq!(slot.next().await.0, 1001);
    }

    #[tokio::test]
    async fn a_tracked_frame_says_when_its_last_copy_is_gone() {
        let (frame, done) = tracked(Bytes::from_static(b"abc"));
        let copy = frame.clone();
        drop(frame);
        assert!(!done.is_cancelled());
        assert_eq!(&copy[..], b"abc");
        drop(copy);
        assert!(done.is_cancelled());
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_on_put() {
        let slot = std::sync::Arc::new(Slot::default());
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.next().await }
        });
        tokio::task::yield_now().await;
        slot.put(Bytes::from_static(b"v"));
        let (sequence, payload) = waiter.await.unwrap();
        assert_eq!((sequence, &payload[..]), (1, &b"v"[..]));
    }

    /// Connections' states are same-sized blocks, which an allocator hands out at equally
    /// aligned addresses (jemalloc: every one the same mod 64): they still spread over the
    /// stripes (outside audit 117, F2: one stripe for all).
    #[test]
    fn aligned_connections_spread_over_the_stripes() {
        let stripes: std::collections::HashSet<*const Mutex<()>> = (0..1_000usize)
            .map(|i| 0x7f00_0000_0000 + 16 + i * 8_192)
            .map(|id| room_step(id) as *const _)
            .collect();
        assert!(stripes.len() >= 48, "{} of 64 stripes used", stripes.len());
    }
}
