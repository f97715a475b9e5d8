//! Presence on a cluster: one JetStream key-value bucket (`quiver_presence`) for every tenant,
//! keyed `<tenant>.<room>.<session>` with the user as value. Entries expire after
//! `nats.presence_ttl` unless their instance puts them again (it refreshes its own every third
//! of the TTL), so the members of an instance that died go by themselves. THREAT-MODEL R39
//! says what one bucket for every tenant costs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::Member;

use super::{bounded, events_subject, history, unavailable, Inner};
use crate::broker::BrokerError;
use crate::hub::RoomKey;

const PRESENCE_BUCKET: &str = "quiver_presence";

/// How many of a refresh's puts wait for their acks at once.
const REFRESH_PUTS_IN_FLIGHT: usize = 64;

fn presence_key(key: &RoomKey, session: &str) -> String {
    format!("{}.{}.{}", key.tenant, key.room, session)
}

/// The room and member of a [`presence_key`] and its user: a tenant and a session id have no
/// dot (`[A-Za-z0-9_-]`, hexadecimal), so the room is what lies between the first and the last.
fn presence_entry(kv_key: &str, user: &[u8]) -> Option<(RoomKey, Member)> {
    let (tenant, rest) = kv_key.split_once('.')?;
    let (room, session) = rest.rsplit_once('.')?;
    let key = RoomKey {
        tenant: quiver_proto::TenantId::parse(tenant).ok()?,
        room: quiver_proto::RoomName::parse(room).ok()?,
    };
    let member = Member {
        user: String::from_utf8(user.to_vec()).ok()?,
        session: session.to_owned(),
    };
    Some((key, member))
}

/// Slow refreshes logged: one a second at most (a refresh runs every third of the TTL, a
/// second at least, so this bounds nothing but several instances' brokers in one process).
static SLOW_REFRESHES_LOGGED: crate::log_budget::LogBudget =
    crate::log_budget::LogBudget::per_second(1);

