//! In-band token refresh: a fresh token from the provider ahead of `Welcome.expires_at`, sent as
//! `Refresh`; failures retried with backoff until the token expires.

use super::*;

impl Actor {
    pub(super) fn start_refresh(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.refresh_at = None;
        let provider = self.cfg.token.clone();
        let tx = self.ev_tx.clone();
        let epoch = self.epoch;
        // Bounded as at connect: a provider that hangs is a failed one, retried with backoff
        // while the token lasts (outside audit 45, 7: it was waited for until the session
        // expired).
        let limit = self.cfg.connect_timeout;
        live.tasks.spawn(async move {
            let res = tokio::time::timeout(limit, provider())
                .await
                .unwrap_or_else(|_| Err(format!("no token within {limit:?}")));
            let _ = tx.send((epoch, ConnEvent::RefreshToken(res)));
        });
    }

    pub(super) fn on_refresh_token(&mut self, res: Result<String, String>) {
        match res {
            Ok(token) => {
                let Some(live) = self.live.as_mut() else {
                    return;
                };
                // A token too large for the session is a failed refresh, not a closed session.
                if let Err(e) = live.send(Command::Refresh { token }, Some(Pending::Refresh)) {
                    tracing::warn!(error = %e, "token refresh not sent");
                    self.retry_refresh();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "token provider failed during refresh");
                self.retry_refresh();
            }
        }
    }

    pub(super) fn retry_refresh(&mut self) {
        let backoff = self.cfg.backoff;
        if let Some(live) = self.live.as_mut() {
            let delay = backoff
                .delay(live.refresh_failures)
                .max(Duration::from_secs(1));
            live.refresh_failures = live.refresh_failures.saturating_add(1);
            live.refresh_at = Some(tokio::time::Instant::now() + delay);
        }
    }
}

/// When to refresh a token expiring at `expires_at` (Unix seconds): `min(ahead, remaining / 2)`
/// before expiry.
pub(super) fn refresh_deadline(
    expires_at: Option<u64>,
    ahead: Duration,
) -> Option<tokio::time::Instant> {
    let delay = refresh_delay(expires_at?, unix_now(), ahead);
    // An expiry past what an `Instant` can hold (a server passes on any `exp`, `u64::MAX`
    // included) never comes: no refresh. Adding it panicked, in `connect` or, on a reconnect,
    // in the connection task (outside audit 68, 1). Nor does one a century away: tokio's timer
    // adds up to a millisecond of its own to a deadline, and one within that of the largest
    // `Instant` would still panic (outside audit 73).
    if delay > NEVER {
        return None;
    }
    tokio::time::Instant::now().checked_add(delay)
}

/// A refresh this far off is never scheduled.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The wall clock as a duration since the Unix epoch (zero before it).
pub(super) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// How long from now (`now_unix`) to wait before refreshing a token that expires at `exp`: the
/// lead is `ahead` or a tenth of the time left, whichever is larger (PROTOCOL.md §6: a margin
/// for clock skew and for fetching the token, "a minute, or a fraction of the token's
/// lifetime, whichever is larger"; outside audit 115, F10), and at most half of it.
pub(crate) fn refresh_delay(exp: u64, now_unix: Duration, ahead: Duration) -> Duration {
    let remaining = Duration::from_secs(exp).saturating_sub(now_unix);
    let lead = ahead.max(remaining / 10).min(remaining / 2);
    remaining - lead
}

/// Whether a `Refreshed` that moved the expiry from `before` to `after` is a refresh done, its
/// successor scheduled by the new expiry; otherwise it is retried with backoff. An expiry that
/// did not move, or one due again at once (still past), is retried with backoff, never in a
/// loop (outside audits: 190 `Refresh` a second against a server that kept the expiry, 667
/// against one that moved it a second, still past; each a call of the token provider). One
/// moved *earlier* is done (PROTOCOL.md §6: a `Refresh` may shorten the session): taken as a
/// failure, it was retried every 1-5 s for as long as the provider gave that token (outside
/// audit 115, F4).
pub(super) fn refresh_done(
    before: Option<u64>,
    after: Option<u64>,
    now_unix: Duration,
    ahead: Duration,
) -> bool {
    let moved = match (before, after) {
        (Some(before), Some(after)) => after != before,
        _ => true,
    };
    let due_at_once =
        after.is_some_and(|exp| refresh_delay(exp, now_unix, ahead) < Duration::from_secs(1));
    moved && !due_at_once
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_expiry_no_instant_can_hold_needs_no_refresh() {
        let ahead = Duration::from_secs(60);
        assert!(refresh_deadline(Some(u64::MAX), ahead).is_none());
        assert!(refresh_deadline(Some(10_000_000_000_000_000_000), ahead).is_none());
        assert!(refresh_deadline(Some(unix_now().as_secs() + 3600), ahead).is_some());
        let two_centuries = unix_now().as_secs() + 200 * 365 * 86_400;
        assert!(refresh_deadline(Some(two_centuries), ahead).is_none());
    }

    /// A `Refreshed` that shortens the session is a refresh done; one that leaves the expiry
    /// where it was, or due at once, is not.
    #[test]
    fn a_shortened_expiry_is_a_refresh_done() {
        let now = Duration::from_secs(1_000_000);
        let ahead = Duration::from_secs(60);
        let (hour, half) = (1_000_000 + 3600, 1_000_000 + 1800);
        assert!(
            refresh_done(Some(hour), Some(half), now, ahead),
            "shortened"
        );
        assert!(refresh_done(Some(half), Some(hour), now, ahead), "extended");
        assert!(
            !refresh_done(Some(half), Some(half), now, ahead),
            "unchanged"
        );
        assert!(!refresh_done(Some(hour), Some(999_000), now, ahead), "past");
        assert!(refresh_done(Some(hour), None, now, ahead), "never expires");
    }

    #[test]
    pub(super) fn refresh_delay_leads_expiry() {
        let now = Duration::from_secs(1_000_000);
        let ahead = Duration::from_secs(60);
        // Ten minutes left: refresh a minute before expiry.
        assert_eq!(
            refresh_delay(1_000_000 + 600, now, ahead),
            Duration::from_secs(540)
        );
        // One hour left: a tenth of it, 6 minutes, is the larger margin.
        assert_eq!(
            refresh_delay(1_000_000 + 3600, now, ahead),
            Duration::from_secs(3240)
        );
        // 20 s left: refresh halfway.
        assert_eq!(
            refresh_delay(1_000_000 + 20, now, ahead),
            Duration::from_secs(10)
        );
        // Already expired: now.
        assert_eq!(refresh_delay(999_000, now, ahead), Duration::ZERO);
    }
}
