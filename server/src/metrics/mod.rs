//! Metric names in one place. They are part of the operator-facing interface: keep them stable.
//! What each counts is its HELP text (`describe.rs`); every series an idle server can show is
//! registered at zero there too. `labels.rs` holds the bounded label sets (namespaces) and the
//! handles the hot paths keep, so a delivery costs no registry lookup. The three histograms the
//! hot paths record into are `histogram.rs`'s own (help text included), not the recorder's.

mod describe;
mod histogram;
pub mod labels;
pub mod reconnects;
pub mod tally;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use labels::{hot, FanOut, Namespaces};
pub use reconnects::RecentUsers;
pub use tally::Tally;

pub const SESSIONS_ACTIVE: &str = "quiver_sessions_active";
pub const SUBSCRIPTIONS_ACTIVE: &str = "quiver_subscriptions_active";
pub const SESSIONS_OPENED: &str = "quiver_sessions_opened_total";
pub const SESSIONS_REFUSED: &str = "quiver_sessions_refused_total";
pub const CONNECTIONS_REFUSED: &str = "quiver_connections_refused_total";
pub const QUIC_RETRIES: &str = "quiver_quic_retries_total";
pub const SESSIONS_CLOSED: &str = "quiver_sessions_closed_total";
pub const PUBLICATIONS: &str = "quiver_publications_total";
pub const DELIVERIES: &str = "quiver_deliveries_total";
pub const DELIVERIES_DROPPED: &str = "quiver_deliveries_dropped_total";
pub const COMMANDS: &str = "quiver_commands_total";
pub const COMMANDS_REFUSED: &str = "quiver_commands_refused_total";
pub const PUBLICATIONS_DROPPED: &str = "quiver_publications_dropped_total";
pub const PRESENCE_TRUNCATED: &str = "quiver_presence_truncated_total";
/// Seconds the last refresh of this instance's cluster presence entries took (one JetStream
/// put each, every third of `nats.presence_ttl`): past that third, entries can expire while
/// their members are present.
pub const PRESENCE_REFRESH_SECONDS: &str = "quiver_presence_refresh_seconds";
/// Cluster presence entries this instance holds (and refreshes).
pub const PRESENCE_ENTRIES: &str = "quiver_presence_entries";
/// Token key-set (JWKS) reloads by `outcome` (`loaded`, `failed`).
pub const JWKS_RELOADS: &str = "quiver_jwks_reloads_total";
/// Backend API requests refused, by `code` (`api::error::Code`): a wrong key shows as
/// `unauthorized` (outside audit 55, L7: 1,000 guessed keys left no trace).
pub const API_REFUSALS: &str = "quiver_api_refusals_total";
/// Backend API publications answered from an earlier request's `Idempotency-Key`.
pub const API_IDEMPOTENT_REPEATS: &str = "quiver_api_idempotent_repeats_total";
pub const HISTORY_BYTES: &str = "quiver_history_bytes";
pub const TLS_CERT_EXPIRY: &str = "quiver_tls_certificate_expiry_timestamp_seconds";
/// Certificate reloads refused (a pair that does not load, or a certificate outside its
/// validity): the old certificate is still served.
pub const TLS_RELOAD_FAILURES: &str = "quiver_tls_reload_failures_total";
pub const HISTORY_EVICTED: &str = "quiver_history_evicted_total";
pub const TENANT_SESSIONS: &str = "quiver_tenant_sessions";
pub const TENANT_SUBSCRIPTIONS: &str = "quiver_tenant_subscriptions";
pub const TENANT_PUBLICATIONS: &str = "quiver_tenant_publications_total";
pub const QUOTA_REFUSALS: &str = "quiver_quota_refusals_total";
pub const BUILD_INFO: &str = "quiver_build_info";
pub const DELIVERY_LATENCY: &str = "quiver_delivery_latency_seconds";
pub const DELIVERY_BYTES: &str = "quiver_delivery_bytes_total";
pub const HUB_PUBLICATIONS: &str = "quiver_hub_publications_total";
pub const COMMAND_DURATION: &str = "quiver_command_duration_seconds";
pub const BROKER_LAG: &str = "quiver_broker_lag_seconds";
pub const RESUMES_REQUESTED: &str = "quiver_resumes_requested_total";
pub const RESUMES: &str = "quiver_resumes_total";
pub const SESSIONS_REOPENED: &str = "quiver_sessions_reopened_total";
pub const QUIC_RTT: &str = "quiver_quic_rtt_seconds";
pub const QUIC_LOST_PACKETS: &str = "quiver_quic_lost_packets";
pub const QUIC_CONGESTION_EVENTS: &str = "quiver_quic_congestion_events";
pub const NATS_CONNECTED: &str = "quiver_nats_connected";
pub const NATS_RECONNECTS: &str = "quiver_nats_reconnects_total";
pub const NATS_DISCONNECTS: &str = "quiver_nats_disconnects_total";
/// The `connection` label of [`NATS_DISCONNECTS`] and [`NATS_SLOW_CONSUMER`]: an instance's
/// three NATS connections.
pub const NATS_CONNECTIONS: [&str; 3] = ["broker", "control", "rpc"];
/// Messages a NATS subscription of this node dropped because it was full (async-nats's
/// client-side slow consumer), by `connection` ([`NATS_CONNECTIONS`]).
pub const NATS_SLOW_CONSUMER: &str = "quiver_nats_slow_consumer_total";
/// Loads of the stored revocations (`revocation.rs`) this node began.
pub const REVOCATION_LOADS: &str = "quiver_revocation_loads_total";
pub const JETSTREAM_PUBLISH_DURATION: &str = "quiver_jetstream_publish_duration_seconds";
pub const JETSTREAM_CONSUMER_PENDING: &str = "quiver_jetstream_consumer_pending";
pub const TENANT_DELIVERIES: &str = "quiver_tenant_deliveries_total";
pub const DATAGRAMS_SENT: &str = "quiver_datagrams_sent_total";
pub const DATAGRAMS_RECEIVED: &str = "quiver_datagrams_received_total";
pub const DATAGRAMS_DROPPED: &str = "quiver_datagrams_dropped_total";
/// Control messages from NATS this node refused, by reason ([`CONTROL_REFUSED_REASONS`]).
pub const CONTROL_REFUSED: &str = "quiver_control_messages_refused_total";
pub const CONTROL_REFUSED_REASONS: [&str; 2] = ["malformed", "other_tenant"];
/// Messages on a tenant's NATS subjects this node dropped, by reason
/// ([`NATS_DROPPED_REASONS`]): what only something else than Quiver publishes there.
pub const NATS_DROPPED: &str = "quiver_nats_messages_dropped_total";
pub const NATS_DROPPED_REASONS: [&str; 3] = ["oversized", "not_an_event", "stray_reply"];
pub const LATEST_CONFLATED: &str = "quiver_latest_conflated_total";
pub const LATEST_ON_STREAM: &str = "quiver_latest_on_stream_total";

