//! The NATS backplane: several instances share rooms through NATS.
//!
//! Subjects: `quiver.<tenant>.room.<room>`, built only from a validated `TenantId` and `RoomName`
//! (whose tokens are `[A-Za-z0-9_-]`), so no client input can become a wildcard or name another
//! tenant's subject.
//!
//! - Live-only rooms use core NATS: publish, and a core subscription per room while this
//!   instance has local subscribers (interest-based: no firehose).
//! - Rooms in a history namespace go through JetStream, one stream per namespace
//!   (`QUIVER_<namespace>`, per-subject message limit = history size, max age = history TTL).
//!   A position is `{epoch: the stream's creation time, offset: the stream sequence}`: offsets
//!   grow within a room but are not contiguous (the stream is shared by the namespace's rooms).
//!   Live delivery is an ordered consumer per room while there is local interest, so every
//!   instance delivers a room in stream order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use quiver_proto::{Member, Position};
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Broker, BrokerError, Recovered};
use crate::config::{Config, NamespaceConfig, NatsConfig};
use crate::hub::{Delivery, Hub, RoomKey};

/// How long a JetStream operation (stream set-up, stored publish, history read) may take before
/// the command is answered `unavailable`: during a NATS outage, clients hear so promptly.
const JS_TIMEOUT: Duration = Duration::from_secs(3);

async fn bounded<T>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(JS_TIMEOUT, op)
        .await
        .map_err(|_| BrokerError::Unavailable(format!("{what} timed out")))?
}

pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    hub: Arc<Hub>,
    config: Arc<Config>,
    storage: stream::StorageType,
    /// One stream per history namespace, created on first use (NATS may be down at start).
    streams: Mutex<HashMap<String, Arc<OnceCell<NsStream>>>>,
    /// Rooms this instance listens to. An async lock, because changing interest talks to NATS;
    /// it serialises interest changes only, never the publish path.
    interest: Mutex<HashMap<RoomKey, JoinHandle<()>>>,
    presence: OnceCell<jetstream::kv::Store>,
    /// This instance's presence entries (KV key → user), re-put every third of the TTL so they
    /// outlive nothing but a dead instance.
    local_presence: Arc<std::sync::Mutex<HashMap<String, Bytes>>>,
}

const PRESENCE_BUCKET: &str = "quiver_presence";

fn presence_key(key: &RoomKey, session: &str) -> String {
    format!("{}.{}.{}", key.tenant, key.room, session)
}

fn events_subject(key: &RoomKey) -> String {
    format!("quiver.{}.events.{}", key.tenant, key.room)
}

#[derive(Clone)]
struct NsStream {
    stream: stream::Stream,
    epoch: u64,
}

