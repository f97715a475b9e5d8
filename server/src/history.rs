//! One page of a history room's publications, as the `History` command and
//! `POST /api/v1/history` answer it: those after `since` (from the oldest kept when absent),
//! oldest first, at most `limit` (capped at [`MAX_LIMIT`]) and at most `max_bytes` of encoded
//! frame, so the answer always fits one frame.

use bytes::Bytes;
use quiver_proto::Position;

use crate::broker::BrokerError;
use crate::hub::RoomKey;
use crate::server::Shared;

/// Most publications one page holds, whatever the request asks.
pub const MAX_LIMIT: u32 = 1000;

/// What a page costs in a frame besides its publications: the id, the event type, the room
/// (at most `MAX_ROOM_LEN` bytes and its length), the current position, the count and
/// `truncated`. With [`cost`] it must leave room for one publication of the largest payload
/// the configuration allows (`config.rs` keeps `max_payload` 192 bytes under `max_frame`), or
/// a page could hold nothing and give no position to page on from.
const OVERHEAD: usize = 5 + 1 + 2 + quiver_proto::room::MAX_ROOM_LEN + 21 + 5 + 1;

#[derive(Debug)]
pub struct Page {
    /// The room's current position.
    pub current: Option<Position>,
    pub publications: Vec<(Position, Bytes)>,
    /// More publications after the last one are kept than the page holds.
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("namespace {0} keeps no history")]
    NoHistory(String),
    #[error(
        "position {epoch}:{offset} cannot be paged from: of another epoch, ahead of the room, or \
         no longer in history"
    )]
    Unrecoverable { epoch: u64, offset: u64 },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl HistoryError {
    /// What a client is told: the broker's own words never ([`BrokerError::for_client`]).
    pub fn for_client(&self, tenant: &str) -> String {
        match self {
            Self::Broker(e) => e.for_client(tenant),
            _ => self.to_string(),
        }
    }
}

/// An encoded publication's size in a `History` frame: two varint u64s, the payload's varint
/// length and the payload.
fn cost(payload: &[u8]) -> usize {
    10 + 10 + 5 + payload.len()
}

/// Whether the room's namespace keeps history: what a page needs, checked by the session before
/// it asks the backend's hook.
pub fn kept(config: &crate::config::Config, key: &RoomKey) -> Result<(), HistoryError> {
    match config.history(&key.room) {
        Some(_) => Ok(()),
        None => Err(HistoryError::NoHistory(key.room.namespace().to_owned())),
    }
}

pub async fn page(
    shared: &Shared,
    key: RoomKey,
    since: Option<Position>,
    limit: u32,
    max_bytes: usize,
) -> Result<Page, HistoryError> {
    kept(&shared.config, &key)?;
    let limit = limit.min(MAX_LIMIT) as usize;
    // Without `since`, the page starts at the oldest kept publication: read from just before
    // it. That one can be trimmed between the two reads; then the next oldest is asked for.
    let mut attempts = 5;
    let (current, kept) = loop {
        let from = match since {
            Some(since) => Some(since),
            None => shared
                .broker
                .first_kept(key.clone())
                .await?
                .map(|first| Position {
                    epoch: first.epoch,
                    offset: first.offset.saturating_sub(1),
                }),
        };
        let Some(from) = from else {
            // Nothing kept: an empty page at the room's position, read *before* asking again
            // whether anything is kept. Read after the first ask, the position could cover a
            // publication stored between the two reads that the page does not hold, and a
            // client resuming from it would never get that one (outside audit 21, F1: the
            // first publication to a room racing a `History`).
            let current = shared.broker.recover(key.clone(), None).await?.current;
            if shared.broker.first_kept(key.clone()).await?.is_none() {
                break (current, Vec::new());
            }
            // Something came meanwhile: page from the oldest kept, as for any kept room.
            if attempts > 1 {
                attempts -= 1;
                continue;
            }
            return Err(HistoryError::Broker(BrokerError::Unavailable(
                "the room changed under every read of its history; retry".into(),
            )));
        };
        // One more than the page holds says whether more is kept after it.
        let recovered = shared
            .broker
            .recover_some(
                key.clone(),
                from,
                limit.saturating_add(1),
                max_bytes,
                since.is_none(),
            )
            .await?;
        match recovered.replay {
            Some(kept) => break (recovered.current, kept),
            None if since.is_none() && attempts > 1 => attempts -= 1,
            None => {
                return Err(HistoryError::Unrecoverable {
                    epoch: from.epoch,
                    offset: from.offset,
                })
            }
        }
    };
    let budget = max_bytes.saturating_sub(OVERHEAD);
    // `kept` holds at most `limit + 1`: one past the page is enough to say `truncated`.
    let mut used = 0;
    let mut publications = Vec::new();
    for (position, payload) in &kept {
        if publications.len() >= limit || used + cost(payload) > budget {
            break;
        }
        used += cost(payload);
        publications.push((*position, payload.clone()));
    }
    Ok(Page {
        current,
        truncated: publications.len() < kept.len(),
        publications,
    })
}

#[cfg(test)]
mod tests {
    use quiver_proto::{encode_event, Event, HistoryItem, ServerFrame};

    use super::*;

    /// The largest publication the configuration allows always fits a page by itself, and the
    /// estimate covers what such a page really encodes to.
    #[test]
    fn the_largest_allowed_publication_fits_a_page() {
        for max_frame in [crate::config::MIN_MAX_FRAME as usize, 65_536] {
            let max_payload = max_frame - (quiver_proto::room::MAX_ROOM_LEN + 64);
            assert!(OVERHEAD + cost(&vec![0; max_payload]) <= max_frame);
            let page = ServerFrame {
                id: u32::MAX,
                event: Event::History {
                    room: "r".repeat(quiver_proto::room::MAX_ROOM_LEN),
                    position: Some(Position {
                        epoch: u64::MAX,
                        offset: u64::MAX,
                    }),
                    publications: vec![HistoryItem {
                        position: Position {
                            epoch: u64::MAX,
                            offset: u64::MAX,
                        },
                        payload: Bytes::from(vec![0; max_payload]),
                    }],
                    truncated: true,
                },
            };
            let body = encode_event(&page).len() - quiver_proto::LENGTH_PREFIX;
            assert!(
                body <= OVERHEAD + cost(&vec![0; max_payload]),
                "{body} bytes"
            );
        }
    }
}
