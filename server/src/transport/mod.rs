//! Transport adapters: how bytes reach the one session core ([`crate::session`]).
//!
//! Each adapter authenticates its request the same way ([`credentials`], [`check_origin`],
//! [`admit`]), turns what the peer sends into [`Inbound`] items, and writes what the core puts on
//! its outgoing channel. What differs is only how subscriptions travel: WebTransport opens a
//! QUIC stream per room; WebSocket and SSE share the one connection ([`Peer`]).

pub mod queue;
pub mod sse;
pub mod websocket;
pub mod webtransport;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quiver_proto::{
    decode_command, ClientFrame, DecodeError, FrameDecoder, FrameError, LENGTH_PREFIX,
};
use tokio_util::sync::CancellationToken;

use crate::log_budget::{LogBudget, Summary};
use crate::server::Shared;

/// Tokens longer than this are refused before they are parsed (a JWT with our claims is a few
/// hundred bytes; identity providers' are rarely over 2 KB).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Which adapter a session came through: a label on metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebTransport,
    WebSocket,
    Sse,
}

impl Transport {
    pub const ALL: [Transport; 3] = [
        Transport::WebTransport,
        Transport::WebSocket,
        Transport::Sse,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
        }
    }
}

/// The connection under a session, as far as the core needs to know it.
pub enum Peer {
    /// A WebTransport session: every subscription gets its own unidirectional stream.
    Quic(wtransport::Connection),
    /// One ordered connection (WebSocket, SSE): subscriptions share the outgoing channel. The
    /// adapter cancels the token when the peer is gone.
    Shared(CancellationToken),
}

impl Peer {
    /// Resolves when the peer is gone, with why (the closed-sessions metric's `reason`).
    pub async fn closed(&self) -> &'static str {
        match self {
            Peer::Quic(conn) => quic_close_reason(&conn.closed().await),
            // The adapter's reader says why through `Inbound::Ended`; this is the backstop.
            Peer::Shared(gone) => {
                gone.cancelled().await;
                "connection_lost"
            }
        }
    }
}

/// Frames a session's outgoing queue holds, whatever the transport.
const OUT_FRAMES: usize = 256;

/// The bytes a session's outgoing queue may hold: four largest frames, at least 1 MiB. A
/// client that does not read (no stream credit on WebTransport, a full TCP window) makes the
/// server hold at most this for it (besides its subscriptions' queues,
/// `limits.session_queue_bytes`), then its replies wait and, past `timeouts.reply`, the
/// session ends (`not_reading`): not 256 largest frames (16 MiB at the default `max_frame`).
pub fn out_queue_bytes(limits: &crate::config::LimitsConfig) -> usize {
    (4 * limits.max_frame as usize).max(1 << 20)
}

/// A session's outgoing queue: the frames the core and its shared subscriptions put out, in
/// count and in bytes (`out_queue_bytes`).
pub fn out_queue(
    limits: &crate::config::LimitsConfig,
) -> (queue::Sender<bytes::Bytes>, queue::Receiver<bytes::Bytes>) {
    queue::bounded_bytes(OUT_FRAMES, out_queue_bytes(limits))
}

/// Why a QUIC connection ended, as a closed-sessions `reason`.
pub fn quic_close_reason(e: &wtransport::error::ConnectionError) -> &'static str {
    use wtransport::error::ConnectionError as E;
    match e {
        // The client closed its session or connection on purpose.
        E::ApplicationClosed(_) | E::ConnectionClosed(_) => "client_closed",
        E::TimedOut => "idle_timeout",
        E::LocallyClosed => "server_closed",
        _ => "connection_lost",
    }
}