impl Inner {
    /// Re-puts this instance's presence entries every third of the TTL, and at once after a
    /// reconnect. A bucket that is gone (a NATS restarted with memory storage loses it) is made
    /// again here: every instance with members heals presence, not only one that happens to set
    /// it up for the first time after the restart.
    pub(super) fn spawn_presence_refresh(&self, ttl: Duration) {
        let weak = Arc::downgrade(&self.local_presence);
        let js = self.js.clone();
        let client = self.client.clone();
        let connected = move || super::connection::is_connected(&client);
        let nudge = self.presence_nudge.clone();
        let bucket = self.presence_config();
        let replicas = super::replicas::configured(&self.config);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            // The bucket's handle is kept between ticks: looking it up on every tick cost a
            // JetStream request before any put, so a slow NATS made each refresh later. It is
            // looked up (or made) again only after a put failed.
            let mut kv: Option<jetstream::kv::Store> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = nudge.notified() => {}
                }
                // Ends with the broker.
                let Some(local) = weak.upgrade() else { return };
                let entries: Vec<(String, Bytes)> = local
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                drop(local);
                metrics::gauge!(crate::metrics::PRESENCE_ENTRIES).set(entries.len() as f64);
                if entries.is_empty() {
                    metrics::gauge!(crate::metrics::PRESENCE_REFRESH_SECONDS).set(0.0);
                    continue;
                }
                // Nothing is put while NATS is away (`Inner::connected`): async-nats would hold
                // the puts until it is back, 64 at a time for each JetStream timeout, and they
                // filled its queue through an outage (outside cluster audit 112, F1). The
                // reconnect nudges the refresh once JetStream answers.
                if !connected() {
                    continue;
                }
                let began = tokio::time::Instant::now();
                let kept = kv.is_some();
                let store = match kv.take() {
                    Some(store) => store,
                    None => match js.get_key_value(PRESENCE_BUCKET).await {
                        Ok(store) => store,
                        Err(_) => match presence_bucket(&js, bucket.clone(), replicas).await {
                            Ok(store) => store,
                            Err(_) => continue,
                        },
                    },
                };
                // An entry whose session left since the snapshot is not put back, and one that
                // left while its put was on its way (its delete may have landed first) is
                // deleted again: a refresh overdue after a stall re-put the entries of the
                // sessions being ended, and they stayed listed until the TTL (outside cluster
                // audit 3, F3).
                let connected = &connected;
                let still_here = |key: &str| {
                    weak.upgrade().is_some_and(|local| {
                        local
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains_key(key)
                    })
                };
                // Puts go out together (each waits for its JetStream ack), so one refresh takes
                // about one round trip, not one per entry.
                let failed = std::sync::atomic::AtomicBool::new(false);
                let entry_count = entries.len();
                futures::stream::iter(entries)
                    .for_each_concurrent(REFRESH_PUTS_IN_FLIGHT, |(key, user)| {
                        let (store, failed, still_here) = (&store, &failed, &still_here);
                        async move {
                            if !still_here(&key) {
                                return;
                            }
                            // Lost during the refresh: the rest wait for the reconnect's nudge,
                            // with a handle looked up afresh then.
                            if !connected() {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                return;
                            }
                            if store.put(key.clone(), user).await.is_err() {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            if !still_here(&key) {
                                let _ = store.delete(key).await;
                            }
                        }
                    })
                    .await;
                // The refresh's cost grows with the entries: refreshes that take longer than
                // their period run back to back, and one that takes the whole TTL lets entries
                // expire while their members are present, unannounced (outside audit 101, F1:
                // 40,000 entries at a 1 s TTL). Said while there is still room, so the operator
                // can raise `nats.presence_ttl` or spread the members; not when puts failed (NATS
                // itself is the trouble then, and says so elsewhere).
                let took = began.elapsed();
                metrics::gauge!(crate::metrics::PRESENCE_REFRESH_SECONDS).set(took.as_secs_f64());
                let failed = failed.into_inner();
                if took > ttl / 3 && !failed && SLOW_REFRESHES_LOGGED.admit().is_some() {
                    tracing::warn!(
                        entries = entry_count,
                        took_ms = took.as_millis() as u64,
                        period_ms = (ttl / 3).as_millis() as u64,
                        "presence refresh took longer than its period: past presence_ttl, \
                         entries expire while their members are present (raise \
                         nats.presence_ttl)"
                    );
                }
                if failed {
                    // The bucket may be gone (a NATS restarted with memory storage): look it up
                    // or make it again, at once rather than a third of the TTL later, when the
                    // handle was an old one (a fresh one that fails waits for the next tick:
                    // no loop against a NATS that refuses every put).
                    if kept {
                        nudge.notify_one();
                    }
                } else {
                    kv = Some(store);
                }
            }
        });
    }

    fn presence_config(&self) -> jetstream::kv::Config {
        let ttl = self
            .config
            .nats
            .as_ref()
            .map_or(Duration::from_secs(15), |n| n.presence_ttl);
        jetstream::kv::Config {
            bucket: PRESENCE_BUCKET.into(),
            history: 1,
            max_age: ttl,
            storage: self.storage,
            ..Default::default()
        }
    }

    async fn presence_store(&self) -> Result<jetstream::kv::Store, BrokerError> {
        bounded(
            "presence set-up",
            // Created, or brought to this configuration's `presence_ttl`: an existing bucket
            // with another age limit refused `create_key_value`, which left presence broken
            // until someone deleted the bucket by hand (outside audit).
            self.presence.get_or_try_init(|| async {
                presence_bucket(
                    &self.js,
                    self.presence_config(),
                    super::replicas::configured(&self.config),
                )
                .await
                .map_err(unavailable)
            }),
        )
        .await
        .cloned()
    }

    pub(super) async fn members_now(&self, key: RoomKey) -> Result<Vec<Member>, BrokerError> {
        self.presence_store().await?;
        let stream = self
            .js
            .get_stream(format!("KV_{PRESENCE_BUCKET}"))
            .await
            .map_err(unavailable)?;
        let prefix = format!("$KV.{PRESENCE_BUCKET}.");
        // A consumer for this listing only, deleted when it is done (`history::ReadGuard`):
        // listings cannot pile consumers up on the bucket's stream.
        let (consumer, _guard) = self
            .read_consumer(
                &key.tenant,
                &stream,
                consumer::pull::Config {
                    filter_subject: format!("{prefix}{}.{}.*", key.tenant, key.room),
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    ..Default::default()
                },
            )
            .await?;
        let mut remaining = consumer.cached_info().num_pending;
        bounded("presence read", async {
            let mut members = Vec::new();
            while remaining > 0 {
                let wanted = usize::try_from(remaining).unwrap_or(usize::MAX);
                let mut messages = history::pull(&consumer, wanted).await?;
                let before = remaining;
                while let Some(msg) = messages.next().await {
                    let msg = msg.map_err(unavailable)?;
                    remaining = msg.info().map_err(unavailable)?.pending;
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
                    if remaining == 0 {
                        break;
                    }
                }
                if remaining == before {
                    // Nothing came (entries expired meanwhile): what was read is the answer.
                    break;
                }
            }
            members.sort();
            Ok(members)
        })
        .await
    }

    /// This instance's presence entries, locked (a panic elsewhere poisons nothing here: the
    /// map is whole after every operation on it).
    fn local_presence(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Bytes>> {
        self.local_presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Lists `member` in `key`'s room: kept locally at once (and put back from there by the
    /// refresh once NATS answers again: during an outage the session is not held up for the
    /// put's deadline), then put in the bucket.
    ///
    /// Refused once the instance has departed: its `Left`s are out, and a `Joined` after them
    /// would list the member on the other instances until the TTL (outside audit 84, F2).
    pub(super) async fn join_now(&self, key: RoomKey, member: Member) -> Result<(), BrokerError> {
        let kv_key = presence_key(&key, &member.session);
        let user = Bytes::from(member.user.into_bytes());
        {
            let mut local = self.local_presence();
            if self.departed.load(Ordering::Acquire) {
                return Err(BrokerError::Departed);
            }
            local.insert(kv_key.clone(), user.clone());
        }
        self.reachable()?;
        let kv = self.presence_store().await?;
        bounded("presence put", async {
            kv.put(kv_key.clone(), user).await.map_err(unavailable)
        })
        .await?;
        // A departure that took the entry while its put was on its way has published the
        // member's `Left` and deleted the key, perhaps before this put landed: delete it again,
        // and let the caller announce no `Joined` after that `Left`.
        if self.departed.load(Ordering::Acquire) {
            let _ = bounded("presence delete", async {
                kv.delete(kv_key).await.map_err(unavailable)
            })
            .await;
            return Err(BrokerError::Departed);
        }
        Ok(())
    }

    /// Takes every member this instance lists out of the bucket, and announces each one's
    /// `Left`: the drain's deadline came with their sessions still open, and the process is
    /// about to exit without their own leave (outside audit 80, 2: they stayed listed on the
    /// other instances until `nats.presence_ttl`). Taken from the local list first, so the
    /// refresh puts none back.
    pub(super) async fn depart_now(&self) {
        let entries = {
            let mut local = self.local_presence();
            // Under the lock with the take: a join either was taken here or sees the flag.
            self.departed.store(true, Ordering::Release);
            std::mem::take(&mut *local)
        };
        if entries.is_empty() || self.reachable().is_err() {
            return;
        }
        // The `Left`s first: plain publishes, out at once, where each delete waits for
        // JetStream's ack, and a slow JetStream is what most likely kept the sessions open to
        // the deadline (the caller cuts this off at the exit grace; outside audit 84, 1).
        for (kv_key, user) in &entries {
            let Some((key, member)) = presence_entry(kv_key, user) else {
                continue;
            };
            let left = quiver_proto::encode_event(&quiver_proto::ServerFrame {
                id: 0,
                event: quiver_proto::Event::Left {
                    room: key.room.to_string(),
                    member,
                },
            });
            let _ = self.client.publish(events_subject(&key), left).await;
        }
        let _ = self.client.flush().await;
        let Ok(kv) = self.presence_store().await else {
            return;
        };
        let kv = &kv;
        futures::stream::iter(entries)
            .for_each_concurrent(REFRESH_PUTS_IN_FLIGHT, |(kv_key, _)| async move {
                let _ = kv.delete(kv_key).await;
            })
            .await;
    }

    /// Takes `member` out of `key`'s room, locally first (the refresh no longer puts it back).
    /// Refused for a member a departure took: it has had its `Left`, and its key is deleted.
    pub(super) async fn leave_now(&self, key: RoomKey, member: Member) -> Result<(), BrokerError> {
        let kv_key = presence_key(&key, &member.session);
        let taken_by_departure = {
            let mut local = self.local_presence();
            local.remove(&kv_key).is_none() && self.departed.load(Ordering::Acquire)
        };
        if taken_by_departure {
            return Err(BrokerError::Departed);
        }
        self.reachable()?;
        let kv = self.presence_store().await?;
        bounded("presence delete", async {
            kv.delete(kv_key).await.map_err(unavailable)
        })
        .await
    }
}

/// The presence bucket, created or brought to `config` (its age limit, `nats.presence_ttl`;
/// its copies, `nats.replicas`). What JetStream cannot bring there (another storage, more
/// copies than it can place now) is kept as it is, with a warning, rather than leave presence
/// broken (outside audit; `replicas::key_value`).
async fn presence_bucket(
    js: &jetstream::Context,
    config: jetstream::kv::Config,
    replicas: Option<usize>,
) -> Result<jetstream::kv::Store, jetstream::context::CreateKeyValueError> {
    super::replicas::key_value(js, config, replicas).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_key_reads_back_as_its_room_and_member() {
        let key = RoomKey {
            tenant: quiver_proto::TenantId::parse("acme-1").unwrap(),
            room: quiver_proto::RoomName::parse("game.eu.lobby_2").unwrap(),
        };
        let kv_key = presence_key(&key, "00ff00ff00ff00ff");
        let (read, member) = presence_entry(&kv_key, b"bea").unwrap();
        assert_eq!(read, key);
        assert_eq!(member.user, "bea");
        assert_eq!(member.session, "00ff00ff00ff00ff");
        // What no instance writes is passed over, not misread.
        assert!(presence_entry("acme", b"bea").is_none());
        assert!(presence_entry("acme.room", b"bea").is_none());
        assert!(presence_entry("acme.room.s", &[0xff]).is_none());
        assert!(presence_entry("ac me.room.s", b"bea").is_none());
    }
}
