//! The cluster's control plane: operator actions that must reach whichever instance holds a
//! session — disconnect a user or a session, revoke a token (`jti`), unsubscribe a user from a
//! room. On one instance they apply locally; with NATS each is published on
//! `quiver.<tenant>.control.{disconnect,revoke,unsubscribe}` and every instance (this one
//! included) applies it to its own sessions, so the action takes effect cluster-wide within one
//! NATS round trip. Statistics (`/api/v1/info`, `/api/v1/rooms`) are gathered by request/reply
//! on `quiver-cluster.stats`: every instance answers for itself. Revocations are also stored in
//! the JetStream key-value bucket `quiver_revoked` (each until its token's expiry;
//! `revocation.rs`), which an instance loads when it starts, after each reconnect, and after
//! its revocation subscription dropped messages (a flood outran it).

use std::sync::Arc;

use futures::StreamExt;
use quiver_proto::{CloseCode, TenantId};
use tracing::{debug, warn};

use crate::hub::Hub;
use crate::log_budget::{LogBudget, Summary};
use crate::registry::{Kick, Registry, Selector};
use crate::revocation::{self, Revocations};

/// A revocation as it travels between instances: the `jti`'s key (tenant and digest), and the
/// token's expiry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Revoke {
    key: String,
    until: u64,
}

/// A disconnect as it travels between instances.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Disconnect {
    pub selector: Selector,
    pub reason: String,
    /// Ask the sessions to reconnect (`reconnect`, 3011) rather than to stay away
    /// (`disconnected`, 3009). Absent from instances that predate it: false.
    #[serde(default)]
    pub reconnect: bool,
}

impl Disconnect {
    /// As the API would have made it: a user or a session named (not a whole tenant at once),
    /// and a reason that fits in a goodbye. Applied to a disconnect that comes over NATS,
    /// where a tenant's backend may publish (outside audit 66, F4: a 1 MiB reason was copied
    /// into every matching session's orders, and sent on in frames past `max_frame`).
    fn checked(self) -> Result<Self, String> {
        if self.selector.user.is_none() && self.selector.session.is_none() {
            return Err("a disconnect names a user, a session, or both".into());
        }
        check_reason(&self.reason)?;
        check_selector(&self.selector)?;
        Ok(self)
    }
}

/// The longest `reason` a control message may carry: the API's bound.
pub const MAX_REASON: usize = 256;

fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON {
        return Err(format!("reason: at most {MAX_REASON} bytes"));
    }
    Ok(())
}

/// A user as a token's `sub` carries it, a session id no longer than one could be.
fn check_selector(selector: &Selector) -> Result<(), String> {
    if selector
        .user
        .as_ref()
        .is_some_and(|u| u.is_empty() || u.len() > crate::auth::MAX_SUB_BYTES)
    {
        return Err(format!("user: 1 to {} bytes", crate::auth::MAX_SUB_BYTES));
    }
    if selector
        .session
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > MAX_SESSION_BYTES)
    {
        return Err(format!("session: 1 to {MAX_SESSION_BYTES} bytes"));
    }
    if selector.jti_key.as_ref().is_some_and(|k| k.len() > 256) {
        return Err("jti_key: at most 256 bytes".into());
    }
    Ok(())
}

/// An unsubscribe as it travels between instances.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Unsubscribe {
    pub selector: Selector,
    pub room: String,
    pub reason: String,
}

impl Unsubscribe {
    /// Held to what `POST /api/v1/unsubscribe` accepts: a user, a room name, a reason that fits
    /// in a frame. Applied to one that comes over NATS, where a tenant's backend may publish
    /// (outside audit 72, F5: without a user, one message ended the room for every session of
    /// the tenant; a room that is no room name was ignored uncounted).
    fn checked(self) -> Result<Self, String> {
        if self.selector.user.is_none() {
            return Err("an unsubscribe names a user".into());
        }
        quiver_proto::RoomName::parse(&self.room).map_err(|e| format!("room: {e}"))?;
        check_reason(&self.reason)?;
        check_selector(&self.selector)?;
        Ok(self)
    }
}

