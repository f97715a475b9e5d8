//! A proxy for reconnect frequency: a session opened by a user (tenant and user id) who had a
//! session on this node within the last [`WINDOW`] counts as reopened. A server cannot tell a
//! reconnect from a second tab, and a reconnect to another node is invisible here; the metric's
//! HELP says so.
//!
//! The map is bounded: past [`MAX_USERS`] entries, users whose last session closed more than a
//! window ago are forgotten; if that frees nothing, a new user is not remembered (an undercount,
//! never unbounded memory).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How recent a previous session must be for a new one to count as a reconnect.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Users remembered at most (about 100 bytes each).
pub const MAX_USERS: usize = 50_000;

#[derive(Default)]
struct Seen {
    /// Sessions of this user open now.
    open: u32,
    /// When the last of its sessions closed (or opened, before any closed).
    last: Option<Instant>,
}

pub struct RecentUsers {
    users: Mutex<HashMap<(String, String), Seen>>,
    window: Duration,
    max: usize,
}

impl Default for RecentUsers {
    fn default() -> Self {
        Self::new(WINDOW, MAX_USERS)
    }
}

impl RecentUsers {
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            users: Mutex::default(),
            window,
            max,
        }
    }

    /// A session of `user` opens: true if the user had a session here within the window (one
    /// open now, or one closed less than a window ago). Counts it in `quiver_sessions_reopened_total`.
    pub fn opened(&self, tenant: &str, user: &str, transport: &'static str) -> bool {
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_owned(), user.to_owned());
        if !users.contains_key(&key) && users.len() >= self.max {
            let window = self.window;
            users.retain(|_, s| s.open > 0 || s.last.is_some_and(|t| now - t < window));
            if users.len() >= self.max {
                return false;
            }
        }
        let seen = users.entry(key).or_default();
        let reopened = seen.open > 0 || seen.last.is_some_and(|t| now - t < self.window);
        seen.open += 1;
        seen.last = Some(now);
        drop(users);
        if reopened {
            metrics::counter!(super::SESSIONS_REOPENED, "transport" => transport).increment(1);
        }
        reopened
    }

    /// A session of `user` closed.
    pub fn closed(&self, tenant: &str, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = users.get_mut(&(tenant.to_owned(), user.to_owned())) {
            seen.open = seen.open.saturating_sub(1);
            seen.last = Some(Instant::now());
        }
    }

    pub fn len(&self) -> usize {
        self.users.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_back_within_the_window_counts_and_the_map_stays_bounded() {
        let recent = RecentUsers::new(Duration::from_millis(200), 2);
        assert!(!recent.opened("t", "a", "sse"));
        // A second session while the first is open.
        assert!(recent.opened("t", "a", "sse"));
        recent.closed("t", "a");
        recent.closed("t", "a");
        // Back soon after closing.
        assert!(recent.opened("t", "a", "sse"));
        recent.closed("t", "a");
        // Another tenant's user of the same name is someone else.
        assert!(!recent.opened("u", "a", "sse"));
        recent.closed("u", "a");
        // Full, and nobody has aged out: a new user is not remembered (and not counted).
        assert!(!recent.opened("t", "b", "sse"));
        assert_eq!(recent.len(), 2);
        std::thread::sleep(Duration::from_millis(250));
        // After the window: not a reconnect; the full map forgets the aged-out users first.
        assert!(!recent.opened("t", "c", "sse"));
        assert_eq!(recent.len(), 1);
        assert!(!recent.opened("t", "a", "sse"));
        assert_eq!(recent.len(), 2);
    }
}
