//! The WebSocket adapter (`GET /v1/ws` on the HTTP listener, PROTOCOL.md §9.2): the same frames
//! as the WebTransport control stream, one frame per client message; everything the server sends
//! (replies and every subscription's frames) shares the one socket.
//!
//! A refused token still gets the upgrade, but only to carry one `Goodbye` and a close frame:
//! browsers hide the HTTP status of a failed upgrade, and a client must be able to tell "your
//! token is bad" (stop) from "the network is broken" (retry). Nothing else is allocated for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use quiver_proto::{encode_event, CloseCode, Event, ServerFrame};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    admit_tcp, problem, queue, session_refused, single_frame, Inbound, Peer, Refused, Transport,
};
use crate::auth::AuthError;
use crate::read_budget::{too_large_or_fragmented, MessageBudget};
use crate::server::Shared;
use crate::session::{self, Link, GOODBYE_GRACE};
use crate::tcp::TcpSlot;

const T: Transport = Transport::WebSocket;

/// The subprotocol the server selects whenever a client offers it (PROTOCOL §9.2). A browser
/// cannot set `Authorization` on a WebSocket, and a token in the URL lands in proxies' and
/// servers' access logs; the one header a page can set is `Sec-WebSocket-Protocol`, so the
/// token may travel there as an entry `quiver.token.JWT` beside `quiver`. The answer names
/// `quiver`, never the token.
pub const SUBPROTOCOL: &str = "quiver";
/// The prefix of the subprotocol entry that carries a token.
pub const TOKEN_SUBPROTOCOL: &str = "quiver.token.";

/// The token offered as a subprotocol, if any (PROTOCOL §9.1): `Ok(None)` when none is, an
/// empty token (a missing one) when two are (which one would a proxy in front have judged?),
/// and an error for an offer the server cannot answer: a token without `quiver` beside it
/// (the browser fails an upgrade whose answer names no offered subprotocol, and the server
/// never echoes a token), or a header that is not text.
pub fn offered_token(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let mut entries = Vec::new();
    for value in headers.get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| "Sec-WebSocket-Protocol must be text (RFC 6455 §4.1: tokens)")?;
        entries.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    let mut tokens = entries
        .iter()
        .filter_map(|e| e.strip_prefix(TOKEN_SUBPROTOCOL));
    let Some(token) = tokens.next() else {
        return Ok(None);
    };
    if !entries.contains(&SUBPROTOCOL) {
        return Err(
            "a token offered as a subprotocol (quiver.token.JWT) needs the subprotocol \
                    quiver offered beside it: the server answers quiver, never the token",
        );
    }
    if tokens.next().is_some() {
        return Ok(Some(String::new()));
    }
    Ok(Some(token.to_owned()))
}

