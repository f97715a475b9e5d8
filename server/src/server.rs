//! Starting and stopping a server: identity, token verifier, broker, the WebTransport endpoint
//! and the HTTP side, wired together around one [`Shared`] state.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wtransport::quinn::{congestion, TransportConfig, VarInt as QuinnVarInt};
use wtransport::{Endpoint, ServerConfig};

use crate::auth::{KeyError, Verifier};
use crate::broker::memory::MemoryBroker;
use crate::broker::nats::NatsBroker;
use crate::broker::{Broker, BrokerError};
use crate::config::{Config, CongestionControl};
use crate::hub::Hub;
use crate::tls::{self, CertHash, CertSource, CertUpdate, LoadedIdentity, SharedCert, TlsError};
use crate::{demo, http, transport};

pub const DEV_SECRET_FILE: &str = "dev-jwt-secret";

/// Peer-opened streams we allow at once per connection: exactly what the protocol uses. Two
/// bidirectional (the CONNECT request stream and the control stream); four unidirectional
/// (HTTP/3's control and two QPACK streams, plus one so that a WebTransport stream the client
/// opens is seen and refused at once rather than blocked). Subscriptions are streams *we* open.
/// quinn reserves memory per allowed stream, and every allowed stream is a receive window a
/// client can fill: these are the protocol's budget (issue 10, defect 2).
const PEER_BIDI_STREAMS: u32 = 2;
const PEER_UNI_STREAMS: u32 = 4;
/// Receive window per stream: the control stream needs one maximum frame in flight and a bit
/// more; nothing else the client sends is large.
const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Receive window for the whole connection once its session exists: the most a client can
/// make us buffer (bytes it sends out of order are held until the gap is filled).
pub(crate) const CONNECTION_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Receive window for the whole connection before its session exists (raised to
/// [`CONNECTION_RECEIVE_WINDOW`] once the CONNECT is answered 200): the handshake needs SETTINGS,
/// QPACK and one HEADERS frame of at most 4 KiB. With the full window, a peer with no token
/// could make the server hold 1 MiB per connection until the handshake deadline by sending
/// every stream's data but its first byte (outside audit: 1.3 MiB each, 20,000 connections).
const PRE_SESSION_RECEIVE_WINDOW: u32 = 16 * 1024;
/// What a connection may have written and not yet acknowledged, all its streams together
/// (quinn's default is 10 MB). A client that grants large flow-control windows and then
/// acknowledges nothing made the server hold that much per connection: `latest` rooms are
/// never ended for stalling, so it lasted until the idle timeout (outside audit: 11.5 MB per
/// connection). 1 MiB still keeps 10 MB/s per connection at a 100 ms round trip.
const SEND_WINDOW: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("certificate: {0}")]
    Tls(#[from] TlsError),
    #[error("token key: {0}")]
    Key(#[from] KeyError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("auth.jwks: {0}")]
    Jwks(#[from] crate::jwks::JwksError),
    #[error("https: {0}")]
    Https(#[from] crate::https::HttpsError),
    #[error("--cert and --key go together")]
    CertWithoutKey,
    #[error("auth.public_key needs auth.algorithm")]
    KeyWithoutAlgorithm,
    #[error("{setting}: {source}")]
    Secret {
        setting: &'static str,
        source: KeyError,
    },
    #[error("reading auth.jwt_secret_file {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "production auth is configured but no certificate: set cert and key (--cert/--key). \
         The generated self-signed certificate is valid for 13 days and is renewed under a new \
         hash, so only clients that pin that hash (serverCertificateHashes) can connect, and no \
         browser trusts it otherwise. To serve it anyway, set tls.self_signed = true \
         (--self-signed, QUIVER_TLS__SELF_SIGNED=true)"
    )]
    SelfSignedNotAllowed,
    #[error("development secret in {path}: {source}")]
    DevSecret {
        path: String,
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RpcSetupError),
}

impl From<crate::listeners::BindError> for StartError {
    fn from(e: crate::listeners::BindError) -> Self {
        StartError::Bind {
            addr: e.addr,
            source: e.source,
        }
    }
}

/// Development-mode extras: the secret `quiver token` and the demo sign with.
pub struct DevMode {
    pub secret: Vec<u8>,
}

/// State every session and handler shares.
pub struct Shared {
    pub config: Config,
    pub verifier: Verifier,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    /// Cancelled to make every session say goodbye and the accept loop stop.
    pub shutdown: CancellationToken,
    /// Set first on shutdown: new sessions get 429 and `/healthz` turns 503.
    pub draining: AtomicBool,
    /// Cancelled once the drain is over (the last session ended, or `timeouts.drain` passed,
    /// counted once from the shutdown): the listeners close (TCP refused from then on, the
    /// WebTransport endpoint closed) and the process may exit.
    pub drained: CancellationToken,
    /// Sessions on every transport.
    pub sessions: AtomicUsize,
    /// QUIC connections in any stage, from the first packet (pre-session ones hold memory
    /// too). At most `limits.max_sessions`.
    pub connections: AtomicUsize,
    /// TCP connections from `accept`, whatever they carry: at most [`Shared::tcp_ceiling`].
    /// Counted apart from QUIC, so that neither transport's idle connections can keep the
    /// other's clients out.
    pub tcp_connections: AtomicUsize,
    /// `limits.max_sessions` plus a little headroom, or less where the descriptor limit would
    /// run out first ([`crate::tcp::ceiling`]).
    pub tcp_ceiling: usize,
    pub tenant_quotas: Arc<crate::quota::TenantQuotas>,
    /// Client tokens publishing through the backend API, metered per user.
    pub api_clients: crate::api::client_rate::ClientRates,
    /// This instance's sessions, for disconnects and revocation.
    pub registry: Arc<crate::registry::Registry>,
    /// Disconnects and revocations that reach every instance.
    pub control: Arc<crate::control::Control>,
    /// Revoked token ids, until their tokens expire.
    pub revocations: Arc<crate::revocation::Revocations>,
    /// The backend API's `Idempotency-Key`s of recent publications.
    pub idempotency: Arc<crate::idempotency::IdempotencyKeys>,
    pub address_limits: Arc<crate::quota::AddressLimits>,
    pub next_sub_id: AtomicU64,
    pub dev: Option<DevMode>,
    pub webtransport_addr: SocketAddr,
    /// The certificate served now (it changes when the certificate is reloaded).
    pub cert_sha256: Arc<CertHash>,
    /// Users with a session here in the last minute: the reconnect-frequency metric.
    pub recent_users: crate::metrics::RecentUsers,
    /// The way to the application's backend, for `Call` and hooks.
    pub rpc: Arc<crate::rpc::Rpc>,
    /// The WebTransport socket's receive buffer, deep during bursts of handshakes.
    pub receive_buffer: Arc<crate::udp_socket::ReceiveBuffer>,
}

impl Shared {
    /// A token's grant: verified (signature, expiry, claims) and not revoked. Every transport,
    /// `Refresh` and the HTTP API go through here.
    pub fn authenticate(&self, token: &str) -> Result<crate::auth::Grant, crate::auth::AuthError> {
        let grant = self.verifier.verify(token)?;
        if let Some(jti) = &grant.jti {
            if self.revocations.is_revoked(&grant.tenant, jti) {
                return Err(crate::auth::AuthError::revoked(&grant));
            }
        }
        Ok(grant)
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    pub http_addr: SocketAddr,
    /// The TLS listener (HTTPS, wss), with a real certificate.
    pub https_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    pub async fn start(mut config: Config) -> Result<Server, StartError> {
        // The key first: a bad secret is the more serious mistake, so it is the one reported.
        let jwks = crate::jwks::Source::from_config(&config.auth)?
            .map(|source| crate::jwks::http_client().map(|client| (source, client)))
            .transpose()?;
        let (verifier, dev) = match &jwks {
            Some((source, client)) => (
                crate::jwks::initial(source, client, &config.auth).await?,
                None,
            ),
            None => load_verifier(&config)?,
        };
        let verifier = verifier.with_token_cache(config.auth.token_cache);
        let identity = load_identity(&config).await?;
        // The recorder first: a gauge set before it is installed is lost (outside ops audit 3,
        // F1: the certificate's expiry was never on the page).
        crate::metrics::handle();
        identity.note_expiry();
        if dev.is_some() && config.namespaces.is_empty() {
            // The demo's chat room shows history and presence out of the box.
            info!("development mode: namespace chat keeps 100 messages for 10 minutes and tracks presence; namespace arena delivers latest");
            config.namespaces.push(crate::config::NamespaceConfig {
                name: "chat".into(),
                history_size: 100,
                history_ttl: std::time::Duration::from_secs(600),
                presence: true,
                ..Default::default()
            });
            // The arena page's dots: only the newest positions matter (PROTOCOL.md §10).
            config.namespaces.push(crate::config::NamespaceConfig {
                name: "arena".into(),
                mode: crate::config::DeliveryMode::Latest,
                ..Default::default()
            });
        }
        // With a real certificate: HTTPS and wss on TCP, by default the UDP port's number.
        let bound = crate::listeners::bind(&config, !identity.dev).await?;
        let receive_buffer = bound.receive_buffer;
        // One certificate for every TLS listener, swapped in one place on reload.
        let certs = SharedCert::new(identity.certified.clone());
        let endpoint = server_config(&config, &identity.identity, certs.clone(), bound.udp)
            .and_then(Endpoint::server)
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let webtransport_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let http_listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http,
                source,
            })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.http,
                source,
            })?;
        let https = match bound.https {
            Some(listener) => Some((listener, crate::https::acceptor(certs.clone())?)),
            None => None,
        };

        receive_buffer.report();
        let hub = Arc::new(Hub::with_namespaces(
            config.namespaces.iter().map(|n| n.name.as_str()),
        ));
        let shared_config = Arc::new(config.clone());
        let broker: Arc<dyn Broker> = match &config.nats {
            None => Arc::new(MemoryBroker::new(hub.clone(), shared_config)),
            Some(nats) => Arc::new(NatsBroker::connect(nats, hub.clone(), shared_config).await?),
        };
        let registry = Arc::new(crate::registry::Registry::default());
        let control_nats = match &config.nats {
            Some(nats) => Some(crate::control::connect(nats).await?),
            None => None,
        };
        let idempotency_nats = control_nats.clone();
        let replicas = crate::broker::nats::replicas::configured(&config);
        let rpc = Arc::new(crate::rpc::Rpc::new(&config).await?);
        // With NATS, revocations stored by other instances are loaded first (`control.rs`).
        let revocations = Arc::new(
            crate::revocation::Revocations::new(config.nats.is_none()).with_replicas(replicas),
        );
        let control = Arc::new(crate::control::Control::new(
            registry.clone(),
            revocations.clone(),
            hub.clone(),
            control_nats,
        ));
        let tenant_quotas = Arc::new(crate::quota::TenantQuotas::new(config.quotas.clone()));
        let address_limits = Arc::new(crate::quota::AddressLimits::new(
            config.quotas.per_address.clone(),
        ));
        let api_clients = crate::api::client_rate::ClientRates::new(config.limits.clone());
        let (tcp_ceiling, by_descriptors) = crate::tcp::ceiling(&config);
        if let Some(descriptors) = by_descriptors {
            warn!(
                descriptors,
                tcp_connections = tcp_ceiling,
                max_sessions = config.limits.max_sessions,
                "the descriptor limit (ulimit -n, systemd LimitNOFILE) leaves room for fewer TCP connections than limits.max_sessions: more are refused (429); raise the limit"
            );
        }
        let shared = Arc::new(Shared {
            config,
            verifier,
            hub,
            broker,
            shutdown: CancellationToken::new(),
            draining: AtomicBool::new(false),
            drained: CancellationToken::new(),
            sessions: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            tcp_connections: AtomicUsize::new(0),
            tcp_ceiling,
            tenant_quotas,
            api_clients,
            address_limits,
            registry,
            control: control.clone(),
            revocations,
            idempotency: Arc::new(crate::idempotency::IdempotencyKeys::with_replicas(
                idempotency_nats,
                replicas,
            )),
            next_sub_id: AtomicU64::new(1),
            dev,
            webtransport_addr,
            cert_sha256: Arc::new(CertHash::new(identity.cert_sha256)),
            recent_users: Default::default(),
            rpc,
            receive_buffer,
        });

        let reloader = tls::Reloader::new(cert_source(&shared.config), &identity);
        // Installed before `start` returns: a SIGHUP that arrives before the handler would end
        // the process (the signal's default action).
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        #[cfg(not(unix))]
        let hangup = None::<()>;
        let mut tasks = vec![
            tokio::spawn(transport::webtransport::accept_loop(
                shared.clone(),
                endpoint,
            )),
            tokio::spawn(http::serve(shared.clone(), http_listener)),
            tokio::spawn(
                shared
                    .receive_buffer
                    .clone()
                    .settle(shared.shutdown.clone()),
            ),
            tokio::spawn(reload_certificates(shared.clone(), reloader, certs, hangup)),
        ];
        if let Some((source, client)) = jwks {
            // Its own SIGHUP stream: tokio hands every signal to each listener.
            #[cfg(unix)]
            let hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            #[cfg(not(unix))]
            let hangup = None::<()>;
            tasks.push(tokio::spawn(crate::jwks::keep_fresh(
                shared.clone(),
                source,
                client,
                hangup,
            )));
        }
        let https_addr = match https {
            Some((listener, tls)) => {
                let addr = listener.local_addr().ok();
                tasks.push(tokio::spawn(crate::tcp::serve(
                    shared.clone(),
                    listener,
                    Some(tls),
                    http::router(shared.clone(), http::Listener::Https),
                )));
                addr
            }
            _ => None,
        };
        tasks.push(tokio::spawn(control.listen(shared.shutdown.clone())));
        if shared.dev.is_some() && shared.config.demo {
            tasks.push(tokio::spawn(demo::publisher(shared.clone())));
            tasks.push(tokio::spawn(demo::arena(shared.clone())));
        }
        // The TLS listener too, when a real certificate opens it (outside audit 55, I1).
        let https = https_addr.map(|a| a.to_string());
        info!(webtransport = %webtransport_addr, http = %http_addr, https, cert_sha256 = %identity.hash_hex(), "quiver listening");
        Ok(Server {
            shared,
            http_addr,
            https_addr,
            tasks,
        })
    }

    pub fn webtransport_addr(&self) -> SocketAddr {
        self.shared.webtransport_addr
    }

    /// The broker (memory or NATS) the sessions go through: for an embedding application and
    /// for tests that act on it directly (a departure, say).
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.shared.broker
    }

    /// The SHA-256 of the certificate served now.
    pub fn cert_sha256(&self) -> [u8; 32] {
        self.shared.cert_sha256.get()
    }

    /// Open sessions on every transport (what `max_sessions` and the drain count).
    pub fn session_count(&self) -> usize {
        self.shared
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_dev(&self) -> bool {
        self.shared.dev.is_some()
    }

    /// Graceful stop: refuse new sessions (429; `/healthz` 503, while TCP is still accepted so
    /// probes and the backend API keep answering), send every session a goodbye, and wait until
    /// the last one has ended (its transport's close included, which a session's adapter bounds
    /// by [`CLOSE_GRACE`] during a drain for a client that reads nothing, and by
    /// `timeouts.reply` from the session's end for one still reading what was queued:
    /// `session::End::wait_for_reader`) or `timeouts.drain` has passed, whichever is first.
    /// Then the listeners close and the tasks end, within [`EXIT_GRACE`].
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.shared.config.timeouts.drain;
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.shutdown.cancel();
        // The session count falls when a session's slot is dropped (after its close); polled,
        // one deadline for the whole drain.
        while self.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + DRAIN_POLL)).await;
        }
        // Sessions still open now end with the process, unannounced: their presence goes from
        // the other instances now, not when it expires there, meanwhile and within the same
        // grace as the tasks' end.
        let mut depart = None;
        if self.session_count() > 0 {
            info!(
                sessions = self.session_count(),
                "drain deadline reached with sessions still closing"
            );
            let shared = self.shared.clone();
            depart = Some(tokio::spawn(async move { shared.broker.depart().await }));
        }
        self.shared.drained.cancel();
        let exit = tokio::time::Instant::now() + EXIT_GRACE;
        for mut task in self.tasks.into_iter().chain(depart) {
            if tokio::time::timeout_at(exit, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// How often the drain looks at the session count.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// How long a session's transport may take to close during a drain, or when the session was
/// refused, after its goodbye: a peer that does not answer the close (a WebSocket close frame
/// left unanswered, a socket nobody reads) holds the drain, or a place, no longer than this.
/// One still reading what was queued before its goodbye is waited for longer (not a refused
/// one), a grace at a time, up to `timeouts.reply` from its session's end.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// After the drain, how long the server's own tasks may take to end (the WebTransport
/// endpoint's close among them) before they are aborted.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// Of [`EXIT_GRACE`], how long the closed WebTransport endpoint waits for its connections to
/// have sent their close (QUIC's draining period, 3 × PTO, can be longer on a slow path).
pub const ENDPOINT_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

async fn load_identity(config: &Config) -> Result<LoadedIdentity, StartError> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Ok(tls::load_pem(cert, key).await?),
        (None, None) if config.dev_mode() || config.tls.self_signed => {
            Ok(tls::dev_identity(&config.cert_dir).await?)
        }
        (None, None) => Err(StartError::SelfSignedNotAllowed),
        _ => Err(StartError::CertWithoutKey),
    }
}

