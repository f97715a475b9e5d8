//! The WebTransport adapter: the accept loop, the checks on every CONNECT (path, origin,
//! capacity, token) before a session exists, and the streams of one session: the control stream
//! (read into [`Inbound`] items, written from the core's outgoing channel) and the refusal of
//! every other stream the client opens. Subscriptions open their own streams (`subscription/writer.rs`).
//!
//! Refusals are HTTP statuses: 404 for other paths, 429 when draining or full, 403 for origin and
//! token problems. Every stage before a session exists (QUIC handshake, HTTP/3 SETTINGS, the
//! CONNECT) runs under `timeouts.handshake`, and connections in those stages count towards
//! `limits.max_sessions`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quiver_proto::{CloseCode, FrameDecoder};
use tracing::{debug, info};
use wtransport::endpoint::{IncomingSession, SessionRequest};
use wtransport::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use super::{
    admit, check_origin, count_refused, credentials, queue, session_refused, Counted, Inbound,
    Peer, Pool, Refused, Transport,
};
use crate::server::Shared;
use crate::session::{self, Link, GOODBYE_GRACE};

const T: Transport = Transport::WebTransport;

/// Stream error code for streams the protocol does not use (PROTOCOL §2): H3_REQUEST_REJECTED.
const REFUSED_STREAM: u32 = 0x010b;
/// Handshakes in progress past which a connection from an unproven address gets a Retry.
const RETRY_ABOVE: usize = 256;

/// The control stream's send priority: above every namespace's (`config::MAX_NAMESPACE_PRIORITY`),
/// so replies, pongs and goodbyes are not stuck behind room traffic under congestion.
const CONTROL_PRIORITY: i32 = crate::config::MAX_NAMESPACE_PRIORITY + 1;

pub async fn accept_loop(
    shared: Arc<Shared>,
    endpoint: Endpoint<wtransport::endpoint::endpoint_side::Server>,
) {
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        admit_connection(&shared, incoming);
    }
    // Sessions say goodbye on shutdown; the drain (`Server::shutdown`) waits for them. Meanwhile
    // new CONNECTs still get an answer: 429 (the draining flag is set), so clients move on.
    loop {
        tokio::select! {
            _ = shared.drained.cancelled() => break,
            incoming = endpoint.accept() => admit_connection(&shared, incoming),
        }
    }
    // Every connection left gets its CONNECTION_CLOSE now; the wait only lets the drivers send
    // it (QUIC's draining period, 3 × PTO, may be longer than worth waiting for on exit).
    endpoint.close(VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(crate::server::ENDPOINT_CLOSE_WAIT, endpoint.wait_idle()).await;
    info!("webtransport endpoint closed");
}

fn admit_connection(shared: &Arc<Shared>, incoming: IncomingSession) {
    // A QUIC Initial's source address can be forged. An address not yet proven must prove it
    // with a Retry (stateless: one packet from the server, one round trip for the client)
    // before it is charged to its per-address limits, or while many handshakes are in
    // progress: forged packets then can neither use up a victim address's places nor fill
    // `max_sessions` beyond `RETRY_ABOVE` for longer than the handshake deadline.
    if !incoming.remote_address_validated()
        && (shared.address_limits.limits(incoming.remote_address().ip())
            || shared.receive_buffer.handshakes() >= RETRY_ABOVE)
    {
        metrics::counter!(crate::metrics::QUIC_RETRIES).increment(1);
        incoming.retry();
        return;
    }
    let Some(counted) = Counted::admit(shared, Pool::Quic) else {
        // Not even a handshake: a QUIC-level refusal costs one packet.
        refused_early(incoming.remote_address(), "capacity");
        incoming.refuse();
        return;
    };
    let Some(address) = shared.address_limits.admit(incoming.remote_address().ip()) else {
        refused_early(incoming.remote_address(), "address_limit");
        incoming.refuse();
        return;
    };
    // Counted from here: a burst of handshakes deepens the socket's receive buffer.
    let handshake = shared.receive_buffer.handshake();
    // Boxed: the task's captured values stay in its future for the session's life, and a
    // pending QUIC connection (its first packet, handshake state) is large; boxed, it is freed
    // when the handshake takes it.
    let incoming = Box::new(incoming);
    tokio::spawn(async move {
        handle(&counted.0, incoming, handshake).await;
        drop((counted, address));
    });
}

