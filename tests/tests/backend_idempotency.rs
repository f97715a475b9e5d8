//! Idempotency keys on the backend API's publish (README "Backend API", `Idempotency-Key`):
//! a retry published once, on one instance and across instances sharing a real nats-server;
//! claims released when a keyed broadcast is refused partway; and the per-tenant budget of new
//! keys, driven directly on the key store, through a NATS outage and a stall.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use quiver_tests::api::*;
use quiver_tests::nats::NatsServer;
use quiver_tests::*;
use serde_json::{json, Value};

/// `POST /api/v1/publish/{room}` with `Idempotency-Key` headers (as many as given).
async fn publish_keyed(
    server: &TestServer,
    room: &str,
    key: &str,
    idempotency: &[&str],
    body: &'static str,
) -> anyhow::Result<(u16, Value)> {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish/{room}", server.http))
        .bearer_auth(key)
        .body(body);
    for value in idempotency {
        // From bytes: a non-ASCII key must reach the server to be refused there.
        let value = reqwest::header::HeaderValue::from_bytes(value.as_bytes())?;
        request = request.header("Idempotency-Key", value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

#[tokio::test]
async fn a_retried_publication_with_an_idempotency_key_is_published_once() -> anyhow::Result<()> {
    let server = TestServer::start_with(with_tenants).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "s")).await?;
    let mut history = sub.subscribe("h.x").await?;
    let mut live = sub.subscribe("news.y").await?;

    let (status, first) = publish_keyed(&server, "h.x", ACME, &["order-1"], "one").await?;
    assert_eq!(status, 200, "{first}");
    assert!(first["position"]["offset"].is_string(), "{first}");
    let (status, again) = publish_keyed(&server, "h.x", ACME, &["order-1"], "one").await?;
    assert_eq!(
        (status, &again),
        (200, &first),
        "a repeat gets the first position"
    );
    let page = server.metrics().await?;
    assert_eq!(metric(&page, "quiver_api_idempotent_repeats_total"), 1.0);
    // The same key for a different payload is a mistake, not a repeat.
    let (status, reused) = publish_keyed(&server, "h.x", ACME, &["order-1"], "two").await?;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    // Keys are per room and per tenant.
    let (status, _) = publish_keyed(&server, "news.y", ACME, &["order-1"], "one").await?;
    assert_eq!(status, 200);
    let (status, theirs) = publish_keyed(&server, "h.x", OTHER, &["order-1"], "one").await?;
    assert_eq!(status, 200, "{theirs}");
    // Without a key, every request publishes.
    let (status, _) = publish_keyed(&server, "h.x", ACME, &[], "unkeyed").await?;
    assert_eq!(status, 200);
    assert_eq!(history.payload().await?, Bytes::from_static(b"one"));
    assert_eq!(history.payload().await?, Bytes::from_static(b"unkeyed"));
    assert_eq!(live.payload().await?, Bytes::from_static(b"one"));

    // A broadcast retried with its key publishes only where it has not yet.
    let body = json!({"rooms": ["news.y", "h.x"], "payload": "both"});
    let mut answers = Vec::new();
    for _ in 0..2 {
        let request = reqwest::Client::new()
            .post(format!("http://{}/api/v1/broadcast", server.http))
            .bearer_auth(ACME)
            .header("Idempotency-Key", "fanout-7")
            .json(&body);
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 200);
        answers.push(response.json::<Value>().await?);
    }
    assert_eq!(answers[0], answers[1], "a repeat gets the first results");
    let (status, _) = publish_keyed(&server, "news.y", ACME, &[], "after").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"both"));
    assert_eq!(live.payload().await?, Bytes::from_static(b"after"));
    assert_eq!(history.payload().await?, Bytes::from_static(b"both"));

    // A broadcast whose key names another payload in any room is refused whole: nothing is
    // published, not even in the rooms the key has not been used in.
    let request = reqwest::Client::new()
        .post(format!("http://{}/api/v1/broadcast", server.http))
        .bearer_auth(ACME)
        .header("Idempotency-Key", "fanout-7")
        .json(&json!({"rooms": ["news.y", "h.fresh"], "payload": "other"}));
    let response = request.send().await?;
    assert_eq!(response.status().as_u16(), 422);

    // A client token's keys are its user's own: the backend's key with the backend's payload
    // publishes again (it neither probes nor takes over the backend's keys).
    let client = full_token("acme", "mallory");
    let (status, _) = publish_keyed(&server, "news.y", &client, &["order-1"], "one").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"one"));
    let (status, _) = publish_keyed(&server, "news.y", &client, &["order-1"], "one").await?;
    assert_eq!(status, 200, "the user's own repeat");

    // Malformed keys are a 400, and nothing is published.
    let long = "k".repeat(129);
    for idempotency in [
        &[""][..],
        &[long.as_str()],
        &["caf\u{e9}"],
        &["a b"],
        &["a", "b"],
    ] {
        let (status, answer) = publish_keyed(&server, "news.y", ACME, idempotency, "bad").await?;
        assert_eq!(status, 400, "{idempotency:?}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    let (status, _) = publish_keyed(&server, "news.y", ACME, &[], "last").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"last"));
    Ok(())
}

/// With NATS the instances share idempotency keys: a retry that a load balancer sends to
/// another instance gets the first answer and publishes nothing.
#[tokio::test]
async fn an_idempotency_key_holds_across_instances() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (a, b) = two_instances(&nats).await?;
    let mut on_b = Raw::connect(&b, &full_token("acme", "s")).await?;
    let mut history = on_b.subscribe("h.x").await?;
    let mut live = on_b.subscribe("news.y").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for room in ["h.x", "news.y"] {
        let (status, first) = publish_keyed(&a, room, ACME, &["pay-9"], "once").await?;
        assert_eq!(status, 200, "{first}");
        let (status, again) = publish_keyed(&b, room, ACME, &["pay-9"], "once").await?;
        assert_eq!((status, &again), (200, &first), "{room}: the repeat on b");
        let (status, reused) = publish_keyed(&b, room, ACME, &["pay-9"], "other").await?;
        assert_eq!(status, 422, "{reused}");
        // Another tenant's same key is its own.
        let (status, _) = publish_keyed(&b, room, OTHER, &["pay-9"], "once").await?;
        assert_eq!(status, 200);
        let (status, _) = publish_keyed(&a, room, ACME, &[], "next").await?;
        assert_eq!(status, 200);
    }
    for stream in [&mut history, &mut live] {
        assert_eq!(stream.payload().await?, Bytes::from_static(b"once"));
        assert_eq!(stream.payload().await?, Bytes::from_static(b"next"));
    }

    // A claim left unfinished (its instance died while publishing): a repeat is told to retry,
    // until the claim is older than the takeover time; then the repeat publishes.
    use quiver_server::idempotency::{self, cluster};
    let kv = async_nats::jetstream::new(async_nats::connect(nats.url()).await?)
        .get_key_value("quiver_idempotency")
        .await?;
    let tenant = quiver_proto::TenantId::parse("acme")?;
    let room = quiver_proto::RoomName::parse("news.y")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let digest = hex::encode(idempotency::digest(b"orphan"));
    for (key, age, status) in [
        ("fresh", Duration::ZERO, 409),
        ("stale", cluster::TAKEOVER + Duration::from_secs(1), 200),
    ] {
        let at_ms = now_ms - age.as_millis() as u64;
        let record = json!({"digest": digest, "at_ms": at_ms, "done": false, "position": null});
        kv.put(
            cluster::bucket_key(
                &tenant,
                &room,
                &idempotency::scoped(idempotency::BACKEND, key),
            ),
            record.to_string().into(),
        )
        .await?;
        let (got, answer) = publish_keyed(&a, "news.y", ACME, &[key], "orphan").await?;
        assert_eq!(got, status, "{key}: {answer}");
    }
    assert_eq!(live.payload().await?, Bytes::from_static(b"orphan"));
    let (status, _) = publish_keyed(&b, "news.y", ACME, &["stale"], "orphan").await?;
    assert_eq!(status, 200, "the takeover's publication is recorded");
    let (status, _) = publish_keyed(&a, "news.y", ACME, &[], "last").await?;
    assert_eq!(status, 200);
    assert_eq!(live.payload().await?, Bytes::from_static(b"last"));
    Ok(())
}

