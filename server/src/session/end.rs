//! How a session ended, as its adapter sees it ([`End`]): the close to make, how long a client
//! still reading what was queued is waited for, when a close is cut short, and what runs on
//! once the transport is closed before the session stops counting. Also [`run_session`], a
//! session's set-up and teardown around `drive` (its place, registration, goodbye, closing
//! line), which makes the `End`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use quiver_proto::{encode_event, CloseCode, Event, ServerFrame};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::meter::Meter;
use super::publishing::Publishing;
use super::{lifetime, read_only, session_id, Exit, Link, Session, Slot, GOODBYE_GRACE};
use crate::auth::Grant;
use crate::cork;
use crate::metrics as m;
use crate::server::Shared;
use crate::transport::{queue, Inbound};

/// What a session still carries out once its transport is closed: a departed client's calls.
pub(crate) type Leftover = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How a session ended, for the adapter: `close` is set when the server ends it (the goodbye
/// frame is already queued on `out`; the adapter closes its transport with the same code).
pub struct End {
    pub close: Option<(CloseCode, String)>,
    /// The `reason` label of the closed-sessions metric.
    pub reason: &'static str,
    /// The session counts as open (gauge, drain, `max_sessions`, its tenant's `max_sessions`)
    /// until the adapter drops this, after its transport is closed: a drain must not end
    /// before the goodbye is out, and a tenant whose sessions end and never close cannot hold
    /// more places than its quota (outside bounds audit 4, F3).
    pub(super) slot: Slot,
    /// The session was refused (over its tenant's quota): it holds no place while it closes,
    /// and the adapter closes it within `server::CLOSE_GRACE`, as a refused CONNECT or upgrade. A
    /// tenant at its quota whose refused upgrades each held a server-wide place for the
    /// WebSocket close's 5 s filled `limits.max_sessions` (outside bounds audit 4, F3).
    pub refused: bool,
    /// How far the adapter's writer has got with the session's outgoing queue.
    pub(super) written: queue::Progress<Bytes>,
    /// Until when a client that reads slowly but steadily is waited for at the close: the
    /// session's end plus `timeouts.reply`, one deadline for the goodbye's queueing and the
    /// adapter's writer together (review 90, F1: each had its own). `None` for a refusal (only
    /// its goodbye is queued) and for `not_reading` (it did not read; what 3010 leaves
    /// unanswered may have been carried out anyway): each stage gets its grace alone.
    pub(super) readers_until: Option<tokio::time::Instant>,
    /// A departed client's calls still running (`Session::calls_of_departed`). In a mutex
    /// only so that `End` is `Sync` (adapters hold `&End` across awaits); taken once.
    pub(super) leftover: std::sync::Mutex<Option<Leftover>>,
}

impl End {
    /// The adapter has closed the transport: what the session still carries out for a client
    /// that left (its calls, bounded) runs, and then the session stops counting (its slot
    /// goes). So a client that leaves with calls waiting has its connection closed at once, as
    /// PROTOCOL.md §1 says of a FIN, and still holds its place among `max_sessions` while they
    /// run (review 99, F4: they ran before the close).
    pub async fn release(self) {
        let leftover = self
            .leftover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(leftover) = leftover {
            leftover.await;
        }
        // Only now does the session stop counting (a drain waits for it).
        drop(self.slot);
    }

    /// Waits for `closing` (the goodbye's queueing; the adapter's writer finishing the queue,
    /// the goodbye last) as a reply waits in a drain: `grace`, and on while the client takes
    /// something of its queue (a frame, over WebTransport part of one) in every grace, up to
    /// [`Self::readers_until`]. The replies queued before the goodbye are of commands carried
    /// out: a slow but steady reader gets them (review 89, F8: one with a large last reply was
    /// cut off after the grace).
    pub async fn wait_for_reader<F: std::future::Future>(
        &self,
        closing: F,
        grace: Duration,
    ) -> Option<F::Output> {
        self.written
            .while_moving(closing, grace, self.wait_limit(grace))
            .await
    }

    /// Resolves when the adapter's close should be cut short: a refused session at once, any
    /// other once the server is stopping (a drain begun before the close or during it); then a
    /// [`crate::server::CLOSE_GRACE`] in which the client takes nothing of its queue. The one
    /// rule for both adapters (review 90, F9: WebTransport chose its grace when its close
    /// began, so a drain begun during a close waited the full 2 s there).
    pub async fn cut_short(&self, stopping: &CancellationToken) {
        if !self.refused {
            stopping.cancelled().await;
        }
        let _ = self
            .wait_for_reader(std::future::pending::<()>(), crate::server::CLOSE_GRACE)
            .await;
    }

    /// When a wait of [`Self::wait_for_reader`] with `grace` begun now gives up at the latest.
    fn wait_limit(&self, grace: Duration) -> tokio::time::Instant {
        let floor = tokio::time::Instant::now() + grace;
        self.readers_until.map_or(floor, |until| until.max(floor))
    }
}

pub(super) async fn run_session(
    shared: Arc<Shared>,
    // Boxed from the adapter down: a grant by value (152 bytes) is kept once per async
    // function it passes through, in the task every idle session holds (issue 14's memory).
    grant: Box<Grant>,
    link: Link,
    inbound: queue::Receiver<Inbound>,
    out: queue::Sender<Bytes>,
    read_only: Option<read_only::ReadOnly>,
) -> End {
    let id = session_id(rand::random());
    let link_transport = link.transport;
    let remote = link.remote;
    let transport = link.transport.label();
    let opened = Instant::now();
    let mut slot = Slot::open(shared.clone(), transport);
    let tenant = grant.tenant.to_string();
    let quota = match slot.over_limit() {
        Some(limit) => {
            // Counted as the refusal before a session is (the 429): `capacity`.
            crate::transport::count_refused(link_transport, "capacity");
            Err(crate::quota::QuotaError::ServerSessions { limit })
        }
        None => shared.tenant_quotas.open_session(&grant.tenant),
    };
    // A session over its tenant's quota is a refusal, logged within the refusals' budget
    // (`transport::log_refusal`), not two lines of its own: a client can be refused thousands
    // of times a second (outside tenancy audit 3: 7,800 lines a second from one client).
    let logged = quota.is_ok();
    if logged {
        // The reconnect proxy remembers admitted sessions only: refused ones (over capacity or
        // the tenant's quota) filled its map for every tenant (audit 134, F1).
        shared.recent_users.opened(&tenant, &grant.user, transport);
        // `user` is the token's `sub`, any string: as a `&str` field the text format quotes and
        // escapes it (a newline in it cannot forge a log line) and JSON keeps it a plain string.
        info!(session = %id, user = grant.user.as_str(), tenant = %grant.tenant, remote = %link.remote, transport, "session opened");
    }

    let meter = Meter::new(&shared.config.limits);
    let expiry = lifetime::token_expiry(&grant, shared.config.auth.leeway);
    let mut session = Session {
        shared: shared.clone(),
        link,
        id: id.clone(),
        grant,
        out,
        subs: HashMap::new(),
        joining: None,
        ended: None,
        meter,
        recheck_due: false,
        publishing: Publishing::default(),
        datagram_lane: Publishing::default(),
        held: cork::Held::default(),
        quota: None,
        stalled: false,
        drain_until: None,
        tally: Arc::default(),
        queue_budget: crate::delivery_queue::Budget::new(shared.config.limits.session_queue_bytes),
        replay_turns: None,
        calls: tokio::task::JoinSet::new(),
        last_wire_id: 0,
        read_only,
        closing: None,
        left: std::sync::OnceLock::new(),
        expiry,
    };
    let (registered, mut kicks) = shared.registry.register(
        &id,
        &session.grant.tenant,
        &session.grant.user,
        session.grant.jti.as_deref(),
    );
    // The token was checked before the session could be ended: a revocation in between ended
    // nothing, and a WebTransport client can make that gap last the handshake's 10 s by not
    // taking the CONNECT's answer (outside audit 66, F2). Checked again now that a revocation
    // finds the session.
    let revoked = session
        .grant
        .jti
        .as_deref()
        .is_some_and(|jti| shared.revocations.is_revoked(&session.grant.tenant, jti));
    let refused = quota.is_err();
    let exit = match quota {
        Ok(_) if revoked => Exit::Close(CloseCode::Disconnected, "token revoked".into()),
        Ok(quota) => {
            session.quota = Some(quota);
            // A bug that panics while serving one session must still free what the session
            // holds (subscriptions, presence, quota: `release` below) and say goodbye.
            match AssertUnwindSafe(session.drive(inbound, &mut kicks))
                .catch_unwind()
                .await
            {
                Ok(exit) => exit,
                Err(_) => {
                    tracing::error!(session = %id, "session task panicked; closing it");
                    Exit::Close(CloseCode::ServerError, "internal error".into())
                }
            }
        }
        Err(e) => {
            crate::transport::log_refusal_of(
                link_transport,
                &remote,
                &e,
                &session.grant.tenant,
                &session.grant.user,
            );
            Exit::Close(CloseCode::OverQuota, e.to_string())
        }
    };
    // Boxed, like the command handlers in `drive`: run only once, and inline they would size
    // every idle session's task.
    Box::pin(session.release()).await;
    // A departed client's calls run on once its transport is closed (`End::release`), the
    // session still registered and taking orders (a `Kicks` dropped refuses them), so a close
    // order still cuts them. Otherwise the session takes no more orders from here on.
    let calls = match &exit {
        Exit::Gone(reason) => session.calls_of_departed(reason),
        _ => None,
    };
    let leftover = match calls {
        Some(calls) => Some(Box::pin(async move {
            let _held = (registered, kicks);
            calls.await;
        }) as Leftover),
        None => {
            drop(kicks);
            None
        }
    };
    slot.tenant = session.quota.take();
    if refused {
        slot.release();
    }
    let written = session.out.watch();
    let not_reading = matches!(exit, Exit::Close(CloseCode::NotReading, _));
    let readers_until = (!refused && !not_reading)
        .then(|| tokio::time::Instant::now() + session.shared.config.timeouts.reply);
    let (close, reason, goodbye) = match exit {
        Exit::Gone(reason) => (None, reason, false),
        Exit::Cut(code, reason) => (Some((code, reason)), code.label(), false),
        Exit::Close(code, reason) => (Some((code, reason)), code.label(), true),
    };
    let end = End {
        close,
        reason,
        slot,
        refused,
        written,
        readers_until,
        leftover: std::sync::Mutex::new(leftover),
    };
    if let Some((code, reason)) = end.close.as_ref().filter(|_| goodbye) {
        let goodbye = encode_event(&ServerFrame {
            id: 0,
            event: Event::Goodbye {
                code: code.as_u16(),
                reason: reason.clone(),
                reconnect: code.reconnect(),
            },
        });
        // Queued behind everything already queued, waiting as a reply does in a drain: one
        // grace for a client that reads nothing (the transport's close says the code then), on
        // while one reads slowly but steadily, so what is queued before it reaches such a client
        // too (review 89, F8). Boxed: inline it would size every idle session's task.
        let queued = end.wait_for_reader(session.out.send(goodbye), GOODBYE_GRACE);
        let _ = Box::pin(queued).await;
    }
    let user = std::mem::take(&mut session.grant.user);
    let (bytes_out, messages_out, messages_in) = session.tally.totals();
    drop(session);
    if logged {
        shared.recent_users.closed(&tenant, &user);
    }
    metrics::counter!(m::SESSIONS_CLOSED, "transport" => transport, "reason" => end.reason)
        .increment(1);
    if !logged {
        return end;
    }
    // One line per session, for log pipelines: who, how, how long, why.
    info!(
        session = %id,
        tenant,
        user,
        transport,
        duration_ms = opened.elapsed().as_millis() as u64,
        reason = end.reason,
        bytes_out,
        messages_out,
        messages_in,
        "session closed"
    );
    end
}