async fn handle(
    shared: &Arc<Shared>,
    incoming: Box<IncomingSession>,
    handshake: crate::udp_socket::Handshake,
) {
    // The handshake's futures are boxed, and freed when it ends: inline, they would size this
    // task (held for the whole session) by the handshake's largest stage, not the session's.
    let established = Box::pin(establish(shared, incoming)).await;
    drop(handshake);
    if let Some((conn, grant)) = established {
        serve(shared.clone(), conn, grant).await;
    }
}

/// A connection refused before its CONNECT was checked (capacity, address limits, a handshake
/// that failed or did not finish in time): counted, and logged within the refusals' budget like
/// every refusal (README, Metrics; outside bounds audit 4, F3: 100 handshake timeouts, no line).
fn refused_early(remote: std::net::SocketAddr, reason: &'static str) {
    super::log_refusal(T, &remote, &reason);
    count_refused(T, reason);
}

/// The handshake: QUIC and TLS, SETTINGS and CONNECT (deadline `timeouts.handshake`), then the
/// checks on path, origin, capacity and token. `None`: refused (the client has been told) or
/// failed.
async fn establish(
    shared: &Arc<Shared>,
    incoming: Box<IncomingSession>,
) -> Option<(Connection, Box<crate::auth::Grant>)> {
    // One deadline for the whole exchange, the answer included: writing the answer waits on
    // the client's stream credit and its acknowledgement, which a hostile client withholds.
    let deadline = tokio::time::Instant::now() + shared.config.timeouts.handshake;
    let remote = incoming.remote_address();
    // Dropping the pending request at the deadline closes its connection (vendor/README.md).
    let request = match tokio::time::timeout_at(deadline, *incoming).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            refused_early(remote, "handshake");
            return None;
        }
        Err(_) => {
            debug!("no CONNECT within the handshake deadline");
            refused_early(remote, "handshake_timeout");
            return None;
        }
    };
    let (path, query) = match request.path().split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.path(), None),
    };
    if path != quiver_proto::CONNECT_PATH {
        refuse(request, Refused::NotFound, deadline).await;
        return None;
    }
    if let Err(refused) = check_origin(shared, request.origin()) {
        refuse(request, refused, deadline).await;
        return None;
    }
    if let Err(refused) = admit(shared) {
        refuse(request, refused, deadline).await;
        return None;
    }
    let authorization = request
        .headers()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.as_str());
    let token = match credentials(authorization, query) {
        Ok(token) => token,
        Err(refused) => {
            refuse(request, refused, deadline).await;
            return None;
        }
    };
    match shared.authenticate(&token) {
        Ok(grant) => match tokio::time::timeout_at(deadline, request.accept()).await {
            Ok(Ok(conn)) => {
                // The session exists: the full window (the handshake had a small one).
                conn.quic_connection()
                    .set_receive_window(wtransport::quinn::VarInt::from_u32(
                        crate::server::CONNECTION_RECEIVE_WINDOW,
                    ));
                Some((conn, Box::new(grant)))
            }
            Ok(Err(e)) => {
                debug!(error = %e, "accept failed");
                None
            }
            Err(_) => {
                debug!("the 200 was not taken within the handshake deadline");
                refused_early(remote, "handshake_timeout");
                None
            }
        },
        Err(e) => {
            session_refused(T, &request.remote_address(), &e);
            answer_within(deadline, request.forbidden()).await;
            None
        }
    }
}

