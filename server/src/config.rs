//! One `Config` for the whole server, merged as defaults < config file < `QUIVER_*` environment
//! < command-line flags (the binary applies flags last).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod check;
mod mistakes;
mod url_credentials;
mod validate;
pub use check::{
    env_variable_setting, key_meant_but_unset, unknown_env_keys, Checked, ConfigError,
    DEFAULT_TOML, NON_CONFIG_ENV,
};
pub use mistakes::{MAX_DRAIN, MAX_RPC_TIMEOUT, MIN_API_KEY_LEN};
pub use url_credentials::{shown_url, NatsUrlAuth, UrlCredentialsError};

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "http",
    "cert",
    "key",
    "cert_dir",
    "tls",
    "auth",
    "limits",
    "timeouts",
    "transport",
    "demo",
    "ablation",
    "namespaces",
    "nats",
    "allowed_origins",
    "quotas",
    "https",
    "api",
    "rpc",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address for WebTransport (HTTP/3). `[::]` is dual-stack.
    pub listen: SocketAddr,
    /// TCP address for health, metrics and the demo page.
    pub http: SocketAddr,
    /// TCP address for HTTPS and `wss://` (the WebSocket and SSE fallbacks, health, metrics,
    /// the API), served only with a real certificate (`cert`/`key`), with the same
    /// certificate. Default: the `listen` address, i.e. the same port number as HTTP/3.
    pub https: Option<SocketAddr>,
    /// PEM certificate chain and key. Without them a development certificate is generated in
    /// `cert_dir`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Where the development certificate and development JWT secret live.
    pub cert_dir: PathBuf,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub timeouts: TimeoutsConfig,
    pub transport: TransportSettings,
    /// Run the dashboard demo publisher (development mode only).
    pub demo: bool,
    /// Switches that make the server worse on purpose, for benchmarks only.
    pub ablation: AblationConfig,
    /// Delivery guarantees per room namespace (a room's first token). Rooms in no listed
    /// namespace are live only: at-most-once, no history, no resume.
    pub namespaces: Vec<NamespaceConfig>,
    /// The NATS backplane; without it the server runs on its embedded in-process broker.
    pub nats: Option<NatsConfig>,
    /// Browser origins allowed to connect (`https://app.example.com`; `*` for any), checked on
    /// every transport against the request's `Origin` header; a request with an unlisted
    /// origin gets 403. Requests without `Origin` (native clients) pass. Empty: any origin
    /// (a production server logs a warning at start).
    pub allowed_origins: Vec<String>,
    /// What one tenant or one source address may hold or spend on this instance.
    pub quotas: QuotasConfig,
    /// The backend API's keys.
    pub api: ApiConfig,
    /// `Call` routing and backend hooks (`crate::rpc`).
    pub rpc: crate::rpc::RpcConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// `Authorization: Bearer KEY` on the `/api/v1/…` endpoints (README "Backend API"). A key
    /// with a `tenant` acts on that tenant only; without one it acts on every tenant.
    pub keys: Vec<ApiKey>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    #[serde(default)]
    pub tenant: Option<String>,
}

