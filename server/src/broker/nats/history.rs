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
//!   past it). So: fewer than `history_size` kept and the stream's first sequence at most
//!   `P + 1` means nothing is missing.
//!
//! Anything else is answered `Failed`: never a replay with a hidden gap.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::{Position, TenantId};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{bounded, subject, unavailable, Inner};
use crate::broker::{BrokerError, Recovered};
use crate::config::NamespaceConfig;
use crate::hub::RoomKey;

/// A tenant's stream for one history namespace.
#[derive(Clone)]
pub struct TenantStream {
    pub stream: stream::Stream,
    /// The stream's creation time: a stream lost and created again is a new epoch.
    pub epoch: u64,
}

/// `QUIVER_<tenant length>_<tenant>_<namespace>`: the length keeps it unambiguous (both parts
/// may contain `_`), and neither part can contain what stream names forbid (`.`, `*`, `>`,
/// whitespace, path separators). At most 7 + 2 + 64 + 1 + 128 bytes.
pub fn stream_name(tenant: &TenantId, ns: &str) -> String {
    format!("QUIVER_{}_{}_{}", tenant.as_str().len(), tenant, ns)
}

impl Inner {
    pub(super) async fn tenant_stream(
        &self,
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
        bounded(
            "stream set-up",
            cell.get_or_try_init(|| async {
                let name = stream_name(tenant, &ns.name);
                let seen = self.high_water(tenant, &ns.name);
                let config = stream::Config {
                    // Only used when the stream is created (see `Inner::high_water`).
                    first_sequence: (seen > 0).then_some(seen + 1),
                    name: name.clone(),
                    subjects: vec![
                        format!("quiver.{tenant}.room.{}", ns.name),
                        format!("quiver.{tenant}.room.{}.>", ns.name),
                    ],
                    max_messages_per_subject: i64::try_from(ns.history_size).unwrap_or(i64::MAX),
                    max_age: ns.history_ttl,
                    max_bytes: i64::try_from(self.config.limits.history_tenant_max_bytes)
                        .unwrap_or(i64::MAX),
                    storage: self.storage,
                    allow_direct: true,
                    ..Default::default()
                };
                let mut stream = self.js.get_or_create_stream(config).await.map_err(|e| {
                    if e.to_string().contains("overlap") {
                        BrokerError::Unavailable(format!(
                            "creating stream {name}: {e}. A stream of an older Quiver (QUIVER_{ns}, one for \
                             all tenants) still holds these subjects; remove it \
                             (`nats stream rm QUIVER_{ns}`): its positions cannot be resumed anyway",
                            ns = ns.name
                        ))
                    } else {
                        unavailable(e)
                    }
                })?;
                let created = stream.info().await.map_err(unavailable)?.created;
                let epoch = u64::try_from(created.unix_timestamp_nanos()).unwrap_or(1) | 1;
                Ok(TenantStream { stream, epoch })
            }),
        )
        .await
        .cloned()
    }