fn cert_source(config: &Config) -> CertSource {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => CertSource::Generated {
            dir: config.cert_dir.clone(),
        },
    }
}

/// Reloads the certificate on SIGHUP and when its files change (checked every
/// `tls.reload_interval`) and swaps it into `certs`, which the WebTransport endpoint and the
/// HTTPS listener both present. A certificate that fails to load is logged and
/// the old one kept.
async fn reload_certificates(
    shared: Arc<Shared>,
    mut reloader: tls::Reloader,
    certs: Arc<SharedCert>,
    #[cfg(unix)] mut hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))] _hangup: Option<()>,
) {
    let mut tick = tokio::time::interval(shared.config.tls.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        let force = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = sighup => {
                info!("SIGHUP: reloading the certificate");
                true
            }
        };
        let loaded = match reloader.check(force).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) => continue,
            Err(e) => {
                metrics::counter!(crate::metrics::TLS_RELOAD_FAILURES).increment(1);
                warn!(error = %e, "certificate reload failed; serving the old one");
                continue;
            }
        };
        CertUpdate {
            certified: loaded.certified,
            cert_sha256: loaded.cert_sha256,
            expires_at: loaded.expires_at,
            dev: loaded.dev,
        }
        .apply(&certs, &shared.cert_sha256);
    }
}