/// RFC 6455 §4.1: the key is "a base64-encoded value that, when decoded, is 16 bytes in
/// length" (axum only checks that the header is there), and §11.3.1/§11.3.5: the key and the
/// version "MUST NOT appear more than once" (axum reads the first and ignores the rest).
fn valid_key(headers: &HeaderMap) -> bool {
    use axum::http::header::{SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
    use base64::Engine;
    let once = |name| headers.get_all(name).iter().count() <= 1;
    once(SEC_WEBSOCKET_KEY)
        && once(SEC_WEBSOCKET_VERSION)
        && headers
            .get(SEC_WEBSOCKET_KEY)
            .and_then(|key| {
                base64::engine::general_purpose::STANDARD
                    .decode(key.as_bytes())
                    .ok()
            })
            .is_some_and(|key| key.len() == 16)
}

/// After the server's close frame, how long what the client still sends is read and dropped.
/// Closing a TCP socket with unread data in it resets the connection, and a reset makes the
/// client's kernel discard what it had not read yet: the goodbye (a client that sends without
/// reading, over its rate, say). Lingering lets it arrive.
const LINGER: Duration = Duration::from_secs(2);
/// Most messages read and dropped after the close: a client that sent past the goodbye had a
/// few in flight, not more. Past it the socket is closed at once (outside audit: a flood that
/// ended the session `rate_abuse` went on for the whole linger, unmetered, at a core).
const LINGER_MESSAGES: usize = 1024;
/// Bytes of queued frames past which no frame is added to a message (so a message holds at
/// most this plus one frame). A client
/// hears of a message only when all of it is in: behind a backlog on a slow link, 64 KiB
/// messages left it hearing nothing for seconds, and its heartbeat took the live session for
/// a dead one (outside audit 65: at 200 kbit/s, 5 reconnects in 20 s, each into a longer
/// replay). 16 KiB keeps a message arriving every 2.5 s down to about 52 kbit/s.
const COALESCE: usize = 16 * 1024;
/// tungstenite's read buffer per connection (bench/: 144 → 16 KiB per idle session).
const READ_BUFFER: usize = 4096;
/// Bytes tungstenite may buffer for a socket that does not drain, beyond the kernel's.
const MAX_WRITE_BUFFER: usize = 256 * 1024;

/// `Connection` and `Upgrade` are lists, and several lines of one are one list (RFC 9110
/// §5.3, §7.6.1, §7.8); axum's extractor reads only the first `Connection` line and takes only
/// an `Upgrade` that is exactly `websocket`: a proxy's own `Connection: keep-alive` line before
/// the client's, or an upgrade offering another protocol beside WebSocket, was refused 400
/// (outside fallback audit 6, F1). Each is brought to the one value the extractor reads when
/// its list names the token, and removed when it does not: the extractor looks for `upgrade`
/// as a substring, so `Connection: notupgrade` was upgraded (outside audit 28, F1), where a
/// proxy in front would not have seen an upgrade.
pub async fn upgrade_lists(mut request: axum::extract::Request) -> axum::extract::Request {
    use axum::http::header::{CONNECTION, UPGRADE};
    fn names(headers: &HeaderMap, name: &axum::http::HeaderName, token: &str) -> bool {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|list| {
                list.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        })
    }
    let headers = request.headers_mut();
    for (name, token) in [(CONNECTION, "upgrade"), (UPGRADE, "websocket")] {
        if names(headers, &name, token) {
            headers.insert(name, axum::http::HeaderValue::from_static(token));
        } else {
            headers.remove(name);
        }
    }
    request
}

pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<TcpSlot>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        // RFC 6455 §4.2.2: a version the server does not speak gets 426 and the one it does.
        Err(WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_)) => {
            let mut response = problem(
                StatusCode::UPGRADE_REQUIRED,
                "bad_request",
                None,
                "unsupported WebSocket version: the server speaks version 13 (RFC 6455)",
            );
            response.headers_mut().insert(
                axum::http::header::SEC_WEBSOCKET_VERSION,
                axum::http::HeaderValue::from_static("13"),
            );
            return response;
        }
        Err(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                None,
                "not a WebSocket upgrade request",
            )
        }
    };
    if !valid_key(&headers) {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            None,
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes, and it and \
             Sec-WebSocket-Version may each appear once (RFC 6455 §4.1, §11.3)",
        );
    }
    // An upgrade request has no body (RFC 6455 §4.1: a GET): bytes announced as one would be
    // read as the first WebSocket frames or dropped, depending on how they arrived, and a
    // proxy in front could take them for a body (outside HTTP audit 2, F4).
    let body = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|n| n.as_bytes() != b"0")
        || headers.contains_key(axum::http::header::TRANSFER_ENCODING);
    if body {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            None,
            "a WebSocket upgrade request has no body (no Content-Length or Transfer-Encoding)",
        );
    }
    let offered = match offered_token(&headers) {
        Ok(offered) => offered,
        Err(why) => return problem(StatusCode::BAD_REQUEST, "bad_request", None, why),
    };
    let checked = admit_tcp(&shared, &headers, query.as_deref(), offered);
    let max_frame = shared.config.limits.max_frame as usize;
    let ws = ws
        // Selected whenever offered, refusals included: a browser that offered subprotocols
        // fails an upgrade whose answer names none, before the refusal's `Goodbye` is read.
        .protocols([SUBPROTOCOL])
        .max_message_size(max_frame + quiver_proto::LENGTH_PREFIX)
        .max_frame_size(max_frame + quiver_proto::LENGTH_PREFIX)
        // tungstenite's default read buffer is 128 KiB, zero-filled on first use: that would be
        // most of an idle session's memory. Frames are at most `max_frame`; 4 KiB reads suffice.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER);
    let token = match checked {
        Ok(token) => token,
        // A token problem is told in-band like every other (PROTOCOL §9.1).
        Err(Refused::TokenTooLarge) => {
            Refused::TokenTooLarge.log_and_count(T, &remote);
            let reason = format!("invalid token: longer than {} bytes", super::MAX_TOKEN_LEN);
            return ws.on_upgrade(move |socket| refuse(socket, CloseCode::InvalidToken, reason));
        }
        Err(refused) => {
            refused.log_and_count(T, &remote);
            let status = match refused {
                Refused::NotFound => StatusCode::NOT_FOUND,
                Refused::Origin => StatusCode::FORBIDDEN,
                Refused::Unavailable | Refused::Full | Refused::TokenTooLarge => {
                    StatusCode::TOO_MANY_REQUESTS
                }
            };
            return problem(status, refused.label(), None, refused.label());
        }
    };
    match shared.authenticate(&token) {
        Ok(grant) => {
            let grant = Box::new(grant);
            let framing = slot.clone();
            ws.on_upgrade(move |socket| async move {
                serve(shared, socket, grant, remote, framing).await;
                // The connection counted until its session ends.
                drop(slot);
            })
        }
        Err(e) => {
            session_refused(T, &remote, &e);
            let code = match e {
                AuthError::Expired(_) => CloseCode::TokenExpired,
                _ => CloseCode::InvalidToken,
            };
            let reason = e.to_string();
            ws.on_upgrade(move |socket| refuse(socket, code, reason))
        }
    }
}

/// The whole life of a refused upgrade: one goodbye, one close frame.
async fn refuse(mut socket: WebSocket, code: CloseCode, reason: String) {
    let bye = async {
        socket.send(Message::Binary(goodbye(code, &reason))).await?;
        socket.send(close_message(code, &reason)).await
    };
    let _ = tokio::time::timeout(GOODBYE_GRACE, bye).await;
}

fn goodbye(code: CloseCode, reason: &str) -> Bytes {
    encode_event(&ServerFrame {
        id: 0,
        event: Event::Goodbye {
            code: code.as_u16(),
            reason: reason.to_owned(),
            reconnect: code.reconnect(),
        },
    })
}

fn close_message(code: CloseCode, reason: &str) -> Message {
    // A close frame's reason is at most 123 bytes (RFC 6455 §5.5: a control frame's payload is
    // at most 125, two of them the code).
    Message::Close(Some(CloseFrame {
        code: code.as_u16(),
        reason: crate::text::prefix(reason, 123).into(),
    }))
}

