//! The idempotency record's own tests: repeats and conflicts, expiry, tenants' shares and the
//! bounds.

use super::*;

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant")
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("room")
}

fn position(offset: u64) -> Option<Position> {
    Some(Position { epoch: 7, offset })
}

#[test]
fn a_repeat_gets_the_first_position_and_a_different_payload_is_refused() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (acme, lobby, now) = (tenant("acme"), room("lobby"), Instant::now());
    let Claim::New(mut guard) = keys.claim_here(
        Claimant::Operator,
        &acme,
        &lobby,
        "k1",
        digest(b"hello"),
        now,
    ) else {
        panic!("first use is new");
    };
    assert!(matches!(
        keys.claim_here(
            Claimant::Operator,
            &acme,
            &lobby,
            "k1",
            digest(b"hello"),
            now
        ),
        Claim::InProgress
    ));
    guard.done_here(position(3));
    assert!(matches!(
        keys.claim_here(Claimant::Operator, &acme, &lobby, "k1", digest(b"hello"), now),
        Claim::Done(p) if p == position(3)
    ));
    assert!(matches!(
        keys.claim_here(
            Claimant::Operator,
            &acme,
            &lobby,
            "k1",
            digest(b"other"),
            now
        ),
        Claim::Mismatch
    ));
    // Another room, another tenant: other slots.
    assert!(matches!(
        keys.claim_here(
            Claimant::Operator,
            &acme,
            &room("other"),
            "k1",
            digest(b"hello"),
            now
        ),
        Claim::New(_)
    ));
    assert!(matches!(
        keys.claim_here(
            Claimant::Operator,
            &tenant("globex"),
            &lobby,
            "k1",
            digest(b"hello"),
            now
        ),
        Claim::New(_)
    ));
}

#[test]
fn a_failed_publication_forgets_its_key_and_entries_expire() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (acme, lobby, now) = (tenant("acme"), room("lobby"), Instant::now());
    drop(keys.claim_here(Claimant::Operator, &acme, &lobby, "k", digest(b"x"), now));
    assert_eq!(keys.total(), 0);
    let Claim::New(mut guard) =
        keys.claim_here(Claimant::Operator, &acme, &lobby, "k", digest(b"x"), now)
    else {
        panic!("forgotten key is new again");
    };
    guard.done_here(None);
    assert!(matches!(
        keys.claim_here(
            Claimant::Operator,
            &acme,
            &lobby,
            "k",
            digest(b"x"),
            now + WINDOW - Duration::from_secs(1)
        ),
        Claim::Done(None)
    ));
    let Claim::New(mut guard) = keys.claim_here(
        Claimant::Operator,
        &acme,
        &lobby,
        "k",
        digest(b"x"),
        now + WINDOW,
    ) else {
        panic!("expired key is new again");
    };
    guard.done_here(None);
    assert_eq!(keys.total(), 1);
}

#[test]
fn a_tenant_holds_at_most_its_share_and_never_evicts_another() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (acme, globex, lobby, now) = (
        tenant("acme"),
        tenant("globex"),
        room("lobby"),
        Instant::now(),
    );
    if let Claim::New(mut guard) = keys.claim_here(
        Claimant::Operator,
        &globex,
        &lobby,
        "kept",
        digest(b"x"),
        now,
    ) {
        guard.done_here(position(1));
    }
    for i in 0..MAX_PER_TENANT + 5 {
        if let Claim::New(mut guard) = keys.claim_here(
            Claimant::Operator,
            &acme,
            &lobby,
            &format!("k{i}"),
            digest(b"x"),
            now,
        ) {
            guard.done_here(None);
        }
    }
    assert_eq!(keys.total(), MAX_PER_TENANT + 1);
    // acme's oldest went, its newest stayed, globex's is untouched.
    assert!(matches!(
        keys.claim_here(Claimant::Operator, &acme, &lobby, "k0", digest(b"x"), now),
        Claim::New(_)
    ));
    assert!(matches!(
        keys.claim_here(
            Claimant::Operator,
            &acme,
            &lobby,
            &format!("k{}", MAX_PER_TENANT + 4),
            digest(b"x"),
            now
        ),
        Claim::Done(None)
    ));
    assert!(matches!(
        keys.claim_here(Claimant::Operator, &globex, &lobby, "kept", digest(b"x"), now),
        Claim::Done(p) if p == position(1)
    ));
}

