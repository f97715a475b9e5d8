//! Datagram publications (`publish_unreliable`, PROTOCOL.md §10), paced with the commands: the
//! server meters every datagram against the command rate and counts refusals towards
//! `rate_abuse` (§5), so each one takes a token of the session's pacer. One that finds no token
//! free waits as its room's newest value, replacing an older one still waiting (newest wins),
//! and goes when a token frees up; at most [`HELD_ROOMS`] rooms' values wait, a value for
//! another room is dropped and counted ([`crate::Client::datagrams_dropped`]).
//! [`crate::Client::flush`] waits for the values held before it to be sent, then for a `Ping`'s
//! answer.

use std::sync::atomic::Ordering;

use super::*;

/// Most rooms whose newest datagram publication waits for a pacer token.
pub(super) const HELD_ROOMS: usize = 64;

/// The datagram publications waiting for a pacer token: one per room, the newest, in the order
/// the rooms first waited, each with its turn (counted up as rooms begin to wait, so the queue
/// is in the order of its turns).
#[derive(Default)]
pub(super) struct HeldDatagrams {
    queue: VecDeque<(String, Vec<u8>, u64)>,
    next_turn: u64,
}

impl HeldDatagrams {
    /// Holds `datagram` as `room`'s newest value, replacing the one waiting (which keeps its
    /// turn); false (not held) when [`HELD_ROOMS`] other rooms hold one.
    pub(super) fn hold(&mut self, room: String, datagram: Vec<u8>) -> bool {
        if let Some((_, held, _)) = self.queue.iter_mut().find(|(r, _, _)| *r == room) {
            *held = datagram;
            return true;
        }
        if self.queue.len() >= HELD_ROOMS {
            return false;
        }
        self.queue.push_back((room, datagram, self.next_turn));
        self.next_turn += 1;
        true
    }

    pub(super) fn pop(&mut self) -> Option<(String, Vec<u8>)> {
        self.queue
            .pop_front()
            .map(|(room, datagram, _)| (room, datagram))
    }

    /// The turn the next room to wait gets: every value held now (or a newer one of its room,
    /// which keeps the turn) has been sent once [`HeldDatagrams::waiting_before`] this mark is
    /// false.
    pub(super) fn mark(&self) -> u64 {
        self.next_turn
    }

    /// Whether a room whose turn came before `mark` still waits.
    pub(super) fn waiting_before(&self, mark: u64) -> bool {
        self.queue.front().is_some_and(|(_, _, turn)| *turn < mark)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops every held value; how many.
    pub(super) fn clear(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        n
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

impl Actor {
    /// The datagram for a publication to `room`, if the live session is WebTransport and it
    /// fits the path's datagram size.
    pub(super) fn datagram_for(&self, room: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let Some(Live {
            link: Link::WebTransport(conn),
            ..
        }) = &self.live
        else {
            return None;
        };
        let datagram = quiver_proto::datagram::PublishDatagram { room, payload }.encode();
        let max = conn.max_datagram_size()?;
        (datagram.len() <= max).then_some(datagram)
    }

    /// Sends `datagram` now if the pacer has a token free, else holds it as `room`'s newest
    /// value until one frees up.
    pub(super) fn publish_datagram(&mut self, room: String, datagram: Vec<u8>) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        if !live.datagrams.hold(room, datagram) {
            let total = self
                .shared
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            tracing::debug!(
                total,
                "datagram publication dropped: {HELD_ROOMS} rooms' values already wait for the \
                 command rate"
            );
            return;
        }
        self.flush_datagrams();
    }

    /// Sends the held datagram publications, in order, while the pacer has tokens free; then
    /// says when to look again, and lets the `flush` calls whose values all went on.
    pub(super) fn flush_datagrams(&mut self) {
        self.send_held();
        self.release_flushes();
    }

    /// `Client::flush`: once the values held now have been sent (at once when none is), a
    /// `Ping`, whose answer answers the call. While disconnected, `NotConnected` at once.
    pub(super) fn flush(&mut self, reply: Reply<Duration>) {
        let Some(live) = self.live.as_mut() else {
            let _ = reply.send(Err(ClientError::NotConnected));
            return;
        };
        let mark = live.datagrams.mark();
        live.flushes.push_back((mark, reply));
        self.release_flushes();
    }

    /// Sends the `Ping` of each `flush` call whose held values have all been sent: handed to
    /// the transport before the `Ping`'s frame is written, QUIC sends them first (a datagram
    /// goes ahead of stream data queued after it). Those whose caller gave up are forgotten.
    fn release_flushes(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.flushes.retain(|(_, reply)| !reply.is_closed());
        while let Some((mark, _)) = live.flushes.front() {
            if live.datagrams.waiting_before(*mark) {
                return;
            }
            let Some((_, reply)) = live.flushes.pop_front() else {
                return;
            };
            let sent = Instant::now();
            // One too large for the session fails its reply itself (a `Ping` never is).
            let _ = live.send(Command::Ping, Some(Pending::Ping { sent, reply }));
        }
    }

    fn send_held(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.datagram_at = None;
        while !live.datagrams.is_empty() {
            if let Some(pacer) = &live.pacer {
                if let Err(wait) = pacer.take_now(Instant::now()) {
                    live.datagram_at = Some(tokio::time::Instant::now() + wait);
                    return;
                }
            }
            let Some((room, datagram)) = live.datagrams.pop() else {
                return;
            };
            let Link::WebTransport(conn) = &live.link else {
                return;
            };
            if let Err(e) = conn.send_datagram(&datagram) {
                tracing::debug!(room = %clip(&room), error = %e, "datagram publication not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_room_the_newest_and_at_most_held_rooms() {
        let mut held = HeldDatagrams::default();
        assert!(held.hold("a".into(), vec![1]));
        assert!(held.hold("b".into(), vec![1]));
        assert!(held.hold("a".into(), vec![2]));
        assert_eq!(held.len(), 2);
        for n in 2..HELD_ROOMS {
            assert!(held.hold(format!("r{n}"), vec![0]));
        }
        assert!(!held.hold("one too many".into(), vec![0]));
        assert!(held.hold("b".into(), vec![3]), "a room already waiting");
        assert_eq!(held.len(), HELD_ROOMS);
        // In the order the rooms first waited, each with its newest value.
        assert_eq!(held.pop(), Some(("a".into(), vec![2])));
        assert_eq!(held.pop(), Some(("b".into(), vec![3])));
    }

    /// A mark is passed once every room waiting at it has had its value sent: a newer value of
    /// such a room keeps its turn (the mark waits for it), a room that begins to wait after the
    /// mark does not hold it back.
    #[test]
    fn a_mark_waits_for_the_rooms_held_before_it_only() {
        let mut held = HeldDatagrams::default();
        assert!(!held.waiting_before(held.mark()), "nothing held");
        assert!(held.hold("a".into(), vec![1]));
        assert!(held.hold("b".into(), vec![1]));
        let mark = held.mark();
        assert!(held.waiting_before(mark));
        assert!(held.hold("a".into(), vec![2]), "replaces a's, in a's turn");
        assert!(held.hold("c".into(), vec![1]), "after the mark");
        assert_eq!(held.pop(), Some(("a".into(), vec![2])));
        assert!(held.waiting_before(mark), "b still waits");
        assert_eq!(held.pop(), Some(("b".into(), vec![1])));
        assert!(
            !held.waiting_before(mark),
            "only c, held after the mark, waits"
        );
        assert!(held.waiting_before(held.mark()));
        assert_eq!(held.pop(), Some(("c".into(), vec![1])));
        assert!(!held.waiting_before(held.mark()));
    }
}
