//! When a session's time is up: its token's expiry (PROTOCOL.md §6), and the time a client
//! that has gone gets.
//!
//! A client that has gone (its connection closed; over TCP a FIN or a reset, even with
//! commands still unread): what it wrote and the server read is carried out (PROTOCOL.md §5),
//! for `timeouts.reply` at most; what is left then is dropped with the session. A read-only
//! session (SSE) carries nothing out for a client that is gone: nothing it did could reach
//! anyone.
//!
//! Why a bound (outside bounds audit 3, F2, F3): each command may wait its hook's timeout, one
//! after another, so a client that wrote 64 hooked commands (or opened an SSE response for 200
//! hooked rooms) and left kept its session, its slot among `limits.max_sessions` and its
//! memory for minutes; one that half-closed a WebSocket after thousands, for hours.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Session;
use crate::transport::Peer;

/// When the client was found gone, and why.
pub(super) struct Left {
    reason: &'static str,
    until: tokio::time::Instant,
}

/// Resolves once a departed client's time is over: when `peer` is gone, the first caller
/// records it in `left` (`leftover` from then), and every caller waits until then. Pending
/// while the client is there.
pub(super) async fn leftover_over(
    left: &OnceLock<Left>,
    peer: &Peer,
    leftover: Duration,
) -> &'static str {
    let left = match left.get() {
        Some(left) => left,
        None => {
            let reason = peer.closed().await;
            left.get_or_init(|| Left {
                reason,
                until: tokio::time::Instant::now() + leftover,
            })
        }
    };
    tokio::time::sleep_until(left.until).await;
    left.reason
}

impl Session {
    /// How long what a client wrote is still carried out once it has gone.
    pub(super) fn leftover(&self) -> Duration {
        if self.read_only.is_some() {
            Duration::ZERO
        } else {
            self.shared.config.timeouts.reply
        }
    }

    /// Until when what a departed client wrote is still carried out: from when it was first
    /// found gone (by `leftover_over`, or now, for `reason`).
    pub(super) fn leftover_until(&self, reason: &'static str) -> tokio::time::Instant {
        let leftover = self.leftover();
        self.left
            .get_or_init(|| Left {
                reason,
                until: tokio::time::Instant::now() + leftover,
            })
            .until
    }

    /// Why the client was found gone, once it was (`leftover_over` records it).
    pub(super) fn left_reason(&self) -> Option<&'static str> {
        self.left.get().map(|left| left.reason)
    }

    /// When the session's token stops being valid (set at the start and by `Refresh`).
    pub(super) fn expiry(&self) -> tokio::time::Instant {
        self.expiry
    }
}

/// When a session with `grant` must end: its token is valid while `now < exp + leeway`
/// (auth.rs), and so is the session. Read from the wall clock once per token, not per command.
pub(super) fn token_expiry(grant: &crate::auth::Grant, leeway: Duration) -> tokio::time::Instant {
    expiry_instant(grant.expires_at.saturating_add(leeway.as_secs()))
}

/// The instant the wall clock reaches `expires_at` (Unix seconds), to the clock's precision: a
/// deadline counted in whole seconds from now ended sessions up to a second after `exp`, the
/// part of a second they had opened at (outside conformance audit 4, C4-3).
fn expiry_instant(expires_at: u64) -> tokio::time::Instant {
    // A token may name any `exp` up to u64::MAX ("never expires"), and an Instant that far
    // overflows (a panic in the session's task, which once left its subscriptions behind):
    // past 30 years, the deadline is 30 years (as tokio's own far-future sleep).
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(expires_at)
        .saturating_sub(since_epoch)
        .min(FAR);
    let now = tokio::time::Instant::now();
    now.checked_add(left).unwrap_or(now)
}