async fn serve(
    shared: Arc<Shared>,
    socket: WebSocket,
    grant: Box<crate::auth::Grant>,
    remote: SocketAddr,
    slot: TcpSlot,
) {
    let (sink, stream) = socket.split();
    let max_frame = shared.config.limits.max_frame as usize;
    let socket = slot.clone();
    let framing = MessageBudget::start(slot, max_frame + quiver_proto::LENGTH_PREFIX);
    // Bounded in bytes as well as in messages, as on WebTransport: 64 messages of up to
    // `max_frame` each were up to 64 MiB held per session behind one waiting command.
    let (in_tx, in_rx) = queue::bounded_weighed(64, super::READ_AHEAD_BYTES, Inbound::weight);
    let (out_tx, out_rx) = super::out_queue(&shared.config.limits);
    let gone = CancellationToken::new();
    let ending = CancellationToken::new();
    let timeouts = &shared.config.timeouts;
    let reader = tokio::spawn(read(
        stream,
        framing,
        in_tx,
        max_frame,
        timeouts.idle,
        gone.clone(),
        ending.clone(),
    ));
    let writer = tokio::spawn(write(
        sink,
        out_rx,
        timeouts.keep_alive,
        gone.clone(),
        socket,
    ));
    let link = Link {
        transport: T,
        peer: Peer::Shared(gone.clone()),
        remote,
    };
    let stopping = shared.shutdown.clone();
    let end = session::run(shared, grant, link, in_rx, out_tx).await;
    let writer_abort = writer.abort_handle();
    // The socket failed (a write stalled past its deadline, or the reader saw the peer go):
    // nothing can be written, so nothing is read for it either.
    let failed = gone.is_cancelled();
    let closing = close(&end, reader, writer, ending, failed);
    // A drain waits for this session's slot: once the server is stopping, a peer that does not
    // answer the close frame (or reads nothing) holds it for CLOSE_GRACE, not the whole linger.
    // So does a refused session: its TCP place is not held the whole linger by a client that is
    // refused again and again. While the client keeps reading what is queued, it is waited for
    // past that grace, up to `timeouts.reply` (`End::cut_short`).
    let cut = Box::pin(end.cut_short(&stopping));
    tokio::select! {
        () = closing => {}
        () = cut => {
            writer_abort.abort();
            debug!(%remote, transport = T.label(), "close cut short (a drain, or a refused session)");
        }
    }
    gone.cancel();
    debug!(%remote, reason = end.reason, transport = T.label(), "websocket closed");
    // Only now does the session stop counting (a drain waits for it), once what a departed
    // client left running is done.
    end.release().await;
}

/// After the session: the goodbye (already queued) and the close frame written, and meanwhile
/// what the client still sends read and dropped (see [`LINGER`]).
async fn close(
    end: &session::End,
    reader: tokio::task::JoinHandle<Option<(SplitStream<WebSocket>, MessageBudget)>>,
    writer: tokio::task::JoinHandle<Option<SplitSink<WebSocket, Message>>>,
    ending: CancellationToken,
    failed: bool,
) {
    // The reader hands back the socket's reading half if the client has not left.
    ending.cancel();
    let unread = match tokio::time::timeout(GOODBYE_GRACE, reader).await {
        Ok(Ok(stream)) if !failed => stream,
        _ => None,
    };
    // Set once the close frame is written (or given up on): the linger ends `LINGER` after it.
    let closed = CancellationToken::new();
    let goodbye = async {
        // The writer sends what is queued (the goodbye last) and the close frame, bounded.
        let mut writer = writer;
        // Past the grace while the client keeps reading (`End::wait_for_reader`).
        let sink = match end.wait_for_reader(&mut writer, GOODBYE_GRACE * 2).await {
            Some(Ok(sink)) => sink,
            _ => {
                writer.abort();
                None
            }
        };
        match (sink, end.close.as_ref()) {
            (Some(mut sink), Some((code, reason))) => {
                let close = sink.send(close_message(*code, reason));
                let _ = tokio::time::timeout(GOODBYE_GRACE, close).await;
            }
            // The client left: tungstenite queued the answer to its close frame (RFC 6455
            // §5.5.1); closing the sink sends it. (After an idle timeout nothing is sent: the
            // peer is presumed gone, PROTOCOL.md §9.2.)
            (Some(mut sink), None) if end.reason == "client_closed" => {
                let _ = tokio::time::timeout(GOODBYE_GRACE, sink.close()).await;
            }
            _ => {}
        }
        closed.cancel();
    };
    // Meanwhile, and for a little after, drop what the client still sends (see LINGER): its
    // answering close frame, or the commands it sent before it read the goodbye.
    let linger = async {
        if let Some((mut stream, mut framing)) = unread {
            let discard = async {
                for _ in 0..LINGER_MESSAGES {
                    match stream.next().await {
                        // A message in too many fragments ends the linger too.
                        Some(Ok(message)) if framing.complete(payload_len(&message)).is_ok() => {}
                        _ => break,
                    }
                }
            };
            // The writer's grace, the close frame's, then the linger itself, and for a client
            // still reading what was queued (the writer waited on for it) until `LINGER` after
            // the close frame: a fixed 5 s stopped reading while such a client's writer went
            // on, and a reset would lose the goodbye (review 90, F3); a bound at the latest the
            // writer could take held every close that long (review 91, F1).
            let bound = async {
                let fixed = tokio::time::sleep(GOODBYE_GRACE * 3 + LINGER);
                let after_close = async {
                    closed.cancelled().await;
                    tokio::time::sleep(LINGER).await;
                };
                tokio::join!(fixed, after_close)
            };
            tokio::select! {
                () = discard => {}
                _ = bound => {}
            }
        }
    };
    let (_, ()) = tokio::join!(goodbye, linger);
}

