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
use std::time::Duration;

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