/// A control message with the instance it comes from, so that instance (which applied it
/// already, to count its own sessions) does not apply it twice.
#[derive(serde::Serialize, serde::Deserialize)]
struct FromNode<T> {
    origin: String,
    #[serde(flatten)]
    body: T,
}

/// The longest an operator action waits on NATS. A flush waits for the server's answer, which
/// a disconnected client never gets: without a bound the API hung for as long as NATS was away.
const NATS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// An operator action applied on this instance but not told to the others (NATS lost or not
/// answering): how many sessions it reached here, and why it went no further.
#[derive(Debug)]
pub struct NotSpread {
    pub here: usize,
    pub error: String,
}

/// The longest session id a selector may name (a session's id is 16 hex digits: room to grow,
/// and a bound on what a control message carries).
pub(crate) const MAX_SESSION_BYTES: usize = 64;

/// Runs `op` against NATS for an operator action: refused at once while the client knows it
/// lost NATS, and refused after [`NATS_WAIT`] otherwise (the API answers 503 either way). The
/// first connection, still pending just after start, is waited for within the bound.
pub(crate) async fn with_nats<T>(
    nats: &async_nats::Client,
    op: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    if nats.connection_state() == async_nats::connection::State::Disconnected {
        return Err("nats: disconnected".into());
    }
    tokio::time::timeout(NATS_WAIT, op)
        .await
        .map_err(|_| format!("nats: no answer within {NATS_WAIT:?}"))?
}

/// The subject statistics are asked on. Not under `quiver.`: everything there is
/// `quiver.<tenant>.…`, and `cluster` is a valid tenant name, so a NATS user allowed a tenant's
/// subjects (its backend, `quiver.cluster.>`) would see and answer every instance's statistics
/// requests (an outside audit did).
const STATS_SUBJECT: &str = "quiver-cluster.stats";
/// How long a statistics request waits for instances to answer: every answer that arrives in
/// it is counted, a slower instance is left out of that answer.
const STATS_WINDOW: std::time::Duration = std::time::Duration::from_millis(300);
/// Most instances one statistics answer lists.
pub const MAX_NODES: usize = 256;
/// Most rooms one instance lists in its statistics.
pub const MAX_ROOMS: usize = 1000;

/// What statistics are asked for: of one tenant or all, and whether to list rooms.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StatsRequest {
    pub tenant: Option<String>,
    pub rooms: bool,
}

/// One instance's statistics.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    pub node: String,
    pub sessions: usize,
    pub subscriptions: usize,
    /// Rooms with subscribers on this instance.
    pub room_count: usize,
    /// With `StatsRequest::rooms`: `(tenant, room, subscribers)`, at most [`MAX_ROOMS`].
    #[serde(default)]
    pub rooms: Vec<(String, String, usize)>,
}

pub struct Control {
    registry: Arc<Registry>,
    revocations: Arc<Revocations>,
    hub: Arc<Hub>,
    nats: Option<async_nats::Client>,
    /// This instance's name in statistics: random, new at every start.
    node: String,
}

/// A NATS connection of its own for the control plane (kept apart from the broker's, so a
/// backlog of publications never delays a disconnect).
pub async fn connect(
    nats: &crate::config::NatsConfig,
) -> Result<async_nats::Client, crate::broker::BrokerError> {
    let options = async_nats::ConnectOptions::new()
        .name("quiver-control")
        .retry_on_initial_connect()
        // Every tenant's control subjects, where its backend may publish: a short queue, so a
        // flood of large messages cannot make the instance hold gigabytes (outside cluster
        // audit 112, F4). What it drops is counted; a revocation dropped makes the
        // revocations load again.
        .subscription_capacity(crate::broker::nats::CONTROL_SUBSCRIPTION_CAPACITY);
    let options = crate::broker::nats::watched(options, "control", Some(&REVOCATIONS_DROPPED));
    crate::broker::nats::connect_with(nats, options).await
}

