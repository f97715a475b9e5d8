//! Quotas: what one tenant, or one source address, may hold or spend on this instance.
//!
//! - Per tenant: concurrent sessions, concurrent subscriptions, publications per second and
//!   publication bytes per second (`[quotas.tenant]`, with `[[quotas.tenants]]` overrides).
//! - Per source address: concurrent connections and handshakes per second
//!   (`[quotas.per_address]`), except for `trusted` addresses (proxies, load balancers).
//!
//! Quotas are enforced **per instance**: a cluster-wide count would put a NATS round trip on
//! every session, subscription and publication. With N instances behind a balancer a tenant can
//! reach N times its quota; size quotas per instance (PROTOCOL.md §5, README).
//!
//! Every count is released by a guard's `Drop`, so a session that ends in any way frees its share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quiver_proto::TenantId;

use crate::config::{AddressQuota, QuotasConfig, TenantQuota};
use crate::metrics as m;

/// A token bucket: `rate` per second sustained, bursts up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes `n` tokens at time `at` (non-decreasing); false (and nothing taken) if there are
    /// not enough.
    pub fn take(&mut self, n: f64, at: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = at.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(self.last.map_or(at, |last| last.max(at)));
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Whether the bucket would be full at `at`: forgetting it then changes nothing.
    fn rested(&self, at: Instant) -> bool {
        self.last.is_none_or(|last| {
            self.tokens + at.saturating_duration_since(last).as_secs_f64() * self.rate >= self.burst
        })
    }
}

/// Why a quota refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("tenant {tenant} is at its quota of {limit} concurrent sessions")]
    Sessions { tenant: String, limit: u32 },
    /// The server itself at `limits.max_sessions`, found only once the session was made (it
    /// was admitted together with others that took the last places).
    #[error("the server is at its limit of {limit} sessions; reconnect later")]
    ServerSessions { limit: usize },
    #[error("tenant {tenant} is over its quota of {limit} new sessions per second")]
    SessionRate { tenant: String, limit: u32 },
    #[error("tenant {tenant} is at its quota of {limit} concurrent subscriptions")]
    Subscriptions { tenant: String, limit: u32 },
    #[error("tenant {tenant} is over its quota of {limit} publications per second")]
    Publications { tenant: String, limit: u32 },
    #[error("tenant {tenant} is over its quota of {limit} publication bytes per second")]
    Bytes { tenant: String, limit: u64 },
    /// One publication larger than the byte quota's whole bucket: it can never pass, so it is
    /// refused as too large, not "retry later" (outside audit 43, 2).
    #[error(
        "a payload of {bytes} bytes can never be published: tenant {tenant}'s quota is {limit} \
         publication bytes per second"
    )]
    TooLarge {
        tenant: String,
        bytes: usize,
        limit: u64,
    },
}

impl QuotaError {
    /// The `quota` label of the refusal metric.
    pub fn label(&self) -> &'static str {
        match self {
            QuotaError::Sessions { .. } => "sessions",
            QuotaError::ServerSessions { .. } => "server_sessions",
            QuotaError::SessionRate { .. } => "sessions_per_second",
            QuotaError::Subscriptions { .. } => "subscriptions",
            QuotaError::Publications { .. } => "publications",
            QuotaError::Bytes { .. } | QuotaError::TooLarge { .. } => "bytes",
        }
    }

    /// The error code a client is told: `payload_too_large` for a publication no wait can
    /// let through, else `quota_exceeded` (retry later).
    pub fn code(&self) -> quiver_proto::ErrorCode {
        match self {
            QuotaError::TooLarge { .. } => quiver_proto::ErrorCode::PayloadTooLarge,
            _ => quiver_proto::ErrorCode::QuotaExceeded,
        }
    }
}

#[derive(Default)]
struct Usage {
    sessions: u32,
    subscriptions: u32,
    publications: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// New sessions (`sessions_per_second`).
    opens: Option<TokenBucket>,
}

impl Usage {
    /// Nothing held and nothing remembered: the entry can go.
    fn idle(&self) -> bool {
        self.sessions == 0 && self.subscriptions == 0 && self.rested()
    }

