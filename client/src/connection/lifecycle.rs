//! The connection's lifecycle: a session established (its tasks started, resubscribes and
//! buffered publishes sent), the heartbeat's verdict, a session lost (what goes again on the
//! next one, what fails), the reconnect's backoff, and the client's close.

use super::*;

/// Largest frame accepted from the server after `Welcome`: a publication of `max_payload` bytes
/// plus its envelope must fit even when the server announces `max_frame` = `max_payload`; and
/// never more than the client's own ceiling (`ClientConfig::max_frame`, itself capped by the
/// protocol's), whatever the server announces (outside audit: a server announcing 4 GiB made
/// one 300 MB frame cost 1.3 GB here). Saturating: a `max_payload` of `u32::MAX` overflowed a
/// 32-bit `usize` (outside audit 103, F9).
fn stream_max_frame(limits: &Limits, ceiling: usize) -> usize {
    (limits.max_frame as usize)
        .max((limits.max_payload as usize).saturating_add(1024))
        .max(DEFAULT_MAX_FRAME)
        .min(ceiling)
}

/// How long [`crate::Client::close`] waits for what was accepted to be carried out: the
/// publications queued or waiting for the pacer written (datagram publications sent), the
/// acknowledgements of those in
/// flight received, the control stream ended and the server's close that answers it. Past it
/// the connection is closed whatever is left.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

/// A [`crate::Client::close`] under way ([`CLOSE_FLUSH`]).
pub(super) struct Closing {
    /// The `close()` calls to answer once closed.
    waiters: Vec<oneshot::Sender<()>>,
    pub(super) deadline: tokio::time::Instant,
    /// Until when held datagram values may keep the control stream from ending (half the
    /// flush): past it they are dropped, so that the end still goes before the deadline
    /// (review 131, R1: commands take the pacer's tokens first, and values that never got one
    /// kept the end from going at all, so the close discarded publishes not yet read).
    pub(super) datagrams_until: tokio::time::Instant,
    /// The writer's queue is ended: the control stream ends behind its last frame, and only
    /// the server's close (or the deadline) is waited for.
    ended: bool,
}

impl Actor {
    pub(super) fn on_established(&mut self, est: Established) {
        let welcome = est.welcome.clone();
        let limits = welcome.limits;
        let pacer = if self.cfg.pace_commands {
            Pacer::for_server_limit(limits.commands_per_second, Instant::now())
                .map(SharedPacer::new)
        } else {
            None
        };
        let liveness = Arc::new(Liveness::new());
        liveness.touch();
        let ctx = RunCtx {
            events: self.ev_tx.clone(),
            control_credit: Arc::new(tokio::sync::Semaphore::new(CONTROL_CREDIT)),
            epoch: self.epoch,
            pacer: pacer.clone(),
            liveness: liveness.clone(),
            max_frame: stream_max_frame(&limits, self.cfg.frame_ceiling()),
            header_timeout: self.cfg.request_timeout,
            latest_routes: self.latest_routes.clone(),
        };
        let mut tasks = JoinSet::new();
        let (link, writer) = est.run(ctx, &mut tasks);
        let heartbeat = self.cfg.heartbeat.map(|hb| {
            let mut watch = Watch::new(hb);
            let next = match watch.step(liveness.last(), Instant::now()) {
                Beat::Wait(at) | Beat::Ping(at) => at,
                Beat::Dead(_) => Instant::now() + hb.interval,
            };
            (watch, tokio::time::Instant::from_std(next))
        });
        let mut live = Live {
            writer,
            tasks,
            datagrams_seen: (link.datagrams_received(), Instant::now()),
            link,
            liveness,
            heartbeat,
            unanswered_since: None,
            pending: HashMap::new(),
            prune_at: PRUNE_FIRST,
            unexpected: 0,
            unacked: VecDeque::new(),
            next_id: HELLO_ID + 1,
            limits,
            refresh_at: None,
            refresh_failures: 0,
            since: Instant::now(),
            pacer,
            datagrams: Default::default(),
            datagram_at: None,
            flushes: VecDeque::new(),
        };
        live.refresh_at = refresh_deadline(welcome.expires_at, self.cfg.refresh_ahead);
        tracing::info!(session = %clip(&welcome.session), user = %clip(&welcome.user), tenant = %clip(&welcome.tenant), transport = %welcome.transport, "connected");
        self.set_state(ConnectionState::Connected {
            session: welcome.session.clone(),
        });
        self.shared.set_welcome(Some(welcome));
        self.live = Some(live);

        // Resubscribe every room (and send subscribes made while disconnected), then flush the
        // publishes buffered while disconnected, in order.
        let rooms: Vec<String> = self.subs.keys().cloned().collect();
        for room in rooms {
            let abandoned = self
                .subs
                .get(&room)
                .is_some_and(|s| s.waiter.as_ref().is_some_and(|w| w.is_closed()));
            if abandoned {
                self.subs.remove(&room);
            } else {
                self.send_subscribe(&room);
            }
        }
        while let Some(item) = self.buffer.pop_front() {
            self.send_publish(item);
        }
    }