fn load_verifier(config: &Config) -> Result<(Verifier, Option<DevMode>), StartError> {
    let auth = &config.auth;
    let checks = auth.checks();
    if let Some(path) = &auth.public_key {
        let alg = auth
            .algorithm
            .as_deref()
            .ok_or(StartError::KeyWithoutAlgorithm)?;
        return Ok((Verifier::public_key(path, alg, &checks)?, None));
    }
    if let Some(secret) = &auth.jwt_secret {
        let verifier = Verifier::hs256(secret.expose().as_bytes(), &checks).map_err(|source| {
            StartError::Secret {
                setting: "auth.jwt_secret (QUIVER_JWT_SECRET, --jwt-secret)",
                source,
            }
        })?;
        return Ok((verifier, None));
    }
    if let Some(path) = &auth.jwt_secret_file {
        let secret =
            crate::auth::read_secret_file(path).map_err(|source| StartError::SecretFile {
                path: path.display().to_string(),
                source,
            })?;
        let verifier = Verifier::hs256(&secret, &checks).map_err(|source| StartError::Secret {
            setting: "auth.jwt_secret_file (QUIVER_JWT_SECRET_FILE, --jwt-secret-file)",
            source,
        })?;
        return Ok((verifier, None));
    }
    let secret = dev_secret(&config.cert_dir)?;
    warn!(
        "DEVELOPMENT MODE: no token key configured; tokens are signed with a generated secret in {}. \
         Anyone who can read it can mint tokens. Set auth.jwt_secret_file (or another key) in production.",
        config.cert_dir.join(DEV_SECRET_FILE).display()
    );
    let verifier = Verifier::hs256(&secret, &checks).map_err(|source| StartError::Secret {
        setting: "the development secret (delete it to generate a new one)",
        source,
    })?;
    Ok((verifier, Some(DevMode { secret })))
}

