//! [`ClientConfig`]: where to connect, over which transport, how to authenticate, whom to trust,
//! how to retry, how fast to notice a dead server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use quiver_proto::CONNECT_PATH;
use url::Url;
use wtransport::tls::rustls;

use crate::backoff::Backoff;
use crate::error::ClientError;

/// Supplies a JWT. Called before every connect attempt and ahead of the token's expiry (for a
/// `Refresh`), so it should return a token that is fresh enough.
pub type TokenProvider = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// A [`TokenProvider`] that always returns the same token (fine for tests and for tokens that
/// outlive the process; once it expires the server closes the session with `token_expired`, the
/// reconnect with it is refused the same way, and the client then closes for good:
/// [`crate::Client::close_reason`] is 3002, subscriptions end with it. That takes a reconnect
/// over WebSocket, where the refusal says why: `Transport::WebTransport` alone sees only a
/// refused CONNECT, and goes on trying with backoff).
pub fn token_fixed(token: impl Into<String>) -> TokenProvider {
    let token: String = token.into();
    Arc::new(move || futures::future::ready(Ok(token.clone())).boxed())
}

/// A [`TokenProvider`] from an async closure, e.g.
/// `token_fn(|| async { fetch_token().await.map_err(|e| e.to_string()) })`.
pub fn token_fn<F, Fut>(f: F) -> TokenProvider
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    Arc::new(move || f().boxed())
}

/// How the server's certificate is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The platform's root certificates (publicly trusted servers).
    System,
    /// Pinned SHA-256 hashes of the server certificate (as printed by `quiver serve` / `quiver
    /// cert`); the W3C `serverCertificateHashes` rules apply: ECDSA P-256, validity at most 14
    /// days. See [`parse_cert_hash`].
    CertHashes(Vec<[u8; 32]>),
    /// Trust the certificates of this PEM file as roots (a private CA, or the server's own
    /// certificate).
    CaFile(PathBuf),
}

/// Which transport a [`crate::Client`] uses (PROTOCOL.md section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebTransport (HTTP/3 over QUIC, UDP) at [`ClientConfig::urls`]: one stream per room.
    WebTransport,
    /// WebSocket (TCP) at [`ClientConfig::ws_urls`]: every room on the one socket.
    WebSocket,
    /// WebTransport first; WebSocket when WebTransport fails (a refused or failed handshake, or
    /// no session within [`ClientConfig::webtransport_timeout`]: blocked UDP is silent, not
    /// refused). A WebTransport failure followed by a working WebSocket is remembered for
    /// [`ClientConfig::webtransport_retry`] (5 minutes): reconnects within it go straight to
    /// WebSocket, the first one after it tries WebTransport again (a server restarting during
    /// an attempt fails it too, not only blocked UDP). Without `ws_urls` this is
    /// the same as [`Transport::WebTransport`], without `urls` the same as
    /// [`Transport::WebSocket`].
    Auto,
}

impl Transport {
    /// The name used on the command line and in logs: `webtransport`, `websocket`, `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
            Transport::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "webtransport" | "wt" => Ok(Transport::WebTransport),
            "websocket" | "ws" => Ok(Transport::WebSocket),
            "auto" => Ok(Transport::Auto),
            other => Err(format!(
                "unknown transport {other:?} (webtransport, websocket or auto)"
            )),
        }
    }
}

