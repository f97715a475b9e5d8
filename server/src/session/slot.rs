//! A session's place in the counts: the server's open sessions (`limits.max_sessions`, the
//! gauge, the drain) and its tenant's (`quotas.tenant.max_sessions`), held until the adapter
//! has closed its transport, so that sessions that ended but have not closed still count.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::metrics as m;
use crate::quota::TenantSession;
use crate::server::Shared;

/// One open session in the counts; released on drop.
pub struct Slot {
    shared: Arc<Shared>,
    transport: &'static str,
    /// Counted in `shared.sessions` (`max_sessions`); not once a refusal has released it.
    counted: bool,
    /// The session's place in its tenant's quota, moved here when the session ends.
    pub(super) tenant: Option<TenantSession>,
}

impl Slot {
    pub(super) fn open(shared: Arc<Shared>, transport: &'static str) -> Self {
        metrics::gauge!(m::SESSIONS_ACTIVE, "transport" => transport).increment(1.0);
        metrics::counter!(m::SESSIONS_OPENED, "transport" => transport).increment(1);
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        Self {
            shared,
            transport,
            counted: true,
            tenant: None,
        }
    }

    /// Stops counting the session now (a refusal), not when the adapter has closed it.
    pub(super) fn release(&mut self) {
        if std::mem::take(&mut self.counted) {
            metrics::gauge!(m::SESSIONS_ACTIVE, "transport" => self.transport).decrement(1.0);
            self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}