/// What an adapter hands the session core, in the order the peer sent it.
pub enum Inbound {
    /// Boxed: channels allocate their first block of slots eagerly, so the slot size is memory
    /// every idle session pays.
    /// With the time it arrived: commands are metered at arrival (PROTOCOL §5).
    Frame(Box<ClientFrame>, Instant),
    Unknown {
        id: u32,
        kind: u32,
        arrived: Instant,
    },
    Malformed(String),
    /// A QUIC datagram from the client (a publication to a `latest` room, PROTOCOL.md §10),
    /// with the time it arrived. Boxed for the same reason as `Frame`: inline, it made every
    /// slot 48 bytes, not 32 (512 bytes more in every session's first block).
    Datagram(Box<(bytes::Bytes, Instant)>),
    /// A WebSocket ping or pong from the client, with the time it arrived: metered like a
    /// command (nothing answers it but the WebSocket layer's pong), so a flood of them ends
    /// in `rate_abuse` like a flood of commands (outside audit: four sessions sending pings
    /// and pongs flat out kept the server above a core, never refused).
    Control(Instant),
    /// The peer is gone, and why (a metrics label: `client_closed`, `idle_timeout`, …).
    Ended(&'static str),
}

/// What a session's reader holds ahead of the session core (and one frame more, however
/// large), besides what the transport itself buffers: the inbound queue's bound in bytes on
/// WebTransport and WebSocket alike (PROTOCOL §5).
pub const READ_AHEAD_BYTES: usize = 256 * 1024;

impl Inbound {
    /// About how many bytes it holds while it waits in a session's inbound queue: its payload
    /// and strings, and a frame's fixed part.
    pub fn weight(&self) -> usize {
        const FIXED: usize = 64;
        match self {
            Inbound::Frame(frame, _) => {
                FIXED
                    + match &frame.command {
                        quiver_proto::Command::Publish { room, payload, .. } => {
                            room.len() + payload.len()
                        }
                        quiver_proto::Command::Call {
                            method,
                            payload,
                            idempotency_key,
                            ..
                        } => method.len() + payload.len() + idempotency_key.len(),
                        quiver_proto::Command::Hello { client, .. } => client.len(),
                        quiver_proto::Command::Refresh { token } => token.len(),
                        quiver_proto::Command::Subscribe { room, .. }
                        | quiver_proto::Command::Unsubscribe { room }
                        | quiver_proto::Command::Presence { room }
                        | quiver_proto::Command::History { room, .. }
                        | quiver_proto::Command::PresenceStats { room } => room.len(),
                        quiver_proto::Command::Ping => 0,
                    }
            }
            Inbound::Datagram(datagram) => FIXED + datagram.0.len(),
            Inbound::Malformed(reason) => FIXED + reason.len(),
            Inbound::Unknown { .. } | Inbound::Control(_) | Inbound::Ended(_) => FIXED,
        }
    }

    /// When the adapter read it, for what the peer sent.
    pub fn arrived(&self) -> Option<Instant> {
        match self {
            Inbound::Frame(_, arrived) | Inbound::Control(arrived) => Some(*arrived),
            Inbound::Unknown { arrived, .. } => Some(*arrived),
            Inbound::Datagram(datagram) => Some(datagram.1),
            Inbound::Malformed(_) | Inbound::Ended(_) => None,
        }
    }

    /// Decodes one frame body (length prefix already removed).
    pub fn decode(body: &[u8]) -> Inbound {
        let arrived = Instant::now();
        match decode_command(body) {
            Ok(frame) => Inbound::Frame(Box::new(frame), arrived),
            Err(DecodeError::UnknownType { id, kind }) => Inbound::Unknown { id, kind, arrived },
            Err(e @ DecodeError::Malformed(_)) => Inbound::Malformed(e.to_string()),
        }
    }

    /// The next complete frame a stream decoder holds, decoded. A framing error is `Malformed`
    /// (the stream is out of sync after it: stop reading).
    pub fn next(decoder: &mut FrameDecoder) -> Option<Inbound> {
        match decoder.next_frame() {
            Ok(None) => None,
            Ok(Some(body)) => Some(Inbound::decode(&body)),
            Err(e) => Some(Inbound::Malformed(e.to_string())),
        }
    }
}

/// Splits a message that must hold exactly one complete frame (WebSocket, PROTOCOL.md §9.2)
/// and returns its body.
pub fn single_frame(message: &[u8], max_frame: usize) -> Result<&[u8], String> {
    let Some((prefix, body)) = message.split_first_chunk::<LENGTH_PREFIX>() else {
        // Said of the message, not in a stream decoder's words (outside session audit).
        return Err(format!(
            "a message must hold exactly one frame: {} bytes cannot hold its 4-byte length prefix",
            message.len()
        ));
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty.to_string());
    }
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        }
        .to_string());
    }
    if body.len() != len {
        return Err(format!(
            "a message must hold exactly one frame: length prefix says {len} bytes, message has {}",
            body.len()
        ));
    }
    Ok(body)
}

