//! The TCP listener's connections (plain HTTP in development, HTTPS with a real certificate):
//! the WebSocket and SSE fallbacks, health, metrics and the API all arrive here.
//!
//! Every connection is bounded from its first byte, as QUIC connections are
//! (`transport::webtransport`):
//! - it counts towards `limits.max_sessions` (TCP connections alone, in
//!   `Shared::tcp_connections`, apart from QUIC ones; TCP may go [`HEADROOM`] over it, and
//!   never past what the process's descriptor limit leaves, [`ceiling`]) and
//!   towards its address's `quotas.per_address` limits
//!   from `accept` on; over either it is
//!   refused: over TLS closed at once, on plain HTTP answered `429` once its request's head has
//!   arrived (at most [`REFUSING`] such answers at a time, each within [`REFUSE_WITHIN`]; past
//!   that, closed at once);
//! - its TLS handshake, and then each request's headers, must arrive within
//!   `timeouts.handshake` (an idle keep-alive connection waits for the next request's headers
//!   under the same deadline), so a peer that connects and says nothing, or trickles headers,
//!   holds its socket only that long;
//! - a write to it that makes no progress for `timeouts.handshake` (the peer reads nothing)
//!   ends it, whatever it carries;
//! - what it wrote and the peer has not acknowledged for `timeouts.idle` ends it (the peer
//!   vanished without a FIN or a reset: `TCP_USER_TIMEOUT`), even when no write waits;
//! - a WebSocket or SSE session it carries keeps its place (a [`TcpSlot`] clone) for the
//!   session's life, so the connection and its session count once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::log_budget::{LogBudget, Summary};

use crate::read_budget::{Budgeted, ReadSide};
use crate::server::Shared;
use crate::transport::{Counted, Pool};
use crate::write_stall::{Unacked, WriteStall};

/// One TCP connection's place in the server's and its address's counts: held by the connection
/// and by the session it carries, released when both are gone. It also counts the bytes read
/// from the connection, for a WebSocket session's framing budget (`read_budget.rs`).
#[derive(Clone)]
pub struct TcpSlot(Arc<(Counted, crate::quota::AddressGuard, ReadSide)>);

impl TcpSlot {
    pub fn read_side(&self) -> &ReadSide {
        &self.0 .2
    }
}

/// TCP connections taken beyond `max_sessions`, so health checks, scrapes and the API still get
/// in while sessions fill the server (a WebSocket or SSE session over `max_sessions` is still
/// refused, by its request's handler).
const HEADROOM: usize = 64;
/// The most a request's head (request line and headers) may take: room for a 4 KiB token in
/// the query and another in `Authorization`, cookies and the usual headers, as nginx allows
/// (4 x 8 KiB by default).
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Refused plain-HTTP connections answered at once; more are closed without an answer.
const REFUSING: usize = 64;
/// How long a refused connection's request head may take before it is answered (or dropped).
const REFUSE_WITHIN: Duration = Duration::from_secs(1);
/// The most of a refused request that is read (its head; a longer one is not waited for).
const REFUSED_HEAD: usize = 8 * 1024;

/// Descriptors kept for what is not a TCP connection of a listener: refused connections being
/// answered ([`REFUSING`]), the UDP socket, NATS, key-set fetches, files, the runtime's own.
/// Connections to an HTTP backend are added to it ([`reserved`]).
const RESERVED_DESCRIPTORS: u64 = 256;

/// What [`ceiling`] keeps for everything but the listeners' TCP connections: with an HTTP
/// backend (`rpc.url`, no NATS), its requests in flight and the idle connections kept per
/// tenant (`rpc::http`) too.
fn reserved(config: &crate::Config) -> u64 {
    let rpc = &config.rpc;
    let backend = if rpc.url.is_some() && config.nats.is_none() {
        rpc.http_max_in_flight.saturating_add(
            crate::rpc::http::TENANT_POOLS.saturating_mul(rpc.http_idle_connections),
        )
    } else {
        0
    };
    RESERVED_DESCRIPTORS.saturating_add(u64::try_from(backend).unwrap_or(u64::MAX))
}

