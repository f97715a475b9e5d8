//! [`Client`]: the application-facing handle. Every call is a message to the connection task
//! (see `connection/`), which owns the session (WebTransport or WebSocket).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quiver_proto::{ErrorCode, Limits, Member, Position};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::config::{ClientConfig, Transport};
use crate::connection::{self, Request};
use crate::error::ClientError;
use crate::subscription::Subscription;
use crate::writer::Claim;
use crate::HistoryPage;

/// Where the client's session stands. Watch it with [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// A connect attempt is under way.
    Connecting,
    /// The session is up (after `Welcome`); `session` is the server's session id.
    Connected { session: String },
    /// The session was lost and the client will reconnect after a backoff. `code` is the
    /// `Goodbye`/QUIC close code when the server said one (a [`quiver_proto::CloseCode`]), else 0.
    Disconnected { code: u16, reason: String },
    /// Closed for good, by [`Client::close`] or by the server (`Goodbye` with
    /// `reconnect: false`); [`Client::close_reason`] says why.
    Closed,
}

/// What the server said in `Welcome` (the latest session's; `expires_at` follows refreshes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeInfo {
    pub session: String,
    pub user: String,
    pub tenant: String,
    /// Token expiry, Unix seconds; `None` if the token never expires.
    pub expires_at: Option<u64>,
    pub limits: Limits,
    /// The transport this session runs on ([`Transport::WebTransport`] or
    /// [`Transport::WebSocket`]).
    pub transport: Transport,
}

/// State shared between [`Client`] handles and the connection task.
pub(crate) struct Shared {
    pub welcome: Mutex<Option<WelcomeInfo>>,
    pub closed: Mutex<Option<(u16, String)>>,
    pub permits: Arc<Semaphore>,
    /// A `Request::Withdrawn` is on its way to the connection task (one at a time: it lets go of
    /// every withdrawn publication at once).
    pub withdrawals: AtomicBool,
    /// Datagram publications dropped locally: every room's place among those waiting for the
    /// pacer was taken (`Client::datagrams_dropped`).
    pub datagrams_dropped: AtomicU64,
}