/// Dead-server detection: while nothing at all arrives from the server for `interval`, the
/// client sends a `Ping`; if still nothing has arrived `timeout` after it, the server (or the
/// path to it) is declared dead, the connection is dropped and the client reconnects. Worst
/// case, a dead server is noticed `interval + timeout` after the last thing it sent (2.5 s with
/// the defaults, and what a session receiving steady traffic sees: 2.50 s measured after a
/// SIGSTOP or kill -9; an idle one whose `Ping` is already due notices sooner, 1.5 s
/// measured).
///
/// "Anything" includes the transport's own answers, which a live server's network stack sends
/// even while its session is busy (a command waiting on the broker holds up the `Pong`): on
/// WebTransport any QUIC packet (the acknowledgement of the `Ping` itself), on WebSocket a
/// WebSocket pong (a WebSocket ping goes out with every heartbeat `Ping`). So a crashed, frozen
/// or unreachable server is noticed; a slow one is not mistaken for dead. A hung one (its
/// machine answers, its session does not) is noticed when a `Ping` stays unanswered for
/// `unanswered` (15 s by default).
///
/// Cost: while the server is sending anyway (publications, replies), one `Ping` every half
/// `unanswered` (7.5 s by default), so a session that answers nothing while its rooms still
/// deliver is noticed too. On an otherwise
/// silent session, one `Ping` and one `Pong` per `interval`: with the defaults, measured on
/// loopback, 3 UDP datagrams per second per idle session on WebTransport and 5 TCP segments
/// on WebSocket (the WebSocket ping and its pong travel separately), both directions and all
/// acknowledgements included. Fewer with a longer `interval`, at a slower detection. Each `Ping` counts
/// against the session's command rate (1 of `commands_per_second`, 200 by default).
///
/// This is the client's own check and independent of the server's idle timeout for dead
/// clients (30 s). Use `None` to rely on the QUIC idle timeout ([`ClientConfig::idle_timeout`])
/// alone, which on WebSocket means a dead server may go unnoticed until TCP gives up. Each
/// duration is taken within 1 ms and 365 days (`Duration::MAX` is taken as 365 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Silence after which a `Ping` is sent (default 1 s).
    pub interval: Duration,
    /// How long after that `Ping` something must have arrived (default 1.5 s).
    pub timeout: Duration,
    /// How long a `Ping` may go unanswered while packets still arrive (default 15 s): the
    /// server's machine answers (its transport acknowledges, a WebSocket layer pongs) but its
    /// session does not, a hung server. Longer than a `Ping` can wait behind the session's own
    /// commands (PROTOCOL.md §5: one held behind one that waits, each up to a broker stall's
    /// 3 s or a hook's timeout, 2 s by default).
    pub unanswered: Duration,
}

/// The longest [`Heartbeat`] duration taken; a longer one is taken as this (it never comes
/// anyway). Added to an `Instant`, `Duration::MAX` (someone "disabling" the heartbeat instead of
/// passing `None`) panicked inside `connect()` or the connection task (outside audit 115, F12).
pub(crate) const HEARTBEAT_CEILING: Duration = Duration::from_secs(365 * 86_400);

impl Heartbeat {
    /// Each duration within 1 ms ..= [`HEARTBEAT_CEILING`]: what the connection runs with.
    pub(crate) fn bounded(self) -> Self {
        let bound = |d: Duration| d.clamp(Duration::from_millis(1), HEARTBEAT_CEILING);
        Heartbeat {
            interval: bound(self.interval),
            timeout: bound(self.timeout),
            unanswered: bound(self.unanswered),
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(1500),
            unanswered: Duration::from_secs(15),
        }
    }
}

