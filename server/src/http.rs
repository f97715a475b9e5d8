//! The HTTP side (axum): health, readiness, Prometheus metrics, and in development mode the demo
//! page with its bootstrap endpoint. The browser bundle and demo are compiled into the binary, so
//! running the server never needs Node.js.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

use quiver_proto::TenantId;
use serde::Deserialize;

use crate::auth::{sign_hs256, unix_now, Claims};
use crate::server::Shared;

/// Lifetime of tokens handed to the demo page; the page fetches a new one to refresh.
const DEMO_TOKEN_TTL: u64 = 300;
pub const DEMO_TENANT: &str = "demo";

/// Which TCP listener a router serves: what each may show differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The plain `http` port on a loopback address: everything but TLS.
    LocalHttp,
    /// The plain `http` port on any other address: health, readiness and metrics only. Tokens
    /// and API keys never cross a network in clear text.
    RemoteHttp,
    /// The `https` port (a real certificate): everything but `/metrics`, which lists every
    /// tenant and is for the operator's scraper on the `http` port, not for the public.
    Https,
}

impl Listener {
    /// The plain listener bound to `addr`.
    pub fn http(addr: std::net::SocketAddr) -> Self {
        if addr.ip().is_loopback() {
            Listener::LocalHttp
        } else {
            Listener::RemoteHttp
        }
    }
}

/// The HTTP routes a listener serves.
pub fn router(shared: Arc<Shared>, listener: Listener) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if listener != Listener::Https {
        app = app.route("/metrics", get(metrics));
    }
    // The fallbacks go on last: axum gives the 405 fallback only to routes already added.
    let fallbacks = |app: Router<Arc<Shared>>| {
        app.fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn(strict_framing))
    };
    if listener == Listener::RemoteHttp {
        return fallbacks(app).with_state(shared);
    }
    app = app
        .nest(crate::api::PREFIX, crate::api::router(&shared))
        // Other paths under /api (a typo, another version) answer in the API's shape, counted
        // as its errors are, not as the plain 404 of a page.
        .route("/api", any(crate::api::not_found))
        .route("/api/", any(crate::api::not_found))
        .route("/api/{*rest}", any(crate::api::not_found))
        .route(
            "/v1/ws",
            get_only(crate::transport::websocket::upgrade).layer(axum::middleware::map_request(
                crate::transport::websocket::upgrade_lists,
            )),
        )
        .route(
            "/v1/sse",
            only(
                on(MethodFilter::GET, crate::transport::sse::stream)
                    .options(crate::transport::sse::preflight),
                "GET, OPTIONS",
            ),
        );
    if shared.dev.is_some() {
        app = app
            .route("/dev/bootstrap", get(bootstrap))
            .route("/", get(|| asset("text/html; charset=utf-8", DEMO_HTML)))
            .route("/demo.js", get(|| asset(JS, DEMO_JS)))
            .route("/demo.css", get(|| asset("text/css", DEMO_CSS)))
            .route(
                "/arena",
                get(|| asset("text/html; charset=utf-8", ARENA_HTML)),
            )
            .route("/arena.js", get(|| asset(JS, ARENA_JS)))
            .route(
                "/orders",
                get(|| asset("text/html; charset=utf-8", ORDERS_HTML)),
            )
            .route("/orders.js", get(|| asset(JS, ORDERS_JS)))
            .route("/boot.js", get(|| asset(JS, BOOT_JS)));
    }
    app = app.route("/quiver.js", get(|| asset(JS, CLIENT_JS)));
    fallbacks(app).with_state(shared)
}

/// Resolves once the drain is over (`Server::shutdown`: the last session ended, or the drain's
/// one deadline passed): until then health, metrics and the API keep answering on new
/// connections (503 from /healthz, 429 to new sessions).
pub async fn drained(shared: &Shared) {
    shared.drained.cancelled().await;
}

/// Plain HTTP on `listener` (development, or the operator's `http` address): `crate::tcp`.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let kind = listener
        .local_addr()
        .map_or(Listener::RemoteHttp, Listener::http);
    if kind == Listener::RemoteHttp {
        tracing::info!(
            "the http listener is not on a loopback address: it serves /healthz, /readyz and \
             /metrics only (sessions and the API need https, or http on loopback)"
        );
    }
    let app = router(shared.clone(), kind);
    crate::tcp::serve(shared, listener, None, app).await;
}

