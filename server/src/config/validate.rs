//! What the types cannot check: limits that must fit together, values in range, and that what
//! must be given was given. Every problem is collected, so `config check` names them all at
//! once (the mistakes a file can make while still loading are in `mistakes.rs`).

use std::time::Duration;

use super::{
    Config, DeliveryMode, MAX_CLIENT_ACK_DELAY, MAX_NAMESPACE_PRIORITY, MIN_CLIENT_ACK_DELAY,
    MIN_MAX_FRAME,
};

/// Largest `limits.subscriber_queue` (2^20 frames).
pub const MAX_SUBSCRIBER_QUEUE: usize = 1 << 20;
/// Shortest `nats.presence_ttl`: entries are refreshed every third of it, one JetStream put
/// each, so a shorter one costs more than it tells.
pub const MIN_PRESENCE_TTL: Duration = Duration::from_secs(3);
/// Longest `nats.presence_ttl`: a killed instance's members stay listed that long.
pub const MAX_PRESENCE_TTL: Duration = Duration::from_secs(3600);
/// Most copies of a stream JetStream keeps (`nats.replicas`): nats-server refuses more than 5.
pub const MAX_REPLICAS: usize = 5;

impl Config {
    /// Checks what the types cannot: limits that must fit together, and that what must be
    /// given was given. Run it once the command-line flags are applied too.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = self.loaded_problems();
        if let Some(nats) = &self.nats {
            if nats.url.trim().is_empty() {
                problems.push(
                    "nats.url is missing: set it in [nats], QUIVER_NATS__URL or --nats".into(),
                );
            } else if let Err(e) = nats.connect_urls() {
                problems.push(e.to_string());
            }
        }
        if let Err(e) = self.refuse_listener_mistakes() {
            problems.push(e);
        }
        if let Err(e) = self.refuse_hooks_without_backend() {
            problems.push(e);
        }
        all_of(problems)
    }

    /// Like [`Self::validate`], without the checks a later command-line flag can still
    /// satisfy (`--nats` gives `nats.url`).
    pub(super) fn validate_loaded(&self) -> Result<(), String> {
        all_of(self.loaded_problems())
    }

    /// Every problem [`Self::validate_loaded`] finds, so an operator mends them in one go.
    fn loaded_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let l = &self.limits;
        // Replies the server does not split (an `Error` with a backend's 512-byte reason, a
        // `Goodbye`, `Welcome`) must fit one frame, whatever the operator chose.
        if l.max_frame < MIN_MAX_FRAME {
            problems.push(format!(
                "limits.max_frame ({}) must be at least {MIN_MAX_FRAME}",
                l.max_frame
            ));
        }
        if l.max_frame > quiver_proto::MAX_MAX_FRAME {
            problems.push(format!(
                "limits.max_frame ({}) must be at most {} (16 MiB): clients refuse larger frames",
                l.max_frame,
                quiver_proto::MAX_MAX_FRAME
            ));
        }
        // A publication's frame adds the room name and a little framing to the payload.
        let overhead = quiver_proto::room::MAX_ROOM_LEN as u32 + 64;
        if l.max_payload.saturating_add(overhead) > l.max_frame {
            problems.push(format!(
                "limits.max_payload ({}) plus {overhead} bytes of framing must fit in limits.max_frame ({})",
                l.max_payload, l.max_frame
            ));
        }
        if l.history_tenant_max_bytes > l.history_max_bytes {
            problems.push(format!(
                "limits.history_tenant_max_bytes ({}) must not exceed limits.history_max_bytes ({})",
                l.history_tenant_max_bytes, l.history_max_bytes
            ));
        }
        if l.session_queue_bytes < l.max_frame as usize {
            problems.push(format!(
                "limits.session_queue_bytes ({}) must be at least limits.max_frame ({}): a frame that large could never be queued",
                l.session_queue_bytes, l.max_frame
            ));
        }
        let ack_delay = self.transport.client_ack_delay;
        if !ack_delay.is_zero()
            && !(MIN_CLIENT_ACK_DELAY..=MAX_CLIENT_ACK_DELAY).contains(&ack_delay)
        {
            problems.push(format!(
                "transport.client_ack_delay ({ack_delay:?}) must be 0 (off) or between \
                 {MIN_CLIENT_ACK_DELAY:?} and {MAX_CLIENT_ACK_DELAY:?}"
            ));
        }
        // Each subscription's queue is a channel of this many places: past tokio's bound on a
        // channel (`usize::MAX >> 3`) every Subscribe panicked after taking its tenant's
        // quota, leaking the tenant's subscription count until all were refused (outside audit
        // 105, F5). Far below that, a room that lets a million frames wait per subscriber has
        // stopped being a queue; `session_queue_bytes` bounds the bytes anyway.
        if l.subscriber_queue > MAX_SUBSCRIBER_QUEUE {
            problems.push(format!(
                "limits.subscriber_queue ({}) must be at most {MAX_SUBSCRIBER_QUEUE}",
                l.subscriber_queue
            ));
        }
        if l.commands_per_second == 0
            || l.max_subscriptions == 0
            || l.subscriber_queue == 0
            || l.max_sessions == 0
        {
            problems.push(
                "limits.commands_per_second, max_subscriptions, subscriber_queue and max_sessions \
                 must be positive"
                    .into(),
            );
        }
        // Each named on its own: 0 was taken and then read as 1 (abuse_factor,
        // udp_burst_handshakes) or refused every non-empty publication and call as too large
        // (max_payload), with "configuration OK" (outside audit 116, F10).
        for (name, value) in [
            ("limits.abuse_factor", u64::from(l.abuse_factor)),
            ("limits.max_payload", u64::from(l.max_payload)),
            (
                "transport.udp_burst_handshakes",
                self.transport.udp_burst_handshakes as u64,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        // 0 is no timeout to a QUIC or NATS user, and an immediate one here: refused rather
        // than a server that closes every session at once (timeouts.drain: mistakes.rs).
        for (name, value) in self.timeouts.per_session() {
            if value.is_zero() {
                problems.push(format!(
                    "timeouts.{name} must be positive (there is no way to turn it off)"
                ));
            }
        }
        for ns in &self.namespaces {
            if ns.name.is_empty()
                || ns.name.contains('.')
                || quiver_proto::RoomName::parse(&ns.name).is_err()
            {
                problems.push(format!(
                    "namespaces: {:?} is not a namespace (one room-name token)",
                    ns.name
                ));
            }
            if ns.name == crate::metrics::labels::OTHER {
                problems.push(format!(
                    "namespaces: {:?} is reserved: it is the metrics label of rooms outside every \
                     configured namespace",
                    ns.name
                ));
            }
            if ns.mode == DeliveryMode::Latest && ns.history_size > 0 {
                problems.push(format!(
                    "namespaces: {:?} delivers `latest` and keeps no history: drop history_size",
                    ns.name
                ));
            }
            // Under a second a publication is gone before a reconnecting client can ask for it:
            // positions handed out, recovery always failed (outside audit 58, F3: 0s was
            // taken, and JetStream reads a max_age of 0 as "for ever" besides).
            if ns.history_size > 0 && ns.history_ttl < std::time::Duration::from_secs(1) {
                problems.push(format!(
                    "namespaces: {:?} keeps history (history_size {}) for {} ms: history_ttl must \
                     be at least 1s (how long a publication stays, e.g. \"10m\")",
                    ns.name,
                    ns.history_size,
                    ns.history_ttl.as_millis()
                ));
            }
            if ns.priority.abs() > MAX_NAMESPACE_PRIORITY {
                problems.push(format!(
                    "namespaces: {:?} priority {} is outside -{MAX_NAMESPACE_PRIORITY}..={MAX_NAMESPACE_PRIORITY}",
                    ns.name, ns.priority
                ));
            }
        }
        if let Some(nats) = &self.nats {
            if !matches!(nats.storage.as_str(), "memory" | "file") {
                problems.push(format!(
                    "nats.storage must be memory or file, not {:?}",
                    nats.storage
                ));
            }
            // Entries are refreshed every third of it, and a bucket's age limit of 0 means none:
            // 0 stopped the refresh and kept a killed instance's members listed for good
            // (outside audit 101, F2).
            if !(MIN_PRESENCE_TTL..=MAX_PRESENCE_TTL).contains(&nats.presence_ttl) {
                problems.push(format!(
                    "nats.presence_ttl must be {}s to {}s, not {:?}",
                    MIN_PRESENCE_TTL.as_secs(),
                    MAX_PRESENCE_TTL.as_secs(),
                    nats.presence_ttl
                ));
            }
            // 0 would be read by JetStream as "the default" (1) and above 5 is refused by
            // nats-server only at the first stream's creation, i.e. as a failed publish.
            if let Some(replicas) = nats.replicas.filter(|r| !(1..=MAX_REPLICAS).contains(r)) {
                problems.push(format!(
                    "nats.replicas must be 1 to {MAX_REPLICAS} (copies JetStream keeps of each \
                     stream and bucket; 3 on a three-node NATS cluster), not {replicas}"
                ));
            }
            // Read only when NATS is connected: a missing file was found at the first
            // connection, not by `config check` (outside audit 62).
            for (name, path) in [
                ("nats.ca", &nats.ca),
                ("nats.credentials", &nats.credentials),
            ] {
                if let Some(path) = path {
                    if let Err(e) = std::fs::metadata(path) {
                        problems.push(format!("{name}: {}: {e}", path.display()));
                    }
                }
            }
        }
        if self.auth.public_key.is_some() != self.auth.algorithm.is_some() {
            problems.push("auth.public_key and auth.algorithm go together".into());
        }
        if self.auth.key_sources() > 1 {
            problems.push(
                "configure one token key: auth.jwt_secret, auth.jwt_secret_file, auth.public_key, \
                 auth.jwks_file or auth.jwks_url"
                    .into(),
            );
        }
        if let Some(url) = &self.auth.jwks_url {
            if let Err(e) = crate::jwks::check_url(url) {
                problems.push(format!("auth.jwks_url: {e}"));
            }
        }
        if self.auth.jwks_refresh < Duration::from_secs(1) {
            problems.push("auth.jwks_refresh must be at least 1s".into());
        }
        if self.auth.leeway > crate::auth::MAX_LEEWAY {
            problems.push(format!(
                "auth.leeway ({:?}) is over the maximum of {:?}",
                self.auth.leeway,
                crate::auth::MAX_LEEWAY
            ));
        }
        if self.tls.reload_interval.is_zero() {
            problems.push("tls.reload_interval must be positive".into());
        }
        self.rpc.problems(&mut problems);
        self.mistakes(&mut problems);
        problems
    }
}

/// Problems as one error, a line each (`Ok` when there are none).
pub(super) fn all_of(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
