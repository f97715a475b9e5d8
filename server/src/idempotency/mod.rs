//! Idempotency keys for the backend API's publications (`Idempotency-Key` on `publish` and
//! `broadcast`): a backend that retries a request whose answer it never got (a timeout, a lost
//! connection) publishes once, and gets the first attempt's position back.
//!
//! The unit is one room: (tenant, room, key). A broadcast retried with the same key publishes
//! only into the rooms the first attempt did not reach. Entries live for [`WINDOW`] after their
//! claim (as Centrifugo's do). Each instance keeps the keys it served here, so its own repeats
//! are answered without a round trip; with NATS the cluster shares them too (`cluster.rs`), so a
//! retry that a load balancer sends to another instance is recognised as well.
//!
//! Bounds here: at most [`MAX_PER_TENANT`] entries per tenant (its oldest go first, so one tenant's
//! keys never push out another's) and [`MAX_ENTRIES`] in all (past it, the oldest entries of the
//! tenants holding most go, [`ROOM`] at a time: finding them is a pass over every tenant,
//! paid once per [`ROOM`] new keys rather than once per key); at most [`MAX_TENANTS`] tenants
//! remembered (past it, those holding no key are forgotten in one pass).

pub mod cluster;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver_proto::{Position, RoomName, TenantId};
use sha2::{Digest, Sha256};

/// How long a publication's key is remembered.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Longest key, in bytes (the same bound as a `Call`'s idempotency key).
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_PER_TENANT: usize = 10_000;
pub const MAX_ENTRIES: usize = 100_000;
/// Past [`MAX_ENTRIES`], entries go until this many places are free: with a key in each of
/// 100,000 tenants, a pass per new key cost ~70 ms of CPU (an outside audit: keyed publishes
/// fell to 14/s and every tenant's latency rose).
const ROOM: usize = MAX_ENTRIES / 100;
/// Tenants remembered at once. A tenant stays while it holds a key, and while its clients'
/// recent claims count towards [`MAX_CLIENT_KEYS_PER_TENANT`]; so tenants whose keys were
/// evicted (or forgotten after failed publications) would pile up with every new tenant (an
/// outside audit: ~1.1 KB each). Past this, the tenants holding no key are forgotten in one
/// pass; at most [`MAX_ENTRIES`] hold one, so a pass frees at least the margin above it.
const MAX_TENANTS: usize = MAX_ENTRIES + MAX_ENTRIES / 10;
/// Keys a tenant's clients (client tokens) may claim through this instance per [`WINDOW`]: a
/// client's keys also go into the cluster's shared record (one bucket for every tenant), which
/// eviction here does not empty, so they are refused beyond this rather than evicted.
pub const MAX_CLIENT_KEYS_PER_TENANT: usize = 10_000;
/// Keys a tenant's own backend (an API key scoped to the tenant) may claim through this
/// instance per [`WINDOW`]. Trusted with its tenant's rooms, not with the record every tenant
/// shares: uncounted, one tenant's keyed broadcasts filled the 256 MiB bucket in 90 s and every
/// other tenant's keyed publishes got 503 (outside tenancy audit 3). 100,000 entries are about
/// 24 MB of the bucket: ten instances' worth from one tenant still leave room for the others.
/// An admin API key (every tenant: the operator's own backend) is not counted.
pub const MAX_TENANT_BACKEND_KEYS: usize = 100_000;

/// Whose new keys a claim counts against, per tenant and instance, over [`WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    /// An admin API key: the operator's backend, not counted.
    Operator,
    /// An API key scoped to the tenant: [`MAX_TENANT_BACKEND_KEYS`].
    TenantBackend,
    /// A client token: [`MAX_CLIENT_KEYS_PER_TENANT`] for all the tenant's users together.
    Client,
}

impl Claimant {
    /// The most new keys this claimant's tenant may claim here per [`WINDOW`].
    pub fn limit(self) -> Option<usize> {
        match self {
            Claimant::Operator => None,
            Claimant::TenantBackend => Some(MAX_TENANT_BACKEND_KEYS),
            Claimant::Client => Some(MAX_CLIENT_KEYS_PER_TENANT),
        }
    }
}

