//! Support for the end-to-end tests: in-process servers on ephemeral loopback ports, tokens, and
//! a raw protocol client that speaks frames directly (for what the real client library would
//! never send, like malformed frames).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use quiver_server::auth::{sign_hs256, unix_now, Claims};
use quiver_server::{Config, Server};
use wtransport::endpoint::endpoint_side::Client as ClientSide;
use wtransport::{ClientConfig, Connection, Endpoint};

pub mod api;
pub mod h3;
pub mod memory;
pub mod nats;
pub mod nats_cluster;
mod observe;
pub mod process;
mod raw;
pub mod relay;
pub mod rpc;
pub mod sse;

pub use observe::{wait_metric, wait_ready};

pub use raw::{deaf_websocket, events_in, publish_frame, read_frame, Raw, RoomStream, Via};

/// At least 32 bytes: the server refuses shorter HS256 secrets.
pub const SECRET: &str = "test-secret-please-change-0123456789";

/// Long runs of the fault tests (`scripts/test-long`, `QUIVER_LONG_TESTS=1`): sustained traffic
/// for a minute instead of seconds. `scripts/test` runs the short ones.
pub fn long_tests() -> bool {
    std::env::var("QUIVER_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: Option<Server>,
    /// What it was started with; restarts reuse it, on the same ports.
    pub config: Config,
    pub dir: tempfile::TempDir,
    pub wt: SocketAddr,
    pub http: SocketAddr,
    pub hash: [u8; 32],
    /// Where a "real" certificate lives ([`TestServer::start_with_certificate`]).
    certificate_dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(dir.path(), "127.0.0.1:0".parse()?);
        tweak(&mut config);
        let server = Server::start(config.clone()).await?;
        config.listen = server.webtransport_addr();
        config.http = server.http_addr;
        Ok(Self {
            config,
            wt: server.webtransport_addr(),
            http: server.http_addr,
            hash: server.cert_sha256(),
            server: Some(server),
            dir,
            certificate_dir: None,
        })
    }

    /// Stops the server and starts a new one on the same ports with the same certificate and
    /// configuration.
    pub async fn restart(&mut self) -> Result<()> {
        self.restart_with(|_| {}).await
    }

    /// Like [`Self::restart`], with a configuration change.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut Config)) -> Result<()> {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let mut config = self.config.clone();
        tweak(&mut config);
        // The UDP port may take a moment to be released by the old endpoint.
        let deadline = tokio::time::Instant::now() + WAIT;
        let server = loop {
            match Server::start(config.clone()).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing_log(&format!("restart retry: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.server = Some(server);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// A server with a "real" certificate (the development one, passed as `cert`/`key`): it
    /// then serves HTTPS and wss on TCP with the UDP port's number. Returns the certificate's
    /// path too.
    pub async fn start_with_certificate() -> Result<(Self, std::path::PathBuf)> {
        let dir = tempfile::tempdir()?;
        quiver_server::tls::dev_identity(dir.path()).await?;
        let cert = dir.path().join(quiver_server::tls::DEV_CERT_FILE);
        let key = dir.path().join(quiver_server::tls::DEV_KEY_FILE);
        // The TCP port with the UDP port's (ephemeral) number may be taken by anyone on this
        // machine: try a few UDP ports.
        let mut attempts = 0;
        let mut server = loop {
            let started = Self::start_with(|c| {
                c.cert = Some(cert.clone());
                c.key = Some(key.clone());
            })
            .await;
            match started {
                Err(e) if attempts < 5 && e.to_string().contains("in use") => attempts += 1,
                other => break other?,
            }
        };
        server.certificate_dir = Some(dir);
        Ok((server, cert))
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/v1", self.wt.port())
    }

    /// Open sessions on this server, every transport (the metrics registry is shared by every
    /// server in a test process; this count is not).
    pub fn sessions(&self) -> usize {
        self.server.as_ref().map_or(0, Server::session_count)
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.http))
            .await?
            .text()
            .await?)
    }
}