impl std::fmt::Debug for ApiKey {
    // Keys are secrets: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &"<redacted>")
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// Quotas, enforced per instance (see `quota.rs` for why not cluster-wide). 0 means unlimited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasConfig {
    /// Every tenant's quota, unless overridden.
    pub tenant: TenantQuota,
    /// Per-tenant overrides of single fields.
    pub tenants: Vec<TenantOverride>,
    pub per_address: AddressQuota,
    /// Tenants with their own label on per-tenant metrics; later ones share `~other` (0: every
    /// tenant does, unlike the quotas' 0).
    pub max_tenant_labels: usize,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            tenant: TenantQuota::default(),
            tenants: Vec::new(),
            per_address: AddressQuota::default(),
            max_tenant_labels: 100,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuota {
    /// Concurrent sessions (every transport). Over it a new session is closed at once with
    /// `over_quota` (3008).
    pub max_sessions: u32,
    /// New sessions per second (every transport; bursts of the same size): over it a new
    /// session is closed at once with `over_quota` (3008), as over `max_sessions`. Bounds a
    /// tenant's reconnect churn (and the subscribes and replays an SSE request brings) across
    /// any number of source addresses.
    pub sessions_per_second: u32,
    /// Concurrent subscriptions over all the tenant's sessions; over it `quota_exceeded` (115).
    pub max_subscriptions: u32,
    /// Publications per second (sustained; bursts of the same size); over it `quota_exceeded`.
    pub publications_per_second: u32,
    /// Publication payload bytes per second; over it `quota_exceeded`.
    pub bytes_per_second: u64,
}

/// `Default` is for building one in code (`..Default::default()`); in a file `tenant` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOverride {
    pub tenant: String,
    #[serde(default)]
    pub max_sessions: Option<u32>,
    #[serde(default)]
    pub sessions_per_second: Option<u32>,
    #[serde(default)]
    pub max_subscriptions: Option<u32>,
    #[serde(default)]
    pub publications_per_second: Option<u32>,
    #[serde(default)]
    pub bytes_per_second: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AddressQuota {
    /// Concurrent connections (any stage, any transport) from one IP address (an IPv6 address
    /// counts by its /64 prefix).
    pub max_connections: u32,
    /// New connections (handshakes) per second from one IP address; bursts of the same size.
    pub handshakes_per_second: u32,
    /// Addresses exempt from these limits: proxies and load balancers many clients share.
    pub trusted: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The namespace: `chat` covers `chat`, `chat.lobby`, `chat.a.b`.
    pub name: String,
    /// Publications kept per room for resume. 0 = live only.
    #[serde(default)]
    pub history_size: usize,
    /// How long a publication stays in history.
    #[serde(default = "default_history_ttl", with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Track who is subscribed (the `Presence` command) and send `Joined`/`Left` events on
    /// the room's stream.
    #[serde(default)]
    pub presence: bool,
    /// `reliable` (the default: every publication, in order, on the room's stream) or `latest`
    /// (only the newest value matters: QUIC datagrams where they fit, conflated per subscriber,
    /// never `slow_consumer`; PROTOCOL.md §10). `latest` keeps no history.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// Send priority of the namespace's subscription streams, from -100 to 100 (default 0):
    /// under congestion higher goes first. The control stream is above every namespace.
    #[serde(default)]
    pub priority: i32,
}

impl Default for NamespaceConfig {
    /// A live-only, reliable namespace with no name yet: a base for `..Default::default()`.
    fn default() -> Self {
        Self {
            name: String::new(),
            history_size: 0,
            history_ttl: default_history_ttl(),
            presence: false,
            mode: DeliveryMode::default(),
            priority: 0,
        }
    }
}

/// How a namespace's publications reach subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    #[default]
    Reliable,
    Latest,
}

/// Bound of [`NamespaceConfig::priority`]; the control stream's priority is above it.
pub const MAX_NAMESPACE_PRIORITY: i32 = 100;

fn default_history_ttl() -> Duration {
    Duration::from_secs(300)
}

/// `Debug` hides the URLs' credentials (`url_credentials.rs`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Comma-separated server URLs, `nats://host:port`. May be left out of the file when
    /// `--nats` (or `QUIVER_NATS__URL`) gives it, so `[nats]` can hold just `storage` and the rest.
    #[serde(default)]
    pub url: String,
    /// JetStream storage for history: `memory` or `file`.
    #[serde(default = "default_storage")]
    pub storage: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
    /// A `.creds` file (NATS decentralised auth).
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// Extra root CA (PEM) for TLS to NATS; setting it requires TLS.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long a dead instance's presence entries outlive it.
    #[serde(default = "default_presence_ttl", with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// Copies JetStream keeps of every stream and key-value bucket Quiver makes (history,
    /// presence, revocations, idempotency keys): 1 to 5 (`MAX_REPLICAS`). 1 puts each on one
    /// nats-server, so losing that server stops them; 3 on a three-node NATS cluster survives
    /// the loss of any one. Set, existing streams and buckets are brought to it when next
    /// opened; unset, new ones are made with one copy and existing ones keep theirs (an
    /// operator's `nats stream edit --replicas 3` is never undone by an upgrade: review 118,
    /// F1).
    #[serde(default)]
    pub replicas: Option<usize>,
}