/// A keyed broadcast refused in a later room leaves nothing claimed in the cluster (outside
/// audit 93, F1): its earlier rooms' claims were forgotten on their instance only, so the key
/// stayed pending in the shared record, and a retry into such a room was told 409 "still
/// publishing" for 10 s and one with another payload 422 "used for a different payload" for the
/// record's five minutes, on every instance, though nothing was published. The claims are now
/// released in the cluster too (a moment after the answer: polled, for at most 3 s).
#[tokio::test]
async fn a_keyed_broadcast_refused_partway_leaves_no_claim_in_the_cluster() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let (a, b) = two_instances(&nats).await?;
    let (status, _) = publish_keyed(&a, "news.b", ACME, &["k-93"], "first").await?;
    assert_eq!(status, 200);
    let broadcast = |payload: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{}/api/v1/broadcast", a.http))
            .bearer_auth(ACME)
            .header("Idempotency-Key", "k-93")
            .json(&json!({"rooms": ["news.a", "news.b"], "payload": payload}))
            .send()
    };
    // Refused whole at news.b (another payload there), after news.a was claimed.
    assert_eq!(broadcast("second").await?.status().as_u16(), 422);
    // The backend drops news.b and retries: published, not 409 (the same payload) ...
    let retry = |server: &TestServer, payload: &'static str| {
        let server = server.http;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let response = reqwest::Client::new()
                    .post(format!("http://{server}/api/v1/publish/news.a"))
                    .bearer_auth(ACME)
                    .header("Idempotency-Key", "k-93")
                    .body(payload)
                    .send()
                    .await?;
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or_default();
                if status == 200 || tokio::time::Instant::now() >= deadline {
                    return anyhow::Ok((status, answer));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (status, answer) = retry(&b, "second").await?;
    assert_eq!(status, 200, "{answer}");
    // ... and a broadcast refused again leaves news.c free for another payload, not 422.
    let other = reqwest::Client::new()
        .post(format!("http://{}/api/v1/broadcast", b.http))
        .bearer_auth(ACME)
        .header("Idempotency-Key", "k-94")
        .json(&json!({"rooms": ["news.c", "news.b"], "payload": "x"}));
    let (status, _) = publish_keyed(&a, "news.b", ACME, &["k-94"], "y").await?;
    assert_eq!(status, 200);
    assert_eq!(other.send().await?.status().as_u16(), 422);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let status = loop {
        let (status, answer) = publish_keyed(&a, "news.c", ACME, &["k-94"], "z").await?;
        if status == 200 || tokio::time::Instant::now() >= deadline {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.0, 200, "{}", status.1);
    Ok(())
}

/// An instance releases or completes only its own claim (review 94, F1): a claim it left
/// pending and another instance took over (or a retry made again) is that instance's record,
/// and neither the first one's late release nor its late "done" touches it; deleting it let a
/// repeat publish twice.
#[tokio::test]
async fn a_late_release_leaves_a_claim_taken_over_alone() -> anyhow::Result<()> {
    use quiver_server::idempotency::{self, cluster};
    let nats = NatsServer::start().await?;
    let keys = cluster::ClusterKeys::new(async_nats::connect(nats.url()).await?);
    let digest = idempotency::digest(b"payload");
    let cluster::Remote::Claimed(mine) = keys
        .claim("acme.k", &digest)
        .await
        .map_err(anyhow::Error::msg)?
    else {
        anyhow::bail!("a fresh key was not claimed");
    };
    // Another instance's claim replaces it (a takeover, or a retry after a release).
    let kv = async_nats::jetstream::new(async_nats::connect(nats.url()).await?)
        .get_key_value("quiver_idempotency")
        .await?;
    let theirs =
        json!({"digest": hex::encode(digest), "at_ms": 0, "done": false, "position": null});
    kv.put("acme.k", theirs.to_string().into()).await?;
    keys.forget("acme.k", mine).await;
    assert!(
        keys.done("acme.k", mine, &digest, None).await.is_err(),
        "recorded over another instance's claim"
    );
    let entry = kv.entry("acme.k").await?;
    assert!(
        entry.is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put
            && e.value == theirs.to_string().as_bytes()),
        "the other instance's claim was deleted or overwritten"
    );
    // Its own claim, still its own, it does release.
    let cluster::Remote::Claimed(own) = keys
        .claim("acme.j", &digest)
        .await
        .map_err(anyhow::Error::msg)?
    else {
        anyhow::bail!("a fresh key was not claimed");
    };
    keys.forget("acme.j", own).await;
    let entry = kv.entry("acme.j").await?;
    assert!(
        !entry.is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put),
        "its own claim was not released"
    );
    Ok(())
}