    /// No bucket still remembers a recent publication. Until then the entry is kept, so that a
    /// tenant's last session closing (or publishing without one, through the API) does not
    /// hand it fresh buckets.
    fn rested(&self) -> bool {
        if self.publications.is_none() && self.bytes.is_none() && self.opens.is_none() {
            return true;
        }
        let now = Instant::now();
        [&self.publications, &self.bytes, &self.opens]
            .into_iter()
            .flatten()
            .all(|b| b.rested(now))
    }
}

/// How many quota operations pass between two sweeps of idle tenant entries.
const SWEEP_EVERY: u64 = 1024;

/// The `tenant` label shared by tenants past `max_tenant_labels`. Not a valid tenant id (`~`
/// is outside `[A-Za-z0-9_-]`), so a tenant named `other` keeps series of its own.
pub const OTHER_TENANTS: &str = "~other";

/// Per-tenant counts and buckets of this instance.
pub struct TenantQuotas {
    config: QuotasConfig,
    usage: Mutex<HashMap<TenantId, Usage>>,
    /// Calls of `usage`, to sweep idle entries every [`SWEEP_EVERY`].
    touches: AtomicU64,
    /// Tenants that have their own metric label; the rest share `other`.
    labels: Mutex<Vec<String>>,
}

impl TenantQuotas {
    pub fn new(config: QuotasConfig) -> Self {
        Self {
            config,
            usage: Mutex::default(),
            touches: AtomicU64::new(0),
            labels: Mutex::default(),
        }
    }

    fn quota(&self, tenant: &TenantId) -> TenantQuota {
        let mut quota = self.config.tenant.clone();
        if let Some(o) = self
            .config
            .tenants
            .iter()
            .find(|o| o.tenant == tenant.as_str())
        {
            quota.max_sessions = o.max_sessions.unwrap_or(quota.max_sessions);
            quota.sessions_per_second = o.sessions_per_second.unwrap_or(quota.sessions_per_second);
            quota.max_subscriptions = o.max_subscriptions.unwrap_or(quota.max_subscriptions);
            quota.publications_per_second = o
                .publications_per_second
                .unwrap_or(quota.publications_per_second);
            quota.bytes_per_second = o.bytes_per_second.unwrap_or(quota.bytes_per_second);
        }
        quota
    }

    /// The tenant's metric label: its id for the first `max_tenant_labels` tenants this
    /// instance has seen, [`OTHER_TENANTS`] after that (bounded cardinality).
    pub fn label(&self, tenant: &TenantId) -> String {
        let mut labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        if labels.iter().any(|l| l == tenant.as_str()) {
            return tenant.to_string();
        }
        if labels.len() < self.config.max_tenant_labels {
            labels.push(tenant.to_string());
            return tenant.to_string();
        }
        OTHER_TENANTS.into()
    }