fn tracing_log(msg: &str) {
    eprintln!("[test] {msg}");
}

fn test_config(dir: &std::path::Path, listen: SocketAddr) -> Config {
    let mut config = Config {
        listen,
        http: "127.0.0.1:0".parse().expect("literal"),
        cert_dir: dir.to_owned(),
        ..Config::default()
    };
    config.auth.jwt_secret = Some(SECRET.into());
    // Production auth with the generated certificate: tests pin its hash.
    config.tls.self_signed = true;
    config.timeouts.drain = Duration::from_secs(2);
    config
}

/// A token for `user` in `tenant`, allowed the given patterns, valid for `ttl_secs`.
pub fn token(tenant: &str, user: &str, sub: &[&str], publ: &[&str], ttl_secs: i64) -> String {
    let claims = Claims {
        sub: user.into(),
        tenant: tenant.into(),
        exp: (unix_now() as i64 + ttl_secs) as u64,
        subscribe: sub.iter().map(|s| s.to_string()).collect(),
        publish: publ.iter().map(|s| s.to_string()).collect(),
    };
    sign_hs256(SECRET.as_bytes(), &claims).expect("signing works")
}

/// A token allowed everything in its tenant that expires at `exp` (Unix seconds; any u64).
pub fn token_expiring_at(tenant: &str, user: &str, exp: u64) -> String {
    let claims = Claims {
        sub: user.into(),
        tenant: tenant.into(),
        exp,
        subscribe: vec![">".into()],
        publish: vec![">".into()],
    };
    sign_hs256(SECRET.as_bytes(), &claims).expect("signing works")
}

/// A token allowed everything in its tenant, with a `jti` (a token id, for revocation).
pub fn token_with_jti(tenant: &str, user: &str, jti: &str, ttl_secs: i64) -> String {
    #[derive(serde::Serialize)]
    struct WithJti {
        #[serde(flatten)]
        claims: Claims,
        jti: String,
    }
    let claims = Claims {
        sub: user.into(),
        tenant: tenant.into(),
        exp: (unix_now() as i64 + ttl_secs) as u64,
        subscribe: vec![">".into()],
        publish: vec![">".into()],
    };
    let with = WithJti {
        claims,
        jti: jti.into(),
    };
    sign_hs256(SECRET.as_bytes(), &with).expect("signing works")
}

/// A token allowed everything in its tenant.
pub fn full_token(tenant: &str, user: &str) -> String {
    token(tenant, user, &[">"], &[">"], 3600)
}

/// A [`quiver_client::ClientConfig`] for `server`: its URL, its certificate pinned by hash, and
/// connect and request timeouts well inside [`WAIT`], so a stuck call fails as a client error
/// before the test's own bound.
pub fn client_config(
    server: &TestServer,
    token: quiver_client::TokenProvider,
) -> quiver_client::ClientConfig {
    let mut config = quiver_client::ClientConfig::new(server.url(), token);
    config.trust = quiver_client::Trust::CertHashes(vec![server.hash]);
    config.connect_timeout = Duration::from_secs(5);
    config.request_timeout = Duration::from_secs(5);
    config
}

pub fn client_endpoint(hash: [u8; 32]) -> Result<Endpoint<ClientSide>> {
    client_endpoint_with(hash, |_| {})
}

/// A client endpoint with changes to its QUIC transport (flow-control windows, say).
pub fn client_endpoint_with(
    hash: [u8; 32],
    tweak: impl FnOnce(&mut wtransport::quinn::TransportConfig),
) -> Result<Endpoint<ClientSide>> {
    let mut config = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build();
    // Room for a few hundred server-opened subscription streams.
    let mut transport = wtransport::quinn::TransportConfig::default();
    transport.max_concurrent_uni_streams(512u32.into());
    tweak(&mut transport);
    config
        .quic_config_mut()
        .transport_config(Arc::new(transport));
    Ok(Endpoint::client(config)?)
}