fn default_presence_ttl() -> Duration {
    Duration::from_secs(15)
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            storage: default_storage(),
            user: None,
            password: None,
            token: None,
            credentials: None,
            ca: None,
            presence_ttl: default_presence_ttl(),
            replicas: None,
        }
    }
}

fn default_storage() -> String {
    "memory".into()
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    pub congestion_control: CongestionControl,
    /// Receive buffer of the WebTransport UDP socket, in bytes; 0 keeps the kernel's default.
    /// This is its steady size: a deep queue of ACKs slows saturated fan-out (`udp_socket.rs`).
    /// Capped by `net.core.rmem_max`.
    pub udp_receive_buffer: usize,
    /// The receive buffer while a burst of handshakes is in progress (0: never grow). Bursts
    /// of connects overflow a small one and every lost handshake packet costs a QUIC probe
    /// timeout (about a second): see `udp_socket.rs`.
    pub udp_receive_buffer_burst: usize,
    /// Handshakes in progress at once that count as a burst.
    pub udp_burst_handshakes: usize,
    /// How long a client that supports QUIC's ACK-frequency extension (draft-ietf-quic-ack-
    /// frequency; quinn-based clients such as the Rust client) may wait before acknowledging
    /// what the server sent, instead of its own 25 ms; 0 asks nothing. Fewer ACKs to receive
    /// is less server work per delivery (bench/results/2026-12-01-ack-frequency.md); the cost
    /// is a later retransmission when the last packet of a burst is lost (up to this much). A
    /// gap is always acknowledged at once.
    #[serde(with = "humantime_serde")]
    pub client_ack_delay: Duration,
    /// Packets such a client may receive without acknowledging; the next one is acknowledged
    /// at once (1: every other packet, QUIC's default). The server asks for less while its
    /// congestion window is small (at most half a flight of full-size packets minus one, 0 at
    /// windows of 4 packets or fewer: a patch of the vendored quinn-proto), so a sender after
    /// heavy loss is not held up round after round by the delay; without that cap a threshold
    /// of 10 collapsed the cluster's fan-out. 3 measured 5.6-13.9 % more deliveries/s in many
    /// rooms than 1 (bench/results/2026-12-05-ack-threshold-cap.md).
    pub client_ack_threshold: u32,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            congestion_control: CongestionControl::default(),
            udp_receive_buffer: 0,
            udp_receive_buffer_burst: 1024 * 1024,
            udp_burst_handshakes: 8,
            client_ack_delay: Duration::from_millis(100),
            client_ack_threshold: 3,
        }
    }
}

/// QUIC congestion controller for every connection (what the server sends; clients choose
/// their own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CongestionControl {
    /// The default because it does not back off on random loss: on lossy links (Wi-Fi,
    /// mobile) a late message costs about one loss-detection time, where Cubic shrinks its
    /// window on every loss and then waits out the client's delayed ACKs (bench/: quiet-room
    /// p99 at 2% loss 2.4 ms against 23 ms, same fan-out throughput). quinn calls its BBR
    /// experimental; `cubic` is the well-trodden fallback.
    #[default]
    Bbr,
    /// quinn's own default.
    Cubic,
    NewReno,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AblationConfig {
    /// Deliver every subscription on the control stream instead of a stream per room, to measure
    /// head-of-line blocking. Clients see publications on the control stream.
    pub single_stream: bool,
}