/// Checks a key as the `Idempotency-Key` header carries it: 1 to [`MAX_KEY_LEN`] bytes of
/// visible ASCII (no space).
pub fn check_key(key: &[u8]) -> Result<&str, String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key: 1 to {MAX_KEY_LEN} bytes, got {}",
            key.len()
        ));
    }
    if !key.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err("Idempotency-Key: visible ASCII only".into());
    }
    std::str::from_utf8(key).map_err(|e| e.to_string())
}

/// The scope of the keys API keys send (the backend's); a client token's are its user's,
/// `u` and the user id.
pub const BACKEND: &str = "b";

/// How the scope of a client token's keys begins: `u`, then the user id (see [`scoped`]).
pub const USER: &str = "u";

/// A key within its scope. A key holds no newline (visible ASCII only), so the last one
/// separates the two, whatever the scope (a user id) holds.
pub fn scoped(scope: &str, key: &str) -> String {
    format!("{scope}\n{key}")
}

/// What a key's payload is compared by.
pub fn digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// The broker's id of the publication of `payload` (its [`digest`]) made under `once` in
/// `key`'s room (`Broker::publish_once`): a retry after an unknown outcome carries the same
/// one, and the same key with another payload (a new publication once the key was let go of
/// after a failure) another.
pub fn message_id(key: &crate::hub::RoomKey, once: &str, payload: &[u8; 32]) -> String {
    let mut hash = Sha256::new();
    for part in [key.tenant.as_str(), key.room.as_str(), once] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(payload);
    hex::encode(hash.finalize())
}

/// What a claim found.
pub enum Claim {
    /// First use: publish, then [`Guard::done`]. Dropping the guard instead forgets the key, so
    /// a failed publication can be retried with it.
    New(Guard),
    /// Published already, at this position (`None`: a room without history).
    Done(Option<Position>),
    /// The first request with this key is still publishing.
    InProgress,
    /// The key was used in this room for a different payload.
    Mismatch,
    /// A new key over its claimant's limit ([`Claimant::limit`]): nothing was claimed.
    TooMany(Claimant),
}

#[derive(Default)]
pub struct IdempotencyKeys {
    inner: Mutex<Inner>,
    /// With NATS: the keys every instance shares.
    cluster: Option<cluster::ClusterKeys>,
}

#[derive(Default)]
struct Inner {
    tenants: HashMap<TenantId, TenantKeys>,
    total: usize,
    /// Passes over every tenant to make room (for tests of their cost).
    passes: usize,
}

type Slot = (RoomName, String);

#[derive(Default)]
struct TenantKeys {
    entries: HashMap<Slot, Entry>,
    /// Slots in the order they were claimed (so in expiry order). A slot forgotten early stays
    /// here until it reaches the front; `Entry::claimed` tells the two apart.
    order: VecDeque<(Slot, Instant)>,
    /// When each new client key of the last [`WINDOW`] was claimed here.
    client_claims: VecDeque<Instant>,
    /// When each new key of the tenant's scoped API keys of the last [`WINDOW`] was claimed.
    backend_claims: VecDeque<Instant>,
}

struct Entry {
    digest: [u8; 32],
    claimed: Instant,
    /// `None` while publishing.
    done: Option<Option<Position>>,
}

