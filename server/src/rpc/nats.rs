//! Calls and hooks as NATS requests. Subjects are built from a validated tenant id and a
//! validated method or room name (tokens of `[A-Za-z0-9_-]`), so no client input can become a
//! wildcard or reach another tenant's subjects. Backends subscribe with a queue group, so any
//! one instance answers.
//!
//! Never queued (PROTOCOL.md §11.1): async-nats keeps whatever is handed to a client that is
//! reconnecting and sends it once the connection is back, long after the caller was answered.
//! So a request is only handed over while the client is connected (otherwise `unavailable`
//! at once), and every request carries its deadline (`Quiver-Deadline`) for the backend to drop
//! one that still arrives late (written just as the connection dropped).
//!
//! Replies come back on the tenant's own subjects, `quiver.<tenant>.reply.<instance>.<token>`,
//! never on a shared `_INBOX`: async-nats's inboxes are one prefix per connection with
//! sequential suffixes, so a tenant's backend allowed to publish on `_INBOX.>` (the usual way to
//! let a backend reply) could predict and answer every other tenant's pending requests (outside
//! audit). Here a backend given `quiver.<tenant>.>` can reply to its own tenant's requests
//! only, and each token is 128 random bits, so not even those of its tenant it was not sent.
//!
//! Each tenant's replies come through a subscription of their own (`quiver.<tenant>.reply.
//! <instance>.*`, made when the tenant's first request goes out, dropped once it has been idle
//! for a minute), each holding at most 1,024 messages: a backend allowed to publish on its
//! tenant's reply subjects that floods them fills its own tenant's queue, never another
//! tenant's (outside audit 129, F1: one wildcard subscription for every tenant overflowed, other
//! tenants' replies were dropped with the flood, and their fail-open hooks allowed what their
//! backends denied). A request that gets no answer while its tenant's subscription dropped
//! replies (counted by the client as it drops each one) is [`RpcError::RepliesDropped`],
//! not a deadline: its answer may have been among them, and a hook denies for it. So is one
//! that gets none while another tenant's subscription dropped replies: every reply comes
//! through one connection, and a flood that long may have held the answer up past the deadline.
//! And so is one that gets none once the connection it went out on was lost: nats-server cuts a
//! connection it cannot write to fast enough (a flood with large messages does it), and every
//! answer on its way is lost with it, however soon the client reconnects (review 130, R1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::header::HeaderMap;
use async_nats::{PublishErrorKind, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use quiver_proto::{RoomName, TenantId};
use tokio::sync::oneshot;
use tracing::debug;

use super::{
    backend_message, code_for_status, deadline_at, CallRequest, Caller, Hook, Lost, RpcError,
};
use crate::config::NatsConfig;

/// The caller's identity, as request headers.
pub const USER: &str = "Quiver-User";
pub const TENANT: &str = "Quiver-Tenant";
pub const SESSION: &str = "Quiver-Session";
pub const REQUEST_ID: &str = "Quiver-Request-Id";
pub const IDEMPOTENCY_KEY: &str = "Quiver-Idempotency-Key";
pub const ROOM: &str = "Quiver-Room";
pub use super::DEADLINE;
/// On a reply: an HTTP-style status; present and not 2xx means the call failed, the body
/// being the message.
pub const STATUS: &str = "Quiver-Status";

pub struct NatsRoute {
    client: async_nats::Client,
    replies: Arc<Replies>,
}

impl Drop for NatsRoute {
    fn drop(&mut self) {
        // Ends every tenant's reply router (each holds the replies it hands out).
        self.replies.close();
    }
}

/// How long a tenant's reply subscription is kept once none of its requests waits: a tenant
/// asking now and then does not subscribe and unsubscribe for each request.
const REPLIES_KEPT: Duration = Duration::from_secs(60);
/// How often at most the subscriptions kept past [`REPLIES_KEPT`] are looked for.
const REPLIES_SWEPT: Duration = Duration::from_secs(10);

/// What every reply subscription of the connection dropped for want of room, as its event
/// callback (set before the connection exists) hears of it: late and incomplete (async-nats
/// queues its events, and drops them past 128), so only a hint that replies are being held up
/// ([`Lost::Others`]). A tenant's own subscription's drops are counted by the client as each
/// is dropped ([`TenantReplies::drops`]).
type DropCounts = AtomicU64;

/// The requests waiting for a reply, by their reply subject's token, and each tenant's reply
/// subscription.
struct Replies {
    /// This route's part of every reply subject: 64 random bits, so instances never share one.
    instance: String,
    pending: Mutex<HashMap<String, Waiting>>,
    tenants: Mutex<Tenants>,
    drops: Arc<DropCounts>,
}

struct Waiting {
    tenant: TenantId,
    reply: oneshot::Sender<async_nats::Message>,
}

/// The tenants' reply subscriptions: one per tenant with a request waiting, or with one in the
/// last [`REPLIES_KEPT`]. So they are bounded by the tenants whose sessions (or API requests)
/// asked the backend lately.
struct Tenants {
    by_tenant: HashMap<TenantId, TenantReplies>,
    swept: Instant,
}

/// One tenant's reply subscription: read by a task of its own, which hands each reply to its
/// waiting request.
struct TenantReplies {
    /// Messages the subscription dropped, counted by the client as each is dropped, before it
    /// reads on (patched async-nats, `Subscriber::dropped`: the slow-consumer events lag and
    /// are lost in a flood, review 130, R4).
    drops: Arc<AtomicU64>,
    /// The tenant's requests waiting for a reply on it.
    waiting: usize,
    /// When `waiting` last fell to 0.
    idle_since: Instant,
    router: tokio::task::JoinHandle<()>,
}

impl Drop for TenantReplies {
    fn drop(&mut self) {
        // The task holds the subscription: it is unsubscribed as the task goes.
        self.router.abort();
    }
}

impl Replies {
    fn new(drops: Arc<DropCounts>) -> Self {
        Self {
            instance: format!("{:016x}", rand::random::<u64>()),
            pending: Mutex::new(HashMap::new()),
            tenants: Mutex::new(Tenants {
                by_tenant: HashMap::new(),
                swept: Instant::now(),
            }),
            drops,
        }
    }

    /// The subject of `tenant`'s reply subscription.
    fn subscription(&self, tenant: &TenantId) -> String {
        format!("quiver.{tenant}.reply.{}.*", self.instance)
    }

    /// A new reply subject for one of `tenant`'s requests, on the tenant's reply subscription
    /// (made now if it has none); the token is removed again when the returned guard drops
    /// (answered, timed out or cancelled). The subscription is asked for before the request
    /// is published on the same connection, so nats-server has it before any backend can
    /// answer.
    async fn wait(
        self: &Arc<Self>,
        client: &async_nats::Client,
        tenant: &TenantId,
    ) -> Result<(String, Pending), RpcError> {
        let drops = match self.enter(tenant) {
            Some(drops) => drops,
            None => {
                let subscription = client
                    .subscribe(self.subscription(tenant))
                    .await
                    .map_err(|e| RpcError::Unavailable(format!("rpc replies: {e}")))?;
                self.subscribed(tenant, subscription)
            }
        };
        let token = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            token.clone(),
            Waiting {
                tenant: tenant.clone(),
                reply: tx,
            },
        );
        let subject = format!("quiver.{tenant}.reply.{}.{token}", self.instance);
        let pending = Pending {
            replies: self.clone(),
            tenant: tenant.clone(),
            token,
            dropped_before: drops.load(Ordering::Relaxed),
            drops,
            all_dropped_before: self.drops.load(Ordering::Relaxed),
            rx,
        };
        Ok((subject, pending))
    }

    /// One more request of `tenant` waits on its reply subscription, if it has one: its drop
    /// count. Forgets the subscriptions idle past [`REPLIES_KEPT`] first (at most every
    /// [`REPLIES_SWEPT`]).
    fn enter(&self, tenant: &TenantId) -> Option<Arc<AtomicU64>> {
        let mut tenants = self.tenants();
        if tenants.swept.elapsed() >= REPLIES_SWEPT {
            tenants.swept = Instant::now();
            tenants
                .by_tenant
                .retain(|_, t| t.waiting > 0 || t.idle_since.elapsed() < REPLIES_KEPT);
        }
        let entry = tenants.by_tenant.get_mut(tenant)?;
        entry.waiting += 1;
        Some(entry.drops.clone())
    }

    /// `tenant`'s new reply `subscription`, read from now on (or dropped, if another request
    /// of the tenant made one meanwhile): one more request waits on it; its drop count.
    fn subscribed(
        self: &Arc<Self>,
        tenant: &TenantId,
        subscription: async_nats::Subscriber,
    ) -> Arc<AtomicU64> {
        let mut tenants = self.tenants();
        if let Some(theirs) = tenants.by_tenant.get_mut(tenant) {
            theirs.waiting += 1;
            // Ours is unsubscribed as it drops.
            return theirs.drops.clone();
        }
        let drops = subscription.dropped();
        let router = tokio::spawn(route(self.clone(), subscription));
        tenants.by_tenant.insert(
            tenant.clone(),
            TenantReplies {
                drops: drops.clone(),
                waiting: 1,
                idle_since: Instant::now(),
                router,
            },
        );
        drops
    }

    /// One request of `tenant` no longer waits.
    fn leave(&self, tenant: &TenantId) {
        if let Some(entry) = self.tenants().by_tenant.get_mut(tenant) {
            entry.waiting = entry.waiting.saturating_sub(1);
            if entry.waiting == 0 {
                entry.idle_since = Instant::now();
            }
        }
    }

    /// Ends every tenant's subscription (the route is going).
    fn close(&self) {
        let gone = std::mem::take(&mut self.tenants().by_tenant);
        drop(gone);
    }

    /// Hands a message to the request its subject names, if one waits and the subject's
    /// tenant is that request's. Returns whether it was taken.
    fn deliver(&self, message: async_nats::Message) -> bool {
        let mut parts = message.subject.split('.');
        let (Some("quiver"), Some(tenant), Some("reply"), Some(instance), Some(token), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return false;
        };
        if instance != self.instance {
            return false;
        }
        let waiting = {
            let mut pending = self.lock();
            match pending.get(token) {
                // Another tenant's subject: left waiting for its own reply.
                Some(waiting) if waiting.tenant.as_str() != tenant => None,
                _ => pending.remove(token),
            }
        };
        waiting.is_some_and(|waiting| waiting.reply.send(message).is_ok())
    }

    // Nothing panics while holding these locks; a poisoned map is still a map.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tenants(&self) -> std::sync::MutexGuard<'_, Tenants> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads one tenant's reply subscription, handing each reply to its waiting request.
async fn route(replies: Arc<Replies>, mut subscription: async_nats::Subscriber) {
    while let Some(message) = subscription.next().await {
        if !replies.deliver(message) {
            metrics::counter!(crate::metrics::NATS_DROPPED, "reason" => "stray_reply").increment(1);
            debug!("a reply for no waiting request (late, or not ours)");
        }
    }
}

/// One request's wait for its reply.
struct Pending {
    replies: Arc<Replies>,
    tenant: TenantId,
    token: String,
    /// The tenant's reply subscription's drop count, and what it was when the request began.
    drops: Arc<AtomicU64>,
    dropped_before: u64,
    /// What every reply subscription had dropped when the request began.
    all_dropped_before: u64,
    rx: oneshot::Receiver<async_nats::Message>,
}

impl Pending {
    /// The reply, once it comes; the token is given back however this ends.
    async fn reply(&mut self) -> Result<async_nats::Message, RpcError> {
        (&mut self.rx)
            .await
            .map_err(|_| RpcError::Unavailable("the reply route ended".into()))
    }

    /// Whose replies were dropped here since the request began, if any: the tenant's own, or
    /// only other tenants'.
    fn replies_dropped(&self) -> Option<Lost> {
        if self.drops.load(Ordering::Relaxed) != self.dropped_before {
            Some(Lost::Tenant)
        } else if self.replies.drops.load(Ordering::Relaxed) != self.all_dropped_before {
            Some(Lost::Others)
        } else {
            None
        }
    }
}

/// The connection as a request is handed over: how many times the client had connected.
struct Connected(u64);

impl Connected {
    fn now(client: &async_nats::Client) -> Self {
        Self(client.statistics().connects.load(Ordering::Relaxed))
    }

    /// Whether the connection has been lost since: it is down, or was made again.
    fn lost(&self, client: &async_nats::Client) -> bool {
        !crate::broker::nats::is_connected(client)
            || client.statistics().connects.load(Ordering::Relaxed) != self.0
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.token);
        self.replies.leave(&self.tenant);
    }
}