    // ----- dead-server detection -----

    pub(super) fn on_heartbeat(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Some((watch, next)) = live.heartbeat.as_mut() else {
            return;
        };
        // Packets the transport received since the last look count as a sign of life too. When
        // they came is only known to be after that look: count them from then, which can only
        // make the next Ping come sooner.
        let now = Instant::now();
        // A server whose transport still answers but whose session has answered no heartbeat
        // `Ping` for `Heartbeat::unanswered` is hung: the packet rule below never notices it
        // (outside client audit 14, M1: connected for good, every Ping unanswered).
        let unanswered = self.cfg.heartbeat.map_or(Duration::MAX, |h| h.unanswered);
        if let Some(since) = live.unanswered_since {
            if now.saturating_duration_since(since) >= unanswered {
                let reason = format!(
                    "server not answering: no reply to a Ping for {} ms",
                    now.saturating_duration_since(since).as_millis()
                );
                tracing::warn!("{reason}");
                self.teardown(0, reason, true, false);
                return;
            }
        }
        let datagrams = live.link.datagrams_received();
        let (seen, looked) = live.datagrams_seen;
        if datagrams != seen {
            live.liveness.touch_at(looked);
        }
        live.datagrams_seen = (datagrams, now);
        match watch.step(live.liveness.last(), now) {
            Beat::Wait(at) => *next = tokio::time::Instant::from_std(at),
            Beat::Ping(at) => {
                *next = tokio::time::Instant::from_std(at);
                live.send_heartbeat();
            }
            Beat::Dead(silent) => {
                let reason = format!(
                    "server not answering: nothing received for {} ms, even after a Ping",
                    silent.as_millis()
                );
                tracing::warn!("{reason}");
                self.teardown(0, reason, true, false);
            }
        }
    }

    // ----- connection lifecycle -----