/// How many TCP connections the listeners take at once: `max_sessions` plus [`HEADROOM`], or
/// fewer when the process's descriptor limit (its soft `RLIMIT_NOFILE`, less [`reserved`])
/// would run out first.
/// A process out of descriptors cannot accept at all, not even to refuse: health checks and
/// the API hung while idle connections held every descriptor (outside audit 27: 1,024
/// descriptors against the default 20,000 sessions). Below the limit a connection over the
/// ceiling is refused as one over `max_sessions` is. The second value is the descriptor limit
/// when it is what sets the ceiling.
pub fn ceiling(config: &crate::Config) -> (usize, Option<u64>) {
    let wanted = config.limits.max_sessions.saturating_add(HEADROOM);
    let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) else {
        return (wanted, None);
    };
    let room = usize::try_from(soft.saturating_sub(reserved(config))).unwrap_or(usize::MAX);
    if room >= wanted {
        (wanted, None)
    } else {
        // A limit below the reserve still leaves a quarter of it to TCP (at least one), so
        // the listener answers and refuses rather than runs out (outside audit 31: a floor of
        // 64 connections under `ulimit -n 60` ran out of descriptors again).
        let quarter = usize::try_from(soft / 4).unwrap_or(usize::MAX);
        (room.max(quarter.min(wanted)).max(1), Some(soft))
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until shutdown and the drain after it.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
) {
    let refusing = Arc::new(Semaphore::new(REFUSING));
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors (the process's, or the system's) the connection stays
                    // in the backlog and the listener ready: without a pause this loop spins a
                    // core until a descriptor frees (outside audit 27).
                    if ACCEPT_FAILURES.admit_summarised() {
                        warn!(error = %e, "accepting a TCP connection failed; pausing the listener briefly");
                    }
                    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "listener" => listener_name(&tls), "reason" => "accept_failed")
                        .increment(1);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            _ = crate::http::drained(&shared) => break,
        };
        let slot = match admit(&shared, remote) {
            Ok(slot) => slot,
            Err(label) => {
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "listener" => listener_name(&tls), "reason" => label)
                    .increment(1);
                if tls.is_none() {
                    if let Ok(permit) = refusing.clone().try_acquire_owned() {
                        tokio::spawn(refuse(tcp, label, permit));
                    }
                }
                continue;
            }
        };
        // Small frames must not wait for the previous one's ACK (Nagle): bench/ measured p99 at
        // 100k deliveries/s over WebSocket halve with it.
        let _ = tcp.set_nodelay(true);
        unsent_at_most(&tcp);
        unacknowledged_at_most(&tcp, shared.config.timeouts.idle);
        tokio::spawn(connection(
            shared.clone(),
            tcp,
            remote,
            tls.clone(),
            app.clone(),
            slot,
        ));
    }
}

fn listener_name(tls: &Option<TlsAcceptor>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// How long the listener waits after a failed `accept`.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// Failed accepts logged: one a second at most, a summary of the rest.
static ACCEPT_FAILURES: LogBudget = LogBudget::summarised(
    1,
    Summary::Warn("more TCP accepts failed than logged (quiver_connections_refused_total, reason accept_failed, counts all)"),
);

/// Counts a new connection, or says why not (the refusal's label: server at capacity, or its
/// address at its limits).
fn admit(shared: &Arc<Shared>, remote: SocketAddr) -> Result<TcpSlot, &'static str> {
    let Some(counted) = Counted::admit(shared, Pool::Tcp) else {
        debug!(%remote, "TCP connection refused: server at max_sessions");
        return Err("unavailable");
    };
    let Some(address) = shared.address_limits.admit(remote.ip()) else {
        debug!(%remote, "TCP connection refused: address over its limits");
        return Err("address_limit");
    };
    Ok(TcpSlot(Arc::new((counted, address, ReadSide::default()))))
}