impl NatsRoute {
    /// A connection of its own, so calls never queue behind publications.
    pub async fn connect(nats: &NatsConfig) -> Result<Self, crate::broker::BrokerError> {
        let options = async_nats::ConnectOptions::new()
            .name("quiver-rpc")
            .retry_on_initial_connect()
            // Replies, each taken at once: a short queue per tenant, so a backend flooding its
            // tenant's reply subjects with large messages cannot make the instance hold
            // gigabytes (outside cluster audit 112, F4); what it drops is counted, and fails
            // that tenant's waiting requests closed (`Replies`).
            .subscription_capacity(crate::broker::nats::CONTROL_SUBSCRIPTION_CAPACITY);
        let drops = Arc::<DropCounts>::default();
        // As the instance's other NATS connections are watched (a loss counted,
        // `quiver_nats_disconnects_total{connection="rpc"}`, and logged; a message dropped by a
        // full subscription counted, `quiver_nats_slow_consumer_total{connection="rpc"}`, and
        // logged within a budget), and counted in `drops` (any reply subscription's).
        let counts = drops.clone();
        let options = crate::broker::nats::watched(options, "rpc", move |_sid| {
            counts.fetch_add(1, Ordering::Relaxed);
        });
        let client = crate::broker::nats::connect_with(nats, options).await?;
        // Each tenant's reply subscription is made as its first request goes out.
        let replies = Arc::new(Replies::new(drops));
        Ok(Self { client, replies })
    }

