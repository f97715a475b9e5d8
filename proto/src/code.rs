//! Numeric codes: [`ErrorCode`] in `Error` replies and `Unsubscribed` events, [`CloseCode`] in
//! `Goodbye` frames and as the QUIC application close code.
//!
//! Codes are stable forever once released: new ones are appended, none is reused. A client that
//! meets an unknown code treats it like the nearest generic one (`Internal`, or `ServerError`).

macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal, $label:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn from_u16(code: u16) -> Option<Self> {
                match code {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            pub fn as_u16(self) -> u16 {
                self as u16
            }

            /// A stable snake_case label, used in metrics and logs.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} ({})", self.label(), self.as_u16())
            }
        }
    };
}

codes! {
    /// Why a command was refused, or why the server ended one subscription. Non-exhaustive:
    /// the protocol appends codes.
    #[non_exhaustive]
    ErrorCode {
        /// Something broke on the server; the command may be retried.
        Internal = 100, "internal";
        /// The command is well-formed but not acceptable now (for example a second `Hello`).
        BadRequest = 101, "bad_request";
        /// The room name is not a valid room name.
        InvalidRoom = 102, "invalid_room";
        /// The token's permissions do not allow this room.
        PermissionDenied = 103, "permission_denied";
        /// This connection is already subscribed to the room; nothing changed.
        AlreadySubscribed = 104, "already_subscribed";
        /// This connection is not subscribed to the room.
        NotSubscribed = 105, "not_subscribed";
        /// The per-connection subscription limit is reached.
        TooManySubscriptions = 106, "too_many_subscriptions";
        /// The per-connection command rate limit is exceeded; retry later.
        RateLimited = 107, "rate_limited";
        /// A refresh token was invalid, expired, or for another user or tenant.
        InvalidToken = 108, "invalid_token";
        /// The publication payload exceeds the server's limit.
        PayloadTooLarge = 109, "payload_too_large";
        /// The command type is unknown to this server (a newer client); the session stays open.
        UnknownCommand = 110, "unknown_command";
        /// The broker is unavailable; retry later.
        Unavailable = 111, "unavailable";
        /// The subscriber did not read fast enough; its queue overflowed and the subscription ended.
        SlowConsumer = 112, "slow_consumer";
        /// The subscription ended because the session is closing.
        SessionClosing = 113, "session_closing";
        /// The server could not open the subscription's stream in time: the client allows
        /// fewer concurrent incoming unidirectional streams than it has subscriptions.
        StreamLimit = 114, "stream_limit";
        /// The tenant is at one of its quotas on this server (subscriptions, publications per
        /// second, bytes per second); retry later.
        QuotaExceeded = 115, "quota_exceeded";
        /// The backend ended this subscription (`POST /api/v1/unsubscribe`); the session stays.
        /// Do not resubscribe by yourself.
        Unsubscribed = 116, "unsubscribed";
        /// A `History` `since` position is no longer in the room's history (trimmed, or of
        /// another epoch): page from the start (`since` absent) and re-sync.
        UnrecoverablePosition = 117, "unrecoverable_position";
        /// A `Call` (or a backend hook) got no answer before its deadline. The backend may
        /// still have run it: retry only with the same idempotency key.
        DeadlineExceeded = 118, "deadline_exceeded";
        /// The backend answered a `Call` with an error of its own (HTTP 5xx, or a NATS reply
        /// with a `Quiver-Status` header); the message is the backend's.
        BackendError = 119, "backend_error";
        /// The client stopped the subscription's stream (QUIC STOP_SENDING, WebTransport
        /// only): the server ended the subscription; the session stays. Subscribe again for
        /// deliveries.
        StreamStopped = 120, "stream_stopped";
    }
}

codes! {
    /// Why the server closed the session. Carried in a `Goodbye` frame and as the QUIC
    /// application close code. Non-exhaustive: the protocol appends codes.
    #[non_exhaustive]
    CloseCode {
        /// The server is shutting down or draining; reconnect (to another instance).
        Shutdown = 3000, "shutdown";
        /// The client sent a malformed or oversized frame; reconnecting will not help.
        ProtocolError = 3001, "protocol_error";
        /// The token expired without a refresh; reconnect with a fresh token.
        TokenExpired = 3002, "token_expired";
        /// The client kept exceeding its command rate; reconnect later, with backoff.
        RateAbuse = 3003, "rate_abuse";
        /// The client's `Hello` asked for a protocol version this server does not speak.
        UnsupportedVersion = 3004, "unsupported_version";
        /// The server failed internally; reconnect.
        ServerError = 3005, "server_error";
        /// The client did not send `Hello` in time.
        HelloTimeout = 3006, "hello_timeout";
        /// The token was refused before any session existed (WebSocket transport only: a
        /// browser cannot see the HTTP status of a refused upgrade). Do not retry with the same
        /// token.
        InvalidToken = 3007, "token_invalid";
        /// The tenant is at its quota of concurrent sessions on this server; reconnect later,
        /// with backoff.
        OverQuota = 3008, "over_quota";
        /// The backend ended this session (the user or session was disconnected, or its token
        /// revoked); do not reconnect with the same token.
        Disconnected = 3009, "disconnected";
        /// The client did not read the server's replies for `timeouts.reply`: its outgoing
        /// queue stayed full. Reconnect (and resume), and keep reading.
        NotReading = 3010, "not_reading";
        /// The backend asked this session to reconnect (to take up new permissions with a
        /// fresh token, or to move to another instance); reconnect, resuming.
        Reconnect = 3011, "reconnect";
    }
}

impl CloseCode {
    /// Whether a client should reconnect by itself after this close.
    pub fn reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::ProtocolError
                | CloseCode::UnsupportedVersion
                | CloseCode::InvalidToken
                | CloseCode::Disconnected
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_labels_unique() {
        let mut labels = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(*c));
            assert!(labels.insert(c.label()));
        }
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_u16(c.as_u16()), Some(*c));
            assert!(labels.insert(c.label()));
        }
        assert_eq!(ErrorCode::from_u16(9999), None);
    }
}
