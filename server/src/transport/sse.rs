//! The Server-Sent Events adapter (`GET /v1/sse`, PROTOCOL.md §9.3): read-only sessions for
//! clients behind proxies that break WebSocket upgrades.
//!
//! The session core runs as for any client: this adapter feeds it the `Hello` and one
//! `Subscribe` per `room` parameter (resuming from `Last-Event-ID`), then turns the frames it
//! writes into SSE events with JSON data. The client can send nothing else; the session lives
//! as long as the response, and the response as long as the session. The session is read-only
//! (`session::run_read_only`): with no subscription left (every room refused, or the last
//! subscription ended) it ends with a `goodbye`, and so does the response.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use bytes::Bytes;
use futures::Stream;
use quiver_proto::{
    decode_event, ClientFrame, CloseCode, Command, ErrorCode, Event, FrameDecoder, Position,
    Recovery, RoomName, LENGTH_PREFIX, PROTOCOL_VERSION,
};
use serde_json::json;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{admit_tcp, problem, queue, session_refused, Inbound, Peer, Refused, Transport};
use crate::api::encoding::{decimal_u64, position as position_value};
use crate::server::Shared;
use crate::session::{self, Link};
use crate::tcp::{TcpSlot, MAX_REQUEST_HEAD};

const T: Transport = Transport::Sse;

/// The first `Subscribe` id; `Hello` is 1.
const FIRST_SUBSCRIBE_ID: u32 = 2;