/// A key claimed on one instance is answered on another whose budget for the tenant's clients
/// (10,000 new keys per 5 minutes, per instance) is spent (outside audit 93, F2: 429, where
/// README promises repeats of known keys an answer), and a repeat within the budget uses none
/// of it. Two instances' key stores on one NATS, driven directly: 10,000 claims through HTTP
/// would take the test far longer.
#[tokio::test]
async fn a_key_known_in_the_cluster_is_answered_at_an_instances_budget() -> anyhow::Result<()> {
    use quiver_server::idempotency::{self, Claim, Claimant, IdempotencyKeys};
    use std::sync::Arc;
    let nats = NatsServer::start().await?;
    let a = Arc::new(IdempotencyKeys::new(Some(
        async_nats::connect(nats.url()).await?,
    )));
    let b = Arc::new(IdempotencyKeys::new(Some(
        async_nats::connect(nats.url()).await?,
    )));
    let tenant = quiver_proto::TenantId::parse("acme")?;
    let room = quiver_proto::RoomName::parse("live.x")?;
    let digest = idempotency::digest(b"payload");
    let position = quiver_proto::Position {
        epoch: 1,
        offset: 7,
    };
    let claim = |keys: &Arc<IdempotencyKeys>, key: String| {
        let (keys, tenant, room) = (keys.clone(), tenant.clone(), room.clone());
        async move {
            keys.claim(
                Claimant::Client,
                &tenant,
                &room,
                &key,
                digest,
                Instant::now(),
            )
            .await
            .map_err(anyhow::Error::msg)
        }
    };
    for key in ["early", "late"] {
        let Claim::New(guard) = claim(&a, key.into()).await? else {
            anyhow::bail!("{key}: not claimed on a");
        };
        guard.done(Some(position)).await;
    }
    // A repeat on b within its budget is answered, and uses none of it.
    assert!(matches!(
        claim(&b, "early".into()).await?,
        Claim::Done(Some(p)) if p == position
    ));
    // b's budget for the tenant's clients, spent on new keys (claimed, then left unfinished).
    let budget = idempotency::MAX_CLIENT_KEYS_PER_TENANT;
    let mut guards = Vec::with_capacity(budget);
    for chunk in (0..budget).collect::<Vec<_>>().chunks(200) {
        let claims = chunk.iter().map(|i| claim(&b, format!("new-{i}")));
        for claimed in futures::future::join_all(claims).await {
            match claimed? {
                Claim::New(guard) => guards.push(guard),
                other => anyhow::bail!(
                    "claim {} of the budget: {}",
                    guards.len(),
                    match other {
                        Claim::TooMany(_) => "too many (the repeat used a place)",
                        _ => "not new",
                    }
                ),
            }
        }
    }
    assert!(matches!(
        claim(&b, "one-more".into()).await?,
        Claim::TooMany(_)
    ));
    // At the budget, a key the cluster knows is still answered, with its position.
    assert!(matches!(
        claim(&b, "late".into()).await?,
        Claim::Done(Some(p)) if p == position
    ));
    let other = idempotency::digest(b"other");
    assert!(matches!(
        b.claim(
            Claimant::Client,
            &tenant,
            &room,
            "late",
            other,
            Instant::now()
        )
        .await
        .map_err(anyhow::Error::msg)?,
        Claim::Mismatch
    ));
    drop(guards);
    Ok(())
}