pub fn subject(key: &RoomKey) -> String {
    format!("quiver.{}.room.{}", key.tenant, key.room)
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl NatsBroker {
    pub async fn connect(
        nats: &NatsConfig,
        hub: Arc<Hub>,
        config: Arc<Config>,
    ) -> Result<Self, BrokerError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("quiver")
            // Start even when NATS is down; /readyz says so until it is reachable.
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => info!("nats connected"),
                    async_nats::Event::Disconnected => warn!("nats disconnected"),
                    // One event per dropped message: log at debug only, the metric counts.
                    async_nats::Event::SlowConsumer(_) => {
                        metrics::counter!(crate::metrics::DELIVERIES_DROPPED, "reason" => "broker_slow_consumer").increment(1)
                    }
                    other => info!(event = %other, "nats"),
                }
            });
        if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &nats.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(creds) = &nats.credentials {
            options = options.credentials_file(creds).await.map_err(unavailable)?;
        }
        if let Some(ca) = &nats.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = nats
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| BrokerError::Unavailable(format!("nats url: {e}")))?;
        let client = options.connect(urls).await.map_err(unavailable)?;
        let storage = match nats.storage.as_str() {
            "file" => stream::StorageType::File,
            _ => stream::StorageType::Memory,
        };
        let broker = Self {
            js: jetstream::new(client.clone()),
            client,
            hub,
            config,
            storage,
            streams: Mutex::new(HashMap::new()),
            interest: Mutex::new(HashMap::new()),
            presence: OnceCell::new(),
            local_presence: Arc::default(),
        };
        broker.spawn_presence_refresh(nats.presence_ttl);
        Ok(broker)
    }

    fn spawn_presence_refresh(&self, ttl: Duration) {
        let local = Arc::downgrade(&self.local_presence);
        let js = self.js.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            loop {
                tick.tick().await;
                // Ends with the broker.
                let Some(local) = local.upgrade() else { return };
                let entries: Vec<(String, Bytes)> = local
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                drop(local);
                if entries.is_empty() {
                    continue;
                }
                let Ok(kv) = js.get_key_value(PRESENCE_BUCKET).await else {
                    continue;
                };
                for (key, user) in entries {
                    let _ = kv.put(key, user).await;
                }
            }
        });
    }

    async fn presence_store(&self) -> Result<jetstream::kv::Store, BrokerError> {
        let ttl = self
            .config
            .nats
            .as_ref()
            .map_or(Duration::from_secs(15), |n| n.presence_ttl);
        bounded(
            "presence set-up",
            self.presence.get_or_try_init(|| async {
                self.js
                    .create_key_value(jetstream::kv::Config {
                        bucket: PRESENCE_BUCKET.into(),
                        history: 1,
                        max_age: ttl,
                        storage: self.storage,
                        ..Default::default()
                    })
                    .await
                    .map_err(unavailable)
            }),
        )
        .await
        .cloned()
    }

    async fn members_now(&self, key: RoomKey) -> Result<Vec<Member>, BrokerError> {
        self.presence_store().await?;
        let stream = self
            .js
            .get_stream(format!("KV_{PRESENCE_BUCKET}"))
            .await
            .map_err(unavailable)?;
        let prefix = format!("$KV.{PRESENCE_BUCKET}.");
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{prefix}{}.{}.*", key.tenant, key.room),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        if consumer.info().await.map_err(unavailable)?.num_pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        bounded("presence read", async {
            let mut members = Vec::new();
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(unavailable)?;
                let pending = msg.info().map_err(unavailable)?.pending;
                let removed = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() != "PUT");
                if !removed {
                    let session = msg
                        .subject
                        .rsplit('.')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let user = String::from_utf8_lossy(&msg.payload).into_owned();
                    members.push(Member { user, session });
                }
                if pending == 0 {
                    break;
                }
            }
            members.sort();
            Ok(members)
        })
        .await
    }

    async fn ns_stream(&self, ns: &NamespaceConfig) -> Result<NsStream, BrokerError> {
        let cell = {
            let mut streams = self.streams.lock().await;
            streams.entry(ns.name.clone()).or_default().clone()
        };
        bounded(
            "stream set-up",
            cell.get_or_try_init(|| async {
                let config = stream::Config {
                    name: format!("QUIVER_{}", ns.name),
                    subjects: vec![
                        format!("quiver.*.room.{}", ns.name),
                        format!("quiver.*.room.{}.>", ns.name),
                    ],
                    max_messages_per_subject: i64::try_from(ns.history_size).unwrap_or(i64::MAX),
                    max_age: ns.history_ttl,
                    storage: self.storage,
                    allow_direct: true,
                    ..Default::default()
                };
                let mut stream = self
                    .js
                    .get_or_create_stream(config)
                    .await
                    .map_err(unavailable)?;
                let created = stream.info().await.map_err(unavailable)?.created;
                let epoch = u64::try_from(created.unix_timestamp_nanos()).unwrap_or(1) | 1;
                Ok(NsStream { stream, epoch })
            }),
        )
        .await
        .cloned()
    }

    /// Listens to a room: its messages go to the local hub until the task is aborted.
    async fn listen(&self, key: RoomKey) -> Result<JoinHandle<()>, BrokerError> {
        let hub = self.hub.clone();
        let subject = subject(&key);
        let events = if self.config.presence(&key.room) {
            Some(self.listen_events(key.clone()).await?)
        } else {
            None
        };
        let publications = match self.config.history(&key.room) {
            None => {
                let mut sub = self.client.subscribe(subject).await.map_err(unavailable)?;
                tokio::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        hub.deliver(&key, None, msg.payload);
                    }
                })
            }
            Some(ns) => {
                let NsStream { stream, epoch } = self.ns_stream(ns).await?;
                let consumer = stream
                    .create_consumer(consumer::pull::OrderedConfig {
                        filter_subject: subject,
                        deliver_policy: consumer::DeliverPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .map_err(unavailable)?;
                let mut messages = consumer.messages().await.map_err(unavailable)?;
                tokio::spawn(async move {
                    while let Some(msg) = messages.next().await {
                        let Ok(msg) = msg else { continue };
                        let Ok(info) = msg.info() else { continue };
                        let position = Position {
                            epoch,
                            offset: info.stream_sequence,
                        };
                        hub.deliver(&key, Some(position), msg.payload.clone());
                    }
                })
            }
        };
        // One handle for both: aborting the room's listener aborts its event listener too.
        Ok(tokio::spawn(async move {
            let _events = events.map(AbortOnDrop);
            let mut publications = AbortOnDrop(publications);
            let _ = (&mut publications.0).await;
        }))
    }

    /// Server-made events (`Joined`/`Left`), already encoded by the instance that made them.
    async fn listen_events(&self, key: RoomKey) -> Result<JoinHandle<()>, BrokerError> {
        let hub = self.hub.clone();
        let mut sub = self
            .client
            .subscribe(events_subject(&key))
            .await
            .map_err(unavailable)?;
        Ok(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                hub.deliver_frame(
                    &key,
                    Delivery {
                        offset: None,
                        frame: msg.payload,
                    },
                );
            }
        }))
    }

    async fn publish_now(
        &self,
        key: RoomKey,
        payload: Bytes,
    ) -> Result<Option<Position>, BrokerError> {
        let subject = subject(&key);
        match self.config.history(&key.room) {
            None => {
                self.client
                    .publish(subject, payload)
                    .await
                    .map_err(unavailable)?;
                Ok(None)
            }
            Some(ns) => {
                let NsStream { epoch, .. } = self.ns_stream(ns).await?;
                // Awaiting the ack: a publication to a history room is stored, or refused.
                let ack = bounded("stored publish", async {
                    let pending = self
                        .js
                        .publish(subject, payload)
                        .await
                        .map_err(unavailable)?;
                    pending.await.map_err(unavailable)
                })
                .await?;
                Ok(Some(Position {
                    epoch,
                    offset: ack.sequence,
                }))
            }
        }
    }

    async fn recover_now(
        &self,
        key: RoomKey,
        since: Option<Position>,
    ) -> Result<Recovered, BrokerError> {
        let Some(ns) = self.config.history(&key.room) else {
            return Ok(Recovered::default());
        };
        let NsStream { mut stream, epoch } = self.ns_stream(ns).await?;
        let subject = subject(&key);
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => msg.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(unavailable(e)),
        };
        let current = Position {
            epoch,
            offset: last,
        };
        let Some(since) = since else {
            return Ok(Recovered {
                current: Some(current),
                replay: None,
            });
        };
        if since.epoch != epoch || since.offset > last {
            return Ok(Recovered {
                current: Some(current),
                replay: None,
            });
        }
        if since.offset == last {
            return Ok(Recovered {
                current: Some(current),
                replay: Some(Vec::new()),
            });
        }
        if since.offset == 0 {
            // Everything the room ever had must still be there: only if the stream never lost
            // a message.
            let first = stream
                .info()
                .await
                .map_err(unavailable)?
                .state
                .first_sequence;
            if first > 1 {
                return Ok(Recovered {
                    current: Some(current),
                    replay: None,
                });
            }
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: since.offset.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let read = async {
            let mut replay = Vec::new();
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(unavailable)?;
                let seq = msg.info().map_err(unavailable)?.stream_sequence;
                if replay.is_empty() && since.offset > 0 && seq != since.offset {
                    // The position's own message is gone: what came after it may be too.
                    return Ok(None);
                }
                if seq > since.offset {
                    replay.push((Position { epoch, offset: seq }, msg.payload.clone()));
                } else {
                    // The position itself: proof that history reaches back that far.
                    replay.push((Position { epoch, offset: 0 }, Bytes::new()));
                }
                if seq >= last {
                    break;
                }
            }
            replay.retain(|(p, _)| p.offset > 0);
            Ok::<_, BrokerError>(Some(replay))
        };
        let replay = bounded("history read", read).await?;
        Ok(Recovered {
            current: Some(current),
            replay,
        })
    }
}