const JS: &str = "text/javascript; charset=utf-8";
const CLIENT_JS: &str = include_str!("../../web/dist/quiver.js");
const DEMO_HTML: &str = include_str!("../../web/demo/index.html");
const DEMO_JS: &str = include_str!("../../web/demo/demo.js");
const DEMO_CSS: &str = include_str!("../../web/demo/demo.css");
const ARENA_HTML: &str = include_str!("../../web/demo/arena.html");
const ARENA_JS: &str = include_str!("../../web/demo/arena.js");
const ORDERS_HTML: &str = include_str!("../../web/demo/orders.html");
const ORDERS_JS: &str = include_str!("../../web/demo/orders.js");
/// What the demo pages share: the development token and client set-up.
const BOOT_JS: &str = include_str!("../../web/demo/boot.js");

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Any other path: 404 with the refusal body of PROTOCOL.md §9.1 (the API under `/api/v1` has
/// its own JSON errors).
/// What RFC 9112 says a server refuses and hyper lets through (outside SSE/API audit 2, G2): a
/// transfer coding other than `chunked` alone (hyper framed the body by the final `chunked` and
/// ignored the rest, so `gzip, chunked` published the still-encoded bytes): **501**; a content
/// coding (`Content-Encoding` other than `identity`): **415**; an HTTP/1.1 request without
/// `Host` or with more than one: **400**. A proxy in front may read such a
/// request otherwise than the server does, so neither is guessed at.
async fn strict_framing(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim);
    if let Some(first) = codings.next() {
        if !first.eq_ignore_ascii_case("chunked") || codings.next().is_some() {
            return crate::transport::problem(
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                None,
                "only the transfer coding chunked (alone) is supported",
            );
        }
    }
    // A content coding is not undone here: a compressed publish was stored and fanned out
    // still compressed (outside HTTP audit 2, F1). Refused, as RFC 9110 §8.4.1 allows.
    let coded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|coding| !coding.trim().eq_ignore_ascii_case("identity"));
    if coded {
        return crate::transport::problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
            "no content coding is supported: send the body as it is (no Content-Encoding)",
        );
    }
    if request.version() == axum::http::Version::HTTP_11
        && headers.get_all(header::HOST).iter().count() != 1
    {
        return crate::transport::problem(
            StatusCode::BAD_REQUEST,
            "bad_request",
            None,
            "an HTTP/1.1 request needs exactly one Host header",
        );
    }
    next.run(request).await
}

async fn not_found() -> Response {
    crate::transport::problem(StatusCode::NOT_FOUND, "not_found", None, "no such path")
}

/// A known path with another method (`POST /v1/ws`): 405 in the same shape.
async fn method_not_allowed() -> Response {
    crate::transport::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
        "method not allowed on this path",
    )
}

/// A session endpoint: GET and nothing else, HEAD included (PROTOCOL §9.2: 405, `Allow: GET`).
/// axum's `get` answers HEAD with the GET handler minus the body, which on `/v1/sse` opened a
/// session that could send nothing; HEAD needs its own route to be refused.
fn get_only<H, T>(handler: H) -> MethodRouter<Arc<Shared>>
where
    H: Handler<T, Arc<Shared>>,
    T: 'static,
{
    only(on(MethodFilter::GET, handler), "GET")
}

/// `router`'s methods and no other, HEAD included unless `router` has it: 405 with `allow`,
/// the methods `router` answers (RFC 9110 §15.5.6).
fn only(router: MethodRouter<Arc<Shared>>, allow: &'static str) -> MethodRouter<Arc<Shared>> {
    let refuse = move || async move {
        let mut response = method_not_allowed().await;
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        response
    };
    router.head(refuse).fallback(refuse)
}