    /// Drops the live connection; reconnects after a backoff unless `reconnect` is false.
    /// Ends the session. `goodbye`: `code` came in a `Goodbye` frame read in order on the
    /// control stream, behind every answer the server sent before it; a bare close code (a
    /// WebSocket close frame, a QUIC close) does not say the answers before it arrived.
    pub(super) fn teardown(&mut self, code: u16, reason: String, reconnect: bool, goodbye: bool) {
        if self.live.is_none() {
            return;
        }
        // Closing: the server's close after the control stream ended is what was waited for,
        // and any other end of the connection ends the wait too (nothing is resent).
        if self.closing.is_some() {
            tracing::debug!(code, %reason, "connection ended while closing");
            self.finish_close();
            return;
        }
        let Some(live) = self.live.take() else {
            return;
        };
        // The backoff starts over only after a session that lasted: a server that ends every
        // session right after `Welcome` (a rate_abuse or over_quota close, a drain loop, a
        // hostile server) must not get a reconnect every few milliseconds (outside audit: 16-20
        // a second, for ever).
        if live.since.elapsed() >= STABLE_SESSION {
            self.failures = 0;
        }
        self.epoch += 1;
        tracing::info!(code, %reason, reconnect, "disconnected");
        live.link.close("");
        // Dropping the JoinSet aborts the writer, readers and timers of this connection.
        drop(live.tasks);
        // A drain's goodbye (3000) comes after the server answered every command it read: an
        // acknowledged publish still unanswered was not published, and goes first on the next
        // session, in the order it was made. So does one the writer never took (it waited for
        // the pacer; taken here whatever the end, so a writer still running skips it). After any
        // other end one written may or may not have been published, a close code 3000 without
        // its goodbye frame included: answers before it may have been lost with the
        // connection (PROTOCOL §7), and sending such a publish again published it twice
        // (outside audit 68, 2).
        let drained = goodbye && code == CloseCode::Shutdown.as_u16();
        let mut pending: Vec<(u32, Pending)> = live.pending.into_iter().collect();
        pending.sort_by_key(|(id, _)| *id);
        let mut again = Vec::new();
        for (id, p) in pending {
            match p {
                Pending::PublishAck {
                    reply,
                    again: (room, payload),
                    claim,
                } if claim.hold(drained) => again.push((
                    id,
                    Buffered {
                        room,
                        payload,
                        ack: Some(reply),
                        claim,
                        newest_only: false,
                    },
                )),
                // The others a drain left unanswered were not carried out either: the caller
                // may send them again (a call, too, runs at most once that way).
                p if drained => fail_pending(p, || ClientError::NotCarriedOut),
                p => fail_pending(p, || ClientError::ConnectionLost),
            }
        }
        // Those without acknowledgement the writer never took go again too (one it wrote may
        // or may not have been published, and nobody waits to hear).
        again.extend(
            live.unacked
                .into_iter()
                .filter(|u| u.claim.hold(false))
                .map(|u| {
                    let buffered = Buffered {
                        room: u.room,
                        payload: u.payload,
                        ack: None,
                        claim: u.claim,
                        newest_only: false,
                    };
                    (u.id, buffered)
                }),
        );
        again.sort_by_key(|(id, _)| *id);
        for (_, item) in again.into_iter().rev() {
            self.buffer.push_front(item);
        }
        // Subscription ids belong to the connection that is gone.
        lock(&self.latest_routes).clear();
        for sub in self.subs.values_mut() {
            sub.reset_connection();
        }
        if reconnect {
            self.set_state(ConnectionState::Disconnected { code, reason });
            self.schedule_reconnect();
        } else {
            self.close_all(code, reason, true);
        }
    }

    pub(super) fn schedule_reconnect(&mut self) {
        let delay = self.cfg.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        tracing::debug!(?delay, "reconnecting after backoff");
        self.reconnect_at = Some(tokio::time::Instant::now() + delay);
    }