    fn usage<T>(&self, tenant: &TenantId, f: impl FnOnce(&mut Usage) -> T) -> T {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let entry = usage.entry(tenant.clone()).or_default();
        let out = f(entry);
        if entry.idle() {
            usage.remove(tenant);
        }
        // A tenant that left with buckets still refilling is forgotten by a later sweep, so
        // tenants that never come back do not accumulate.
        if self.touches.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            usage.retain(|_, u| !u.idle());
        }
        out
    }

    /// Meters one publication of `bytes` payload bytes by a tenant that has no session here
    /// (a client's token publishing through the backend API): the same buckets its sessions
    /// draw from.
    pub fn publish(&self, tenant: &TenantId, bytes: usize, at: Instant) -> Result<(), QuotaError> {
        let quota = self.quota(tenant);
        if quota.publications_per_second == 0 && quota.bytes_per_second == 0 {
            return Ok(());
        }
        self.meter(tenant, &quota, bytes, at)
            .inspect_err(|e| self.refused(&self.label(tenant), e))
    }

    /// Takes one publication of `bytes` from the tenant's buckets, or says which rate it is over.
    fn meter(
        &self,
        tenant: &TenantId,
        quota: &TenantQuota,
        bytes: usize,
        at: Instant,
    ) -> Result<(), QuotaError> {
        if quota.bytes_per_second > 0 && bytes as u64 > quota.bytes_per_second {
            return Err(QuotaError::TooLarge {
                tenant: tenant.to_string(),
                bytes,
                limit: quota.bytes_per_second,
            });
        }
        self.usage(tenant, |u| {
            if quota.publications_per_second > 0 {
                let rate = f64::from(quota.publications_per_second);
                let bucket = u
                    .publications
                    .get_or_insert_with(|| TokenBucket::new(rate, rate));
                if !bucket.take(1.0, at) {
                    return Err(QuotaError::Publications {
                        tenant: tenant.to_string(),
                        limit: quota.publications_per_second,
                    });
                }
            }
            if quota.bytes_per_second > 0 {
                let rate = quota.bytes_per_second as f64;
                let bucket = u.bytes.get_or_insert_with(|| TokenBucket::new(rate, rate));
                if !bucket.take(bytes as f64, at) {
                    return Err(QuotaError::Bytes {
                        tenant: tenant.to_string(),
                        limit: quota.bytes_per_second,
                    });
                }
            }
            Ok(())
        })
    }

    /// Counts a session of the tenant, or refuses it (at its concurrent sessions, or over its
    /// rate of new ones: a refused session takes nothing from the rate).
    pub fn open_session(self: &Arc<Self>, tenant: &TenantId) -> Result<TenantSession, QuotaError> {
        self.open_session_at(tenant, Instant::now())
    }

    fn open_session_at(
        self: &Arc<Self>,
        tenant: &TenantId,
        at: Instant,
    ) -> Result<TenantSession, QuotaError> {
        let quota = self.quota(tenant);
        let limit = quota.max_sessions;
        let per_second = quota.sessions_per_second;
        let label = self.label(tenant);
        self.usage(tenant, |u| {
            if limit > 0 && u.sessions >= limit {
                return Err(QuotaError::Sessions {
                    tenant: tenant.to_string(),
                    limit,
                });
            }
            if per_second > 0 {
                let rate = f64::from(per_second);
                let bucket = u.opens.get_or_insert_with(|| TokenBucket::new(rate, rate));
                if !bucket.take(1.0, at) {
                    return Err(QuotaError::SessionRate {
                        tenant: tenant.to_string(),
                        limit: per_second,
                    });
                }
            }
            u.sessions += 1;
            Ok(())
        })
        .inspect_err(|e| self.refused(&label, e))?;
        metrics::gauge!(m::TENANT_SESSIONS, "tenant" => label.clone()).increment(1.0);
        Ok(TenantSession(TenantPublisher {
            quotas: self.clone(),
            tenant: tenant.clone(),
            publications: metrics::counter!(m::TENANT_PUBLICATIONS, "tenant" => label.clone()),
            label,
            quota,
        }))
    }

    fn refused(&self, label: &str, e: &QuotaError) {
        metrics::counter!(m::QUOTA_REFUSALS, "tenant" => label.to_owned(), "quota" => e.label())
            .increment(1);
    }
}

/// A session's share of its tenant's quotas; released on drop.
pub struct TenantSession(TenantPublisher);

/// What metering a tenant's publications needs. A session's own is inside its
/// [`TenantSession`]; a copy ([`TenantSession::publisher`]) meters a publication away from the
/// session (a datagram publication waiting for its hook) and releases nothing when dropped.
#[derive(Clone)]
pub struct TenantPublisher {
    quotas: Arc<TenantQuotas>,
    tenant: TenantId,
    label: String,
    /// The tenant's quota, resolved (overrides applied) once when the session opened: the
    /// publish path neither searches the overrides nor builds a metric label per message.
    quota: TenantQuota,
    publications: metrics::Counter,
}

impl TenantPublisher {
    /// Meters one publication of `bytes` payload bytes against the tenant's rates.
    /// The clock is read only when the tenant has a rate (not once per publication of every
    /// tenant: clock reads were about 5 % of a publication's CPU in the many-rooms profile).
    pub fn publish(&self, bytes: usize) -> Result<(), QuotaError> {
        self.publish_at(bytes, Instant::now)
    }