    pub async fn call(
        &self,
        caller: &Caller,
        req: &CallRequest,
        request_id: &str,
    ) -> Result<Bytes, RpcError> {
        let mut headers = caller_headers(caller, request_id)?;
        if let Some(key) = &req.idempotency_key {
            headers.insert(IDEMPOTENCY_KEY, header_value(key)?);
        }
        let subject = format!("quiver.{}.rpc.{}", caller.tenant, req.method);
        let reply = self
            .request(
                &caller.tenant,
                subject,
                headers,
                req.payload.clone(),
                req.deadline,
            )
            .await?;
        answer(reply)
    }

    pub async fn hook(
        &self,
        hook: Hook,
        caller: &Caller,
        room: &RoomName,
        body: Bytes,
        request_id: &str,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        let mut headers = caller_headers(caller, request_id)?;
        headers.insert(ROOM, header_value(room.as_str())?);
        let subject = format!("quiver.{}.hook.{}.{}", caller.tenant, hook.label(), room);
        // The same statuses as a call's (PROTOCOL.md §11.2): a hook answered 401/403 is the
        // backend's deny, whatever the namespace's fail rule (§11.3).
        answer(
            self.request(&caller.tenant, subject, headers, body, deadline)
                .await?,
        )
    }

    async fn request(
        &self,
        tenant: &TenantId,
        subject: String,
        mut headers: HeaderMap,
        payload: Bytes,
        deadline: Duration,
    ) -> Result<async_nats::Message, RpcError> {
        // A request handed to a reconnecting client would wait in its buffer and reach the
        // backend after the reconnect, behind the caller's back: refuse it now instead.
        if !crate::broker::nats::is_connected(&self.client) {
            return Err(RpcError::Unavailable("not connected to NATS".into()));
        }
        // Digits only: always a valid header value (`From<&str>` panics only on line breaks).
        headers.insert(DEADLINE, deadline_at(SystemTime::now(), deadline).as_str());
        let ends = tokio::time::Instant::now() + deadline;
        // The connection's (re)connections so far: counted by the client as each is made,
        // never lost (unlike its events). A request handed over on this connection whose
        // answer does not come before the connection is lost may have had it lost with it.
        let connected = Connected::now(&self.client);
        // The bound also covers a subscribe and a send that wait on a reconnecting client.
        let sent = tokio::time::timeout_at(ends, async {
            let (reply, pending) = self.replies.wait(&self.client, tenant).await?;
            self.client
                .publish_with_reply_and_headers(subject, reply, headers, payload)
                .await
                .map_err(|e| match e.kind() {
                    // Checked by the client before anything is written: never sent, for the
                    // size of what the caller sent (outside audit 129, F2: a fail-open hook
                    // allowed it).
                    PublishErrorKind::MaxPayloadExceeded => RpcError::NotAsked(
                        quiver_proto::ErrorCode::PayloadTooLarge,
                        "request exceeds the NATS server's max_payload".into(),
                    ),
                    _ => RpcError::Unavailable(e.to_string()),
                })?;
            Ok(pending)
        })
        .await;
        let mut pending = match sent {
            // The request may have been handed over, then the connection lost.
            Err(_) if connected.lost(&self.client) => {
                return Err(RpcError::RepliesDropped(deadline, Lost::Connection))
            }
            Err(_) => return Err(RpcError::Deadline(deadline)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(pending)) => pending,
        };
        let answered = tokio::time::timeout_at(ends, pending.reply()).await;
        match answered {
            // The answer may have come and been lost with the connection (nats-server cuts a
            // connection it cannot write to fast enough, and a backend allowed to publish on
            // its tenant's reply subjects can flood it that far: review 130, R1), or dropped
            // here (Replies): not "no answer".
            Err(_) if connected.lost(&self.client) => {
                Err(RpcError::RepliesDropped(deadline, Lost::Connection))
            }
            Err(_) => Err(match pending.replies_dropped() {
                Some(lost) => RpcError::RepliesDropped(deadline, lost),
                None => RpcError::Deadline(deadline),
            }),
            Ok(Err(e)) => Err(e),
            Ok(Ok(message)) if no_responders(&message) => Err(RpcError::Unavailable(
                "no backend subscribes to the request's subject".into(),
            )),
            Ok(Ok(message)) => Ok(message),
        }
    }
}