#[test]
fn all_tenants_together_stay_within_the_bound() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (lobby, now) = (room("lobby"), Instant::now());
    let tenants = MAX_ENTRIES / MAX_PER_TENANT + 2;
    for t in 0..tenants {
        let tenant = tenant(&format!("t{t}"));
        for i in 0..MAX_PER_TENANT {
            if let Claim::New(mut guard) = keys.claim_here(
                Claimant::Operator,
                &tenant,
                &lobby,
                &format!("{i}"),
                digest(b"x"),
                now,
            ) {
                guard.done_here(None);
            }
        }
    }
    let total = keys.total();
    assert!(
        (MAX_ENTRIES - ROOM..=MAX_ENTRIES).contains(&total),
        "{total}"
    );
}

/// With a key in each of very many tenants, making room is a pass over every tenant once
/// per [`ROOM`] new keys, not once per key.
#[test]
fn making_room_among_many_tenants_is_paid_once_per_room() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (lobby, now) = (room("lobby"), Instant::now());
    let extra = 3 * ROOM;
    for t in 0..MAX_ENTRIES + extra {
        if let Claim::New(mut guard) = keys.claim_here(
            Claimant::Operator,
            &tenant(&format!("t{t}")),
            &lobby,
            "k",
            digest(b"x"),
            now,
        ) {
            guard.done_here(None);
        }
    }
    let inner = keys.lock();
    assert!(inner.total <= MAX_ENTRIES);
    assert!(inner.passes <= extra / ROOM + 1, "{} passes", inner.passes);
}

#[test]
fn tenants_that_hold_no_key_do_not_pile_up() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (lobby, now) = (room("lobby"), Instant::now());
    let client = scoped(&format!("{USER}mallory"), "k");
    // Client keys from ever more tenants, each forgotten again (its publication failed):
    // each tenant keeps only its count of recent client claims.
    for t in 0..MAX_TENANTS + MAX_ENTRIES / 5 {
        drop(keys.claim_here(
            Claimant::Client,
            &tenant(&format!("t{t}")),
            &lobby,
            &client,
            digest(b"x"),
            now,
        ));
    }
    // And keys from tenants whose keys are then evicted by newer ones.
    for t in 0..MAX_ENTRIES + 3 * ROOM {
        let who = tenant(&format!("e{t}"));
        if let Claim::New(mut guard) =
            keys.claim_here(Claimant::Client, &who, &lobby, &client, digest(b"x"), now)
        {
            guard.done_here(None);
        }
    }
    let inner = keys.lock();
    assert!(
        inner.tenants.len() <= MAX_TENANTS,
        "{} tenants remembered",
        inner.tenants.len()
    );
    assert!(inner.passes <= 10, "{} passes", inner.passes);
}

#[test]
fn forgotten_claims_behind_a_live_one_do_not_pile_up() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (acme, lobby, now) = (tenant("acme"), room("lobby"), Instant::now());
    let _live = keys.claim_here(Claimant::Operator, &acme, &lobby, "live", digest(b"x"), now);
    for i in 0..1_000 {
        drop(keys.claim_here(
            Claimant::Operator,
            &acme,
            &lobby,
            &format!("k{i}"),
            digest(b"x"),
            now,
        ));
    }
    let order = keys.lock().tenants[&acme].order.len();
    assert!(order <= 2 + 64, "{order}");
}

#[test]
fn a_tenants_clients_get_a_bounded_number_of_new_keys_per_window() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (acme, globex, lobby) = (tenant("acme"), tenant("globex"), room("lobby"));
    let now = Instant::now();
    let client = |i: usize| scoped(&format!("{USER}mallory"), &format!("k{i}"));
    // Held, as publications under way are: a claim let go of undone gives its place back.
    let mut held = Vec::with_capacity(MAX_CLIENT_KEYS_PER_TENANT);
    for i in 0..MAX_CLIENT_KEYS_PER_TENANT {
        let claim = keys.claim_here(
            Claimant::Client,
            &acme,
            &lobby,
            &client(i),
            digest(b"x"),
            now,
        );
        assert!(matches!(claim, Claim::New(_)), "claim {i}");
        held.push(claim);
    }
    // Refused, not evicted: the cluster's record of the earlier keys stays in any case.
    assert!(matches!(
        keys.claim_here(
            Claimant::Client,
            &acme,
            &lobby,
            &client(usize::MAX),
            digest(b"x"),
            now
        ),
        Claim::TooMany(Claimant::Client)
    ));
    // The backend's keys, and another tenant's clients, are not held back.
    assert!(matches!(
        keys.claim_here(
            Claimant::TenantBackend,
            &acme,
            &lobby,
            &scoped(BACKEND, "b1"),
            digest(b"x"),
            now
        ),
        Claim::New(_)
    ));
    assert!(matches!(
        keys.claim_here(
            Claimant::Client,
            &globex,
            &lobby,
            &client(0),
            digest(b"x"),
            now
        ),
        Claim::New(_)
    ));
    // A window later the tenant's clients may claim again.
    assert!(matches!(
        keys.claim_here(
            Claimant::Client,
            &acme,
            &lobby,
            &client(usize::MAX),
            digest(b"x"),
            now + WINDOW
        ),
        Claim::New(_)
    ));
}

