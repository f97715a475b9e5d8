//! The deny-list of revoked tokens, by `jti` (issue 10): a revoked token opens no session and
//! refreshes none, and the sessions already using it are ended (`registry.rs`).
//!
//! Entries are kept per tenant, keyed by the SHA-256 of the `jti` (any string an identity
//! provider chose), until the token's own expiry: after that the token is refused anyway. With
//! NATS a revocation is broadcast by the control plane (`control.rs`) and stored in the
//! JetStream key-value bucket `quiver_revoked`, so an instance that starts later loads it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use quiver_proto::TenantId;
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::auth::unix_now;

/// Revocations kept at most, in all and per tenant. Past a tenant's share its own revocations
/// expiring soonest are dropped first (they are the least useful), so one tenant's API key can
/// neither grow memory without bound nor push out another tenant's revocations; past the total,
/// the tenant holding most gives one up.
pub const MAX_ENTRIES: usize = 1_000_000;
pub const MAX_PER_TENANT: usize = 100_000;

/// Revocations a tenant's own API keys may make through one instance per [`API_WINDOW`] (an
/// admin key is not counted). Each is stored in the bucket every tenant shares, until an
/// expiry the caller chooses, and every instance loads the bucket when it starts: one tenant's
/// key made 490 a second, about 5 GB of NATS storage a day (outside cluster audit 3, F2).
pub const MAX_TENANT_API_REVOCATIONS: usize = 10_000;
pub const API_WINDOW: Duration = Duration::from_secs(3600);

/// The key of one revocation: tenant and the `jti`'s digest.
pub fn key(tenant: &TenantId, jti: &str) -> String {
    format!("{tenant}.{}", hex::encode(Sha256::digest(jti.as_bytes())))
}

