//! A history stream's live listener: one ordered consumer per (tenant, namespace) stream with
//! local interest, fanned out to the rooms registered on it ([`Live`]), rebuilt from the last
//! delivered sequence across reconnects and failures, and retired `LIVE_LINGER` after its last
//! room. A sequence gap it meets is a loss: the stream's rooms here are ended with 117
//! (`lost`). Stream set-up, stored publishes and reads are in `history.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backlog::BacklogPart;
use super::*;

/// How long a stream's live consumer outlives the stream's last local room.
const LIVE_LINGER: Duration = Duration::from_secs(10);

impl Inner {
    /// Starts delivering a history room to the hub: registers it with its stream's live
    /// listener (started if this is the stream's first room here). Returns once that listener's
    /// consumer exists, so everything stored after this returns reaches the room (the subscribe
    /// reads history only then: no gap at the seam). Dropping the returned registration (the
    /// room's last local subscriber left) takes the room off the listener.
    pub(in crate::broker::nats) async fn listen_history(
        self: &Arc<Self>,
        key: RoomKey,
        ns: NamespaceConfig,
    ) -> Result<Registration, BrokerError> {
        // A history room's listener needs JetStream (a live room's core subscription is made
        // again by the client on reconnect, so it is not refused).
        self.reachable()?;
        let room_subject = subject(&key);
        let room = Arc::new(key.clone());
        let live = {
            let mut all = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let stream_key = (key.tenant.clone(), ns.name.clone());
            let live = all
                .entry(stream_key.clone())
                .or_insert_with(|| {
                    let live = Arc::new(Live::default());
                    let task =
                        tokio::spawn(self.clone().run_live(live.clone(), stream_key, ns.clone()));
                    *live.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
                    live
                })
                .clone();
            // Under the map's lock: a listener retires only under it, with no room left.
            live.rooms
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room_subject.clone(), room.clone());
            live
        };
        let registration = Registration {
            live: live.clone(),
            subject: room_subject,
            room,
        };
        let mut started = live.started.subscribe();
        let waited = bounded("history listener set-up", async {
            started
                .wait_for(|started| *started)
                .await
                .map(drop)
                .map_err(|_| BrokerError::Unavailable("history listener ended".into()))
        })
        .await;
        match waited {
            Ok(()) => Ok(registration),
            // The broker refusing the listener (its stream cannot be made: JetStream full,
            // say) is that refusal, logged as one, not a timeout (outside audit 42, 2).
            Err(timeout) => Err(live
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .map_or(timeout, BrokerError::Failed)),
        }
    }

    /// A stream's live listener: one ordered consumer over all of the stream's subjects (the
    /// stream holds only this tenant's rooms of this namespace), rebuilt from the last
    /// delivered sequence whenever NATS reconnects or the consumer fails, delivering each
    /// publication to its room if the room has local interest. Ends (and deletes its
    /// consumer) once no room is registered for `LIVE_LINGER`.
    async fn run_live(
        self: Arc<Self>,
        live: Arc<Live>,
        stream_key: (TenantId, String),
        ns: NamespaceConfig,
    ) {
        let listener = self.health.new_listener();
        let _forget = Forget(self.clone(), listener);
        let mut generations = self.health.watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_since = None;
        let mut cursor = None;
        // This listener's part of the namespace's backlog gauge, taken out when it ends.
        let mut backlog = BacklogPart::new(&stream_key.1);
        // The consumer this listener holds now (to delete when it is replaced or retired).
        let mut held: Option<(stream::Stream, String)> = None;
        let mut pause = Duration::from_millis(25);
        loop {
            let generation = *generations.borrow_and_update();
            if !self.connected() {
                // Nothing is asked of NATS while it is away (`Inner::connected`): retried every
                // half second, each failed attempt with a consumer delete behind it, the
                // requests filled async-nats' queue through an outage (outside cluster audit
                // 112, F1). The reconnect's new generation (after this borrow) wakes it.
                let woke = self
                    .wait(
                        &live,
                        &stream_key,
                        &mut generations,
                        &mut tick,
                        &mut idle_since,
                        None,
                    )
                    .await;
                match woke {
                    Woke::Gone => return,
                    Woke::Retired => break,
                    Woke::Again => continue,
                }
            }
            match self.live_consumer(&stream_key.0, &ns, &mut cursor).await {
                Ok((messages, stream, name)) => {
                    *live.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    if let Some((old_stream, old)) = held.replace((stream, name)) {
                        // A reconnect without a NATS restart leaves the old one in place.
                        tokio::spawn(async move { delete_consumer(&old_stream, &old).await });
                    }
                    self.health.built(listener, generation);
                    live.started.send_replace(true);
                    pause = Duration::from_millis(25);
                    let Some(cursor) = cursor.as_mut() else {
                        // `live_consumer` sets the cursor whenever it succeeds.
                        return;
                    };
                    let broken = self
                        .deliver_live(
                            &live,
                            &stream_key,
                            &ns,
                            messages,
                            cursor,
                            &mut generations,
                            &mut tick,
                            &mut idle_since,
                            &mut backlog,
                        )
                        .await;
                    match broken {
                        Broken::Gone => return,
                        Broken::Idle => break,
                        Broken::Reconnected => {}
                        // Not in a tight loop if the new consumer fails at once as well.
                        Broken::Failed => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                Err(e) => {
                    debug!(stream = %stream_name(&stream_key.0, &stream_key.1), error = %e,
                        "history consumer not built yet");
                    if let BrokerError::Failed(detail) = &e {
                        *live.refused.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(detail.clone());
                    }
                    // Retry soon (NATS answering is what we wait for), sooner after a
                    // reconnect; stop retrying once nobody here wants the stream.
                    let woke = self
                        .wait(
                            &live,
                            &stream_key,
                            &mut generations,
                            &mut tick,
                            &mut idle_since,
                            Some(pause),
                        )
                        .await;
                    match woke {
                        Woke::Gone => return,
                        Woke::Retired => break,
                        Woke::Again => {}
                    }
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        if let Some((stream, name)) = held {
            delete_consumer(&stream, &name).await;
        }
    }

    /// The listener's wait while it has no consumer (NATS away: `pause` None; a consumer not
    /// built: its retry `pause`): until the pause is over, the connection's generation changes,
    /// or a tick finds nobody here wants the stream any more.
    async fn wait(
        &self,
        live: &Arc<Live>,
        stream_key: &(TenantId, String),
        generations: &mut tokio::sync::watch::Receiver<u64>,
        tick: &mut tokio::time::Interval,
        idle_since: &mut Option<Instant>,
        pause: Option<Duration>,
    ) -> Woke {
        let paused = async {
            match pause {
                Some(pause) => tokio::time::sleep(pause).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = paused => Woke::Again,
            changed = generations.changed() => {
                if changed.is_err() { Woke::Gone } else { Woke::Again }
            }
            _ = tick.tick() => {
                if self.retire(live, stream_key, idle_since) { Woke::Retired } else { Woke::Again }
            }
        }
    }

    /// The live consumer from the cursor (from the stream's next sequence the first time).
    async fn live_consumer(
        self: &Arc<Self>,
        tenant: &TenantId,
        ns: &NamespaceConfig,
        cursor: &mut Option<Cursor>,
    ) -> Result<(consumer::pull::Ordered, stream::Stream, String), BrokerError> {
        let TenantStream { stream, epoch } = self.tenant_stream(tenant, ns).await?;
        let next = match cursor {
            Some(cursor) if cursor.epoch == epoch => cursor.next,
            Some(cursor) => {
                // The stream was lost with NATS (memory storage) and created again, from the
                // highest sequence seen here or from 1: read it from its start.
                warn!(stream = %stream_name(tenant, &ns.name),
                    "history stream was recreated: its history is lost");
                // Its first sequence is the one it was created with (above what its creator
                // had seen), not 1: what it has lost since is a gap.
                let first = stream
                    .cached_info()
                    .config
                    .first_sequence
                    .unwrap_or(1)
                    .max(1);
                *cursor = Cursor {
                    epoch,
                    next: first,
                    owed: true,
                };
                first
            }
            None => {
                let last = bounded("stream info", async {
                    stream.get_info().await.map_err(unavailable)
                })
                .await?
                .state
                .last_sequence;
                *cursor = Some(Cursor {
                    epoch,
                    next: last + 1,
                    owed: false,
                });
                last + 1
            }
        };
        let name = self.consumer_name();
        let messages = bounded("consumer set-up", async {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    // The stream holds only this namespace's rooms of this tenant: no filter.
                    name: Some(name.clone()),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next.max(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            consumer.messages().await.map_err(unavailable)
        })
        .await;
        match messages {
            Ok(messages) => Ok((messages, stream, name)),
            Err(e) => {
                // It may exist even so (a timed-out answer): never leave it to its threshold.
                tokio::spawn(async move { delete_consumer(&stream, &name).await });
                Err(e)
            }
        }
    }

    /// Delivers until the consumer fails or ends, NATS reconnected, or the listener retired.
    ///
    /// **Gaps.** The consumer has no filter, so it is handed every message of the stream, in
    /// sequence order, that the stream still holds when the consumer gets to it. A stream's
    /// sequence is advanced only by storing a message: a duplicate `Nats-Msg-Id`, a message
    /// over the size limit and a failed expectation are refused without one, and the stream
    /// allows neither rollups nor per-message TTLs. So a delivery past `cursor.next` means the
    /// messages in between were removed before this consumer got them: the room limits
    /// (`history_size`, `history_ttl`, the tenant's bytes) cut them while this instance was
    /// behind (frozen, cut off from NATS, or rebuilding its consumer), or an operator deleted
    /// or purged them. Either way they never reached this instance's subscribers: each room
    /// of the stream with subscribers here that may have been among them is ended with 117
    /// (PROTOCOL.md §5, `lost`), and its clients resume from their last position (outside
    /// cluster audit 112, F3: they were left open with a gap, and a later resume answered
    /// `Recovered`).
    #[allow(clippy::too_many_arguments)]
    async fn deliver_live(
        self: &Arc<Self>,
        live: &Arc<Live>,
        stream_key: &(TenantId, String),
        ns: &NamespaceConfig,
        mut messages: consumer::pull::Ordered,
        cursor: &mut Cursor,
        generations: &mut tokio::sync::watch::Receiver<u64>,
        tick: &mut tokio::time::Interval,
        idle_since: &mut Option<Instant>,
        backlog: &mut BacklogPart,
    ) -> Broken {
        // This consumer's first delivery is checked when the cursor is owed; every delivery
        // after it is, and so is any later consumer's.
        let mut check = std::mem::replace(&mut cursor.owed, true);
        // The consumer's backlog as of its last delivery, handed to the gauge at each tick
        // rather than at each delivery (it takes a lock shared by the namespace's streams).
        let mut pending = None;
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(Ok(msg)) => {
                        // Unreadable metadata: rebuilt from `cursor.next`, so the message is
                        // fetched again; skipped, the next one would read as a gap and end
                        // every room here (review 113, F3).
                        let info = match msg.info() {
                            Ok(info) => info,
                            Err(e) => {
                                debug!(namespace = %stream_key.1, error = %e,
                                    "history message metadata unreadable; rebuilding the consumer");
                                return Broken::Failed;
                            }
                        };
                        let offset = info.stream_sequence;
                        pending = Some(info.pending);
                        if check && offset > cursor.next {
                            self.lost(live, stream_key, ns, cursor.next, offset - cursor.next)
                                .await;
                        }
                        check = true;
                        cursor.next = offset + 1;
                        let room = live
                            .rooms
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(msg.subject.as_str())
                            .cloned();
                        // Rooms nobody here subscribes to are skipped.
                        let max = self.config.limits.max_payload;
                        if let Some(room) = room.filter(|room| crate::broker::nats::fits(room, msg.payload.len(), max)) {
                            crate::broker::nats::lag::record(msg.headers.as_ref());
                            let position = Position { epoch: cursor.epoch, offset };
                            self.hub.deliver(&room, Some(position), msg.payload.clone());
                        }
                    }
                    Some(Err(e)) => {
                        debug!(namespace = %stream_key.1, error = %e,
                            "history consumer failed; rebuilding");
                        return Broken::Failed;
                    }
                    None => return Broken::Failed,
                },
                changed = generations.changed() => {
                    if changed.is_err() {
                        return Broken::Gone;
                    }
                    debug!(namespace = %stream_key.1, "NATS reconnected; rebuilding the history consumer");
                    // Before anyone creates the stream again (see `Inner::high_water`).
                    self.saw(&stream_key.0, &stream_key.1, cursor.next - 1);
                    return Broken::Reconnected;
                }
                _ = tick.tick() => {
                    if let Some(pending) = pending.take() {
                        backlog.set(pending);
                    }
                    if self.retire(live, stream_key, idle_since) {
                        return Broken::Idle;
                    }
                }
            }
        }
    }

    /// `missed` publications of the stream, from sequence `from` on, never reached this
    /// instance (see `deliver_live`): the local subscriptions of every room that may have
    /// been among them are ended, and the loss counted.
    ///
    /// Which rooms: by the rule a resume is judged by (`history.rs`'s module doc, with
    /// `P + 1 = from`), a room lost nothing after `from` if its first kept publication is at or
    /// before `from`, or if it keeps fewer than the per-room limit and the stream's first
    /// sequence is at or before `from` (no age or byte cut reached the gap, and the room's
    /// count limit never cut it: a room that keeps nothing, aged out before the gap, among
    /// them). Every other room (or one not checked within `JS_TIMEOUT`) is ended. Ending them
    /// all ended every history subscription of the tenant's namespace here whenever one busy
    /// room nobody here reads outran its limit during a reconnect (review 113, F2). A room
    /// whose registration here changed while it was checked (it was left and subscribed
    /// again) is not ended: its subscriptions are all newer than the gap. The
    /// stream is looked at once per gap; the stream's deliveries wait for the checks (at most
    /// `JS_TIMEOUT`), so no room gets a publication past the gap first.
    async fn lost(
        self: &Arc<Self>,
        live: &Live,
        stream_key: &(TenantId, String),
        ns: &NamespaceConfig,
        from: u64,
        missed: u64,
    ) {
        let rooms: Vec<Arc<RoomKey>> = live
            .rooms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // The stream is looked up once for the gap, then at most 16 rooms at once: a stream
        // may have thousands of rooms here.
        let whole: std::collections::HashSet<RoomKey> = tokio::time::timeout(JS_TIMEOUT, async {
            if self.reachable().is_err() {
                return Default::default();
            }
            let Ok(TenantStream { stream, .. }) = self.tenant_stream(&stream_key.0, ns).await
            else {
                return Default::default();
            };
            let Ok(info) = stream.get_info().await else {
                return Default::default();
            };
            let per_room = super::room_limit_floor(&info.config).min(ns.history_size as u64);
            let front_intact = info.state.first_sequence <= from;
            let stream = &stream;
            futures::stream::iter(rooms.iter().cloned())
                .map(|room| async move {
                    let subject = subject(&room);
                    let whole = match first_kept_now(stream, &subject).await {
                        Ok(Some(first)) if first <= from => true,
                        Ok(None) => front_intact,
                        Ok(Some(_)) if front_intact => {
                            kept(stream, &subject).await.is_ok_and(|n| n < per_room)
                        }
                        _ => false,
                    };
                    whole.then_some(room)
                })
                .buffer_unordered(16)
                .filter_map(|room| async move { room.map(|room| (*room).clone()) })
                .collect()
                .await
        })
        .await
        .unwrap_or_default();
        // Only a room still on the registration it had when the gap was found: one that left
        // meanwhile (its subscribers ended by an earlier gap, say) and was subscribed again
        // has only subscriptions made since, which read their position (or replay) from the
        // stream after the gap's publications were removed, so start past whatever of the
        // room was among them. Ending them too ended a subscription made right after the
        // previous gap's 117, before its stream was even opened (review of session 63, h11).
        // Under the registrations' lock: none is replaced between the look and the end.
        let registered = live.rooms.read().unwrap_or_else(|e| e.into_inner());
        let ended: usize = rooms
            .iter()
            .filter(|room| !whole.contains(room.as_ref()))
            .filter(|room| {
                registered
                    .get(&subject(room))
                    .is_some_and(|now| Arc::ptr_eq(now, room))
            })
            .map(|room| self.hub.end_room(room, crate::hub::BROKER_GAP))
            .sum();
        drop(registered);
        metrics::counter!(crate::metrics::DELIVERIES_DROPPED, "reason" => "broker_gap")
            .increment(missed);
        // An instance that stays too slow for its streams falls behind again and again: a few
        // lines a second at most, the counter has every one.
        static LOG: crate::log_budget::LogBudget = crate::log_budget::LogBudget::per_second(3);
        if let Some(not_logged) = LOG.admit() {
            warn!(stream = %stream_name(&stream_key.0, &stream_key.1), missed,
                subscriptions = ended, not_logged,
                "this instance's history consumer fell behind the stream's limits and missed \
                 publications: the subscriptions of its rooms here are ended (117)");
        }
    }

    /// Whether the listener should end: no room registered for `LIVE_LINGER`. It is then taken
    /// out of the map under the map's lock, where rooms register, so no room joins it after.
    fn retire(
        &self,
        live: &Arc<Live>,
        stream_key: &(TenantId, String),
        idle_since: &mut Option<Instant>,
    ) -> bool {
        let empty = || {
            live.rooms
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        };
        if !empty() {
            *idle_since = None;
            return false;
        }
        if idle_since.get_or_insert_with(Instant::now).elapsed() < LIVE_LINGER {
            return false;
        }
        let mut all = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if !empty() {
            *idle_since = None;
            return false;
        }
        if all.get(stream_key).is_some_and(|l| Arc::ptr_eq(l, live)) {
            all.remove(stream_key);
        }
        true
    }
}

/// How many publications the stream keeps of `subject`.
async fn kept(stream: &stream::Stream, subject: &str) -> Result<u64, BrokerError> {
    let mut subjects = stream
        .info_with_subjects(subject)
        .await
        .map_err(unavailable)?;
    let mut kept = 0;
    while let Some((name, count)) = subjects.try_next().await.map_err(unavailable)? {
        if name == subject {
            kept += count as u64;
        }
    }
    Ok(kept)
}

/// How a listener's [`Inner::wait`] ended.
enum Woke {
    /// Try again: the pause is over, or the connection's generation changed.
    Again,
    /// Nobody here wants the stream any more: the listener ends.
    Retired,
    /// The broker is gone.
    Gone,
}

/// Why a history listener stopped delivering.
enum Broken {
    Reconnected,
    Failed,
    Gone,
    /// No room registered for `LIVE_LINGER`: retired.
    Idle,
}

/// Where a history listener is: the stream it reads and the next sequence to deliver.
struct Cursor {
    epoch: u64,
    next: u64,
    /// Whether `next` is owed to this instance's subscribers, so that a first delivery past
    /// it is a loss. Not on the very first consumer's first delivery: `next` then came from
    /// the stream's state a moment before the consumer existed, and every subscriber waiting
    /// for that consumer reads what it missed from history after it exists (see
    /// `listen_history`). Owed from then on, across every rebuild.
    owed: bool,
}

/// Takes a listener out of the readiness count when its task ends (or is aborted).
struct Forget(Arc<Inner>, u64);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.health.forget(self.1);
    }
}

/// A stream's live listener, shared by every room of the stream with local interest here.
#[derive(Default)]
pub(in crate::broker::nats) struct Live {
    /// The registered rooms, by subject.
    rooms: std::sync::RwLock<HashMap<String, Arc<RoomKey>>>,
    /// Set once the first consumer exists (and stays set across rebuilds, which resume from
    /// the last delivered sequence).
    started: watch::Sender<bool>,
    /// The broker's words of the last failure to build the consumer, while it is not built:
    /// what a `Subscribe` that waited for it in vain is refused with.
    refused: std::sync::Mutex<Option<String>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Live {
    /// Ends the listener (the broker is dropped).
    pub(in crate::broker::nats) fn abort(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// A room's place on its stream's live listener, given up when dropped.
pub(in crate::broker::nats) struct Registration {
    live: Arc<Live>,
    subject: String,
    /// The entry this registration made: a later registration of the room (its interest
    /// retired and taken up again meanwhile) is not removed with this one.
    room: Arc<RoomKey>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut rooms = self.live.rooms.write().unwrap_or_else(|e| e.into_inner());
        if rooms
            .get(&self.subject)
            .is_some_and(|room| Arc::ptr_eq(room, &self.room))
        {
            rooms.remove(&self.subject);
        }
    }
}
