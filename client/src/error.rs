//! [`ClientError`]: everything a client call can fail with.

use quiver_proto::{CloseCode, ErrorCode};

/// Errors returned by [`crate::Client`] and [`crate::ClientConfig`] helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server refused the session before it existed: on WebTransport with HTTP 403
    /// (missing, invalid or expired token, or a refused origin), 404 (wrong path) or 429
    /// (draining or full), without the status (wtransport does not expose it); on WebSocket
    /// with an HTTP status (`status`: 403 refused origin, 404, 429) before the upgrade. A refused
    /// *token* on WebSocket is [`ClientError::TokenRefused`].
    #[error("server refused the session at {url} ({})", refusal(*.status))]
    Refused { url: String, status: Option<u16> },
    /// The server refused the token at a WebSocket upgrade (PROTOCOL.md section 9.1): `code`
    /// 3007 `token_invalid` (the token is bad: retrying with it is pointless, so the client stops)
    /// or 3002 `token_expired` (a later attempt asks the token provider for a fresh one).
    #[error("token refused ({}): {reason}", close_label(*.code))]
    TokenRefused { code: u16, reason: String },
    /// The connection could not be established (DNS, TLS, QUIC, handshake, bad URL, ...).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The server said goodbye as the session opened, with a code that allows a later try
    /// (`code` a [`quiver_proto::CloseCode`]: 3008 `over_quota`, 3000 `shutdown`, ...): the
    /// first connect fails with it, and while reconnecting it is the
    /// [`crate::ConnectionState::Disconnected`] code.
    #[error("server said goodbye ({}): {reason}", close_label(*.code))]
    Goodbye { code: u16, reason: String },
    /// The server's WebTransport certificate was not accepted: not the pinned hash
    /// ([`crate::Trust::CertHashes`]: a stale pin after the server's certificate changed, say)
    /// or not a chain the roots trust. The server answered, so [`crate::Transport::Auto`] does
    /// not fall back to WebSocket for it (that would trade a failed check for another
    /// connection, perhaps unencrypted); the client keeps retrying with backoff, as for any
    /// failed connect after the first.
    #[error("server certificate not accepted: {0}")]
    Certificate(String),
    /// The server refused a command with an `Error` reply (or ended something with this code).
    /// `code` is a [`quiver_proto::ErrorCode`] value.
    #[error("server error {}: {message}", code_label(*.code))]
    Server { code: u16, message: String },
    /// The session was closed and will not reconnect: by the server (a `Goodbye` with
    /// `reconnect: false`, `code` is a [`quiver_proto::CloseCode`]) or by [`crate::Client::close`]
    /// (code 0).
    #[error("closed ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// The connection dropped while the command was in flight: it may or may not have taken
    /// effect. The client reconnects by itself.
    #[error("connection lost while the command was in flight")]
    ConnectionLost,
    /// A draining server said goodbye (close code 3000) without answering the command. Such a
    /// server answers every command it carries out before that goodbye (PROTOCOL.md section 7),
    /// so this one was not carried out: sending it again, on the next session, is safe. The
    /// client reconnects by itself (acknowledged publishes are sent again by the client).
    #[error("the server drained without carrying out the command; safe to send again")]
    NotCarriedOut,
    /// The command needs a live session and the client is currently reconnecting.
    #[error("not connected")]
    NotConnected,
    /// The publish buffer (`ClientConfig::publish_buffer`) is full while disconnected.
    #[error("publish buffer full")]
    BufferFull,
    /// No answer within `connect_timeout` (connecting) or `request_timeout` (commands). From
    /// [`crate::Client::publish_ack`]: the publication was not written in time and is
    /// withdrawn, never sent, so publishing it again publishes it once. From
    /// [`crate::Client::call`]: the call may have been sent and the backend may run it (or have
    /// run it): retry only with an idempotency key, as after
    /// [`ClientError::ConnectionLost`] (one still waiting to be written is withdrawn, never
    /// sent later).
    #[error("timed out")]
    Timeout,
    /// [`crate::Client::publish_ack`] only: the publication was written, and no answer came
    /// within `request_timeout` after the call's deadline: it may or may not have been
    /// published (a stalled server), as after [`ClientError::ConnectionLost`].
    #[error("written, and no answer within the request timeout")]
    Unanswered,
    /// The token provider failed.
    #[error("token provider failed: {0}")]
    Token(String),
    /// The server sent something this client cannot make sense of, or a local configuration
    /// problem (certificate file, hash) prevented connecting.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The [`ErrorCode`] of a [`ClientError::Server`], if it is one this version knows.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }

    /// Whether this is the server saying no to the credentials: a refused token
    /// ([`ClientError::TokenRefused`], or a session closed with 3007 `token_invalid`). A
    /// WebTransport [`ClientError::Refused`] may be one too, but the client cannot tell.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            ClientError::TokenRefused { .. } => true,
            ClientError::Closed { code, .. } => *code == CloseCode::InvalidToken.as_u16(),
            _ => false,
        }
    }

    pub(crate) fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError::Server {
            code: code.as_u16(),
            message: message.into(),
        }
    }
}

