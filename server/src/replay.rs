//! What a new subscription's stream starts with: its `SubscriptionStream` header (own streams
//! only; on a shared connection the session sends it) and the publications a resume replays.
//!
//! The replay is kept as the broker handed it over (positions and payloads, which the memory
//! broker shares with its history) and encoded a batch at a time as the stream takes it, so a
//! client that reads a long replay slowly makes the server hold references to history plus one
//! batch, not an encoded copy of everything it asked for.

use bytes::Bytes;
use quiver_proto::Position;

use crate::hub::{publication_frame, RoomKey};

/// Upper bound of one batch (the last frame may take it past: frames are never cut).
pub const MAX_BATCH: usize = 64 * 1024;

pub struct Preamble {
    header: Option<Bytes>,
    key: RoomKey,
    replay: std::vec::IntoIter<(Position, Bytes)>,
}

impl Preamble {
    pub fn new(header: Option<Bytes>, key: RoomKey, replay: Vec<(Position, Bytes)>) -> Self {
        Self {
            header,
            key,
            replay: replay.into_iter(),
        }
    }

    /// Whether everything was handed out (live frames may follow).
    pub fn is_done(&self) -> bool {
        self.header.is_none() && self.replay.len() == 0
    }

    /// The next batch of whole frames, about [`MAX_BATCH`] bytes; `None` once all were given.
    pub fn next_batch(&mut self) -> Option<Bytes> {
        let mut batch = Vec::new();
        if let Some(header) = self.header.take() {
            batch.extend_from_slice(&header);
        }
        while batch.len() < MAX_BATCH {
            let Some((position, payload)) = self.replay.next() else {
                break;
            };
            batch.extend_from_slice(&publication_frame(&self.key, Some(position), payload));
        }
        (!batch.is_empty()).then(|| Bytes::from(batch))
    }
}

#[cfg(test)]
mod tests {
    use quiver_proto::{RoomName, TenantId};

    use super::*;

    #[test]
    fn batches_keep_frames_whole_and_in_order() {
        let key = RoomKey {
            tenant: TenantId::parse("acme").unwrap(),
            room: RoomName::parse("h.room").unwrap(),
        };
        let replay: Vec<_> = (1..=40u64)
            .map(|offset| {
                let position = Position { epoch: 7, offset };
                (position, Bytes::from(vec![offset as u8; 5000]))
            })
            .collect();
        let header = Bytes::from_static(b"\0\0\0\x01h");
        let mut preamble = Preamble::new(Some(header.clone()), key.clone(), replay.clone());
        let mut batches = Vec::new();
        while let Some(batch) = preamble.next_batch() {
            assert!(
                batch.len() < MAX_BATCH + 5100,
                "one frame past the bound at most"
            );
            batches.push(batch);
        }
        assert!(preamble.is_done());
        assert!(batches.len() > 1, "a long replay comes in several batches");
        // Concatenated, they are the header and every publication frame, in order.
        let mut expected = header.to_vec();
        for (position, payload) in replay {
            expected.extend_from_slice(&publication_frame(&key, Some(position), payload));
        }
        assert_eq!(batches.concat(), expected);
        // Each batch ends on a frame boundary.
        for batch in &batches[1..] {
            let mut decoder = quiver_proto::FrameDecoder::new(1 << 20);
            decoder.push(batch);
            while decoder.next_frame().unwrap().is_some() {}
            assert!(decoder.finish().is_ok());
        }
        assert!(Preamble::new(None, key, Vec::new()).next_batch().is_none());
    }
}