impl Broker for NatsBroker {
    fn publish(
        &self,
        key: RoomKey,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Option<Position>, BrokerError>> {
        Box::pin(self.publish_now(key, payload))
    }

    fn add_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut interest = self.interest.lock().await;
            if interest.contains_key(&key) {
                return Ok(());
            }
            let task = self.listen(key.clone()).await?;
            interest.insert(key, task);
            Ok(())
        })
    }

    fn remove_interest(&self, key: RoomKey) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut interest = self.interest.lock().await;
            // The hub is the truth: a subscriber may have arrived since the last one left.
            if self.hub.has_subscribers(&key) {
                return Ok(());
            }
            if let Some(task) = interest.remove(&key) {
                task.abort();
            }
            Ok(())
        })
    }

    fn recover(
        &self,
        key: RoomKey,
        since: Option<Position>,
    ) -> BoxFuture<'_, Result<Recovered, BrokerError>> {
        Box::pin(self.recover_now(key, since))
    }

    fn announce(&self, key: RoomKey, frame: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.client
                .publish(events_subject(&key), frame)
                .await
                .map_err(unavailable)
        })
    }

    fn join(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let kv_key = presence_key(&key, &member.session);
            let user = Bytes::from(member.user.into_bytes());
            self.local_presence
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(kv_key.clone(), user.clone());
            let kv = self.presence_store().await?;
            bounded("presence put", async {
                kv.put(kv_key, user).await.map_err(unavailable)
            })
            .await?;
            Ok(())
        })
    }

    fn leave(&self, key: RoomKey, member: Member) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let kv_key = presence_key(&key, &member.session);
            self.local_presence
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&kv_key);
            let kv = self.presence_store().await?;
            bounded("presence delete", async {
                kv.delete(kv_key).await.map_err(unavailable)
            })
            .await
        })
    }

    fn members(&self, key: RoomKey) -> BoxFuture<'_, Result<Vec<Member>, BrokerError>> {
        Box::pin(self.members_now(key))
    }

    fn is_ready(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Aborts a task when dropped, so a room's event listener ends with its publication listener.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
