//! Metric names in one place. They are part of the operator-facing interface: keep them stable.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const SESSIONS_ACTIVE: &str = "quiver_sessions_active";
pub const SUBSCRIPTIONS_ACTIVE: &str = "quiver_subscriptions_active";
pub const SESSIONS_OPENED: &str = "quiver_sessions_opened_total";
pub const SESSIONS_REFUSED: &str = "quiver_sessions_refused_total";
pub const SESSIONS_CLOSED: &str = "quiver_sessions_closed_total";
pub const PUBLICATIONS: &str = "quiver_publications_total";
pub const DELIVERIES: &str = "quiver_deliveries_total";
pub const DELIVERIES_DROPPED: &str = "quiver_deliveries_dropped_total";
pub const COMMANDS: &str = "quiver_commands_total";
pub const COMMANDS_REFUSED: &str = "quiver_commands_refused_total";
pub const PUBLICATIONS_DROPPED: &str = "quiver_publications_dropped_total";
pub const PRESENCE_TRUNCATED: &str = "quiver_presence_truncated_total";
pub const HISTORY_BYTES: &str = "quiver_history_bytes";
pub const HISTORY_EVICTED: &str = "quiver_history_evicted_total";
pub const TENANT_SESSIONS: &str = "quiver_tenant_sessions";
pub const TENANT_SUBSCRIPTIONS: &str = "quiver_tenant_subscriptions";
pub const TENANT_PUBLICATIONS: &str = "quiver_tenant_publications_total";
pub const QUOTA_REFUSALS: &str = "quiver_quota_refusals_total";
pub const BUILD_INFO: &str = "quiver_build_info";
pub const DATAGRAMS_SENT: &str = "quiver_datagrams_sent_total";
pub const DATAGRAMS_RECEIVED: &str = "quiver_datagrams_received_total";
pub const DATAGRAMS_DROPPED: &str = "quiver_datagrams_dropped_total";
pub const LATEST_CONFLATED: &str = "quiver_latest_conflated_total";
pub const LATEST_ON_STREAM: &str = "quiver_latest_on_stream_total";

/// The process-wide Prometheus recorder. The `metrics` facade has one global recorder, so every
/// server in a process (tests start several) shares it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; we then render an empty page.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            register_zeros();
            handle
        })
        .clone()
}

/// Every series an operator's dashboard queries exists from the start, at zero, so an idle
/// server's page is complete and `rate()` has a first sample.
fn register_zeros() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for transport in crate::transport::Transport::ALL {
        let t = transport.label();
        metrics::gauge!(SESSIONS_ACTIVE, "transport" => t).set(0.0);
        metrics::counter!(SESSIONS_OPENED, "transport" => t).absolute(0);
    }
    metrics::gauge!(SUBSCRIPTIONS_ACTIVE).set(0.0);
    for name in [PUBLICATIONS, DELIVERIES, COMMANDS] {
        metrics::counter!(name).absolute(0);
    }
    metrics::counter!(DELIVERIES_DROPPED, "reason" => "slow_consumer").absolute(0);
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
    describe_gauge!(SESSIONS_ACTIVE, "Open WebTransport sessions");
    describe_gauge!(
        SUBSCRIPTIONS_ACTIVE,
        "Active subscriptions over all sessions"
    );
    describe_counter!(SESSIONS_OPENED, "Sessions accepted");
    describe_counter!(SESSIONS_REFUSED, "CONNECT requests refused, by reason");
    describe_counter!(SESSIONS_CLOSED, "Sessions ended, by reason");
    describe_counter!(PUBLICATIONS, "Publications accepted from clients");
    describe_counter!(DELIVERIES, "Publications queued to subscribers");
    describe_counter!(DELIVERIES_DROPPED, "Publications dropped, by reason");
    describe_counter!(COMMANDS, "Commands received");
    describe_counter!(COMMANDS_REFUSED, "Commands refused, by error code");
    describe_counter!(
        PUBLICATIONS_DROPPED,
        "Publications refused or lost because the broker was unavailable, by reason"
    );
    describe_counter!(
        PRESENCE_TRUNCATED,
        "Presence replies cut short to fit the frame limit"
    );
    describe_gauge!(HISTORY_BYTES, "Bytes of history held by the memory broker");
    describe_counter!(
        HISTORY_EVICTED,
        "Publications evicted from memory history before their time, by reason"
    );
    describe_gauge!(
        TENANT_SESSIONS,
        "Open sessions by tenant (the first quotas.max_tenant_labels tenants; the rest as other)"
    );
    describe_gauge!(TENANT_SUBSCRIPTIONS, "Active subscriptions by tenant");
    describe_counter!(
        TENANT_PUBLICATIONS,
        "Client publications accepted, by tenant"
    );
    describe_counter!(
        QUOTA_REFUSALS,
        "Sessions, subscriptions and publications refused by a tenant quota, by tenant and quota"
    );
    describe_counter!(
        DATAGRAMS_SENT,
        "Values of latest rooms sent as QUIC datagrams"
    );
    describe_counter!(
        DATAGRAMS_RECEIVED,
        "Datagrams received from clients (publications to latest rooms)"
    );
    describe_counter!(
        DATAGRAMS_DROPPED,
        "Client datagrams dropped unpublished, by reason"
    );
    describe_counter!(
        LATEST_CONFLATED,
        "Values of latest rooms replaced by a newer one before they were sent"
    );
    describe_counter!(
        LATEST_ON_STREAM,
        "Values of latest rooms on a WebTransport session sent on the stream (too large for a datagram)"
    );
}