impl TenantKeys {
    /// Drops expired entries (and stale order slots) from the front. Returns how many entries
    /// went.
    fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some((slot, claimed)) = self.order.front() {
            let live = self
                .entries
                .get(slot)
                .is_some_and(|e| e.claimed == *claimed);
            if live && now.duration_since(*claimed) < WINDOW {
                break;
            }
            if let Some((slot, _)) = self.order.pop_front() {
                if live {
                    self.entries.remove(&slot);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Gives back the place in `claimant`'s budget of a claim made `at`: one that recorded no
    /// new key (outside audit 93, F2; outside audit 111, F8). Claims made at the same instant
    /// are alike, so whichever of them goes is the same.
    fn give_back(&mut self, claimant: Claimant, at: Instant) {
        let claims = match claimant {
            Claimant::Operator => return,
            Claimant::TenantBackend => &mut self.backend_claims,
            Claimant::Client => &mut self.client_claims,
        };
        if let Some(i) = claims.iter().rposition(|c| *c == at) {
            claims.remove(i);
        }
    }

    /// Drops the oldest entry, live or not yet expired.
    fn evict_oldest(&mut self) -> usize {
        while let Some((slot, claimed)) = self.order.pop_front() {
            if self
                .entries
                .get(&slot)
                .is_some_and(|e| e.claimed == claimed)
            {
                self.entries.remove(&slot);
                return 1;
            }
        }
        0
    }
}

impl IdempotencyKeys {
    /// With one copy of the cluster's record in JetStream; [`Self::with_replicas`] for more.
    pub fn new(nats: Option<async_nats::Client>) -> Self {
        Self::with_replicas(nats, None)
    }

    /// The cluster's record kept in `replicas` copies (`nats.replicas`).
    pub fn with_replicas(nats: Option<async_nats::Client>, replicas: Option<usize>) -> Self {
        Self {
            inner: Mutex::default(),
            cluster: nats.map(|nats| cluster::ClusterKeys::new(nats).with_replicas(replicas)),
        }
    }

    /// Claims `key` for a publication into `room` of the payload with this [`digest`]: here,
    /// then (when this instance has not seen the key) across the cluster. `Err` when the
    /// cluster's record cannot be reached.
    pub async fn claim(
        self: &Arc<Self>,
        claimant: Claimant,
        tenant: &TenantId,
        room: &RoomName,
        key: &str,
        digest: [u8; 32],
        now: Instant,
    ) -> Result<Claim, String> {
        let mut guard = match self.claim_here(claimant, tenant, room, key, digest, now) {
            Claim::New(guard) => guard,
            // At this instance's budget a key claimed elsewhere is still answered, from the
            // cluster's record: README promises repeats of known keys an answer (outside audit
            // 93, F2: 429 on the instance a load balancer sent the retry to).
            Claim::TooMany(who) => {
                let Some(cluster) = &self.cluster else {
                    return Ok(Claim::TooMany(who));
                };
                let bucket_key = cluster::bucket_key(tenant, room, key);
                return Ok(match cluster.look(&bucket_key, &digest).await? {
                    None => Claim::TooMany(who),
                    Some(cluster::Remote::Done(position)) => Claim::Done(position),
                    Some(cluster::Remote::Mismatch) => Claim::Mismatch,
                    Some(_) => Claim::InProgress,
                });
            }
            known => return Ok(known),
        };
        let Some(cluster) = &self.cluster else {
            return Ok(Claim::New(guard));
        };
        let bucket_key = cluster::bucket_key(tenant, room, key);
        // On an error and on every answer but `Claimed`, the guard is dropped here: that
        // forgets the local claim again and gives its place in the claimant's budget back, for
        // nothing of it is in the shared record. A 503 refused during an outage spent a place
        // each, and the tenant's clients were then refused 429 for up to 5 minutes once NATS
        // was back (outside audit 111, F8). Unless the claim may be stored after all (no
        // answer in time: a stalled NATS stores the queued create once it resumes): that
        // pending record fills the bucket like any other, so it keeps its place (review 113,
        // F4: each stall added up to a queue's worth of records no budget counted).
        let remote = match cluster.claim(&bucket_key, &digest).await {
            Ok(remote) => remote,
            Err(e) => {
                if e.may_be_stored() {
                    guard.budget = None;
                }
                return Err(e.to_string());
            }
        };
        Ok(match remote {
            cluster::Remote::Claimed(revision) => {
                guard.cluster_key = Some((bucket_key, revision));
                // In the shared record from now on: released or not, the key (or the deletion
                // marker a release leaves, about as large) fills its place in the bucket for
                // the rest of the window, which is what the budget bounds.
                guard.budget = None;
                Claim::New(guard)
            }
            cluster::Remote::Done(position) => {
                guard.done_here(position);
                Claim::Done(position)
            }
            cluster::Remote::InProgress => Claim::InProgress,
            cluster::Remote::Mismatch => Claim::Mismatch,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `key` on this instance.
    fn claim_here(
        self: &Arc<Self>,
        claimant: Claimant,
        tenant: &TenantId,
        room: &RoomName,
        key: &str,
        digest: [u8; 32],
        now: Instant,
    ) -> Claim {
        let slot = (room.clone(), key.to_owned());
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.tenants.len() >= MAX_TENANTS && !inner.tenants.contains_key(tenant) {
            Self::forget_tenants(inner, now);
        }
        let keys = inner.tenants.entry(tenant.clone()).or_default();
        inner.total -= keys.expire(now);
        if let Some(entry) = keys.entries.get(&slot) {
            return if entry.digest != digest {
                Claim::Mismatch
            } else {
                match entry.done {
                    Some(position) => Claim::Done(position),
                    None => Claim::InProgress,
                }
            };
        }
        let claims = match claimant {
            Claimant::Operator => None,
            Claimant::TenantBackend => Some(&mut keys.backend_claims),
            Claimant::Client => Some(&mut keys.client_claims),
        };
        if let (Some(claims), Some(limit)) = (claims, claimant.limit()) {
            while claims
                .front()
                .is_some_and(|at| now.duration_since(*at) >= WINDOW)
            {
                claims.pop_front();
            }
            if claims.len() >= limit {
                return Claim::TooMany(claimant);
            }
            claims.push_back(now);
        }
        if keys.entries.len() >= MAX_PER_TENANT {
            inner.total -= keys.evict_oldest();
        }
        keys.entries.insert(
            slot.clone(),
            Entry {
                digest,
                claimed: now,
                done: None,
            },
        );
        keys.order.push_back((slot.clone(), now));
        inner.total += 1;
        if inner.total > MAX_ENTRIES {
            Self::make_room(inner, now);
        }
        Claim::New(Guard {
            keys: self.clone(),
            tenant: tenant.clone(),
            slot: Some(slot),
            claimed: now,
            digest,
            cluster_key: None,
            budget: claimant.limit().map(|_| claimant),
        })
    }

    /// At [`MAX_TENANTS`]: drops every tenant's expired entries, then every tenant holding no
    /// key. Those forget their clients' recent claims, so they may claim
    /// [`MAX_CLIENT_KEYS_PER_TENANT`] afresh: that count keeps one tenant from filling the
    /// cluster's record, and this many tenants at once are past what it can promise anyway
    /// (the record is bounded by itself).
    fn forget_tenants(inner: &mut Inner, now: Instant) {
        inner.passes += 1;
        let mut dropped = 0;
        inner.tenants.retain(|_, keys| {
            dropped += keys.expire(now);
            !keys.entries.is_empty()
        });
        inner.total -= dropped;
    }

    /// Over [`MAX_ENTRIES`]: drops every tenant's expired entries and tenants left empty, then,
    /// if still over, the oldest entries of the tenants holding most, until [`ROOM`] places
    /// are free.
    fn make_room(inner: &mut Inner, now: Instant) {
        inner.passes += 1;
        let mut dropped = 0;
        inner.tenants.retain(|_, keys| {
            dropped += keys.expire(now);
            // A tenant whose clients or backend used keys lately keeps its count of them.
            !keys.entries.is_empty()
                || !keys.client_claims.is_empty()
                || !keys.backend_claims.is_empty()
        });
        inner.total -= dropped;
        if inner.total <= MAX_ENTRIES {
            return;
        }
        let mut heaviest: std::collections::BinaryHeap<(usize, TenantId)> = inner
            .tenants
            .iter()
            .map(|(tenant, keys)| (keys.entries.len(), tenant.clone()))
            .collect();
        while inner.total > MAX_ENTRIES - ROOM {
            let Some((_, tenant)) = heaviest.pop() else {
                break;
            };
            let Some(keys) = inner.tenants.get_mut(&tenant) else {
                continue;
            };
            let gone = keys.evict_oldest();
            inner.total -= gone;
            if gone > 0 {
                heaviest.push((keys.entries.len(), tenant));
            }
        }
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.lock().total
    }
}

/// A claimed key whose publication is under way.
pub struct Guard {
    keys: Arc<IdempotencyKeys>,
    tenant: TenantId,
    /// `None` once done.
    slot: Option<Slot>,
    claimed: Instant,
    digest: [u8; 32],
    /// The key in the cluster's bucket and the revision of this instance's claim there, when
    /// it claimed it there.
    cluster_key: Option<(String, u64)>,
    /// Whose budget holds a place for this claim that is given back when the guard drops: a
    /// claim that ends as no recorded key (its cluster claim refused, or it was let go of before
    /// reaching the shared record) took nothing anyone shares. `None` once done, once in the
    /// cluster's record (or perhaps in it: a claim unanswered in time), or for an uncounted
    /// claimant.
    budget: Option<Claimant>,
}

impl Guard {
    /// The digest of the payload the key was claimed with.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The publication went out at `position`: repeats get it from now on, here at once and on
    /// the other instances once the cluster's record says so.
    pub async fn done(mut self, position: Option<Position>) {
        self.done_here(position);
        // A new key, recorded: it keeps its place.
        self.budget = None;
        // Taken: what is done is not released when the guard drops.
        let key = self.cluster_key.take();
        if let (Some(cluster), Some((key, revision))) = (&self.keys.cluster, &key) {
            if let Err(e) = cluster.done(key, *revision, &self.digest, position).await {
                tracing::warn!(error = %e, "idempotency key not recorded for the cluster");
            }
        }
    }

    /// The publication failed: forget the key everywhere, so a retry publishes. A key that
    /// never reached the cluster's record (a single instance) gives its budget place back too;
    /// one in the record keeps it (see `budget`).
    pub async fn forget(mut self) {
        let key = self.cluster_key.take();
        if let (Some(cluster), Some((key, revision))) = (&self.keys.cluster, &key) {
            cluster.forget(key, *revision).await;
        }
    }

    fn done_here(&mut self, position: Option<Position>) {
        let Some(slot) = self.slot.take() else { return };
        let mut inner = self.keys.lock();
        let entry = inner
            .tenants
            .get_mut(&self.tenant)
            .and_then(|keys| keys.entries.get_mut(&slot));
        if let Some(entry) = entry.filter(|e| e.claimed == self.claimed) {
            entry.done = Some(position);
        }
    }
}

impl Drop for Guard {
    /// Not done: forget the key here and in the cluster's record, so a retry publishes. The
    /// record went only with `forget`: a keyed broadcast refused in a later room, a request
    /// cut off (its caller gone, a deadline) left the rooms claimed before it pending in the
    /// cluster, and a retry was told 409 for 10 s, one with another payload 422 for the
    /// bucket's five minutes, though nothing was published (outside audit 93, F1). Released
    /// by a task of its own: a drop cannot wait.
    fn drop(&mut self) {
        if let Some((key, revision)) = self.cluster_key.take() {
            let keys = self.keys.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Some(cluster) = &keys.cluster {
                        cluster.forget(&key, revision).await;
                    }
                });
            }
        }
        let budget = self.budget.take();
        let slot = self.slot.take();
        if budget.is_none() && slot.is_none() {
            return;
        }
        let mut inner = self.keys.lock();
        let inner = &mut *inner;
        let Some(keys) = inner.tenants.get_mut(&self.tenant) else {
            return;
        };
        if let Some(claimant) = budget {
            keys.give_back(claimant, self.claimed);
        }
        let Some(slot) = slot else { return };
        if keys
            .entries
            .get(&slot)
            .is_some_and(|e| e.claimed == self.claimed)
        {
            keys.entries.remove(&slot);
            inner.total -= 1;
        }
        // A forgotten slot stays in `order` until it reaches the front; behind live entries that
        // could take the whole window. Compacting once stale slots outnumber live ones keeps
        // `order` within twice the entries (amortised O(1) per forget).
        if keys.order.len() > 2 * keys.entries.len() + 64 {
            let entries = &keys.entries;
            keys.order
                .retain(|(slot, claimed)| entries.get(slot).is_some_and(|e| e.claimed == *claimed));
        }
    }
}

#[cfg(test)]
mod tests;