/// `GET /v1/sse`. A browser page on another origin reads an `EventSource` or `fetch` answer
/// only with CORS headers, and the page is nearly always on another origin (the server has a
/// host and port of its own): every answer, refusals included, names the request's `Origin`
/// when `allowed_origins` lets it in (outside SSE/API audit 2, G5: `EventSource` was blocked in
/// every browser and closed for good). The token is in the URL: no credentials are allowed.
pub async fn stream(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(slot): Extension<TcpSlot>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let cors = cors_origin(&shared, &headers);
    let mut response = respond(shared, remote, slot, query, headers).await;
    if let Some(origin) = cors {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// `OPTIONS /v1/sse`: the CORS preflight of a `fetch` reader that sends `Authorization` or
/// `Last-Event-ID` itself. 403 for an origin `allowed_origins` refuses (or none).
pub async fn preflight(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match cors_origin(&shared, &headers) {
        Some(origin) => (
            StatusCode::NO_CONTENT,
            [
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET"),
                ),
                (
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("authorization, last-event-id"),
                ),
                (
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                ),
                (header::VARY, HeaderValue::from_static("origin")),
            ],
        )
            .into_response(),
        None => problem(
            StatusCode::FORBIDDEN,
            Refused::Origin.label(),
            None,
            "Origin missing or not allowed",
        ),
    }
}

/// The request's one `Origin` when `allowed_origins` lets it in: the origin a page's answer may
/// be read from. Two `Origin` headers are refused anyway (`admit_tcp`).
fn cors_origin(shared: &Shared, headers: &HeaderMap) -> Option<HeaderValue> {
    let mut all = headers.get_all(header::ORIGIN).iter();
    let origin = all.next()?;
    if all.next().is_some() {
        return None;
    }
    super::check_origin(shared, Some(origin.to_str().ok()?)).ok()?;
    Some(origin.clone())
}

async fn respond(
    shared: Arc<Shared>,
    remote: SocketAddr,
    slot: TcpSlot,
    query: Option<String>,
    headers: HeaderMap,
) -> Response {
    let checked = admit_tcp(&shared, &headers, query.as_deref(), None);
    let token = match checked {
        Ok(token) => token,
        Err(refused) => {
            refused.log_and_count(T, &remote);
            let status = match refused {
                Refused::NotFound => StatusCode::NOT_FOUND,
                Refused::Unavailable | Refused::Full => StatusCode::TOO_MANY_REQUESTS,
                Refused::Origin => StatusCode::FORBIDDEN,
                // Like every token refusal (PROTOCOL §9.1).
                Refused::TokenTooLarge => {
                    let code = CloseCode::InvalidToken;
                    return problem(
                        StatusCode::UNAUTHORIZED,
                        code.label(),
                        Some(code.as_u16()),
                        format!("invalid token: longer than {} bytes", super::MAX_TOKEN_LEN),
                    );
                }
            };
            return problem(status, refused.label(), None, refused.label());
        }
    };
    let limits = &shared.config.limits;
    let max_rooms = limits.max_subscriptions.min(limits.commands_per_second) as usize;
    let rooms = match rooms(query.as_deref().unwrap_or_default(), max_rooms) {
        Ok(rooms) => rooms,
        Err(message) => return bad_request(&remote, message),
    };
    let history: Vec<&RoomName> = rooms
        .iter()
        .filter(|room| shared.config.history(room).is_some())
        .collect();
    if let Err(message) = reconnect_fits(query.as_deref().unwrap_or_default(), &headers, &history) {
        return bad_request(&remote, message);
    }
    // The header `EventSource` sends by itself on a reconnect; else the same value as a query
    // parameter, for a new `EventSource` (a fresh token after `token_expired`) that cannot set
    // headers but must not lose its place.
    let query_id = match last_event_id_param(query.as_deref().unwrap_or_default()) {
        Ok(id) => id,
        Err(message) => return bad_request(&remote, message),
    };
    // Given twice, which one counts is anyone's guess: refused, like the query parameter.
    if headers.get_all("last-event-id").iter().nth(1).is_some() {
        return bad_request(&remote, "Last-Event-ID is given twice");
    }
    let header_id = headers.get("last-event-id").map(|v| v.to_str());
    let resume = match header_id.or(query_id.as_deref().map(Ok)) {
        None => BTreeMap::new(),
        Some(Ok(id)) => match parse_event_id(id) {
            Ok(positions) => positions,
            Err(message) => return bad_request(&remote, message),
        },
        Some(Err(_)) => return bad_request(&remote, "Last-Event-ID is not text"),
    };
    let grant = match shared.authenticate(&token) {
        Ok(grant) => grant,
        Err(e) => {
            session_refused(T, &remote, &e);
            let code = match e {
                crate::auth::AuthError::Expired(_) => CloseCode::TokenExpired,
                _ => CloseCode::InvalidToken,
            };
            return problem(
                StatusCode::UNAUTHORIZED,
                code.label(),
                Some(code.as_u16()),
                e.to_string(),
            );
        }
    };

    // What a client would have sent: Hello, then one Subscribe per room.
    let (in_tx, in_rx) = queue::bounded(rooms.len() + 1);
    let mut commands = vec![Command::Hello {
        version: PROTOCOL_VERSION,
        client: "sse".into(),
    }];
    commands.extend(rooms.iter().map(|room| Command::Subscribe {
        room: room.to_string(),
        resume: resume.get(room.as_str()).copied(),
    }));
    for (id, command) in (1..).zip(commands) {
        let frame = Box::new(ClientFrame { id, command });
        // The channel has room for every one of them.
        let _ = in_tx.try_send(Inbound::Frame(frame, std::time::Instant::now()));
    }
    let (out_tx, out_rx) = super::out_queue(&shared.config.limits);
    let gone = CancellationToken::new();
    let link = Link {
        transport: T,
        peer: Peer::Shared(gone.clone()),
        remote,
    };
    // At most `max_subscriptions` rooms (a u32).
    let subscribes = u32::try_from(rooms.len()).unwrap_or(u32::MAX);
    tokio::spawn(session::run_read_only(
        shared.clone(),
        Box::new(grant),
        link,
        in_rx,
        out_tx,
        subscribes,
    ));
    // Only the request's history rooms: a `Last-Event-ID` room not asked for is ignored, here
    // too, and a room that keeps no history has no position to carry on.
    let positions = resume
        .into_iter()
        .filter(|(room, _)| {
            rooms
                .iter()
                .any(|r| r.as_str() == *room && shared.config.history(r).is_some())
        })
        .map(|(room, position)| (room.to_owned(), position))
        .collect();
    let events = Events {
        rooms,
        positions,
        decoder: FrameDecoder::new(usize::MAX >> 1),
        // Held for the life of the response: dropping the body (the client went away) ends
        // the session; the commands channel stays open until then.
        _alive: (gone.drop_guard(), in_tx, slot),
    };
    Sse::new(events.into_stream(out_rx))
        .keep_alive(
            KeepAlive::new()
                .interval(shared.config.timeouts.keep_alive)
                .text("ping"),
        )
        .into_response()
}

/// A request this adapter cannot serve (its rooms, its `Last-Event-ID`): 400, counted in
/// `quiver_sessions_refused_total{reason="bad_request"}` and logged as `session refused` within
/// the refusals' budget like every other refusal before a session (audit 134, F2: these went
/// nowhere, and `EventSource` gives up for good after a 400, so a broken page stayed
/// invisible). The message quotes what was refused escaped (`{:?}`), and is bounded.
fn bad_request(remote: &SocketAddr, message: impl Into<String>) -> Response {
    const LABEL: &str = "bad_request";
    let message = crate::text::bounded(message.into(), crate::text::MAX_MESSAGE);
    super::log_refusal(T, remote, &format_args!("{LABEL}: {message}"));
    super::count_refused(T, LABEL);
    problem(StatusCode::BAD_REQUEST, LABEL, None, message)
}

/// The `room` parameters: at least one, at most `max`, valid and distinct.
fn rooms(query: &str, max: usize) -> Result<Vec<RoomName>, String> {
    let mut rooms = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key != "room" {
            continue;
        }
        let room = RoomName::parse(&value).map_err(|e| format!("room {value:?}: {e}"))?;
        if rooms.contains(&room) {
            return Err(format!("room {room} is listed twice"));
        }
        rooms.push(room);
        if rooms.len() > max {
            return Err(format!("at most {max} rooms per request"));
        }
    }
    if rooms.is_empty() {
        return Err("at least one room parameter is required".into());
    }
    Ok(rooms)
}