/// Reads client messages: each binary message is exactly one frame. Anything arriving (a
/// message, a pong) resets the idle deadline; silence for `idle` ends the session. A message
/// whose frames take too many bytes beyond its payload (`read_budget.rs`) is a protocol
/// violation. Once the session is `ending` (or will read nothing more) it returns the stream,
/// so the socket can be drained before it is closed; `None` when the client has left.
async fn read(
    mut stream: SplitStream<WebSocket>,
    mut framing: MessageBudget,
    tx: queue::Sender<Inbound>,
    max_frame: usize,
    idle: Duration,
    gone: CancellationToken,
    ending: CancellationToken,
) -> Option<(SplitStream<WebSocket>, MessageBudget)> {
    let ended = loop {
        let next = tokio::select! {
            biased;
            _ = ending.cancelled() => return Some((stream, framing)),
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        let message = match next {
            Err(_) => break "idle_timeout",
            Ok(None) => break "client_closed",
            // An incomplete message past its bytes failed the connection's read.
            Ok(Some(Err(_))) if framing.exceeded() => {
                let _ = tx.send(Inbound::Malformed(too_large_or_fragmented())).await;
                return Some((stream, framing));
            }
            Ok(Some(Err(e))) => match read_error(e) {
                Ok(gone) => break gone,
                // Oversized messages and broken framing surface here.
                Err(reason) => {
                    let _ = tx.send(Inbound::Malformed(reason)).await;
                    return Some((stream, framing));
                }
            },
            Ok(Some(Ok(message))) => message,
        };
        let framed = match &message {
            // A ping or pong may come between a message's fragments: not the end of one.
            Message::Ping(data) | Message::Pong(data) => {
                framing.control(data.len());
                Ok(())
            }
            _ => framing.complete(payload_len(&message)),
        };
        if let Err(reason) = framed {
            let _ = tx.send(Inbound::Malformed(reason)).await;
            return Some((stream, framing));
        }
        let item = match message {
            Message::Binary(data) => match single_frame(&data, max_frame) {
                Ok(body) => Inbound::decode(body),
                Err(reason) => Inbound::Malformed(reason),
            },
            Message::Text(_) => {
                Inbound::Malformed("text messages are not part of the protocol".into())
            }
            Message::Close(_) => break "client_closed",
            Message::Ping(_) | Message::Pong(_) => Inbound::Control(std::time::Instant::now()),
        };
        let stop = matches!(item, Inbound::Malformed(_));
        // While the session is busy (its queue full: a command waits on a hook or the broker),
        // a client that leaves is noticed all the same (a FIN or a reset): the session then
        // carries out what it has read for a bounded time only, and what the client wrote
        // beyond that is not read (outside bounds audit 3, F2: a client that wrote thousands
        // of hooked commands and closed kept its session for hours, one hook at a time).
        let place = tokio::select! {
            biased;
            place = tx.reserve() => place,
            () = framing.peer_stopped_sending() => {
                gone.cancel();
                let _ = tx.send(Inbound::Ended("client_closed")).await;
                return None;
            }
        };
        match place {
            Ok(place) => place.send(item),
            Err(_) => return Some((stream, framing)),
        }
        if stop {
            return Some((stream, framing));
        }
    };
    let _ = tx.send(Inbound::Ended(ended)).await;
    gone.cancel();
    None
}

/// A data message's payload bytes (a close frame's at most: its code and reason).
fn payload_len(message: &Message) -> usize {
    match message {
        Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => data.len(),
        Message::Text(text) => text.len(),
        Message::Close(_) => 125,
    }
}

/// Sorts a read error: the peer going away (a reset without a close frame is allowed,
/// PROTOCOL §9.2) is `Ok(reason)`; a protocol violation (oversized message, bad framing) is
/// `Err(description)`.
fn read_error(e: axum::Error) -> Result<&'static str, String> {
    use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok("client_closed"),
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => Ok("client_closed"),
        Some(WsError::Io(_)) => Ok("connection_lost"),
        Some(other) => Err(violation(other)),
        None => Err("malformed WebSocket message".into()),
    }
}