/// Answers a refused plain-HTTP connection `429` after its request's head (an HTTP client
/// takes no answer before its request), all within [`REFUSE_WITHIN`], then closes it.
async fn refuse(mut tcp: TcpStream, label: &'static str, _permit: OwnedSemaphorePermit) {
    let answer = async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REFUSED_HEAD {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!(
            r#"{{"code":null,"label":"{label}","message":"too many connections; retry later"}}"#
        );
        let response = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    };
    let _ = tokio::time::timeout(REFUSE_WITHIN, answer).await;
}

async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    slot: TcpSlot,
) {
    let deadline = shared.config.timeouts.handshake;
    // Read before TLS takes the socket: the stream that wraps it keeps it open while read.
    let unacked = Unacked::of(&tcp);
    slot.read_side().watch(&tcp);
    let listener = listener_name(&tls);
    match tls {
        None => http(tcp, remote, app, slot, deadline, unacked, listener).await,
        Some(tls) => match tokio::time::timeout(deadline, tls.accept(tcp)).await {
            Ok(Ok(stream)) => http(stream, remote, app, slot, deadline, unacked, listener).await,
            Ok(Err(e)) => {
                tls_refused("tls_handshake");
                debug!(%remote, error = %e, "TLS handshake failed")
            }
            Err(_) => {
                tls_refused("tls_handshake_timeout");
                debug!(%remote, "TLS handshake timed out")
            }
        },
    }
}

fn tls_refused(reason: &'static str) {
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "listener" => "https", "reason" => reason)
        .increment(1);
}

/// What the kernel may hold of a connection's writes not yet sent (`TCP_NOTSENT_LOWAT`): a
/// write waits past it. Without it the send buffer grows to megabytes and a writer blocked on a
/// slow reader was woken only once half of that had drained: a WebSocket client reading
/// steadily at tens of KB/s met the write-stall deadline (meant for peers that read nothing)
/// and lost its connection instead of its slow room (outside audit). With it a reader that
/// makes progress wakes the writer every 32 KiB, and the kernel holds less of a room's
/// backlog, the bounded queues the rest. A reader too slow to drain one write below half the
/// mark within the write-stall deadline is still making progress: `write_stall.rs` counts
/// acknowledged bytes.
const UNSENT_AT_MOST: u32 = 64 * 1024;

fn unsent_at_most(tcp: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(UNSENT_AT_MOST) {
        debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, UNSENT_AT_MOST);
}

/// About when Linux gives up a connection whose data goes unacknowledged, by default
/// (`tcp_retries2` = 15: some 924 s).
const KERNEL_GIVES_UP: Duration = Duration::from_secs(15 * 60);