/// Configuration for [`crate::Client::connect`]. Build it with [`ClientConfig::new`] and adjust
/// the public fields.
#[derive(Clone)]
pub struct ClientConfig {
    /// Server URLs, e.g. `https://localhost:4433/v1`. With several, each reconnect attempt moves
    /// on to the next one. A URL without a path (or with `/`) gets `/v1` ([`quiver_proto::CONNECT_PATH`]); any existing
    /// `token` query parameter is replaced.
    pub urls: Vec<String>,
    /// WebSocket URLs, e.g. `ws://127.0.0.1:8080/v1/ws` (development) or
    /// `wss://example.com/v1/ws`. The WebSocket endpoint lives on the server's HTTP (TCP) port,
    /// which is why these are separate from [`ClientConfig::urls`]. A URL without a path (or
    /// with `/`) gets `/v1/ws`. The token travels in an `Authorization: Bearer` header. Used by
    /// [`Transport::WebSocket`] and as the fallback of [`Transport::Auto`]; with several, they
    /// rotate like `urls`. Default: none.
    pub ws_urls: Vec<String>,
    /// Which transport to use. Default [`Transport::Auto`] (which needs `ws_urls` to fall back).
    pub transport: Transport,
    /// With [`Transport::Auto`]: how long a WebTransport attempt may take before the client
    /// falls back to WebSocket (default 2.5 s).
    pub webtransport_timeout: Duration,
    /// With [`Transport::Auto`]: how long a WebTransport failure followed by a working
    /// WebSocket is remembered (default 5 min). Reconnects within it go straight to WebSocket;
    /// the first one after it tries WebTransport again, so a client that fell back because its
    /// server was restarting during the attempt, not because UDP is blocked, gets its streams
    /// and datagrams back (it stayed on WebSocket for its whole life before). A session keeps
    /// its transport: the change comes at a reconnect.
    pub webtransport_retry: Duration,
    /// Called on every connect attempt and to refresh the token ahead of expiry. Over
    /// WebSocket the token travels in the upgrade's `Authorization` header, which
    /// `tungstenite` logs at TRACE (as it does each message, a `Refresh`'s token included):
    /// cap `tungstenite` and `tokio_tungstenite` below TRACE in the application's log filter,
    /// as the `quiver` CLI does (README, "Logging").
    pub token: TokenProvider,
    /// How to verify the server certificate. Default [`Trust::System`].
    pub trust: Trust,
    /// Delay between reconnect attempts. Default 100 ms doubling up to 5 s, full jitter.
    pub backoff: Backoff,
    /// Publishes that may be queued in the client, not yet written to the network (default
    /// 1024). While connected a publish waits for room; while disconnected it fails with
    /// [`ClientError::BufferFull`] when the buffer is full. Buffered publishes are sent in order
    /// after the next `Welcome`. One bound across reconnects: a publish the connection never
    /// wrote keeps its place while it waits for the next session.
    pub publish_buffer: usize,
    /// Sent as `Hello.client`. Default `quiver-rs/<crate version>`.
    pub client_name: String,
    /// Bound on one connect attempt: QUIC + TLS handshake, CONNECT, `Hello`/`Welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on waiting for a command's reply (`subscribe`, `unsubscribe`, `publish_ack`,
    /// `ping`). Default 10 s. A subscribe made while disconnected waits for the reconnect
    /// within this bound.
    pub request_timeout: Duration,
    /// The token is refreshed `max(refresh_ahead, remaining / 10)`, at most `remaining / 2`,
    /// before `Welcome.expires_at`, where `remaining` is the token's lifetime left when the
    /// session (or the last refresh) started: the margin PROTOCOL.md §6 asks for clock skew
    /// and for fetching the token ("a minute, or a fraction of the token's lifetime, whichever
    /// is larger"). A 10-minute token is refreshed a minute before it expires, a 1-hour token 6
    /// minutes before, a 20-second token after 10 s. Default 60 s. Failed refreshes are retried
    /// with backoff until expiry.
    pub refresh_ahead: Duration,
    /// QUIC keep-alive interval (default 5 s); must stay below the server's idle timeout (30 s).
    pub keep_alive: Duration,
    /// QUIC idle timeout on the client side (default 10 s): a backstop behind
    /// [`ClientConfig::heartbeat`]. QUIC applies the smaller of the two sides' idle timeouts to
    /// both, so setting this low also shortens how long the server keeps a silent client.
    pub idle_timeout: Duration,
    /// Dead-server detection by app-level `Ping` (default on: noticed within 2.5 s). See
    /// [`Heartbeat`] for what it costs.
    pub heartbeat: Option<Heartbeat>,
    /// Capacity of each subscription's event queue in events (default 1024). When the
    /// application does not read a [`crate::Subscription`], the client stops reading that
    /// room's stream once the queue is full (in events, or in bytes:
    /// [`ClientConfig::subscription_buffer_bytes`]). On WebTransport, QUIC flow control then
    /// pushes back to the server, which eventually ends the subscription with `slow_consumer`;
    /// on WebSocket, where every room shares the socket, the client holds at most 8 MiB more of
    /// the room's events and past that ends the subscription itself with `slow_consumer`
    /// ("ended by this client"). Memory never grows without bound.
    pub subscription_buffer: usize,
    /// Most bytes each subscription's event queue holds (default 8 MiB), plus one event: every
    /// event weighs what it carries (payload, room name, a `Joined`/`Left` member's user and
    /// session) and 128 bytes more, so neither large events (up to
    /// [`ClientConfig::max_frame`] each) nor a flood of tiny ones make the
    /// [`ClientConfig::subscription_buffer`] events cost more. Reached, it acts as a full queue.
    pub subscription_buffer_bytes: usize,
    /// Pace commands to `Welcome.limits.commands_per_second` on the client side so the server
    /// never refuses them with `rate_limited` (default true). `publish_unreliable` datagrams,
    /// which the server meters with the commands, take their share (see
    /// [`crate::Client::publish_unreliable`]).
    pub pace_commands: bool,
    /// Largest frame accepted from the server (default 1 MiB, at most
    /// [`quiver_proto::MAX_MAX_FRAME`]), whatever `Welcome.limits.max_frame` announces: a
    /// server could otherwise announce 4 GiB and make one frame cost gigabytes here. A larger
    /// frame ends the connection as a protocol error. Raise it for a server configured with a
    /// `max_payload` near or above 1 MiB.
    pub max_frame: usize,
    /// Most subscriptions held at once over WebTransport (default 256, the server's default
    /// `limits.max_subscriptions`): each room's stream is one the server opens, and the QUIC
    /// connection allows this many of them at once, and the server's own HTTP/3 streams
    /// besides (three: its control and QPACK streams). A subscription past it waits for a
    /// stream that never opens and ends with `stream_limit` (114). Raise it for a server whose
    /// `Welcome.limits.max_subscriptions` is higher; quinn reserves a little memory (about 100
    /// bytes) per stream allowed. Not used over WebSocket.
    pub max_subscriptions: u32,
}