/// 200 while the server accepts sessions.
async fn healthz(State(shared): State<Arc<Shared>>) -> StatusCode {
    if shared.draining.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// 200 while the server accepts sessions and its broker takes and delivers publications (on a
/// cluster: NATS connected, JetStream answering, history consumers rebuilt since the last
/// reconnect; see `broker::nats::health`).
async fn readyz(State(shared): State<Arc<Shared>>) -> StatusCode {
    // Until the revocations stored by other instances are loaded, a revoked token could open
    // a session here (outside cluster audit 3, F1).
    if shared.draining.load(Ordering::Relaxed)
        || !shared.broker.is_ready()
        || !shared.revocations.is_loaded()
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct BootstrapQuery {
    user: Option<String>,
}

/// Development mode only: a short-lived token for the demo tenant and what the page needs to
/// reach the WebTransport port with the pinned development certificate.
/// `?user=NAME` keeps the page's user (a refreshed token must name the same user).
async fn bootstrap(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<BootstrapQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let Some(dev) = &shared.dev else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The page's address, as its `Host` says (or the request target's authority, which RFC 9112
    // §3.2.2 puts before `Host` when the target is absolute): whether it may have a token, and
    // where it reaches the server's transports.
    let authority = match uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    };
    let page = page_url(authority);
    if !bootstrap_host_allowed(page.as_ref()) {
        return (
            StatusCode::FORBIDDEN,
            "development tokens go only to pages loaded from localhost or an IP address",
        )
            .into_response();
    }
    let user = match query.user {
        Some(user) if TenantId::parse(&user).is_ok() => user,
        Some(_) => {
            return (StatusCode::BAD_REQUEST, "user: 1 to 64 of A-Z a-z 0-9 _ -").into_response()
        }
        None => format!("guest-{:04x}", rand::random::<u16>()),
    };
    let expires_at = unix_now() + DEMO_TOKEN_TTL;
    let claims = Claims {
        sub: user.clone(),
        tenant: DEMO_TENANT.into(),
        exp: expires_at,
        subscribe: vec![">".into()],
        publish: vec!["chat.>".into()],
    };
    // The orders page calls `order.*` on the example backend (`call` is not in `Claims`, which
    // every token issuer shares).
    #[derive(serde::Serialize)]
    struct WithCall {
        #[serde(flatten)]
        claims: Claims,
        call: [&'static str; 1],
    }
    let claims = WithCall {
        claims,
        call: ["order.*"],
    };
    let Ok(token) = sign_hs256(&dev.secret, &claims) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // Reach the WebTransport port on the host the page was loaded from.
    let host = page
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".into());
    let url = format!("https://{host}:{}/v1", shared.webtransport_addr.port());
    // The fallback transport, on the listener this page came from.
    let http_port = page
        .as_ref()
        .and_then(|u| u.port_or_known_default())
        .unwrap_or(80);
    let ws_url = format!("ws://{host}:{http_port}/v1/ws");
    Json(json!({
        "url": url,
        "ws_url": ws_url,
        "token": token,
        "cert_sha256": hex::encode(shared.cert_sha256.get()),
        "tenant": DEMO_TENANT,
        "user": user,
        "expires_at": expires_at,
    }))
    .into_response()
}

/// The address of the page a request came from, from its `Host` (`uri-host[:port]`, RFC 9110
/// §7.2). Anything else is no address: userinfo, a path or query, percent-escapes (the URL
/// parser would decode `%6cocalhost` into `localhost`) and empty labels (`localhost..`) were
/// all taken for the name they ended in (outside regression audit 12, F1).
fn page_url(host: Option<&str>) -> Option<url::Url> {
    let host = host?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if host.is_empty() || !host.chars().all(allowed) {
        return None;
    }
    let url = url::Url::parse(&format!("http://{host}")).ok()?;
    if let Some(url::Host::Domain(name)) = url.host() {
        // One trailing dot is the same name written absolute; any other empty label is none.
        if name
            .strip_suffix('.')
            .unwrap_or(name)
            .split('.')
            .any(str::is_empty)
        {
            return None;
        }
    }
    Some(url)
}

/// Whether a development token may go to a page loaded through `host`: an IP address or
/// `localhost` (any port). A page of another name could be a DNS rebinding of some website onto
/// this machine, which could then mint tokens and act as any demo user (outside HTTP audit, F3);
/// an IP address or `localhost` cannot be rebound, and a LAN address still serves the demo.
fn bootstrap_host_allowed(page: Option<&url::Url>) -> bool {
    let Some(url) = page else {
        return false;
    };
    match url.host() {
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

#[cfg(test)]
mod bootstrap_tests {

    #[test]
    fn development_tokens_go_to_ip_addresses_and_localhost_only() {
        for host in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "192.168.1.20",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:8080",
            "localhost.:8080",
        ] {
            assert!(
                super::bootstrap_host_allowed(super::page_url(Some(host)).as_ref()),
                "{host}"
            );
        }
        for host in [
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "",
            "a b",
            // Not `uri-host[:port]` (outside regression audit 12, F1).
            "evil.example@127.0.0.1",
            "user:pass@localhost",
            "127.0.0.1/evil.example",
            "127.0.0.1?x=evil.example",
            "%6cocalhost",
            "evil.example.%6cocalhost",
            "localhost..",
            ".localhost",
            "evil.example#@127.0.0.1",
        ] {
            assert!(
                !super::bootstrap_host_allowed(super::page_url(Some(host)).as_ref()),
                "{host}"
            );
        }
        assert!(!super::bootstrap_host_allowed(None));
    }
}

#[cfg(test)]
mod listener_tests {
    use super::Listener;

    #[test]
    fn only_a_loopback_http_port_serves_sessions_and_the_api() {
        for (addr, listener) in [
            ("127.0.0.1:8080", Listener::LocalHttp),
            ("127.0.0.2:8080", Listener::LocalHttp),
            ("[::1]:8080", Listener::LocalHttp),
            ("0.0.0.0:8080", Listener::RemoteHttp),
            ("[::]:8080", Listener::RemoteHttp),
            ("192.0.2.7:8080", Listener::RemoteHttp),
        ] {
            let addr = addr.parse().expect("an address");
            assert_eq!(Listener::http(addr), listener, "{addr}");
        }
    }
}
