//! The cluster's shared record of idempotency keys, so a retry that a load balancer sends to
//! another instance is still recognised: the JetStream key-value bucket `quiver_idempotency`,
//! whose entries expire after [`WINDOW`].
//!
//! A key is claimed with `create` (it fails if the key exists), so of two instances claiming
//! at once exactly one publishes. A claim whose instance died before it finished would block
//! the key for the whole window; after [`TAKEOVER`] it may be taken over (compare-and-set on
//! its revision), which is far longer than a publication may take (3 s at most).

use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateError, UpdateErrorKind};
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

/// Why a claim got no answer from the bucket. The two differ in what the claimant's budget
/// does (review 113, F4): a claim that surely stored nothing gives its place back, one that
/// may have stored a pending record keeps it, for that record fills the bucket all the same.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Nothing of this claim is in the bucket: refused at once while NATS is known to be
    /// away, or answered with a refusal (the bucket's maximum bytes, for one).
    #[error("{0}")]
    NotStored(String),
    /// The claim may be stored, now or later: no answer within the bound (NATS stalled, not
    /// known to be away), whereas the create may sit in the client's queue or a socket and be
    /// stored once NATS resumes; or the answer was lost.
    #[error("{0}")]
    Unknown(String),
}

impl ClaimError {
    /// Whether the claim may have left a record in the bucket.
    pub fn may_be_stored(&self) -> bool {
        matches!(self, Self::Unknown(_))
    }
}

/// Whether a failed `create` (or compare-and-set `update`) of a record proves it was not
/// stored: the server answered with a refusal, or the request was never sent. Any other
/// failure (timed out, the answer lost) leaves it unknown.
fn surely_not_stored(error: &(dyn std::error::Error + 'static)) -> bool {
    // `create` fails with the `update` it made inside (a JetStream publish), or with the
    // `entry` it read after it, which tells nothing of the publish: unknown then.
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(update) = e.downcast_ref::<UpdateError>() {
            return match update.kind() {
                UpdateErrorKind::InvalidKey | UpdateErrorKind::WrongLastRevision => true,
                UpdateErrorKind::TimedOut => false,
                UpdateErrorKind::Other => std::error::Error::source(update)
                    .and_then(|s| s.downcast_ref::<PublishError>())
                    .is_some_and(publish_refused),
            };
        }
        source = e.source();
    }
    false
}

