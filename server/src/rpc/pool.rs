//! The HTTP route's pool of requests in flight (`rpc.http_max_in_flight`, N), shared fairly
//! (PROTOCOL.md §11.2):
//!
//! - **Per tenant and kind**: a tenant may have at most N/8 (at least 1) calls in flight or
//!   waiting; one more is refused at once (`quota_exceeded`). Its hooks run at most N/8 at
//!   once, counted apart, so a tenant's own slow calls never crowd out the hooks its other
//!   commands wait for (outside audit: a user's calls to a slow method switched the tenant's
//!   fail-open hooks off and its fail-closed hooks into denying everyone). A hook is never
//!   refused at once: it waits its turn (each session has at most two hooks out, so sessions
//!   bound the waiting), and one that finds no place before its timeout is refused
//!   `over_quota`, which denies whatever the namespace's fail rule (`Rpc::failed`).
//! - **Calls** together run at most N − N/4 at once, so hooks always have a quarter.
//! - **A reserve for light tenants**: the last N/8 free slots (of the calls' part for a call,
//!   of the pool for a hook) go only to a tenant running fewer than 2 of that kind, so a few
//!   tenants holding their caps with slow methods cannot stop every other tenant (outside
//!   audit: three tenants at a quarter each filled the calls' part, and a fourth tenant's
//!   calls waited out their deadline). Filling the pool now takes five tenants at their cap
//!   and sixteen more running two each.
//!
//! A request that none of these rules admits yet waits, within its deadline, in a queue: a
//! request that ends admits the waiting ones it made room for, oldest first, and wakes only
//! them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use quiver_proto::TenantId;

/// What a request is, for the pool's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Call,
    Hook,
}

impl Kind {
    fn index(self) -> usize {
        match self {
            Kind::Call => 0,
            Kind::Hook => 1,
        }
    }
}

/// A tenant running fewer requests of a kind than this may always use the reserve.
const LIGHT: usize = 2;

/// The pool's sizes, from N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// N: requests running at once, calls and hooks.
    pub total: usize,
    /// Calls running at once: N − N/4.
    pub calls: usize,
    /// One tenant's requests of one kind, running or waiting: N/8.
    pub tenant_cap: usize,
    /// Free slots kept for tenants running fewer than [`LIGHT`]: N/8.
    pub reserve: usize,
}

impl Sizes {
    pub fn for_pool(total: usize) -> Self {
        let total = total.max(1);
        Self {
            total,
            calls: (total - total / 4).max(1),
            tenant_cap: (total / 8).max(1),
            reserve: total / 8,
        }
    }
}

pub struct Pool {
    sizes: Sizes,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: usize,
    calls_running: usize,
    /// Only tenants with a request out (removed at zero): at most one entry per request.
    tenants: HashMap<TenantId, Counts>,
    /// Requests waiting to run, oldest first, each with the waker of its task. A request that
    /// ends admits the waiting ones it made room for, in order, and wakes only those: no
    /// herd of waiters re-checking on every end.
    waiting: VecDeque<Waiter>,
    /// Requests admitted from `waiting` whose task has not seen it yet.
    admitted: HashSet<u64>,
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    tenant: TenantId,
    kind: Kind,
    waker: Waker,
}

/// One tenant's requests by kind ([`Kind::index`]).
#[derive(Default)]
struct Counts {
    /// Running or waiting.
    out: [usize; 2],
    running: [usize; 2],
}

impl Counts {
    fn idle(&self) -> bool {
        self.out == [0, 0]
    }
}

impl State {
    /// Whether a request of `tenant` and `kind` may run now.
    fn may_run(&self, sizes: Sizes, tenant: &TenantId, kind: Kind) -> bool {
        let free = match kind {
            Kind::Call => (sizes.total - self.running.min(sizes.total))
                .min(sizes.calls - self.calls_running.min(sizes.calls)),
            Kind::Hook => sizes.total - self.running.min(sizes.total),
        };
        let running = self
            .tenants
            .get(tenant)
            .map_or(0, |c| c.running[kind.index()]);
        free > 0 && (free > sizes.reserve || running < LIGHT) && running < sizes.tenant_cap
    }

    fn start(&mut self, tenant: &TenantId, kind: Kind) {
        self.running += 1;
        if kind == Kind::Call {
            self.calls_running += 1;
        }
        if let Some(counts) = self.tenants.get_mut(tenant) {
            counts.running[kind.index()] += 1;
        }
    }