fn caller_headers(caller: &Caller, request_id: &str) -> Result<HeaderMap, RpcError> {
    let mut headers = HeaderMap::new();
    headers.insert(USER, header_value(&caller.user)?);
    headers.insert(TENANT, header_value(caller.tenant.as_str())?);
    headers.insert(SESSION, header_value(&caller.session)?);
    headers.insert(REQUEST_ID, header_value(request_id)?);
    Ok(headers)
}

/// A reply's `Quiver-Status` values, its name in any case (NATS header names are
/// case-sensitive, but client libraries differ in how they write them).
fn statuses(reply: &async_nats::Message) -> impl Iterator<Item = &async_nats::HeaderValue> {
    reply
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(STATUS))
        .flat_map(|(_, values)| values)
}

/// Whether `reply` is nats-server's own answer when nobody subscribes to the subject. A reply
/// with a `Quiver-Status` is a backend's, whatever its status line says (outside audit 34, F4:
/// `NATS/1.0 503` with `Quiver-Status: 200` and a replacement was read as "no backend").
fn no_responders(reply: &async_nats::Message) -> bool {
    reply.status == Some(StatusCode::NO_RESPONDERS) && statuses(reply).next().is_none()
}

/// Whether `reply`'s header block could not be read. The NATS client (patched,
/// `vendor/async-nats/PATCHES.md`) passes such a message on without headers or status, saying
/// why in `description`, which a message read whole has only beside a status.
fn unreadable_headers(reply: &async_nats::Message) -> bool {
    reply.status.is_none() && reply.description.is_some()
}

