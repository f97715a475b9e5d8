//! The sessions of this instance by tenant, user and session id, so the backend API (and the
//! cluster's control plane, `control.rs`) can end them: disconnect a user or one session, or
//! every session using a revoked token.
//!
//! A session registers when it opens and is removed by its guard's `Drop`. Ending one is a
//! message on its kick channel; the session closes with the given code, goodbye first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quiver_proto::{CloseCode, TenantId};
use tokio::sync::mpsc;

/// Why and how the server ends a session from outside it.
#[derive(Debug, Clone)]
pub struct Kick {
    pub code: CloseCode,
    pub reason: String,
    /// Set: end only this room's subscription (unsolicited `Unsubscribed`, code
    /// `unsubscribed`) and keep the session; `code` is then unused.
    pub room: Option<quiver_proto::RoomName>,
}

/// Orders a session can have queued: a close and a few unsubscribes. A full queue drops the
/// order (the session is not reading its orders: it is closing, or very busy).
const ORDERS: usize = 8;

/// Which sessions a kick is for; `None` fields match any.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    pub tenant: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
    /// Sessions whose token's `jti` has this key (`revocation::key`).
    #[serde(default)]
    pub jti_key: Option<String>,
}

struct Entry {
    tenant: TenantId,
    user: String,
    /// `revocation::key` of the token's `jti`.
    jti_key: Option<String>,
    kick: mpsc::Sender<Kick>,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    /// Registers a session; its kicks arrive on the returned receiver until the guard drops.
    pub fn register(
        self: &Arc<Self>,
        session: &str,
        tenant: &TenantId,
        user: &str,
        jti: Option<&str>,
    ) -> (Registered, mpsc::Receiver<Kick>) {
        let (kick, kicks) = mpsc::channel(ORDERS);
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                session.to_owned(),
                Entry {
                    tenant: tenant.clone(),
                    user: user.to_owned(),
                    jti_key: jti.map(|j| crate::revocation::key(tenant, j)),
                    kick,
                },
            );
        (
            Registered {
                registry: self.clone(),
                session: session.to_owned(),
            },
            kicks,
        )
    }

    /// Ends every local session the selector matches; returns how many.
    pub fn kick(&self, selector: &Selector, kick: &Kick) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (id, entry) in sessions.iter() {
            let matches = entry.tenant.as_str() == selector.tenant
                && selector.user.as_ref().is_none_or(|u| *u == entry.user)
                && selector.session.as_ref().is_none_or(|s| s == id)
                && selector
                    .jti_key
                    .as_ref()
                    .is_none_or(|j| entry.jti_key.as_ref() == Some(j));
            // A session whose order queue is full is closing (or stuck): the order is dropped.
            if matches && entry.kick.try_send(kick.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// A refreshed session's token is another token: revoking the old one no longer ends it.
    pub fn set_jti(&self, session: &str, jti: Option<&str>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sessions.get_mut(session) {
            entry.jti_key = jti.map(|j| crate::revocation::key(&entry.tenant, j));
        }
    }

    /// Sessions of a tenant on this instance (all tenants: `None`).
    pub fn count(&self, tenant: Option<&str>) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .values()
            .filter(|e| tenant.is_none_or(|t| e.tenant.as_str() == t))
            .count()
    }
}

/// A session's registration; removed on drop.
pub struct Registered {
    registry: Arc<Registry>,
    session: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_reach_only_the_selected_sessions() {
        let registry = Arc::new(Registry::default());
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        let (_a1, mut k1) = registry.register("s1", &acme, "alice", Some("t1"));
        let (_a2, mut k2) = registry.register("s2", &acme, "alice", None);
        let (_b, mut k3) = registry.register("s3", &acme, "bob", None);
        let (_o, mut k4) = registry.register("s4", &other, "alice", None);
        let kick = Kick {
            code: CloseCode::Disconnected,
            reason: "test".into(),
            room: None,
        };
        let alice = Selector {
            tenant: "acme".into(),
            user: Some("alice".into()),
            ..Selector::default()
        };
        assert_eq!(registry.kick(&alice, &kick), 2);
        assert!(k1.try_recv().is_ok() && k2.try_recv().is_ok());
        assert!(
            k3.try_recv().is_err() && k4.try_recv().is_err(),
            "other users, other tenants"
        );
        let by_jti = Selector {
            tenant: "acme".into(),
            jti_key: Some(crate::revocation::key(&acme, "t1")),
            ..Selector::default()
        };
        let (_a1b, mut k1b) = registry.register("s5", &acme, "carol", Some("t1"));
        assert_eq!(registry.kick(&by_jti, &kick), 2, "s1 and s5");
        assert!(k1b.try_recv().is_ok());
        drop(_b);
        assert_eq!(registry.count(Some("acme")), 3);
    }
}
