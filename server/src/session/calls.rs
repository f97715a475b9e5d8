//! `Call` and the backend hooks, on the session's side: the checks a peer can hit (method name,
//! the token's `call` patterns, sizes, calls in flight), then `crate::rpc` does the asking.
//! Calls run as tasks of the session, answered in whatever order the backend answers; they
//! end with the session (a drain waits for them first: `Session::finish_for_drain`). Hooks are awaited in the command that needs them, once.

use bytes::Bytes;
use quiver_proto::{ErrorCode, Event, RoomName};
use tracing::warn;

use super::publishing::Publish;
use super::{Refusal, Session};
use crate::hub::RoomKey;
use crate::rpc::{CallRequest, Caller, Decision, Hook, Rpc, MAX_IDEMPOTENCY_KEY};

/// What a finished call task hands back to the session.
pub(super) type CallDone = (u32, Result<Bytes, crate::rpc::RpcError>);

impl Session {
    fn caller(&self) -> Caller {
        Caller {
            user: self.grant.user.clone(),
            tenant: self.grant.tenant.clone(),
            session: self.id.clone(),
        }
    }

    /// Checks a `Call`, has it admitted, and starts it; the answer comes later through
    /// [`Session::call_done`]. A refusal here is an audit line too (the backend's answers, and
    /// the tenant's share being out, are logged by `rpc`).
    pub(super) fn call(
        &mut self,
        id: u32,
        method: &str,
        payload: Bytes,
        timeout_ms: u32,
        idempotency_key: String,
    ) -> Result<Option<Event>, Refusal> {
        let req = self
            .check_call(method, payload, timeout_ms, idempotency_key)
            .inspect_err(|refusal| {
                crate::rpc::audit::refused_call(&self.caller(), method, refusal.0.label());
            })?;
        let rpc = self.shared.rpc.clone();
        let caller = self.caller();
        let admitted = rpc
            .admit_call(&caller, method)
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        let call = rpc.call(caller, req, admitted);
        self.calls.spawn(async move { (id, call.await) });
        Ok(None)
    }