/// A secret string: serialized as itself (configuration round-trips through figment), but its
/// `Debug` never shows it, so printing a `Config` (or anything holding one) leaks nothing.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself: call only where it is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.0.len())
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Token verification. Exactly one key source: `jwt_secret`, `jwt_secret_file`, `public_key`
/// (with `algorithm`), `jwks_file` or `jwks_url`; none at all is development mode (a generated
/// secret). `Debug` hides `jwks_url`'s credentials (`url_credentials.rs`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret, at least 32 bytes. Prefer `jwt_secret_file`: a secret on the command
    /// line shows in `ps` and shell history.
    pub jwt_secret: Option<Secret>,
    /// A file holding the HS256 secret (a trailing newline is ignored), at least 32 bytes.
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key for ES256, RS256 or EdDSA tokens.
    pub public_key: Option<PathBuf>,
    /// `ES256`, `RS256` or `EdDSA`; required with `public_key`.
    pub algorithm: Option<String>,
    /// A JWKS file (`{"keys": [...]}`) as identity providers publish: the token's `kid` picks
    /// the key (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA).
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, as identity providers publish their keys (`https://…/.well-known/jwks.json`;
    /// plain `http` only to a loopback address). Fetched at start (the server refuses to start
    /// without it), then every `jwks_refresh`, on SIGHUP, and when a token names an unknown
    /// `kid` (at most once per 10 s).
    pub jwks_url: Option<String>,
    /// How often `jwks_file` is re-read and `jwks_url` fetched again. A set that fails to load
    /// is logged and the old one kept.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf`; 0 by default, at most 5 minutes.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// When set, every token must name this audience in `aud`.
    pub audience: Option<String>,
    /// When set, every token must have been issued by this `iss`.
    pub issuer: Option<String>,
    /// Verified tokens remembered (by the whole token), so a reconnect with the same token skips
    /// the signature check and claim parsing. Expiry and revocation are still checked on every
    /// use; a key set reload empties it. 0 turns it off.
    pub token_cache: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_secret_file: None,
            public_key: None,
            algorithm: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            leeway: Duration::ZERO,
            audience: None,
            issuer: None,
            token_cache: crate::token_cache::DEFAULT_ENTRIES,
        }
    }
}

impl AuthConfig {
    /// The token checks besides the signature.
    pub fn checks(&self) -> crate::auth::Checks {
        crate::auth::Checks {
            leeway: self.leeway,
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
        }
    }

    /// How many key sources are configured (production needs exactly one).
    fn key_sources(&self) -> usize {
        [
            self.jwt_secret.is_some(),
            self.jwt_secret_file.is_some(),
            self.public_key.is_some(),
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count()
    }
}

/// The WebTransport certificate beyond `cert` / `key` / `cert_dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve the generated short-lived certificate even though production auth is configured.
    /// Refused otherwise: clients must then pin its hash, which changes every ~11 days.
    pub self_signed: bool,
    /// How often `cert` and `key` (or the generated certificate) are checked for a change; a
    /// change is loaded without a restart, as is SIGHUP.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Issue TLS 1.3 session tickets so reconnecting clients resume (no certificate signature
    /// or verification). Stateless: nothing is kept per client. Early data (0-RTT) is never
    /// accepted either way.
    pub session_tickets: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            self_signed: false,
            reload_interval: Duration::from_secs(10),
            session_tickets: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_frame: u32,
    pub max_payload: u32,
    pub max_subscriptions: u32,
    pub commands_per_second: u32,
    /// Refused commands within 10 s, as a multiple of `commands_per_second`, before the session
    /// is closed for abuse.
    pub abuse_factor: u32,
    /// Frames queued per subscription before it is dropped as a slow consumer.
    pub subscriber_queue: usize,
    /// Bytes queued over all of one session's subscriptions before one that would go over and
    /// holds more than its share is dropped as a slow consumer (`crate::delivery_queue`). At
    /// least `max_frame`.
    pub session_queue_bytes: usize,
    /// Concurrent sessions before new ones are refused with 429.
    pub max_sessions: usize,
    /// Bytes of history (payloads plus per-publication and per-room bookkeeping: 224 bytes per
    /// kept publication, 384 plus the names per known room) the embedded broker keeps
    /// over all rooms and tenants. Past it, the oldest publications of the tenant holding the
    /// most are evicted first. With NATS, JetStream's own limits bound the total.
    pub history_max_bytes: u64,
    /// Bytes of history one tenant may hold (embedded broker: over all its rooms; NATS: per
    /// history namespace, as the `max_bytes` of the tenant's stream). Past it, that tenant's
    /// own oldest publications go, so one tenant cannot push out everyone else's history.
    pub history_tenant_max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    #[serde(with = "humantime_serde")]
    pub hello: Duration,
    /// Every stage before a WebTransport session exists (QUIC handshake, HTTP/3 SETTINGS, the
    /// CONNECT request) must be done within this, or the connection is closed. On TCP: the TLS
    /// handshake, then each request's headers (`crate::tcp`).
    #[serde(with = "humantime_serde")]
    pub handshake: Duration,
    /// How long opening a subscription's stream may wait for the client's stream credit
    /// before the subscription ends with `stream_limit`.
    #[serde(with = "humantime_serde")]
    pub stream_open: Duration,
    /// How long a graceful shutdown waits for sessions to say goodbye.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// How long a reply may wait for room on the control stream. A client that keeps sending
    /// commands but never reads the answers is closed with `not_reading` (3010) after this, rather
    /// than stalling its session (token expiry included). Also how long after a session's end a
    /// client still reading what was queued before its goodbye is waited for (PROTOCOL §7).
    #[serde(with = "humantime_serde")]
    pub reply: Duration,
}