/// How long what the server wrote may stay unacknowledged before the kernel gives the
/// connection up (`TCP_USER_TIMEOUT`): `timeouts.idle`, the bound on a silent peer everywhere
/// else. Without it a peer that vanished without a FIN or a reset (a laptop closed, a NAT
/// mapping expired, a mobile handover) was found gone only when the kernel's retransmissions
/// ran out, about 15 minutes with Linux's default `tcp_retries2`: an SSE reader sends nothing
/// to time out on, and the keep-alive comments fit the send buffer, so no write ever waited
/// and the write-stall deadline never started. Its session meanwhile held its places in
/// `max_sessions` and `quotas.per_address`, its tenant's session quota (the user's own
/// reconnect refused `over_quota`), and its presence in every room (outside audit 105, F1).
/// With it the first keep-alive written after the peer vanished fails `idle` later: an SSE
/// session ends within `keep_alive` + `idle` (PROTOCOL.md §9.3). A WebSocket session already
/// ends after `idle` without a word from the client, so there it changes little (a connection
/// whose way to the client alone is broken now ends too).
///
/// Slow readers keep the rules of `write_stall.rs`: the timer counts from the oldest byte not
/// acknowledged and starts again with every acknowledgement, so a reader that reads keeps it
/// from firing. A reader that reads nothing shuts its receive window, and Linux applies the
/// same bound to what a shut window keeps unsent (tcp(7): "buffered data may remain
/// untransmitted (due to zero window size)"): a connection whose window stays shut for `idle`
/// ends, a peer that the write-stall deadline (`timeouts.handshake`) ends first as soon as a
/// write waits on it.
///
/// Never longer than [`KERNEL_GIVES_UP`]: the option replaces the kernel's own rule rather than
/// shortening it, so an `idle` of an hour would have kept a vanished peer an hour (review 107,
/// F3).
fn unacknowledged_at_most(tcp: &tokio::net::TcpStream, idle: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) =
        socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(idle.min(KERNEL_GIVES_UP)))
    {
        debug!(error = %e, "TCP_USER_TIMEOUT not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, idle);
}

/// Lets the runtime's other tasks run before each request. hyper serves a connection's
/// pipelined requests one after another within one poll, until tokio's budget (128 socket
/// operations) makes it yield: a few connections pipelining requests that answer at once held
/// the worker threads, and every other client waited (outside audit: two anonymous
/// connections pipelining `GET /api/v1/openapi.json` took others' p50 from 0.7 to 70 ms). One
/// request per turn: a connection gets a share of the runtime like any task.
async fn take_turns(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    tokio::task::yield_now().await;
    next.run(request).await
}

/// HTTP/1.1 on one connection, upgrades (WebSocket) included.
async fn http<S>(
    io: S,
    remote: SocketAddr,
    app: Router,
    slot: TcpSlot,
    deadline: std::time::Duration,
    unacked: Unacked,
    listener: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Counts what is read, for a WebSocket session's framing budget (`read_budget.rs`).
    let io = Budgeted::new(io, slot.clone());
    // Set once a request head has been read: a header deadline met after that is an idle
    // keep-alive connection closed, not a refusal. The outermost layer, so that it sees every
    // request (an extension set by an outer layer would not be there yet: outside audit 62
    // found idle keep-alive connections counted).
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = seen.clone();
    let app = app
        .layer(axum::Extension(ConnectInfo(remote)))
        .layer(axum::Extension(slot))
        .layer(axum::middleware::from_fn(take_turns))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                next.run(request)
            },
        ));
    let service = TowerToHyperService::new(app);
    // A peer that stops reading would otherwise hold the connection (and its place) for as
    // long as a write waits: a response larger than the socket's buffers, pipelined requests'
    // answers, an SSE stream, a WebSocket session. A write that makes no progress (no byte
    // acknowledged) for the deadline fails, and the connection ends (`write_stall.rs`).
    let io = Box::pin(WriteStall::new(io, deadline, unacked));
    // hyper's own HTTP/1 connection, not hyper-util's `auto` one: `auto` first waits for bytes
    // to tell the HTTP version, with no deadline, so a silent peer would never meet the
    // header deadline.
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(deadline)
        // A request head past this is answered 431 and the connection closed: hyper's default
        // (~400 KB) let every connection, before any token, hold half a megabyte for the
        // header deadline (an outside audit: 2,000 connections, +1.2 GB).
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        // A connection that never completed a request head within the deadline (silent, or a
        // slowloris) is refused like a QUIC one that never sent its CONNECT: counted (outside
        // audit 57, F4: 423 such connections left no trace).
        if e.is_timeout() && !seen.load(std::sync::atomic::Ordering::Relaxed) {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "listener" => listener, "reason" => "request_timeout")
                .increment(1);
        }
        debug!(%remote, error = %e, "http connection ended");
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    /// The bound on unacknowledged data is `idle`, and never past the kernel's own.
    #[tokio::test]
    async fn unacknowledged_data_is_bounded_by_idle_within_the_kernels_bound() -> std::io::Result<()>
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let bound = |idle| {
            unacknowledged_at_most(&client, idle);
            socket2::SockRef::from(&client).tcp_user_timeout()
        };
        assert_eq!(
            bound(Duration::from_secs(30))?,
            Some(Duration::from_secs(30))
        );
        assert_eq!(bound(Duration::from_secs(3600))?, Some(KERNEL_GIVES_UP));
        Ok(())
    }
}