/// Room in a reconnect's request head for what the browser sends then and not now (a cookie
/// set meanwhile, a longer fresh token in a new `EventSource`).
const RECONNECT_SLACK: usize = 4 * 1024;
/// The most one room adds to an event id besides its name: `=`, `:`, `,` and two u64 in
/// decimal.
const ID_PAIR_OVERHEAD: usize = 3 + 2 * 20;
/// The same pair as the `last_event_id` parameter: `=`, `:` and `,` percent-encoded (room
/// names and digits need no encoding).
const ENCODED_PAIR_OVERHEAD: usize = 3 * 3 + 2 * 20;

/// Refuses a request whose reconnect could be refused. Every event id lists the position of
/// every history room of the response (`Events::event_id`), and a reconnect sends it back as
/// `Last-Event-ID` beside the same URL, or, from a new `EventSource` after `token_expired`, as
/// `last_event_id` in the URL too (and then as `Last-Event-ID` again on that one's own
/// reconnect). With many long history room names that head outgrew [`MAX_REQUEST_HEAD`]: the
/// reconnect got 431 and `EventSource` gave up for good, losing the resume exactly when it was
/// needed (outside audit 105, F2; 200 rooms of 128 bytes at the default limits). So the
/// request that could lead there fails instead, at once and saying why: this request's head
/// (without any event id it carries) plus the longest id in both places and
/// [`RECONNECT_SLACK`] must fit.
fn reconnect_fits(query: &str, headers: &HeaderMap, history: &[&RoomName]) -> Result<(), String> {
    let query = query
        .split('&')
        .filter(|pair| !pair.starts_with("last_event_id="))
        .map(|pair| pair.len() + 1)
        .sum::<usize>();
    let headers: usize = headers
        .iter()
        .filter(|(name, _)| name.as_str() != "last-event-id")
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let names: usize = history.iter().map(|room| room.as_str().len()).sum();
    let id = names + history.len() * ID_PAIR_OVERHEAD;
    let encoded_id = names + history.len() * ENCODED_PAIR_OVERHEAD;
    let head = "GET /v1/sse? HTTP/1.1\r\n\r\n".len()
        + query
        + headers
        + "last-event-id: \r\n".len()
        + id
        + "&last_event_id=".len()
        + encoded_id
        + RECONNECT_SLACK;
    if head <= MAX_REQUEST_HEAD {
        return Ok(());
    }
    Err(format!(
        "too many history rooms for one response: their event id (up to {id} bytes) in a \
         reconnect's Last-Event-ID and last_event_id, beside this URL and these headers, could \
         make a request head of {head} bytes, over the {MAX_REQUEST_HEAD} the server reads \
         (the reconnect would get 431); ask for fewer history rooms, or rooms with shorter \
         names, per response"
    ))
}

/// The `last_event_id` query parameter, if given (at most once).
fn last_event_id_param(query: &str) -> Result<Option<String>, String> {
    let mut found = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == "last_event_id" {
            if found.is_some() {
                return Err("last_event_id is given twice".into());
            }
            found = Some(value.into_owned());
        }
    }
    Ok(found)
}