/// A peer's WebSocket violation in the protocol's words (it reaches the peer as the goodbye's
/// reason), not the library's.
fn violation(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::error::{
        CapacityError, Error as WsError, ProtocolError as P,
    };
    let what = match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            return format!(
                "a message of {size} bytes: more than one frame of max_frame ({} bytes) and its \
                 4-byte length prefix",
                max_size.saturating_sub(quiver_proto::LENGTH_PREFIX)
            )
        }
        WsError::Utf8(_) => "text that is not UTF-8",
        WsError::Protocol(p) => match p {
            P::NonZeroReservedBits => "reserved bits set",
            P::UnmaskedFrameFromClient => "an unmasked frame",
            P::FragmentedControlFrame | P::ControlFrameTooBig => "a bad control frame",
            P::UnknownControlFrameType(_) | P::UnknownDataFrameType(_) | P::InvalidOpcode(_) => {
                "an unknown opcode"
            }
            P::UnexpectedContinueFrame | P::ExpectedFragment(_) => "bad fragmentation",
            P::InvalidCloseSequence => "a bad close frame",
            _ => "bad framing",
        },
        _ => "bad framing",
    };
    format!("WebSocket protocol violation (RFC 6455): {what}")
}

/// Writes queued frames, coalescing what is queued into one message, and pings every
/// `keep_alive`. Returns the sink when the session's channel closed (for the close frame), or
/// `None` when the socket failed. `socket`: the connection's, for the client's reading inside
/// a message ([`send`]).
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: queue::Receiver<Bytes>,
    keep_alive: Duration,
    gone: CancellationToken,
    socket: TcpSlot,
) -> Option<SplitSink<WebSocket, Message>> {
    let socket = socket.read_side();
    let mut ping = tokio::time::interval(keep_alive);
    ping.tick().await;
    loop {
        let first = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => frame,
                None => return Some(sink),
            },
            _ = ping.tick() => {
                if let Err(e) = send(&mut sink, Message::Ping(Bytes::new()), &rx, socket).await {
                    return failed(e, sink, &gone);
                }
                continue;
            }
        };
        // One message for whatever else is queued (whole frames, PROTOCOL §9.2); a lone frame
        // goes as it is, without a copy.
        let message = match rx.try_recv() {
            Ok(second) if first.len() < COALESCE => {
                let mut batch = BytesMut::with_capacity(first.len() + second.len());
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < COALESCE {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                batch.freeze()
            }
            Ok(second) => {
                if let Err(e) = send(&mut sink, Message::Binary(first), &rx, socket).await {
                    return failed(e, sink, &gone);
                }
                second
            }
            Err(_) => first,
        };
        if let Err(e) = send(&mut sink, Message::Binary(message), &rx, socket).await {
            return failed(e, sink, &gone);
        }
    }
}

