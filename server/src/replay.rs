//! What a new subscription's stream starts with: its `SubscriptionStream` header (own streams
//! only; on a shared connection the session sends it) and the publications a resume replays.
//!
//! Both brokers answer a resume without reading its publications: the answer counts them
//! (`replayed`) and hands them over as [`ReplayPages`], read a page ([`REPLAY_PAGE`]) at a time
//! as the stream takes them, once the session gives the replay a turn ([`AT_ONCE`]). A page's
//! payloads are copied in (NATS) or shared with history (the memory broker, whose replay read
//! whole at `Subscribe` kept payloads alive after history evicted them: outside audit 133,
//! F2), and encoded a batch at a time. So a replay waiting for its turn holds nothing, a client
//! that reads a long replay slowly makes the server hold a page plus one batch, not an encoded
//! copy of everything it asked for, and one that resumes many rooms holds a few batches and
//! pages, not one each.

use std::sync::Arc;

use bytes::Bytes;
use quiver_proto::{ErrorCode, Position};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::broker::{ReplayError, ReplayPages};
use crate::hub::{publication_frame, RoomKey};

/// Upper bound of one batch (the last frame may take it past: frames are never cut).
pub const MAX_BATCH: usize = 64 * 1024;

/// About how many payload bytes a broker reads for one page of a replay (the publication that
/// takes a page past it is in it): both brokers' (review 135, R5: it was written twice).
pub const REPLAY_PAGE: usize = 256 * 1024;

/// Replays one session writes at once. A replay in progress holds a batch and a page (one
/// waiting for its turn holds nothing: its first page is read once it has one); a client that
/// resumes many rooms and reads them slowly would otherwise hold that for every room (an
/// outside audit: 256 rooms, ~75 MB per session). The others wait their turn, their live
/// deliveries queueing meanwhile as they would behind a slow stream.
pub const AT_ONCE: usize = 8;

/// A session's turns at replaying: [`AT_ONCE`] of them.
pub fn turns() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(AT_ONCE))
}

pub struct Preamble {
    header: Option<Bytes>,
    key: RoomKey,
    replay: std::vec::IntoIter<(Position, Bytes)>,
    /// What follows `replay`, still in the broker.
    rest: Option<Box<dyn ReplayPages>>,
    /// The session's turns, until this replay has one (`turn`).
    turns: Option<Arc<Semaphore>>,
    /// Held from the replay's first batch to its last.
    turn: Option<OwnedSemaphorePermit>,
}

impl Preamble {
    pub fn new(
        header: Option<Bytes>,
        key: RoomKey,
        replay: Vec<(Position, Bytes)>,
        rest: Option<Box<dyn ReplayPages>>,
        turns: Option<Arc<Semaphore>>,
    ) -> Self {
        Self {
            header,
            key,
            replay: replay.into_iter(),
            rest,
            turns,
            turn: None,
        }
    }

    /// Whether publications are still to be handed out.
    fn replaying(&self) -> bool {
        self.replay.len() > 0 || self.rest.is_some()
    }

    /// Whether everything was handed out (live frames may follow).
    pub fn is_done(&self) -> bool {
        self.header.is_none() && self.replay.len() == 0 && self.rest.is_none()
    }

    /// The next batch of whole frames, about [`MAX_BATCH`] bytes; `None` once all were given.
    /// Reads the broker's next page when the one in hand is spent; an error ends the replay.
    /// A replay waits for its session's turn (`AT_ONCE`) before its first publication; the
    /// stream's header goes first, alone, without waiting.
    pub async fn next_batch(&mut self) -> Result<Option<Bytes>, ReplayError> {
        if self.replaying() && self.turns.is_some() {
            if let Some(header) = self.header.take() {
                return Ok(Some(header));
            }
            if let Some(turns) = self.turns.take() {
                // Never closed: `None` only if it were, and then there is nothing to wait for.
                self.turn = turns.acquire_owned().await.ok();
            }
        }
        loop {
            if let Some(batch) = self.encode_batch() {
                if !self.replaying() {
                    // The last batch: the next replay of the session may start.
                    self.turn = None;
                }
                return Ok(Some(batch));
            }
            let Some(rest) = self.rest.as_mut() else {
                return Ok(None);
            };
            let page = if rest.remaining() == 0 {
                Vec::new()
            } else {
                rest.next_page().await?
            };
            if rest.remaining() == 0 {
                self.rest = None;
            } else if page.is_empty() {
                // A broker that keeps its promise never gets here; never spin on one that
                // does not.
                return Err(ReplayError::Cut);
            }
            self.replay = page.into_iter();
        }
    }