/// Counts a client datagram dropped unpublished, by reason ([`DATAGRAM_DROP_REASONS`]).
pub fn datagram_dropped(reason: &'static str) {
    metrics::counter!(DATAGRAMS_DROPPED, "reason" => reason).increment(1);
}

/// Every `reason` of [`DATAGRAMS_DROPPED`] (PROTOCOL.md §10): the refusals a `Publish` can meet,
/// and the datagram's own ones.
pub const DATAGRAM_DROP_REASONS: [&str; 14] = [
    "rate_limited",
    "malformed",
    "not_latest",
    "invalid_room",
    "permission_denied",
    "payload_too_large",
    "quota_exceeded",
    "before_session",
    "before_hello",
    "busy",
    "unavailable",
    "superseded",
    "refreshed",
    "session_ended",
];

/// Every `reason` of [`SESSIONS_CLOSED`] that is not a [`quiver_proto::CloseCode`] label: the
/// client's own leaving, told apart so that a dashboard's "dropped connections" is honest.
/// `client_closed`: the client closed its session, connection or control stream on purpose;
/// `idle_timeout`: nothing (not even a keep-alive answer) arrived for `timeouts.idle`;
/// `connection_lost`: the transport failed otherwise (reset, I/O error);
/// `server_closed`: the server closed the connection outside the session core.
pub const GONE_REASONS: [&str; 4] = [
    "client_closed",
    "idle_timeout",
    "connection_lost",
    "server_closed",
];

