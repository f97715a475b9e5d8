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
                if let Some(live) = self.live.as_mut() {
                    live.send(Command::Refresh { token }, Some(Pending::Refresh));
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

/// How long from now (`now_unix`) to wait before refreshing a token that expires at `exp`.
pub(crate) fn refresh_delay(exp: u64, now_unix: Duration, ahead: Duration) -> Duration {
    let remaining = Duration::from_secs(exp).saturating_sub(now_unix);
    let lead = ahead.min(remaining / 2);
    remaining - lead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_expiry_no_instant_can_hold_needs_no_refresh() {
        let ahead = Duration::from_secs(30);
        assert!(refresh_deadline(Some(u64::MAX), ahead).is_none());
        assert!(refresh_deadline(Some(10_000_000_000_000_000_000), ahead).is_none());
        assert!(refresh_deadline(Some(unix_now().as_secs() + 3600), ahead).is_some());
        let two_centuries = unix_now().as_secs() + 200 * 365 * 86_400;
        assert!(refresh_deadline(Some(two_centuries), ahead).is_none());
    }

    #[test]
    pub(super) fn refresh_delay_leads_expiry() {
        let now = Duration::from_secs(1_000_000);
        let ahead = Duration::from_secs(30);
        // One hour left: refresh 30 s before expiry.
        assert_eq!(
            refresh_delay(1_000_000 + 3600, now, ahead),
            Duration::from_secs(3570)
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
