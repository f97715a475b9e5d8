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
    /// It took the server past `limits.max_sessions`: the limit is checked before a session
    /// is made, and sessions admitted together could each find a place (outside audit 97, F3:
    /// 6 sessions open with `max_sessions = 5`); the count taken here is the one that decides.
    over_limit: bool,
    /// The session's place in its tenant's quota, moved here when the session ends.
    pub(super) tenant: Option<TenantSession>,
}

impl Slot {
    pub(super) fn open(shared: Arc<Shared>, transport: &'static str) -> Self {
        metrics::gauge!(m::SESSIONS_ACTIVE, "transport" => transport).increment(1.0);
        metrics::counter!(m::SESSIONS_OPENED, "transport" => transport).increment(1);
        let before = shared.sessions.fetch_add(1, Ordering::Relaxed);
        let over_limit = before >= shared.config.limits.max_sessions;
        Self {
            shared,
            transport,
            counted: true,
            over_limit,
            tenant: None,
        }
    }

    /// `limits.max_sessions` when this session is one past it (to be refused).
    pub(super) fn over_limit(&self) -> Option<usize> {
        self.over_limit
            .then_some(self.shared.config.limits.max_sessions)
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
