//! The command meter for client tokens on the backend API: a client's token publishing through
//! `POST /api/v1/publish` draws on a per-user token bucket of `limits.commands_per_second`, as
//! its session's commands do. Without it one user's token could pipeline tens of thousands of
//! publications a second into a room, and every subscriber of that room would be cut off as a
//! slow consumer. API keys are the backend and are not metered.
//!
//! The table of buckets is bounded and shared by every tenant, so it is shared fairly: when it
//! is full of buckets in use, a tenant holding fewer than the heaviest one takes its place from
//! the heaviest, and only the heaviest tenant's new users are refused (outside audit 106, F1:
//! one tenant's 100,000 users kept every other tenant's new users out, and the refusal told
//! them someone was publishing heavily).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quiver_proto::TenantId;

use crate::config::LimitsConfig;
use crate::session::meter::{Meter, Verdict};

/// Users metered at once.
const MAX_USERS: usize = 100_000;

/// A bucket unused this long is full again (a bucket holds one second's rate), so it can be
/// dropped and made anew without letting anyone past the rate.
const IDLE: Duration = Duration::from_secs(1);

pub struct ClientRates {
    limits: LimitsConfig,
    max_users: usize,
    users: Mutex<Users>,
}

#[derive(Default)]
struct Users {
    meters: HashMap<(TenantId, String), (Meter, Instant)>,
    /// How many of `meters` each tenant holds.
    per_tenant: HashMap<TenantId, usize>,
}

impl Users {
    fn forget_where(&mut self, mut gone: impl FnMut(&(TenantId, String), &Instant) -> bool) {
        let per_tenant = &mut self.per_tenant;
        self.meters.retain(|key, (_, used)| {
            if !gone(key, used) {
                return true;
            }
            if let Some(n) = per_tenant.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    per_tenant.remove(&key.0);
                }
            }
            false
        });
    }

    /// Makes room for one of `tenant`'s users in a table of `max` buckets: idle buckets go
    /// first; then, if `tenant` holds fewer than the heaviest tenant, some of the heaviest's
    /// (about 1 % of the table at once, so the pass over it is paid once per that many new
    /// users, and never so many that the two trade places). `false` when `tenant` is itself
    /// the heaviest: it has its share.
    fn make_room(&mut self, tenant: &TenantId, max: usize, now: Instant) -> bool {
        self.forget_where(|_, used| now.saturating_duration_since(*used) >= IDLE);
        if self.meters.len() < max {
            return true;
        }
        let mine = self.per_tenant.get(tenant).copied().unwrap_or(0);
        let Some((heaviest, most)) = self
            .per_tenant
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(t, n)| (t.clone(), *n))
        else {
            return false;
        };
        if mine >= most {
            return false;
        }
        // An evicted bucket is made anew, full, should that user come back: the heaviest
        // tenant's users may get one second's burst again, which only its own rooms see.
        let mut evict = ((most - mine) / 2).clamp(1, (max / 100).max(1));
        self.forget_where(|key, _| {
            if evict > 0 && key.0 == heaviest {
                evict -= 1;
                true
            } else {
                false
            }
        });
        true
    }
}

/// Why a client's request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the user's rate.
    Rate,
    /// The table is full and the user's tenant holds the most of it.
    Busy,
}

impl ClientRates {
    pub fn new(limits: LimitsConfig) -> Self {
        Self::with_max_users(limits, MAX_USERS)
    }

    fn with_max_users(limits: LimitsConfig, max_users: usize) -> Self {
        Self {
            limits,
            max_users,
            users: Mutex::default(),
        }
    }

    /// Takes one command from the user's bucket.
    pub fn take(&self, tenant: &TenantId, user: &str, now: Instant) -> Result<(), Refused> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.clone(), user.to_owned());
        if !users.meters.contains_key(&key) {
            if users.meters.len() >= self.max_users && !users.make_room(tenant, self.max_users, now)
            {
                return Err(Refused::Busy);
            }
            *users.per_tenant.entry(tenant.clone()).or_default() += 1;
        }
        let (meter, used) = users
            .meters
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

    /// A full table of one tenant's buckets in use leaves another tenant's new users a place
    /// (taken from the heaviest), and refuses only the heaviest tenant's new users.
    #[test]
    fn a_tenant_filling_the_table_does_not_shut_others_out() {
        let rates = ClientRates::with_max_users(LimitsConfig::default(), 200);
        let (heavy, light) = (
            TenantId::parse("heavy").expect("tenant"),
            TenantId::parse("light").expect("tenant"),
        );
        let now = Instant::now();
        for user in 0..200 {
            assert_eq!(rates.take(&heavy, &format!("u{user}"), now), Ok(()));
        }
        assert_eq!(rates.take(&heavy, "u200", now), Err(Refused::Busy));
        for user in 0..50 {
            assert_eq!(
                rates.take(&light, &format!("v{user}"), now),
                Ok(()),
                "{user}"
            );
        }
        assert_eq!(rates.take(&heavy, "u201", now), Err(Refused::Busy));
        let users = rates.users.lock().expect("lock");
        assert_eq!(users.meters.len(), 200, "the table stays within its bound");
        assert_eq!(users.per_tenant[&light], 50);
        assert_eq!(users.per_tenant[&heavy], 150);
    }

    /// Two tenants at an even share are each refused new users; idle buckets still give way.
    #[test]
    fn an_even_share_is_kept_and_idle_buckets_give_way() {
        let rates = ClientRates::with_max_users(LimitsConfig::default(), 100);
        let (a, b) = (
            TenantId::parse("a").expect("tenant"),
            TenantId::parse("b").expect("tenant"),
        );
        let now = Instant::now();
        for user in 0..50 {
            assert_eq!(rates.take(&a, &format!("u{user}"), now), Ok(()));
            assert_eq!(rates.take(&b, &format!("u{user}"), now), Ok(()));
        }
        assert_eq!(rates.take(&a, "new", now), Err(Refused::Busy));
        assert_eq!(rates.take(&b, "new", now), Err(Refused::Busy));
        let later = now + IDLE;
        assert_eq!(rates.take(&a, "new", later), Ok(()));
        let users = rates.users.lock().expect("lock");
        assert_eq!(users.meters.len(), 1);
        assert_eq!(users.per_tenant.len(), 1);
    }
}