/// A tenant's scoped API key may claim [`MAX_TENANT_BACKEND_KEYS`] new keys per window here
/// (outside tenancy audit 3: uncounted, one tenant filled the cluster's shared record and
/// every other tenant's keyed publishes failed); an admin key is not counted.
#[test]
fn a_tenants_own_backend_gets_a_bounded_number_of_new_keys_per_window() {
    let keys = Arc::new(IdempotencyKeys::default());
    let (acme, globex, now) = (tenant("acme"), tenant("globex"), Instant::now());
    let key = |i: usize| scoped(BACKEND, &format!("k{i}"));
    // Many rooms, as a broadcast's claims are: one entry per room. Held, as publications under
    // way are: a claim let go of undone gives its place back.
    let rooms: Vec<RoomName> = (0..100).map(|r| room(&format!("r{r}"))).collect();
    let mut held = Vec::with_capacity(MAX_TENANT_BACKEND_KEYS);
    for i in 0..MAX_TENANT_BACKEND_KEYS {
        let claim = keys.claim_here(
            Claimant::TenantBackend,
            &acme,
            &rooms[i % 100],
            &key(i / 100),
            digest(b"x"),
            now,
        );
        assert!(matches!(claim, Claim::New(_)), "claim {i}");
        held.push(claim);
    }
    assert!(matches!(
        keys.claim_here(
            Claimant::TenantBackend,
            &acme,
            &rooms[0],
            &key(usize::MAX),
            digest(b"x"),
            now
        ),
        Claim::TooMany(Claimant::TenantBackend)
    ));
    // The operator's key, and another tenant's backend, are not held back.
    assert!(matches!(
        keys.claim_here(
            Claimant::Operator,
            &acme,
            &rooms[0],
            &key(usize::MAX),
            digest(b"x"),
            now
        ),
        Claim::New(_)
    ));
    assert!(matches!(
        keys.claim_here(
            Claimant::TenantBackend,
            &globex,
            &rooms[0],
            &key(0),
            digest(b"x"),
            now
        ),
        Claim::New(_)
    ));
    assert!(matches!(
        keys.claim_here(
            Claimant::TenantBackend,
            &acme,
            &rooms[1],
            &key(usize::MAX - 1),
            digest(b"x"),
            now + WINDOW
        ),
        Claim::New(_)
    ));
}

/// A claim that ends as no recorded key gives its place in its claimant's budget back: a
/// publication that failed (`forget`), a guard dropped undone (a broadcast refused in a later
/// room drops the claims of the rooms before it). They spent a place each, and a backend
/// retrying through an outage left its tenant's keyed publishes refused 429 for up to 5
/// minutes afterwards (outside audit 111, F8). A key recorded as done keeps its place.
#[tokio::test]
async fn claims_that_record_no_key_give_their_place_in_the_budget_back() {
    for (claimant, scope) in [
        (Claimant::Client, format!("{USER}mallory")),
        (Claimant::TenantBackend, BACKEND.to_owned()),
    ] {
        let keys = Arc::new(IdempotencyKeys::default());
        let (acme, lobby, now) = (tenant("acme"), room("lobby"), Instant::now());
        let limit = claimant.limit().expect("a counted claimant");
        let claim = |i: usize| {
            keys.claim_here(
                claimant,
                &acme,
                &lobby,
                &scoped(&scope, &format!("k{i}")),
                digest(b"x"),
                now,
            )
        };
        for i in 0..2 * limit {
            let Claim::New(guard) = claim(i) else {
                panic!("{claimant:?}: claim {i} refused: failed claims spent the budget");
            };
            if i % 2 == 0 {
                guard.forget().await;
            } else {
                drop(guard);
            }
        }
        for i in 0..limit {
            let Claim::New(guard) = claim(2 * limit + i) else {
                panic!("{claimant:?}: claim {i} refused within the budget");
            };
            guard.done(None).await;
        }
        assert!(
            matches!(claim(usize::MAX), Claim::TooMany(c) if c == claimant),
            "{claimant:?}: done keys gave their places back"
        );
    }
}

#[test]
fn keys_are_short_visible_ascii() {
    assert_eq!(check_key(b"order-17/retry:2"), Ok("order-17/retry:2"));
    assert!(check_key(b"order 17").is_err());
    assert!(check_key(b"").is_err());
    assert!(check_key(&[b'a'; MAX_KEY_LEN + 1]).is_err());
    assert!(check_key(b"a\tb").is_err());
    assert!(check_key("é".as_bytes()).is_err());
}
