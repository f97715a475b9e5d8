//! The application's requests (subscribe, unsubscribe, publish, ping, presence, close) and the
//! server's replies to them, matched by frame id.

use std::sync::atomic::Ordering;

use super::*;

impl Actor {
    pub(super) fn on_request(&mut self, req: Request) {
        // While closing, only what lets go of resources is done: the rest is dropped, and its
        // caller hears `Closed` (`Client::closed_error`).
        if self.closing.is_some() {
            match req {
                Request::Close { .. } | Request::Withdrawn => {}
                _ => return,
            }
        }
        match req {
            Request::Subscribe { room, from, reply } => self.subscribe(room, from, reply),
            Request::Unsubscribe { room, reply } => self.unsubscribe(&room, None, Some(reply)),
            Request::Dropped { room, gen } => self.unsubscribe(&room, Some(gen), None),
            Request::PublishUnreliable {
                room,
                payload,
                permit,
                replaced,
            } => {
                // A room this client knows to be reliable gets an ordinary publish: as a
                // datagram the server would drop it (`not_latest`), so the same call was
                // published over WebSocket and silently lost over WebTransport (outside audit
                // 61, M3).
                let reliable = self
                    .subs
                    .get(&room)
                    .is_some_and(|sub| sub.latest.known_reliable());
                let datagram = if reliable {
                    None
                } else {
                    self.datagram_for(&room, &payload)
                };
                let sent = match (datagram, permit) {
                    // Paced with the commands (the server meters it with them): sent now, or
                    // held as the room's newest value until a token frees up. Its place in the
                    // publish buffer goes back now: a room holds one value at most.
                    (Some(datagram), _) => {
                        self.publish_datagram(room, datagram);
                        true
                    }
                    // Disconnected: buffered as the room's newest value, replacing an older one
                    // still buffered (outside audit 121, F3, in both clients: a position
                    // published 60 times a second during an outage queued every stale value,
                    // filled `publish_buffer`, and had them all published in a row after).
                    (None, permit) if !reliable && self.live.is_none() => {
                        self.buffer_newest(room, payload, permit)
                    }
                    // No datagram this time (WebSocket, too large, a known reliable room): an
                    // ordinary publish without ack, which is what the app asked for at worst.
                    (None, Some(permit)) => {
                        self.on_request(Request::Publish {
                            room,
                            payload,
                            ack: None,
                            claim: Claim::with_place(permit),
                        });
                        true
                    }
                    // No place (the buffer was full while disconnected, and the connection is
                    // back meanwhile): refused, `BufferFull`.
                    (None, None) => false,
                };
                if let Some(replaced) = replaced {
                    let _ = replaced.send(sent);
                }
            }
            Request::Publish {
                room,
                payload,
                ack,
                claim,
            } => {
                let item = Buffered {
                    room,
                    payload,
                    ack,
                    claim,
                    newest_only: false,
                };
                if self.live.is_some() && self.buffer.is_empty() {
                    self.send_publish(item);
                } else {
                    // Withdrawn ones give their places back before this one takes its own.
                    self.buffer.retain(|b| !b.abandoned());
                    self.buffer.push_back(item);
                }
            }
            Request::Ping { reply } => {
                let sent = Instant::now();
                self.ask(Command::Ping, reply, |reply| Pending::Ping { sent, reply })
            }
            Request::Flush { reply } => self.flush(reply),
            Request::Presence { room, reply } => {
                self.ask(Command::Presence { room }, reply, |reply| {
                    Pending::Presence { reply }
                })
            }
            Request::PresenceStats { room, reply } => {
                self.ask(Command::PresenceStats { room }, reply, |reply| {
                    Pending::PresenceStats { reply }
                })
            }
            Request::History {
                room,
                since,
                limit,
                reply,
            } => self.ask(Command::History { room, since, limit }, reply, |reply| {
                Pending::History { reply }
            }),
            // Never buffered: a command must not run twice (or late) because of a reconnect.
            Request::Call {
                method,
                payload,
                timeout_ms,
                idempotency_key,
                reply,
                claim,
            } => {
                let call = Command::Call {
                    method,
                    payload,
                    timeout_ms,
                    idempotency_key,
                };
                // A call whose caller gave up while it waited for the pacer is not written
                // later: the backend would run it long after the application moved on (outside
                // audit 103, F6).
                match self.live.as_mut() {
                    // One too large for the session fails its reply itself.
                    Some(live) => {
                        let _ = live.send_claimed(call, Some(Pending::Call { reply }), Some(claim));
                    }
                    None => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                    }
                }
            }
            Request::Withdrawn => {
                // Before looking, so that a withdrawal after the look sends another request.
                self.shared.withdrawals.swap(false, Ordering::AcqRel);
                self.buffer.retain(|b| !b.abandoned());
                if let Some(live) = self.live.as_mut() {
                    live.pending.retain(|_, p| {
                        !matches!(p, Pending::PublishAck { claim, .. } if claim.is_withdrawn())
                    });
                }
            }
            Request::Close { reply } => self.start_close(reply),
        }
    }

    /// Sends `command` on the live connection, its answer awaited as `pending(reply)`; while
    /// disconnected the request fails at once (`NotConnected`): never buffered.
    fn ask<T>(
        &mut self,
        command: Command,
        reply: Reply<T>,
        pending: impl FnOnce(Reply<T>) -> Pending,
    ) {
        match self.live.as_mut() {
            // One too large for the session fails its reply itself.
            Some(live) => {
                let _ = live.send(command, Some(pending(reply)));
            }
            None => {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
        }
    }

    pub(super) fn subscribe(
        &mut self,
        room: String,
        from: Option<Position>,
        reply: Reply<SubParts>,
    ) {
        if let Some(sub) = self.subs.get_mut(&room) {
            // A subscribe whose caller gave up (a `Timeout`) and that was never answered: this
            // one takes it over, rather than be refused `already_subscribed` for a room it has
            // no handle of (outside audit 68, 5). Only if it asks for what is in flight: one
            // already sent from another position would be answered for that position, and
            // a `subscribe_from` would silently miss what lies between (outside audit 73).
            let abandoned =
                sub.parts.is_some() && sub.waiter.as_ref().is_some_and(|w| w.is_closed());
            if abandoned && sub.cmd_id.is_none() {
                // Not sent yet: it goes out at the next `Welcome` from the position asked now.
                sub.waiter = Some(reply);
                *lock(&sub.last) = from;
                return;
            }
            if abandoned && *lock(&sub.last) == from {
                sub.waiter = Some(reply);
                return;
            }
            let message = if abandoned {
                format!("a subscribe to {room} from another position is still unanswered; retry once it is answered")
            } else {
                format!("this client is already subscribed to {room}")
            };
            let _ = reply.send(Err(ClientError::server(
                ErrorCode::AlreadySubscribed,
                message,
            )));
            return;
        }
        let (tx, rx) = crate::subscription::queue(
            self.cfg.subscription_buffer,
            self.cfg.subscription_buffer_bytes,
        );
        let (end_tx, end_rx) = oneshot::channel();
        let gen = self.next_gen;
        self.next_gen += 1;
        self.subs.insert(
            room.clone(),
            Sub {
                gen,
                tx,
                end_tx: Some(end_tx),
                parts: Some((rx, end_rx)),
                latest: Arc::new(crate::latest::LatestCell::default()),
                waiter: Some(reply),
                last: Arc::new(Mutex::new(from)),
                cmd_id: None,
                confirmed: false,
                confirmed_at: None,
                retries: 0,
                stream: None,
                preamble: None,
                reader: None,
                reader_end: None,
            },
        );
        self.send_subscribe(&room);
    }

    /// Sends `Subscribe` (with the resume position) for `room` on the live connection, if any.
    pub(super) fn send_subscribe(&mut self, room: &str) {
        let (Some(live), Some(sub)) = (self.live.as_mut(), self.subs.get_mut(room)) else {
            return;
        };
        let resume = *lock(&sub.last);
        let sent = live.send(
            Command::Subscribe {
                room: room.to_string(),
                resume,
            },
            Some(Pending::Subscribe {
                room: room.to_string(),
                gen: sub.gen,
                resumed: resume.is_some(),
            }),
        );
        sub.confirmed = false;
        match sent {
            Ok(id) => sub.cmd_id = Some(id),
            // Too large for the session: refused here as the server would refuse the room.
            Err(e) => {
                sub.cmd_id = None;
                let (code, message) = match e {
                    ClientError::Server { code, message } => (code, message),
                    other => (ErrorCode::InvalidRoom.as_u16(), other.to_string()),
                };
                self.subscribe_refused(room, code, message);
            }
        }
    }

    /// Ends the application's subscription to `room` (only generation `gen`, if given) and tells
    /// the server.
    pub(super) fn unsubscribe(&mut self, room: &str, gen: Option<u64>, reply: Option<Reply<()>>) {
        let matches = self
            .subs
            .get(room)
            .is_some_and(|s| gen.is_none_or(|g| g == s.gen));
        if !matches {
            if let Some(reply) = reply {
                let _ = reply.send(Err(ClientError::server(
                    ErrorCode::NotSubscribed,
                    format!("this client is not subscribed to {room}"),
                )));
            }
            return;
        }
        let Some(mut sub) = self.subs.remove(room) else {
            return;
        };
        if let Some(w) = sub.waiter.take() {
            let _ = w.send(Err(ClientError::server(
                ErrorCode::NotSubscribed,
                "unsubscribed before the subscription was confirmed",
            )));
        }
        let sent = sub.cmd_id.is_some();
        sub.reset_connection();
        drop(sub);
        match self.live.as_mut() {
            Some(live) if sent => {
                let _ = live.send(
                    Command::Unsubscribe {
                        room: room.to_string(),
                    },
                    Some(Pending::Unsubscribe { reply }),
                );
            }
            _ => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// Buffers an unreliable publish made while disconnected as `room`'s newest value: an
    /// older one still buffered is replaced, keeping its place in the buffer (`permit`, the
    /// new one's, goes back), and goes last, after what was published before it. Without a
    /// place and nothing to replace, nothing is buffered: `false`.
    fn buffer_newest(
        &mut self,
        room: String,
        payload: Bytes,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> bool {
        self.buffer.retain(|b| !b.abandoned());
        let older = self
            .buffer
            .iter()
            .position(|b| b.newest_only && b.room == room)
            .and_then(|at| self.buffer.remove(at));
        let kept = match (older, permit) {
            (Some(older), _) => Buffered { payload, ..older },
            (None, Some(permit)) => Buffered {
                room,
                payload,
                ack: None,
                claim: Claim::with_place(permit),
                newest_only: true,
            },
            (None, None) => return false,
        };
        self.buffer.push_back(kept);
        true
    }

    pub(super) fn send_publish(&mut self, item: Buffered) {
        if item.abandoned() {
            return;
        }
        let Some(live) = self.live.as_mut() else {
            self.buffer.push_back(item);
            return;
        };
        // Held for this session by the last one's teardown (a fresh one is writable already);
        // withdrawn meanwhile, the writer skips it and `Request::Withdrawn` lets go of it.
        item.claim.rearm();
        // A frame over `max_frame` would make the server close the whole session
        // (protocol_error), so refuse locally what could not fit (room + envelope < 64 bytes
        // beyond the room name).
        let frame_len = item.payload.len() + item.room.len() + 32;
        if item.payload.len() > live.limits.max_payload as usize
            || frame_len > live.limits.max_frame as usize
        {
            let err = ClientError::server(
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds limits.max_payload {} / max_frame {} (checked locally)",
                    item.payload.len(),
                    live.limits.max_payload,
                    live.limits.max_frame
                ),
            );
            match item.ack {
                Some(reply) => {
                    let _ = reply.send(Err(err));
                }
                None => tracing::warn!(room = %item.room, "dropping buffered publish: {err}"),
            }
            return;
        }
        let Some(reply) = item.ack else {
            live.send_unacked(item.room, item.payload, item.claim);
            return;
        };
        let pending = Pending::PublishAck {
            reply,
            again: (item.room.clone(), item.payload.clone()),
            claim: item.claim,
        };
        // One too large for the session fails its reply itself.
        let _ = live.send_with(
            Command::Publish {
                room: item.room,
                payload: item.payload,
                ack: true,
            },
            Some(pending),
        );
    }

    pub(super) fn on_frame(&mut self, frame: ServerFrame) {
        let ServerFrame { id, event } = frame;
        let Some(live) = self.live.as_mut() else {
            return;
        };
        // Publishes written since the last one are let go of here too, not only at the next.
        live.prune_unacked();
        // The answer to a heartbeat: schedule the next one from now, not from its deadline.
        if matches!(live.pending.get(&id), Some(Pending::Heartbeat)) {
            live.pending.remove(&id);
            live.unanswered_since = None;
            self.on_heartbeat();
            return;
        }
        match event {
            Event::Subscribed {
                room,
                position,
                recovery,
                subscription,
            } => match live.take(id, |p| matches!(p, Pending::Subscribe { .. })) {
                Some(Pending::Subscribe {
                    room: r,
                    gen,
                    resumed,
                }) if r == room => {
                    let answer = (position, recovery, subscription);
                    self.on_subscribed(id, &room, gen, resumed, answer)
                }
                _ => live.unexpected(id, "Subscribed"),
            },
            Event::Unsubscribed { room, code, reason } => {
                if id == 0 {
                    self.on_server_unsubscribed(&room, code, reason);
                } else {
                    match live.take(id, |p| matches!(p, Pending::Unsubscribe { .. })) {
                        Some(Pending::Unsubscribe { reply }) => {
                            if let Some(reply) = reply {
                                let _ = reply.send(Ok(()));
                            }
                        }
                        // Not the answer to an `Unsubscribe` of ours: whatever its id, the
                        // server says the room is over (and sends nothing more of it), so the
                        // application is told, as for an unsolicited one.
                        _ => {
                            live.unexpected(id, "Unsubscribed");
                            self.on_server_unsubscribed(&room, code, reason);
                        }
                    }
                }
            }
            Event::Published { position } => {
                match live.take(id, |p| matches!(p, Pending::PublishAck { .. })) {
                    Some(Pending::PublishAck { reply, .. }) => {
                        let _ = reply.send(Ok(position));
                    }
                    _ => live.unexpected(id, "Published"),
                }
            }
            Event::Pong => match live.take(id, |p| matches!(p, Pending::Ping { .. })) {
                Some(Pending::Ping { sent, reply }) => {
                    let _ = reply.send(Ok(sent.elapsed()));
                }
                _ => live.unexpected(id, "Pong"),
            },
            Event::Refreshed { expires_at } => {
                match live.take(id, |p| matches!(p, Pending::Refresh)) {
                    Some(Pending::Refresh) => {
                        tracing::debug!(?expires_at, "token refreshed");
                        let before = lock(&self.shared.welcome)
                            .as_ref()
                            .and_then(|w| w.expires_at);
                        let ahead = self.cfg.refresh_ahead;
                        if refresh_done(before, expires_at, unix_now(), ahead) {
                            live.refresh_failures = 0;
                            live.refresh_at = refresh_deadline(expires_at, self.cfg.refresh_ahead);
                        } else {
                            let delay = self
                                .cfg
                                .backoff
                                .delay(live.refresh_failures)
                                .max(Duration::from_secs(1));
                            live.refresh_failures = live.refresh_failures.saturating_add(1);
                            live.refresh_at = Some(tokio::time::Instant::now() + delay);
                        }
                        if let Some(w) = lock(&self.shared.welcome).as_mut() {
                            w.expires_at = expires_at;
                        }
                    }
                    _ => live.unexpected(id, "Refreshed"),
                }
            }
            // The server's text reaches the application's errors, which it may log: clipped
            // and escaped as everywhere else (outside audit 115, F6; audit 103, F8).
            Event::Error { code, message } => {
                let message = clip(&message);
                match live.pending.remove(&id) {
                    Some(Pending::Subscribe { room, gen, .. }) => {
                        self.on_subscribe_refused(id, &room, gen, code, message)
                    }
                    Some(Pending::Unsubscribe { reply }) => {
                        if let Some(reply) = reply {
                            // Not subscribed on the server (the subscribe was refused or the server
                            // ended it meanwhile): the outcome the caller wanted.
                            let res = if code == ErrorCode::NotSubscribed.as_u16() {
                                Ok(())
                            } else {
                                Err(ClientError::Server { code, message })
                            };
                            let _ = reply.send(res);
                        }
                    }
                    Some(Pending::PublishAck { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::Server { code, message }));
                    }
                    Some(Pending::Ping { reply, .. }) => {
                        let _ = reply.send(Err(ClientError::Server { code, message }));
                    }
                    Some(Pending::Presence { reply }) => {
                        let _ = reply.send(Err(ClientError::Server { code, message }));
                    }
                    Some(Pending::PresenceStats { reply }) => {
                        let _ = reply.send(Err(ClientError::Server { code, message }));
                    }
                    Some(Pending::History { reply }) => {
                        let _ = reply.send(Err(ClientError::Server { code, message }));
                    }
                    Some(Pending::Call { reply }) => {
                        let _ = reply.send(Err(ClientError::Server { code, message }));
                    }
                    Some(Pending::Refresh) => {
                        tracing::warn!(code, %message, "token refresh refused");
                        self.retry_refresh();
                    }
                    // Answered above, before looking at the event.
                    Some(Pending::Heartbeat) => {}
                    None => {
                        // Most likely an un-acknowledged publish the server refused.
                        tracing::warn!(id, code, %message, "command refused");
                    }
                }
            }
            Event::Goodbye {
                code,
                reason,
                reconnect,
            } => {
                // Kept in the state and errors the application sees, and logged: clipped.
                let reason = clip(&reason);
                tracing::info!(code, %reason, reconnect, "server said goodbye");
                self.teardown(code, reason, reconnect, true);
            }
            Event::Presence {
                room,
                members,
                truncated,
            } => match live.take(id, |p| matches!(p, Pending::Presence { .. })) {
                Some(Pending::Presence { reply }) => {
                    if truncated {
                        // The server listed only as many members as fit in one frame.
                        tracing::debug!(room = %clip(&room), listed = members.len(), "presence truncated");
                    }
                    let _ = reply.send(Ok(members));
                }
                _ => live.unexpected(id, "Presence"),
            },
            Event::PresenceStats {
                sessions, users, ..
            } => match live.take(id, |p| matches!(p, Pending::PresenceStats { .. })) {
                Some(Pending::PresenceStats { reply }) => {
                    let _ = reply.send(Ok(crate::PresenceStats { sessions, users }));
                }
                _ => live.unexpected(id, "PresenceStats"),
            },
            Event::History {
                position,
                publications,
                truncated,
                ..
            } => match live.take(id, |p| matches!(p, Pending::History { .. })) {
                Some(Pending::History { reply }) => {
                    let _ = reply.send(Ok(crate::HistoryPage {
                        position,
                        publications,
                        truncated,
                    }));
                }
                _ => live.unexpected(id, "History"),
            },
            Event::Reply { payload } => {
                match live.take(id, |p| matches!(p, Pending::Call { .. })) {
                    Some(Pending::Call { reply }) => {
                        let _ = reply.send(Ok(payload));
                    }
                    _ => live.unexpected(id, "Reply"),
                }
            }
            Event::Welcome { .. }
            | Event::Publication { .. }
            | Event::SubscriptionStream { .. }
            | Event::Joined { .. }
            | Event::Latest { .. }
            | Event::Left { .. } => live.unexpected(id, "event on the control stream"),
        }
    }
}

/// The error code a command too large to send fails with: what the server would answer a
/// command whose argument is too long, had the frame been within its limit.
pub(super) fn oversize_code(command: &Command) -> ErrorCode {
    match command {
        Command::Publish { .. } | Command::Call { .. } => ErrorCode::PayloadTooLarge,
        Command::Subscribe { .. }
        | Command::Unsubscribe { .. }
        | Command::Presence { .. }
        | Command::PresenceStats { .. }
        | Command::History { .. } => ErrorCode::InvalidRoom,
        Command::Refresh { .. } => ErrorCode::InvalidToken,
        _ => ErrorCode::BadRequest,
    }
}

/// Unexpected frames (replies to no command, events that do not belong on the control stream)
/// a connection logs as warnings; past these, at debug level. A server may send them without
/// end, a `Pong` of 6 bytes each (outside audit 103, F2: a warning each, millions a message);
/// a reply that comes after its caller gave up and its command was forgotten is one too.
const UNEXPECTED_WARNINGS: u32 = 8;

impl Live {
    fn unexpected(&mut self, id: u32, what: &str) {
        self.unexpected = self.unexpected.saturating_add(1);
        if self.unexpected < UNEXPECTED_WARNINGS {
            tracing::warn!(id, "unexpected {what}");
        } else if self.unexpected == UNEXPECTED_WARNINGS {
            tracing::warn!(
                id,
                "unexpected {what}; more on this connection are logged at debug level"
            );
        } else {
            tracing::debug!(id, "unexpected {what}");
        }
    }
}
