//! The cluster's shared record of idempotency keys, so a retry that a load balancer sends to
//! another instance is still recognised: the JetStream key-value bucket `quiver_idempotency`,
//! whose entries expire after [`WINDOW`].
//!
//! A key is claimed with `create` (it fails if the key exists), so of two instances claiming
//! at once exactly one publishes. A claim whose instance died before it finished would block
//! the key for the whole window; after [`TAKEOVER`] it may be taken over (compare-and-set on
//! its revision), which is far longer than a publication may take (3 s at most).

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use quiver_proto::{Position, RoomName, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::WINDOW;

const BUCKET: &str = "quiver_idempotency";
/// How long a claim may stay unfinished before another instance takes it over.
pub const TAKEOVER: Duration = Duration::from_secs(10);
/// The bucket's size bound (about 1.5 million keys); past it new claims fail until old ones
/// expire, and the request is answered `unavailable`.
const MAX_BYTES: i64 = 256 << 20;

/// What the bucket says of a key, once a local claim found nothing.
pub enum Remote {
    /// This instance holds the claim now, at this revision of the record: publish, then
    /// [`ClusterKeys::done`] (or [`ClusterKeys::forget`]) with it.
    Claimed(u64),
    Done(Option<Position>),
    InProgress,
    Mismatch,
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// Hex SHA-256 of the payload.
    digest: String,
    /// When claimed (Unix milliseconds, the claiming instance's clock).
    at_ms: u64,
    /// False while publishing.
    done: bool,
    /// (epoch, offset), once done in a room with positions. Apart from `done`: JSON would
    /// read a "done without a position" back as "not done".
    position: Option<(u64, u64)>,
}

pub struct ClusterKeys {
    nats: async_nats::Client,
    store: OnceCell<kv::Store>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The bucket key: a digest of tenant, room and key (a key-value key allows few characters).
pub fn bucket_key(tenant: &TenantId, room: &RoomName, key: &str) -> String {
    let mut hash = Sha256::new();
    for part in [tenant.as_str(), room.as_str(), key] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

fn read(value: &[u8]) -> Result<Record, String> {
    serde_json::from_slice(value)
        .map_err(|_| "idempotency keys: an entry that is not a record".into())
}

impl Record {
    /// What a repeat with `digest` (hex) is told of this record, unless it is still pending
    /// (`None`).
    fn settled(&self, digest: &str) -> Option<Remote> {
        if self.digest != digest {
            return Some(Remote::Mismatch);
        }
        self.done.then(|| {
            Remote::Done(
                self.position
                    .map(|(epoch, offset)| Position { epoch, offset }),
            )
        })
    }
}

fn encode(record: &Record) -> bytes::Bytes {
    serde_json::to_vec(record).unwrap_or_default().into()
}

impl ClusterKeys {
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&kv::Store, String> {
        self.store
            .get_or_try_init(|| async {
                let js = async_nats::jetstream::new(self.nats.clone());
                js.create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    max_age: WINDOW,
                    history: 1,
                    max_bytes: MAX_BYTES,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("nats: idempotency keys: {e}"))
            })
            .await
    }

    /// Claims `key` cluster-wide, or tells what the instance that claimed it did.
    pub async fn claim(&self, key: &str, digest: &[u8; 32]) -> Result<Remote, String> {
        // Refused at once during an outage (and bounded otherwise), like a publish without a
        // key, instead of waiting out the NATS client's 10 s request timeout.
        crate::control::with_nats(&self.nats, self.claim_now(key, digest)).await
    }

    async fn claim_now(&self, key: &str, digest: &[u8; 32]) -> Result<Remote, String> {
        let store = self.store().await?;
        let digest = hex::encode(digest);
        let pending = encode(&Record {
            digest: digest.clone(),
            at_ms: now_ms(),
            done: false,
            position: None,
        });
        match store.create(key, pending.clone()).await {
            Ok(revision) => return Ok(Remote::Claimed(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("nats: idempotency keys: {e}")),
        }
        let entry = store
            .entry(key)
            .await
            .map_err(|e| format!("nats: idempotency keys: {e}"))?;
        // Expired or forgotten since `create` failed: one more try, racing any other instance.
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return Ok(match store.create(key, pending).await {
                Ok(revision) => Remote::Claimed(revision),
                Err(_) => Remote::InProgress,
            });
        };
        let record = read(&entry.value)?;
        if let Some(answer) = record.settled(&digest) {
            return Ok(answer);
        }
        if now_ms().saturating_sub(record.at_ms) < TAKEOVER.as_millis() as u64 {
            return Ok(Remote::InProgress);
        }
        Ok(match store.update(key, pending, entry.revision).await {
            Ok(revision) => Remote::Claimed(revision),
            Err(_) => Remote::InProgress,
        })
    }

    /// What the record says of `key` for a repeat with `digest`, without claiming it (`None`:
    /// no record): for an instance that may not claim a new key (its tenant's budget here is
    /// spent) but still answers a repeat of one claimed elsewhere (outside audit 93, F2). A
    /// pending claim, however old, is `InProgress`: taking it over would be a new claim.
    pub async fn look(&self, key: &str, digest: &[u8; 32]) -> Result<Option<Remote>, String> {
        crate::control::with_nats(&self.nats, async {
            let entry = self
                .store()
                .await?
                .entry(key)
                .await
                .map_err(|e| format!("nats: idempotency keys: {e}"))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                return Ok(None);
            };
            let record = read(&entry.value)?;
            Ok(Some(
                record
                    .settled(&hex::encode(digest))
                    .unwrap_or(Remote::InProgress),
            ))
        })
        .await
    }

    /// Records the publication: repeats on every instance get its position. Only over this
    /// instance's own claim (`revision`): one taken over meanwhile (after `TAKEOVER`) is the
    /// other instance's to record.
    pub async fn done(
        &self,
        key: &str,
        revision: u64,
        digest: &[u8; 32],
        position: Option<Position>,
    ) -> Result<(), String> {
        let record = Record {
            digest: hex::encode(digest),
            at_ms: now_ms(),
            done: true,
            position: position.map(|p| (p.epoch, p.offset)),
        };
        crate::control::with_nats(&self.nats, async {
            self.store()
                .await?
                .update(key, encode(&record), revision)
                .await
                .map(|_| ())
                .map_err(|e| format!("nats: idempotency keys: {e}"))
        })
        .await
    }

    /// Drops a claim whose publication failed or never began, so a retry publishes. Bounded
    /// like every other record operation (`with_nats`): a keyed publish whose broker failed
    /// waits for it before its answer.
    /// Only this instance's own claim (`revision`): a record taken over meanwhile, or made
    /// again by a retry once this one was gone, is someone else's, and deleting it would let a
    /// repeat publish twice (review 94, F1).
    pub async fn forget(&self, key: &str, revision: u64) {
        let deleted = crate::control::with_nats(&self.nats, async {
            self.store()
                .await?
                .delete_expect_revision(key, Some(revision))
                .await
                .map_err(|e| format!("nats: idempotency keys: {e}"))
        })
        .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "idempotency key not released; a retry waits for it");
        }
    }
}
