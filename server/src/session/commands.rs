//! The commands of the session core: subscribe, unsubscribe, publish, refresh, presence, and
//! the bookkeeping of subscriptions (hub entries, broker interest, writer tasks).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use quiver_proto::{encode_event, ErrorCode, Event, Member, Position, Recovery, ServerFrame};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::publishing::Reply;
use super::{Refusal, Session, Sub};
use crate::broker::{BrokerError, RoomPresence};
use crate::hub::{RoomKey, Subscriber};
use crate::log_budget::{LogBudget, Summary};
use crate::metrics as m;
use crate::subscription::{Direct, Ended, Sink, Writer};
use crate::transport::Peer;

/// Server ends of subscriptions (slow consumers, mostly) logged per second at most: a client
/// that subscribes and does not read causes one at will (`crate::log_budget`).
static SUBSCRIPTION_ENDS_LOGGED: LogBudget = LogBudget::summarised(
    20,
    Summary::Warn("more subscriptions were ended by the server than logged"),
);

/// Presence joins and leaves the broker did not record or announce, logged once a second at
/// most: through an outage every subscribe and unsubscribe in a presence room is one.
static PRESENCE_UNRECORDED_LOGGED: LogBudget = LogBudget::per_second(1);

impl Session {
    pub(super) async fn subscribe(
        &mut self,
        cmd_id: u32,
        room: &str,
        resume: Option<Position>,
    ) -> Result<Option<Event>, Refusal> {
        let key = self.subscribable(room)?;
        if self.subs.contains_key(&key.room) {
            return Err(Refusal::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {}", key.room),
            ));
        }
        let max = self.shared.config.limits.max_subscriptions as usize;
        if self.subs.len() >= max {
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("subscription limit of {max} reached"),
            ));
        }
        self.ask_hook(crate::rpc::Hook::Subscribe, &key.room, None)
            .await?;
        if let Some(quota) = &self.quota {
            quota
                .add_subscription()
                .map_err(|e| Refusal::new(ErrorCode::QuotaExceeded, e.to_string()))?;
            // A presence room's `Joined` goes to every member like a publication, and is
            // metered like one (PROTOCOL.md §5 Quotas): without it, Subscribe/Unsubscribe
            // churn gave a tenant at its publication quota the fan-out of a flood (outside
            // audit: 360k deliveries/s at a quota of 100 publications/s). After the
            // subscription quota: a Subscribe it refuses takes no publication from the rate
            // (outside audit 101, F4: the next Publish was refused for it).
            if self.shared.config.presence(&key.room) {
                if let Err(e) = quota.presence_joined(std::time::Instant::now()) {
                    quota.remove_subscription();
                    return Err(Refusal::new(ErrorCode::QuotaExceeded, e.to_string()));
                }
            }
        }
        // Counted from here on: `drop_sub` releases it, and so does the one way out below.

        let sub_id = self.shared.next_sub_id.fetch_add(1, Ordering::Relaxed);
        self.last_wire_id += 1;
        let wire_id = self.last_wire_id;
        let (queue, queue_rx) = crate::delivery_queue::channel(
            self.shared.config.limits.subscriber_queue,
            self.queue_budget.clone(),
        );
        let overflow = CancellationToken::new();
        let hub_end = std::sync::Arc::<crate::subscription::HubEnd>::default();
        let latest = self
            .shared
            .config
            .latest(&key.room)
            .then(|| std::sync::Arc::new(crate::latest::Slot::default()));
        let own_stream =
            matches!(self.link.peer, Peer::Quic(_)) && !self.shared.config.ablation.single_stream;
        // `latest` rooms keep their slot and datagrams; every other subscription lets the
        // fan-out write into its idle stream, or on a shared connection queue on it.
        let direct = latest
            .is_none()
            .then(|| Direct::new(self.tally.clone(), &queue, overflow.clone()));
        // Live deliveries start queueing before history is read, so the replay and the live
        // queue overlap rather than leave a gap; the writer drops the overlap by offset.
        self.shared.hub.subscribe(
            key.clone(),
            Subscriber {
                id: sub_id,
                queue,
                overflow: overflow.clone(),
                hub_end: hub_end.clone(),
                deliveries: metrics::counter!(
                    m::TENANT_DELIVERIES,
                    "tenant" => self.shared.tenant_quotas.label(&self.grant.tenant)
                ),
                latest: latest.clone(),
                direct: direct.clone(),
            },
        );
        self.joining = Some((key.clone(), sub_id));
        // Every subscriber waits for the room's listener, not only the first: a second one
        // answered at once was `Subscribed` before the room was listened to (outside audit 67,
        // F3). The broker sets it up once.
        let prepared = async {
            self.shared.broker.add_interest(key.clone()).await?;
            self.shared.broker.recover(key.clone(), resume).await
        };
        let recovered = match prepared.await {
            Ok(recovered) => recovered,
            Err(e) => {
                if resume.is_some() {
                    m::labels::count_resume(&self.shared.config, &key.room, None);
                }
                self.joining = None;
                self.forget_joining(key.clone(), sub_id).await;
                return Err(super::publishing::unavailable(
                    self.grant.tenant.as_str(),
                    e,
                ));
            }
        };

        let sink = match &self.link.peer {
            Peer::Quic(conn) if own_stream => Sink::OwnStream(conn.clone()),
            _ => Sink::Shared(self.out.rooms()),
        };
        let shared_sink = matches!(sink, Sink::Shared(_));
        let header = encode_event(&ServerFrame {
            id: cmd_id,
            event: Event::SubscriptionStream {
                room: key.room.to_string(),
            },
        });
        // On a shared connection the session sends the header itself, before its `Subscribed`
        // reply: an `Unsubscribe` right behind the `Subscribe` aborts the writer, possibly
        // before it ran, and PROTOCOL.md §9.2 promises the header for every subscription.
        let header = if shared_sink {
            self.tally.sent(header.len(), 0);
            m::hot::delivery_bytes().increment(header.len() as u64);
            self.send_or_stall(header).await;
            None
        } else {
            Some(header)
        };
        let (recovery, skip_through, replay, rest) = match (resume, recovered.replay) {
            (None, _) => (Recovery::NotRequested, None, Vec::new(), None),
            (Some(_), None) => (Recovery::Failed, None, Vec::new(), None),
            (Some(since), Some(replay)) => {
                let rest = recovered.rest;
                let last = match &rest {
                    Some(rest) => rest.last().offset,
                    None => replay.last().map_or(since.offset, |(p, _)| p.offset),
                };
                let count = replay.len() + rest.as_ref().map_or(0, |r| r.remaining());
                let replayed = u32::try_from(count).unwrap_or(u32::MAX);
                // Their bytes are counted as the writer hands over the preamble.
                self.tally.sent(0, u64::from(replayed));
                (Recovery::Recovered { replayed }, Some(last), replay, rest)
            }
        };
        // Encoded by the writer as its stream takes it (`crate::replay`): a slow reader holds
        // the broker's payloads (or a page of them), not a copy of its replay.
        // A replay waits for one of the session's turns (`crate::replay::AT_ONCE`).
        let turns = (!replay.is_empty() || rest.is_some()).then(|| {
            self.replay_turns
                .get_or_insert_with(crate::replay::turns)
                .clone()
        });
        let preamble = crate::replay::Preamble::new(header, key.clone(), replay, rest, turns);
        if resume.is_some() {
            let recovered = matches!(recovery, Recovery::Recovered { .. });
            m::labels::count_resume(&self.shared.config, &key.room, Some(recovered));
        }
        // Without a resume, live messages older than the position we announce are skipped too,
        // so `position` is exactly where this subscriber's stream starts.
        let skip_through = skip_through.or(recovered.current.map(|p| p.offset));
        // The epoch this subscription is told: a delivery of another one ends it (`Hub::pass`).
        if let Some(current) = recovered.current {
            self.shared.hub.know_epoch(&key, current.epoch);
        }
        let stop = CancellationToken::new();
        let writer = tokio::spawn(
            Writer {
                sink,
                sub_id,
                wire_id,
                preamble,
                skip_through,
                queue: queue_rx,
                overflow: overflow.clone(),
                hub_end,
                ended_by_session: stop.clone(),
                ended: self.ended_sender(),
                open_deadline: self.shared.config.timeouts.stream_open,
                stall_deadline: latest
                    .is_none()
                    .then_some(self.shared.config.timeouts.reply),
                tally: self.tally.clone(),
                room: key.room.to_string(),
                latest: latest.clone(),
                priority: self.shared.config.priority(&key.room),
                direct: direct.clone(),
            }
            .run(),
        );
        metrics::gauge!(m::SUBSCRIPTIONS_ACTIVE).increment(1.0);
        debug!(session = %self.id, room = %key.room, ?recovery, "subscribed");
        let room = key.room.to_string();
        // In `subs` before anything else is awaited: from here on `release` frees it.
        self.joining = None;
        self.subs.insert(
            key.room.clone(),
            Sub {
                id: sub_id,
                key: key.clone(),
                writer: shared_sink.then_some(writer),
                stop,
                overflow,
                direct,
            },
        );
        if self.shared.config.presence(&key.room) {
            self.announce_presence(&key, true).await;
        }
        Ok(Some(Event::Subscribed {
            room,
            position: recovered.current,
            recovery,
            subscription: latest.is_some().then_some(wire_id),
        }))
    }

    pub(super) async fn unsubscribe(&mut self, room: &str) -> Result<Option<Event>, Refusal> {
        let key = self.room(room)?;
        let Some(sub) = self.subs.remove(&key.room) else {
            return Err(Refusal::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {}", key.room),
            ));
        };
        self.drop_sub(sub).await;
        Ok(Some(Event::Unsubscribed {
            room: key.room.to_string(),
            code: 0,
            reason: String::new(),
        }))
    }

    /// Checks a publication and hands it to the broker. The answer comes at once when the
    /// broker takes it at once (the memory broker, NATS core); otherwise (a stored publish
    /// waiting for its ack) it joins the session's publish queue (`publishing.rs`) and the
    /// session goes on with other commands meanwhile.
    pub(super) async fn publish(
        &mut self,
        reply: Reply,
        room: &str,
        payload: Bytes,
    ) -> Result<Option<Event>, Refusal> {
        let key = self.may_publish(room, &payload)?;
        self.publish_checked(reply, key, payload).await
    }

    /// The checks every publication meets before its hook: a valid room, the token's publish
    /// permission, the payload's size.
    pub(super) fn may_publish(&self, room: &str, payload: &Bytes) -> Result<RoomKey, Refusal> {
        let key = self.room(room)?;
        if !self.grant.may_publish(&key.room) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("no publish permission for room {}", key.room),
            ));
        }
        let max = self.shared.config.limits.max_payload as usize;
        if payload.len() > max {
            return Err(Refusal::new(
                ErrorCode::PayloadTooLarge,
                format!("payload of {} bytes exceeds {max}", payload.len()),
            ));
        }
        Ok(key)
    }

    /// A publication past [`Session::may_publish`]: its hook, the quota, the broker.
    pub(super) async fn publish_checked(
        &mut self,
        reply: Reply,
        key: RoomKey,
        payload: Bytes,
    ) -> Result<Option<Event>, Refusal> {
        // The backend's word, once per command and before fan-out (never per delivery). The
        // session waits for it: a run's held writes go first (`crate::cork`).
        if self
            .shared
            .rpc
            .hook(crate::rpc::Hook::Publish, &key.room)
            .is_some()
        {
            self.held.flush();
        }
        let payload = match self
            .ask_hook(crate::rpc::Hook::Publish, &key.room, Some(&payload))
            .await?
        {
            Some(replaced) => replaced,
            None => payload,
        };
        if let Some(quota) = &self.quota {
            quota
                .publish(payload.len())
                .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        }
        let broker = self.shared.broker.clone();
        let publishing = Box::pin(async move { Ok(broker.publish(key, payload).await?) });
        // The memory broker delivers as it takes the publication: its stream writes may be
        // held for the rest of the session's run.
        let queue = &mut self.publishing;
        match self.held.during(|| queue.submit(reply, publishing)) {
            Some(done) => super::publishing::answer(done.result, self.grant.tenant.as_str())
                .map(|e| e.filter(|_| reply.acked())),
            None => Ok(None),
        }
    }

    /// A new token for the same user and tenant. It must not be expired already (then the
    /// session keeps its old token and expiry). Its permissions apply from now on: every
    /// subscription the new token no longer allows is ended with an unsolicited
    /// `Unsubscribed { permission_denied }` after the `Refreshed` reply.
    pub(super) async fn refresh(&mut self, token: &str) -> Result<Option<Event>, Refusal> {
        if token.len() > crate::transport::MAX_TOKEN_LEN {
            return Err(Refusal::new(ErrorCode::InvalidToken, "token too large"));
        }
        let grant = self
            .shared
            .authenticate(token)
            .map_err(|e| Refusal::new(ErrorCode::InvalidToken, e.to_string()))?;
        if grant.user != self.grant.user || grant.tenant != self.grant.tenant {
            return Err(Refusal::new(
                ErrorCode::InvalidToken,
                "token is for another user or tenant",
            ));
        }
        // Expiry (and `nbf`) were checked by the verifier, with the configured leeway, exactly
        // as at CONNECT (PROTOCOL.md §6).
        let expires_at = grant.expires_at;
        self.shared
            .registry
            .set_jti(&grant.tenant, &self.id, grant.jti.as_deref());
        // A revocation of the new token between its check above and `set_jti` looked for the
        // session under the old `jti` and missed it: checked again now that it would be found
        // (as at CONNECT; outside audit 72, F3). Refused as a revoked token is, the old one kept.
        if let Some(jti) = grant.jti.as_deref() {
            if self.shared.revocations.is_revoked(&grant.tenant, jti) {
                let old = self.grant.jti.as_deref();
                self.shared.registry.set_jti(&grant.tenant, &self.id, old);
                // A revocation of the old token meanwhile looked under the new one: the old
                // one is checked again too, and the session ended as its revocation would.
                if old.is_some_and(|old| self.shared.revocations.is_revoked(&grant.tenant, old)) {
                    self.shared.registry.kick(
                        &crate::registry::Selector {
                            tenant: grant.tenant.to_string(),
                            session: Some(self.id.clone()),
                            ..Default::default()
                        },
                        &crate::registry::Kick {
                            code: quiver_proto::CloseCode::Disconnected,
                            reason: "token revoked".into(),
                            room: None,
                        },
                    );
                }
                let refused = crate::auth::AuthError::revoked(&grant);
                return Err(Refusal::new(ErrorCode::InvalidToken, refused.to_string()));
            }
        }
        // The subscriptions are checked again only when what they depend on changed (the usual
        // refresh changes the expiry alone).
        self.recheck_due = !grant.same_subscribe(&self.grant);
        *self.grant = grant;
        self.expiry = super::lifetime::token_expiry(&self.grant, self.shared.config.auth.leeway);
        // Datagram publications still waiting for their hook were checked against the old
        // token: none is published after `Refreshed` (outside audit: up to 9 values, each up
        // to a hook timeout later). Dropped, like any datagram the lane cannot take; the
        // room's next value goes through under the new token.
        for _ in 0..self.datagram_lane.clear() {
            m::datagram_dropped("refreshed");
        }
        debug!(session = %self.id, expires_at, "token refreshed");
        Ok(Some(Event::Refreshed {
            expires_at: Some(expires_at),
        }))
    }

    /// Ends the subscriptions the session's (new) grant no longer allows, when a `Refresh`
    /// changed its `subscribe` patterns. That is subscriptions × patterns of matching for one
    /// command: the meter is charged one command more per 1,024 (a session with 256 rooms and a
    /// token of 150 patterns pays for 38), so the rate bounds the work (outside bounds audit 2,
    /// N3: 12 sessions refreshing within the rate took 0.93 of a core).
    pub(super) async fn recheck_subscriptions(&mut self, arrived: std::time::Instant) {
        if !std::mem::take(&mut self.recheck_due) {
            return;
        }
        let work = self.subs.len() * self.grant.subscribe_patterns();
        self.meter.charge(work / 1024, arrived);
        let revoked: Vec<_> = self
            .subs
            .keys()
            .filter(|room| !self.grant.may_subscribe(room))
            .cloned()
            .collect();
        for room in revoked {
            if let Some(sub) = self.subs.remove(&room) {
                self.drop_sub(sub).await;
                debug!(session = %self.id, %room, "subscription revoked by refresh");
                self.reply(
                    0,
                    Event::Unsubscribed {
                        room: room.to_string(),
                        code: ErrorCode::PermissionDenied.as_u16(),
                        reason: "the refreshed token does not allow this room".into(),
                    },
                )
                .await;
            }
        }
    }

    /// The backend ended this room's subscription (`/api/v1/unsubscribe`): unsolicited
    /// `Unsubscribed { unsubscribed }`. Not subscribed (or already ended): nothing to say.
    pub(super) async fn unsubscribed_by_backend(
        &mut self,
        room: quiver_proto::RoomName,
        reason: String,
    ) {
        let Some(sub) = self.subs.remove(&room) else {
            return;
        };
        self.drop_sub(sub).await;
        self.subscription_lost(ErrorCode::Unsubscribed, Some(&reason));
        debug!(session = %self.id, %room, "unsubscribed by the backend");
        self.reply(
            0,
            Event::Unsubscribed {
                room: room.to_string(),
                code: ErrorCode::Unsubscribed.as_u16(),
                reason,
            },
        )
        .await;
    }

    pub(super) async fn subscription_ended(&mut self, end: Ended) {
        let Some(room) = self
            .subs
            .iter()
            .find(|(_, s)| s.id == end.sub_id)
            .map(|(r, _)| r.clone())
        else {
            return;
        };
        let Some(sub) = self.subs.remove(&room) else {
            return;
        };
        self.drop_sub(sub).await;
        if let Some((code, reason)) = end.cause {
            self.subscription_lost(code, None);
            if code == ErrorCode::StreamStopped {
                debug!(session = %self.id, %room, "client stopped the subscription stream");
            } else if SUBSCRIPTION_ENDS_LOGGED.admit_summarised() {
                warn!(session = %self.id, tenant = %self.grant.tenant, %room, %code, "subscription ended by server");
            }
            self.reply(
                0,
                Event::Unsubscribed {
                    room: room.to_string(),
                    code: code.as_u16(),
                    reason: reason.to_owned(),
                },
            )
            .await;
        }
    }

    pub(super) async fn presence(&self, room: &str) -> Result<Option<Event>, Refusal> {
        let max_frame = self.shared.config.limits.max_frame as usize;
        let (room, present) = self
            .members(room, |room| crate::presence::most_that_fit(room, max_frame))
            .await?;
        Ok(Some(crate::presence::bounded_event(
            room, present, max_frame,
        )))
    }

    /// `PresenceStats`: what `Presence` would list, counted (the list may not fit a frame), and
    /// none of it read.
    pub(super) async fn presence_stats(&self, room: &str) -> Result<Option<Event>, Refusal> {
        let (room, present) = self.members(room, |_| 0).await?;
        Ok(Some(crate::presence::stats_event(room, &present)))
    }

    /// The room's name and its presence, for `Presence` and `PresenceStats`: at most
    /// `max(room)` members listed, every one counted.
    async fn members(
        &self,
        room: &str,
        max: impl FnOnce(&str) -> usize,
    ) -> Result<(String, RoomPresence), Refusal> {
        let key = self.subscribable(room)?;
        // Refused before the hook: the backend is not asked about a command that cannot work.
        crate::presence::tracked(&self.shared.config, &key.room)
            .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
        self.ask_readable(&key).await?;
        let room = key.room.to_string();
        let max = max(&room);
        let present = self
            .shared
            .broker
            .presence(key, max)
            .await
            .map_err(|e| super::publishing::unavailable(self.grant.tenant.as_str(), e))?;
        Ok((room, present))
    }

    /// A room the token may subscribe to (what subscribe, presence and history need).
    fn subscribable(&self, room: &str) -> Result<RoomKey, Refusal> {
        let key = self.room(room)?;
        if !self.grant.may_subscribe(&key.room) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("no subscribe permission for room {}", key.room),
            ));
        }
        Ok(key)
    }

    /// Whether the session may read a room's members or history (it passed [`Self::subscribable`]):
    /// what a subscription would see, so the same checks as `Subscribe`, the backend's subscribe
    /// hook included (else a hook that keeps a room to its owner could be read around).
    async fn ask_readable(&self, key: &RoomKey) -> Result<(), Refusal> {
        self.ask_hook(crate::rpc::Hook::Subscribe, &key.room, None)
            .await?;
        Ok(())
    }

    /// A page of a history room, without subscribing (`history.rs`); needs subscribe
    /// permission, and fits one frame.
    pub(super) async fn history(
        &self,
        room: &str,
        since: Option<Position>,
        limit: u32,
    ) -> Result<Option<Event>, Refusal> {
        use crate::history::HistoryError;
        let refusal = |e: HistoryError| {
            let code = match &e {
                HistoryError::NoHistory(_) => ErrorCode::BadRequest,
                HistoryError::Unrecoverable { .. } => ErrorCode::UnrecoverablePosition,
                HistoryError::Broker(_) => ErrorCode::Unavailable,
            };
            Refusal::new(code, e.for_client(self.grant.tenant.as_str()))
        };
        let key = self.subscribable(room)?;
        // Refused before the hook: the backend is not asked about a command that cannot work.
        crate::history::kept(&self.shared.config, &key).map_err(refusal)?;
        self.ask_readable(&key).await?;
        let room = key.room.to_string();
        let max_frame = self.shared.config.limits.max_frame as usize;
        let page = crate::history::page(&self.shared, key, since, limit, max_frame)
            .await
            .map_err(refusal)?;
        Ok(Some(Event::History {
            room,
            position: page.current,
            publications: page
                .publications
                .into_iter()
                .map(|(position, payload)| quiver_proto::HistoryItem { position, payload })
                .collect(),
            truncated: page.truncated,
        }))
    }

    /// Records (or removes) this session's presence in a room and tells the room. Presence is
    /// best effort: a broker failure is logged, never fails the subscription.
    async fn announce_presence(&self, key: &RoomKey, joined: bool) {
        let member = Member {
            user: self.grant.user.clone(),
            session: self.id.clone(),
        };
        let stored = if joined {
            self.shared.broker.join(key.clone(), member.clone()).await
        } else {
            self.shared.broker.leave(key.clone(), member.clone()).await
        };
        if let Err(BrokerError::Departed) = stored {
            // The instance is exiting and every member it listed had its `Left`: a `Joined`
            // now would follow it, a `Left` repeat it (outside audit 84, F2; review 89, F1).
            debug!(session = %self.id, room = %key.room, "presence after the departure: not announced");
            return;
        }
        if let Err(e @ BrokerError::Unavailable(_)) = &stored {
            // NATS did not answer (known away, or no answer within the bound): an event handed
            // over now would go out whenever NATS answers again, perhaps minutes after the
            // member came or went, and the command would wait a second bound for it (outside
            // cluster audit 112, F1). Events may be lost while NATS is stalled or away
            // (PROTOCOL §5, Presence); the join is kept locally and put back by the refresh,
            // the leave's key expires, so `Presence` converges.
            if let Some(not_logged) = PRESENCE_UNRECORDED_LOGGED.admit() {
                warn!(session = %self.id, tenant = %key.tenant, room = %key.room, error = %e, not_logged, "presence not recorded nor announced");
            }
            return;
        }
        // A refusal of the broker (JetStream failing, core NATS answering) is announced all the
        // same: a join is kept locally and put in the bucket by the refresh once JetStream
        // answers again; a leave's key expires.
        let room = key.room.to_string();
        let event = if joined {
            Event::Joined { room, member }
        } else {
            Event::Left { room, member }
        };
        let frame = encode_event(&ServerFrame { id: 0, event });
        if let Err(e) = stored.and(self.shared.broker.announce(key.clone(), frame).await) {
            if let Some(not_logged) = PRESENCE_UNRECORDED_LOGGED.admit() {
                warn!(session = %self.id, tenant = %key.tenant, room = %key.room, error = %e, not_logged, "presence not recorded");
            }
        }
    }

    /// Removes a subscription from the hub and the broker's interest, and ends its writer: an
    /// own stream is finished, or reset if the client's credit left frames unwritten (PROTOCOL
    /// §2). On a shared transport the writer is stopped before this returns, so nothing of this
    /// subscription is written after whatever the session writes next.
    /// Stops `room`'s deliveries to this session, quietly, ahead of its unsubscribe: the
    /// writer stops where it is and the hub forgets the subscriber (so its queue does not fill
    /// up and count as a slow consumer's drops); `drop_sub` frees the rest later.
    pub(super) fn stop_deliveries(&self, room: &quiver_proto::RoomName) {
        let Some(sub) = self.subs.get(room) else {
            return;
        };
        sub.stop.cancel();
        sub.overflow.cancel();
        if self.shared.hub.unsubscribe(&sub.key, sub.id) {
            // The room's last subscriber here: the broker's interest goes too (`drop_sub`
            // finds the hub's entry gone and leaves it).
            let (broker, key) = (self.shared.broker.clone(), sub.key.clone());
            tokio::spawn(async move {
                if let Err(e) = broker.remove_interest(key).await {
                    warn!(error = %e, "broker refused to drop interest");
                }
            });
        }
    }

    /// Undoes the hub's and the tenant's side of a subscribe that never became a `Sub`: out of
    /// the hub, the room's interest let go of if it was the last, the subscription uncounted.
    pub(super) async fn forget_joining(&self, key: RoomKey, sub_id: u64) {
        // Uncounted before the await: a cut-off there must not leave the count behind.
        if let Some(quota) = &self.quota {
            quota.remove_subscription();
        }
        if self.shared.hub.unsubscribe(&key, sub_id) {
            let _ = self.shared.broker.remove_interest(key).await;
        }
    }

    pub(super) async fn drop_sub(&self, sub: Sub) {
        // The flag first, then the token the writer watches.
        sub.stop.cancel();
        sub.overflow.cancel();
        if let Some(writer) = sub.writer {
            writer.abort();
            let _ = writer.await;
            // Its place in the connection's queue, if lent to the hub, goes too: nothing more
            // of the room is queued after what the session writes next (its `Unsubscribed`).
            if let Some(direct) = &sub.direct {
                drop(direct.reclaim());
            }
        }
        metrics::gauge!(m::SUBSCRIPTIONS_ACTIVE).decrement(1.0);
        if let Some(quota) = &self.quota {
            quota.remove_subscription();
        }
        if self.shared.config.presence(&sub.key.room) {
            // Its `Left` is metered too, never refused: leaving always works.
            if let Some(quota) = &self.quota {
                quota.presence_left(std::time::Instant::now());
            }
            self.announce_presence(&sub.key, false).await;
        }
        let left_hub = self.shared.hub.unsubscribe(&sub.key, sub.id);
        // Out of the hub: nothing more is written into it directly.
        if let Some(direct) = &sub.direct {
            direct.settle();
        }
        if left_hub {
            if let Err(e) = self.shared.broker.remove_interest(sub.key).await {
                warn!(error = %e, "broker refused to drop interest");
            }
        }
    }
}
