//! Subscriptions: confirmed by `Subscribed`, fed by their `SubStream` (only the one whose
//! `SubscriptionStream` id matches the latest `Subscribe`: older ones are stale), ended by the
//! server, by a refusal after a reconnect, or (WebSocket) by falling behind.
//!
//! What the server claims about positions and recovery is checked against the stream
//! (`crate::continuity`): a `Recovered` the `Subscribed` itself rules out is taken as `Failed`
//! here; the delivery task judges each publication.

use super::*;
use crate::continuity::{recovery_possible, Continuity};

/// How a subscription's stream starts, decided by its `Subscribed`: the event the application
/// gets first, and what the stream's positions are checked against.
pub(super) struct Start {
    preamble: Option<SubEvent>,
    continuity: Continuity,
}

impl Actor {
    /// The subscription of `room`, if it is still generation `gen` and its latest `Subscribe`
    /// was frame `id` (a reply to an earlier one is stale).
    fn current(&mut self, room: &str, gen: u64, id: u32) -> Option<&mut Sub> {
        self.subs
            .get_mut(room)
            .filter(|s| s.gen == gen && s.cmd_id == Some(id))
    }

    /// `resumed`: the `Subscribe` carried a resume position. `answer`: the `Subscribed`'s
    /// position, recovery and `latest` subscription id.
    pub(super) fn on_subscribed(
        &mut self,
        id: u32,
        room: &str,
        gen: u64,
        resumed: bool,
        answer: (Option<Position>, Recovery, Option<u64>),
    ) {
        let (position, recovery, subscription) = answer;
        let routes = self.latest_routes.clone();
        let Some(sub) = self.current(room, gen, id) else {
            return;
        };
        // A session never gives one subscription id to two rooms (PROTOCOL.md §10); a server
        // that does would have one room's datagrams delivered as the other's (outside client
        // audit 14, L2): the connection ends instead.
        let reused = subscription.is_some_and(|subscription| {
            let mut routes = lock(&routes);
            match routes.get(&subscription) {
                Some(cell) if !Arc::ptr_eq(cell, &sub.latest) => true,
                _ => {
                    routes.insert(subscription, sub.latest.clone());
                    false
                }
            }
        });
        if reused {
            let reason = format!(
                "the server gave subscription id {} to a second room ({room})",
                subscription.unwrap_or_default()
            );
            tracing::warn!("{reason}");
            self.teardown(0, reason, true, false);
            return;
        }
        sub.confirmed = true;
        sub.confirmed_at = Some(Instant::now());
        sub.latest.confirmed(subscription);
        let (recovery, continuity) = {
            let mut last = lock(&sub.last);
            let recovery = match recovery {
                Recovery::Recovered { replayed }
                    if !recovery_possible(*last, position, replayed) =>
                {
                    tracing::warn!(room, ?position, resume = ?*last, replayed, "a Recovered that cannot be true; reporting the recovery as failed");
                    Recovery::Failed
                }
                // PROTOCOL.md §5: a resume is answered `Recovered` or `Failed`. Passed on,
                // `NotRequested` kept the old resume point, said nothing to `subscribe_from`, and
                // after a reconnect read as a live room's answer: the application missed what lay
                // between its position and the stream's start and never re-synced (outside
                // audit 103, F3).
                Recovery::NotRequested if resumed => {
                    tracing::warn!(room, ?position, resume = ?*last, "a resume answered NotRequested; reporting the recovery as failed");
                    Recovery::Failed
                }
                other => other,
            };
            let replay_left = match recovery {
                // Replayed publications move `last` forward as they are delivered.
                Recovery::Recovered { replayed } => Some(replayed),
                // Missed messages cannot be recovered: continue from the room's current
                // position (which may be in a new epoch).
                Recovery::Failed => {
                    *last = position;
                    None
                }
                Recovery::NotRequested => {
                    if last.is_none() {
                        *last = position;
                    }
                    None
                }
            };
            (
                recovery,
                Continuity {
                    head: position,
                    replay_left,
                },
            )
        };
        if let Some(waiter) = sub.waiter.take() {
            let Some((rx, end)) = sub.parts.take() else {
                return;
            };
            let latest = sub.latest.clone();
            let bytes = sub.tx.bytes();
            let last = sub.last.clone();
            if waiter
                .send(Ok(SubParts {
                    rx,
                    end,
                    gen,
                    latest,
                    bytes,
                    last,
                }))
                .is_err()
            {
                // The caller gave up (timeout or dropped future): nobody will read it.
                self.unsubscribe(room, Some(gen), None);
                return;
            }
            // `subscribe_from`: the application learns how its resume went, as after a
            // reconnect, before anything replayed.
            sub.preamble = Some(Start {
                preamble: (!matches!(recovery, Recovery::NotRequested))
                    .then_some(SubEvent::Resubscribed { recovery }),
                continuity,
            });
        } else {
            sub.preamble = Some(Start {
                preamble: Some(SubEvent::Resubscribed { recovery }),
                continuity,
            });
        }
        let stream = sub.stream.take();
        if let Some(stream) = stream {
            self.start_reader(room, stream);
        } else if let Some(live) = self.live.as_mut() {
            // A server that confirms a room and never opens its stream (nor ends the room) left
            // it silently dead for the session's life (outside audit 115, F11).
            let (tx, epoch, room) = (self.ev_tx.clone(), self.epoch, room.to_owned());
            let wait = stream_wait(&self.cfg);
            live.tasks.spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send((epoch, ConnEvent::StreamDue { room, id }));
            });
        }
    }

    pub(super) fn on_subscribe_refused(
        &mut self,
        id: u32,
        room: &str,
        gen: u64,
        code: u16,
        message: String,
    ) {
        if self.current(room, gen, id).is_none() {
            return;
        }
        self.subscribe_refused(room, code, message);
    }

    /// The current `Subscribe` of `room` was refused, by the server or (too large to send) by
    /// this client.
    pub(super) fn subscribe_refused(&mut self, room: &str, code: u16, message: String) {
        let Some(sub) = self.subs.get_mut(room) else {
            return;
        };
        if let Some(waiter) = sub.waiter.take() {
            self.subs.remove(room);
            let _ = waiter.send(Err(ClientError::Server { code, message }));
            return;
        }
        // A resubscribe after reconnecting. Transient refusals ("not now": a quota among them,
        // PROTOCOL §11) are retried; anything else (permission_denied with a new token, ...)
        // ends the subscription.
        let transient = matches!(
            ErrorCode::from_u16(code),
            Some(
                ErrorCode::RateLimited
                    | ErrorCode::Internal
                    | ErrorCode::Unavailable
                    | ErrorCode::QuotaExceeded
            )
        );
        if transient {
            sub.cmd_id = None;
            let gen = sub.gen;
            self.subscribe_later(room, gen);
            return;
        }
        tracing::info!(room, code, message = %clip(&message), "resubscribe refused, ending subscription");
        self.end_sub(
            room,
            SubEvent::Ended {
                code,
                reason: message,
            },
        );
    }

    /// The server ended a subscription (slow_consumer, session_closing, ...). Its stream is
    /// finished by the server; the reader delivers what is left, then the end event follows.
    ///
    /// `unavailable` and `unrecoverable_position` mean "subscribe again, resuming from the last
    /// position received" (PROTOCOL.md §5: a cluster's replay cut short, or the room's history
    /// lost under a new epoch): the client does so after a short delay, and the application
    /// hears how the resume went (`Resubscribed`), as after a reconnect. So does
    /// `session_closing` (reserved, §5's table: "a client that gets it re-subscribes after
    /// reconnecting"; outside audit 26: it ended the subscription): the closing session's
    /// goodbye usually comes first, and then the reconnect resubscribes anyway.
    pub(super) fn on_server_unsubscribed(&mut self, room: &str, code: u16, reason: String) {
        // Passed on in `SubEvent::Ended`, which the application may log: clipped and escaped
        // (outside audit 115, F6).
        let reason = clip(&reason);
        let Some(sub) = self.subs.get_mut(room).filter(|s| s.confirmed) else {
            return;
        };
        let resume = matches!(
            ErrorCode::from_u16(code),
            Some(
                ErrorCode::Unavailable
                    | ErrorCode::UnrecoverablePosition
                    | ErrorCode::SessionClosing
            )
        );
        if !resume {
            tracing::info!(room, code, %reason, "server ended subscription");
            self.end_sub(room, SubEvent::Ended { code, reason });
            return;
        }
        tracing::info!(room, code, %reason, "server ended subscription; subscribing again, resuming");
        // What the old stream still held is not read: the resume starts after what was
        // delivered, so the replay brings it (or the recovery says it is lost).
        sub.reset_connection();
        let gen = sub.gen;
        self.subscribe_later(room, gen);
    }

    /// Sends the `Subscribe` of `room` (generation `gen`) again later, on this connection only:
    /// the delay doubles with every retry in a row (between half and all of the reconnect
    /// backoff's window, at least 200 ms), so a server that ends or refuses the room every time
    /// is not asked ever faster (outside client audit 13, F4: a fixed 0.2-0.8 s window, 20
    /// `Subscribe`s in 10 s). One that lasted [`STABLE`] starts from the first delay again.
    fn subscribe_later(&mut self, room: &str, gen: u64) {
        let backoff = self.cfg.backoff;
        let Some(sub) = self.subs.get_mut(room) else {
            return;
        };
        if sub.confirmed_at.is_some_and(|at| at.elapsed() >= STABLE) {
            sub.retries = 0;
        }
        sub.confirmed_at = None;
        let ceiling = backoff.ceiling(sub.retries);
        sub.retries = sub.retries.saturating_add(1).min(30);
        let delay =
            (ceiling / 2 + backoff.delay(sub.retries - 1) / 2).max(Duration::from_millis(200));
        let (tx, epoch) = (self.ev_tx.clone(), self.epoch);
        let ev = ConnEvent::RetrySubscribe {
            room: room.to_string(),
            gen,
        };
        if let Some(live) = self.live.as_mut() {
            live.tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send((epoch, ev));
            });
        }
    }

    /// Removes the subscription; its stream yields `ev` once the queued events are read.
    pub(super) fn end_sub(&mut self, room: &str, ev: SubEvent) {
        if let Some(mut sub) = self.subs.remove(room) {
            // A `subscribe()` still waiting for its first `Subscribed` gets the reason, not a
            // dropped reply read as a lost connection (outside client audit 13, F6: a room that
            // overflowed before its `Subscribed` said "connection lost" on a live connection).
            if let (Some(waiter), SubEvent::Ended { code, reason }) = (sub.waiter.take(), &ev) {
                let _ = waiter.send(Err(ClientError::Server {
                    code: *code,
                    message: reason.clone(),
                }));
            }
            if let Some(id) = sub.latest.subscription() {
                lock(&self.latest_routes).remove(&id);
            }
            if let Some(end) = sub.end_tx.take() {
                let _ = end.send(ev);
            }
            // The reader (if any) keeps its sender until the stream ends, so what the server
            // sent before the end is still delivered (a room stream's last frames may arrive
            // after the control stream's `Unsubscribed`), then `Ended`. A WebTransport server
            // that ends the subscription but neither finishes nor resets its stream would have
            // it deliver for the connection's life, and `Ended` never come (outside audit 103,
            // F4): told of the end, the reader waits on the stream for `STREAM_END_GRACE` of its
            // own time at most. The time it waits for the application does not count, so a slow
            // application still gets everything the server sent (outside review 107, F1: the
            // reader was aborted `STREAM_END_GRACE` after the end whatever it was doing, and
            // the frames it held or had yet to read were lost). (On WebSocket the reader's
            // share of the room ended with the `Unsubscribed`; a slow consumer's is still
            // delivered in full.)
            if let (Some(ended), Some(live)) = (sub.reader_end.take(), self.live.as_ref()) {
                if matches!(live.link, Link::WebTransport(_)) {
                    let _ = ended.send(());
                }
            }
        }
    }

    pub(super) fn on_stream(&mut self, id: u32, room: String, stream: SubStream) {
        let current = self
            .subs
            .get_mut(&room)
            .filter(|s| s.cmd_id == Some(id) && s.reader.is_none() && s.stream.is_none());
        match current {
            Some(sub) if sub.confirmed => self.start_reader(&room, stream),
            Some(sub) => sub.stream = Some(stream),
            None => {
                tracing::debug!(id, room = %clip(&room), "discarding a stale subscription's frames");
                if let Some(live) = self.live.as_mut() {
                    stream.discard(&mut live.tasks);
                }
            }
        }
    }

    pub(super) fn start_reader(&mut self, room: &str, stream: SubStream) {
        let (Some(live), Some(sub)) = (self.live.as_mut(), self.subs.get_mut(room)) else {
            return;
        };
        let Start {
            preamble,
            continuity,
        } = sub.preamble.take().unwrap_or(Start {
            preamble: None,
            continuity: Continuity::default(),
        });
        let (reader_end, ended) = oneshot::channel();
        let delivered = deliver(
            stream,
            sub.tx.clone(),
            sub.last.clone(),
            preamble,
            continuity,
            live.liveness.clone(),
            sub.latest.clone(),
            EndGrace::new(ended, STREAM_END_GRACE),
        );
        let (tx, epoch, id, room) = (self.ev_tx.clone(), self.epoch, sub.cmd_id, room.to_owned());
        let handle = live.tasks.spawn(async move {
            // The server ends a subscription's stream with an `Unsubscribed` on the control
            // stream, which may come a little before or after the stream's end. A stream ended
            // (finished or reset) with no `Unsubscribed` within `STREAM_END_GRACE` left the
            // subscription silently dead (outside client audit 14, M2): the state machine then
            // treats the connection as broken, as for a frame naming another room.
            if delivered.await {
                tokio::time::sleep(STREAM_END_GRACE).await;
                if let Some(id) = id {
                    let _ = tx.send((epoch, ConnEvent::StreamEnded { room, id }));
                }
            }
        });
        sub.reader = Some(handle);
        sub.reader_end = Some(reader_end);
    }

    /// A subscription's stream ended `STREAM_END_GRACE` ago: if no `Unsubscribed` ended or
    /// renewed the subscription meanwhile, the server broke the protocol and the connection is
    /// dropped (the client reconnects, subscribes again and resumes).
    pub(super) fn on_stream_ended(&mut self, room: &str, id: u32) {
        if self.subs.get(room).is_some_and(|s| s.cmd_id == Some(id)) {
            let reason =
                format!("the server ended the stream of room {room} without an Unsubscribed");
            tracing::warn!("{reason}");
            self.teardown(0, reason, true, false);
        }
    }

    /// The subscription confirmed by the `Subscribe` `id` was confirmed [`stream_wait`] ago: if
    /// its stream has not come and nothing ended the room meanwhile, the server broke the
    /// protocol (it opens the stream or ends the room with 114 within `timeouts.stream_open`),
    /// and the connection is dropped, as for a stream ended without `Unsubscribed`: the client
    /// reconnects, subscribes again and resumes.
    pub(super) fn on_stream_due(&mut self, room: &str, id: u32) {
        let missing = self.subs.get(room).is_some_and(|s| {
            s.cmd_id == Some(id) && s.confirmed && s.reader.is_none() && s.stream.is_none()
        });
        if missing {
            let reason = format!(
                "the server confirmed room {} and opened no stream for it within {} s",
                clip(room),
                stream_wait(&self.cfg).as_secs()
            );
            tracing::warn!("{reason}");
            self.teardown(0, reason, true, false);
        }
    }

    /// A WebSocket subscription the application does not keep up with: ended on the client's
    /// side as the server would end it (`slow_consumer`), and unsubscribed on the server. What
    /// was already queued is still delivered before the end.
    pub(super) fn on_overflow(&mut self, id: u32, room: &str) {
        if self.subs.get(room).is_none_or(|s| s.cmd_id != Some(id)) {
            return;
        }
        tracing::warn!(room, "subscription fell behind; ending it (slow_consumer)");
        self.end_sub(
            room,
            SubEvent::Ended {
                code: ErrorCode::SlowConsumer.as_u16(),
                reason: "ended by this client: the application did not read this subscription \
                         fast enough"
                    .into(),
            },
        );
        if let Some(live) = self.live.as_mut() {
            let _ = live.send(
                Command::Unsubscribe {
                    room: room.to_string(),
                },
                Some(Pending::Unsubscribe { reply: None }),
            );
        }
    }
}
