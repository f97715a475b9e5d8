//! The messages: [`ClientFrame`] carries a [`Command`] (what the client wants), [`ServerFrame`]
//! an [`Event`] (what the server did or what happened). Each frame body is postcard-encoded:
//! `id` (varint u32) first, then the enum (varint variant index, then its fields in order).
//!
//! Decoding reads `id` and the variant index on their own first, so an unknown command type can
//! be answered with an `UnknownCommand` error carrying the right id instead of killing the
//! session. Bytes after a known message are ignored: later protocol revisions may append fields.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A position in a room's history. `epoch` changes whenever the server lost that history (for
/// example after a restart with in-memory history): positions from another epoch cannot be
/// resumed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

/// Limits the server enforces on this session, announced in `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame body the server accepts, in bytes.
    pub max_frame: u32,
    /// Largest publication payload, in bytes.
    pub max_payload: u32,
    /// Most rooms one session may be subscribed to at once.
    pub max_subscriptions: u32,
    /// Sustained commands per second before `RateLimited` errors.
    pub commands_per_second: u32,
}

/// Client to server, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client, echoed in the reply. Use 1 and up: 0 is reserved for unsolicited
    /// server events.
    pub id: u32,
    pub command: Command,
}

/// Client intent. The variant order is the wire format: never reorder, only append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// 0. Must be the first frame on the control stream. Answered by `Welcome`.
    Hello { version: u16, client: String },
    /// 1. Answered by `Subscribed` (and a new unidirectional stream) or `Error`.
    Subscribe {
        room: String,
        /// Replay what was published after this position before going live.
        resume: Option<Position>,
    },
    /// 2. Answered by `Unsubscribed` (code 0) or `Error`; the room's stream is finished.
    Unsubscribe { room: String },
    /// 3. Answered by `Published` when `ack` is true, by `Error` on refusal either way.
    Publish {
        room: String,
        payload: Bytes,
        ack: bool,
    },
    /// 4. Answered by `Pong`; measures round-trip time.
    Ping,
    /// 5. Replaces the session's token before it expires. Answered by `Refreshed` or `Error`.
    Refresh { token: String },
    /// 6. Who is in a room (needs subscribe permission). Answered by `Presence` or `Error`.
    Presence { room: String },
    /// 7. A page of a history room's publications, without subscribing (needs subscribe
    ///    permission): those after `since` (from the oldest kept when absent), oldest first, at
    ///    most `limit` (capped by the server). Answered by `History` or `Error`.
    History {
        room: String,
        since: Option<Position>,
        limit: u32,
    },
    /// 8. Asks the application's backend to run `method` (a dot-separated name, validated like
    ///    a room name; the token's `call` claim must allow it). Answered by `Reply` or `Error`.
    ///    Never buffered by clients while disconnected (PROTOCOL.md §11).
    Call {
        method: String,
        payload: Bytes,
        /// Milliseconds the caller will wait; 0 takes the server's default. Capped by the
        /// server's maximum.
        timeout_ms: u32,
        /// Passed to the backend as is, so it can recognise a retried call; empty for none.
        idempotency_key: String,
    },
    /// 9. How many sessions and distinct users are in a room (needs subscribe permission, as
    ///    `Presence`), however many: `Presence` lists only what fits in a frame. Answered by
    ///    `PresenceStats` or `Error`.
    PresenceStats { room: String },
}

impl Command {
    /// Number of variants this version knows; variant indexes at or above it are unknown.
    pub const KNOWN: u32 = 10;
}

/// One publication kept in a room's history, as `History` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub position: Position,
    pub payload: Bytes,
}

/// One session present in a room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub session: String,
}

/// Server to client. `id` echoes the command it answers; 0 for unsolicited events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFrame {
    pub id: u32,
    pub event: Event,
}

/// How a `Subscribe` with `resume` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recovery {
    /// 0. The subscribe asked for no resume.
    NotRequested,
    /// 1. Everything after the position is replayed on the room's stream before live messages.
    Recovered { replayed: u32 },
    /// 2. The position is no longer in history (or its epoch is gone, or the room keeps no
    ///    history): messages were missed and the app must re-sync its state.
    Failed,
}