async fn refuse(request: SessionRequest, refused: Refused, deadline: tokio::time::Instant) {
    refused.log_and_count(T, &request.remote_address());
    let answer = async move {
        match refused {
            Refused::NotFound => request.not_found().await,
            Refused::Unavailable | Refused::Full => request.too_many_requests().await,
            Refused::Origin | Refused::TokenTooLarge => request.forbidden().await,
        }
    };
    answer_within(deadline, answer).await;
}

/// A refusal's answer, given up at the deadline: dropping it drops the request, which closes
/// the connection, so a client that takes no answer holds its place no longer than one that
/// sends no request.
async fn answer_within(
    deadline: tokio::time::Instant,
    answer: impl std::future::Future<Output = ()>,
) {
    if tokio::time::timeout_at(deadline, answer).await.is_err() {
        debug!("the refusal was not taken within the handshake deadline");
    }
}

/// One accepted session: the control stream's tasks around the session core.
async fn serve(shared: Arc<Shared>, conn: Connection, grant: Box<crate::auth::Grant>) {
    // What the reader takes ahead of the session (which it does while a command waits) is
    // bounded in bytes as well as in frames: 64 frames of 60 KB held 4 MB per session, where
    // PROTOCOL.md §5 says the stream's 256 KiB window (outside audit 100, F1).
    let (in_tx, in_rx) = queue::bounded_weighed(64, super::READ_AHEAD_BYTES, Inbound::weight);
    let (out_tx, out_rx) = super::out_queue(&shared.config.limits);
    let max_frame = shared.config.limits.max_frame as usize;
    let control = tokio::spawn(control(
        conn.clone(),
        in_tx,
        out_rx,
        max_frame,
        shared.config.timeouts.hello,
    ));
    let link = Link {
        transport: T,
        peer: Peer::Quic(conn.clone()),
        remote: conn.remote_address(),
    };
    let stopping = shared.shutdown.clone();
    let end = session::run(shared, grant, link, in_rx, out_tx).await;
    match &end.close {
        Some((code, reason)) => {
            // The control task writes what is queued (the goodbye last), finishes the stream
            // and waits (bounded) for the client to have it; then QUIC closes with the code.
            // Past the grace while the client keeps reading (`End::wait_for_reader`).
            // A drain waits for this session's slot: a client that reads nothing holds it for
            // CLOSE_GRACE then, as on WebSocket, even a drain begun during the close; so
            // does a refused session (its connection is not held for the whole close by a
            // client that is refused again and again): `End::cut_short`.
            tokio::select! {
                _ = end.wait_for_reader(control, GOODBYE_GRACE * 2) => {}
                () = end.cut_short(&stopping) => {}
            }
            conn.close(close_code(*code), reason.as_bytes());
        }
        None => {
            control.abort();
            // The client left (or closed its control stream, which is leaving): close the
            // whole connection cleanly rather than stop its HTTP/3 streams one by one.
            conn.close(VarInt::from_u32(0), b"");
        }
    }
    // What the path was like, for telling a slow network from a slow server.
    let path = conn.quic_connection().stats().path;
    crate::metrics::sample_quic_path(&path);
    // A refused session's only line is its budgeted `session refused` (README, Logs; outside
    // regression audit 10, F1: one line per refusal here, unbudgeted).
    if end.refused {
        debug!(
            reason = end.reason,
            transport = T.label(),
            "webtransport connection closed"
        );
    } else {
        info!(
            reason = end.reason,
            transport = T.label(),
            rtt_ms = path.rtt.as_secs_f64() * 1e3,
            sent_packets = path.sent_packets,
            lost_packets = path.lost_packets,
            congestion_events = path.congestion_events,
            "webtransport connection closed"
        );
    }
    // Only now does the session stop counting (a drain waits for it), once what a departed
    // client left running is done.
    end.release().await;
}

