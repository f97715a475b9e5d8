//! History rooms on JetStream: one stream per (tenant, namespace), positions, resume, and the
//! per-room listener that keeps delivering across NATS restarts.
//!
//! **Why a stream per tenant.** A position's offset is the stream sequence. With one stream
//! per namespace shared by all tenants, the gap between two of a tenant's offsets counted
//! everyone else's publications (issue 10, defect 7). A tenant's stream holds only its own
//! rooms, so its offsets reveal nothing about any other tenant. Streams are created on first
//! use; there are at most tenants × history namespaces of them, and tenants only come from
//! tokens the operator signs.
//!
//! **Resume from any position.** Offsets are not contiguous within a room (the tenant's other
//! rooms of the namespace share the sequence), so "is everything after P still here?" cannot
//! be answered by looking for P itself. JetStream only ever removes a room's *oldest*
//! messages (per-subject count, age and byte limits all cut from the front), so a room's kept
//! messages are always the tail of what it had. From that:
//! - if the room keeps a message at or before `P + 1`, nothing after P is missing;
//! - otherwise something after P was removed only if the per-room count limit cut it (and
//!   then the room stays at that limit until age or bytes cut further, which also moves the
//!   stream's first sequence past P + 1) or age/bytes cut it (which moves the first sequence
//!   past it). So: fewer than the per-room limit kept and the stream's first sequence at most
//!   `P + 1` means nothing is missing. "The per-room limit" is the lowest the stream has ever
//!   had (a room cut to 50 stays at 50 when the limit is raised to 200, so "fewer than 200"
//!   would prove nothing): `history_size` raised or lowered between starts is applied to the
//!   existing stream, which keeps its lowest limit in its metadata ([`room_limit_floor`]),
//!   and a read judges by the smallest of that, the stream's limit and its own `history_size`.
//!
//! Anything else is answered `Failed`: never a replay with a hidden gap.
//!
//! **Positions.** The rooms of a stream share its sequence (one epoch per stream), so `P` may
//! be any sequence of the epoch up to the room's current position (PROTOCOL.md §5), another
//! room's included: the replay is what the room kept after it. A `P` past the room's last kept
//! publication is beyond its current position: `Failed`, as the embedded broker answers.
//!
//! **Consumers are bounded.** A stream allows a limited number of consumers (NATS's
//! `max_consumers`, 1,000 by default in some deployments, shared by every instance), so no
//! client may make them grow:
//! - live delivery uses one ordered consumer per stream with local interest (not per room),
//!   fanned out here to the rooms registered on it ([`Live`]); it outlives the stream's last
//!   local room by `LIVE_LINGER` (so Subscribe/Unsubscribe churn creates none) and is then
//!   deleted. While it is replaced (a reconnect) the old one is deleted too.
//! - a replay (resume, `History` page) or a presence listing takes one of `MAX_READS` slots
//!   per instance, creates a consumer for that read only, and deletes it as soon as the read
//!   ends; the slot is given back once the deletion is confirmed, or after `READ_INACTIVE`,
//!   the consumer's own inactivity threshold, if it could not be. Beyond the slots, a read
//!   waits at most 3 s and is then answered `unavailable` (retry).
//!
//! So one instance holds at most 1 live consumer per stream (2 for the moment one replaces
//! another), plus `MAX_READS` read consumers in all; N instances hold at most
//! N × (2 + `MAX_READS`) on one stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::{Position, TenantId};
use tracing::{debug, warn};

mod backlog;
mod live;

pub(super) use self::live::{Live, Registration};
use super::history_read::first_kept_now;
use super::read_slots::ReadSlot;
use super::{bounded, replicas, subject, unavailable, Inner, JS_TIMEOUT};
use crate::broker::BrokerError;
use crate::config::NamespaceConfig;
use crate::hub::RoomKey;

/// Read consumers (replays, history pages, presence listings) one instance holds at once.
pub const MAX_READS: usize = 32;
/// A read consumer's inactivity threshold: only matters when its deletion failed.
const READ_INACTIVE: Duration = Duration::from_secs(5);
/// Most publications one pull of a read consumer asks for.
pub(super) const READ_BATCH: usize = 256;

/// The stream metadata key of the lowest per-room limit the stream has ever had
/// ([`room_limit_floor`]).
const PER_ROOM_FLOOR: &str = "quiver_per_room_floor";

/// What a stream's largest message may take beyond `max_payload`: Quiver's headers (send time,
/// idempotency id) and NATS's own.
const STREAM_HEADER_ROOM: i32 = 4096;