impl Shared {
    pub(crate) fn set_welcome(&self, w: Option<WelcomeInfo>) {
        *lock(&self.welcome) = w;
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Options of [`Client::call_with`].
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// How long the backend may take; `None` takes the server's default. The server caps it.
    pub timeout: Option<Duration>,
    /// Passed to the backend as is, so it can recognise a retried call (at most 128 bytes).
    pub idempotency_key: Option<String>,
}

struct Inner {
    req_tx: mpsc::UnboundedSender<Request>,
    state: watch::Receiver<ConnectionState>,
    shared: Arc<Shared>,
    request_timeout: Duration,
}

/// A Quiver client: one session (WebTransport or WebSocket, see [`Transport`]), reconnected
/// automatically.
///
/// Cheap to clone; all clones share the session. The session is closed when [`Client::close`]
/// is called or when every clone and every [`Subscription`] is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and resolves after the first `Welcome`.
    ///
    /// The first connect does not retry forever: each URL is tried once, and a refusal
    /// ([`ClientError::Refused`]: bad token, wrong path), a token provider failure or a
    /// `Goodbye` that forbids reconnecting fails at once. A busy or draining instance (429,
    /// 503) is passed over for the next URL, as one that is down is; the last one's answer is
    /// the error when none took the session. After that first `Welcome` the
    /// client reconnects by itself, forever, until [`Client::close`].
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let shared = Arc::new(Shared {
            welcome: Mutex::new(None),
            closed: Mutex::new(None),
            permits: Arc::new(Semaphore::new(config.publish_buffer.max(1))),
            withdrawals: AtomicBool::new(false),
            datagrams_dropped: AtomicU64::new(0),
        });
        let request_timeout = config.request_timeout;
        let (req_tx, state) = connection::start(config, shared.clone()).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                req_tx,
                state,
                shared,
                request_timeout,
            }),
        })
    }

    /// Subscribes to `room` and waits for the server's `Subscribed`.
    ///
    /// Refusals come back as [`ClientError::Server`] (`invalid_room`, `permission_denied`,
    /// `too_many_subscriptions`, `already_subscribed`, ...). Made while reconnecting, the
    /// subscribe is sent after the next `Welcome` (within `request_timeout`).
    ///
    /// A client (one session) holds one subscription per room: a second `subscribe` to the
    /// same room is `already_subscribed` (104) while the first lives (unlike a NATS
    /// connection's any number of subscribers to a subject). Parts of an application that
    /// both want a room share the one [`Subscription`]'s events, or use a second `Client`.
    /// Dropping the `Subscription` unsubscribes. After a subscribe that timed out unanswered,
    /// the next one to the room from the same position (none, or the same `subscribe_from`
    /// position) takes it over and waits for its answer; one from another position is
    /// `already_subscribed` until that answer came (the server answers for the position sent).
    pub async fn subscribe(&self, room: &str) -> Result<Subscription, ClientError> {
        self.subscribe_with(room, None).await
    }

    /// Subscribes to a history room and resumes after `position` (one saved from an earlier
    /// run): what was published after it is replayed first. The first event of the
    /// subscription, [`crate::SubEvent::Resubscribed`], says whether that worked
    /// (`Recovery::Recovered`) or whether the position was gone (`Recovery::Failed`: re-sync,
    /// for example with [`Client::history`]).
    pub async fn subscribe_from(
        &self,
        room: &str,
        position: Position,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_with(room, Some(position)).await
    }

    async fn subscribe_with(
        &self,
        room: &str,
        from: Option<Position>,
    ) -> Result<Subscription, ClientError> {
        let room = room.to_string();
        let parts = self
            .request(|reply| Request::Subscribe {
                room: room.clone(),
                from,
                reply,
            })
            .await?;
        Ok(Subscription::new(room, parts, self.clone()))
    }

    /// A page of a history room without subscribing (the token must allow subscribing): the
    /// publications after `since` (from the oldest kept when `None`), oldest first, at most
    /// `limit` (the server caps it at 1,000 and at one frame). When `truncated`, ask again with
    /// `since` = the last one's position. `limit` 0 asks for the room's current position only:
    /// an empty page, whose `truncated` may be true (do not page on from it).
    /// `ClientError::Server` with `unrecoverable_position`
    /// when `since` is no longer in history, `bad_request` for a room without history.
    pub async fn history(
        &self,
        room: &str,
        since: Option<Position>,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let room = room.to_owned();
        self.request(|reply| Request::History {
            room,
            since,
            limit,
            reply,
        })
        .await
    }

    /// Unsubscribes from `room`: its [`Subscription`] ends (yields `None`) and the server stops
    /// sending. `ClientError::Server { code: 105 not_subscribed }` if this client has no
    /// subscription to the room.
    pub async fn unsubscribe(&self, room: &str) -> Result<(), ClientError> {
        self.request(|reply| Request::Unsubscribe {
            room: room.to_string(),
            reply,
        })
        .await
    }

    /// Publishes without waiting for an acknowledgement (`ack: false`). While connected it waits
    /// only when `publish_buffer` publishes are already queued for writing; while disconnected
    /// the publish is buffered and sent after the next `Welcome`, or refused with
    /// [`ClientError::BufferFull`]. One still waiting for the pacer when the connection goes
    /// (never written) is sent on the next session; one written may or may not have been
    /// published. Server refusals of un-acknowledged publishes are only logged (`tracing`
    /// warn); use [`Client::publish_ack`] to see them.
    pub async fn publish(&self, room: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let payload = payload.into();
        self.check_payload(&payload)?;
        let req = Request::Publish {
            room: room.to_string(),
            payload,
            ack: None,
            claim: Claim::with_place(self.permit().await?),
        };
        if self.inner.req_tx.send(req).is_err() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Publishes to a `latest` room unreliably (PROTOCOL.md §10): over WebTransport as one QUIC
    /// datagram when it fits the path's datagram size (never retransmitted, never answered:
    /// server refusals are not reported at all), otherwise exactly like [`Client::publish`].
    /// In a room this client is subscribed to and the server said is reliable, it is
    /// [`Client::publish`] on every transport. A room the client does not know (not subscribed)
    /// gets the datagram: if that room is not `latest`, the server drops it (counted as
    /// `not_latest`), while over WebSocket it would be published: use it for `latest` rooms only.
    /// For values where only the newest matters (positions, cursors), sent many times a second.
    ///
    /// The server meters datagrams with the commands (§5), so each one takes a token of the
    /// command pacer ([`crate::ClientConfig::pace_commands`]): one that finds none free waits as
    /// its room's newest value, replacing any older one still waiting, and goes when a token
    /// frees up. So publishing faster than the server's `commands_per_second` sends the newest
    /// values at that rate, never more (it is not refused `rate_limited`, nor closed as
    /// `rate_abuse`), and every room's last value goes. At most 64 rooms' values wait; a value
    /// for another room is dropped ([`Client::datagrams_dropped`]). [`Client::flush`] waits for
    /// the values waiting, and [`Client::close`] sends them. Values still waiting when the
    /// connection goes are dropped. While disconnected a value is buffered as its room's
    /// newest, replacing one buffered before (it takes one place of `publish_buffer` per room,
    /// and goes after what was published before it).
    pub async fn publish_unreliable(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        self.check_payload(&payload)?;
        // While disconnected the value may replace its room's buffered one, giving its place
        // back: the connection task tells, and the call waits for it, so that a `publish`
        // right after finds the place it gave back (review 124, R3), and a value that finds
        // the buffer full may still replace its room's.
        let disconnected = !matches!(
            *self.inner.state.borrow(),
            ConnectionState::Connected { .. }
        );
        let permit = match self.permit().await {
            Ok(permit) => Some(permit),
            Err(ClientError::BufferFull) => None,
            Err(e) => return Err(e),
        };
        let (replaced, verdict) = if disconnected || permit.is_none() {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let req = Request::PublishUnreliable {
            room: room.to_string(),
            payload,
            permit,
            replaced,
        };
        if self.inner.req_tx.send(req).is_err() {
            return Err(self.closed_error());
        }
        match verdict {
            Some(rx) => match rx.await {
                Ok(true) => Ok(()),
                Ok(false) => Err(ClientError::BufferFull),
                Err(_) => Err(self.closed_error()),
            },
            None => Ok(()),
        }
    }

    /// Publishes and waits for the server's `Published` (the message's position in the room's
    /// history, `None` for rooms without history). Refusals come back as
    /// [`ClientError::Server`] (`permission_denied`, `payload_too_large`, `rate_limited`, ...).
    /// If the connection drops after it was written and before the reply,
    /// [`ClientError::ConnectionLost`]: the message may or may not have been published. One the
    /// connection never wrote (it waited for the pacer,
    /// [`crate::ClientConfig::pace_commands`]) is sent on the next session instead, and so is
    /// one a draining server's goodbye (3000) left unanswered: the server answered every
    /// publish it carried out before it. The call then waits for the next session's answer.
    /// A publication not written within `request_timeout` of the call (it waited in the publish
    /// buffer for a session, or for the pacer on a live connection) is withdrawn: the call
    /// returns [`ClientError::Timeout`], the publication is never sent later, so retrying
    /// publishes it once, and its buffer place is back when the call returns. So does one
    /// whose future is dropped before it was written. One written
    /// in time waits for its answer until `request_timeout` after that deadline (twice
    /// `request_timeout` from the call); none by then is [`ClientError::Unanswered`]: it may
    /// or may not have been published, as after [`ClientError::ConnectionLost`].
    pub async fn publish_ack(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Option<Position>, ClientError> {
        let payload = payload.into();
        self.check_payload(&payload)?;
        let claim = Claim::with_place(self.permit().await?);
        // However this call ends (a timeout, or its future dropped), a publication not yet
        // written is withdrawn, wherever it waits: in the publish buffer or for the pacer.
        let withdraw = Withdraw {
            claim: claim.clone(),
            inner: &self.inner,
        };
        let (reply, mut rx) = oneshot::channel();
        let req = Request::Publish {
            room: room.to_string(),
            payload,
            ack: Some(reply),
            claim,
        };
        if self.inner.req_tx.send(req).is_err() {
            return Err(self.closed_error());
        }
        let wait = self.inner.request_timeout;
        let answer = match tokio::time::timeout(wait, &mut rx).await {
            Ok(answer) => answer,
            Err(_) if withdraw.now() => return Err(ClientError::Timeout),
            // Written meanwhile, perhaps just now: its answer gets a window of its own (outside
            // audit 50, F1: one written at the deadline was published while its caller was
            // told `Timeout`, so a retry published it twice).
            Err(_) => match tokio::time::timeout(wait, rx).await {
                Ok(answer) => answer,
                Err(_) => return Err(ClientError::Unanswered),
            },
        };
        match answer {
            Ok(res) => res,
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Round-trip time of a `Ping` on the control stream. [`ClientError::NotConnected`] while
    /// reconnecting.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.request(|reply| Request::Ping { reply }).await
    }

    /// Resolves once what was published before it has gone to the server, as NATS's `flush`:
    /// every [`Client::publish_unreliable`] value still waiting for the pacer then (its room's
    /// newest) is sent as tokens free up, then a `Ping` goes and its `Pong` comes back. The
    /// [`Client::publish`]es made before it were written ahead of the `Ping` and the server has
    /// read them (one waiting on the broker may still be answered after the `Pong`,
    /// PROTOCOL.md §5 "Ping": [`Client::publish_ack`] says when each is done). Datagrams were
    /// handed to QUIC ahead of the `Ping`, which sends them first: they left this client before
    /// it, but they keep no order with the commands (PROTOCOL.md §10), so the server may still
    /// be reading them when the `Pong` comes. Values published while it waits do not hold it
    /// back (a newer value of a room it waits for takes the older one's turn).
    ///
    /// Within `request_timeout`, else [`ClientError::Timeout`] (at most 64 rooms' values wait,
    /// one per token of [`crate::ClientConfig::pace_commands`]'s rate). While reconnecting,
    /// [`ClientError::NotConnected`]; values still waiting when the connection goes are dropped
    /// (as [`Client::publish_unreliable`] says) and the call fails
    /// [`ClientError::ConnectionLost`]; after [`Client::close`], [`ClientError::Closed`].
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.request(|reply| Request::Flush { reply })
            .await
            .map(|_rtt| ())
    }

    /// Who is subscribed to `room`, on every instance (the room's namespace must track presence,
    /// and the token must allow subscribing to it). In a room too big to list in one frame the
    /// server sends the first members (sorted by user, then session) that fit.
    pub async fn presence(&self, room: &str) -> Result<Vec<Member>, ClientError> {
        let room = room.to_owned();
        self.request(|reply| Request::Presence { room, reply })
            .await
    }

    /// How many sessions, and distinct users, are subscribed to `room` on every instance
    /// (PROTOCOL.md §5, `PresenceStats`): the whole count, where [`Client::presence`] lists only
    /// as many members as fit in one frame. The same permission and namespace rules as
    /// [`Client::presence`]; never buffered while disconnected.
    pub async fn presence_stats(&self, room: &str) -> Result<crate::PresenceStats, ClientError> {
        let room = room.to_owned();
        self.request(|reply| Request::PresenceStats { room, reply })
            .await
    }

    /// Calls `method` on the application's backend and returns its answer (PROTOCOL.md §11).
    /// The token's `call` claim must allow the method. Refusals and backend failures come back
    /// as [`ClientError::Server`]: `permission_denied`, `unavailable` (no backend serving),
    /// `deadline_exceeded`, `backend_error`, ...
    ///
    /// Never buffered: while reconnecting it fails at once with [`ClientError::NotConnected`],
    /// and [`ClientError::ConnectionLost`] means the backend may or may not have run it. Retry
    /// such a call only with an idempotency key ([`Client::call_with`]).
    /// [`ClientError::NotCarriedOut`] (a draining server's goodbye came before the answer) means
    /// it did not run: sending it again is safe.
    ///
    /// Without [`CallOptions::timeout`] the server applies its own deadline (`rpc.timeout`,
    /// 5 s by default) and this client waits `request_timeout` (10 s) for the answer; if the
    /// server's deadline is the longer one, the client gives up first with
    /// [`ClientError::Timeout`] while the backend may still run the call. Give calls a
    /// `timeout` below `request_timeout` to hear the server's `deadline_exceeded` instead.
    /// A call not yet written when it gives up (it waited for the pacer,
    /// [`crate::ClientConfig::pace_commands`]), or whose future is dropped before then, is
    /// withdrawn: it is never sent later.
    pub async fn call(
        &self,
        method: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Bytes, ClientError> {
        self.call_with(method, payload, CallOptions::default())
            .await
    }

    /// [`Client::call`] with a deadline and an idempotency key.
    pub async fn call_with(
        &self,
        method: &str,
        payload: impl Into<Bytes>,
        options: CallOptions,
    ) -> Result<Bytes, ClientError> {
        let payload = payload.into();
        self.check_payload(&payload)?;
        let timeout_ms = options.timeout.map_or(0, |t| {
            u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
        });
        // The server answers `deadline_exceeded` at the deadline; wait a little longer for it.
        let wait = options
            .timeout
            .map_or(self.inner.request_timeout, |t| t + Duration::from_secs(2))
            .max(self.inner.request_timeout);
        let method = method.to_owned();
        // However the call ends (an answer, a timeout, its future dropped), a frame still
        // waiting to be written is withdrawn; one written is not affected.
        let claim = WithdrawOnDrop(Claim::default());
        self.request_within(wait, |reply| Request::Call {
            method,
            payload,
            timeout_ms,
            idempotency_key: options.idempotency_key.unwrap_or_default(),
            reply,
            claim: claim.0.clone(),
        })
        .await
    }

    /// The transport of the latest session: [`Transport::WebTransport`] or
    /// [`Transport::WebSocket`] (kept while reconnecting). With [`Transport::Auto`], follow
    /// [`Client::state`] and read this after each `Connected` to see a change.
    pub fn transport(&self) -> Option<Transport> {
        lock(&self.inner.shared.welcome)
            .as_ref()
            .map(|w| w.transport)
    }

    /// The connection state; `borrow()` for now, `changed().await` to follow it.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// [`Client::publish_unreliable`] datagrams dropped by this client, over its life: each
    /// found no pacer token free while the newest values of 64 other rooms already waited for
    /// one.
    pub fn datagrams_dropped(&self) -> u64 {
        self.inner.shared.datagrams_dropped.load(Ordering::Relaxed)
    }

    /// What the server said in the latest `Welcome` (kept while reconnecting).
    pub fn welcome(&self) -> Option<WelcomeInfo> {
        lock(&self.inner.shared.welcome).clone()
    }

    /// Why the client is closed (`code`, `reason`): code 0 after [`Client::close`], the
    /// `Goodbye` code when the server closed it for good. `None` while not closed.
    pub fn close_reason(&self) -> Option<(u16, String)> {
        lock(&self.inner.shared.closed).clone()
    }

    /// Closes the session and stops reconnecting, after carrying out what was accepted: the
    /// acknowledged publishes in flight get their answers, every publication [`Client::publish`]
    /// accepted (queued, or waiting for the pacer) is written, every room's newest
    /// [`Client::publish_unreliable`] value waiting for the pacer is sent (such values wait
    /// 2.5 s at most, then are dropped and counted, so that the end goes in time), then the control
    /// stream is ended (a FIN on WebTransport, a close frame, 1000, on WebSocket), so the server carries
    /// out everything before it (PROTOCOL.md §3), and the server's close ends the wait. All
    /// within 5 s; past that the connection is closed (WebTransport close code 0) whatever is
    /// left. Requests made meanwhile, and calls left unanswered at the close, fail with
    /// [`ClientError::Closed`]; subscriptions end. Publications buffered while disconnected
    /// are dropped. The control stream's end does not wait for the server to read the datagrams
    /// sent just before it ([`Client::flush`] says why): it may end the session first.
    /// Idempotent; concurrent calls all return when the client is closed.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.req_tx.send(Request::Close { reply }).is_ok() {
            let _ = done.await;
        }
    }

    pub(crate) fn send_request(&self, req: Request) {
        let _ = self.inner.req_tx.send(req);
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Request,
    ) -> Result<T, ClientError> {
        self.request_within(self.inner.request_timeout, make).await
    }

    async fn request_within<T>(
        &self,
        wait: Duration,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Request,
    ) -> Result<T, ClientError> {
        let (reply, rx) = oneshot::channel();
        if self.inner.req_tx.send(make(reply)).is_err() {
            return Err(self.closed_error());
        }
        match tokio::time::timeout(wait, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(self.closed_error()),
            Ok(Ok(res)) => res,
        }
    }

    fn closed_error(&self) -> ClientError {
        match self.close_reason() {
            Some((code, reason)) => ClientError::Closed { code, reason },
            None => ClientError::ConnectionLost,
        }
    }

    fn check_payload(&self, payload: &Bytes) -> Result<(), ClientError> {
        if let Some(w) = lock(&self.inner.shared.welcome).as_ref() {
            if payload.len() > w.limits.max_payload as usize {
                return Err(ClientError::server(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "payload of {} bytes exceeds limits.max_payload {} (checked locally)",
                        payload.len(),
                        w.limits.max_payload
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A slot in the publish buffer: wait for one while connected, fail fast while not.
    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ClientError> {
        let permits = self.inner.shared.permits.clone();
        let state = self.inner.state.borrow().clone();
        match state {
            ConnectionState::Closed => Err(self.closed_error()),
            ConnectionState::Connected { .. } => permits
                .acquire_owned()
                .await
                .map_err(|_| self.closed_error()),
            _ => permits
                .try_acquire_owned()
                .map_err(|_| ClientError::BufferFull),
        }
    }
}

/// Withdraws a `call`'s frame when the call ends, unless the writer took it.
struct WithdrawOnDrop(Claim);

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        // The pending reply goes with the caller's receiver (`Pending::abandoned`).
        self.0.withdraw();
    }
}

/// Withdraws a `publish_ack`'s publication when the call ends, unless the writer took it (then
/// it was written, and answered or lost with the connection).
struct Withdraw<'a> {
    claim: Claim,
    inner: &'a Inner,
}

impl Withdraw<'_> {
    /// Withdraws the publication if it was not written; whether it was withdrawn (now or
    /// before).
    fn now(&self) -> bool {
        if self.claim.withdraw() {
            if !self.inner.shared.withdrawals.swap(true, Ordering::AcqRel) {
                let _ = self.inner.req_tx.send(Request::Withdrawn);
            }
            return true;
        }
        self.claim.is_withdrawn()
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.now();
    }
}
