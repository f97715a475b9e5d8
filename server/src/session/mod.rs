//! The session core: one authenticated client, whatever transport it came through. Hello and
//! Welcome, command dispatch and authorisation, limits, token expiry and refresh, presence,
//! the in-band goodbye, metrics and cleanup all live here, once. A transport adapter
//! (`crate::transport`) feeds it [`Inbound`] items and writes what it puts on `out`; it knows
//! nothing of sockets beyond the [`Peer`] it is given.
//!
//! The opening (`Hello`, `Welcome`) is in `hello.rs`, the commands themselves in `commands.rs`,
//! the command rate meter in `meter.rs`, the set-up and teardown around `drive` in `end.rs`,
//! how a command's answer is queued (or refused) in `reply.rs`.

mod calls;
mod commands;
mod datagrams;
mod drain;
mod end;
mod hello;
mod inbox;
mod lifetime;
pub(crate) mod meter;
mod publishing;
mod read_only;
mod reply;
mod slot;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_proto::{ClientFrame, CloseCode, Command, ErrorCode, Event, RoomName};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::auth::Grant;
use crate::cork;
use crate::hub::RoomKey;
use crate::metrics as m;
use crate::server::Shared;
use crate::subscription::Ended;
use crate::transport::{queue, Inbound, Peer, Transport};

pub use end::End;
use end::{run_session, Leftover};
use meter::{Meter, Verdict};
use publishing::{Publishing, Reply};
use reply::Refusal;
pub use slot::Slot;

use crate::log_budget::{LogBudget, Summary};
use crate::quota::TenantSession;

/// How long a client that takes nothing of its queue is waited for at a time: for a goodbye
/// frame to be queued, for a reply in a drain ([`End::wait_for_reader`] and
/// `Session::send_or_stall` wait on, a grace at a time, while it reads).
pub const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// The connection a session runs over, as the core sees it.
pub struct Link {
    pub transport: Transport,
    pub peer: Peer,
    pub remote: SocketAddr,
}

/// Sessions ended for their peer's fault (a malformed frame, replies never read) logged per
/// second at most, for every tenant together: one user opening sessions that each send one
/// malformed frame made 1,300 WARN lines a second (outside bounds audit 4, F1).
/// `quiver_sessions_closed_total{reason}` counts every one.
static PEER_FAULTS_LOGGED: LogBudget = LogBudget::summarised(
    20,
    Summary::Warn("more sessions were ended for their peer's fault than logged"),
);

/// A session's id as `Welcome.session` carries it: always 16 lower-case hex digits, so a client
/// may rely on the form (outside audit 52, F4: a leading zero was dropped one time in 16).
fn session_id(random: u64) -> String {
    format!("{random:016x}")
}

/// A WARN line for a session ended for its peer's fault, within [`PEER_FAULTS_LOGGED`]; with
/// its tenant, so that the line alone says whose it was (outside audit 55, L4).
fn log_peer_fault(
    session: &str,
    tenant: &quiver_proto::TenantId,
    reason: &str,
    what: &'static str,
) {
    if PEER_FAULTS_LOGGED.admit_summarised() {
        warn!(session, %tenant, reason, "{what}");
    }
}