    /// [`TenantPublisher::publish`] at the time `now` gives, asked only when metering.
    fn publish_at(&self, bytes: usize, now: impl FnOnce() -> Instant) -> Result<(), QuotaError> {
        let quota = &self.quota;
        if quota.publications_per_second > 0 || quota.bytes_per_second > 0 {
            self.quotas
                .meter(&self.tenant, quota, bytes, now())
                .inspect_err(|e| self.quotas.refused(&self.label, e))?;
        }
        self.publications.increment(1);
        Ok(())
    }

    /// Meters a `Joined` (a publication to every member of the room) against the tenant's
    /// publication rate, or refuses it; not counted as a publication in metrics.
    pub fn presence_joined(&self, at: Instant) -> Result<(), QuotaError> {
        if self.quota.publications_per_second == 0 {
            return Ok(());
        }
        self.quotas
            .meter(&self.tenant, &self.quota, 0, at)
            .inspect_err(|e| self.quotas.refused(&self.label, e))
    }

    /// Meters a `Left` the same way when the rate has room: leaving is never refused.
    pub fn presence_left(&self, at: Instant) {
        if self.quota.publications_per_second > 0 {
            let _ = self.quotas.meter(&self.tenant, &self.quota, 0, at);
        }
    }
}

impl std::ops::Deref for TenantSession {
    type Target = TenantPublisher;

    fn deref(&self) -> &TenantPublisher {
        &self.0
    }
}

impl TenantSession {
    /// A copy of the session's publication meter.
    pub fn publisher(&self) -> TenantPublisher {
        self.0.clone()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Counts one more subscription of the tenant, or refuses it.
    pub fn add_subscription(&self) -> Result<(), QuotaError> {
        let limit = self.quota.max_subscriptions;
        self.quotas
            .usage(&self.tenant, |u| {
                if limit > 0 && u.subscriptions >= limit {
                    return Err(QuotaError::Subscriptions {
                        tenant: self.tenant.to_string(),
                        limit,
                    });
                }
                u.subscriptions += 1;
                Ok(())
            })
            .inspect_err(|e| self.quotas.refused(&self.label, e))?;
        metrics::gauge!(m::TENANT_SUBSCRIPTIONS, "tenant" => self.label.clone()).increment(1.0);
        Ok(())
    }

    pub fn remove_subscription(&self) {
        self.quotas.usage(&self.tenant, |u| {
            u.subscriptions = u.subscriptions.saturating_sub(1)
        });
        metrics::gauge!(m::TENANT_SUBSCRIPTIONS, "tenant" => self.label.clone()).decrement(1.0);
    }
}

impl Drop for TenantSession {
    fn drop(&mut self) {
        self.quotas
            .usage(&self.tenant, |u| u.sessions = u.sessions.saturating_sub(1));
        metrics::gauge!(m::TENANT_SESSIONS, "tenant" => self.label.clone()).decrement(1.0);
    }
}

#[derive(Default)]
struct AddressUsage {
    connections: u32,
    handshakes: Option<TokenBucket>,
}

impl AddressUsage {
    /// No connection, and the handshake bucket would be full again anyway: forgettable.
    fn idle(&self, now: Instant) -> bool {
        self.connections == 0 && self.handshakes.as_ref().is_none_or(|b| b.rested(now))
    }
}

/// Per-source-address limits, over every transport.
pub struct AddressLimits {
    config: AddressQuota,
    usage: Mutex<HashMap<IpAddr, AddressUsage>>,
    /// Admissions, to sweep idle entries every [`SWEEP_EVERY`]: an address that closed its
    /// last connection within its handshake window is kept until the window has passed, and
    /// an address that never comes back must not stay for ever.
    admitted: AtomicU64,
}

impl AddressLimits {
    pub fn new(config: AddressQuota) -> Self {
        Self {
            config,
            usage: Mutex::default(),
            admitted: AtomicU64::new(0),
        }
    }

    /// Whether connections from `ip` count towards any limit (limits set, address not trusted).
    pub fn limits(&self, ip: IpAddr) -> bool {
        let limits = &self.config;
        (limits.max_connections > 0 || limits.handshakes_per_second > 0)
            && !limits.trusted.contains(&unmapped(ip))
    }