/// The token of a request: `Authorization: Bearer` wins over the `token` query parameter, an
/// empty one too (it is a missing token, not a reason to look at the query: outside audit 97,
/// F2).
pub fn credentials(authorization: Option<&str>, query: Option<&str>) -> Result<String, Refused> {
    let token = authorization
        .and_then(bearer)
        .map(|t| t.trim().to_owned())
        .or_else(|| query.and_then(query_param("token")))
        .unwrap_or_default();
    within_limit(token)
}

/// A token no longer than [`MAX_TOKEN_LEN`], wherever it came from.
fn within_limit(token: String) -> Result<String, Refused> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refused::TokenTooLarge);
    }
    Ok(token)
}

/// The credential of an `Authorization: Bearer …` value, untrimmed; the scheme is
/// case-insensitive (RFC 9110 §11.1), on every transport and the backend API alike.
pub fn bearer(authorization: &str) -> Option<&str> {
    // `Bearer ` with nothing after it reaches here as `Bearer` (HTTP trims a value's white
    // space): an empty credential of this scheme, not another scheme.
    if authorization.eq_ignore_ascii_case("bearer") {
        return Some("");
    }
    authorization
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| &authorization[7..])
}

/// The first value of a query parameter.
pub fn query_param(name: &str) -> impl Fn(&str) -> Option<String> + '_ {
    move |query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Why a request gets no session, before any token is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a path we serve: 404.
    NotFound,
    /// Draining: 429, try later or elsewhere.
    Unavailable,
    /// At `limits.max_sessions`: 429 as well, counted apart (`capacity`) so that an operator's
    /// alert on a full server is not mixed with drains.
    Full,
    /// `Origin` not in `allowed_origins`: 403.
    Origin,
    /// Token over [`MAX_TOKEN_LEN`]: 431 on TCP, 403 on WebTransport (wtransport has no 431).
    TokenTooLarge,
}

impl Refused {
    /// The `reason` label of the refused-sessions metric.
    pub fn label(self) -> &'static str {
        match self {
            Refused::NotFound => "not_found",
            Refused::Unavailable => "unavailable",
            Refused::Full => "capacity",
            Refused::Origin => "origin",
            Refused::TokenTooLarge => "token_too_large",
        }
    }

    /// Logs the refusal within the refusals' budget ([`log_refusal`]) and counts it.
    pub fn log_and_count(self, transport: Transport, remote: &dyn std::fmt::Display) {
        log_refusal(transport, remote, &self);
        count_refused(transport, self.label());
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self {
            Refused::NotFound => "no such path",
            Refused::Unavailable => "draining",
            Refused::Full => "at its session limit",
            Refused::Origin => "Origin not allowed",
            Refused::TokenTooLarge => "token longer than the limit",
        };
        write!(f, "{}: {why}", self.label())
    }
}

/// Which connections a [`Counted`] place is among: each kind is bounded on its own by
/// `limits.max_sessions`, so idle TCP connections (no token needed) cannot keep WebTransport
/// clients out, nor QUIC handshakes WebSocket ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// QUIC connections, from their first packet.
    Quic,
    /// TCP connections, from `accept`, up to `Shared::tcp_ceiling` (a little over the limit:
    /// health checks and scrapes still reach a server full of sessions).
    Tcp,
}

/// Counts a connection until it ends, towards `limits.max_sessions` for its kind ([`Pool`]):
/// a connection that never becomes a session holds memory all the same.
pub struct Counted(Arc<Shared>, Pool);

