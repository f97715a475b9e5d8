//! Quiver's wire protocol, sans-IO: no sockets, no async runtime.
//!
//! - [`frame`]: length-prefixed framing and an incremental decoder that enforces a maximum frame
//!   size before it buffers anything.
//! - [`message`]: [`ClientFrame`] (commands, client intent) and [`ServerFrame`] (events, server state
//!   changes), postcard-encoded.
//! - [`room`]: tenant ids, room names and permission patterns, validated here once.
//! - [`code`]: error codes (replies) and close codes (goodbye frames).
//! - [`datagram`]: the QUIC datagrams of the `latest` lane.
//!
//! `PROTOCOL.md` at the repository root is the normative description of the bytes.

pub mod code;
pub mod datagram;
pub mod frame;
pub mod message;
pub mod room;

pub use code::{CloseCode, ErrorCode};
pub use frame::{FrameDecoder, FrameError, DEFAULT_MAX_FRAME, LENGTH_PREFIX, MAX_MAX_FRAME};
pub use message::{
    decode_command, decode_event, encode_command, encode_event, encode_publication,
    publication_payload, ClientFrame, Command, DecodeError, Event, HistoryItem, Limits, Member,
    Position, Recovery, ServerFrame,
};
pub use room::{Pattern, RoomError, RoomName, TenantId};

/// The protocol version this crate speaks. It is also the CONNECT path: `/v1`.
pub const PROTOCOL_VERSION: u16 = 1;

/// The CONNECT path for [`PROTOCOL_VERSION`].
pub const CONNECT_PATH: &str = "/v1";