impl TimeoutsConfig {
    /// The timeouts that bound what a peer holds (every one but `drain`), by name, for the
    /// checks at load.
    pub fn per_session(&self) -> [(&'static str, Duration); 6] {
        [
            ("idle", self.idle),
            ("keep_alive", self.keep_alive),
            ("hello", self.hello),
            ("handshake", self.handshake),
            ("stream_open", self.stream_open),
            ("reply", self.reply),
        ]
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "[::]:4433".parse().expect("valid literal"),
            http: "127.0.0.1:8080".parse().expect("valid literal"),
            https: None,
            cert: None,
            key: None,
            cert_dir: PathBuf::from("certs"),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            transport: TransportSettings::default(),
            demo: true,
            ablation: AblationConfig::default(),
            namespaces: Vec::new(),
            nats: None,
            allowed_origins: Vec::new(),
            quotas: QuotasConfig::default(),
            api: ApiConfig::default(),
            rpc: crate::rpc::RpcConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame: quiver_proto::DEFAULT_MAX_FRAME as u32,
            max_payload: 60 * 1024,
            max_subscriptions: 256,
            commands_per_second: 200,
            abuse_factor: 3,
            subscriber_queue: 1024,
            session_queue_bytes: 8 << 20,
            max_sessions: 20_000,
            history_max_bytes: 256 * 1024 * 1024,
            history_tenant_max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            hello: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            stream_open: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            reply: Duration::from_secs(10),
        }
    }
}

/// The smallest `limits.max_frame` the server accepts (PROTOCOL.md §3): a `Refresh` carrying
/// the longest token the server takes (`transport::MAX_TOKEN_LEN`, 4,096 bytes) must fit in
/// one frame, or a client with such a token could never refresh it.
pub const MIN_MAX_FRAME: u32 = 8192;
/// quinn's timer granularity: a shorter ACK delay cannot be kept.
const MIN_CLIENT_ACK_DELAY: Duration = Duration::from_millis(1);
/// Past this a lost last packet waits too long for its retransmission (the probe timeout grows
/// by the ACK delay).
const MAX_CLIENT_ACK_DELAY: Duration = Duration::from_secs(1);

impl Config {
    /// Defaults, then the TOML file if given, then `QUIVER_*` variables (`__` separates nested
    /// keys: `QUIVER_LIMITS__MAX_FRAME=1024`; `QUIVER_JWT_SECRET` and `QUIVER_JWT_SECRET_FILE`
    /// are accepted as shorthands).
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, Box<figment::Error>> {
        // Variables no configuration can be loaded beside (`QUIVER_CONFIG`, a shorthand and
        // its own name both set): nothing else is worth reading first.
        check::refuse_env_mistakes().map_err(|e| Box::new(figment::Error::from(e)))?;
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let environment = Self::environment();
        // A secret from the environment replaces the file's secret in whichever form, as a
        // secret flag does (`quiver serve --jwt-secret`): one rule for every layer (outside
        // operations audit 2, S8: the environment's was refused as a second token key).
        let env_secret = environment.find_value("auth.jwt_secret").is_ok();
        let env_secret_file = environment.find_value("auth.jwt_secret_file").is_ok();
        figment = figment.merge(environment);
        let mut config: Config = figment.extract().map_err(Box::new)?;
        if env_secret && !env_secret_file {
            config.auth.jwt_secret_file = None;
        }
        if env_secret_file && !env_secret {
            config.auth.jwt_secret = None;
        }
        config
            .validate_loaded()
            .map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(config)
    }