/// Most characters of server-chosen text shown by [`clip`].
pub(crate) const SHOWN_CHARS: usize = 256;

/// Server-chosen text (a goodbye's reason, an error's message, a session or user name, a dump
/// of an unexpected frame) as this client puts it in a log line or an error it builds: at most
/// [`SHOWN_CHARS`] characters, control characters escaped. Such text may be as long as a frame
/// (`max_frame`) and hold newlines, so a server could otherwise write pages into the logs, or
/// lines that look like the client's own (outside audit 103, F8).
pub(crate) fn clip(text: &str) -> String {
    let mut shown = String::with_capacity(text.len().min(SHOWN_CHARS + 8));
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_CHARS {
            shown.push('…');
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

fn refusal(status: Option<u16>) -> String {
    match status {
        Some(s) => format!("HTTP {s}"),
        // wtransport reports a refused CONNECT without its status: name the usual ones, but
        // not as if they were the only ones (a 500 read as "bad token" misled; client audit 14).
        None => "status not reported by WebTransport: 403 bad token, 404 wrong path, 429 busy, \
                 or another"
            .into(),
    }
}

fn close_label(code: u16) -> String {
    match CloseCode::from_u16(code) {
        Some(c) => format!("{} ({code})", c.label()),
        None => code.to_string(),
    }
}

fn code_label(code: u16) -> String {
    match ErrorCode::from_u16(code) {
        Some(c) => c.to_string(),
        None => code.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_displays_label() {
        let e = ClientError::server(ErrorCode::PermissionDenied, "no");
        assert_eq!(e.to_string(), "server error permission_denied (103): no");
        assert_eq!(e.error_code(), Some(ErrorCode::PermissionDenied));
    }

    #[test]
    fn a_refusal_without_a_status_does_not_claim_one() {
        let e = ClientError::Refused {
            url: "https://q.example/wt".into(),
            status: None,
        };
        let text = e.to_string();
        assert!(text.contains("status not reported"), "{text}");
        assert!(text.contains("or another"), "{text}");
        let e = ClientError::Refused {
            url: "wss://q.example/ws".into(),
            status: Some(500),
        };
        assert_eq!(
            e.to_string(),
            "server refused the session at wss://q.example/ws (HTTP 500)"
        );
    }

    #[test]
    fn server_text_is_clipped_and_escaped() {
        assert_eq!(clip("drain"), "drain");
        assert_eq!(clip("a\nINFO fake line\u{1b}"), "a\\nINFO fake line\\u{1b}");
        let long = "é".repeat(10_000);
        let shown = clip(&long);
        assert_eq!(shown.chars().count(), SHOWN_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn auth_failures() {
        let e = ClientError::TokenRefused {
            code: 3007,
            reason: "bad signature".into(),
        };
        assert!(e.is_auth_failure());
        assert_eq!(
            e.to_string(),
            "token refused (token_invalid (3007)): bad signature"
        );
        assert!(ClientError::Closed {
            code: 3007,
            reason: String::new()
        }
        .is_auth_failure());
        assert!(!ClientError::Closed {
            code: 3000,
            reason: String::new()
        }
        .is_auth_failure());
        assert!(!ClientError::Timeout.is_auth_failure());
    }
}