/// A JetStream limit: 0 or less is none.
fn limit_or_max(limit: i64) -> u64 {
    u64::try_from(limit)
        .ok()
        .filter(|l| *l > 0)
        .unwrap_or(u64::MAX)
}

/// The per-room count limit that can have cut a room of this stream: the lower of its limit
/// now and the lowest it ever had (kept in its metadata since this version; a stream made
/// before never had its limits changed, so its own limit is its floor).
pub(super) fn room_limit_floor(config: &stream::Config) -> u64 {
    let now = limit_or_max(config.max_messages_per_subject);
    config
        .metadata
        .get(PER_ROOM_FLOOR)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(now, |floor| floor.min(now))
}

/// A history stream's limits, as this configuration wants them or as the stream has them.
#[derive(Debug, PartialEq, Eq)]
struct Limits {
    /// `history_size` (JetStream: -1 for none).
    per_room: i64,
    max_age: Duration,
    max_bytes: i64,
    /// The largest message the stream takes (`max_payload` and [`STREAM_HEADER_ROOM`]).
    max_message: i32,
}

/// A tenant's stream for one history namespace.
#[derive(Clone)]
pub struct TenantStream {
    pub stream: stream::Stream,
    /// The stream's creation time: a stream lost and created again is a new epoch.
    pub epoch: u64,
}

/// A stream's epoch: its creation time (odd, so never 0), which a stream lost and created
/// again does not share.
pub(super) fn epoch_of(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(1) | 1
}

/// `QUIVER_<tenant length>_<tenant>_<namespace>`: the length keeps it unambiguous (both parts
/// may contain `_`), and neither part can contain what stream names forbid (`.`, `*`, `>`,
/// whitespace, path separators). At most 7 + 2 + 64 + 1 + 128 bytes.
pub fn stream_name(tenant: &TenantId, ns: &str) -> String {
    format!("QUIVER_{}_{}_{}", tenant.as_str().len(), tenant, ns)
}

impl Inner {
    /// The tenant's stream of `ns`, created (or found, and its limits brought up to date) on
    /// first use.
    ///
    /// The set-up runs in a task of its own. A `OnceCell`'s initialisation runs inside the
    /// first caller's future, and every other caller waits for it: a first caller whose future
    /// is not polled meanwhile held up every other, a session's queued `Publish` (polled only
    /// between its commands) the `History` or `Subscribe` right behind it, until both were
    /// refused `unavailable` after 3 s (outside audit 21, F2).
    pub(super) async fn tenant_stream(
        self: &Arc<Self>,
        tenant: &TenantId,
        ns: &NamespaceConfig,
    ) -> Result<TenantStream, BrokerError> {
        let cell = {
            let mut streams = self.streams.lock().await;
            streams
                .entry((tenant.clone(), ns.name.clone()))
                .or_default()
                .clone()
        };
        if let Some(ready) = cell.get() {
            return Ok(ready.clone());
        }
        let (this, tenant, ns) = (self.clone(), tenant.clone(), ns.clone());
        let setup = tokio::spawn(async move {
            bounded(
                "stream set-up",
                cell.get_or_try_init(|| this.set_up_stream(&tenant, &ns)),
            )
            .await
            .cloned()
        });
        setup
            .await
            .map_err(|e| BrokerError::Failed(format!("stream set-up ended: {e}")))?
    }