    pub(super) async fn publish_history(
        &self,
        key: &RoomKey,
        ns: &NamespaceConfig,
        payload: Bytes,
    ) -> Result<Position, BrokerError> {
        let TenantStream { epoch, .. } = self.tenant_stream(&key.tenant, ns).await?;
        // Awaiting the ack: a publication to a history room is stored, or refused.
        let started = std::time::Instant::now();
        let ack = bounded("stored publish", async {
            let pending = self
                .js
                .publish_with_headers(subject(key), super::lag::stamp(), payload)
                .await
                .map_err(unavailable)?;
            pending.await.map_err(unavailable)
        })
        .await?;
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

    pub(super) async fn recover_history(
        &self,
        key: &RoomKey,
        ns: &NamespaceConfig,
        since: Option<Position>,
        max: usize,
    ) -> Result<Recovered, BrokerError> {
        let TenantStream { stream, epoch } = self.tenant_stream(&key.tenant, ns).await?;
        let subject = subject(key);
        bounded(
            "history read",
            read_history(stream, epoch, subject, ns.history_size, since, max),
        )
        .await
    }

    /// The room's oldest kept publication, for `History` without `since`.
    pub(super) async fn first_kept(
        &self,
        key: &RoomKey,
        ns: &NamespaceConfig,
    ) -> Result<Option<Position>, BrokerError> {
        let TenantStream { stream, epoch } = self.tenant_stream(&key.tenant, ns).await?;
        let subject = subject(key);
        bounded("history first", async move {
            match stream.direct_get_first_for_subject(subject).await {
                Ok(msg) => Ok(Some(Position {
                    epoch,
                    offset: msg.sequence,
                })),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }

    /// Starts delivering a history room to the hub: an ordered consumer from the stream's
    /// next sequence, rebuilt from the last delivered one whenever NATS reconnects or the
    /// consumer fails. Returns once the first consumer delivers.
    pub(super) async fn listen_history(
        self: &Arc<Self>,
        key: RoomKey,
        ns: NamespaceConfig,
    ) -> Result<JoinHandle<()>, BrokerError> {
        let mut generations = self.health.watch();
        let generation = *generations.borrow_and_update();
        let TenantStream { stream, epoch } = self.tenant_stream(&key.tenant, &ns).await?;
        let last = bounded("stream info", async {
            stream.get_info().await.map_err(unavailable)
        })
        .await?
        .state
        .last_sequence;
        let messages = self.consumer_from(&key, &ns, last + 1).await?;
        let listener = self.health.new_listener();
        self.health.built(listener, generation);
        let inner = self.clone();
        Ok(tokio::spawn(async move {
            let _forget = Forget(inner.clone(), listener);
            let mut cursor = Cursor {
                epoch,
                next: last + 1,
            };
            let mut messages = messages;
            loop {
                let broken = inner
                    .deliver_until_broken(&key, &mut messages, &mut cursor, &mut generations)
                    .await;
                match broken {
                    Broken::Gone => return,
                    Broken::Reconnected => {}
                    // Not in a tight loop if the new consumer fails at once as well.
                    Broken::Failed => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                let Some(rebuilt) = inner
                    .rebuild(&key, &ns, &mut cursor, &mut generations, listener)
                    .await
                else {
                    return;
                };
                messages = rebuilt;
            }
        }))
    }

    async fn consumer_from(
        &self,
        key: &RoomKey,
        ns: &NamespaceConfig,
        start: u64,
    ) -> Result<consumer::pull::Ordered, BrokerError> {
        let TenantStream { stream, .. } = self.tenant_stream(&key.tenant, ns).await?;
        bounded("consumer set-up", async {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: subject(key),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            consumer.messages().await.map_err(unavailable)
        })
        .await
    }

    /// Delivers until the consumer fails or ends, or NATS reconnected.
    async fn deliver_until_broken(
        &self,
        key: &RoomKey,
        messages: &mut consumer::pull::Ordered,
        cursor: &mut Cursor,
        generations: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Broken {
        // Every consumer of the namespace on this node writes the same gauge: it shows the
        // latest consumer's backlog, which is what says "this node is behind".
        let pending = metrics::gauge!(
            crate::metrics::JETSTREAM_CONSUMER_PENDING,
            "namespace" => key.room.namespace().to_owned()
        );
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(Ok(msg)) => {
                        let Ok(info) = msg.info() else { continue };
                        let offset = info.stream_sequence;
                        pending.set(info.pending as f64);
                        super::lag::record(msg.headers.as_ref());
                        cursor.next = offset + 1;
                        let position = Position { epoch: cursor.epoch, offset };
                        self.hub.deliver(key, Some(position), msg.payload.clone());
                    }
                    Some(Err(e)) => {
                        debug!(room = %key.room, error = %e, "history consumer failed; rebuilding");
                        return Broken::Failed;
                    }
                    None => return Broken::Failed,
                },
                changed = generations.changed() => {
                    if changed.is_err() {
                        return Broken::Gone;
                    }
                    debug!(room = %key.room, "NATS reconnected; rebuilding the history consumer");
                    // Before anyone creates the stream again (see `Inner::high_water`).
                    self.saw(&key.tenant, key.room.namespace(), cursor.next - 1);
                    return Broken::Reconnected;
                }
            }
        }
    }

    /// A new consumer from the cursor, retried until it works; `None` once the broker is gone.
    async fn rebuild(
        &self,
        key: &RoomKey,
        ns: &NamespaceConfig,
        cursor: &mut Cursor,
        generations: &mut tokio::sync::watch::Receiver<u64>,
        listener: u64,
    ) -> Option<consumer::pull::Ordered> {
        let mut pause = Duration::from_millis(25);
        loop {
            let generation = *generations.borrow_and_update();
            let attempt = async {
                let TenantStream { epoch, .. } = self.tenant_stream(&key.tenant, ns).await?;
                if epoch != cursor.epoch {
                    // The stream was lost with NATS (memory storage) and created again, from
                    // the highest sequence seen here or from 1: read it from its start.
                    warn!(room = %key.room, "history stream was recreated: its history is lost");
                    *cursor = Cursor { epoch, next: 1 };
                }
                self.consumer_from(key, ns, cursor.next).await
            };
            match attempt.await {
                Ok(messages) => {
                    self.health.built(listener, generation);
                    return Some(messages);
                }
                Err(e) => debug!(room = %key.room, error = %e, "history consumer not rebuilt yet"),
            }
            // Retry soon (NATS answering is what we wait for), sooner after a reconnect.
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = generations.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Why a history listener stopped delivering.
enum Broken {
    Reconnected,
    Failed,
    Gone,
}

/// Where a history listener is: the stream it reads and the next sequence to deliver.
struct Cursor {
    epoch: u64,
    next: u64,
}

/// Takes a listener out of the readiness count when its task ends (or is aborted).
struct Forget(Arc<Inner>, u64);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.health.forget(self.1);
    }
}

async fn read_history(
    stream: stream::Stream,
    epoch: u64,
    subject: String,
    history_size: usize,
    since: Option<Position>,
    // Most publications to read (a history page needs no more than its limit).
    max: usize,
) -> Result<Recovered, BrokerError> {
    let state = stream.get_info().await.map_err(unavailable)?.state;
    let last_kept = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(msg) => Some(msg.sequence),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
        Err(e) => return Err(unavailable(e)),
    };
    // A room with nothing kept is at the stream's position: whatever the room gets next comes
    // after it. (The stream info was read first, so nothing of the room slips between.)
    let current = Position {
        epoch,
        offset: last_kept.unwrap_or(state.last_sequence),
    };
    let answer = |replay| {
        Ok(Recovered {
            current: Some(current),
            replay,
        })
    };
    let Some(since) = since else {
        return answer(None);
    };
    // Another epoch, or a position this stream never reached.
    if since.epoch != epoch || since.offset > state.last_sequence {
        return answer(None);
    }
    let front_intact = state.first_sequence <= since.offset.saturating_add(1);
    let last = match last_kept {
        Some(last) if last > since.offset => last,
        // Nothing of the room after P is kept. If the room keeps anything (at or before P),
        // nothing after P was removed (removal takes the oldest first); if it keeps nothing,
        // nothing was removed after P as long as the stream's front is intact.
        _ => return answer((last_kept.is_some() || front_intact).then(Vec::new)),
    };
    let first_kept = match stream.direct_get_first_for_subject(subject.clone()).await {
        Ok(msg) => msg.sequence,
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return answer(None),
        Err(e) => return Err(unavailable(e)),
    };
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: since.offset + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let after = consumer.info().await.map_err(unavailable)?.num_pending;
    // See the module documentation: the room's first kept message at or before P + 1, or
    // (everything kept is after P, so `after` is all it keeps) under the count limit with
    // the stream's front intact.
    let complete = first_kept <= since.offset + 1 || (after < history_size as u64 && front_intact);
    if !complete {
        return answer(None);
    }
    if after == 0 {
        // Cut between our reads: nothing left to replay, and it was not ours to keep.
        return answer(None);
    }
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let mut replay = Vec::new();
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(unavailable)?;
        let info = msg.info().map_err(unavailable)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        replay.push((Position { epoch, offset: seq }, msg.payload.clone()));
        if seq >= last || pending == 0 || replay.len() >= max {
            break;
        }
    }
    answer(Some(replay))
}
