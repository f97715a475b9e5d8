//! [`ClientError`]: everything a client call can fail with.

use quiver_proto::ErrorCode;

/// Errors returned by [`crate::Client`] and [`crate::ClientConfig`] helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server refused the WebTransport session (HTTP 403: missing, invalid or expired token;
    /// 404: wrong path; 429: server draining or full). wtransport does not expose the status code.
    #[error("server refused the session at {url} (403 bad token, 404 wrong path or 429 busy)")]
    Refused { url: String },
    /// The connection could not be established (DNS, TLS, QUIC, handshake, bad URL, ...).
    #[error("connect failed: {0}")]
    Connect(String),
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
    /// The command needs a live session and the client is currently reconnecting.
    #[error("not connected")]
    NotConnected,
    /// The publish buffer (`ClientConfig::publish_buffer`) is full while disconnected.
    #[error("publish buffer full")]
    BufferFull,
    /// No answer within `connect_timeout` (connecting) or `request_timeout` (commands).
    #[error("timed out")]
    Timeout,
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

    pub(crate) fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError::Server {
            code: code.as_u16(),
            message: message.into(),
        }
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
}