/// The unidirectional streams an HTTP/3 server may open besides a session's own: its control
/// stream and QPACK's encoder and decoder streams (RFC 9114 §6.2, RFC 9204 §4.2).
pub const HTTP3_SERVER_STREAMS: u32 = 3;

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A URL may carry a `token` parameter (`connect_url` expects one may be there): a
        // configuration printed for a log must not hand it on (outside audit 103, F7).
        let redacted = |urls: &[String]| urls.iter().map(|u| redact(u)).collect::<Vec<_>>();
        f.debug_struct("ClientConfig")
            .field("urls", &redacted(&self.urls))
            .field("ws_urls", &redacted(&self.ws_urls))
            .field("transport", &self.transport)
            .field("webtransport_timeout", &self.webtransport_timeout)
            .field("webtransport_retry", &self.webtransport_retry)
            .field("trust", &self.trust)
            .field("backoff", &self.backoff)
            .field("publish_buffer", &self.publish_buffer)
            .field("client_name", &self.client_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("refresh_ahead", &self.refresh_ahead)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("subscription_buffer", &self.subscription_buffer)
            .field("subscription_buffer_bytes", &self.subscription_buffer_bytes)
            .field("pace_commands", &self.pace_commands)
            .field("max_frame", &self.max_frame)
            .field("max_subscriptions", &self.max_subscriptions)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// One WebTransport URL, a token provider, and the defaults documented on each field.
    pub fn new(url: impl Into<String>, token: TokenProvider) -> Self {
        ClientConfig {
            urls: vec![url.into()],
            ws_urls: Vec::new(),
            transport: Transport::Auto,
            webtransport_timeout: Duration::from_millis(2500),
            webtransport_retry: Duration::from_secs(300),
            token,
            trust: Trust::System,
            backoff: Backoff::default(),
            publish_buffer: 1024,
            client_name: concat!("quiver-rs/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            refresh_ahead: Duration::from_secs(60),
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            heartbeat: Some(Heartbeat::default()),
            subscription_buffer: 1024,
            subscription_buffer_bytes: 8 * 1024 * 1024,
            pace_commands: true,
            max_frame: 1024 * 1024,
            max_subscriptions: 256,
        }
    }

    /// The largest frame this client takes from any server: [`ClientConfig::max_frame`] within
    /// the protocol's bounds (never below the 64 KiB any session may send, never above
    /// [`quiver_proto::MAX_MAX_FRAME`]).
    pub(crate) fn frame_ceiling(&self) -> usize {
        self.max_frame.clamp(
            quiver_proto::DEFAULT_MAX_FRAME,
            quiver_proto::MAX_MAX_FRAME as usize,
        )
    }

    /// Sets [`ClientConfig::trust`].
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Adds a fallback URL.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Adds a WebSocket URL ([`ClientConfig::ws_urls`]).
    pub fn with_ws_url(mut self, url: impl Into<String>) -> Self {
        self.ws_urls.push(url.into());
        self
    }

    /// Sets [`ClientConfig::transport`].
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The rustls client configuration for [`ClientConfig::trust`], on the `ring` provider
    /// (wtransport's), TLS 1.3, with wtransport's ALPN (`h3`). Shared by both transports; the
    /// WebSocket side replaces the ALPN.
    pub(crate) async fn tls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        use wtransport::tls::client::{build_default_tls_config, ServerHashVerification};
        use wtransport::tls::rustls::pki_types::CertificateDer;
        use wtransport::tls::rustls::RootCertStore;

        Ok(match &self.trust {
            Trust::System => {
                build_default_tls_config(Arc::new(wtransport::tls::build_native_cert_store()), None)
            }
            Trust::CertHashes(hashes) => build_default_tls_config(
                Arc::new(RootCertStore::empty()),
                Some(Arc::new(ServerHashVerification::new(
                    hashes
                        .iter()
                        .map(|h| wtransport::tls::Sha256Digest::new(*h)),
                ))),
            ),
            Trust::CaFile(path) => {
                let chain = wtransport::tls::CertificateChain::load_pemfile(path)
                    .await
                    .map_err(|e| {
                        ClientError::Protocol(format!("loading CA file {}: {e}", path.display()))
                    })?;
                let mut roots = RootCertStore::empty();
                for cert in chain.as_slice() {
                    roots
                        .add(CertificateDer::from(cert.der().to_vec()))
                        .map_err(|e| {
                            ClientError::Protocol(format!("CA file {}: {e}", path.display()))
                        })?;
                }
                if roots.is_empty() {
                    return Err(ClientError::Protocol(format!(
                        "CA file {} holds no certificate",
                        path.display()
                    )));
                }
                build_default_tls_config(Arc::new(roots), None)
            }
        })
    }

    /// Builds the wtransport client configuration for [`ClientConfig::trust`].
    pub(crate) async fn wtransport_config(&self) -> Result<wtransport::ClientConfig, ClientError> {
        let tls = self.tls_config().await?;
        // quinn's default allows the server 100 streams: a client of a server with the default
        // 256 subscriptions lost every room past the 99th to `stream_limit`.
        let mut transport = wtransport::quinn::TransportConfig::default();
        transport.max_concurrent_uni_streams(
            self.max_subscriptions
                .saturating_add(HTTP3_SERVER_STREAMS)
                .into(),
        );
        let builder = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_custom_tls_and_transport(tls, transport)
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(self.idle_timeout))
            .map_err(|_| ClientError::Protocol("idle_timeout out of range".into()))?;
        Ok(builder.build())
    }
}