/// Messages the revocation subscription dropped for want of room (async-nats's client-side
/// slow consumer), as far as it reported them: a revocation's broadcast was lost, and no
/// reconnect follows such a drop, so `keep_loaded` loads the stored revocations again when
/// this moves (outside cluster audit 112, F2: a tenant's backend flooding its own control
/// subjects made another tenant's revocation lost on an instance until it reconnected). Drops
/// of the disconnect and unsubscribe subscription do not count: no revocation was among them
/// (review 113, F1). One per process: a second instance in the same process (tests) adds its
/// own subscription.
static REVOCATIONS_DROPPED: crate::broker::nats::Drops = crate::broker::nats::Drops::new();

/// After a load for dropped revocations, the wait before the next one for more drops: it
/// doubles, up to [`DROP_LOAD_WAIT_MOST`], while drops keep coming, so a sustained flood of
/// a revoke subject costs a bounded number of loads of the whole store a minute on every
/// instance (review 113, F1). A load catches every revocation stored before it, so a broadcast
/// lost meanwhile is applied at the next load.
const DROP_LOAD_WAIT_LEAST: std::time::Duration = std::time::Duration::from_secs(1);
const DROP_LOAD_WAIT_MOST: std::time::Duration = std::time::Duration::from_secs(30);

/// When the next load for dropped revocations may run (see [`DROP_LOAD_WAIT_LEAST`]).
#[derive(Debug)]
struct DropLoads {
    wait: std::time::Duration,
    not_before: tokio::time::Instant,
}

impl DropLoads {
    fn new(now: tokio::time::Instant) -> Self {
        Self {
            wait: DROP_LOAD_WAIT_LEAST,
            not_before: now,
        }
    }

    /// Whether to load now, told whether revocations were dropped since the last load; if so,
    /// the next such load waits twice as long. A whole wait with no drop starts over.
    fn due(&mut self, now: tokio::time::Instant, dropped: bool) -> bool {
        if now < self.not_before {
            return false;
        }
        if !dropped {
            self.wait = DROP_LOAD_WAIT_LEAST;
            return false;
        }
        self.not_before = now + self.wait;
        self.wait = (self.wait * 2).min(DROP_LOAD_WAIT_MOST);
        true
    }
}

fn subject(tenant: &TenantId) -> String {
    format!("quiver.{tenant}.control.disconnect")
}