/// A reply's body, or the error its `Quiver-Status` (when not 2xx) stands for. Two
/// `Quiver-Status` headers are a bad answer: which one the backend meant cannot be known
/// (outside audit 34, F5: the first won, so `200` then `401` replaced the payload).
fn answer(reply: async_nats::Message) -> Result<Bytes, RpcError> {
    if unreadable_headers(&reply) {
        // It may carry a `Quiver-Status` the server cannot see: neither a 2xx nor no answer.
        return Err(RpcError::BadAnswer(
            "the reply's NATS header block cannot be read".into(),
        ));
    }
    let status = {
        let mut statuses = statuses(&reply);
        match (statuses.next(), statuses.next()) {
            (None, _) => None,
            (Some(value), None) => Some(value.as_str().trim().parse::<u16>()),
            (Some(_), Some(_)) => {
                return Err(RpcError::BadAnswer(format!("more than one {STATUS}")));
            }
        }
    };
    match status {
        None => Ok(reply.payload),
        Some(Ok(s)) if (200..300).contains(&s) => Ok(reply.payload),
        Some(Ok(s)) => Err(RpcError::Backend(
            code_for_status(s),
            backend_message(&reply.payload, s),
        )),
        Some(Err(_)) => Err(RpcError::BadAnswer(format!("{STATUS} is not a number"))),
    }
}