/// Parses a SHA-256 certificate hash written as 64 hex digits, optionally separated by `:`
/// (both `quiver serve`'s `cert_sha256` and OpenSSL's `AB:CD:...` fingerprints work).
pub fn parse_cert_hash(s: &str) -> Result<[u8; 32], ClientError> {
    let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&cleaned, &mut out)
        .map_err(|e| ClientError::Protocol(format!("bad certificate hash {s:?}: {e}")))?;
    Ok(out)
}

/// The CONNECT URL for one attempt: `base` with `/v1` ([`quiver_proto::CONNECT_PATH`]) if it has no path, and the
/// token as the (percent-encoded) `token` query parameter, replacing any present.
pub fn connect_url(base: &str, token: &str) -> Result<String, ClientError> {
    let invalid =
        |why: String| ClientError::Connect(format!("invalid URL {:?}: {why}", redact(base)));
    let mut url = Url::parse(base).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid("WebTransport needs https".into()));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(CONNECT_PATH);
    }
    let others: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in &others {
            q.append_pair(k, v);
        }
        q.append_pair("token", token);
    }
    Ok(url.into())
}

/// The WebSocket URL for one attempt: `base` (`ws://` or `wss://`) with `/v1/ws` if it has no
/// path. The token is not put in it: it travels in the `Authorization` header.
pub fn ws_url(base: &str) -> Result<String, ClientError> {
    let invalid =
        |why: String| ClientError::Connect(format!("invalid URL {:?}: {why}", redact(base)));
    let mut url = Url::parse(base).map_err(|e| invalid(e.to_string()))?;
    if url.scheme() != "ws" && url.scheme() != "wss" {
        return Err(invalid("WebSocket needs ws:// or wss://".into()));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(WS_PATH);
    }
    Ok(url.into())
}