/// Every `reason` of [`CONNECTIONS_REFUSED`]: a TCP connection refused at `accept`, before any
/// request (so before it is known to be WebSocket, SSE or the API); `accept_failed` counts
/// failed `accept`s (out of descriptors), each a connection left waiting in the backlog;
/// `tls_handshake` and `tls_handshake_timeout` a TLS handshake on the `https` listener that
/// failed (plain HTTP, a certificate the client refused, garbage) or did not finish within
/// `timeouts.handshake` (outside audit 55, L1: counted nowhere).
pub const CONNECTION_REFUSED_REASONS: [&str; 6] = [
    "unavailable",
    "address_limit",
    "accept_failed",
    "request_timeout",
    "tls_handshake",
    "tls_handshake_timeout",
];

/// Every `reason` of [`SESSIONS_REFUSED`]: the adapters' checks before a token is read, then
/// the token's refusals (`crate::auth::AuthError::label`). `bad_request`: an SSE request
/// refused 400 (a bad room list, `Last-Event-ID` or reconnect; PROTOCOL.md §9.3).
pub const REFUSED_REASONS: [&str; 13] = [
    "bad_request",
    "not_found",
    "unavailable",
    "origin",
    "token_too_large",
    "address_limit",
    "capacity",
    "handshake",
    "handshake_timeout",
    "token_missing",
    "token_expired",
    "token_invalid",
    "token_claims",
];

/// Bucket bounds of the latency histograms, in seconds: from a fast loopback delivery (tens of
/// microseconds) to a stalled one.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Bucket bounds of the per-session QUIC event counts (lost packets, congestion events).
const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0, 10_000.0,
];

/// How often histogram samples are folded into their buckets between scrapes: samples are kept
/// one by one until then, so this bounds their memory when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(2);

/// The process-wide Prometheus recorder. The `metrics` facade has one global recorder, so every
/// server in a process (tests start several) shares it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; the page then holds only
            // `histogram.rs`'s histograms.
            let _ = metrics::set_global_recorder(recorder);
            describe::describe();
            describe::register_zeros();
            let upkeep = handle.clone();
            // A thread, not a task: the recorder outlives any one runtime (tests start many).
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                });
            handle
        })
        .clone()
}

fn builder() -> PrometheusBuilder {
    // The hot paths' latency histograms are `histogram.rs`'s, not the recorder's.
    let latency = [QUIC_RTT, JETSTREAM_PUBLISH_DURATION];
    let counts = [QUIC_LOST_PACKETS, QUIC_CONGESTION_EVENTS];
    let mut builder = PrometheusBuilder::new();
    for (names, buckets) in [
        (&latency[..], LATENCY_BUCKETS),
        (&counts[..], COUNT_BUCKETS),
    ] {
        for name in names {
            builder = builder
                .set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
                .expect("bucket lists are non-empty constants");
        }
    }
    builder
}

/// The `/metrics` page: the process's own figures are read now, then everything is rendered.
pub fn render() -> String {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    let handle = handle();
    PROCESS
        .get_or_init(|| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
    // Counted by the vendored wtransport's driver, which keeps one datagram of a connection
    // until its session reads them (PATCHES.md 11): read into the counter as the page is made.
    metrics::counter!(DATAGRAMS_DROPPED, "reason" => "before_session")
        .absolute(wtransport::datagrams_dropped_unread());
    let mut page = handle.render();
    histogram::render(&mut page);
    page
}

/// One WebTransport session's QUIC path, sampled as it closes: its smoothed RTT, and the packets
/// lost and congestion events over its life.
pub fn sample_quic_path(path: &wtransport::quinn::PathStats) {
    metrics::histogram!(QUIC_RTT).record(path.rtt.as_secs_f64());
    metrics::histogram!(QUIC_LOST_PACKETS).record(path.lost_packets as f64);
    metrics::histogram!(QUIC_CONGESTION_EVENTS).record(path.congestion_events as f64);
}