impl Control {
    pub fn new(
        registry: Arc<Registry>,
        revocations: Arc<Revocations>,
        hub: Arc<Hub>,
        nats: Option<async_nats::Client>,
    ) -> Self {
        Self {
            registry,
            revocations,
            hub,
            nats,
            node: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Revokes a token by its `jti` until `until` (its expiry) on every instance, and ends the
    /// sessions using it. Returns how many sessions *this* instance ended.
    pub async fn revoke(
        &self,
        tenant: &TenantId,
        jti: &str,
        until: u64,
    ) -> Result<usize, NotSpread> {
        let key = revocation::key(tenant, jti);
        let local = self.apply_revoke(
            &Revoke {
                key: key.clone(),
                until,
            },
            tenant,
        );
        if let Some(nats) = &self.nats {
            let body = serde_json::to_vec(&Revoke {
                key: key.clone(),
                until,
            })
            .map_err(|e| NotSpread {
                here: local,
                error: e.to_string(),
            })?;
            with_nats(nats, async {
                self.revocations.put(nats, &key, until).await?;
                nats.publish(format!("quiver.{tenant}.control.revoke"), body.into())
                    .await
                    .map_err(|e| format!("nats: {e}"))?;
                nats.flush().await.map_err(|e| format!("nats: {e}"))
            })
            .await
            .map_err(|error| NotSpread { here: local, error })?;
        }
        Ok(local)
    }

    /// Records a revocation and ends the local sessions using the token (matched by the
    /// digest of its `jti`, which is all that travels between instances).
    fn apply_revoke(&self, revoke: &Revoke, tenant: &TenantId) -> usize {
        self.revocations.insert(revoke.key.clone(), revoke.until);
        self.registry.kick(
            &Selector {
                tenant: tenant.to_string(),
                jti_key: Some(revoke.key.clone()),
                ..Selector::default()
            },
            &Kick {
                code: CloseCode::Disconnected,
                room: None,
                // Never any part of the token in a reason (PROTOCOL.md §6), its id included.
                reason: "token revoked".into(),
            },
        )
    }

    /// Applies a disconnect on every instance. Returns how many sessions *this* instance ended
    /// (the others report nothing back). Fails only when NATS cannot take the message.
    pub async fn disconnect(
        &self,
        tenant: &TenantId,
        disconnect: Disconnect,
    ) -> Result<usize, NotSpread> {
        let local = self.apply(&disconnect);
        if let Some(nats) = &self.nats {
            let body = serde_json::to_vec(&disconnect).map_err(|e| NotSpread {
                here: local,
                error: e.to_string(),
            })?;
            with_nats(nats, async {
                nats.publish(subject(tenant), body.into())
                    .await
                    .map_err(|e| format!("nats: {e}"))?;
                nats.flush().await.map_err(|e| format!("nats: {e}"))
            })
            .await
            .map_err(|error| NotSpread { here: local, error })?;
        }
        Ok(local)
    }

    fn apply(&self, disconnect: &Disconnect) -> usize {
        self.registry.kick(
            &disconnect.selector,
            &Kick {
                code: if disconnect.reconnect {
                    CloseCode::Reconnect
                } else {
                    CloseCode::Disconnected
                },
                reason: disconnect.reason.clone(),
                room: None,
            },
        )
    }

    /// Ends a user's subscription to a room on every instance (the sessions stay). Returns how
    /// many sessions *this* instance told to. Fails only when NATS cannot take the message.
    pub async fn unsubscribe(
        &self,
        tenant: &TenantId,
        unsubscribe: Unsubscribe,
    ) -> Result<usize, NotSpread> {
        let local = self.apply_unsubscribe(&unsubscribe);
        if let Some(nats) = &self.nats {
            let message = FromNode {
                origin: self.node.clone(),
                body: unsubscribe,
            };
            let body = serde_json::to_vec(&message).map_err(|e| NotSpread {
                here: local,
                error: e.to_string(),
            })?;
            with_nats(nats, async {
                nats.publish(format!("quiver.{tenant}.control.unsubscribe"), body.into())
                    .await
                    .map_err(|e| format!("nats: {e}"))?;
                nats.flush().await.map_err(|e| format!("nats: {e}"))
            })
            .await
            .map_err(|error| NotSpread { here: local, error })?;
        }
        Ok(local)
    }

    fn apply_unsubscribe(&self, unsubscribe: &Unsubscribe) -> usize {
        let Ok(room) = quiver_proto::RoomName::parse(&unsubscribe.room) else {
            return 0;
        };
        self.registry.kick(
            &unsubscribe.selector,
            &Kick {
                code: CloseCode::Disconnected,
                reason: unsubscribe.reason.clone(),
                room: Some(room),
            },
        )
    }

    /// This instance's statistics.
    pub fn local_stats(&self, request: &StatsRequest) -> NodeStats {
        let tenant = request
            .tenant
            .as_deref()
            .and_then(|t| TenantId::parse(t).ok());
        // A tenant name that is no tenant id has nothing here.
        if request.tenant.is_some() && tenant.is_none() {
            return NodeStats {
                node: self.node.clone(),
                sessions: 0,
                subscriptions: 0,
                room_count: 0,
                rooms: Vec::new(),
            };
        }
        let max = if request.rooms { MAX_ROOMS } else { 0 };
        let here = self.hub.rooms(tenant.as_ref(), max);
        NodeStats {
            node: self.node.clone(),
            sessions: self.registry.count(tenant.as_ref()),
            subscriptions: here.subscriptions,
            room_count: here.count,
            rooms: here
                .listed
                .into_iter()
                .map(|(key, n)| (key.tenant.to_string(), key.room.to_string(), n))
                .collect(),
        }
    }

    /// Every instance's statistics (this one's alone without NATS), sorted by node. Instances
    /// that do not answer within [`STATS_WINDOW`] are left out.
    pub async fn cluster_stats(&self, request: &StatsRequest) -> Result<Vec<NodeStats>, String> {
        let Some(nats) = &self.nats else {
            return Ok(vec![self.local_stats(request)]);
        };
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let inbox = nats.new_inbox();
        let mut replies = with_nats(nats, async {
            let replies = nats
                .subscribe(inbox.clone())
                .await
                .map_err(|e| format!("nats: {e}"))?;
            nats.publish_with_reply(STATS_SUBJECT, inbox, body.into())
                .await
                .map_err(|e| format!("nats: {e}"))?;
            nats.flush().await.map_err(|e| format!("nats: {e}"))?;
            Ok(replies)
        })
        .await?;
        let deadline = tokio::time::Instant::now() + STATS_WINDOW;
        let mut nodes = Vec::new();
        while nodes.len() < MAX_NODES {
            match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(reply)) => match serde_json::from_slice::<NodeStats>(&reply.payload) {
                    Ok(stats) => nodes.push(stats),
                    Err(e) => warn!(error = %e, "control plane: malformed statistics"),
                },
                Ok(None) | Err(_) => break,
            }
        }
        let _ = replies.unsubscribe().await;
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// Answers statistics requests from any instance, until shutdown.
    async fn answer_stats(
        self: Arc<Self>,
        nats: async_nats::Client,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut requests = match nats.subscribe(STATS_SUBJECT).await {
            Ok(s) => s,
            Err(e) => return warn!(error = %e, "control plane: cannot answer statistics"),
        };
        while let Some(message) = tokio::select! {
            message = requests.next() => message,
            _ = shutdown.cancelled() => None,
        } {
            let Some(reply) = message.reply else { continue };
            let request =
                serde_json::from_slice::<StatsRequest>(&message.payload).unwrap_or_default();
            let Ok(body) = serde_json::to_vec(&self.local_stats(&request)) else {
                continue;
            };
            if let Err(e) = nats.publish(reply, body.into()).await {
                debug!(error = %e, "control plane: statistics not sent");
            }
        }
    }

    /// Loads the stored revocations at start, again each time the control plane's NATS
    /// connection comes back, and again after the revocation subscription dropped messages
    /// (`REVOCATIONS_DROPPED`; within [`DropLoads`] while they keep coming): what was revoked
    /// while this instance could not hear the broadcast is in the store (stored before it is
    /// broadcast), and the sessions using it here are ended then.
    async fn keep_loaded(
        self: Arc<Self>,
        nats: async_nats::Client,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        use async_nats::connection::State;
        let connects = || {
            nats.statistics()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let dropped = || REVOCATIONS_DROPPED.count();
        let mut seen = connects();
        // Read before each load: a drop reported while one runs makes the next.
        let mut drops_seen = dropped();
        self.load_until_done(&nats, &shutdown).await;
        let mut drop_loads = DropLoads::new(tokio::time::Instant::now());
        let mut look = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = look.tick() => {}
                () = shutdown.cancelled() => return,
            }
            // A connection made since the last look: a loss and its return within one look
            // (nats-server dropping the connection as a slow consumer, say) is one too; the
            // state alone missed it (outside audit 69, F1).
            let now = connects();
            let drops = dropped();
            if nats.connection_state() != State::Connected {
                continue;
            }
            let for_drops = drop_loads.due(tokio::time::Instant::now(), drops != drops_seen);
            if now != seen || for_drops {
                if drops != drops_seen {
                    debug!(
                        dropped = drops.wrapping_sub(drops_seen),
                        "revocations dropped (slow consumer): loading the revocations again"
                    );
                }
                seen = now;
                drops_seen = drops;
                self.load_until_done(&nats, &shutdown).await;
            }
        }
    }

