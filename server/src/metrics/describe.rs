//! What every series counts (its HELP text; the hot paths' three histograms have theirs in
//! `histogram.rs`), and the series registered at zero at start-up.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use super::*;

/// Every series an operator's dashboard queries exists from the start, at zero, so an idle
/// server's page is complete and `rate()` has a first sample. Series labelled by something only
/// traffic reveals (tenant, namespace) appear with their first use, except the label sets known
/// up front (transports, reasons; the commands' durations are always on the page,
/// `histogram.rs`).
pub(super) fn register_zeros() {
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "profile" => if cfg!(debug_assertions) { "debug" } else { "release" },
    )
    .set(1.0);
    for transport in crate::transport::Transport::ALL {
        let t = transport.label();
        metrics::gauge!(SESSIONS_ACTIVE, "transport" => t).set(0.0);
        metrics::counter!(SESSIONS_OPENED, "transport" => t).absolute(0);
        metrics::counter!(SESSIONS_REOPENED, "transport" => t).absolute(0);
        let close_labels = quiver_proto::CloseCode::ALL.iter().map(|c| c.label());
        for reason in GONE_REASONS.into_iter().chain(close_labels) {
            metrics::counter!(SESSIONS_CLOSED, "transport" => t, "reason" => reason).absolute(0);
        }
        for reason in REFUSED_REASONS {
            metrics::counter!(SESSIONS_REFUSED, "transport" => t, "reason" => reason).absolute(0);
        }
    }
    for reason in CONTROL_REFUSED_REASONS {
        metrics::counter!(CONTROL_REFUSED, "reason" => reason).absolute(0);
    }
    for reason in NATS_DROPPED_REASONS {
        metrics::counter!(NATS_DROPPED, "reason" => reason).absolute(0);
    }
    for listener in ["http", "https"] {
        for reason in CONNECTION_REFUSED_REASONS {
            metrics::counter!(CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason)
                .absolute(0);
        }
    }
    metrics::counter!(QUIC_RETRIES).absolute(0);
    metrics::gauge!(SUBSCRIPTIONS_ACTIVE).set(0.0);
    for name in [
        PUBLICATIONS,
        COMMANDS,
        DELIVERY_BYTES,
        PRESENCE_TRUNCATED,
        API_IDEMPOTENT_REPEATS,
        TLS_RELOAD_FAILURES,
        DATAGRAMS_SENT,
        DATAGRAMS_RECEIVED,
        LATEST_CONFLATED,
        LATEST_ON_STREAM,
        REVOCATION_LOADS,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for code in quiver_proto::ErrorCode::ALL {
        metrics::counter!(COMMANDS_REFUSED, "code" => code.label()).absolute(0);
    }
    for code in crate::api::Code::ALL {
        metrics::counter!(API_REFUSALS, "code" => code.label()).absolute(0);
    }
    for outcome in ["loaded", "failed"] {
        metrics::counter!(JWKS_RELOADS, "outcome" => outcome).absolute(0);
    }
    for reason in [
        "slow_consumer",
        "broker_slow_consumer",
        "broker_gap",
        "latest_event",
    ] {
        metrics::counter!(DELIVERIES_DROPPED, "reason" => reason).absolute(0);
    }
    metrics::counter!(PUBLICATIONS_DROPPED, "reason" => "broker_unavailable").absolute(0);
    for reason in DATAGRAM_DROP_REASONS {
        metrics::counter!(DATAGRAMS_DROPPED, "reason" => reason).absolute(0);
    }
    for reason in ["tenant_budget", "global_budget"] {
        metrics::counter!(HISTORY_EVICTED, "reason" => reason).absolute(0);
    }
    metrics::gauge!(HISTORY_BYTES).set(0.0);
    metrics::gauge!(NATS_CONNECTED).set(0.0);
    metrics::counter!(NATS_RECONNECTS).absolute(0);
    for connection in NATS_CONNECTIONS {
        metrics::counter!(NATS_DISCONNECTS, "connection" => connection).absolute(0);
        metrics::counter!(NATS_SLOW_CONSUMER, "connection" => connection).absolute(0);
    }
    crate::rpc::register_zeros();
    crate::tls_resumption::register_metrics();
    crate::udp_socket::register_metrics();
    // Histograms show their `_count` at zero once touched; these have no labels to wait for.
    for name in [
        QUIC_RTT,
        QUIC_LOST_PACKETS,
        QUIC_CONGESTION_EVENTS,
        JETSTREAM_PUBLISH_DURATION,
    ] {
        let _ = metrics::histogram!(name);
    }
}