/// Reads the development secret, creating it on first use.
pub fn dev_secret(dir: &Path) -> Result<Vec<u8>, StartError> {
    let path = dir.join(DEV_SECRET_FILE);
    let err = |source| StartError::DevSecret {
        path: path.display().to_string(),
        source,
    };
    // Instances sharing `dir`, started together, must not each write a secret of their own
    // (tokens of one refused by the other): taken in turns, as the certificate
    // (`tls::lock_dev_dir`).
    let _lock = crate::tls::lock_dev_dir(dir).map_err(|e| StartError::DevSecret {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    std::fs::write(&path, &secret).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret.into_bytes())
}

/// Bytes of datagrams a connection buffers each way: about 50 full-size datagrams.
const DATAGRAM_BUFFER: usize = 64 * 1024;

/// `socket`: the endpoint's socket (`udp_socket::bind`); `certs`: the certificate it presents
/// (shared with the HTTPS listener, swapped there on reload); `identity`: the same one, whose
/// key the stateless-reset keys are derived from.
fn server_config(
    config: &Config,
    identity: &wtransport::Identity,
    certs: Arc<SharedCert>,
    socket: std::net::UdpSocket,
) -> std::io::Result<ServerConfig> {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(QuinnVarInt::from_u32(PEER_BIDI_STREAMS))
        .max_concurrent_uni_streams(QuinnVarInt::from_u32(PEER_UNI_STREAMS))
        .stream_receive_window(QuinnVarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(QuinnVarInt::from_u32(PRE_SESSION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        // Datagrams (`latest` rooms) waiting to be sent or read: small, because what waits goes
        // stale. Past it quinn drops the oldest first, whichever room it was for: the writers
        // send only into room (`latest::send_with_room`), each room's newest waiting in its slot.
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .keep_alive_interval(Some(config.timeouts.keep_alive))
        .max_idle_timeout(config.timeouts.idle.try_into().ok());
    let controller: Arc<dyn congestion::ControllerFactory + Send + Sync> =
        match config.transport.congestion_control {
            CongestionControl::Bbr => Arc::new(congestion::BbrConfig::default()),
            CongestionControl::Cubic => Arc::new(congestion::CubicConfig::default()),
            CongestionControl::NewReno => Arc::new(congestion::NewRenoConfig::default()),
        };
    transport.congestion_controller_factory(controller);
    // Ask clients that take QUIC's ACK-frequency extension (quinn-based ones: the Rust client)
    // to acknowledge less often: with many connections each getting a packet every few tens of
    // milliseconds, receiving their ACKs is a large share of the server's work.
    let acks = &config.transport;
    if !acks.client_ack_delay.is_zero() {
        let mut ack = wtransport::quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(QuinnVarInt::from_u32(acks.client_ack_threshold))
            .max_ack_delay(Some(acks.client_ack_delay))
            // A gap (a lost packet) is acknowledged at once, so loss recovery does not wait.
            .reordering_threshold(QuinnVarInt::from_u32(1));
        transport.ack_frequency_config(Some(ack));
    }
    // The socket's receive buffer is shallow but for bursts of handshakes (`udp_socket.rs`).
    let builder = ServerConfig::builder().with_bind_socket(socket);
    let tls = crate::tls_resumption::webtransport_tls(certs, config.tls.session_tickets)
        .map_err(std::io::Error::other)?;
    let mut server = builder
        .with_custom_tls_and_transport(tls, transport)
        .build();
    // No connection migration: a packet of a connection from another address is dropped. quinn
    // answered one at the new address before validating it with far more than the threefold
    // anti-amplification limit (a padded PATH_CHALLENGE and a probe: 2,526 bytes for a forged
    // 29-byte packet, outside audit), a reflector against third parties. A client whose
    // address changes reconnects (and resumes), as it must behind a load balancer that hashes
    // the 4-tuple anyway (docs/deployment.md).
    server.quic_config_mut().migration(false);
    // Resets for connections this process does not hold (a restart, another instance).
    crate::stateless_reset::apply(
        server.quic_endpoint_config_mut(),
        identity.private_key().secret_der(),
    );
    Ok(server)
}