    /// Loads the stored revocations, again and again until it succeeds (NATS may be down when
    /// the instance starts), then ends the sessions opened meanwhile with a revoked token: an
    /// instance that had not loaded them yet let such a token in, and kept its session
    /// (outside cluster audit 3, F1). Until then `/readyz` says 503.
    async fn load_until_done(
        &self,
        nats: &async_nats::Client,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        let mut wait = std::time::Duration::from_millis(250);
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.revocations.load(nats),
            )
            .await
            {
                Ok(Ok(n)) => {
                    self.revocations.mark_loaded();
                    let ended = self.registry.kick_revoked(
                        |key| self.revocations.is_revoked_key(key),
                        &Kick {
                            code: CloseCode::Disconnected,
                            room: None,
                            reason: "token revoked".into(),
                        },
                    );
                    debug!(n, ended, "revocations loaded");
                    if ended > 0 {
                        warn!(ended, "sessions using revoked tokens found when the revocations were loaded: ended");
                    }
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "revocations not loaded yet; trying again"),
                Err(_) => {
                    warn!("revocations not loaded yet: NATS did not answer in 10 s; trying again")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            wait = (wait * 2).min(std::time::Duration::from_secs(5));
        }
    }

    /// Applies the disconnects, unsubscribes and revocations other instances publish, until
    /// shutdown. Revocations have a subscription (and a task) of their own: a flood of one
    /// tenant's disconnects or unsubscribes (its backend may publish there, each costing a
    /// pass over the instance's sessions) fills only its own queue, and another tenant's
    /// revocation is not dropped with it (outside cluster audit 112, F2). What a full queue
    /// drops is counted; a revocation dropped makes the stored revocations load again
    /// (`keep_loaded`), a disconnect or unsubscribe dropped does not (review 113, F1).
    pub async fn listen(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(nats) = self.nats.clone() else {
            return;
        };
        tokio::spawn(self.clone().keep_loaded(nats.clone(), shutdown.clone()));
        tokio::spawn(self.clone().answer_stats(nats.clone(), shutdown.clone()));
        let subscribed = async {
            Ok::<_, async_nats::SubscribeError>((
                nats.subscribe("quiver.*.control.revoke").await?,
                nats.subscribe("quiver.*.control.disconnect").await?,
                nats.subscribe("quiver.*.control.unsubscribe").await?,
            ))
        }
        .await;
        let (revocations, disconnects, unsubscribes) = match subscribed {
            Ok(s) => s,
            Err(e) => return warn!(error = %e, "control plane: cannot subscribe"),
        };
        REVOCATIONS_DROPPED.watch(&revocations);
        tokio::spawn(self.clone().apply_from(revocations, shutdown.clone()));
        self.apply_from(futures::stream::select(disconnects, unsubscribes), shutdown)
            .await;
    }

