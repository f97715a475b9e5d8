//! The audit log: one structured line per call and per hooked command, on the `quiver::audit`
//! target (filter it with `RUST_LOG=quiver::audit=info`): who (user, tenant, session), what
//! (method or room), the outcome and the latency. Payloads are never logged.

use std::time::Duration;

use quiver_proto::RoomName;
use tracing::info;

use super::{CallRequest, Caller, Decision, Hook};

pub fn call(caller: &Caller, req: &CallRequest, request_id: &str, outcome: &str, took: Duration) {
    info!(
        target: "quiver::audit",
        kind = "call",
        user = caller.user.as_str(),
        tenant = %caller.tenant,
        session = %caller.session,
        method = %req.method,
        request_id,
        idempotency_key = req.idempotency_key.as_deref().unwrap_or(""),
        outcome,
        latency_ms = latency_ms(took),
        "call"
    );
}

/// Runs its closure (an audit line for something cancelled) when dropped before
/// [`OnCancel::done`]: a hook whose session ended while it waited is dropped with its future,
/// and the backend may have had it, so it is audited as `cancelled`.
pub struct OnCancel<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnCancel<F> {
    pub fn new(cancelled: F) -> Self {
        Self(Some(cancelled))
    }

    /// It ended and was audited.
    pub fn done(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnCancel<F> {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled();
        }
    }
}

/// A call from its start: audited with its outcome by [`PendingCall::done`], or, dropped before
/// that (its session ended while it waited, or before its task first ran), counted and audited
/// `cancelled`: the backend may have had it.
pub struct PendingCall {
    pub caller: Caller,
    pub req: CallRequest,
    pub request_id: String,
    started: std::time::Instant,
    audited: bool,
}

impl PendingCall {
    pub fn new(caller: Caller, req: CallRequest) -> Self {
        Self {
            caller,
            req,
            request_id: super::request_id(),
            started: std::time::Instant::now(),
            audited: false,
        }
    }

    /// It ended with `outcome` (counted by the caller).
    pub fn done(mut self, outcome: &str) {
        self.audited = true;
        call(
            &self.caller,
            &self.req,
            &self.request_id,
            outcome,
            self.started.elapsed(),
        );
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.audited {
            metrics::counter!(super::RPC_CALLS, "outcome" => "cancelled").increment(1);
            call(
                &self.caller,
                &self.req,
                &self.request_id,
                "cancelled",
                self.started.elapsed(),
            );
        }
    }
}

/// A hook dropped before its decision (see [`OnCancel`]), counted and audited.
pub fn hook_cancelled(
    which: Hook,
    caller: &Caller,
    room: &RoomName,
    request_id: &str,
    took: Duration,
) {
    metrics::counter!(super::HOOK_DECISIONS, "hook" => which.label(), "outcome" => "cancelled")
        .increment(1);
    hook(
        which,
        caller,
        room,
        request_id,
        "cancelled",
        &Decision::Deny("the session was ended".into()),
        took,
    );
}

/// Refused calls logged per second at most (`crate::log_budget`): a client refused for every
/// call it sends (no `call` permission needed) made 3,040 audit lines a second from 16 sessions
/// within their command rate (outside tenancy audit 3), enough to push every tenant's audit
/// lines out of journald's rate limit. `quiver_commands_refused_total` counts every one.
static REFUSED_CALLS_LOGGED: crate::log_budget::LogBudget =
    crate::log_budget::LogBudget::per_second(20);

/// A call the session refused before asking anyone (no `call` permission, a bad method name,
/// a payload too large, too many in flight): the attempts an audit most wants to see, within
/// [`REFUSED_CALLS_LOGGED`] (`not_logged`: how many were left out before this one). The
/// method as the client sent it, cut to 128 bytes (escaped by `tracing` like every field).
pub fn refused_call(caller: &Caller, method: &str, outcome: &str) {
    let Some(not_logged) = REFUSED_CALLS_LOGGED.admit() else {
        return;
    };
    info!(
        target: "quiver::audit",
        kind = "call",
        user = caller.user.as_str(),
        tenant = %caller.tenant,
        session = %caller.session,
        method = crate::text::prefix(method, 128),
        outcome,
        latency_ms = 0.0,
        not_logged,
        "call refused"
    );
}

/// Hooks never sent because the tenant's hooks held every place it may use (`over_quota`), or
/// because the caller's request cannot be sent (`not_asked`), logged per second at most, like
/// refused calls: nothing reached the backend, and a tenant's users holding its places made an
/// audit line per command (outside bounds audit 3, F3: 1,340 lines in 10 s).
/// `quiver_hook_decisions_total` counts every one.
static UNSENT_HOOKS_LOGGED: crate::log_budget::LogBudget =
    crate::log_budget::LogBudget::per_second(20);

/// A hook's decision, as the backend made it or as its failure was decided; the ones never
/// sent within [`UNSENT_HOOKS_LOGGED`] (`not_logged`: how many were left out before this one).
pub fn hook(
    hook: Hook,
    caller: &Caller,
    room: &RoomName,
    request_id: &str,
    outcome: &str,
    decision: &Decision,
    took: Duration,
) {
    let not_logged = if matches!(outcome, "over_quota" | "not_asked") {
        let Some(not_logged) = UNSENT_HOOKS_LOGGED.admit() else {
            return;
        };
        not_logged
    } else {
        0
    };
    info!(
        target: "quiver::audit",
        kind = hook.label(),
        user = caller.user.as_str(),
        tenant = %caller.tenant,
        session = %caller.session,
        room = %room,
        request_id,
        outcome,
        decision = decision.label(),
        latency_ms = latency_ms(took),
        not_logged,
        "hook"
    );
}

/// A latency in milliseconds to the microsecond (`0.254`, not `0.25355799999999995`).
pub(super) fn latency_ms(took: std::time::Duration) -> f64 {
    took.as_micros() as f64 / 1000.0
}