/// Server state changes. The variant order is the wire format: never reorder, only append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// 0. Answer to `Hello`.
    Welcome {
        version: u16,
        /// Server-assigned session id, for logs and support.
        session: String,
        user: String,
        tenant: String,
        /// Token expiry, seconds since the Unix epoch; `None` if the token never expires.
        expires_at: Option<u64>,
        limits: Limits,
    },
    /// 1. Answer to `Subscribe`. `position` is the room's current position when it keeps history.
    Subscribed {
        room: String,
        position: Option<Position>,
        recovery: Recovery,
        /// Appended field: the subscription's id when the room's namespace delivers `latest`
        /// (PROTOCOL.md §10): datagrams name the subscription by it. Absent (not sent) for every
        /// other mode, and from servers that predate it.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "trailing_option"
        )]
        subscription: Option<u64>,
    },
    /// 2. Answer to `Unsubscribe` (`code` 0), or unsolicited (id 0) when the server ended the
    ///    subscription (`code` is an [`crate::ErrorCode`], for example `SlowConsumer`).
    Unsubscribed {
        room: String,
        code: u16,
        reason: String,
    },
    /// 3. Answer to an acknowledged `Publish`.
    Published { position: Option<Position> },
    /// 4. Answer to `Ping`.
    Pong,
    /// 5. Answer to `Refresh`: the new expiry.
    Refreshed { expires_at: Option<u64> },
    /// 6. A command was refused; it had no effect. `code` is an [`crate::ErrorCode`].
    Error { code: u16, message: String },
    /// 7. A message in a room, on the room's own unidirectional stream.
    Publication {
        room: String,
        position: Option<Position>,
        payload: Bytes,
    },
    /// 8. First frame of every subscription stream; `id` is the `Subscribe` command's id.
    SubscriptionStream { room: String },
    /// 9. The server is closing the session; `code` is a [`crate::CloseCode`]. The QUIC
    ///    connection closes right after with the same code.
    Goodbye {
        code: u16,
        reason: String,
        reconnect: bool,
    },
    /// 10. Answer to `Presence`: every session subscribed to the room, on every instance, or
    ///     as many as fit in one frame.
    Presence {
        room: String,
        members: Vec<Member>,
        /// Appended field: true when members were left out so the frame fits `max_frame`.
        /// Servers that predate it send nothing here, which reads as false.
        #[serde(default, deserialize_with = "trailing_bool")]
        truncated: bool,
    },
    /// 11. On a room's stream, in namespaces with presence events: a session subscribed.
    Joined { room: String, member: Member },
    /// 12. On a room's stream, in namespaces with presence events: a session left.
    Left { room: String, member: Member },
    /// 13. Answer to `History`: the room's current position and a page of its publications,
    ///     oldest first. `truncated` when more publications after the last one are kept than
    ///     the page holds (the limit, or `max_frame`): ask again with `since` = the last one.
    History {
        room: String,
        position: Option<Position>,
        publications: Vec<HistoryItem>,
        truncated: bool,
    },
    /// 14. On a room's stream, in `latest` namespaces: a value that did not go as a datagram
    ///     (too large for the path, or no datagram support), with the subscription's sequence
    ///     number so the client can drop it if a newer value already arrived (PROTOCOL.md §10).
    Latest {
        room: String,
        sequence: u64,
        payload: Bytes,
    },
    /// 15. Answer to `Call`: what the backend returned.
    Reply { payload: Bytes },
    /// 16. Answer to `PresenceStats`: the sessions subscribed to the room, on every instance,
    ///     and how many distinct users they belong to.
    PresenceStats {
        room: String,
        sessions: u32,
        users: u32,
    },
}

/// Reads a `bool` appended at the end of a message (PROTOCOL.md §8): a peer that predates the
/// field sends nothing there, so running out of bytes (postcard's only way of saying "absent")
/// reads as `false`. Only valid for the last field of a message.
fn trailing_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(bool::deserialize(d).unwrap_or(false))
}

/// Like [`trailing_bool`], for an appended `Option` that is left out when `None`.
fn trailing_option<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<T>::deserialize(d).unwrap_or(None))
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid message of this protocol: close the stream.
    #[error("malformed frame: {}", malformed_reason(.0))]
    Malformed(postcard::Error),
    /// A well-formed id with a variant index this version does not know.
    #[error("unknown message type {kind} (id {id})")]
    UnknownType { id: u32, kind: u32 },
}