/// Claims of new idempotency keys by tenant `acme`'s clients in room `live.x`, driven directly
/// on an `IdempotencyKeys` over `client` (the budget tests below: a budget's worth of claims
/// through HTTP would take far longer).
struct ClientClaims {
    keys: std::sync::Arc<quiver_server::idempotency::IdempotencyKeys>,
    tenant: quiver_proto::TenantId,
    room: quiver_proto::RoomName,
    digest: [u8; 32],
}

impl ClientClaims {
    fn new(client: async_nats::Client) -> anyhow::Result<Self> {
        use quiver_server::idempotency::{self, IdempotencyKeys};
        Ok(Self {
            keys: std::sync::Arc::new(IdempotencyKeys::new(Some(client))),
            tenant: quiver_proto::TenantId::parse("acme")?,
            room: quiver_proto::RoomName::parse("live.x")?,
            digest: idempotency::digest(b"payload"),
        })
    }

    async fn claim(&self, key: String) -> Result<quiver_server::idempotency::Claim, String> {
        self.keys
            .claim(
                quiver_server::idempotency::Claimant::Client,
                &self.tenant,
                &self.room,
                &key,
                self.digest,
                Instant::now(),
            )
            .await
    }
}

/// Keyed publishes refused 503 because the cluster's record could not be reached spend no
/// place in their tenant's new-key budget (outside audit 111, F8): each spent one, so a backend
/// or its clients retrying through an outage (a fresh key per message) were refused `429
/// quota_exceeded` for up to 5 minutes once NATS was back. A budget's worth of claims refused
/// while NATS is away, then a new key once it is back: claimed. Driven directly, as above:
/// 10,000 refusals through HTTP would take the test far longer.
#[tokio::test]
async fn keyed_claims_refused_while_nats_is_away_leave_the_budget_alone() -> anyhow::Result<()> {
    use async_nats::connection::State;
    use quiver_server::idempotency::{self, Claim};
    let mut nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let claims = ClientClaims::new(client.clone())?;
    let claim = |key: String| claims.claim(key);
    let until = |state: State| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while client.connection_state() != state {
                anyhow::ensure!(Instant::now() < deadline, "NATS client never {state:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        }
    };
    nats.kill();
    until(State::Disconnected).await?;
    for i in 0..idempotency::MAX_CLIENT_KEYS_PER_TENANT {
        anyhow::ensure!(
            claim(format!("outage-{i}")).await.is_err(),
            "claim {i} while NATS is away was not refused"
        );
    }
    nats.restart().await?;
    until(State::Connected).await?;
    match claim("after".into()).await.map_err(anyhow::Error::msg)? {
        Claim::New(guard) => guard.done(None).await,
        Claim::TooMany(_) => anyhow::bail!("refused 429: the outage's refusals spent the budget"),
        _ => anyhow::bail!("a fresh key was not claimed"),
    }
    Ok(())
}

/// A keyed claim that NATS did not answer in time keeps its place in the tenant's new-key
/// budget (review 113, F4): NATS stalled (not known to be away), the create waits in the
/// client's queue, the claim is answered 503 after 3 s, and NATS stores the pending record
/// once it resumes. Giving the place back left records in the shared bucket that no budget
/// counted, up to a queue's worth per stall. At the budget but one: two claims stalled, NATS
/// resumed, their records land, and a new key is refused 429 (it was claimed before).
#[tokio::test]
async fn keyed_claims_unanswered_while_nats_stalls_keep_their_place() -> anyhow::Result<()> {
    use quiver_server::idempotency::{self, Claim, Claimant};
    let nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let claims = ClientClaims::new(client.clone())?;
    let claim = |key: String| claims.claim(key);
    // Held, as publications under way are; in the record, so they keep their places anyway.
    let held: Vec<_> = futures::stream::iter(0..idempotency::MAX_CLIENT_KEYS_PER_TENANT - 1)
        .map(|i| claim(format!("k-{i}")))
        .buffer_unordered(64)
        .collect()
        .await;
    for (i, claimed) in held.iter().enumerate() {
        anyhow::ensure!(
            matches!(claimed, Ok(Claim::New(_))),
            "claim {i} within the budget not claimed"
        );
    }
    nats.pause()?;
    let stalled = futures::future::join_all((0..2).map(|i| claim(format!("stalled-{i}")))).await;
    nats.resume()?;
    anyhow::ensure!(
        stalled.iter().all(|c| c.is_err()),
        "claims while NATS was stalled were answered"
    );
    // What the stall left queued is stored now: a repeat of a stalled key finds it pending.
    let deadline = Instant::now() + WAIT;
    loop {
        match claim("stalled-0".into()).await {
            Ok(Claim::InProgress) => break,
            Ok(Claim::New(_)) => anyhow::bail!("the stalled claim was never stored"),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "the stalled claim never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match claim("after".into()).await.map_err(anyhow::Error::msg)? {
        Claim::TooMany(Claimant::Client) => {}
        Claim::New(_) => {
            anyhow::bail!(
                "a new key claimed: the stalled claims gave back places their records hold"
            )
        }
        _ => anyhow::bail!("a fresh key was neither claimed nor refused"),
    }
    drop(held);
    Ok(())
}