    /// Applies the control messages of `messages` until they end or shutdown.
    async fn apply_from(
        self: Arc<Self>,
        mut messages: impl futures::Stream<Item = async_nats::Message> + Unpin,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        while let Some(message) = tokio::select! {
            message = messages.next() => message,
            _ = shutdown.cancelled() => None,
        } {
            self.on_message(&message);
        }
    }

    /// One control message from NATS: `quiver.<tenant>.control.<action>`.
    fn on_message(&self, message: &async_nats::Message) {
        // The subject's tenant is the authority: a message cannot reach across tenants.
        let mut parts = message.subject.split('.');
        let (tenant, action) = (parts.nth(1).unwrap_or_default(), parts.nth(1));
        let Ok(tenant_id) = TenantId::parse(tenant) else {
            return;
        };
        match action {
            Some("disconnect") => {
                match serde_json::from_slice::<Disconnect>(&message.payload)
                    .map_err(|e| e.to_string())
                    .and_then(|d| d.checked())
                {
                    Ok(mut d) => {
                        d.selector.tenant = tenant.to_owned();
                        let n = self.apply(&d);
                        debug!(tenant, n, "disconnect from the control plane");
                    }
                    Err(e) => refused_control(tenant, "malformed", "malformed disconnect", &e),
                }
            }
            Some("revoke") => match serde_json::from_slice::<Revoke>(&message.payload) {
                Ok(r) if revocation::is_key_of(&r.key, tenant) => {
                    let n = self.apply_revoke(&r, &tenant_id);
                    debug!(tenant, n, "revocation from the control plane");
                }
                // A key for another tenant is ignored: keys start with their tenant.
                Ok(r) if !r.key.starts_with(&format!("{tenant}.")) => {
                    refused_control(tenant, "other_tenant", "revocation for another tenant", &"")
                }
                Ok(_) => refused_control(
                    tenant,
                    "malformed",
                    "malformed revocation",
                    &"a key is the tenant, a dot and a SHA-256 digest in hex",
                ),
                Err(e) => refused_control(tenant, "malformed", "malformed revocation", &e),
            },
            Some("unsubscribe") => {
                match serde_json::from_slice::<FromNode<Unsubscribe>>(&message.payload)
                    .map_err(|e| e.to_string())
                    .and_then(|m| {
                        Ok(FromNode {
                            body: m.body.checked()?,
                            origin: m.origin,
                        })
                    }) {
                    // Applied already where it was asked for; a second time would end a
                    // subscription made again in between.
                    Ok(m) if m.origin == self.node => {}
                    Ok(FromNode { body: mut u, .. }) => {
                        u.selector.tenant = tenant.to_owned();
                        let n = self.apply_unsubscribe(&u);
                        debug!(tenant, n, "unsubscribe from the control plane");
                    }
                    Err(e) => refused_control(tenant, "malformed", "malformed unsubscribe", &e),
                }
            }
            _ => {}
        }
    }
}