/// The WebSocket endpoint's path (PROTOCOL.md section 9).
pub const WS_PATH: &str = "/v1/ws";

/// The URL as safe to log or put in an error: every `token` query parameter's value replaced
/// by `***` (a URL may name it twice, and the server reads one of them).
pub(crate) fn redact(url: &str) -> String {
    const KEY: &str = "token=";
    let mut shown = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find(KEY) {
        let value = i + KEY.len();
        let end = rest[value..]
            .find(['&', '#'])
            .map_or(rest.len(), |j| value + j);
        shown.push_str(&rest[..value]);
        shown.push_str("***");
        rest = &rest[end..];
    }
    shown.push_str(rest);
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_durations_are_bounded() {
        let huge = Heartbeat {
            interval: Duration::MAX,
            timeout: Duration::ZERO,
            unanswered: Duration::from_secs(20),
        }
        .bounded();
        assert_eq!(huge.interval, HEARTBEAT_CEILING);
        assert_eq!(huge.timeout, Duration::from_millis(1));
        assert_eq!(huge.unanswered, Duration::from_secs(20));
        assert!(std::time::Instant::now()
            .checked_add(huge.interval)
            .is_some());
    }

    #[test]
    fn url_gets_token_and_path() {
        assert_eq!(
            connect_url("https://localhost:4433/v1", "a.b.c").unwrap(),
            "https://localhost:4433/v1?token=a.b.c"
        );
        assert_eq!(
            connect_url("https://localhost:4433", "t").unwrap(),
            "https://localhost:4433/v1?token=t"
        );
        assert_eq!(
            connect_url("https://[::1]:4433/", "t").unwrap(),
            "https://[::1]:4433/v1?token=t"
        );
    }

    #[test]
    fn token_is_percent_encoded_and_replaces_old_one() {
        let url = connect_url("https://h:1/v1?x=1&token=old", "a b&c=d/é+").unwrap();
        assert_eq!(url, "https://h:1/v1?x=1&token=a+b%26c%3Dd%2F%C3%A9%2B");
        let parsed = Url::parse(&url).unwrap();
        let tokens: Vec<_> = parsed
            .query_pairs()
            .filter(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(tokens, vec!["a b&c=d/é+".to_string()]);
    }

    #[test]
    fn url_errors() {
        assert!(matches!(
            connect_url("http://h:1/v1", "t"),
            Err(ClientError::Connect(_))
        ));
        assert!(matches!(
            connect_url("not a url", "t"),
            Err(ClientError::Connect(_))
        ));
    }

    #[test]
    fn ws_urls_get_the_path() {
        assert_eq!(
            ws_url("ws://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/v1/ws"
        );
        assert_eq!(
            ws_url("wss://example.com/").unwrap(),
            "wss://example.com/v1/ws"
        );
        assert_eq!(
            ws_url("ws://h:1/custom/ws?x=1").unwrap(),
            "ws://h:1/custom/ws?x=1"
        );
        assert!(matches!(
            ws_url("https://h:1/v1"),
            Err(ClientError::Connect(_))
        ));
    }

    #[test]
    fn transports_parse() {
        for t in [
            Transport::WebTransport,
            Transport::WebSocket,
            Transport::Auto,
        ] {
            assert_eq!(t.as_str().parse::<Transport>().unwrap(), t);
        }
        assert!("quic".parse::<Transport>().is_err());
    }

    #[test]
    fn redacts_token() {
        assert_eq!(redact("https://h/v1?token=abc"), "https://h/v1?token=***");
        assert_eq!(
            redact("https://h/v1?token=abc&x=1"),
            "https://h/v1?token=***&x=1"
        );
        assert_eq!(redact("https://h/v1"), "https://h/v1");
        assert_eq!(
            redact("https://h/v1?token=a&x=1&token=b#f"),
            "https://h/v1?token=***&x=1&token=***#f"
        );
    }

    /// A token in a configured URL shows neither in the configuration's `Debug` nor in the
    /// errors that name the URL (outside audit 103, F7).
    #[test]
    fn configured_tokens_never_show() {
        let cfg = ClientConfig::new("https://h/v1?token=SECRET", token_fixed("t"))
            .with_ws_url("wss://h/v1/ws?token=SECRET");
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("SECRET") && shown.contains("token=***"),
            "{shown}"
        );
        let err = connect_url("http://h/v1?token=SECRET", "t").unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
        let err = ws_url("https://h/v1?token=SECRET").unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn cert_hash_parsing() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let h = parse_cert_hash(hex).unwrap();
        assert_eq!(h[0], 0x00);
        assert_eq!(h[1], 0x11);
        assert_eq!(h[15], 0xff);
        assert_eq!(h[31], 0xff);
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert_eq!(parse_cert_hash(&colons.join(":")).unwrap(), h);
        assert_eq!(parse_cert_hash(&format!("  {hex}\n")).unwrap(), h);
        assert!(parse_cert_hash(&hex[..62]).is_err());
        assert!(parse_cert_hash(&format!("{hex}00")).is_err());
        assert!(parse_cert_hash(&hex.replace('0', "g")).is_err());
    }

    #[tokio::test]
    async fn fixed_and_fn_tokens() {
        assert_eq!(token_fixed("abc")().await.unwrap(), "abc");
        let p = token_fn(|| async { Err::<String, _>("nope".to_string()) });
        assert_eq!(p().await.unwrap_err(), "nope");
    }

    #[tokio::test]
    async fn wtransport_configs_build() {
        let cfg = ClientConfig::new("https://localhost:4433/v1", token_fixed("t"))
            .with_trust(Trust::CertHashes(vec![[7u8; 32]]));
        cfg.wtransport_config().await.unwrap();
        let missing = cfg.with_trust(Trust::CaFile("/nonexistent/ca.pem".into()));
        assert!(matches!(
            missing.wtransport_config().await,
            Err(ClientError::Protocol(_))
        ));
    }
}
