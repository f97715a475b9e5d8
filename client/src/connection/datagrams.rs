//! Datagram publications (`publish_unreliable`, PROTOCOL.md §10), paced with the commands: the
//! server meters every datagram against the command rate and counts refusals towards
//! `rate_abuse` (§5), so each one takes a token of the session's pacer. One that finds no token
//! free waits as its room's newest value, replacing an older one still waiting (newest wins),
//! and goes when a token frees up; at most [`HELD_ROOMS`] rooms' values wait, a value for
//! another room is dropped and counted ([`crate::Client::datagrams_dropped`]).

use std::sync::atomic::Ordering;

use super::*;

/// Most rooms whose newest datagram publication waits for a pacer token.
pub(super) const HELD_ROOMS: usize = 64;

/// The datagram publications waiting for a pacer token: one per room, the newest, in the order
/// the rooms first waited.
#[derive(Default)]
pub(super) struct HeldDatagrams {
    queue: VecDeque<(String, Vec<u8>)>,
}

impl HeldDatagrams {
    /// Holds `datagram` as `room`'s newest value, replacing the one waiting (which keeps its
    /// turn); false (not held) when [`HELD_ROOMS`] other rooms hold one.
    pub(super) fn hold(&mut self, room: String, datagram: Vec<u8>) -> bool {
        if let Some((_, held)) = self.queue.iter_mut().find(|(r, _)| *r == room) {
            *held = datagram;
            return true;
        }
        if self.queue.len() >= HELD_ROOMS {
            return false;
        }
        self.queue.push_back((room, datagram));
        true
    }

    pub(super) fn pop(&mut self) -> Option<(String, Vec<u8>)> {
        self.queue.pop_front()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
    /// says when to look again.
    pub(super) fn flush_datagrams(&mut self) {
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
}