    /// Admits one new connection from `ip` (a handshake now, a connection until the guard is
    /// dropped), or refuses it. Trusted addresses are not limited.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressGuard> {
        let limits = &self.config;
        if !self.limits(ip) {
            return Some(AddressGuard(None));
        }
        let ip = counted_as(ip);
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if self.admitted.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            usage.retain(|_, u| !u.idle(now));
        }
        let entry = usage.entry(ip).or_default();
        if limits.max_connections > 0 && entry.connections >= limits.max_connections {
            return None;
        }
        if limits.handshakes_per_second > 0 {
            let rate = f64::from(limits.handshakes_per_second);
            let bucket = entry
                .handshakes
                .get_or_insert_with(|| TokenBucket::new(rate, rate));
            if !bucket.take(1.0, Instant::now()) {
                return None;
            }
        }
        entry.connections += 1;
        Some(AddressGuard(Some((self.clone(), ip))))
    }
}

/// An IPv4 peer on a dual-stack socket shows up as `::ffff:a.b.c.d`: one address either way.
/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a limit counts: an IPv4 address as it is, an IPv6 address by its /64 prefix
/// (the block one subscriber line or host is usually given), so that a peer cannot step around
/// its limits by changing the low bits of its address.
fn counted_as(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !u128::from(u64::MAX),
        )),
        v4 => v4,
    }
}

/// One connection's place in its address's count; released on drop.
pub struct AddressGuard(Option<(Arc<AddressLimits>, IpAddr)>);