    async fn set_up_stream(
        &self,
        tenant: &TenantId,
        ns: &NamespaceConfig,
    ) -> Result<TenantStream, BrokerError> {
        let name = stream_name(tenant, &ns.name);
        let seen = self.high_water(tenant, &ns.name);
        let config_limits = Limits {
            per_room: i64::try_from(ns.history_size).unwrap_or(i64::MAX),
            max_age: ns.history_ttl,
            max_bytes: i64::try_from(self.config.limits.history_tenant_max_bytes)
                .unwrap_or(i64::MAX),
            max_message: i32::try_from(self.config.limits.max_payload)
                .unwrap_or(i32::MAX)
                .saturating_add(STREAM_HEADER_ROOM),
        };
        let config = stream::Config {
            // Only used when the stream is created (see `Inner::high_water`).
            first_sequence: (seen > 0).then_some(seen + 1),
            name: name.clone(),
            subjects: vec![
                format!("quiver.{tenant}.room.{}", ns.name),
                format!("quiver.{tenant}.room.{}.>", ns.name),
            ],
            max_messages_per_subject: config_limits.per_room,
            max_age: config_limits.max_age,
            max_bytes: config_limits.max_bytes,
            // The stream refuses what no subscriber could take: only a publisher other
            // than Quiver sends more (outside cluster audit 6, F1).
            max_message_size: config_limits.max_message,
            storage: self.storage,
            num_replicas: replicas::for_new(&self.config),
            allow_direct: true,
            metadata: HashMap::from([(
                PER_ROOM_FLOOR.to_owned(),
                config_limits.per_room.to_string(),
            )]),
            ..Default::default()
        };
        let mut stream = self.js.get_or_create_stream(config).await.map_err(|e| {
            if e.to_string().contains("overlap") {
                BrokerError::Failed(format!(
                    "creating stream {name}: {e}. A stream of an older Quiver (QUIVER_{ns}, one \
                     for all tenants) still holds these subjects; remove it \
                     (`nats stream rm QUIVER_{ns}`): its positions cannot be resumed anyway",
                    ns = ns.name
                ))
            } else {
                unavailable(e)
            }
        })?;
        let info = stream.info().await.map_err(unavailable)?.clone();
        let epoch = epoch_of(&info);
        if info.config.storage != self.storage {
            // JetStream cannot change a stream's storage, and copying it would change
            // every position: said loudly instead of ignored (outside audit).
            warn!(
                stream = %name,
                has = ?info.config.storage,
                configured = ?self.storage,
                "nats.storage applies to streams created from now on: delete this \
                 stream to switch it (`nats stream rm`; its history is lost)"
            );
        }
        // Its copies first: a refused change leaves the stream usable as it is, and the
        // limits' update then starts from what JetStream has.
        let current =
            replicas::bring_stream_to(&self.js, info.config, replicas::configured(&self.config))
                .await;
        self.bring_limits_up_to_date(&name, current, &config_limits)
            .await?;
        Ok(TenantStream { stream, epoch })
    }

