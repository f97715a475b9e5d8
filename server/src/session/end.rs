//! How a session ended, as its adapter sees it ([`End`]): the close to make, how long a client
//! still reading what was queued is waited for, when a close is cut short, and what runs on
//! once the transport is closed before the session stops counting.

use std::time::Duration;

use bytes::Bytes;
use quiver_proto::CloseCode;
use tokio_util::sync::CancellationToken;

use super::Slot;
use crate::transport::queue;

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