    /// From what is in hand: a batch of whole frames, or `None`.
    fn encode_batch(&mut self) -> Option<Bytes> {
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

/// How a replay that could not be finished ends its subscription (`Unsubscribed`).
pub fn ended_by(error: &ReplayError) -> (ErrorCode, &'static str) {
    match error {
        ReplayError::Cut => (
            ErrorCode::UnrecoverablePosition,
            "history lost part of this replay while it was read (the room kept no more than its \
             limits allow): subscribe again, resuming from the last position received",
        ),
        ReplayError::Broker(_) => (
            ErrorCode::Unavailable,
            "the rest of this replay could not be read from the broker: subscribe again, \
             resuming from the last position received",
        ),
    }
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use quiver_proto::{RoomName, TenantId};

    use super::*;

    /// A broker's rest of a replay: pages of `page` publications; `fail_at` pages are given
    /// before the next read fails.
    struct FakePages {
        rest: Vec<(Position, Bytes)>,
        page: usize,
        fail_at: Option<usize>,
        last: Position,
    }

    impl ReplayPages for FakePages {
        fn remaining(&self) -> usize {
            self.rest.len()
        }
        fn last(&self) -> Position {
            self.last
        }
        fn next_page(&mut self) -> BoxFuture<'_, Result<Vec<(Position, Bytes)>, ReplayError>> {
            Box::pin(async move {
                if let Some(n) = self.fail_at.as_mut() {
                    if *n == 0 {
                        return Err(ReplayError::Cut);
                    }
                    *n -= 1;
                }
                let take = self.page.min(self.rest.len());
                Ok(self.rest.drain(..take).collect())
            })
        }
    }

    fn key() -> RoomKey {
        RoomKey {
            tenant: TenantId::parse("acme").unwrap(),
            room: RoomName::parse("h.room").unwrap(),
        }
    }

    fn publications(n: u64) -> Vec<(Position, Bytes)> {
        (1..=n)
            .map(|offset| {
                let position = Position { epoch: 7, offset };
                (position, Bytes::from(vec![offset as u8; 5000]))
            })
            .collect()
    }

    /// Splits `all` into what is in hand and a pager over the rest.
    fn paged(all: &[(Position, Bytes)], in_hand: usize, fail_at: Option<usize>) -> Preamble {
        let rest = FakePages {
            rest: all[in_hand..].to_vec(),
            page: 7,
            fail_at,
            last: all.last().unwrap().0,
        };
        let header = Some(Bytes::from_static(b"\0\0\0\x01h"));
        Preamble::new(
            header,
            key(),
            all[..in_hand].to_vec(),
            Some(Box::new(rest)),
            None,
        )
    }

    #[tokio::test]
    async fn batches_keep_frames_whole_and_in_order() {
        let replay = publications(40);
        let header = Bytes::from_static(b"\0\0\0\x01h");
        // All in hand, or the first 10 in hand and the rest read in pages of 7.
        for mut preamble in [
            Preamble::new(Some(header.clone()), key(), replay.clone(), None, None),
            paged(&replay, 10, None),
        ] {
            let mut batches = Vec::new();
            while let Some(batch) = preamble.next_batch().await.unwrap() {
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
            for (position, payload) in &replay {
                expected.extend_from_slice(&publication_frame(
                    &key(),
                    Some(*position),
                    payload.clone(),
                ));
            }
            assert_eq!(batches.concat(), expected);
            // Each batch ends on a frame boundary.
            for batch in &batches[1..] {
                let mut decoder = quiver_proto::FrameDecoder::new(1 << 20);
                decoder.push(batch);
                while decoder.next_frame().unwrap().is_some() {}
                assert!(decoder.finish().is_ok());
            }
        }
        let mut empty = Preamble::new(None, key(), Vec::new(), None, None);
        assert!(empty.next_batch().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_session_writes_at_most_its_turns_of_replays_at_once() {
        let turns = turns();
        let replay = publications(40);
        let mut preambles: Vec<_> = (0..AT_ONCE + 1)
            .map(|_| Preamble::new(None, key(), replay.clone(), None, Some(turns.clone())))
            .collect();
        // The first AT_ONCE start; the next waits for a turn.
        for preamble in &mut preambles[..AT_ONCE] {
            assert!(preamble.next_batch().await.unwrap().is_some());
        }
        let (first, rest) = preambles.split_at_mut(1);
        let last = &mut rest[AT_ONCE - 1];
        assert!(
            last.next_batch().now_or_never().is_none(),
            "no turn while {AT_ONCE} replays are under way"
        );
        // One finishes (its last batch handed out): the waiting one starts.
        while first[0].next_batch().await.unwrap().is_some() {}
        let started = last.next_batch().now_or_never();
        assert!(
            matches!(started, Some(Ok(Some(_)))),
            "a turn once one replay ended"
        );
        // A subscription without a replay never waits.
        let mut live = Preamble::new(
            Some(Bytes::from_static(b"h")),
            key(),
            Vec::new(),
            None,
            Some(turns.clone()),
        );
        assert!(matches!(
            live.next_batch().now_or_never(),
            Some(Ok(Some(_)))
        ));
    }

    #[tokio::test]
    async fn a_page_that_cannot_be_read_ends_the_replay_after_what_was_read() {
        let replay = publications(40);
        // In hand 10, then two pages of 7, then the third read fails.
        let mut preamble = paged(&replay, 10, Some(2));
        let mut read = Vec::new();
        let error = loop {
            match preamble.next_batch().await {
                Ok(Some(batch)) => read.push(batch),
                Ok(None) => panic!("the replay cannot end whole"),
                Err(e) => break e,
            }
        };
        assert!(matches!(error, ReplayError::Cut));
        assert_eq!(ended_by(&error).0, ErrorCode::UnrecoverablePosition);
        assert!(
            !preamble.is_done(),
            "nothing live may follow a broken replay"
        );
        let mut decoder = quiver_proto::FrameDecoder::new(1 << 20);
        decoder.push(&read.concat());
        let mut frames = 0;
        while decoder.next_frame().unwrap().is_some() {
            frames += 1;
        }
        assert_eq!(
            frames,
            1 + 10 + 14,
            "the header and the publications read before it"
        );
    }
}
