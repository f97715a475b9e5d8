//! Read-only sessions (SSE, PROTOCOL.md §9.3): the adapter queues `Hello` and one `Subscribe`
//! per room before the session starts, and no other command ever comes. Such a session exists
//! for its subscriptions: once every queued `Subscribe` has run and none of its subscriptions is
//! left (every room was refused, or the last one ended), it ends with a goodbye, rather than
//! hold a session slot and its tenant's session quota with nothing to deliver until its token
//! expires.

use quiver_proto::{CloseCode, ErrorCode};

use super::{Exit, Session};

pub(super) struct ReadOnly {
    /// The adapter's `Subscribe` commands that have not run yet.
    queued: u32,
    /// Why the last subscription to end did, and the backend's reason when the backend ended
    /// it; `None` while none has (so, with no subscription left, every room was refused).
    last_end: Option<(ErrorCode, Option<String>)>,
    /// A `Subscribe` was cut off by the session's own close (its token expired, the backend
    /// disconnected it or revoked its token while the room's hook waited): that close is the
    /// session's end, not "every room was refused" (outside audit 23, F1).
    overtaken: bool,
    /// A room was refused for now (`unavailable`, `quota_exceeded`, `internal`: "retry
    /// later"; a subscribe hook that could not be decided), not for good: why, for the
    /// goodbye's reason.
    refused_for_now: Option<&'static str>,
}

impl ReadOnly {
    pub(super) fn new(subscribes: u32) -> Self {
        Self {
            queued: subscribes,
            last_end: None,
            refused_for_now: None,
            overtaken: false,
        }
    }
}

impl Session {
    /// One of the adapter's commands has run (subscribed, or refused).
    pub(super) fn command_ran(&mut self) {
        if let Some(read_only) = &mut self.read_only {
            read_only.queued = read_only.queued.saturating_sub(1);
        }
    }

    /// One of the adapter's commands was refused with `code`; `for_now` when the refusal
    /// itself says it may not hold later (a hook that could not be decided).
    pub(super) fn command_refused(&mut self, code: ErrorCode, for_now: bool) {
        if let Some(read_only) = &mut self.read_only {
            if for_now {
                // Its code (`permission_denied`) would read as final in the goodbye's reason.
                read_only.refused_for_now = Some("hook_undecided");
            } else if matches!(
                code,
                ErrorCode::Unavailable | ErrorCode::QuotaExceeded | ErrorCode::Internal
            ) {
                read_only.refused_for_now = Some(code.label());
            }
        }
    }

    /// One of the adapter's commands was cut off by the session's close (not answered).
    pub(super) fn command_overtaken(&mut self) {
        if let Some(read_only) = &mut self.read_only {
            read_only.overtaken = true;
        }
    }

    /// A subscription ended without the client asking (it fell behind, or the backend ended
    /// it, `reason` the backend's), with the code its `Unsubscribed` carried.
    pub(super) fn subscription_lost(&mut self, code: ErrorCode, reason: Option<&str>) {
        if let Some(read_only) = &mut self.read_only {
            read_only.last_end = Some((code, reason.map(str::to_owned)));
        }
    }

    /// The close of a read-only session that has nothing left to deliver. A reader that fell
    /// behind may reconnect and resume (`not_reading`), and so may one whose last room the
    /// broker could not go on with (`server_error`); a session whose rooms were all refused,
    /// or whose last room the backend ended, must not come back by itself with the same token
    /// and URL: it would be refused, or resubscribe against the backend's word (`disconnected`).
    pub(super) fn nothing_left(&self) -> Option<Exit> {
        let read_only = self.read_only.as_ref()?;
        if read_only.queued > 0 || !self.subs.is_empty() {
            return None;
        }
        // Its reader left (the rooms' hooks were cut for it, `lifetime.rs`): that is the
        // close, counted as an SSE response's end always is (README, `client_closed`), not as
        // a refusal (outside regression audit 9, R5).
        if self.left_reason().is_some() {
            return Some(Exit::Gone("client_closed"));
        }
        // The close that cut a room's subscribe off comes next (the loop's next turn: the
        // expiry, or the backend's order still queued), with its own code and reason.
        if read_only.overtaken {
            return None;
        }
        Some(match (&read_only.last_end, read_only.refused_for_now) {
            // A room refused for now (a NATS outage, the tenant at its subscription quota)
            // may be taken on a later request: told not to come back, an `EventSource` whose
            // reconnect met a few seconds' outage would stay away for good (outside cluster
            // audit 5, F2).
            (None, Some(why)) => Exit::Close(
                CloseCode::ServerError,
                format!("no subscription: every room was refused, some for now ({why}); reconnect later"),
            ),
            (None, None) => Exit::Close(
                CloseCode::Disconnected,
                "no subscription: every room was refused".into(),
            ),
            (Some((ErrorCode::SlowConsumer, _)), _) => Exit::Close(
                CloseCode::NotReading,
                "no subscription left: the last one fell behind (slow_consumer)".into(),
            ),
            // The codes that say "subscribe again, resuming" (PROTOCOL §5): the broker could
            // not go on reading the room, or lost its history. A new request with the last
            // event id resumes, or hears that recovery failed; told not to come back, the
            // reader would go silent for good (outside delivery audit 2, D1).
            (Some((code @ (ErrorCode::Unavailable | ErrorCode::UnrecoverablePosition), _)), _) => {
                Exit::Close(
                    CloseCode::ServerError,
                    format!(
                        "no subscription left: the last one ended ({}); reconnect and resume",
                        code.label()
                    ),
                )
            }
            // The backend ended the last room: its reason, as for its disconnect (PROTOCOL
            // §9.3; outside audit 23, F2).
            (Some((ErrorCode::Unsubscribed, Some(reason))), _) if !reason.is_empty() => {
                Exit::Close(CloseCode::Disconnected, reason.clone())
            }
            (Some((code, _)), _) => Exit::Close(
                CloseCode::Disconnected,
                format!(
                    "no subscription left: the last one ended ({})",
                    code.label()
                ),
            ),
        })
    }
}