/// Control messages refused (malformed, or naming another tenant) logged per second at most,
/// for every tenant together: a tenant's backend may publish on `quiver.<tenant>.control.*`
/// (docs/deployment.md), and its 240,000 refused messages in 3 s were as many WARN lines on
/// every instance (outside tenancy audit 4, F1).
static REFUSED_CONTROL_LOGGED: LogBudget = LogBudget::summarised(
    20,
    Summary::Warn("more control messages were refused than logged"),
);

/// Counts a refused control message (`reason`: [`crate::metrics::CONTROL_REFUSED_REASONS`]),
/// and writes a WARN line for it within [`REFUSED_CONTROL_LOGGED`].
fn refused_control(
    tenant: &str,
    reason: &'static str,
    what: &'static str,
    error: &dyn std::fmt::Display,
) {
    metrics::counter!(crate::metrics::CONTROL_REFUSED, "reason" => reason).increment(1);
    if REFUSED_CONTROL_LOGGED.admit_summarised() {
        warn!(tenant, error = %error, "control plane: {what}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{DropLoads, DROP_LOAD_WAIT_MOST};

    /// Drops every second: loads at 0, 1, 3, 7, 15, 31, then every 30 s; a quiet wait starts
    /// over.
    #[test]
    fn loads_for_dropped_revocations_back_off_while_drops_keep_coming() {
        let start = tokio::time::Instant::now();
        let mut loads = DropLoads::new(start);
        let at = |s: u64| start + Duration::from_secs(s);
        let loaded: Vec<u64> = (0..120).filter(|&s| loads.due(at(s), true)).collect();
        assert_eq!(loaded, [0, 1, 3, 7, 15, 31, 61, 91]);
        assert_eq!(loads.wait, DROP_LOAD_WAIT_MOST);
        // Drops stop: the first look past the wait with none starts over.
        assert!(!loads.due(at(121), false));
        assert!(loads.due(at(122), true));
        assert!(!loads.due(at(122), true), "not twice within the wait");
        assert!(loads.due(at(123), true));
    }
}