    pub(super) fn start_attempt(&mut self) {
        self.epoch += 1;
        let epoch = self.epoch;
        self.url_index = (self.url_index + 1) % self.connector.targets();
        let index = self.url_index;
        self.set_state(ConnectionState::Connecting);
        let connector = self.connector.clone();
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            let res = connector.attempt(index).await;
            if let Err(mpsc::error::SendError((_, ConnEvent::Attempt(res)))) =
                tx.send((epoch, ConnEvent::Attempt(Box::new(res))))
            {
                // The client was closed meanwhile.
                if let Ok(est) = *res {
                    est.abandon("closed");
                }
            }
        });
    }

    /// `Client::close`: what was accepted is carried out first, within [`CLOSE_FLUSH`]
    /// (outside audit 115, F2: the publications still queued, or waiting for the pacer, were
    /// dropped with the connection, 200 of 300 by the chat example's `close()` at EOF). The
    /// acknowledged publishes in flight are answered, then the writer writes what it holds
    /// and ends the control stream behind it (PROTOCOL.md §3: the server carries out what
    /// came before the end, where a close right behind the commands may discard those it has
    /// not read), and the server's close answers that. New requests meanwhile fail `Closed`.
    pub(super) fn start_close(&mut self, reply: oneshot::Sender<()>) {
        if let Some(closing) = self.closing.as_mut() {
            closing.waiters.push(reply);
            return;
        }
        if self.live.is_none() {
            self.close_all(0, "closed by client".into(), false);
            let _ = reply.send(());
            return;
        }
        // Callers whose requests are refused from now on hear why (`Client::closed_error`).
        *lock(&self.shared.closed) = Some((0, "closed by client".into()));
        self.reconnect_at = None;
        let now = tokio::time::Instant::now();
        self.closing = Some(Closing {
            waiters: vec![reply],
            deadline: now + CLOSE_FLUSH,
            datagrams_until: now + CLOSE_FLUSH / 2,
            ended: false,
        });
        self.advance_close();
    }

    /// Moves a close on: ends the control stream once no acknowledged publish is awaited and no
    /// datagram publication waits for the pacer (each room's newest value goes as a token frees
    /// up, for half the flush at most), closes once the deadline has passed.
    pub(super) fn advance_close(&mut self) {
        let Some(closing) = self.closing.as_mut() else {
            return;
        };
        let Some(live) = self.live.as_mut() else {
            self.finish_close();
            return;
        };
        if tokio::time::Instant::now() >= closing.deadline {
            tracing::debug!("close: flush not finished in time; closing");
            self.finish_close();
            return;
        }
        if closing.ended {
            return;
        }
        let awaited = live
            .pending
            .values()
            .any(|p| matches!(p, Pending::PublishAck { .. }) && !p.abandoned());
        if !live.datagrams.is_empty() && tokio::time::Instant::now() >= closing.datagrams_until {
            let dropped = live.datagrams.clear();
            self.shared
                .datagrams_dropped
                .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                dropped,
                "close: datagram values still held for the pacer dropped"
            );
        }
        if !awaited && live.datagrams.is_empty() {
            closing.ended = true;
            live.writer.end();
        }
    }

    /// The close's end: the connection closed, everything left failed, `close()` answered.
    fn finish_close(&mut self) {
        let waiters = self.closing.take().map(|c| c.waiters).unwrap_or_default();
        self.close_all(0, "closed by client".into(), false);
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }

    /// Closes for good: fails everything waiting, ends every subscription.
    pub(super) fn close_all(&mut self, code: u16, reason: String, by_server: bool) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.epoch += 1;
        self.reconnect_at = None;
        *lock(&self.shared.closed) = Some((code, reason.clone()));
        let closed = || ClientError::Closed {
            code,
            reason: reason.clone(),
        };
        if let Some(live) = self.live.take() {
            live.link.close(&reason);
            drop(live.tasks);
            for (_, p) in live.pending {
                fail_pending(p, closed);
            }
        }
        for item in self.buffer.drain(..) {
            if let Some(reply) = item.ack {
                let _ = reply.send(Err(closed()));
            }
        }
        for (_, mut sub) in self.subs.drain() {
            sub.reset_connection();
            if let Some(w) = sub.waiter.take() {
                let _ = w.send(Err(closed()));
            }
            if by_server {
                if let Some(end) = sub.end_tx.take() {
                    let _ = end.send(SubEvent::Ended {
                        code,
                        reason: reason.clone(),
                    });
                }
            }
        }
        self.shared.permits.close();
        self.set_state(ConnectionState::Closed);
        tracing::info!(code, %reason, "client closed");
    }
}

pub(super) fn fail_pending(p: Pending, err: impl Fn() -> ClientError) {
    match p {
        Pending::Subscribe { .. } | Pending::Refresh | Pending::Heartbeat => {}
        Pending::Unsubscribe { reply } => {
            if let Some(reply) = reply {
                // The session (and the server's subscription with it) is gone.
                let _ = reply.send(Ok(()));
            }
        }
        Pending::PublishAck { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Pending::Ping { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Pending::Presence { reply } => {
            let _ = reply.send(Err(err()));
        }
        Pending::PresenceStats { reply } => {
            let _ = reply.send(Err(err()));
        }
        Pending::History { reply } => {
            let _ = reply.send(Err(err()));
        }
        Pending::Call { reply } => {
            let _ = reply.send(Err(err()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a server announces, the frames taken stay within the client's ceiling, and a
    /// `max_payload` of `u32::MAX` does not overflow (a 32-bit `usize` did, audit 103, F9).
    #[test]
    fn announced_limits_stay_within_the_ceiling() {
        let limits = |max_frame, max_payload| Limits {
            max_frame,
            max_payload,
            max_subscriptions: 1,
            commands_per_second: 1,
        };
        let ceiling = 1024 * 1024;
        assert_eq!(
            stream_max_frame(&limits(u32::MAX, u32::MAX), ceiling),
            ceiling
        );
        assert_eq!(
            stream_max_frame(&limits(8192, 7000), ceiling),
            DEFAULT_MAX_FRAME
        );
        assert_eq!(
            stream_max_frame(&limits(262_144, 200_000), ceiling),
            262_144
        );
        assert_eq!(
            stream_max_frame(&limits(100_000, 200_000), ceiling),
            201_024
        );
    }
}