/// Why the command loop stopped.
enum Exit {
    /// The client closed or the connection was lost: nobody to say goodbye to.
    Gone(&'static str),
    /// We close: goodbye frame, then the transport's close with the same code.
    Close(CloseCode, String),
    /// We close without the goodbye frame: the transport's close alone, which says nothing
    /// of the commands left unanswered (PROTOCOL §7: they may have been carried out). A
    /// drain that stopped waiting for what was under way.
    Cut(CloseCode, String),
}

struct Sub {
    id: u64,
    key: RoomKey,
    /// The writer, on shared transports: aborted (not drained) when the subscription ends, so
    /// none of its frames can follow the `Unsubscribed` on the one connection (PROTOCOL §9.2).
    writer: Option<JoinHandle<()>>,
    /// Set when the subscription ends, before `overflow` is cancelled: the writer then stops
    /// wherever it waits, quietly.
    stop: CancellationToken,
    /// The token the writer watches (the hub cancels it when the queue overflows).
    overflow: CancellationToken,
    /// The stream the hub writes into while the writer is idle (on a shared connection, the
    /// writer's place in the outgoing queue): what it wrote is added to the session's tally
    /// when the subscription ends.
    direct: Option<std::sync::Arc<crate::subscription::Direct>>,
}

pub struct Session {
    shared: Arc<Shared>,
    link: Link,
    id: String,
    grant: Box<Grant>,
    out: queue::Sender<Bytes>,
    subs: HashMap<RoomName, Sub>,
    /// A subscriber in the hub whose `Subscribe` is still being carried out (its broker set-up,
    /// its header), not yet in `subs`: if the session ends meanwhile (a drain's bound cut it
    /// off, a panic), `release` takes it out of the hub, the broker's interest and the
    /// tenant's count, which would otherwise keep it for the process's life (outside audit
    /// 72, F2).
    joining: Option<(RoomKey, u64)>,
    /// Subscriptions that ended by themselves report here. Created with the first subscription:
    /// a tokio channel allocates its first block when created (1.5 KiB, heaptrack), and an idle
    /// session may never subscribe.
    ended: Option<(mpsc::UnboundedSender<Ended>, mpsc::UnboundedReceiver<Ended>)>,
    meter: Meter,
    /// Set by a `Refresh` that changed the `subscribe` patterns: the subscriptions are checked
    /// again after its reply.
    recheck_due: bool,
    /// Publications waiting for the broker, answered in order.
    publishing: Publishing,
    /// Datagram publications into rooms with a publish hook, waiting for it: a lane of their
    /// own, so no command and no `Publish` waits behind a slow backend (PROTOCOL.md §10).
    datagram_lane: Publishing,
    /// Stream writes held for a run of this session's publications (`crate::cork`): flushed
    /// at the end of the run, and before the session waits on anything.
    held: cork::Held,
    /// This session's share of its tenant's quotas (`None`: refused, the session is closing).
    quota: Option<TenantSession>,
    /// A reply found no room on the outgoing channel within `timeouts.reply`: the client is not
    /// reading, and the session ends.
    stalled: bool,
    /// In a drain, the latest a reply may wait for room (`finish_for_drain`): one deadline for
    /// the drain's replies together, not `timeouts.reply` each.
    drain_until: Option<tokio::time::Instant>,
    /// Traffic, for the closing log line.
    tally: Arc<m::Tally>,
    /// Bytes its subscriptions' queues may hold together (`limits.session_queue_bytes`).
    queue_budget: Arc<crate::delivery_queue::Budget>,
    /// Its turns at writing replays (`crate::replay::AT_ONCE`); made by the first resume.
    replay_turns: Option<Arc<tokio::sync::Semaphore>>,
    /// `Call`s waiting for the backend (`calls.rs`); aborted when the session ends.
    calls: tokio::task::JoinSet<calls::CallDone>,
    /// The last subscription id this session told its client (`latest` rooms, PROTOCOL §10).
    /// Counted per session, so an id says nothing about other sessions (or tenants); the hub's
    /// own id (`Shared::next_sub_id`) is never shown.
    last_wire_id: u64,
    /// Set for a read-only session (SSE), which ends once it has no subscription left
    /// (`read_only.rs`).
    read_only: Option<read_only::ReadOnly>,
    /// Resolves when the session is ordered to close (`registry::Kicks::closing`): a hook that
    /// waits ends then (`calls.rs`). Set when `drive` starts.
    closing: Option<crate::registry::Closing>,
    /// Set once the client is found gone (`lifetime.rs`).
    left: std::sync::OnceLock<lifetime::Left>,
    /// When the token stops being valid (`lifetime::token_expiry`); a `Refresh` moves it.
    expiry: tokio::time::Instant,
}

/// Runs a session to its end and frees everything it held. The adapter has verified `grant`
/// and owns the reading of `inbound` and the writing of `out`.
pub async fn run(
    shared: Arc<Shared>,
    grant: Box<Grant>,
    link: Link,
    inbound: queue::Receiver<Inbound>,
    out: queue::Sender<Bytes>,
) -> End {
    run_session(shared, grant, link, inbound, out, None).await
}

/// Runs a read-only session (SSE): the adapter has queued `Hello` and then `subscribes`
/// `Subscribe` commands on `inbound`, and sends no other command. Once those have run and no
/// subscription is left, the session ends with a goodbye (`read_only.rs`).
pub async fn run_read_only(
    shared: Arc<Shared>,
    grant: Box<Grant>,
    link: Link,
    inbound: queue::Receiver<Inbound>,
    out: queue::Sender<Bytes>,
    subscribes: u32,
) -> End {
    let read_only = Some(read_only::ReadOnly::new(subscribes));
    run_session(shared, grant, link, inbound, out, read_only).await
}

impl Session {
    async fn drive(
        &mut self,
        mut inbound: queue::Receiver<Inbound>,
        kicks: &mut crate::registry::Kicks,
    ) -> Exit {
        let shutdown = self.shared.shutdown.clone();
        // Boxed: awaited once, and inline it would be the largest state of this future, which
        // every idle session's task holds for its life (memory per idle session, issue 14).
        if let Err(exit) = Box::pin(self.hello(&mut inbound, &shutdown)).await {
            return exit;
        }
        self.closing = Some(kicks.closing());
        let mut inbox = inbox::Inbox::new(inbound, self.out.clone());
        // Since when the session has read no command because its publish queue is full: what
        // the client sent meanwhile arrives late, at once, and that wait is credited like a
        // handler's (`Meter::busy`; outside delivery audit 2, D2).
        let mut paused: Option<Instant> = None;
        // Made once and polled on every turn: made anew per turn, each command registered and
        // removed a timer entry and a waiter (about 1.5 % of a publication's CPU in the
        // many-rooms profile). The timer is moved only when a `Refresh` moves the expiry.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut armed = self.expiry();
        // Boxed (a 112-byte allocation): inline, it kept the idle session's task one size class
        // of the allocator higher (bench/results/2026-12-05-memory-driver-reads.md).
        let mut token_timer = Box::pin(tokio::time::sleep_until(armed));
        loop {
            let expiry = self.expiry();
            // Checked here, not only by the select below: a timer at an instant already past
            // fires at the timer's next tick, and meanwhile the biased select would run the
            // next queued command under the expired token (a `Refresh` among them: outside
            // regression audit 9, R1).
            if tokio::time::Instant::now() >= expiry {
                return Exit::Close(CloseCode::TokenExpired, "token expired".into());
            }
            if expiry != armed {
                armed = expiry;
                token_timer.as_mut().reset(expiry);
            }
            let full = self.publishing.is_full();
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    return Box::pin(self.finish_for_drain(&mut inbox)).await;
                }
                () = &mut token_timer => {
                    return Exit::Close(CloseCode::TokenExpired, "token expired".into());
                }
                kick = kicks.recv() => match kick.room {
                    None => return Exit::Close(kick.code, kick.reason),
                    Some(room) => Box::pin(self.unsubscribed_by_backend(room, kick.reason)).await,
                },
                Some(end) = next_ended(&mut self.ended) => Box::pin(self.subscription_ended(end)).await,
                Some(done) = self.calls.join_next(), if !self.calls.is_empty() => Box::pin(self.call_done(done)).await,
                // Boxed, as the other handlers here: inline, its state was this future's largest
                // and sized every idle session's task (memory per idle session, issue 14).
                done = self.publishing.next_done() => Box::pin(self.published(done)).await,
                done = self.datagram_lane.next_done() => {
                    if let Err(refusal) = publishing::answer(done.result, self.grant.tenant.as_str()) {
                        m::datagram_dropped(refusal.0.label());
                    }
                }
                // Past the bound of queued publications the session reads no further command
                // until one is answered: the client sees flow control, not an error (a Ping at
                // the head of the queue is answered meanwhile: `Inbox::next`).
                item = inbox.next(full) => {
                    let Some(item) = item else { continue };
                    // Boxed, handlers and all: see `inbound`.
                    if let Some(exit) = Box::pin(self.inbound_beside_pings(&mut inbox, item)).await {
                        self.held.flush();
                        return exit;
                    }
                    // Publications that queued up behind this one go to the hub before the
                    // run's stream writes are flushed (`crate::cork`): one write per stream.
                    let mut run = 1;
                    let expiry_std = expiry.into_std();
                    while run < cork::MAX_RUN
                        && !self.held.is_empty()
                        && !self.held.is_full()
                        && !self.publishing.is_full()
                        && !self.stalled
                    {
                        let Some(item) = inbox.try_recv() else { break };
                        // A command read once the token has expired does not run: the session
                        // closes (`token_expired`) instead. Judged by its arrival, not by a
                        // fresh reading of the clock per command of the run (one read fewer
                        // per publication); what has no arrival (a malformed frame, the
                        // peer's end) by the clock.
                        let expired = match item.arrived() {
                            Some(arrived) => arrived >= expiry_std,
                            None => tokio::time::Instant::now() >= expiry,
                        };
                        if expired {
                            self.held.flush();
                            return Exit::Close(CloseCode::TokenExpired, "token expired".into());
                        }
                        let publish = matches!(&item, Inbound::Frame(frame, _) if matches!(frame.command, Command::Publish { .. }));
                        if !publish {
                            self.held.flush();
                        }
                        if let Some(exit) = Box::pin(self.inbound_beside_pings(&mut inbox, Some(item))).await {
                            self.held.flush();
                            return exit;
                        }
                        if !publish {
                            break;
                        }
                        run += 1;
                    }
                    self.held.flush();
                }
                reason = self.link.peer.closed() => return Exit::Gone(reason),
            }
            if self.stalled {
                return self.not_reading();
            }
            match (self.publishing.is_full(), paused) {
                (true, None) => paused = Some(Instant::now()),
                (false, Some(since)) => {
                    let now = Instant::now();
                    self.meter.busy(now.saturating_duration_since(since), now);
                    paused = None;
                    if let Some(exit) = self.metre_taken_early(&mut inbox) {
                        return exit;
                    }
                }
                _ => {}
            }
            if let Some(exit) = self.nothing_left() {
                return exit;
            }
        }
    }

    /// One item from the adapter; `Some` ends the session.
    async fn inbound(&mut self, item: Option<Inbound>) -> Option<Exit> {
        match item {
            Some(Inbound::Frame(frame, arrived)) => {
                // Inline here: the caller (`drive`) boxes this whole future, handlers and the
                // inbox's Ping answering included, so the largest handler does not size every
                // idle session's task (bench/results/2026-11-29-memory.md) and a command costs
                // one allocation, not one per nesting level.
                if let Some(exit) = self.command(*frame, arrived).await {
                    return Some(exit);
                }
                self.command_ran();
            }
            Some(Inbound::Unknown { id, kind, arrived }) => match self.metered(id, arrived).await {
                Ok(true) => {
                    // Arrival to the handler's end, as for every command: its answer's
                    // queueing not included.
                    m::hot::unknown_command_duration().record(arrived.elapsed().as_secs_f64());
                    self.refuse(
                        id,
                        Refusal::new(
                            ErrorCode::UnknownCommand,
                            format!("unknown command type {kind}"),
                        ),
                    )
                    .await;
                }
                Ok(false) => {}
                Err(exit) => return Some(exit),
            },
            Some(Inbound::Datagram(datagram)) => {
                let (datagram, arrived) = *datagram;
                if let Some(exit) = self.datagram(datagram, arrived).await {
                    return Some(exit);
                }
            }
            Some(Inbound::Malformed(reason)) => {
                log_peer_fault(&self.id, &self.grant.tenant, &reason, "protocol error");
                return Some(Exit::Close(CloseCode::ProtocolError, reason));
            }
            Some(Inbound::Control(arrived)) => return self.control_frame(arrived),
            Some(Inbound::Ended(reason)) => return Some(Exit::Gone(reason)),
            None => return Some(Exit::Gone("client_closed")),
        }
        None
    }

    /// Meters a WebSocket ping or pong like a command: within the rate it costs a token, over
    /// it a refusal (nothing to answer: the WebSocket layer pongs regardless), and the refusal
    /// that makes it abuse closes the session with `rate_abuse`, as for commands.
    fn control_frame(&mut self, arrived: Instant) -> Option<Exit> {
        match self.meter.take(arrived) {
            Verdict::Allowed | Verdict::Limited => None,
            Verdict::Abuse => Some(Exit::Close(
                CloseCode::RateAbuse,
                "WebSocket ping/pong frames over the command rate, repeatedly".into(),
            )),
        }
    }

    /// Meters one command, at the time it arrived, against the rate limit: `Ok(true)` to run
    /// it; `Ok(false)` when it was refused (`rate_limited`, no effect); `Err` when refusals
    /// kept coming (`rate_abuse`). Metering at arrival means time the server itself spent
    /// stalled never counts against a client within its limits. The refusal is queued like
    /// every reply (waiting while the client does not read, up to `timeouts.reply`): a client
    /// over the limit still gets one answer per command.
    async fn metered(&mut self, id: u32, arrived: Instant) -> Result<bool, Exit> {
        m::hot::commands().increment(1);
        self.tally.received();
        match self.meter.take(arrived) {
            Verdict::Allowed => Ok(true),
            Verdict::Limited => {
                let per_sec = self.shared.config.limits.commands_per_second;
                self.refuse(
                    id,
                    Refusal::new(
                        ErrorCode::RateLimited,
                        format!("rate limit of {per_sec} commands per second exceeded"),
                    ),
                )
                .await;
                Ok(false)
            }
            Verdict::Abuse => Err(Exit::Close(
                CloseCode::RateAbuse,
                "command rate limit exceeded repeatedly".into(),
            )),
        }
    }

    async fn command(&mut self, frame: ClientFrame, arrived: Instant) -> Option<Exit> {
        let id = frame.id;
        let refresh = matches!(frame.command, Command::Refresh { .. });
        let publish = matches!(frame.command, Command::Publish { .. });
        let hello = matches!(frame.command, Command::Hello { .. });
        let duration = m::hot::command_duration(&frame.command);
        match self.metered(id, arrived).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(exit) => return Some(exit),
        }
        let started = Instant::now();
        let result = match frame.command {
            Command::Hello { .. } => Err(Refusal::new(
                ErrorCode::BadRequest,
                "Hello was already sent",
            )),
            Command::Subscribe { room, resume } => self.subscribe(id, &room, resume).await,
            Command::Unsubscribe { room } => self.unsubscribe(&room).await,
            Command::Publish { room, payload, ack } => {
                self.publish(Reply::Command { id, ack }, &room, payload)
                    .await
            }
            Command::Ping => Ok(Some(Event::Pong)),
            Command::Refresh { token } => self.refresh(&token).await,
            Command::Presence { room } => self.presence(&room).await,
            Command::PresenceStats { room } => self.presence_stats(&room).await,
            Command::History { room, since, limit } => self.history(&room, since, limit).await,
            Command::Call {
                method,
                payload,
                timeout_ms,
                idempotency_key,
            } => self.call(id, &method, payload, timeout_ms, idempotency_key),
        };
        // Nothing was read while the handler waited (a hook, the broker): see `meter.rs`.
        let now = Instant::now();
        self.meter.busy(now.saturating_duration_since(started), now);
        // Arrival to the handler's end, queueing the answer not included: that reading of the
        // clock serves both (one read fewer per command).
        duration.record(now.saturating_duration_since(arrived).as_secs_f64());
        match result {
            Ok(Some(event)) => {
                self.reply(id, event).await;
                if refresh {
                    self.recheck_subscriptions(arrived).await;
                }
            }
            Ok(None) => {}
            Err(refusal) => {
                // Refusals that count towards `rate_abuse` besides the rate limit's own (PROTOCOL
                // §5): publications into an exhausted quota, which a runaway publisher keeps
                // sending, and a repeated Hello. A Subscribe over the subscription quota does not.
                let abuse = if publish && refusal.0 == ErrorCode::QuotaExceeded {
                    Some("kept publishing over the tenant's quota")
                } else if hello {
                    Some("kept repeating Hello")
                } else {
                    None
                };
                self.refuse(id, refusal).await;
                if let Some(reason) = abuse {
                    if self.meter.refused(arrived) == Verdict::Abuse {
                        return Some(Exit::Close(CloseCode::RateAbuse, reason.into()));
                    }
                }
            }
        }
        None
    }

    /// Where a new subscription reports that it ended (the channel is made on first use).
    /// Answers a publication the broker is done with.
    async fn published(&mut self, done: publishing::Done) {
        match (
            publishing::answer(done.result, self.grant.tenant.as_str()),
            done.reply,
        ) {
            // A datagram publication: nobody to tell.
            (Err(refusal), Reply::Datagram) => m::datagram_dropped(refusal.0.label()),
            (Err(refusal), Reply::Command { id, .. }) => self.refuse(id, refusal).await,
            (Ok(Some(event)), Reply::Command { id, ack: true }) => self.reply(id, event).await,
            (Ok(_), _) => {}
        }
    }

    fn ended_sender(&mut self) -> mpsc::UnboundedSender<Ended> {
        self.ended
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }

    fn room(&self, room: &str) -> Result<RoomKey, Refusal> {
        let room = RoomName::parse(room)
            .map_err(|e| Refusal::new(ErrorCode::InvalidRoom, format!("invalid room name: {e}")))?;
        Ok(RoomKey {
            tenant: self.grant.tenant.clone(),
            room,
        })
    }

    /// Frees everything the session registered.
    async fn release(&mut self) {
        // Datagram publications still waiting for their hook (the one asked about included)
        // are never published: counted, as a `Refresh` counts them (outside lanes audit 3, F3:
        // they vanished uncounted).
        for _ in 0..self.datagram_lane.clear() {
            m::datagram_dropped("session_ended");
        }
        for (_, sub) in std::mem::take(&mut self.subs) {
            self.drop_sub(sub).await;
        }
        if let Some((key, sub_id)) = self.joining.take() {
            self.forget_joining(key, sub_id).await;
        }
    }
}

/// The next subscription that ended; pending while there is no channel (no subscription yet).
async fn next_ended(
    ended: &mut Option<(mpsc::UnboundedSender<Ended>, mpsc::UnboundedReceiver<Ended>)>,
) -> Option<Ended> {
    match ended {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_ids_are_always_16_hex_digits() {
        assert_eq!(super::session_id(1), "0000000000000001");
        assert_eq!(super::session_id(u64::MAX), "ffffffffffffffff");
        assert_eq!(super::session_id(0x0abc), "0000000000000abc");
    }
}