/// Why reading the control stream failed, as a closed-sessions `reason`.
fn read_error_reason(e: &wtransport::quinn::ReadError) -> &'static str {
    use wtransport::quinn::{ConnectionError as C, ReadError as R};
    match e {
        // The client reset its control stream, or closed its session or connection: leaving.
        R::Reset(_) | R::ConnectionLost(C::ApplicationClosed(_) | C::ConnectionClosed(_)) => {
            "client_closed"
        }
        R::ConnectionLost(C::TimedOut) => "idle_timeout",
        _ => "connection_lost",
    }
}

fn close_code(code: CloseCode) -> VarInt {
    VarInt::from_u32(u32::from(code.as_u16()))
}

/// Accepts the control stream (the client's first bidirectional stream), then reads it into
/// `inbound` and writes `out` to it. Ends when `out` is closed (after finishing the stream,
/// bounded) or the connection is gone.
async fn control(
    conn: Connection,
    inbound: queue::Sender<Inbound>,
    mut out: queue::Receiver<Bytes>,
    max_frame: usize,
    hello: Duration,
) {
    // The core's own Hello deadline ends the session (`hello_timeout`, told in the QUIC close);
    // this one only makes sure the task ends if the session somehow does not. Twice as long, so
    // it can never race the core's and turn that close into a silent one.
    let started = tokio::time::Instant::now();
    let deadline = started + hello * 2;
    // What the core queued before there was a stream to write it to: before a `Hello` the core
    // writes nothing but a goodbye, so this holds one frame.
    let mut early = Vec::new();
    // Set once the core has ended the session (its queue closed) before the stream came.
    let mut ended = false;
    let (send, recv) = loop {
        tokio::select! {
            streams = conn.accept_bi() => match streams {
                Ok(streams) => break streams,
                Err(_) => {
                    let _ = inbound.send(Inbound::Ended("connection_lost")).await;
                    return;
                }
            },
            // Unidirectional streams are refused at once, before the control stream as after
            // it (PROTOCOL §2): parked until then, each held its window (outside audit 100, F2).
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    recv.stop(VarInt::from_u32(REFUSED_STREAM));
                    debug!("refused a unidirectional stream");
                }
                Err(_) => {
                    let _ = inbound.send(Inbound::Ended("connection_lost")).await;
                    return;
                }
            },
            // Datagrams before the control stream cannot come after a `Hello`: read and
            // counted here, so none waits in quinn's buffer or leaves it uncounted.
            datagram = conn.receive_datagram() => if datagram.is_ok() {
                metrics::counter!(crate::metrics::DATAGRAMS_RECEIVED).increment(1);
                crate::metrics::datagram_dropped("before_hello");
            },
            // The session ended before the client opened the stream. Refused at once (a quota,
            // a drain), its goodbye waits for a client that opens the stream while the adapter's
            // close waits for this task (PROTOCOL §7: 2 s, 1 s for a refusal or in a drain:
            // taking it from the queue is no progress), and never past the Hello deadline:
            // past that there is nobody to read it, so end now and let the connection close
            // with the code at once.
            frame = out.recv(), if !ended => match frame {
                Some(frame) => early.push(frame),
                None if early.is_empty() || started.elapsed() >= hello => return,
                None => ended = true,
            },
            _ = tokio::time::sleep_until(started + hello), if ended => return,
            _ = tokio::time::sleep_until(deadline) => return,
        }
    };
    let reader = tokio::spawn(read_control(conn, recv, inbound, max_frame));
    write_control(send, early, out).await;
    reader.abort();
}