pub(super) fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say which build runs (crate version, debug or release profile)"
    );
    describe_gauge!(SESSIONS_ACTIVE, "Open sessions on this node, by transport");
    describe_gauge!(
        TLS_CERT_EXPIRY,
        "The served certificate's notAfter, in Unix seconds (set at start and at every reload): \
         alert on it minus time() falling below a few days"
    );
    describe_gauge!(
        SUBSCRIPTIONS_ACTIVE,
        "Active subscriptions over all sessions on this node"
    );
    describe_counter!(SESSIONS_OPENED, "Sessions accepted, by transport");
    describe_counter!(
        SESSIONS_REOPENED,
        "Sessions opened by a user (tenant and user id) who had another session open or closed \
         on this node within the last minute: a proxy for reconnect frequency (a user with two \
         tabs counts too; a reconnect that lands on another node does not)"
    );
    describe_counter!(
        SESSIONS_REFUSED,
        "Session requests refused before a session existed (bad path, origin, capacity, address \
         limits, handshake, token), by transport and reason"
    );
    describe_counter!(
        NATS_DROPPED,
        "Messages on a tenant's NATS subjects this node dropped, by reason: oversized (a room's \
         message over max_payload, an event over max_frame), not_an_event (on a room's events \
         subject, not one whole Joined or Left frame of the room), stray_reply (a reply no \
         request of this node waits for: late, or not ours). Quiver sends none of the first \
         two: something else publishes on the tenant's subjects"
    );
    describe_counter!(
        CONTROL_REFUSED,
        "Control messages from NATS (disconnect, revoke, unsubscribe) this node refused, by \
         reason: malformed, or other_tenant (a revocation for another tenant's key)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "TCP connections refused before their first request, by listener (http, https) and \
         reason: unavailable (server at max_sessions plus headroom, or at what the descriptor \
         limit leaves), address_limit, accept_failed (an accept that failed, out of \
         descriptors), request_timeout (no whole request head within timeouts.handshake), \
         tls_handshake and tls_handshake_timeout (https: a failed or unfinished TLS handshake)"
    );
    describe_counter!(
        QUIC_RETRIES,
        "QUIC connections asked to prove their source address with a Retry before they count: \
         every unproven one whose address has per-address limits, and every one while many \
         handshakes are in progress"
    );
    describe_counter!(
        SESSIONS_CLOSED,
        "Sessions ended, by transport and reason: client_closed (the client left), idle_timeout, \
         connection_lost, server_closed, or the close code the server sent (shutdown, \
         protocol_error, token_expired, rate_abuse, over_quota, disconnected, ...)"
    );
    describe_counter!(
        PUBLICATIONS,
        "Publications accepted from clients and the backend API on this node"
    );
    describe_counter!(
        HUB_PUBLICATIONS,
        "Publications that reached this node's hub for fan-out (from local publishers or from \
         the broker), by namespace (configured namespaces by name, the rest as other)"
    );
    describe_counter!(
        DELIVERIES,
        "Frames (publications, presence events) queued to local subscribers, by namespace"
    );
    describe_counter!(
        DELIVERY_BYTES,
        Unit::Bytes,
        "Bytes of subscription frames (replays and live deliveries) handed to subscribers' \
         streams or connections, each byte once"
    );
    // Delivery latency, command duration and broker lag: `histogram.rs` (help text too).
    describe_counter!(
        DELIVERIES_DROPPED,
        "Deliveries dropped, by reason (slow_consumer: one per subscription ended as a slow \
         consumer, its queue overflowed or its stream took nothing for timeouts.reply, the \
         frames still queued for it not counted one by one; \
         broker_slow_consumer: one per message NATS dropped to this node; broker_gap: one per \
         history publication this node's consumer never got, its rooms' subscriptions then \
         ended with 117; latest_event: one per room event a latest subscriber's full queue had \
         no room for)"
    );
    describe_counter!(COMMANDS, "Commands received from clients");
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
        "Values of latest rooms on a WebTransport session sent on the stream (too large for a \
         datagram)"
    );
    describe_counter!(COMMANDS_REFUSED, "Commands refused, by error code");
    describe_counter!(
        RESUMES_REQUESTED,
        "Subscriptions that asked to resume from a position, by namespace"
    );
    describe_counter!(
        RESUMES,
        "Resumes answered, by namespace and result (recovered: every publication since the \
         position was replayed; failed: the position was too old or the broker could not tell)"
    );
    describe_counter!(
        PUBLICATIONS_DROPPED,
        "Publications refused or lost because the broker was unavailable, by reason"
    );
    describe_counter!(
        PRESENCE_TRUNCATED,
        "Presence replies cut short to fit the frame limit"
    );
    describe_gauge!(
        PRESENCE_ENTRIES,
        "Cluster presence entries this instance holds and refreshes (one per present member and \
         room)"
    );
    describe_gauge!(
        PRESENCE_REFRESH_SECONDS,
        Unit::Seconds,
        "How long this instance's last refresh of its cluster presence entries took (0 with none \
         to refresh); past nats.presence_ttl, entries expire while their members are present"
    );
    describe_counter!(
        TLS_RELOAD_FAILURES,
        "Certificate reloads refused (a pair that does not load, or a certificate expired or not \
         yet valid): the old certificate is still served"
    );
    describe_counter!(
        JWKS_RELOADS,
        "Token key-set (JWKS) reloads by outcome: loaded, or failed (the old keys kept)"
    );
    describe_counter!(
        API_REFUSALS,
        "Backend API requests refused, by the error's code (unauthorized: no valid API key or token)"
    );
    describe_counter!(
        API_IDEMPOTENT_REPEATS,
        "Backend API publications not published again: the Idempotency-Key was seen (answered \
         with the first position)"
    );
    describe_gauge!(
        HISTORY_BYTES,
        Unit::Bytes,
        "Bytes of history held by the memory broker"
    );
    describe_counter!(
        HISTORY_EVICTED,
        "Publications evicted from memory history before their time, by reason"
    );
    describe_gauge!(
        TENANT_SESSIONS,
        "Open sessions by tenant (the first quotas.max_tenant_labels tenants; the rest as other)"
    );
    describe_gauge!(
        TENANT_SUBSCRIPTIONS,
        "Active subscriptions by tenant (labelled as tenant sessions are)"
    );
    describe_counter!(
        TENANT_PUBLICATIONS,
        "Client publications accepted, by tenant (labelled as tenant sessions are)"
    );
    describe_counter!(
        TENANT_DELIVERIES,
        "Frames queued to local subscribers, by the room's tenant (labelled as tenant sessions \
         are)"
    );
    describe_counter!(
        QUOTA_REFUSALS,
        "Sessions, subscriptions and publications refused by a tenant quota, by tenant and quota"
    );
    describe_histogram!(
        QUIC_RTT,
        Unit::Seconds,
        "Smoothed round-trip time of a WebTransport session's QUIC path, sampled as it closes"
    );
    describe_histogram!(
        QUIC_LOST_PACKETS,
        "Packets a WebTransport session's QUIC connection declared lost over its life, one \
         sample per session"
    );
    describe_histogram!(
        QUIC_CONGESTION_EVENTS,
        "Congestion events of a WebTransport session's QUIC connection over its life, one \
         sample per session"
    );
    describe_gauge!(
        NATS_CONNECTED,
        "1 while this node's broker connection to NATS is up, 0 otherwise (and without NATS)"
    );
    describe_counter!(
        NATS_RECONNECTS,
        "Times this node's broker connection to NATS came back after a loss"
    );
    describe_counter!(
        NATS_DISCONNECTS,
        "Times each of this node's NATS connections (broker, control, rpc) was lost (a NATS \
         outage, or nats-server dropping it as a slow consumer)"
    );
    describe_counter!(
        NATS_SLOW_CONSUMER,
        "Messages one of this node's NATS subscriptions dropped because it was full (the \
         client's slow consumer: this node read slower than NATS delivered), by connection \
         (broker: rooms' publications and events, history consumers; control: cluster-wide \
         disconnects, unsubscribes, revocations; rpc: replies). A flood is undercounted: the \
         NATS client queues at most 128 such reports and drops the rest"
    );
    describe_counter!(
        REVOCATION_LOADS,
        "Loads of the revocations stored in NATS (the quiver_revoked bucket, read whole) this \
         node began: at start, after each reconnect of its control connection, and after its \
         revocation subscription dropped messages (at most once a second, backing off to once \
         every 30 s while drops keep coming); a failed load is tried again and counted again"
    );
    describe_histogram!(
        JETSTREAM_PUBLISH_DURATION,
        Unit::Seconds,
        "Time for JetStream to store a history room's publication and acknowledge it"
    );
    crate::rpc::describe();
    describe_gauge!(
        JETSTREAM_CONSUMER_PENDING,
        "Messages JetStream still holds for this node's history consumers, by namespace: \
         the largest backlog among the namespace's live consumers, updated once a second"
    );
}