/// Whether `key` is a revocation key of `tenant` as [`key`] makes them: the tenant, a dot, and
/// 64 lowercase hex digits. Keys that come over NATS are checked so: a tenant's backend may
/// publish there, and 100 kB keys it sent were kept whole, on every instance (outside audit
/// 66, F3: 215 MB per 2,000 messages).
pub fn is_key_of(key: &str, tenant: &str) -> bool {
    key.strip_prefix(tenant)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|digest| {
            digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

pub struct Revocations {
    inner: Mutex<Inner>,
    /// Per tenant, when its own API keys revoked (within [`API_WINDOW`]).
    api: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Whether the stored revocations are loaded (always, without NATS): until then sessions
    /// may open with a token revoked earlier, so the instance is not ready, and the sessions
    /// opened meanwhile are checked once it is (`control.rs`).
    loaded: AtomicBool,
    /// Copies JetStream keeps of the stored revocations (`nats.replicas`; unset: one for a new
    /// bucket, an existing one keeps its count).
    replicas: Option<usize>,
    /// The bucket as the last load opened it: a revocation writes through it rather than open
    /// it again (each open is a create-or-update and, with `replicas` unset, a read of the
    /// bucket's stream; and a warning each time JetStream refuses a count change). Every load
    /// (at start, after each NATS reconnect) opens it afresh, so a bucket lost with a NATS
    /// server is made again there.
    opened: Mutex<Option<async_nats::jetstream::kv::Store>>,
}

impl Revocations {
    /// `loaded`: nothing is stored elsewhere to load (no NATS).
    pub fn new(loaded: bool) -> Self {
        Self {
            inner: Mutex::default(),
            api: Mutex::default(),
            loaded: AtomicBool::new(loaded),
            replicas: None,
            opened: Mutex::default(),
        }
    }

    /// Stored with this many copies in JetStream (`nats.replicas`).
    pub fn with_replicas(mut self, replicas: Option<usize>) -> Self {
        self.replicas = replicas;
        self
    }

    /// The store of revocations in NATS: as the last load opened it, else created or brought
    /// to this configuration now.
    async fn store(
        &self,
        nats: &async_nats::Client,
    ) -> Result<async_nats::jetstream::kv::Store, String> {
        let opened = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match opened {
            Some(store) => Ok(store),
            None => self.open(nats).await,
        }
    }

    /// Stores one revocation (`key` until `until`) through [`Self::store`]'s bucket; a write
    /// that fails there is tried once more on the bucket opened again (made again if it was
    /// lost with a NATS server without this connection dropping: review 124, R4).
    pub(crate) async fn put(
        &self,
        nats: &async_nats::Client,
        key: &str,
        until: u64,
    ) -> Result<(), String> {
        let put = |store: async_nats::jetstream::kv::Store| async move {
            store
                .put(key, until.to_string().into())
                .await
                .map(drop)
                .map_err(|e| format!("nats: {e}"))
        };
        if put(self.store(nats).await?).await.is_ok() {
            return Ok(());
        }
        put(self.open(nats).await?).await
    }

    /// Opens the store (created or brought to this configuration) and keeps it for
    /// [`Self::store`].
    async fn open(
        &self,
        nats: &async_nats::Client,
    ) -> Result<async_nats::jetstream::kv::Store, String> {
        let store = store(nats, self.replicas).await?;
        *self.opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
        Ok(store)
    }

    /// Counts one revocation by `tenant`'s own API key at `now`; `false` (nothing counted)
    /// past [`MAX_TENANT_API_REVOCATIONS`] in the last [`API_WINDOW`].
    pub fn admit_tenant_key(&self, tenant: &TenantId, now: Instant) -> bool {
        let mut api = self.api.lock().unwrap_or_else(|e| e.into_inner());
        let made = api.entry(tenant.to_string()).or_default();
        while made
            .front()
            .is_some_and(|at| now.duration_since(*at) >= API_WINDOW)
        {
            made.pop_front();
        }
        if made.len() >= MAX_TENANT_API_REVOCATIONS {
            return false;
        }
        made.push_back(now);
        true
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether the token whose [`key()`] is `key` is revoked now.
    pub fn is_revoked_key(&self, key: &str) -> bool {
        let Some((tenant, _)) = key.split_once('.') else {
            return false;
        };
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .tenants
            .get(tenant)
            .and_then(|entries| entries.get(key))
            .is_some_and(|until| *until > unix_now())
    }
}

#[derive(Default)]
struct Inner {
    /// Tenant → `key()` → expiry (Unix seconds).
    tenants: HashMap<String, HashMap<String, u64>>,
    total: usize,
}

/// Drops `n` of the entries of `entries` that expire soonest; returns how many went.
fn drop_soonest(entries: &mut HashMap<String, u64>, n: usize) -> usize {
    let before = entries.len();
    if n >= before {
        entries.clear();
        return before;
    }
    if n == 0 {
        return 0;
    }
    let mut expiries: Vec<u64> = entries.values().copied().collect();
    let cut = *expiries.select_nth_unstable(n - 1).1;
    // All that expire before the cut go, and as many at the cut as make `n`.
    let mut at_cut = n - expiries.iter().filter(|exp| **exp < cut).count();
    entries.retain(|_, exp| match (*exp).cmp(&cut) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal if at_cut > 0 => {
            at_cut -= 1;
            false
        }
        _ => true,
    });
    before - entries.len()
}

/// How much of a full share [`drop_soonest`] frees at once: a pass over a full share costs
/// about a millisecond under the lock every `authenticate` takes, so it is paid once per
/// this many revocations, not once per revocation (a tenant's backend may publish revocations
/// on NATS as fast as it likes).
const DROP_FRACTION: usize = 64;

impl Revocations {
    /// Records a revocation until `until` (the token's `exp`). `key` is [`key()`]'s.
    pub fn insert(&self, key: String, until: u64) {
        let now = unix_now();
        if until <= now {
            return;
        }
        let Some((tenant, _)) = key.split_once('.') else {
            return;
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let entries = inner.tenants.entry(tenant.to_owned()).or_default();
        if !entries.contains_key(&key) && entries.len() >= MAX_PER_TENANT {
            let before = entries.len();
            entries.retain(|_, exp| *exp > now);
            inner.total -= before - entries.len();
            if entries.len() >= MAX_PER_TENANT {
                inner.total -= drop_soonest(entries, MAX_PER_TENANT / DROP_FRACTION);
            }
        }
        if entries.insert(key, until).is_none() {
            inner.total += 1;
        }
        if inner.total > MAX_ENTRIES {
            let mut dropped = 0;
            inner.tenants.retain(|_, entries| {
                let before = entries.len();
                entries.retain(|_, exp| *exp > now);
                dropped += before - entries.len();
                !entries.is_empty()
            });
            inner.total -= dropped;
            if inner.total > MAX_ENTRIES {
                if let Some(largest) = inner.tenants.values_mut().max_by_key(|e| e.len()) {
                    let n = (largest.len() / DROP_FRACTION).max(1);
                    inner.total -= drop_soonest(largest, n);
                }
            }
        }
    }

    pub fn is_revoked(&self, tenant: &TenantId, jti: &str) -> bool {
        self.is_revoked_key(&key(tenant, jti))
    }

    #[cfg(test)]
    fn len(&self, tenant: &str) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tenants.get(tenant).map_or(0, HashMap::len)
    }
}

// The store in NATS: every instance writes its revocations there and loads them at start.

/// The key-value bucket revocations are kept in: each until its token's expiry, however far
/// (the bucket has no age limit: an age limit would let a long-lived stolen token back in when
/// its revocation aged out). Entries past their expiry are deleted by the next instance that
/// loads the bucket.
const REVOKED_BUCKET: &str = "quiver_revoked";

/// Revocations read from the store per pull when loading: fewer than a subscription of the
/// control connection holds, so a load never overflows its own subscription (a drop there sets
/// off another load: `control.rs`, `keep_loaded`).
const LOAD_BATCH: usize = 256;

/// The bucket, created or brought to this configuration (`replicas`: `nats.replicas`).
async fn store(
    nats: &async_nats::Client,
    replicas: Option<usize>,
) -> Result<async_nats::jetstream::kv::Store, String> {
    let js = async_nats::jetstream::new(nats.clone());
    // Created, or brought to this configuration: earlier versions made the bucket with a
    // 30-day age limit, and with one copy, lost with the one nats-server holding it (outside
    // audit 112, F5).
    crate::broker::nats::replicas::key_value(
        &js,
        async_nats::jetstream::kv::Config {
            bucket: REVOKED_BUCKET.into(),
            history: 1,
            ..Default::default()
        },
        replicas,
    )
    .await
    .map_err(|e| format!("nats: revocation store: {e}"))
}

impl Revocations {
    /// Loads the revocations stored by earlier instances (and by this one: a broadcast it
    /// missed is in the store). The bucket's latest values are read through a pull consumer,
    /// [`LOAD_BATCH`] at a time: `kv::Store::keys` had every key pushed at once into one
    /// subscription, which the control connection's short queue overflows once the store
    /// holds more than it, each overflow setting off another load; and it asked for each value
    /// on its own, one round trip per revocation.
    pub(crate) async fn load(&self, nats: &async_nats::Client) -> Result<usize, String> {
        use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
        // Each costs JetStream a consumer and a read of the whole store: counted, so what sets
        // them off can be seen (and tested: a flood of disconnects sets off none).
        metrics::counter!(crate::metrics::REVOCATION_LOADS).increment(1);
        let store = self.open(nats).await?;
        let consumer = store
            .stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::LastPerSubject,
                filter_subject: format!("{}>", store.prefix),
                ack_policy: AckPolicy::None,
                // Dropped by NATS if this load is cut short before it deletes it.
                inactive_threshold: std::time::Duration::from_secs(10),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("nats: revocation store: {e}"))?;
        let name = consumer.cached_info().name.clone();
        let loaded = self.load_from(&store, &consumer).await;
        if let Err(e) = store.stream.delete_consumer(&name).await {
            debug!(error = %e, "a revocation load's consumer is left for NATS to drop when idle");
        }
        loaded
    }

    async fn load_from(
        &self,
        store: &async_nats::jetstream::kv::Store,
        consumer: &async_nats::jetstream::consumer::PullConsumer,
    ) -> Result<usize, String> {
        let mut n = 0;
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(LOAD_BATCH)
                .messages()
                .await
                .map_err(|e| format!("nats: {e}"))?;
            // Messages in this batch, and how many the consumer held after the last one.
            let (mut got, mut left) = (0, 0);
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| format!("nats: {e}"))?;
                got += 1;
                // Unreadable: not known to be the last, so another pull tells.
                left = message.info().map_or(1, |info| info.pending);
                let Some(key) = message.subject.as_str().strip_prefix(store.prefix.as_str()) else {
                    continue;
                };
                // A deleted or purged key's latest value is its marker.
                let removed = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() != "PUT");
                if removed {
                    continue;
                }
                match std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    // Its token has expired: refused anyway, so the entry goes.
                    Some(until) if until <= crate::auth::unix_now() => {
                        if let Err(e) = store.delete(key).await {
                            debug!(error = %e, "an expired revocation stays in the bucket");
                        }
                    }
                    // Only keys as `revocation::key` makes them, whoever else wrote there.
                    Some(until)
                        if key
                            .split_once('.')
                            .is_some_and(|(tenant, _)| is_key_of(key, tenant)) =>
                    {
                        self.insert(key.to_owned(), until);
                        n += 1;
                    }
                    Some(_) => {}
                    None => {}
                }
                if n >= MAX_ENTRIES {
                    return Ok(n);
                }
            }
            if got == 0 || left == 0 {
                return Ok(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_as_made_are_keys_of_their_tenant() {
        let acme = TenantId::parse("acme").expect("a tenant");
        let made = key(&acme, "tok-1");
        assert!(is_key_of(&made, "acme"));
        assert!(!is_key_of(&made, "acm"));
        assert!(!is_key_of(&made, "other"));
        assert!(!is_key_of(&made.to_uppercase(), "acme"));
        assert!(!is_key_of(&format!("{made}0"), "acme"));
        assert!(!is_key_of("acme.tok-1", "acme"));
        assert!(!is_key_of(&format!("acme.{}", "a".repeat(100_000)), "acme"));
    }

    #[test]
    fn drop_soonest_drops_exactly_the_soonest() {
        let mut entries: HashMap<String, u64> = [("a", 5), ("b", 1), ("c", 3), ("d", 3), ("e", 9)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(drop_soonest(&mut entries, 0), 0);
        assert_eq!(drop_soonest(&mut entries, 2), 2);
        assert!(!entries.contains_key("b"));
        assert_eq!(entries.values().filter(|exp| **exp == 3).count(), 1);
        assert_eq!(drop_soonest(&mut entries, 2), 2);
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["e"]);
        assert_eq!(drop_soonest(&mut entries, 5), 1);
        assert!(entries.is_empty());
    }

    #[test]
    fn revoked_until_expiry_and_per_tenant() {
        let r = Revocations::new(true);
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        r.insert(key(&acme, "t-1"), unix_now() + 60);
        r.insert(key(&acme, "old"), unix_now() - 1);
        assert!(r.is_revoked(&acme, "t-1"));
        assert!(
            !r.is_revoked(&other, "t-1"),
            "another tenant's jti is another token"
        );
        assert!(!r.is_revoked(&acme, "old"), "expired tokens need no entry");
        assert!(!r.is_revoked(&acme, "t-2"));
    }

    #[test]
    fn a_tenants_own_keys_revoke_a_bounded_number_per_window() {
        let r = Revocations::new(true);
        let (acme, other) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("other").unwrap(),
        );
        let start = Instant::now();
        for _ in 0..MAX_TENANT_API_REVOCATIONS {
            assert!(r.admit_tenant_key(&acme, start));
        }
        assert!(!r.admit_tenant_key(&acme, start), "over the window's count");
        assert!(
            r.admit_tenant_key(&other, start),
            "another tenant's own count"
        );
        assert!(
            r.admit_tenant_key(&acme, start + API_WINDOW),
            "the window moved on"
        );
    }

    #[test]
    fn a_tenant_at_its_share_drops_its_own_soonest_and_never_another_tenants() {
        let r = Revocations::new(true);
        let (acme, other) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("other").unwrap(),
        );
        let soon = unix_now() + 60;
        r.insert(key(&other, "theirs"), soon);
        r.insert(key(&acme, "first"), soon);
        for i in 0..MAX_PER_TENANT + 10 {
            r.insert(key(&acme, &format!("flood-{i}")), u64::MAX - i as u64);
        }
        // A share's worth of room is made at once, the soonest to expire going first.
        let kept = r.len("acme");
        assert!(
            (MAX_PER_TENANT - MAX_PER_TENANT / DROP_FRACTION..=MAX_PER_TENANT).contains(&kept),
            "{kept}"
        );
        assert!(!r.is_revoked(&acme, "first"), "acme's soonest went first");
        assert!(r.is_revoked(&acme, "flood-0"), "the latest to expire stays");
        assert!(r.is_revoked(&acme, &format!("flood-{}", MAX_PER_TENANT + 9)));
        assert!(r.is_revoked(&other, "theirs"), "other tenants keep theirs");
        assert_eq!(r.inner.lock().unwrap().total, kept + 1);
    }
}