    /// A client that left: its calls run on, answered to nobody, as every command it wrote
    /// before leaving is carried out (PROTOCOL.md §3), until `timeouts.reply` after it was found
    /// gone, its token's expiry, or a close order (an API disconnect, a revocation: review 99,
    /// F3), whichever is first; those still waiting then are dropped (audited `cancelled`). They
    /// were cut off at once, and those whose task had not yet run were never sent nor audited
    /// (outside audit 95, F1). `None` when no call waits.
    pub(super) fn calls_of_departed(&mut self, reason: &'static str) -> Option<super::Leftover> {
        if self.calls.is_empty() {
            return None;
        }
        let until = self.leftover_until(reason).min(self.expiry());
        let mut calls = std::mem::take(&mut self.calls);
        let closing = self.closing.take();
        Some(Box::pin(async move {
            let ordered = async {
                match &closing {
                    Some(closing) => closing.ordered().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = async { while calls.join_next().await.is_some() {} } => {}
                () = tokio::time::sleep_until(until) => {}
                () = ordered => {}
            }
            // Dropped: the calls still waiting are aborted, each audited `cancelled`.
            drop(calls);
        }))
    }

    /// What the session checks of a `Call` before anyone is asked (PROTOCOL.md §11.1), in
    /// order: the method's name, the token's `call` patterns, the payload's size, the key, and
    /// the session's calls waiting.
    fn check_call(
        &self,
        method: &str,
        payload: Bytes,
        timeout_ms: u32,
        idempotency_key: String,
    ) -> Result<CallRequest, Refusal> {
        let method = RoomName::parse(method).map_err(|e| {
            Refusal::new(ErrorCode::BadRequest, format!("invalid method name: {e}"))
        })?;
        if !self.grant.may_call(&method) {
            return Err(Refusal::new(
                ErrorCode::PermissionDenied,
                format!("no call permission for method {method}"),
            ));
        }
        let max = self.shared.config.limits.max_payload as usize;
        if payload.len() > max {
            return Err(Refusal::new(
                ErrorCode::PayloadTooLarge,
                format!("payload of {} bytes exceeds {max}", payload.len()),
            ));
        }
        // Spaces at either end are refused too: a NATS backend's header parser trims them, so
        // " k" would meet "k" there (outside tenancy audit 3).
        if idempotency_key.len() > MAX_IDEMPOTENCY_KEY
            || !crate::rpc::header_safe(&idempotency_key)
            || idempotency_key.trim() != idempotency_key
        {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "idempotency key must be at most {MAX_IDEMPOTENCY_KEY} bytes without control characters, line separators or spaces at either end"
                ),
            ));
        }
        let rpc = &self.shared.rpc;
        if self.calls.len() >= rpc.max_in_flight() {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "{} calls are already waiting for the backend",
                    rpc.max_in_flight()
                ),
            ));
        }
        Ok(CallRequest {
            method,
            payload,
            deadline: rpc.deadline(timeout_ms),
            idempotency_key: (!idempotency_key.is_empty()).then_some(idempotency_key),
        })
    }

    /// Answers a finished call.
    pub(super) async fn call_done(&mut self, done: Result<CallDone, tokio::task::JoinError>) {
        match done {
            Ok((id, Ok(payload))) => self.reply(id, Event::Reply { payload }).await,
            Ok((id, Err(e))) => self.refuse(id, Refusal::new(e.code(), e.to_string())).await,
            // Only a panic gets here (the tasks are aborted only with the session).
            Err(e) => {
                warn!(session = %self.id, tenant = %self.grant.tenant, error = %e, "call task failed")
            }
        }
    }

    /// Asks the room namespace's hook, if it has one: `Ok(None)` to go on unchanged,
    /// `Ok(Some(payload))` to publish that payload instead, `Err` (permission_denied with the
    /// backend's reason) to refuse.
    pub(super) async fn ask_hook(
        &self,
        hook: Hook,
        room: &RoomName,
        payload: Option<&Bytes>,
    ) -> Result<Option<Bytes>, Refusal> {
        // Most rooms have no hook: answered before any of the waits below is set up (a timer
        // and two watches per command were about 4 % of the server's CPU in many rooms).
        let Some(settings) = self.shared.rpc.hook(hook, room) else {
            return Ok(None);
        };
        // A session ordered closed (the API's disconnect, a revocation) while its hook waits
        // (for a place, or for the backend) takes the hook with it: dropped, it leaves the
        // queue unsent or its place is freed, and nothing is published or subscribed for a
        // user the operator has just put out (outside regression audit 7, F4: the kicked
        // user's publication went out 3 s after the API said disconnected). A client that
        // leaves does not: what it wrote before leaving is carried out (PROTOCOL.md §5; the
        // first version dropped it too, and a WebSocket client's last Publish before its close
        // was lost, regression audit 8, N4).
        let caller = self.caller();
        let closing = async {
            match &self.closing {
                Some(closing) => closing.ordered().await,
                None => std::future::pending().await,
            }
        };
        let expiry = self.expiry();
        // The backend's unsubscribe of a room stops its deliveries at once, not after the hook
        // (outside regression audit 8, N1: deliveries went on for up to twice the hook's
        // timeout); the order itself is carried out after the command, as it arrived.
        let unsubscribed = async {
            match &self.closing {
                Some(closing) => match closing
                    .rooms_ordered(|room| self.stop_deliveries(room))
                    .await {},
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            // Not answered: the goodbye, which follows at once, is the command's answer
            // (PROTOCOL §3, as for a waiting `Call`; an `Error` read as the backend's refusal,
            // outside conformance audit 4, C4-2).
            _ = closing => Err(Refusal::overtaken("the session was ended while its hook waited")),
            // Nor does a token that expires meanwhile let the command through: the session
            // closes `token_expired` next (outside conformance audit 4, C4-3).
            _ = tokio::time::sleep_until(expiry) => Err(Refusal::overtaken("the token expired while its hook waited")),
            // Nor past the time a departed client's commands get (`lifetime.rs`).
            _ = super::lifetime::leftover_over(&self.left, &self.link.peer, self.leftover()) => Err(Refusal::overtaken("the client left, and the time its commands get after it was over")),
            decided = decide(&self.shared.rpc, hook, settings, &caller, room, payload) => decided,
            never = unsubscribed => never,
        }
    }

    /// A datagram publication into a room with a publish hook, as a future the session's
    /// publish queue runs (`Publishing::submit_datagram`): the hook, then the quota, then the
    /// broker, away from the command loop, so a slow backend never delays a command
    /// (PROTOCOL.md §10). A refusal is the datagram's drop reason.
    pub(super) fn hooked_datagram(&self, key: RoomKey, payload: Bytes) -> Publish {
        let rpc = self.shared.rpc.clone();
        let caller = self.caller();
        let quota = self.quota.as_ref().map(|q| q.publisher());
        let broker = self.shared.broker.clone();
        Box::pin(async move {
            let payload = ask(&rpc, Hook::Publish, &caller, &key.room, Some(&payload))
                .await?
                .unwrap_or(payload);
            if let Some(quota) = quota {
                quota
                    .publish(payload.len())
                    .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
            }
            Ok(broker.publish(key, payload).await?)
        })
    }
}

/// Asks the room namespace's `hook`, if it has one (see [`Session::ask_hook`]).
async fn ask(
    rpc: &Rpc,
    hook: Hook,
    caller: &Caller,
    room: &RoomName,
    payload: Option<&Bytes>,
) -> Result<Option<Bytes>, Refusal> {
    match rpc.hook(hook, room) {
        Some(settings) => decide(rpc, hook, settings, caller, room, payload).await,
        None => Ok(None),
    }
}

/// The backend's answer to one hook, as the session carries it out.
async fn decide(
    rpc: &Rpc,
    hook: Hook,
    settings: &crate::rpc::HookConfig,
    caller: &Caller,
    room: &RoomName,
    payload: Option<&Bytes>,
) -> Result<Option<Bytes>, Refusal> {
    match rpc.decide(hook, settings, caller, room, payload).await {
        Decision::Allow => Ok(None),
        Decision::Replace(payload) => Ok(Some(payload)),
        Decision::Deny(reason) => Err(Refusal::new(ErrorCode::PermissionDenied, reason)),
        Decision::Undecided(reason) => Err(Refusal::for_now(ErrorCode::PermissionDenied, reason)),
    }
}