/// A JetStream publish that was refused: by the stream's answer, for want of a stream, or
/// before it was sent.
fn publish_refused(error: &PublishError) -> bool {
    match error.kind() {
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::MaxPayloadExceeded => true,
        // An error answer from the stream (maximum bytes exceeded, …); not an answer that
        // could not be read, nor a failure to hand the request to the connection.
        PublishErrorKind::Other => {
            std::error::Error::source(error).is_some_and(|s| s.is::<async_nats::jetstream::Error>())
        }
        _ => false,
    }
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
    /// Copies JetStream keeps of the record (`nats.replicas`; unset: one for a new bucket, an
    /// existing one keeps its count).
    replicas: Option<usize>,
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
            replicas: None,
        }
    }

    /// The record kept in `replicas` copies (`nats.replicas`).
    pub fn with_replicas(mut self, replicas: Option<usize>) -> Self {
        self.replicas = replicas;
        self
    }

    async fn store(&self) -> Result<&kv::Store, String> {
        self.store
            .get_or_try_init(|| async {
                let js = async_nats::jetstream::new(self.nats.clone());
                // Created or brought to this configuration: `create_key_value` refused a bucket
                // made with another replica count ("already in use with a different
                // configuration"), so a changed `nats.replicas` would have refused every claim.
                crate::broker::nats::replicas::key_value(
                    &js,
                    kv::Config {
                        bucket: BUCKET.into(),
                        max_age: WINDOW,
                        history: 1,
                        max_bytes: MAX_BYTES,
                        ..Default::default()
                    },
                    self.replicas,
                )
                .await
                .map_err(|e| format!("nats: idempotency keys: {e}"))
            })
            .await
    }

    /// Claims `key` cluster-wide, or tells what the instance that claimed it did.
    pub async fn claim(&self, key: &str, digest: &[u8; 32]) -> Result<Remote, ClaimError> {
        // Refused at once during an outage (and bounded otherwise), like a publish without a
        // key, instead of waiting out the NATS client's 10 s request timeout. `with_nats`
        // fails without starting the claim only while NATS is known to be away: nothing sent.
        let mut started = false;
        let answer = crate::control::with_nats(&self.nats, async {
            started = true;
            Ok(self.claim_now(key, digest).await)
        })
        .await;
        match answer {
            Ok(answer) => answer,
            Err(e) if started => Err(ClaimError::Unknown(e)),
            Err(e) => Err(ClaimError::NotStored(e)),
        }
    }

    async fn claim_now(&self, key: &str, digest: &[u8; 32]) -> Result<Remote, ClaimError> {
        // Every error before this instance's own `create` or `update` is sent, or after one
        // of them was refused, stored nothing of this claim.
        let refused = |e: String| ClaimError::NotStored(e);
        let failed = |e: &(dyn std::error::Error + 'static)| {
            let message = format!("nats: idempotency keys: {e}");
            if surely_not_stored(e) {
                ClaimError::NotStored(message)
            } else {
                ClaimError::Unknown(message)
            }
        };
        let store = self.store().await.map_err(refused)?;
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
            Err(e) => return Err(failed(&e)),
        }
        let entry = store
            .entry(key)
            .await
            .map_err(|e| refused(format!("nats: idempotency keys: {e}")))?;
        // Expired or forgotten since `create` failed: one more try, racing any other instance.
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            return match store.create(key, pending).await {
                Ok(revision) => Ok(Remote::Claimed(revision)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Remote::InProgress),
                Err(e) => Err(failed(&e)),
            };
        };
        let record = read(&entry.value).map_err(refused)?;
        if let Some(answer) = record.settled(&digest) {
            return Ok(answer);
        }
        if now_ms().saturating_sub(record.at_ms) < TAKEOVER.as_millis() as u64 {
            return Ok(Remote::InProgress);
        }
        match store.update(key, pending, entry.revision).await {
            Ok(revision) => Ok(Remote::Claimed(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Remote::InProgress),
            Err(e) => Err(failed(&e)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::kv::CreateError;

    /// The stream's error answer to a create in a full bucket (a `DiscardNew` stream at its
    /// maximum bytes), as async-nats wraps it: publish, update, then create.
    fn bucket_full() -> CreateError {
        let answer: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":503,"err_code":10077,"description":"maximum bytes exceeded"}"#,
        )
        .expect("an error answer");
        UpdateError::from(PublishError::with_source(PublishErrorKind::Other, answer)).into()
    }

    /// Review 113, F4: only a refusal proves the claim is not in the bucket; a claim unanswered
    /// in time may be stored once NATS resumes, and must keep its place in the budget.
    #[test]
    fn only_refusals_prove_a_claim_was_not_stored() {
        assert!(surely_not_stored(&bucket_full()));
        let stale: CreateError =
            UpdateError::from(PublishError::new(PublishErrorKind::WrongLastSequence)).into();
        assert!(surely_not_stored(&stale));
        let no_stream: CreateError =
            UpdateError::from(PublishError::new(PublishErrorKind::StreamNotFound)).into();
        assert!(surely_not_stored(&no_stream));

        let timed_out: CreateError =
            UpdateError::from(PublishError::new(PublishErrorKind::TimedOut)).into();
        assert!(!surely_not_stored(&timed_out));
        let answer_lost: CreateError =
            UpdateError::from(PublishError::new(PublishErrorKind::BrokenPipe)).into();
        assert!(!surely_not_stored(&answer_lost));
        let unreadable: CreateError = UpdateError::from(PublishError::with_source(
            PublishErrorKind::Other,
            "an answer that is not JSON",
        ))
        .into();
        assert!(!surely_not_stored(&unreadable));
        // The read `create` makes after a failed update says nothing of that update.
        let read_failed = CreateError::new(CreateErrorKind::Other);
        assert!(!surely_not_stored(&read_failed));

        assert!(!ClaimError::NotStored("nats: disconnected".into()).may_be_stored());
        assert!(ClaimError::Unknown("nats: no answer within 3s".into()).may_be_stored());
    }
}
