//! Hooks (PROTOCOL.md §11.3): asking the backend about one subscribe or publish, reading its
//! answer, and what a failure decides under the namespace's fail rule.

use std::time::Instant;

use bytes::Bytes;
use quiver_proto::RoomName;

use super::{
    audit, b64, backend_message, json_object, request_id, unb64, Caller, Decision, Envelope, Hook,
    HookConfig, Route, Rpc, RpcError, HOOK_DECISIONS,
};

impl Rpc {
    /// Asks the backend about one subscribe or publish. A backend that cannot be reached or
    /// answers too late is a deny, unless the namespace says `fail_open`. `payload` is the
    /// publication (publish hook only).
    pub async fn decide(
        &self,
        hook: Hook,
        settings: &HookConfig,
        caller: &Caller,
        room: &RoomName,
        payload: Option<&Bytes>,
    ) -> Decision {
        let started = Instant::now();
        let request_id = request_id();
        // Dropped before its end (the session was ended while it waited): audited and counted
        // `cancelled` (regression audit 8, N2: such hooks left no line).
        let pending = audit::OnCancel::new(|| {
            audit::hook_cancelled(hook, caller, room, &request_id, started.elapsed())
        });
        let envelope = Envelope {
            r#type: hook.label(),
            method: None,
            room: Some(room.as_str()),
            payload: payload.map(|p| b64(p)),
            user: &caller.user,
            tenant: caller.tenant.as_str(),
            session: &caller.session,
            request_id: &request_id,
            idempotency_key: None,
        };
        let body = match serde_json::to_vec(&envelope) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                pending.done();
                return Decision::Deny(format!("hook envelope: {e}"));
            }
        };
        let asked = match &self.route {
            Route::Nats(nats) => {
                nats.hook(hook, caller, room, body, &request_id, settings.timeout)
                    .await
            }
            Route::Http(http) => http.hook(&caller.tenant, body, settings.timeout).await,
            Route::None => Err(RpcError::Unavailable("no backend configured".into())),
        };
        // A failure (unreachable, late, nonsense) is labelled as such, then decided by
        // `fail_open`.
        let (decision, outcome) = match asked {
            Ok(body) => match self.read_answer(hook, &body) {
                Ok(decision) => {
                    let outcome = decision.label();
                    (decision, outcome)
                }
                // A publish hook's 2xx answer that cannot be read may carry a replacement the
                // server cannot see (a `null` or escaped `payload`, a broken member beside it):
                // publishing the original would undo a redacting hook, so it refuses under
                // either fail rule (outside audits 31, 32: such answers failed open).
                Err(e) if hook == Hook::Publish => (
                    Decision::Deny(format!("the hook's answer cannot be read: {e}")),
                    "bad_answer",
                ),
                Err(e) => (self.failed(settings, &e), e.label()),
            },
            // The same for any answer that came but cannot be read: a 2xx too long to read
            // (only a replacement makes it that long: outside audit 29, F2), cut off before
            // its end (outside audit 32, F4), a head or a NATS `Quiver-Status` that cannot be
            // read (outside audit 33, N2: "200 OK" with a replacement published the original).
            // Only no answer (unreachable, late) or a status that says failure is left to the
            // fail rule.
            // A head in time and its body late: the backend answered, a subscribe hook's
            // answer too, maybe `{"allow":false}`; not the backend's silence, so no fail rule
            // allows (review 130, R2: a subscribe hook's was left to the fail rule). Not known
            // to be a deny either: a later request may be allowed.
            Err(e @ RpcError::AnswerLate(_)) => (
                Decision::Undecided(format!("the hook's answer cannot be read: {e}")),
                e.label(),
            ),
            Err(e @ (RpcError::AnswerCut(_) | RpcError::BadAnswer(_))) if hook == Hook::Publish => {
                (
                    Decision::Deny(format!("the hook's answer cannot be read: {e}")),
                    "bad_answer",
                )
            }
            Err(e) => {
                let decision = self.failed(settings, &e);
                // A 401/403 is the backend's deny, counted as one.
                (decision, if e.is_refusal() { "deny" } else { e.label() })
            }
        };
        // What reaches the client names no secret of the route, however the backend wrote it.
        let decision = match decision {
            Decision::Deny(reason) => Decision::Deny(self.scrub(reason)),
            Decision::Undecided(reason) => Decision::Undecided(self.scrub(reason)),
            other => other,
        };
        metrics::counter!(HOOK_DECISIONS, "hook" => hook.label(), "outcome" => outcome)
            .increment(1);
        audit::hook(
            hook,
            caller,
            room,
            &request_id,
            outcome,
            &decision,
            started.elapsed(),
        );
        pending.done();
        decision
    }

    /// A hook's answer (PROTOCOL.md §11.3): a JSON object with a boolean `allow`, an optional
    /// string `reason`, and for a publish an optional `payload` (base64). A `payload` member
    /// that is there but not a usable string (`null` included) is a replacement that cannot be
    /// made: a deny. Duplicate members: the last counts (as serde_json reads them).
    fn read_answer(&self, hook: Hook, body: &[u8]) -> Result<Decision, RpcError> {
        let answer: serde_json::Map<String, serde_json::Value> = json_object(body, "hook answer")?;
        let bad = |what: &str| RpcError::BadAnswer(format!("hook answer: {what}"));
        let allow = match answer.get("allow") {
            Some(serde_json::Value::Bool(allow)) => *allow,
            Some(_) => return Err(bad("allow is not a boolean")),
            None => return Err(bad("no allow")),
        };
        let reason = match answer.get("reason") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(reason)) => Some(reason.as_str()),
            Some(_) => return Err(bad("reason is not a string")),
        };
        if !allow {
            // Cleared of the secret before the cut, so no part of it is left at the end.
            return Ok(Decision::Deny(
                reason
                    .map(|r| backend_message(self.scrub(r.to_owned()).as_bytes(), 403))
                    .unwrap_or_else(|| "denied by the backend".into()),
            ));
        }
        let Some(payload) = answer.get("payload").filter(|_| hook == Hook::Publish) else {
            // Only a publish hook may replace; a subscribe hook's payload means nothing.
            return Ok(Decision::Allow);
        };
        let p = match payload {
            serde_json::Value::String(p) => match unb64(p) {
                Ok(p) => p,
                // The backend meant another payload than the original (outside audit 29, F2).
                Err(e) => return Ok(Decision::Deny(format!("the hook's replacement: {e}"))),
            },
            _ => {
                return Ok(Decision::Deny(
                    "the hook's replacement: payload is not a string".into(),
                ))
            }
        };
        if p.len() > self.max_payload {
            // The backend did decide: not this payload. Publishing the original instead (as a
            // failure would in a namespace that fails open) would undo what a redacting hook
            // meant, so this refuses under either fail rule.
            return Ok(Decision::Deny(format!(
                "the hook's replacement payload of {} bytes exceeds max_payload",
                p.len()
            )));
        }
        Ok(Decision::Replace(p))
    }

    /// A hook that could not be decided: deny, unless the namespace fails open. A backend that
    /// answered 401 or 403 (`permission_denied` in §11.2's table) did decide: that is a deny
    /// under either rule, with its message.
    fn failed(&self, settings: &HookConfig, error: &RpcError) -> Decision {
        if error.is_refusal() {
            // Its message is the backend's body (or "backend answered 403").
            return Decision::Deny(error.to_string());
        }
        if let RpcError::OverQuota(_) | RpcError::NotAsked(..) = error {
            // Never sent: the tenant's own requests filled its share, or the caller's request
            // cannot be sent (a user id that cannot go into a NATS header, a publication whose
            // envelope is over NATS's `max_payload`). That is not the backend failing, and
            // `fail_open` must not turn it into an allow (outside audit: one user's many
            // sessions publishing in hooked rooms got past the backend's deny; outside audit
            // 129, F2: " alice" or an 800 KB publication got past it).
            return Decision::Undecided(format!("hook not asked: {error}"));
        }
        if let RpcError::RepliesDropped(..) = error {
            // The backend may have answered, and its answer been dropped here or lost with the
            // connection: not "no answer", so no fail rule allows (outside audit 129, F1:
            // another tenant's flood of its reply subject turned a deny into a fail-open
            // allow; review 130, R1: a flood large enough that nats-server cut the connection
            // did it again).
            return Decision::Undecided(format!("hook failed closed: {error}"));
        }
        if settings.fail_open {
            Decision::Allow
        } else {
            Decision::Undecided(format!("hook failed closed: {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quiver_proto::ErrorCode;

    use super::super::{Lost, RpcConfig};
    use super::*;

    #[test]
    fn hook_answers_are_read_strictly() {
        let rpc = Rpc {
            config: RpcConfig::default(),
            route: Route::None,
            max_payload: 4,
        };
        let read = |hook, body: &str| rpc.read_answer(hook, body.as_bytes());
        assert_eq!(
            read(Hook::Subscribe, r#"{"allow":true}"#),
            Ok(Decision::Allow)
        );
        // Only a publish hook may replace; a subscribe hook's payload means nothing.
        assert_eq!(
            read(Hook::Subscribe, r#"{"allow":true,"payload":"aGk="}"#),
            Ok(Decision::Allow)
        );
        assert_eq!(
            read(Hook::Publish, r#"{"allow":true,"payload":"aGk="}"#),
            Ok(Decision::Replace(Bytes::from_static(b"hi")))
        );
        assert_eq!(
            read(Hook::Publish, r#"{"allow":false}"#),
            Ok(Decision::Deny("denied by the backend".into()))
        );
        // 5 bytes, over max_payload: the backend's answer, a deny whatever the fail rule.
        assert!(matches!(
            read(Hook::Publish, r#"{"allow":true,"payload":"aGVsbG8="}"#),
            Ok(Decision::Deny(m)) if m.contains("exceeds max_payload")
        ));
        // A replacement that cannot be made: the backend meant another payload, a deny
        // whatever the fail rule (the original must not go out in its place).
        // The server's words quote nothing of the answer: not the decoder's "Invalid symbol
        // 33, offset 3".
        assert_eq!(
            read(Hook::Publish, r#"{"allow":true,"payload":"not base64!"}"#),
            Ok(Decision::Deny(
                "the hook's replacement: bad answer from the backend: payload is not base64".into()
            ))
        );
        for unusable in [
            r#"{"allow":true,"payload":"not base64!"}"#,
            r#"{"allow":true,"payload":123}"#,
            r#"{"allow":true,"payload":{"a":1}}"#,
            r#"{"allow":true,"payload":null}"#,
            // The last of two members counts.
            r#"{"allow":true,"payload":"aGk=","payload":null}"#,
            r#"{"allow":true,"\u0070ayload":null}"#,
        ] {
            assert!(
                matches!(read(Hook::Publish, unusable), Ok(Decision::Deny(m)) if m.contains("replacement")),
                "{unusable}"
            );
        }
        // A subscribe hook has no payload to protect.
        assert_eq!(
            read(Hook::Subscribe, r#"{"allow":true,"payload":123}"#),
            Ok(Decision::Allow)
        );
        // Answers that cannot be read at all: errors here; `decide` makes a publish hook's a
        // deny under either rule, a subscribe hook's a failure for the fail rule.
        for bad in [
            r#"{"allowed":true}"#,
            r#"{"allow":"true","payload":"aGk="}"#,
            r#"{"allow":true,"reason":7}"#,
            r#"{"allow":true,"payload":"aGk="} trailing"#,
            "\u{feff}{\"allow\":true,\"payload\":\"aGk=\"}",
            "yes",
            // Arrays: serde would read them as the fields in order.
            "[true]",
            r#"[true, "aGk="]"#,
        ] {
            for hook in [Hook::Publish, Hook::Subscribe] {
                assert!(
                    matches!(read(hook, bad), Err(RpcError::BadAnswer(_))),
                    "{bad}"
                );
            }
        }
        let closed = HookConfig {
            namespace: "a".into(),
            subscribe: true,
            publish: false,
            timeout: Duration::from_secs(1),
            fail_open: false,
        };
        let late = RpcError::Deadline(Duration::from_secs(1));
        assert!(
            matches!(rpc.failed(&closed, &late), Decision::Undecided(m) if m.contains("failed closed"))
        );
        let open = HookConfig {
            fail_open: true,
            ..closed.clone()
        };
        assert_eq!(rpc.failed(&open, &late), Decision::Allow);
        // A backend that answered 401/403 said no: no fail rule turns that into an allow.
        let refused = RpcError::Backend(ErrorCode::PermissionDenied, "not yours".into());
        for settings in [&closed, &open] {
            assert_eq!(
                rpc.failed(settings, &refused),
                Decision::Deny("not yours".into())
            );
        }
        let busy = RpcError::Backend(ErrorCode::RateLimited, "slow down".into());
        assert_eq!(rpc.failed(&open, &busy), Decision::Allow);
        // Never sent for the caller's own reason, or unanswered while replies were dropped
        // here: not the backend failing, so no fail rule allows (outside audit 129, F1, F2).
        let unsendable = RpcError::NotAsked(ErrorCode::BadRequest, "a header".into());
        assert_eq!(unsendable.label(), "not_asked");
        assert_eq!(unsendable.code(), ErrorCode::BadRequest);
        let dropped = RpcError::RepliesDropped(Duration::from_secs(1), Lost::Tenant);
        assert_eq!(dropped.code(), ErrorCode::DeadlineExceeded);
        for settings in [&closed, &open] {
            assert!(
                matches!(rpc.failed(settings, &unsendable), Decision::Undecided(m) if m.starts_with("hook not asked"))
            );
            assert!(
                matches!(rpc.failed(settings, &dropped), Decision::Undecided(m) if m.contains("dropped the tenant's replies"))
            );
            // Lost with the connection, or dropped from other reply subscriptions: denied too
            // (review 130, R1), and a tenant is not told about other tenants (R6).
            for lost in [Lost::Others, Lost::Connection] {
                let e = RpcError::RepliesDropped(Duration::from_secs(1), lost);
                assert_eq!(e.label(), "timeout");
                let Decision::Undecided(m) = rpc.failed(settings, &e) else {
                    panic!("{lost:?} allowed");
                };
                assert!(!m.contains("tenant"), "{m}");
            }
        }
        // A head in time and its body late (HTTP): counted as a timeout (review 130, R2).
        let late = RpcError::AnswerLate("the backend's 200 came in time".into());
        assert_eq!(
            (late.label(), late.code()),
            ("timeout", ErrorCode::DeadlineExceeded)
        );
    }
}