impl Counted {
    /// A place for one more connection, or `None` with its kind at `max_sessions` (plus any
    /// headroom).
    pub fn admit(shared: &Arc<Shared>, pool: Pool) -> Option<Self> {
        let count = Self::count(shared, pool);
        let limit = match pool {
            Pool::Quic => shared.config.limits.max_sessions,
            Pool::Tcp => shared.tcp_ceiling,
        };
        if count.load(Ordering::Relaxed) >= limit {
            return None;
        }
        count.fetch_add(1, Ordering::Relaxed);
        Some(Self(shared.clone(), pool))
    }

    fn count(shared: &Shared, pool: Pool) -> &AtomicUsize {
        match pool {
            Pool::Quic => &shared.connections,
            Pool::Tcp => &shared.tcp_connections,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        Self::count(&self.0, self.1).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Session refusals logged per second at most (`crate::log_budget`): a peer needs no token to
/// cause one. `quiver_sessions_refused_total` counts every one.
static REFUSALS_LOGGED: LogBudget = LogBudget::summarised(
    20,
    Summary::Info("more sessions were refused than logged (quiver_sessions_refused_total and quiver_quota_refusals_total count all)"),
);

/// Logs a refused session (the reason, never the token; the tenant and user of a correctly
/// signed one), within [`REFUSALS_LOGGED`], and counts it.
pub fn session_refused(
    transport: Transport,
    remote: &dyn std::fmt::Display,
    reason: &crate::auth::AuthError,
) {
    match reason.signer() {
        Some(signer) => {
            log_refusal_of(transport, remote, reason, &signer.tenant, &signer.user);
        }
        None => log_refusal(transport, remote, reason),
    }
    count_refused(transport, reason.label());
}

/// [`log_refusal`] for a session whose token was correctly signed (expired, revoked, or over its
/// tenant's quota): who it names is the issuer's word, and says whose session was refused.
pub fn log_refusal_of(
    transport: Transport,
    remote: &dyn std::fmt::Display,
    reason: &dyn std::fmt::Display,
    tenant: &quiver_proto::TenantId,
    user: &str,
) {
    if REFUSALS_LOGGED.admit_summarised() {
        // `user` as a `&str` field: quoted and escaped in text, a plain string in JSON.
        tracing::info!(%remote, reason = %reason, transport = transport.label(), %tenant, user, "session refused");
    }
}

/// Logs a session refused (before its token was accepted, or over its tenant's quota), within
/// [`REFUSALS_LOGGED`]; counting it is the caller's.
pub fn log_refusal(
    transport: Transport,
    remote: &dyn std::fmt::Display,
    reason: &dyn std::fmt::Display,
) {
    if REFUSALS_LOGGED.admit_summarised() {
        tracing::info!(%remote, reason = %reason, transport = transport.label(), "session refused");
    }
}

pub fn count_refused(transport: Transport, reason: &'static str) {
    metrics::counter!(crate::metrics::SESSIONS_REFUSED, "transport" => transport.label(), "reason" => reason)
        .increment(1);
}

/// An `Origin` header is checked against `allowed_origins`: an empty list allows every origin
/// (development); otherwise the origin must be listed. Requests without `Origin` (native
/// clients) are not browsers and pass.
pub fn check_origin(shared: &Shared, origin: Option<&str>) -> Result<(), Refused> {
    let allowed = &shared.config.allowed_origins;
    // One trailing `/` (PROTOCOL.md §9.1), not any number (outside audit 97, F5).
    fn bare(o: &str) -> &str {
        o.strip_suffix('/').unwrap_or(o)
    }
    match origin {
        Some(origin) if !allowed.is_empty() => {
            let origin = bare(origin);
            if allowed
                .iter()
                .any(|a| a == "*" || bare(a).eq_ignore_ascii_case(origin))
            {
                Ok(())
            } else {
                Err(Refused::Origin)
            }
        }
        _ => Ok(()),
    }
}

/// An HTTP refusal's body (PROTOCOL.md §9.1): `{"code", "label", "message"}`, `code` a close
/// code for token refusals and `null` otherwise.
pub fn problem(
    status: axum::http::StatusCode,
    label: &str,
    code: Option<u16>,
    message: impl Into<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // The message may quote what was refused (a room, a `Last-Event-ID`): bounded, so an
    // answer never grows with the request (outside TCP audit 16).
    let message = crate::text::bounded(message.into(), crate::text::MAX_MESSAGE);
    let body = serde_json::json!({"code": code, "label": label, "message": message});
    (status, axum::Json(body)).into_response()
}

/// The checks of a TCP request (WebSocket upgrade, SSE) before its token is verified, in order:
/// origin, capacity, the token's presence and size. (Its connection was counted against the
/// server's and its address's limits at `accept`: `crate::tcp`.)
///
/// `offered` is a WebSocket upgrade's token offered as a subprotocol (PROTOCOL §9.1, see
/// `websocket::offered_token`): it comes after an `Authorization` header and before the query.
pub fn admit_tcp(
    shared: &Shared,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    offered: Option<String>,
) -> Result<String, Refused> {
    use axum::http::header;
    // A header that is there but not text (bytes outside visible ASCII) is judged as a value
    // no rule takes, never as absent: an `Origin` of `https://évil.example` passed as a native
    // client's (no `Origin`) through any allow-list, and an unreadable `Authorization` sent
    // the server to the query's token (outside audit 97, F1, F2).
    const UNREADABLE: &str = "\u{fffd}";
    let header_str = |name| {
        headers
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.to_str().unwrap_or(UNREADABLE))
    };
    // Two `Origin` headers are refused whatever they say: checking only the first would let
    // a second one through unexamined (browsers send one).
    if headers.get_all(header::ORIGIN).iter().nth(1).is_some() {
        return Err(Refused::Origin);
    }
    check_origin(shared, header_str(header::ORIGIN))?;
    admit(shared)?;
    // Two `Authorization` headers are no credential at all: a proxy in front may have judged
    // the other one (outside audit: the first was used here, the last on WebTransport). Nor is
    // one that is not text.
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    let first = authorizations.next();
    if authorizations.next().is_some() || first.is_some_and(|v| v.to_str().is_err()) {
        return Ok(String::new());
    }
    // One of another scheme is ignored (PROTOCOL §9.1), here too: it is not ours (a site's
    // Basic credentials a browser sends along with the upgrade, a proxy's own), so an offered
    // token still comes before the query (outside audit 119, F1: such a header sent the server
    // to the query, and a valid offered token was refused 3007 for good).
    let bearer_header = first.and_then(|v| v.to_str().ok()).and_then(bearer);
    match (bearer_header, offered) {
        (None, Some(token)) => within_limit(token),
        _ => credentials(header_str(header::AUTHORIZATION), query),
    }
}

/// Whether the server takes another session now (not draining, under `max_sessions`).
pub fn admit(shared: &Shared) -> Result<(), Refused> {
    if shared.draining.load(Ordering::Relaxed) {
        Err(Refused::Unavailable)
    } else if shared.sessions.load(Ordering::Relaxed) >= shared.config.limits.max_sessions {
        Err(Refused::Full)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_query_or_header() {
        assert_eq!(credentials(None, Some("a=1&token=x%2By")).unwrap(), "x+y");
        assert_eq!(credentials(None, Some("a=1")).unwrap(), "");
        assert_eq!(
            credentials(Some("Bearer hdr"), Some("token=q")).unwrap(),
            "hdr"
        );
        assert_eq!(credentials(Some("bearer low"), None).unwrap(), "low");
        let long = format!("token={}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(credentials(None, Some(&long)), Err(Refused::TokenTooLarge));
    }

    #[test]
    fn one_frame_per_message() {
        let mut frame = Vec::new();
        quiver_proto::frame::write_frame(b"abc", &mut frame);
        assert_eq!(single_frame(&frame, 16).unwrap(), b"abc");
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert!(single_frame(&two, 16).is_err());
        assert!(single_frame(&frame[..5], 16).is_err());
        assert!(single_frame(&frame, 2).is_err());
        assert!(single_frame(&[0, 0, 0, 0], 16).is_err());
        assert!(single_frame(&[0, 0], 16).is_err());
        let empty = single_frame(&[], 16).unwrap_err();
        assert!(empty.contains("0 bytes cannot hold"), "{empty}");
    }
}