impl Drop for AddressGuard {
    fn drop(&mut self) {
        if let Some((limits, ip)) = self.0.take() {
            let mut usage = limits.usage.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = usage.get_mut(&ip) {
                entry.connections = entry.connections.saturating_sub(1);
                if entry.idle(Instant::now()) {
                    usage.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantOverride;
    use std::time::Duration;

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(10.0, 10.0);
        let t = Instant::now();
        for _ in 0..10 {
            assert!(b.take(1.0, t));
        }
        assert!(!b.take(1.0, t));
        assert!(b.take(1.0, t + Duration::from_millis(100)));
        assert!(!b.take(5.0, t + Duration::from_millis(100)));
    }

    /// Sessions and publications without a session (the API with a client token) draw on one
    /// pair of buckets, and the tenant's last session closing does not refill them: the entry
    /// is kept until its buckets are full again, then forgotten.
    #[test]
    fn publish_buckets_are_shared_and_outlive_the_last_session() {
        let mut config = QuotasConfig::default();
        config.tenant.publications_per_second = 1;
        let quotas = Arc::new(TenantQuotas::new(config));
        let t = tenant("acme");
        let at = Instant::now();
        let session = quotas.open_session(&t).unwrap();
        assert!(session.publish_at(1, || at).is_ok());
        assert!(matches!(
            quotas.publish(&t, 1, at),
            Err(QuotaError::Publications { limit: 1, .. })
        ));
        // The last session goes; a new one finds the bucket as it was left.
        drop(session);
        assert!(quotas.usage.lock().unwrap().contains_key(&t));
        let session = quotas.open_session(&t).unwrap();
        assert!(session
            .publish_at(1, || at + Duration::from_millis(100))
            .is_err());
        drop(session);
        assert!(quotas
            .publish(&t, 1, at + Duration::from_millis(1100))
            .is_ok());
        // Once the bucket has refilled (its last publication 2 s ago), the next touch forgets
        // the tenant.
        refilled_long_ago(&quotas, &t);
        drop(quotas.open_session(&t).unwrap());
        assert!(!quotas.usage.lock().unwrap().contains_key(&t));
    }

    /// Makes `tenant`'s publication bucket one whose last publication was 2 s ago (full again).
    fn refilled_long_ago(quotas: &TenantQuotas, tenant: &TenantId) {
        let mut emptied = TokenBucket::new(1.0, 1.0);
        assert!(emptied.take(1.0, Instant::now() - Duration::from_secs(2)));
        let mut usage = quotas.usage.lock().unwrap();
        usage.get_mut(tenant).unwrap().publications = Some(emptied);
    }

    /// A tenant that left with its buckets still refilling, and never came back, is swept out
    /// by other tenants' operations once its buckets are full.
    #[test]
    fn tenants_that_never_come_back_are_swept() {
        let mut config = QuotasConfig::default();
        config.tenant.publications_per_second = 1;
        let quotas = Arc::new(TenantQuotas::new(config));
        let gone = tenant("gone");
        assert!(quotas.publish(&gone, 1, Instant::now()).is_ok());
        assert!(quotas.usage.lock().unwrap().contains_key(&gone));
        // Its bucket refilled long ago.
        refilled_long_ago(&quotas, &gone);
        let busy = tenant("busy");
        for _ in 0..SWEEP_EVERY {
            drop(quotas.open_session(&busy).unwrap());
        }
        assert!(!quotas.usage.lock().unwrap().contains_key(&gone));
    }

    #[test]
    fn tenant_sessions_and_subscriptions_are_counted_and_released() {
        let mut config = QuotasConfig::default();
        config.tenant.max_sessions = 2;
        config.tenant.max_subscriptions = 1;
        config.tenants.push(TenantOverride {
            tenant: "big".into(),
            max_sessions: Some(3),
            ..Default::default()
        });
        let q = Arc::new(TenantQuotas::new(config));
        let a1 = q.open_session(&tenant("a")).unwrap();
        let _a2 = q.open_session(&tenant("a")).unwrap();
        assert!(matches!(
            q.open_session(&tenant("a")),
            Err(QuotaError::Sessions { limit: 2, .. })
        ));
        // Another tenant is not affected, and an override applies.
        let big: Vec<_> = (0..3)
            .map(|_| q.open_session(&tenant("big")).unwrap())
            .collect();
        assert!(q.open_session(&tenant("big")).is_err());
        drop(big);
        assert!(a1.add_subscription().is_ok());
        assert!(a1.add_subscription().is_err());
        a1.remove_subscription();
        assert!(a1.add_subscription().is_ok());
        drop(a1);
        assert!(q.open_session(&tenant("a")).is_ok());
    }

    /// New sessions are metered per tenant (overrides apply); a session refused for the
    /// concurrent count takes nothing from the rate, and the rate refills.
    #[test]
    fn new_sessions_per_second_are_per_tenant() {
        let mut config = QuotasConfig::default();
        config.tenant.sessions_per_second = 2;
        config.tenant.max_sessions = 3;
        config.tenants.push(TenantOverride {
            tenant: "big".into(),
            sessions_per_second: Some(5),
            ..Default::default()
        });
        let q = Arc::new(TenantQuotas::new(config));
        let at = Instant::now();
        let a = tenant("a");
        let first: Vec<_> = (0..2).map(|_| q.open_session_at(&a, at).unwrap()).collect();
        assert!(matches!(
            q.open_session_at(&a, at),
            Err(QuotaError::SessionRate { limit: 2, .. })
        ));
        // Another tenant is not affected, and an override applies.
        let b = tenant("b");
        let _b: Vec<_> = (0..2).map(|_| q.open_session_at(&b, at).unwrap()).collect();
        let big = tenant("big");
        let _big: Vec<_> = (0..3)
            .map(|_| q.open_session_at(&big, at).unwrap())
            .collect();
        // A second later: one more (the third concurrent), then the count refuses without
        // spending the rate's second token.
        let later = at + Duration::from_secs(1);
        let _third = q.open_session_at(&a, later).unwrap();
        assert!(matches!(
            q.open_session_at(&a, later),
            Err(QuotaError::Sessions { limit: 3, .. })
        ));
        drop(first);
        assert!(q.open_session_at(&a, later).is_ok());
    }

    #[test]
    fn publication_rates_are_per_tenant() {
        let mut config = QuotasConfig::default();
        config.tenant.publications_per_second = 5;
        config.tenant.bytes_per_second = 1000;
        let q = Arc::new(TenantQuotas::new(config));
        let a = q.open_session(&tenant("a")).unwrap();
        let b = q.open_session(&tenant("b")).unwrap();
        let t = Instant::now();
        for _ in 0..5 {
            assert!(a.publish_at(10, || t).is_ok());
        }
        assert!(matches!(
            a.publish_at(10, || t),
            Err(QuotaError::Publications { .. })
        ));
        assert!(b.publish_at(10, || t).is_ok(), "b has its own budget");
        let over = b.publish_at(995, || t).unwrap_err();
        assert!(matches!(over, QuotaError::Bytes { limit: 1000, .. }));
        assert_eq!(over.code(), quiver_proto::ErrorCode::QuotaExceeded);
        // Larger than the whole second's bytes: no wait lets it through, so it is too large,
        // not "retry later", and spends nothing (outside audit 43, 2).
        let never = b
            .publish_at(1001, || t + Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(
            never,
            QuotaError::TooLarge {
                bytes: 1001,
                limit: 1000,
                ..
            }
        ));
        assert_eq!(never.code(), quiver_proto::ErrorCode::PayloadTooLarge);
        assert!(b.publish_at(1000, || t + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn addresses_are_limited_except_trusted_ones() {
        let limits = Arc::new(AddressLimits::new(AddressQuota {
            max_connections: 2,
            handshakes_per_second: 100,
            trusted: vec!["10.0.0.1".parse().unwrap()],
        }));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let g1 = limits.admit(ip).unwrap();
        let _g2 = limits.admit(mapped).unwrap();
        assert!(
            limits.admit(ip).is_none(),
            "the same address, either notation"
        );
        drop(g1);
        assert!(limits.admit(ip).is_some());
        assert!(admits_ten(&limits, "10.0.0.1"), "trusted");
    }

    /// Whether ten connections at once from `ip` are all admitted (a trusted address's are).
    fn admits_ten(limits: &Arc<AddressLimits>, ip: &str) -> bool {
        let guards: Vec<_> = (0..10).map(|_| limits.admit(ip.parse().unwrap())).collect();
        guards.iter().all(Option::is_some)
    }

    /// IPv6 peers count by /64, so a host cannot step around its limits by rotating the low
    /// bits of its address; a trusted IPv6 address is still trusted exactly.
    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let limits = Arc::new(AddressLimits::new(AddressQuota {
            max_connections: 2,
            handshakes_per_second: 0,
            trusted: vec!["2001:db8:1::5".parse().unwrap()],
        }));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let c: IpAddr = "2001:db8::abcd:3".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let _ga = limits.admit(a).unwrap();
        let _gb = limits.admit(b).unwrap();
        assert!(limits.admit(c).is_none(), "the same /64");
        assert!(limits.admit(elsewhere).is_some(), "another /64");
        assert!(admits_ten(&limits, "2001:db8:1::5"), "trusted");
    }

    /// Addresses whose handshake bucket was still refilling when their last connection closed
    /// are kept, then swept once it would be full: many addresses passing once leave nothing.
    #[test]
    fn addresses_that_pass_once_are_swept() {
        let limits = Arc::new(AddressLimits::new(AddressQuota {
            max_connections: 10,
            handshakes_per_second: 100_000,
            trusted: Vec::new(),
        }));
        for n in 0..3000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            drop(limits.admit(ip).unwrap());
            if n == 1000 {
                // Their buckets (10 µs per handshake) are full again by the next sweep.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..SWEEP_EVERY {
            drop(limits.admit("192.0.2.9".parse().unwrap()).unwrap());
        }
        let left = limits.usage.lock().unwrap().len();
        assert!(left <= 1, "{left} addresses still held");
    }

    #[test]
    fn tenant_labels_are_bounded() {
        let config = QuotasConfig {
            max_tenant_labels: 2,
            ..QuotasConfig::default()
        };
        let q = TenantQuotas::new(config);
        assert_eq!(q.label(&tenant("a")), "a");
        assert_eq!(q.label(&tenant("b")), "b");
        assert_eq!(q.label(&tenant("c")), OTHER_TENANTS);
        assert_eq!(q.label(&tenant("a")), "a");
    }
}