    /// The `QUIVER_*` variables as a configuration layer. Only our own keys: other QUIVER_*
    /// variables (QUIVER_TOKEN for `quiver sub`, say) are not configuration.
    fn environment() -> Figment {
        Figment::new()
            .merge(Env::prefixed("QUIVER_").split("__").filter(|k| {
                let top = k.as_str().split('.').next().unwrap_or_default();
                TOP_LEVEL_KEYS
                    .iter()
                    .any(|key| key.eq_ignore_ascii_case(top))
            }))
            .merge(
                Env::raw()
                    .only(&["QUIVER_JWT_SECRET"])
                    .map(|_| "auth.jwt_secret".into()),
            )
            .merge(
                Env::raw()
                    .only(&["QUIVER_JWT_SECRET_FILE"])
                    .map(|_| "auth.jwt_secret_file".into()),
            )
    }

    /// The history policy of a room's namespace, if it keeps history.
    pub fn history(&self, room: &quiver_proto::RoomName) -> Option<&NamespaceConfig> {
        self.namespace(room).filter(|ns| ns.history_size > 0)
    }

    /// Whether a room's namespace tracks presence.
    pub fn presence(&self, room: &quiver_proto::RoomName) -> bool {
        self.namespace(room).is_some_and(|ns| ns.presence)
    }

    /// Whether a room's namespace delivers only the newest value (`mode = "latest"`).
    pub fn latest(&self, room: &quiver_proto::RoomName) -> bool {
        self.namespace(room)
            .is_some_and(|ns| ns.mode == DeliveryMode::Latest)
    }

    /// The send priority of a room's subscription stream (its namespace's, 0 if unlisted).
    pub fn priority(&self, room: &quiver_proto::RoomName) -> i32 {
        self.namespace(room).map_or(0, |ns| ns.priority)
    }

    fn namespace(&self, room: &quiver_proto::RoomName) -> Option<&NamespaceConfig> {
        self.namespaces
            .iter()
            .find(|ns| ns.name == room.namespace())
    }

    pub fn dev_mode(&self) -> bool {
        self.auth.key_sources() == 0
    }

    /// Settings that load and work but that an operator should hear about at start (and
    /// `config check`, failing with `--deny-warnings`): a production server whose
    /// `allowed_origins` is empty lets a page of any site open sessions with a user's token
    /// (outside audit 57, F2: `config init` promised this warning and none came). `["*"]` says
    /// so on purpose and is not warned about. A production server whose TCP port is not on
    /// loopback and has no `quotas.per_address.max_connections` is warned about too: one
    /// address's idle connections then take the TCP places kept for health checks and the
    /// backend API, and every new WebSocket and SSE session (outside audit 74: 264 of them
    /// locked every tenant out, renewable every `timeouts.handshake`).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.dev_mode()
            && self.quotas.per_address.max_connections == 0
            && !self.https.unwrap_or(self.listen).ip().is_loopback()
        {
            warnings.push(
                "quotas.per_address.max_connections is 0 (no limit): one address's idle \
                 connections can take every TCP place, health checks' and the backend API's \
                 included; set it (a proxy or load balancer many clients share goes in \
                 quotas.per_address.trusted as well)"
                    .into(),
            );
        }
        if !self.dev_mode() && self.allowed_origins.is_empty() {
            warnings.push(
                "allowed_origins is empty: a page of any site may open sessions with a user's \
                 token; list your application's origins (or [\"*\"] to allow every one on \
                 purpose)"
                    .into(),
            );
        }
        warnings
    }
}

#[cfg(test)]
mod tests;