/// How often a message that the socket takes only in parts is looked at for the client's
/// reading: a few times per grace of the close's wait (1 s in a drain).
const PART_LOOK: Duration = Duration::from_millis(200);

/// Sends one message. While the socket takes it only in parts (a large message, a slow
/// reader), each change in the bytes the client has not acknowledged is the queue's progress,
/// as each part of a frame is over WebTransport: the waits for a slow reader at the session's
/// end and in a drain (`Progress::while_moving`) see a client reading steadily inside one
/// 64 KiB message, and do not cut it off as one that reads nothing (review 90, F2). The
/// kernel's count is looked at, not the writes: a write is woken only every 32 KiB drained
/// (`tcp.rs`), seconds apart for such a reader. A drop is an acknowledgement; a rise is the
/// kernel taking more of the message, which it does only after one, possibly between two
/// looks: either is the client reading. One that reads nothing changes neither once its
/// receive buffer is full (zero-window probes move no byte). What can be seen is the client's
/// TCP opening its window again, which Linux does only once a good part of its receive buffer
/// is free (PROTOCOL §9.2: with a default buffer, tens of KiB).
async fn send(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    rx: &queue::Receiver<Bytes>,
    socket: &crate::read_budget::ReadSide,
) -> Result<(), axum::Error> {
    let mut sending = std::pin::pin!(sink.send(message));
    // Most messages go at once, and take no timer and no look at the kernel.
    let done = match futures::poll!(sending.as_mut()) {
        std::task::Poll::Ready(done) => done,
        std::task::Poll::Pending => {
            // Read at the first look: a send that waits less than that asks the kernel
            // nothing. (A `sleep` in place, not an `Interval`, which boxes its timer.)
            let mut seen = None;
            loop {
                tokio::select! {
                    biased;
                    done = sending.as_mut() => break done,
                    () = tokio::time::sleep(PART_LOOK) => {
                        let now = socket.unacked();
                        if seen.is_some_and(|before| before != now) {
                            rx.progressed();
                        }
                        seen = Some(now);
                    }
                }
            }
        }
    };
    // A message sent is progress (one taken from the queue and not sent is not:
    // `Receiver::progressed`).
    if done.is_ok() {
        rx.progressed();
    }
    done
}

/// Ends the writer after a failed send: with the sink when the send failed only because the
/// client's close frame came first (tungstenite sends nothing after it), since the answering
/// close frame it queued still has to be flushed (RFC 6455 §5.5.1; outside audit 28, F2: a
/// client's commands and close in one write got the connection dropped without it, a
/// browser's `send(); close()` saw 1006); `None`, the socket failed, otherwise.
fn failed(
    e: axum::Error,
    sink: SplitSink<WebSocket, Message>,
    gone: &CancellationToken,
) -> Option<SplitSink<WebSocket, Message>> {
    use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
    match e.into_inner().downcast_ref::<WsError>() {
        // The reader saw the close frame and ends the session as the client's leaving.
        Some(WsError::Protocol(ProtocolError::SendAfterClosing)) => Some(sink),
        _ => {
            gone.cancel();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};

    #[test]
    fn a_peer_that_leaves_is_not_a_protocol_error() {
        let gone = |e: WsError| read_error(axum::Error::new(e));
        assert_eq!(gone(WsError::ConnectionClosed), Ok("client_closed"));
        assert_eq!(
            gone(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            Ok("client_closed")
        );
        assert_eq!(
            gone(WsError::Io(std::io::ErrorKind::ConnectionReset.into())),
            Ok("connection_lost")
        );
        assert_eq!(
            gone(WsError::Capacity(CapacityError::MessageTooLong {
                size: 65_541,
                max_size: 65_540
            })),
            Err(
                "a message of 65541 bytes: more than one frame of max_frame (65536 bytes) and \
                 its 4-byte length prefix"
                    .into()
            )
        );
        assert_eq!(
            gone(WsError::Protocol(ProtocolError::NonZeroReservedBits)),
            Err("WebSocket protocol violation (RFC 6455): reserved bits set".into())
        );
    }
}