/// What was wrong, in the protocol's terms (PROTOCOL.md §3's encoding table), not the codec's:
/// this text reaches peers in `Goodbye` reasons.
fn malformed_reason(e: &postcard::Error) -> &'static str {
    use postcard::Error as P;
    match e {
        P::DeserializeUnexpectedEnd => "the body ends inside a field",
        P::DeserializeBadVarint => "a varint does not end, or is too large for its field",
        P::DeserializeBadBool => "a bool that is neither 00 nor 01",
        P::DeserializeBadUtf8 | P::DeserializeBadChar => "a string that is not UTF-8",
        P::DeserializeBadOption => "an Option tag that is neither 00 nor 01",
        P::DeserializeBadEnum => "a message type or enum variant above u32",
        _ => "the body does not decode",
    }
}

/// Encodes a command as a complete frame (length prefix included).
pub fn encode_command(frame: &ClientFrame) -> Vec<u8> {
    encode(frame)
}

/// Encodes an event as a complete frame (length prefix included), ready to share as `Bytes`.
pub fn encode_event(frame: &ServerFrame) -> Bytes {
    Bytes::from(encode(frame))
}

fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    encode_sized(frame, 0)
}

/// Encodes `body` after room for its length prefix, then writes the prefix: one buffer, no copy
/// of the body. `capacity` is a guess of the body's size (the buffer grows past it if needed).
fn encode_sized<T: Serialize>(body: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(crate::LENGTH_PREFIX + capacity);
    out.extend_from_slice(&[0; crate::LENGTH_PREFIX]);
    // Serializing plain structs and enums into a Vec cannot fail; if it did, the frame would
    // be an empty body, which every reader refuses as malformed.
    let mut out = postcard::to_extend(body, out).unwrap_or_else(|_| vec![0; crate::LENGTH_PREFIX]);
    // Bodies are bounded by the encoder's callers; u32 covers any sane maximum.
    let len = (out.len() - crate::LENGTH_PREFIX) as u32;
    out[..crate::LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
    out
}

/// A `Publication` event (id 0) as a complete frame, the bytes `encode_event` gives for
/// `ServerFrame { id: 0, event: Event::Publication { .. } }`, built from borrowed parts: the
/// hot path encodes each publication once for all its subscribers, in one allocation (no room
/// `String`, no second copy of the payload).
pub fn encode_publication(room: &str, position: Option<Position>, payload: &Bytes) -> Bytes {
    // id and type (one byte each), the room's and the payload's lengths (varints), a position
    // (a tag and two u64 varints).
    let capacity = room.len() + payload.len() + 32;
    Bytes::from(encode_sized(
        &(0u32, PUBLICATION, room, position, payload),
        capacity,
    ))
}

/// Decodes one frame body (without the length prefix) from a client.
pub fn decode_command(body: &[u8]) -> Result<ClientFrame, DecodeError> {
    let (id, kind, _) = header(body)?;
    if kind >= Command::KNOWN {
        return Err(DecodeError::UnknownType { id, kind });
    }
    postcard::take_from_bytes(body)
        .map(|(frame, _rest)| frame)
        .map_err(DecodeError::Malformed)
}

/// Number of `Event` variants this version knows.
const EVENTS_KNOWN: u32 = 17;

/// Decodes one frame body (without the length prefix) from the server.
pub fn decode_event(body: &[u8]) -> Result<ServerFrame, DecodeError> {
    let (id, kind, _) = header(body)?;
    if kind >= EVENTS_KNOWN {
        return Err(DecodeError::UnknownType { id, kind });
    }
    postcard::take_from_bytes(body)
        .map(|(frame, _rest)| frame)
        .map_err(DecodeError::Malformed)
}

/// `Event::Publication`'s type on the wire (its index in `Event`).
const PUBLICATION: u32 = 7;

/// The payload of a `Publication` frame body, borrowed from `body` with nothing decoded into
/// owned values (no room `String`, no payload copy); `None` when the body holds any other event
/// or does not decode. For readers that need only the payload, once per delivery.
pub fn publication_payload(body: &[u8]) -> Option<&[u8]> {
    let (_id, kind, fields) = header(body).ok()?;
    if kind != PUBLICATION {
        return None;
    }
    // The fields in `Event::Publication`'s order: room (a string's encoding is a byte string's),
    // position, payload.
    let ((_room, _position, payload), _rest) =
        postcard::take_from_bytes::<(&[u8], Option<Position>, &[u8])>(fields).ok()?;
    Some(payload)
}

/// A frame body's request id and type, and the bytes of the type's fields after them.
fn header(body: &[u8]) -> Result<(u32, u32, &[u8]), DecodeError> {
    let ((id, kind), fields) =
        postcard::take_from_bytes::<(u32, u32)>(body).map_err(DecodeError::Malformed)?;
    Ok((id, kind, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use proptest::prelude::*;

    fn event_body(event: Event) -> Vec<u8> {
        // encode_event gives the frame with its 4-byte length prefix.
        encode_event(&ServerFrame { id: 300, event })[4..].to_vec()
    }

    /// PROTOCOL.md §3: a varint longer than needed is accepted within its type's width; past
    /// it (a sixth byte for a `u32`, or bits above bit 31 in the fifth) the frame is malformed.
    #[test]
    fn longer_varints_are_accepted_within_their_type() {
        let ping = encode_command(&ClientFrame {
            id: 1,
            command: Command::Ping,
        });
        let kind = ping[5..].to_vec(); // the body after the one-byte id
        let body = |id: &[u8]| [id, &kind[..]].concat();
        let frame = decode_command(&body(&[0x81, 0x80, 0x80, 0x80, 0x00])).expect("accepted");
        assert_eq!((frame.id, frame.command), (1, Command::Ping));
        for id in [
            &[0x81, 0x80, 0x80, 0x80, 0x80, 0x00][..],
            &[0x81, 0x80, 0x80, 0x80, 0x10],
        ] {
            assert!(decode_command(&body(id)).is_err(), "{id:02x?} accepted");
        }
    }

    #[test]
    fn malformed_bodies_are_described_in_the_protocol_terms() {
        // id 1, then a type varint longer than a u32 has; id 1, type 0 (Hello), then nothing.
        for (body, says) in [
            (
                &[0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..],
                "a varint does not end",
            ),
            (&[0x01, 0x00][..], "the body ends inside a field"),
        ] {
            let text = decode_command(body).map(|_| ()).unwrap_err().to_string();
            assert!(
                text.starts_with(&format!("malformed frame: {says}")),
                "{text}"
            );
            assert!(
                !text.contains("usize") && !text.contains("buffer"),
                "{text}"
            );
        }
    }

    #[test]
    fn reads_the_payload_of_every_publication_shape() {
        let payload = vec![0xa5u8; 200];
        for position in [
            None,
            Some(Position {
                epoch: u64::MAX,
                offset: 1 << 40,
            }),
        ] {
            let frame = event_body(Event::Publication {
                room: "dash.cpu-1".into(),
                position,
                payload: payload.clone().into(),
            });
            assert_eq!(publication_payload(&frame), Some(&payload[..]));
        }
    }

    #[test]
    fn other_events_and_cut_frames_are_not_publications() {
        let other = event_body(Event::SubscriptionStream { room: "a".into() });
        assert_eq!(publication_payload(&other), None);
        let frame = event_body(Event::Publication {
            room: "a".into(),
            position: None,
            payload: vec![1, 2, 3].into(),
        });
        assert_eq!(publication_payload(&frame[..frame.len() - 1]), None);
        assert_eq!(publication_payload(&[]), None);
    }

    fn body(frame: &[u8]) -> &[u8] {
        &frame[crate::LENGTH_PREFIX..]
    }

    #[test]
    fn unknown_command_keeps_id() {
        // id 7, variant 99
        assert!(matches!(
            decode_command(&[7, 99]),
            Err(DecodeError::UnknownType { id: 7, kind: 99 })
        ));
        assert!(matches!(
            decode_command(&[]),
            Err(DecodeError::Malformed(_))
        ));
        // Subscribe with a truncated room string.
        assert!(matches!(
            decode_command(&[1, 1, 10, b'a']),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn presence_without_the_appended_field_reads_as_not_truncated() {
        // A `Presence` as servers sent it before `truncated` existed: id 8, room "r", no members.
        let old = [8u8, 10, 1, b'r', 0];
        let expected = ServerFrame {
            id: 8,
            event: Event::Presence {
                room: "r".into(),
                members: vec![],
                truncated: false,
            },
        };
        assert_eq!(decode_event(&old).unwrap(), expected);
        let new = [8u8, 10, 1, b'r', 0, 1];
        assert!(matches!(
            decode_event(&new).unwrap().event,
            Event::Presence {
                truncated: true,
                ..
            }
        ));
        // And whatever a later revision appends after it is ignored.
        assert!(matches!(
            decode_event(&[8u8, 10, 1, b'r', 0, 1, 42, 42])
                .unwrap()
                .event,
            Event::Presence {
                truncated: true,
                ..
            }
        ));
    }

    #[test]
    fn subscribed_carries_the_subscription_id_only_when_latest() {
        // id 2, Subscribed, room "r", no position, NotRequested: as every server sent it before
        // the field, and as servers still send it outside `latest` namespaces.
        let plain = [2u8, 1, 1, b'r', 0, 0];
        let frame = ServerFrame {
            id: 2,
            event: Event::Subscribed {
                room: "r".into(),
                position: None,
                recovery: Recovery::NotRequested,
                subscription: None,
            },
        };
        assert_eq!(decode_event(&plain).unwrap(), frame);
        assert_eq!(body(&encode_event(&frame)), &plain);
        let latest = [2u8, 1, 1, b'r', 0, 0, 1, 0xac, 0x02];
        assert!(matches!(
            decode_event(&latest).unwrap().event,
            Event::Subscribed {
                subscription: Some(300),
                ..
            }
        ));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        // Publish whose payload claims 2^32-1 bytes: postcard borrows from the input, so this
        // fails without allocating.
        let evil = [1u8, 3, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode_command(&evil).is_err());
    }

    #[test]
    fn event_uses_the_envelope_documented_in_protocol_md() {
        let frame = encode_event(&ServerFrame {
            id: 0,
            event: Event::Publication {
                room: "a".into(),
                position: None,
                payload: Bytes::from_static(b"hi"),
            },
        });
        assert_eq!(&frame[..], &[0, 0, 0, 8, 0, 7, 1, b'a', 0, 2, b'h', b'i']);
    }

    fn arb_position() -> impl Strategy<Value = Option<Position>> {
        proptest::option::of(
            (any::<u64>(), any::<u64>()).prop_map(|(epoch, offset)| Position { epoch, offset }),
        )
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any::<u16>(), ".{0,20}")
                .prop_map(|(version, client)| Command::Hello { version, client }),
            (".{0,20}", arb_position())
                .prop_map(|(room, resume)| Command::Subscribe { room, resume }),
            ".{0,20}".prop_map(|room| Command::Unsubscribe { room }),
            (
                ".{0,20}",
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<bool>()
            )
                .prop_map(|(room, p, ack)| Command::Publish {
                    room,
                    payload: Bytes::from(p),
                    ack
                }),
            Just(Command::Ping),
            ".{0,40}".prop_map(|token| Command::Refresh { token }),
            ".{0,20}".prop_map(|room| Command::Presence { room }),
            (".{0,20}", arb_position(), any::<u32>())
                .prop_map(|(room, since, limit)| Command::History { room, since, limit }),
            (
                ".{0,20}",
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u32>(),
                ".{0,20}"
            )
                .prop_map(|(method, p, timeout_ms, idempotency_key)| Command::Call {
                    method,
                    payload: Bytes::from(p),
                    timeout_ms,
                    idempotency_key
                }),
            ".{0,20}".prop_map(|room| Command::PresenceStats { room }),
        ]
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (".{0,10}", arb_position(), any::<u32>()).prop_map(|(room, position, n)| {
                Event::Subscribed {
                    room,
                    position,
                    recovery: match n % 3 {
                        0 => Recovery::NotRequested,
                        1 => Recovery::Recovered { replayed: n },
                        _ => Recovery::Failed,
                    },
                    subscription: (n % 2 == 0).then_some(u64::from(n) << 20),
                }
            }),
            (".{0,10}", any::<u16>(), ".{0,10}")
                .prop_map(|(room, code, reason)| Event::Unsubscribed { room, code, reason }),
            arb_position().prop_map(|position| Event::Published { position }),
            Just(Event::Pong),
            proptest::option::of(any::<u64>())
                .prop_map(|expires_at| Event::Refreshed { expires_at }),
            (any::<u16>(), ".{0,20}").prop_map(|(code, message)| Event::Error { code, message }),
            (
                ".{0,10}",
                arb_position(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(room, position, p)| Event::Publication {
                    room,
                    position,
                    payload: Bytes::from(p)
                }),
            ".{0,10}".prop_map(|room| Event::SubscriptionStream { room }),
            (
                ".{0,10}",
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(room, sequence, p)| Event::Latest {
                    room,
                    sequence,
                    payload: Bytes::from(p)
                }),
            (any::<u16>(), ".{0,10}", any::<bool>()).prop_map(|(code, reason, reconnect)| {
                Event::Goodbye {
                    code,
                    reason,
                    reconnect,
                }
            }),
            (
                ".{0,10}",
                proptest::collection::vec((".{0,8}", ".{0,8}"), 0..4),
                any::<bool>()
            )
                .prop_map(|(room, members, truncated)| Event::Presence {
                    room,
                    members: members
                        .into_iter()
                        .map(|(user, session)| Member { user, session })
                        .collect(),
                    truncated,
                }),
            (
                ".{0,10}",
                arb_position(),
                proptest::collection::vec((any::<u64>(), any::<u64>(), ".{0,8}"), 0..4),
                any::<bool>()
            )
                .prop_map(|(room, position, items, truncated)| Event::History {
                    room,
                    position,
                    publications: items
                        .into_iter()
                        .map(|(epoch, offset, p)| HistoryItem {
                            position: Position { epoch, offset },
                            payload: Bytes::from(p),
                        })
                        .collect(),
                    truncated,
                }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|p| Event::Reply {
                payload: Bytes::from(p)
            }),
            (".{0,10}", any::<u32>(), any::<u32>()).prop_map(|(room, sessions, users)| {
                Event::PresenceStats {
                    room,
                    sessions,
                    users,
                }
            }),
        ]
    }

    #[test]
    fn a_publication_encodes_as_the_generic_encoder_does() {
        let payloads: [&[u8]; 3] = [b"", b"hi", &[7; 300]];
        let positions = [
            None,
            Some(Position {
                epoch: 0,
                offset: 0,
            }),
            Some(Position {
                epoch: u64::MAX,
                offset: 1 << 40,
            }),
        ];
        for room in ["a", "dash.cpu-1", &"x".repeat(128)] {
            for payload in payloads {
                for position in positions {
                    let payload = Bytes::copy_from_slice(payload);
                    let generic = encode_event(&ServerFrame {
                        id: 0,
                        event: Event::Publication {
                            room: room.into(),
                            position,
                            payload: payload.clone(),
                        },
                    });
                    assert_eq!(encode_publication(room, position, &payload), generic);
                }
            }
        }
        // PROTOCOL.md §3's example, byte for byte.
        let frame = encode_publication("a", None, &Bytes::from_static(b"hi"));
        assert_eq!(&frame[..], &[0, 0, 0, 8, 0, 7, 1, b'a', 0, 2, b'h', b'i']);
    }

    proptest! {
        #[test]
        fn commands_round_trip(id in any::<u32>(), command in arb_command()) {
            let frame = ClientFrame { id, command };
            let wire = encode_command(&frame);
            let mut dec = FrameDecoder::new(1 << 16);
            dec.push(&wire);
            let got = dec.next_frame().unwrap().unwrap();
            prop_assert_eq!(decode_command(&got).unwrap(), frame);
        }

        #[test]
        fn events_round_trip(id in any::<u32>(), event in arb_event()) {
            let frame = ServerFrame { id, event };
            let wire = encode_event(&frame);
            prop_assert_eq!(decode_event(body(&wire)).unwrap(), frame);
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_command(&data);
            let _ = decode_event(&data);
        }
    }
}
