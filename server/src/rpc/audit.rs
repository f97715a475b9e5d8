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
        latency_ms = took.as_secs_f64() * 1000.0,
        "call"
    );
}

/// A call the session refused before asking anyone (no `call` permission, a bad method name,
/// a payload too large, too many in flight): the attempts an audit most wants to see. The
/// method as the client sent it, cut to 128 bytes (escaped by `tracing` like every field).
pub fn refused_call(caller: &Caller, method: &str, outcome: &str) {
    let mut end = method.len().min(128);
    while !method.is_char_boundary(end) {
        end -= 1;
    }
    info!(
        target: "quiver::audit",
        kind = "call",
        user = caller.user.as_str(),
        tenant = %caller.tenant,
        session = %caller.session,
        method = &method[..end],
        outcome,
        latency_ms = 0.0,
        "call refused"
    );
}

pub fn hook(
    hook: Hook,
    caller: &Caller,
    room: &RoomName,
    request_id: &str,
    outcome: &str,
    decision: &Decision,
    took: Duration,
) {
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
        latency_ms = took.as_secs_f64() * 1000.0,
        "hook"
    );
}