/// `ROOM=EPOCH:OFFSET` pairs joined by `,` (what this adapter writes as event ids).
fn parse_event_id(id: &str) -> Result<BTreeMap<&str, Position>, String> {
    let mut positions = BTreeMap::new();
    for pair in id.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("Last-Event-ID: {pair:?} is not ROOM=EPOCH:OFFSET");
        let (room, position) = pair.split_once('=').ok_or_else(bad)?;
        let (epoch, offset) = position.split_once(':').ok_or_else(bad)?;
        RoomName::parse(room).map_err(|_| bad())?;
        let position = Position {
            epoch: decimal_u64(epoch).ok_or_else(bad)?,
            offset: decimal_u64(offset).ok_or_else(bad)?,
        };
        positions.insert(room, position);
    }
    Ok(positions)
}

/// One SSE event and the bytes it is written as.
struct Text {
    event: SseEvent,
    /// Its length as axum writes it (`Text::new`).
    len: usize,
    /// A subscription's delivery (publication, `latest` value, presence event): its frame was
    /// counted in `quiver_delivery_bytes_total` when queued on the connection, and the event
    /// adds what its text takes beyond the frame, so that over SSE the series counts the bytes
    /// written, as on the other transports (audit 134, F3: the binary frames were counted, a
    /// quarter of what was written).
    delivery: bool,
}

impl Text {
    /// `event: NAME\n`, `data: DATA\n` (compact JSON has no line break: one line), `id: ID\n`
    /// when there is one, then the blank line: axum's `Event` layout.
    fn new(name: &'static str, data: String, id: Option<String>, delivery: bool) -> Self {
        let mut len = "event: \n".len() + name.len() + "data: \n".len() + data.len() + "\n".len();
        let mut event = SseEvent::default().event(name).data(data);
        if let Some(id) = id {
            len += "id: \n".len() + id.len();
            event = event.id(id);
        }
        Self {
            event,
            len,
            delivery,
        }
    }
}

/// Turns the session's outgoing frames into SSE events.
struct Events {
    rooms: Vec<RoomName>,
    /// The last position seen per history room: every publication's event id lists them all,
    /// so `Last-Event-ID` resumes every room at once.
    positions: BTreeMap<String, Position>,
    decoder: FrameDecoder,
    _alive: (DropGuard, queue::Sender<Inbound>, TcpSlot),
}

impl Events {
    fn into_stream(
        self,
        out: queue::Receiver<Bytes>,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        futures::stream::unfold(
            (self, out, std::collections::VecDeque::new()),
            |(mut this, mut out, mut ready)| async move {
                loop {
                    if let Some(event) = ready.pop_front() {
                        return Some((Ok(event), (this, out, ready)));
                    }
                    let bytes = out.recv().await?;
                    // hyper takes an event into its write buffer once it has room for it (a
                    // client that reads nothing stops making room): counted as written
                    // (`Receiver::progressed`). SSE has no replies for a drain to wait on.
                    out.progressed();
                    this.decoder.push(&bytes);
                    // What the text events of this chunk's deliveries add to their frames.
                    let mut extra = 0;
                    loop {
                        match this.decoder.next_frame() {
                            Ok(Some(body)) => {
                                if let Ok(frame) = decode_event(&body) {
                                    if let Some(text) = this.convert(frame.id, frame.event) {
                                        if text.delivery {
                                            let frame_len = LENGTH_PREFIX + body.len();
                                            extra += text.len.saturating_sub(frame_len) as u64;
                                        }
                                        ready.push_back(text.event);
                                    }
                                }
                            }
                            Ok(None) => {
                                if extra > 0 {
                                    crate::metrics::hot::delivery_bytes().increment(extra);
                                }
                                break;
                            }
                            // Frames are made by instances (and checked where they come from
                            // NATS: `broker::nats::is_room_event`); one that cannot be framed
                            // would leave the decoder stuck for good, the response silent but
                            // for its keep-alives. It ends instead: the reader comes back with
                            // its last event id.
                            Err(e) => {
                                tracing::warn!(error = %e, "an SSE response's frames cannot be read; ending it");
                                return None;
                            }
                        }
                    }
                }
            },
        )
    }

    fn room_of(&self, id: u32) -> Option<&str> {
        let index = id.checked_sub(FIRST_SUBSCRIBE_ID)? as usize;
        self.rooms.get(index).map(RoomName::as_str)
    }