/// Opens a session; the error is wtransport's (for asserting refusals).
pub async fn open_session(
    server: &TestServer,
    path_and_query: &str,
) -> std::result::Result<Connection, wtransport::error::ConnectingError> {
    open_session_at(server.wt.port(), server.hash, path_and_query).await
}

/// Like [`open_session`], for a server known by port and certificate hash (another process).
pub async fn open_session_at(
    port: u16,
    hash: [u8; 32],
    path_and_query: &str,
) -> std::result::Result<Connection, wtransport::error::ConnectingError> {
    let endpoint = client_endpoint(hash).expect("client endpoint");
    endpoint
        .connect(format!("https://127.0.0.1:{port}{path_and_query}"))
        .await
}

/// Sums every series of metric `name` whose labels include all of `labels` (0 when none):
/// `metric_sum(page, "quiver_sessions_active", &[])` counts sessions on every transport.
pub fn metric_sum(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has =
                |(k, v): &(&str, &str)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
            labels.iter().all(has).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Reads a metric's value from a Prometheus text page (0 when absent).
pub fn metric(page: &str, name_with_labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == name_with_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// POSTs JSON to the backend API's `/api/v1/{path}` with `key` as the bearer credential; the
/// status and the JSON answer (`Null` when the answer is not JSON).
pub async fn api_post(
    server: &TestServer,
    path: &str,
    key: &str,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/{path}", server.http))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

/// `GET /healthz` on a fresh TCP connection: the status line, or `None` when the server closed
/// the connection without one.
pub async fn healthz(server: &TestServer) -> Result<Option<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.http).await?;
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await?;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().map(str::to_owned))
}

/// A loopback TCP port nothing listens on, for "the peer is down" tests. The socket is bound
/// but not listening, so a connect is refused; keep it alive for the test: a port released
/// instead could be taken by another of the suite's sockets before the test connects.
pub fn refusing_port() -> Result<(tokio::net::TcpSocket, u16)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let port = socket.local_addr()?.port();
    Ok((socket, port))
}

/// Adds a history namespace `name` (`size` publications kept for a minute, no presence).
pub fn add_history_namespace(config: &mut Config, name: &str, size: usize) {
    config
        .namespaces
        .push(quiver_server::config::NamespaceConfig {
            name: name.into(),
            history_size: size,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        });
}

/// Adds a `latest` namespace `name` (PROTOCOL.md §10: values by datagram, conflated).
pub fn add_latest_namespace(config: &mut Config, name: &str) {
    config
        .namespaces
        .push(quiver_server::config::NamespaceConfig {
            name: name.into(),
            mode: quiver_server::config::DeliveryMode::Latest,
            ..Default::default()
        });
}

/// A bare quinn client endpoint (HTTP/3 ALPN, trusting the test server's certificate hash) for
/// tests that speak QUIC below WebTransport; `tweak` changes its transport (keep-alives,
/// flow-control windows).
pub fn quic_client(
    server: &TestServer,
    tweak: impl FnOnce(&mut wtransport::quinn::TransportConfig),
) -> Result<wtransport::quinn::Endpoint> {
    quic_client_trusting(server.hash, tweak)
}

/// [`quic_client`] for a server known by its certificate hash (a `quiver serve` process).
pub fn quic_client_trusting(
    hash: [u8; 32],
    tweak: impl FnOnce(&mut wtransport::quinn::TransportConfig),
) -> Result<wtransport::quinn::Endpoint> {
    let config = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build();
    let mut quic = config.quic_config().clone();
    let mut transport = wtransport::quinn::TransportConfig::default();
    tweak(&mut transport);
    quic.transport_config(Arc::new(transport));
    let mut endpoint = wtransport::quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quic);
    Ok(endpoint)
}