    /// Admits, oldest first, the waiting requests that may run now.
    fn admit_waiting(&mut self, sizes: Sizes) {
        let mut i = 0;
        while i < self.waiting.len() {
            let (tenant, kind) = (&self.waiting[i].tenant, self.waiting[i].kind);
            if self.may_run(sizes, tenant, kind) {
                let waiter = self.waiting.remove(i).expect("in range");
                self.start(&waiter.tenant, waiter.kind);
                self.admitted.insert(waiter.ticket);
                waiter.waker.wake();
            } else {
                i += 1;
            }
            if self.running >= sizes.total {
                break;
            }
        }
    }
}

impl Pool {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            sizes: Sizes::for_pool(max_in_flight),
            state: Mutex::new(State::default()),
        }
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Never held across an await, and every change is made whole: a poisoned lock still
        // guards consistent counts.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one request of `tenant`, unless it is a call and the tenant has its cap of
    /// calls out. Never waits: a tenant at its cap is answered at once rather than queued
    /// behind its own slow requests, and a session's calls are admitted in the order it sent
    /// them (it enters before starting the call's task). The place is given back on drop
    /// (answered, failed, timed out, or the caller's task aborted).
    pub fn enter(self: &Arc<Self>, tenant: &TenantId, kind: Kind) -> Option<Place> {
        let mut state = self.state();
        let counts = state.tenants.entry(tenant.clone()).or_default();
        if kind == Kind::Call && counts.out[kind.index()] >= self.sizes.tenant_cap {
            if counts.idle() {
                state.tenants.remove(tenant);
            }
            return None;
        }
        counts.out[kind.index()] += 1;
        state.next_ticket += 1;
        Some(Place {
            pool: self.clone(),
            ticket: state.next_ticket,
            tenant: tenant.clone(),
            kind,
            running: false,
        })
    }

    /// Runs `place` now if it may (counted as running), else queues it (with `waker`) once;
    /// whether it runs.
    fn poll_admit(&self, place: &mut Place, waker: &Waker) -> bool {
        if place.running {
            return true;
        }
        let mut state = self.state();
        if state.admitted.remove(&place.ticket) {
            place.running = true;
            return true;
        }
        if let Some(queued) = state.waiting.iter_mut().find(|w| w.ticket == place.ticket) {
            queued.waker.clone_from(waker);
            return false;
        }
        if state.may_run(self.sizes, &place.tenant, place.kind) {
            state.start(&place.tenant, place.kind);
            place.running = true;
            return true;
        }
        state.waiting.push_back(Waiter {
            ticket: place.ticket,
            tenant: place.tenant.clone(),
            kind: place.kind,
            waker: waker.clone(),
        });
        false
    }

    /// Waits until `place` may run (the caller bounds the wait by its deadline; dropping the
    /// place takes it out of the queue).
    pub async fn run(&self, place: &mut Place) {
        std::future::poll_fn(|cx| {
            if self.poll_admit(place, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state().tenants.len()
    }
}

/// One request's place in the pool: counted against its tenant while it waits, and against
/// the pool too once it runs.
pub struct Place {
    pool: Arc<Pool>,
    ticket: u64,
    tenant: TenantId,
    kind: Kind,
    running: bool,
}

impl Place {
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let i = self.kind.index();
        let mut state = self.pool.state();
        // Admitted while its task was away (a deadline, an abort): it ran, as far as the
        // counts go.
        let running = self.running || state.admitted.remove(&self.ticket);
        if !running {
            state.waiting.retain(|w| w.ticket != self.ticket);
        }
        if running {
            state.running = state.running.saturating_sub(1);
            if self.kind == Kind::Call {
                state.calls_running = state.calls_running.saturating_sub(1);
            }
        }
        if let Some(counts) = state.tenants.get_mut(&self.tenant) {
            counts.out[i] = counts.out[i].saturating_sub(1);
            if running {
                counts.running[i] = counts.running[i].saturating_sub(1);
            }
            if counts.idle() {
                state.tenants.remove(&self.tenant);
            }
        }
        if running {
            state.admit_waiting(self.pool.sizes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).expect("valid")
    }

    /// Whether `place` runs now (queued otherwise).
    fn admit(pool: &Pool, place: &mut Place) -> bool {
        pool.poll_admit(place, futures::task::noop_waker_ref())
    }

    /// Enters and tries to run at once: `Some(place)` when it runs (dropped, so unqueued,
    /// otherwise).
    fn run_now(pool: &Arc<Pool>, t: &TenantId, kind: Kind) -> Option<Place> {
        let mut place = pool.enter(t, kind)?;
        admit(pool, &mut place).then_some(place)
    }

    #[test]
    fn sizes_follow_the_pool() {
        assert_eq!(
            Sizes::for_pool(256),
            Sizes {
                total: 256,
                calls: 192,
                tenant_cap: 32,
                reserve: 32
            }
        );
        assert_eq!(
            Sizes::for_pool(1),
            Sizes {
                total: 1,
                calls: 1,
                tenant_cap: 1,
                reserve: 0
            }
        );
        assert_eq!(Sizes::for_pool(4).calls, 3);
    }

    #[test]
    fn a_tenants_calls_never_take_its_hooks_places() {
        let pool = Arc::new(Pool::new(16));
        let acme = tenant("acme");
        let cap = pool.sizes().tenant_cap;
        let calls: Vec<_> = (0..cap)
            .map(|_| pool.enter(&acme, Kind::Call).expect("under the cap"))
            .collect();
        assert!(pool.enter(&acme, Kind::Call).is_none(), "calls at the cap");
        assert!(
            run_now(&pool, &acme, Kind::Hook).is_some(),
            "a hook of the same tenant still runs"
        );
        drop(calls);
        assert_eq!(pool.tracked(), 0, "idle tenants leave no entry");
    }

    #[test]
    fn a_tenants_hooks_wait_for_a_place_instead_of_being_refused() {
        let pool = Arc::new(Pool::new(16));
        let acme = tenant("acme");
        let cap = pool.sizes().tenant_cap;
        let running: Vec<_> = (0..cap)
            .map(|_| run_now(&pool, &acme, Kind::Hook).expect("under the cap"))
            .collect();
        let mut waiting = pool
            .enter(&acme, Kind::Hook)
            .expect("hooks are never refused");
        assert!(!admit(&pool, &mut waiting), "at the cap: it waits");
        assert!(
            run_now(&pool, &tenant("other"), Kind::Hook).is_some(),
            "another tenant's hook runs"
        );
        drop(running);
        assert!(admit(&pool, &mut waiting), "a place came free");
    }

    #[test]
    fn tenants_at_their_cap_leave_the_reserve_to_light_tenants() {
        let pool = Arc::new(Pool::new(256));
        let sizes = pool.sizes();
        let mut held = Vec::new();
        // Heavy tenants fill the calls' part down to the reserve.
        let heavy: Vec<TenantId> = (0..5).map(|i| tenant(&format!("heavy{i}"))).collect();
        for t in &heavy {
            for _ in 0..sizes.tenant_cap {
                held.push(run_now(&pool, t, Kind::Call).expect("outside the reserve"));
            }
        }
        assert_eq!(sizes.calls - 5 * sizes.tenant_cap, sizes.reserve);
        // A sixth heavy tenant gets its first LIGHT calls from the reserve, then no more.
        let sixth = tenant("heavy5");
        for _ in 0..LIGHT {
            held.push(run_now(&pool, &sixth, Kind::Call).expect("light"));
        }
        assert!(run_now(&pool, &sixth, Kind::Call).is_none(), "the reserve");
        // Another tenant's call runs.
        let victim = tenant("victim");
        assert!(run_now(&pool, &victim, Kind::Call).is_some());
        // Hooks have their quarter whatever the calls hold.
        assert!(run_now(&pool, &heavy[0], Kind::Hook).is_some());
    }

    #[test]
    fn a_place_admitted_while_its_task_was_away_is_given_back() {
        let pool = Arc::new(Pool::new(1));
        let (a, b, c) = (tenant("a"), tenant("b"), tenant("c"));
        let first = run_now(&pool, &a, Kind::Call).expect("the only slot");
        let mut second = pool.enter(&b, Kind::Call).expect("own cap");
        assert!(!admit(&pool, &mut second), "queued");
        drop(first);
        // Admitted by the end of `first`, then dropped unseen (its deadline passed).
        drop(second);
        assert!(
            run_now(&pool, &c, Kind::Call).is_some(),
            "the slot came back"
        );
        assert_eq!(pool.tracked(), 0);
    }

    #[tokio::test]
    async fn a_waiting_request_runs_when_one_ends() {
        let pool = Arc::new(Pool::new(1));
        let (a, b) = (tenant("a"), tenant("b"));
        let first = run_now(&pool, &a, Kind::Call).expect("the only slot");
        let mut second = pool.enter(&b, Kind::Call).expect("own cap");
        assert!(!admit(&pool, &mut second), "no slot yet");
        let waiting = async {
            pool.run(&mut second).await;
            second.running
        };
        let release = async {
            tokio::task::yield_now().await;
            drop(first);
        };
        let (ran, ()) = tokio::join!(waiting, release);
        assert!(ran);
    }
}