    fn convert(&mut self, id: u32, event: Event) -> Option<Text> {
        let delivery = matches!(
            event,
            Event::Publication { .. }
                | Event::Latest { .. }
                | Event::Joined { .. }
                | Event::Left { .. }
        );
        let (name, data) = match event {
            Event::Welcome {
                session,
                user,
                tenant,
                expires_at,
                ..
            } => (
                "welcome",
                json!({"session": session, "user": user, "tenant": tenant, "expires_at": expires_at}),
            ),
            Event::Subscribed {
                room,
                position,
                recovery,
                ..
            } => {
                let (recovery, replayed) = match recovery {
                    Recovery::NotRequested => ("not_requested", 0),
                    Recovery::Recovered { replayed } => ("recovered", replayed),
                    Recovery::Failed => ("failed", 0),
                };
                // A history room is seen from here on, quiet or not: the next event id carries
                // it, so a reconnect resumes it. With a replay to come, its publications move
                // the position on instead (from the resume position), so an id sent between
                // this event and them never skips what they hold.
                let seen = match (position, replayed) {
                    (Some(position), 0) => {
                        self.positions.insert(room.clone(), position);
                        true
                    }
                    _ => false,
                };
                let data = json!({"room": room, "position": position_value(position), "recovery": recovery, "replayed": replayed});
                // The room's place goes into the event id at once: a response that ends before
                // the room's first publication still resumes it (the reconnect sends this id).
                let id = seen.then(|| self.event_id());
                return Some(Text::new("subscribed", data.to_string(), id, false));
            }
            Event::Error { code, message } => (
                "error",
                json!({"room": self.room_of(id), "code": code, "label": label(code), "message": message}),
            ),
            Event::Unsubscribed { room, code, reason } => (
                "unsubscribed",
                json!({"room": room, "code": code, "label": label(code), "reason": reason}),
            ),
            Event::Publication {
                room,
                position,
                payload,
            } => {
                let data = json!({
                    "room": room,
                    "position": position_value(position),
                    "payload": base64::engine::general_purpose::STANDARD.encode(&payload),
                });
                let id = position.map(|position| {
                    self.positions.insert(room, position);
                    self.event_id()
                });
                return Some(Text::new("publication", data.to_string(), id, true));
            }
            // `latest` rooms: the newest value, conflated server-side (PROTOCOL.md §10).
            Event::Latest {
                room,
                sequence,
                payload,
            } => (
                "latest",
                json!({
                    "room": room,
                    "sequence": sequence,
                    "payload": base64::engine::general_purpose::STANDARD.encode(&payload),
                }),
            ),
            Event::Joined { room, member } => (
                "joined",
                json!({"room": room, "user": member.user, "session": member.session}),
            ),
            Event::Left { room, member } => (
                "left",
                json!({"room": room, "user": member.user, "session": member.session}),
            ),
            Event::Goodbye {
                code,
                reason,
                reconnect,
            } => (
                "goodbye",
                json!({"code": code, "label": label(code), "reason": reason, "reconnect": reconnect}),
            ),
            // Replies to commands an SSE client cannot send.
            _ => return None,
        };
        Some(Text::new(name, data.to_string(), None, delivery))
    }

    fn event_id(&self) -> String {
        let pairs: Vec<String> = self
            .positions
            .iter()
            .map(|(room, p)| format!("{room}={}:{}", p.epoch, p.offset))
            .collect();
        pairs.join(",")
    }
}

fn label(code: u16) -> &'static str {
    ErrorCode::from_u16(code)
        .map(ErrorCode::label)
        .or_else(|| CloseCode::from_u16(code).map(CloseCode::label))
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip() {
        let ids = parse_event_id("chat.a=17:5,dash=3:0").unwrap();
        assert_eq!(
            ids["chat.a"],
            Position {
                epoch: 17,
                offset: 5
            }
        );
        assert_eq!(
            ids["dash"],
            Position {
                epoch: 3,
                offset: 0
            }
        );
        assert!(parse_event_id("chat.a=17").is_err());
        assert!(parse_event_id("chat.>=1:2").is_err());
        assert!(parse_event_id("a=x:1").is_err());
        assert!(parse_event_id("a=+1:2").is_err());
        assert!(parse_event_id("a=1:+2").is_err());
        assert!(parse_event_id("a=1:").is_err());
        assert!(parse_event_id("a=1: 2").is_err());
        assert!(parse_event_id("").unwrap().is_empty());
    }

    #[test]
    fn room_parameters_are_bounded_and_distinct() {
        assert_eq!(rooms("room=a&room=b.c&token=x", 4).unwrap().len(), 2);
        assert!(rooms("token=x", 4).is_err());
        assert!(rooms("room=a&room=a", 4).is_err());
        assert!(rooms("room=a&room=b&room=c", 2).is_err());
        assert!(rooms("room=a.*", 4).is_err());
    }
}
