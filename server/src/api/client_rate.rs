//! The command meter for client tokens on the backend API: a client's token publishing through
//! `POST /api/v1/publish` draws on a per-user token bucket of `limits.commands_per_second`, as
//! its session's commands do. Without it one user's token could pipeline tens of thousands of
//! publications a second into a room, and every subscriber of that room would be cut off as a
//! slow consumer. API keys are the backend and are not metered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quiver_proto::TenantId;

use crate::config::LimitsConfig;
use crate::session::meter::{Meter, Verdict};

/// Users metered at once; beyond it (after dropping idle ones) a new user is refused until
/// some go idle.
const MAX_USERS: usize = 100_000;

/// A bucket unused this long is full again (a bucket holds one second's rate), so it can be
/// dropped and made anew without letting anyone past the rate.
const IDLE: Duration = Duration::from_secs(1);

pub struct ClientRates {
    limits: LimitsConfig,
    users: Mutex<HashMap<(TenantId, String), (Meter, Instant)>>,
}

/// Why a client's request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the user's rate.
    Rate,
    /// Too many users metered at once.
    Busy,
}

impl ClientRates {
    pub fn new(limits: LimitsConfig) -> Self {
        Self {
            limits,
            users: Mutex::default(),
        }
    }

    /// Takes one command from the user's bucket.
    pub fn take(&self, tenant: &TenantId, user: &str, now: Instant) -> Result<(), Refused> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.clone(), user.to_owned());
        if !users.contains_key(&key) && users.len() >= MAX_USERS {
            users.retain(|_, (_, used)| now.saturating_duration_since(*used) < IDLE);
            if users.len() >= MAX_USERS {
                return Err(Refused::Busy);
            }
        }
        let (meter, used) = users
            .entry(key)
            .or_insert_with(|| (Meter::new(&self.limits), now));
        *used = now;
        match meter.take(now) {
            Verdict::Allowed => Ok(()),
            Verdict::Limited | Verdict::Abuse => Err(Refused::Rate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_its_rate_and_others_theirs() {
        let limits = LimitsConfig {
            commands_per_second: 10,
            ..LimitsConfig::default()
        };
        let rates = ClientRates::new(limits);
        let acme = TenantId::parse("acme").expect("tenant");
        let (alice, bob) = ("alice", "bob");
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(rates.take(&acme, alice, now), Ok(()));
        }
        assert_eq!(rates.take(&acme, alice, now), Err(Refused::Rate));
        assert_eq!(rates.take(&acme, bob, now), Ok(()));
        // A tenth of a second later one more.
        let later = now + Duration::from_millis(100);
        assert_eq!(rates.take(&acme, alice, later), Ok(()));
        assert_eq!(rates.take(&acme, alice, later), Err(Refused::Rate));
    }
}