    /// A stream made by an earlier start (or another instance) with other limits is brought
    /// to this configuration's: `get_or_create_stream` leaves an existing stream as it is, so
    /// a raised `history_size` or `history_ttl` never applied (outside audit: a resume across
    /// what the old, smaller limit had cut was answered `Recovered` by an instance that
    /// believed the new one). Reads still check the stream's limit as it is then
    /// (`history_read.rs`), since instances configured differently overwrite each other's.
    async fn bring_limits_up_to_date(
        &self,
        name: &str,
        current: stream::Config,
        wanted: &Limits,
    ) -> Result<(), BrokerError> {
        let now = Limits {
            per_room: current.max_messages_per_subject,
            max_age: current.max_age,
            max_bytes: current.max_bytes,
            max_message: current.max_message_size,
        };
        if now == *wanted && current.metadata.contains_key(PER_ROOM_FLOOR) {
            return Ok(());
        }
        // The lowest per-room limit the stream has had stays with it: a room cut to it and
        // not yet refilled keeps fewer than a raised limit, which alone tells nothing.
        let floor = [room_limit_floor(&current), limit_or_max(wanted.per_room)]
            .into_iter()
            .min()
            .unwrap_or(u64::MAX);
        warn!(
            stream = name,
            from = ?now,
            to = ?wanted,
            "history limits of an existing stream changed to this configuration's"
        );
        let mut metadata = current.metadata.clone();
        metadata.insert(PER_ROOM_FLOOR.to_owned(), floor.to_string());
        let config = stream::Config {
            max_messages_per_subject: wanted.per_room,
            max_age: wanted.max_age,
            max_bytes: wanted.max_bytes,
            max_message_size: wanted.max_message,
            metadata,
            ..current
        };
        self.js.update_stream(config).await.map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn publish_history(
        self: &Arc<Self>,
        key: &RoomKey,
        ns: &NamespaceConfig,
        payload: Bytes,
        once: Option<&str>,
    ) -> Result<Position, BrokerError> {
        let TenantStream { epoch, .. } = self.tenant_stream(&key.tenant, ns).await?;
        let mut headers = super::lag::stamp();
        if let Some(id) = once {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        // Awaiting the ack: a publication to a history room is stored, or refused.
        let started = std::time::Instant::now();
        let store = async {
            let pending = self
                .js
                .publish_with_headers(subject(key), headers, payload)
                .await
                .map_err(unavailable)?;
            pending.await.map_err(unavailable)
        };
        // A publication handed over and not confirmed in time may be stored all the same (a
        // stalled NATS that comes back stores it): the refusal says so, so that a client does
        // not take "unavailable" for "not published" and send it again (outside audit 30, F3).
        let ack = tokio::time::timeout(JS_TIMEOUT, store)
            .await
            .map_err(|_| {
                BrokerError::Unavailable(format!(
                    "stored publish not confirmed within {} s: it may still be stored (read \
                     History before publishing it again)",
                    JS_TIMEOUT.as_secs()
                ))
            })??;
        metrics::histogram!(crate::metrics::JETSTREAM_PUBLISH_DURATION)
            .record(started.elapsed().as_secs_f64());
        self.saw(&key.tenant, &ns.name, ack.sequence);
        Ok(Position {
            epoch,
            offset: ack.sequence,
        })
    }

    fn high_water(&self, tenant: &TenantId, ns: &str) -> u64 {
        self.high_water
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant.clone(), ns.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn saw(&self, tenant: &TenantId, ns: &str, sequence: u64) {
        let mut seen = self.high_water.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry((tenant.clone(), ns.to_owned())).or_default();
        *entry = (*entry).max(sequence);
    }

    /// The room's oldest kept publication, for `History` without `since`.
    pub(super) async fn first_kept(
        self: &Arc<Self>,
        key: &RoomKey,
        ns: &NamespaceConfig,
    ) -> Result<Option<Position>, BrokerError> {
        self.reachable()?;
        let TenantStream { stream, epoch } = self.tenant_stream(&key.tenant, ns).await?;
        let first = bounded("history first", first_kept_now(&stream, &subject(key))).await?;
        Ok(first.map(|offset| Position { epoch, offset }))
    }

    /// A name for a new consumer of this instance: unique, so it can be deleted by name.
    fn consumer_name(&self) -> String {
        let n = self
            .consumer_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("quiver_{}_{n}", self.consumer_prefix)
    }

    /// A slot for one short-lived read consumer of `tenant`'s, waited for at most `JS_TIMEOUT`
    /// (shared fairly between tenants: `read_slots.rs`).
    pub(super) async fn read_slot(&self, tenant: &TenantId) -> Result<ReadSlot, BrokerError> {
        match self.reads.acquire(tenant, super::JS_TIMEOUT).await {
            Some(slot) => Ok(slot),
            None => Err(BrokerError::Unavailable(format!(
                "too many history reads in progress on this instance (at most {MAX_READS}); \
                 retry shortly"
            ))),
        }
    }

    /// A consumer for one read, deleted when the read ends (its guard dropped), however it
    /// ends. The slot is held until the deletion is done, or until NATS would have dropped the
    /// consumer by itself: the count of read consumers never exceeds `MAX_READS`.
    pub(super) async fn read_consumer(
        &self,
        tenant: &TenantId,
        stream: &stream::Stream,
        config: consumer::pull::Config,
    ) -> Result<(consumer::PullConsumer, ReadGuard), BrokerError> {
        let permit = self.read_slot(tenant).await?;
        let name = self.consumer_name();
        // Made before the consumer, so a creation cut short still ends in a deletion.
        let guard = ReadGuard {
            stream: stream.clone(),
            name: name.clone(),
            permit: Some(permit),
        };
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                name: Some(name),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: READ_INACTIVE,
                memory_storage: true,
                num_replicas: 1,
                ..config
            })
            .await
            .map_err(unavailable)?;
        Ok((consumer, guard))
    }
}

/// Deletes a read consumer when dropped, then gives back its slot.
pub(super) struct ReadGuard {
    stream: stream::Stream,
    name: String,
    permit: Option<ReadSlot>,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let (stream, name, permit) = (
            self.stream.clone(),
            std::mem::take(&mut self.name),
            self.permit.take(),
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if !delete_consumer(&stream, &name).await {
                // NATS drops it by itself after this; until then it still counts.
                tokio::time::sleep(READ_INACTIVE).await;
            }
            drop(permit);
        });
    }
}

/// One pull of a read consumer: up to `wanted` messages, at most `READ_BATCH`.
pub(super) async fn pull(
    consumer: &consumer::PullConsumer,
    wanted: usize,
) -> Result<consumer::pull::Batch, BrokerError> {
    consumer
        .fetch()
        .max_messages(wanted.min(READ_BATCH))
        .messages()
        .await
        .map_err(unavailable)
}

/// Deletes a consumer (bounded); whether it is gone (deleted, or never existed).
async fn delete_consumer(stream: &stream::Stream, name: &str) -> bool {
    match tokio::time::timeout(super::JS_TIMEOUT, stream.delete_consumer(name)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => match e.kind() {
            ConsumerErrorKind::JetStream(js)
                if js.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
            {
                true
            }
            _ => {
                debug!(consumer = name, error = %e, "consumer not deleted; NATS drops it when idle");
                false
            }
        },
        Err(_) => false,
    }
}

/// A random name for this instance's consumers.
pub(super) fn instance_prefix() -> String {
    format!("{:016x}", rand::random::<u64>())
}