/// A header value, refused (not panicking, as async-nats's `From<&str>` would) when it holds a
/// line break or any other control character (NUL, VT, U+0085, U+2028, …), or white space at
/// either end: a user id from a token can hold anything, and a backend's header parser should
/// never have to guess. NATS clients (nats.py, async-nats) trim a header value, so the users
/// " alice" and "alice" were one user to the backend (outside audit 95, F2).
fn header_value(value: &str) -> Result<async_nats::HeaderValue, RpcError> {
    // Never sent: for a hook that is a deny under either fail rule (outside audit 129, F2).
    let refuse = || {
        RpcError::NotAsked(
            quiver_proto::ErrorCode::BadRequest,
            "a value for the backend's headers contains a line break or another control \
             character, or white space at either end"
                .into(),
        )
    };
    if !super::header_safe(value) || value.trim() != value {
        return Err(refuse());
    }
    value.parse().map_err(|_| refuse())
}

#[cfg(test)]
mod header_tests {
    use super::header_value;

    #[test]
    fn control_characters_never_reach_a_header() {
        assert!(header_value("alice").is_ok());
        assert!(header_value("Zoë Ünïcode 名前").is_ok());
        assert!(header_value("alice smith").is_ok());
        for bad in [
            "a\nb",
            "a\rb",
            "a\0b",
            "a\u{b}b",
            "a\u{c}b",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{7f}b",
            // Trimmed by a backend's NATS client: another user's name.
            " alice",
            "alice ",
            "\u{a0}alice",
            "alice\u{3000}",
        ] {
            assert!(header_value(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod reply_tests {
    use super::*;
    use async_nats::Message;

    fn reply(status: Option<u16>, headers: &[(&str, &str)], body: &'static str) -> Message {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, *value);
        }
        Message {
            subject: "quiver.acme.reply.i.t".into(),
            reply: None,
            payload: Bytes::from_static(body.as_bytes()),
            headers: (!headers.is_empty()).then_some(map),
            status: status.map(|s| StatusCode::from_u16(s).expect("a status")),
            description: None,
            length: 0,
        }
    }

    #[test]
    fn quiver_status_is_read_once_in_any_case() {
        let ok = |r: Message| answer(r).map(|b| b.to_vec());
        assert_eq!(ok(reply(None, &[], "a")), Ok(b"a".to_vec()));
        assert_eq!(ok(reply(None, &[(STATUS, "204")], "a")), Ok(b"a".to_vec()));
        let (code, _) = match answer(reply(None, &[("quiver-status", "401")], "no")) {
            Err(RpcError::Backend(code, message)) => (code, message),
            other => panic!("{other:?}"),
        };
        assert_eq!(code, quiver_proto::ErrorCode::PermissionDenied);
        // Two of them, in one spelling or two: which was meant cannot be known.
        for two in [
            [(STATUS, "200"), (STATUS, "401")],
            [("quiver-status", "200"), (STATUS, "401")],
        ] {
            assert!(
                matches!(answer(reply(None, &two, "x")), Err(RpcError::BadAnswer(_))),
                "{two:?}"
            );
        }
        assert!(matches!(
            answer(reply(None, &[(STATUS, "200 OK")], "x")),
            Err(RpcError::BadAnswer(_))
        ));
    }

    #[test]
    fn a_reply_whose_header_block_cannot_be_read_is_a_bad_answer() {
        let mut garbled = reply(None, &[], "{\"allow\":true}");
        garbled.description = Some("unreadable header block: no colon".into());
        assert!(matches!(answer(garbled), Err(RpcError::BadAnswer(_))));
        // A status with its description is a status.
        let mut described = reply(Some(503), &[], "");
        described.description = Some("No Responders".into());
        assert!(no_responders(&described) && !unreadable_headers(&described));
    }

    #[test]
    fn only_a_503_without_quiver_status_is_no_responders() {
        assert!(no_responders(&reply(Some(503), &[], "")));
        assert!(!no_responders(&reply(Some(503), &[(STATUS, "200")], "x")));
        assert!(!no_responders(&reply(
            Some(503),
            &[("QUIVER-STATUS", "200")],
            "x"
        )));
        assert!(!no_responders(&reply(None, &[], "")));
    }
}