/// Writes queued frames to the control stream. Ends when every sender is gone, then finishes the
/// stream and waits (bounded) for the client to acknowledge it, so a goodbye frame written last
/// arrives before the connection closes.
async fn write_control(mut send: SendStream, early: Vec<Bytes>, mut rx: queue::Receiver<Bytes>) {
    send.set_priority(CONTROL_PRIORITY);
    // Before the finish, resolves only when the client stops the stream (STOP_SENDING) or the
    // connection is gone. Either way nothing more can be said: ending here ends the session at
    // once (the reader is aborted, which the core takes for the client leaving), not at the
    // next write.
    let mut stopped = std::pin::pin!(send.quic_stream().stopped());
    for frame in early {
        if write_frame(&mut send, &frame, &rx).await.is_err() {
            return;
        }
    }
    loop {
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            _ = &mut stopped => return,
        };
        let Some(frame) = frame else { break };
        if write_frame(&mut send, &frame, &rx).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(GOODBYE_GRACE, send.finish()).await;
}

/// Writes one frame, telling `rx` of every part the stream takes, the last included: a client
/// that reads slowly but steadily moves the queue's progress even while one large frame (up to
/// `max_frame`) waits for its flow-control credit, which is what a drain asks of a client
/// before it waits for it (`Session::reply`); a frame taken and not written is none.
async fn write_frame(
    send: &mut SendStream,
    frame: &[u8],
    rx: &queue::Receiver<Bytes>,
) -> Result<(), wtransport::error::StreamWriteError> {
    let mut written = 0;
    while written < frame.len() {
        written += send.write(&frame[written..]).await?;
        rx.progressed();
    }
    Ok(())
}

/// Reads the control stream into [`Inbound`] items, and refuses every other stream the client
/// opens (STOP_SENDING and RESET at once, so no data on them is kept).
async fn read_control(
    conn: Connection,
    mut recv: RecvStream,
    tx: queue::Sender<Inbound>,
    max_frame: usize,
) {
    let mut decoder = FrameDecoder::new(max_frame);
    loop {
        // Chunks as quinn holds them: no read buffer per session (idle sessions are most
        // sessions), and no copy before the decoder's own.
        let chunk = tokio::select! {
            read = recv.quic_stream_mut().read_chunk(usize::MAX, true) => read,
            side = next_side(&conn) => {
                if let Some(ended) = serve_side(&conn, &tx, side) {
                    let _ = tx.send(Inbound::Ended(ended)).await;
                    return;
                }
                continue;
            }
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                // FIN on the control stream: the client is leaving (PROTOCOL §7). The
                // datagrams it sent before the FIN are carried out as its commands are.
                take_datagrams_left(&conn, &tx).await;
                let _ = tx.send(Inbound::Ended("client_closed")).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Inbound::Ended(read_error_reason(&e))).await;
                return;
            }
        };
        decoder.push(&chunk);
        while let Some(item) = Inbound::next(&mut decoder) {
            let stop = matches!(item, Inbound::Malformed(_));
            // The queue is bounded: a client that floods commands waits on QUIC flow control.
            // Meanwhile its datagrams are still taken (and dropped as `busy`, as a full queue
            // drops them) and its extra streams still refused: left in quinn's buffers, they
            // were lost uncounted or held (outside audit 100, F3).
            let place = loop {
                tokio::select! {
                    place = tx.reserve() => break place,
                    side = next_side(&conn) => {
                        if let Some(ended) = serve_side(&conn, &tx, side) {
                            // The command read before the connection went is still the
                            // session's to carry out (PROTOCOL §3), then the end.
                            let _ = tx.send(item).await;
                            let _ = tx.send(Inbound::Ended(ended)).await;
                            return;
                        }
                    }
                }
            };
            match place {
                Ok(place) => place.send(item),
                Err(_) => return,
            }
            if stop {
                return;
            }
        }
    }
}

/// How long the datagrams a leaving client sent before its FIN may keep coming: the FIN
/// overtakes them on their way through the connection's driver (one at a time: measured, a
/// burst of 200 sent right before the FIN was read 14 to 28 deep when the session ended at
/// once), and every one already received is read within this of the one before it.
const DATAGRAMS_AFTER_FIN_QUIET: Duration = Duration::from_millis(10);
/// At most this long in all, whatever keeps coming: the session's end is not put off by a
/// client that goes on sending datagrams after its FIN.
const DATAGRAMS_AFTER_FIN_MAX: Duration = Duration::from_millis(250);

/// Takes the datagrams the connection still holds after the client's FIN (PROTOCOL §7: what
/// the client sent before leaving is carried out), until none comes for
/// [`DATAGRAMS_AFTER_FIN_QUIET`] or [`DATAGRAMS_AFTER_FIN_MAX`] has passed.
async fn take_datagrams_left(conn: &Connection, tx: &queue::Sender<Inbound>) {
    let until = tokio::time::Instant::now() + DATAGRAMS_AFTER_FIN_MAX;
    loop {
        let quiet = (tokio::time::Instant::now() + DATAGRAMS_AFTER_FIN_QUIET).min(until);
        tokio::select! {
            datagram = conn.receive_datagram() => {
                if serve_side(conn, tx, Side::Datagram(datagram)).is_some() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(quiet) => return,
        }
    }
}

/// What a session's connection brings besides its control stream.
enum Side {
    Bidi(Result<(SendStream, RecvStream), wtransport::error::ConnectionError>),
    Datagram(Result<wtransport::datagram::Datagram, wtransport::error::ConnectionError>),
    Uni(Result<RecvStream, wtransport::error::ConnectionError>),
}

/// The next of the connection's side traffic. Each arm is cancel-safe: it is raced against the
/// control stream's read and the inbound queue's room.
async fn next_side(conn: &Connection) -> Side {
    tokio::select! {
        bidi = conn.accept_bi() => Side::Bidi(bidi),
        datagram = conn.receive_datagram() => Side::Datagram(datagram),
        uni = conn.accept_uni() => Side::Uni(uni),
    }
}

/// Serves one piece of side traffic: extra streams are refused, datagrams (publications to
/// `latest` rooms) are queued if there is room and dropped (counted) if not, as the network
/// might have: a datagram never waits for the session. `Some(reason)` once the connection is
/// gone.
fn serve_side(conn: &Connection, tx: &queue::Sender<Inbound>, side: Side) -> Option<&'static str> {
    match side {
        Side::Bidi(Ok((mut send, recv))) => {
            recv.stop(VarInt::from_u32(REFUSED_STREAM));
            let _ = send.reset(VarInt::from_u32(REFUSED_STREAM));
            debug!("refused an extra bidirectional stream");
        }
        // Each fails only once the connection is gone: ended, not retried (which would spin).
        Side::Bidi(Err(e)) | Side::Datagram(Err(e)) | Side::Uni(Err(e)) => {
            return Some(super::quic_close_reason(&e));
        }
        Side::Datagram(Ok(datagram)) => {
            metrics::counter!(crate::metrics::DATAGRAMS_RECEIVED).increment(1);
            // One naming another session names none (a connection carries one): it goes to
            // the session empty, so it is metered as any datagram and dropped as `malformed`
            // (outside audit 41, F2; the patched wtransport hands it over, where the crates.io
            // release discards it uncounted).
            let payload = if datagram.session_id() == conn.session_id() {
                datagram.payload()
            } else {
                Bytes::new()
            };
            let item = Inbound::Datagram(Box::new((payload, std::time::Instant::now())));
            // A session that has ended (its goodbye still being written) is no busy one
            // (outside audit 117, F5).
            match tx.try_send(item) {
                Ok(()) => {}
                Err(super::queue::TrySendError::Full(_)) => {
                    crate::metrics::datagram_dropped("busy")
                }
                Err(super::queue::TrySendError::Closed(_)) => {
                    crate::metrics::datagram_dropped("session_ended")
                }
            }
        }
        Side::Uni(Ok(recv)) => {
            recv.stop(VarInt::from_u32(REFUSED_STREAM));
            debug!("refused a unidirectional stream");
        }
    }
    None
}
