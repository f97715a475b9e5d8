//! Presence: who is in a room, join/leave events, across instances, and cleanup after a crash.

use std::time::Duration;

use quiver_proto::{Command, ErrorCode, Event, Member};
use quiver_server::config::NamespaceConfig;
use quiver_tests::nats::NatsServer;
use quiver_tests::process::QuiverProcess;
use quiver_tests::*;

fn presence_ns(c: &mut quiver_server::Config) {
    c.namespaces.push(NamespaceConfig {
        name: "p".into(),
        history_size: 0,
        history_ttl: Duration::from_secs(60),
        presence: true,
        ..Default::default()
    });
}

async fn members(raw: &mut Raw, room: &str) -> anyhow::Result<Vec<String>> {
    match raw.request(Command::Presence { room: room.into() }).await? {
        Event::Presence { members, .. } => {
            let mut users: Vec<String> = members.into_iter().map(|m| m.user).collect();
            users.sort();
            Ok(users)
        }
        other => anyhow::bail!("presence: {other:?}"),
    }
}

fn joined_or_left(frame: quiver_proto::ServerFrame) -> (bool, Member) {
    match frame.event {
        Event::Joined { member, .. } => (true, member),
        Event::Left { member, .. } => (false, member),
        other => panic!("expected a presence event, got {other:?}"),
    }
}

#[tokio::test]
async fn presence_and_join_leave_events() -> anyhow::Result<()> {
    let server = TestServer::start_with(presence_ns).await?;
    let mut alice = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let mut room = alice.subscribe("p.room").await?;
    // Alice hears her own arrival, then Bob's, then Bob leaving.
    assert_eq!(joined_or_left(room.next().await?).1.user, "alice");

    let mut bob = Raw::connect(&server, &full_token("acme", "bob")).await?;
    let _bob_room = bob.subscribe("p.room").await?;
    assert_eq!(
        joined_or_left(room.next().await?),
        (
            true,
            Member {
                user: "bob".into(),
                session: joined_session(&bob)
            }
        )
    );
    assert_eq!(members(&mut alice, "p.room").await?, ["alice", "bob"]);

    bob.request(Command::Unsubscribe {
        room: "p.room".into(),
    })
    .await?;
    let (joined, member) = joined_or_left(room.next().await?);
    assert!(!joined && member.user == "bob");
    assert_eq!(members(&mut alice, "p.room").await?, ["alice"]);

    // Another tenant's room of the same name is empty.
    let mut other = Raw::connect(&server, &full_token("other", "eve")).await?;
    assert!(members(&mut other, "p.room").await?.is_empty());

    // Rooms outside presence namespaces, and rooms one may not subscribe to, are refused.
    let refused = alice
        .request(Command::Presence {
            room: "chat".into(),
        })
        .await?;
    assert!(matches!(refused, Event::Error { code, .. } if code == ErrorCode::BadRequest.as_u16()));
    let mut nosy = Raw::connect(&server, &token("acme", "nosy", &["x"], &[], 60)).await?;
    let refused = nosy
        .request(Command::Presence {
            room: "p.room".into(),
        })
        .await?;
    assert!(
        matches!(refused, Event::Error { code, .. } if code == ErrorCode::PermissionDenied.as_u16())
    );

    // A session that disconnects leaves.
    drop(_bob_room);
    let mut carol = Raw::connect(&server, &full_token("acme", "carol")).await?;
    let _c = carol.subscribe("p.room").await?;
    assert!(joined_or_left(room.next().await?).0);
    carol.conn().close(0u32.into(), b"");
    assert!(!joined_or_left(room.next().await?).0);
    Ok(())
}

fn joined_session(raw: &Raw) -> String {
    match &raw.welcome {
        Some(Event::Welcome { session, .. }) => session.clone(),
        _ => String::new(),
    }
}

/// Two instances on one NATS with presence kept `ttl_secs`: A a process (its config file the
/// presence namespace, `[nats]`, then `a_extra`), B in this process; and B's subscriber `bea`
/// in `p.lobby`, its own `Joined` read. The NATS server and A's directory are held with them.
struct TwoInstances {
    _nats: NatsServer,
    dir: tempfile::TempDir,
    a: QuiverProcess,
    _b: TestServer,
    on_b: Raw,
    room: RoomStream,
}

async fn two_instances(ttl_secs: u64, a_extra: &str) -> anyhow::Result<TwoInstances> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        format!(
            "[[namespaces]]\nname = \"p\"\npresence = true\n\n[nats]\nurl = \"{}\"\n\
             presence_ttl = \"{ttl_secs}s\"\n\n{a_extra}",
            nats.url()
        ),
    )?;
    let a = QuiverProcess::start(dir.path(), Some(&config), &[])?;
    let b = TestServer::start_with(|c| {
        presence_ns(c);
        let mut n = quiver_server::config::NatsConfig::new(nats.url());
        n.presence_ttl = Duration::from_secs(ttl_secs);
        c.nats = Some(n);
    })
    .await?;
    let mut on_b = Raw::connect(&b, &full_token("acme", "bea")).await?;
    let mut room = on_b.subscribe("p.lobby").await?;
    assert_eq!(joined_or_left(room.next().await?).1.user, "bea");
    Ok(TwoInstances {
        _nats: nats,
        dir,
        a,
        _b: b,
        on_b,
        room,
    })
}

#[tokio::test]
async fn presence_across_instances_and_after_a_crash() -> anyhow::Result<()> {
    // Every part bound: a `..` would drop the NATS server and B at once.
    let TwoInstances {
        _nats,
        dir: _dir,
        mut a,
        _b,
        mut on_b,
        mut room,
    } = two_instances(3, "").await?;

    // A session on A joins: B's subscriber hears it, and B's presence lists it.
    let mut on_a = Raw::connect_at(a.wt_port, a.hash, &full_token("acme", "abe")).await?;
    let _a_room = on_a.subscribe("p.lobby").await?;
    assert_eq!(joined_or_left(room.next().await?).1.user, "abe");
    assert_eq!(members(&mut on_b, "p.lobby").await?, ["abe", "bea"]);

    // A dies without a word: its entries expire within the TTL.
    a.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if members(&mut on_b, "p.lobby").await? == ["bea"] {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "a dead instance's presence lingered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // B's own entry outlives the TTL: it is refreshed (every third of it; a TTL of 3 s leaves
    // a loaded CI machine 2 s for a refresh: with 2 s, one run in many lost B's entry).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(members(&mut on_b, "p.lobby").await?, ["bea"]);
    Ok(())
}

/// An instance whose drain ends at its deadline with a session still open (it waits for a
/// `Call` the backend never answers) takes that session's presence with it: the other
/// instance hears its `Left` and lists it no more at once, not after `nats.presence_ttl` (here
/// 60 s; outside audit 80, 2: the member stayed listed until the entry expired).
#[tokio::test]
async fn a_session_cut_off_at_the_drain_deadline_leaves_presence_at_once() -> anyhow::Result<()> {
    let HeldInADrain {
        instances:
            TwoInstances {
                _nats,
                dir,
                mut a,
                _b,
                mut on_b,
                mut room,
            },
        caller,
        _caller_room,
        held,
    } = held_in_a_drain("1s").await?;
    a.terminate()?;

    let left = tokio::time::timeout(WAIT, room.next()).await??;
    assert_eq!(
        joined_or_left(left),
        (
            false,
            Member {
                user: "caller".into(),
                session: joined_session(&caller),
            }
        )
    );
    assert_eq!(members(&mut on_b, "p.lobby").await?, ["bea"]);
    // The premise: the session was still open at the deadline, not closed (with its own
    // `Left`) before it.
    a.wait_exit(WAIT)?;
    let stderr = std::fs::read_to_string(dir.path().join("quiver-stderr.log"))?;
    assert!(
        stderr.contains("drain deadline reached with sessions still closing"),
        "{stderr}"
    );
    held.abort();
    Ok(())
}

/// A second SIGTERM during the drain ends the process at once (outside audit 116, F5), its
/// open sessions' presence going first as at the deadline: the other instance hears their
/// `Left` at once, not after `nats.presence_ttl` (60 s), although the drain had 60 s to run.
#[tokio::test]
async fn a_second_sigterm_in_a_drain_leaves_presence_at_once() -> anyhow::Result<()> {
    let HeldInADrain {
        instances:
            TwoInstances {
                _nats,
                dir,
                mut a,
                _b,
                mut on_b,
                mut room,
            },
        caller,
        _caller_room,
        held,
    } = held_in_a_drain("60s").await?;
    a.terminate()?;
    let early = tokio::time::timeout(Duration::from_secs(1), room.next()).await;
    assert!(early.is_err(), "before the second signal: {early:?}");
    a.terminate()?;
    let left = tokio::time::timeout(WAIT, room.next()).await??;
    assert_eq!(
        joined_or_left(left),
        (false, member_of(&caller, "caller")),
        "stderr:\n{}",
        std::fs::read_to_string(dir.path().join("quiver-stderr.log"))?
    );
    assert_eq!(members(&mut on_b, "p.lobby").await?, ["bea"]);
    a.wait_exit(Duration::from_secs(4))?;
    held.abort();
    Ok(())
}

/// [`TwoInstances`] whose A has the drain given and calls going to a backend that takes
/// requests and never answers, and on A a session `caller` in `p.lobby` (its `Joined` read on
/// B) waiting for such a call: A's drain lasts to its deadline.
struct HeldInADrain {
    instances: TwoInstances,
    caller: Raw,
    /// Held: a room stream dropped would end the subscription, and its presence with it.
    _caller_room: RoomStream,
    held: tokio::task::JoinHandle<()>,
}

async fn held_in_a_drain(drain: &str) -> anyhow::Result<HeldInADrain> {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend_url = format!("http://{}/rpc", backend.local_addr()?);
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = backend.accept().await {
            held.push(tcp);
        }
    });
    let mut instances = two_instances(
        60,
        &format!("[timeouts]\ndrain = \"{drain}\"\n\n[rpc]\nurl = \"{backend_url}\"\n"),
    )
    .await?;
    let token = quiver_tests::rpc::call_token("acme", "caller", &["order.*"]);
    let a = &instances.a;
    let mut caller = Raw::connect_at(a.wt_port, a.hash, &token).await?;
    let caller_room = caller.subscribe("p.lobby").await?;
    assert_eq!(
        joined_or_left(instances.room.next().await?).1.user,
        "caller"
    );
    caller
        .send(Command::Call {
            method: "order.slow".into(),
            payload: bytes::Bytes::new(),
            timeout_ms: 20_000,
            idempotency_key: String::new(),
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(HeldInADrain {
        instances,
        caller,
        _caller_room: caller_room,
        held,
    })
}

#[tokio::test]
async fn a_presence_reply_never_exceeds_the_frame_limit() -> anyhow::Result<()> {
    // A small frame limit (the smallest allowed) stands in for a big room: 40 members with
    // 250-byte user ids are about 10.5 KB of members against an 8 KiB frame (the issue's case
    // was 250 × 256 bytes against 64 KiB).
    let max_frame = quiver_server::config::MIN_MAX_FRAME;
    let server = TestServer::start_with(|c| {
        presence_ns(c);
        c.limits.max_frame = max_frame;
        c.limits.max_payload = 2048;
    })
    .await?;
    let mut sessions = Vec::new();
    for i in 0..40 {
        let user = format!("{i:0>250}");
        let mut raw = Raw::connect(&server, &full_token("acme", &user)).await?;
        let stream = raw.subscribe("p.big").await?;
        sessions.push((raw, stream));
    }
    let (asker, _) = &mut sessions[0];
    let id = asker
        .send(Command::Presence {
            room: "p.big".into(),
        })
        .await?;
    let event = asker.recv_reply(id).await?;
    let body = quiver_proto::encode_event(&quiver_proto::ServerFrame {
        id,
        event: event.clone(),
    })
    .len()
        - quiver_proto::LENGTH_PREFIX;
    assert!(
        body <= max_frame as usize,
        "presence frame of {body} bytes over max_frame {max_frame}"
    );
    let Event::Presence {
        members, truncated, ..
    } = event
    else {
        anyhow::bail!("presence: {event:?}");
    };
    assert!(truncated, "{} of 40 members listed", members.len());
    assert!(members.len() >= 10, "only {} listed", members.len());
    // The listed ones are real members, in order.
    assert!(members.windows(2).all(|w| w[0] < w[1]));
    assert!(members.iter().all(|m| m.user.len() == 250));
    // Counted whole all the same.
    match asker
        .request(Command::PresenceStats {
            room: "p.big".into(),
        })
        .await?
    {
        Event::PresenceStats {
            sessions, users, ..
        } => assert_eq!((sessions, users), (40, 40)),
        other => anyhow::bail!("presence stats: {other:?}"),
    }

    // A room that fits is listed whole and says so.
    let (asker, _) = &mut sessions[1];
    let _s = asker.subscribe("p.small").await?;
    match asker
        .request(Command::Presence {
            room: "p.small".into(),
        })
        .await?
    {
        Event::Presence {
            members, truncated, ..
        } => assert!(!truncated && members.len() == 1),
        other => anyhow::bail!("presence: {other:?}"),
    }
    Ok(())
}

/// A NATS restarted with memory storage has lost the presence bucket. Every instance with
/// members makes it again and puts its entries back, so presence works again on an instance
/// that had already set it up (it answered `unavailable` until an instance that had never used
/// presence happened to create the bucket: an outside audit).
#[tokio::test]
async fn presence_heals_after_nats_restarts_without_its_bucket() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        presence_ns(c);
        c.nats = Some(quiver_server::config::NatsConfig::new(nats.url()));
    })
    .await?;
    let mut raw = Raw::connect(&server, &full_token("acme", "stays")).await?;
    let _room = raw.subscribe("p.lobby").await?;
    assert_eq!(members(&mut raw, "p.lobby").await?, ["stays"]);

    nats.restart().await?;
    // The session stayed; once NATS is back its entry is listed again, well within the TTL
    // (15 s) that a mere refresh would take at worst.
    let deadline = tokio::time::Instant::now() + WAIT;
    let last = loop {
        let listed = match raw
            .request(Command::Presence {
                room: "p.lobby".into(),
            })
            .await?
        {
            Event::Presence { members, .. } => {
                format!(
                    "{:?}",
                    members.into_iter().map(|m| m.user).collect::<Vec<_>>()
                )
            }
            other => format!("{other:?}"),
        };
        if listed == r#"["stays"]"# || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last, r#"["stays"]"#, "presence after the restart");
    Ok(())
}

/// `nats.presence_ttl` changed between starts: the bucket is brought to the new age limit, and
/// presence keeps working (outside audit: the old bucket refused the new configuration, every
/// `Presence` answered `unavailable` and no member was recorded until the bucket was deleted
/// by hand).
#[tokio::test]
async fn a_changed_presence_ttl_applies_to_the_bucket_at_the_next_start() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let with_ttl = |ttl: u64| {
        let url = nats.url();
        move |c: &mut quiver_server::Config| {
            presence_ns(c);
            let mut n = quiver_server::config::NatsConfig::new(url);
            n.presence_ttl = Duration::from_secs(ttl);
            c.nats = Some(n);
        }
    };
    let mut server = TestServer::start_with(with_ttl(15)).await?;
    let mut alice = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let _room = alice.subscribe("p.ttl").await?;
    assert_eq!(members(&mut alice, "p.ttl").await?, ["alice"]);
    alice.close().await;

    server.restart_with(with_ttl(3)).await?;
    wait_ready(&server).await?;
    let mut bob = Raw::connect(&server, &full_token("acme", "bob")).await?;
    let _room = bob.subscribe("p.ttl").await?;
    let listed = members(&mut bob, "p.ttl").await?;
    assert!(listed.contains(&"bob".to_owned()), "{listed:?}");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let mut bucket = js.get_stream("KV_quiver_presence").await?;
    assert_eq!(bucket.info().await?.config.max_age, Duration::from_secs(3));
    Ok(())
}

/// `nats.storage` switched between starts (and `presence_ttl` with it): JetStream cannot change
/// an existing bucket's storage, so the bucket keeps its own (with a warning), takes the new
/// age limit, and presence keeps working (outside audit: every `Presence` answered
/// `unavailable` and no member was recorded; then, with both changed, the old TTL stayed).
#[tokio::test]
async fn a_changed_storage_leaves_presence_working_on_the_existing_bucket() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let with_storage = |storage: &str| {
        let (url, storage) = (nats.url(), storage.to_owned());
        move |c: &mut quiver_server::Config| {
            presence_ns(c);
            let mut n = quiver_server::config::NatsConfig::new(url);
            n.presence_ttl = Duration::from_secs(if storage == "file" { 7 } else { 15 });
            n.storage = storage;
            c.nats = Some(n);
        }
    };
    let mut server = TestServer::start_with(with_storage("memory")).await?;
    let mut alice = Raw::connect(&server, &full_token("acme", "alice")).await?;
    let _room = alice.subscribe("p.store").await?;
    assert_eq!(members(&mut alice, "p.store").await?, ["alice"]);
    alice.close().await;

    server.restart_with(with_storage("file")).await?;
    wait_ready(&server).await?;
    let mut bob = Raw::connect(&server, &full_token("acme", "bob")).await?;
    let _room = bob.subscribe("p.store").await?;
    let listed = members(&mut bob, "p.store").await?;
    assert!(listed.contains(&"bob".to_owned()), "{listed:?}");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let mut bucket = js.get_stream("KV_quiver_presence").await?;
    let config = bucket.info().await?.config.clone();
    assert_eq!(
        (config.storage, config.max_age),
        (
            async_nats::jetstream::stream::StorageType::Memory,
            Duration::from_secs(7)
        ),
        "the bucket keeps its storage and takes the new presence_ttl"
    );
    Ok(())
}

/// An instance started while NATS is down refuses presence at once once its first connection
/// has been waited for (3 s), as one that lost NATS does: live rooms' `Subscribe`s are
/// answered at once, presence not recorded (outside cluster audit 5, F1: each waited 3 s for
/// the presence set-up, one after another, 9 s for three rooms), and a `Presence` listing is
/// refused `unavailable` rather than waited for.
#[tokio::test]
async fn an_instance_started_while_nats_is_down_subscribes_live_rooms_at_once() -> anyhow::Result<()>
{
    let mut nats = NatsServer::start().await?;
    let url = nats.url();
    nats.kill();
    let server = TestServer::start_with(move |c| {
        c.nats = Some(quiver_server::config::NatsConfig::new(url.clone()));
        presence_ns(c);
    })
    .await?;
    // Past the first connection's wait.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let mut c = Raw::connect(&server, &full_token("acme", "u")).await?;
    let started = std::time::Instant::now();
    let mut rooms = Vec::new();
    for room in ["p.a", "p.b", "p.c"] {
        rooms.push(c.subscribe(room).await?);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "three live rooms took {took:?} to subscribe"
    );
    match c.request(Command::Presence { room: "p.a".into() }).await? {
        Event::Error { code, .. } => assert_eq!(code, ErrorCode::Unavailable.as_u16()),
        other => anyhow::bail!("presence while NATS is down: {other:?}"),
    }
    drop(rooms);
    Ok(())
}

/// `PresenceStats` counts every session in a room and its distinct users, however many (a
/// `Presence` list holds what fits in a frame), as Centrifugo's `presence_stats` does, through
/// joins and leaves of one user's two sessions; the API's presence answer carries the same
/// counts. Refused like `Presence`.
#[tokio::test]
async fn presence_stats_count_every_session_and_user() -> anyhow::Result<()> {
    const KEY: &str = "admin-key-0123456789abcdef0123456789";
    let server = TestServer::start_with(|c| {
        presence_ns(c);
        c.api.keys = vec![quiver_server::config::ApiKey {
            key: KEY.into(),
            tenant: None,
        }];
    })
    .await?;
    let mut present = Vec::new();
    for user in ["alice", "alice", "bob"] {
        let mut raw = Raw::connect(&server, &full_token("acme", user)).await?;
        let stream = raw.subscribe("p.room").await?;
        present.push((raw, stream));
    }
    // Another tenant's same room counts apart.
    let mut elsewhere = Raw::connect(&server, &full_token("other", "alice")).await?;
    let _elsewhere = elsewhere.subscribe("p.room").await?;

    let carol = quiver_client::Client::connect(client_config(
        &server,
        quiver_client::token_fixed(full_token("acme", "carol")),
    ))
    .await?;
    let stats = carol.presence_stats("p.room").await?;
    assert_eq!((stats.sessions, stats.users), (3, 2));
    let (asker, _) = &mut present[0];
    match asker
        .request(Command::PresenceStats {
            room: "p.room".into(),
        })
        .await?
    {
        Event::PresenceStats {
            room,
            sessions,
            users,
        } => assert_eq!((room.as_str(), sessions, users), ("p.room", 3, 2)),
        other => anyhow::bail!("presence stats: {other:?}"),
    }
    // An empty room, a room without presence, a room the token may not read.
    let empty = carol.presence_stats("p.empty").await?;
    assert_eq!((empty.sessions, empty.users), (0, 0));
    match carol.presence_stats("chat.room").await {
        Err(quiver_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, ErrorCode::BadRequest.as_u16())
        }
        other => anyhow::bail!("no presence in chat: {other:?}"),
    }
    let reader = quiver_client::Client::connect(client_config(
        &server,
        quiver_client::token_fixed(token("acme", "dan", &["x.>"], &[], 3600)),
    ))
    .await?;
    match reader.presence_stats("p.room").await {
        Err(quiver_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, ErrorCode::PermissionDenied.as_u16())
        }
        other => anyhow::bail!("no subscribe permission: {other:?}"),
    }

    let (status, body) = api_post(
        &server,
        "presence",
        KEY,
        serde_json::json!({"tenant": "acme", "room": "p.room"}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["sessions"].as_u64(), body["users"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(body["members"].as_array().map(Vec::len), Some(3));

    // Leaves: one of alice's two sessions goes (she is still there), then the other (she is
    // not); counted as they happen, on the protocol and the API alike.
    for (i, counted) in [(0, (2, 2)), (1, (1, 1))] {
        let (raw, _) = &mut present[i];
        let reply = raw
            .request(Command::Unsubscribe {
                room: "p.room".into(),
            })
            .await?;
        assert!(matches!(reply, Event::Unsubscribed { .. }), "{reply:?}");
        let stats = carol.presence_stats("p.room").await?;
        assert_eq!((stats.sessions, stats.users), counted, "after leave {i}");
    }
    let (status, body) = api_post(
        &server,
        "presence",
        KEY,
        serde_json::json!({"tenant": "acme", "room": "p.room"}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["sessions"].as_u64(), body["users"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(body["members"][0]["user"], "bob", "{body}");
    assert_eq!(body["truncated"], false, "{body}");
    Ok(())
}

/// After the instance departs (a drain's deadline with sessions open: each member it listed
/// gets its `Left` and its key deleted), a join still under way is refused and lists nobody,
/// not even after the refresh that re-puts local entries, and a leave of a member the
/// departure took is refused: the session core announces neither a `Joined` after the `Left`
/// nor a second `Left` (outside audit 84, F2).
#[tokio::test]
async fn after_a_departure_a_join_lists_nobody_and_a_leave_is_not_announced_again(
) -> anyhow::Result<()> {
    use quiver_server::broker::Broker;
    let nats = NatsServer::start().await?;
    let mut config = quiver_server::Config::default();
    presence_ns(&mut config);
    // A refresh every second (a third of the TTL), so the test sees one after the departure.
    let mut nats_config = quiver_server::config::NatsConfig::new(nats.url());
    nats_config.presence_ttl = Duration::from_secs(3);
    config.nats = Some(nats_config.clone());
    let hub = std::sync::Arc::new(quiver_server::hub::Hub::with_namespaces(["p"]));
    let broker = quiver_server::broker::nats::NatsBroker::connect(
        &nats_config,
        hub,
        std::sync::Arc::new(config),
    )
    .await?;
    let key = quiver_server::hub::RoomKey {
        tenant: quiver_proto::TenantId::parse("acme")?,
        room: quiver_proto::RoomName::parse("p.lobby")?,
    };
    let member = |session: &str| Member {
        user: "u".into(),
        session: session.into(),
    };
    let sessions = |members: Vec<Member>| {
        let mut sessions: Vec<String> = members.into_iter().map(|m| m.session).collect();
        sessions.sort();
        sessions
    };
    // The broker's first connection may still be on its way.
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = broker.join(key.clone(), member("s1")).await {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.join(key.clone(), member("s2")).await?;
    assert_eq!(sessions(broker.members(key.clone()).await?), ["s1", "s2"]);

    broker.depart().await;
    assert!(sessions(broker.members(key.clone()).await?).is_empty());
    let joined = broker.join(key.clone(), member("s3")).await;
    assert!(joined.is_err(), "a join after the departure: {joined:?}");
    let left = broker.leave(key.clone(), member("s1")).await;
    assert!(left.is_err(), "a leave the departure took: {left:?}");
    // Past a refresh: nothing was put back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sessions(broker.members(key.clone()).await?).is_empty());
    Ok(())
}

/// The session core's side of a departure (review 89, F1): once the instance has departed, a
/// session that unsubscribes announces no second `Left`, and one that subscribes no `Joined`
/// (the broker refuses both; the core announced them all the same, before its check).
#[tokio::test]
async fn after_a_departure_sessions_announce_no_presence() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        presence_ns(c);
        c.nats = Some(quiver_server::config::NatsConfig::new(nats.url()));
    })
    .await?;
    let mut watcher = Raw::connect(&server, &full_token("acme", "watcher")).await?;
    let mut room = watcher.subscribe("p.lobby").await?;
    assert_eq!(
        joined_or_left(room.next().await?),
        (true, member_of(&watcher, "watcher"))
    );
    let mut leaver = Raw::connect(&server, &full_token("acme", "leaver")).await?;
    let _leaver_room = leaver.subscribe("p.lobby").await?;
    assert_eq!(
        joined_or_left(room.next().await?),
        (true, member_of(&leaver, "leaver"))
    );

    let broker = server.server.as_ref().map(|s| s.broker().clone());
    broker
        .ok_or_else(|| anyhow::anyhow!("no server"))?
        .depart()
        .await;
    // The departure's own `Left`s, one per member.
    let mut left = Vec::new();
    for _ in 0..2 {
        let (joined, member) = joined_or_left(tokio::time::timeout(WAIT, room.next()).await??);
        assert!(!joined, "{member:?} joined");
        left.push(member.user);
    }
    left.sort();
    assert_eq!(left, ["leaver", "watcher"]);

    let reply = leaver
        .request(Command::Unsubscribe {
            room: "p.lobby".into(),
        })
        .await?;
    assert!(matches!(reply, Event::Unsubscribed { .. }), "{reply:?}");
    let mut newcomer = Raw::connect(&server, &full_token("acme", "newcomer")).await?;
    let _newcomer_room = newcomer.subscribe("p.lobby").await?;
    // Neither a second `Left` for the leaver nor a `Joined` for the newcomer.
    let more = tokio::time::timeout(Duration::from_secs(1), room.next()).await;
    assert!(more.is_err(), "after the departure: {more:?}");
    Ok(())
}

fn member_of(raw: &Raw, user: &str) -> Member {
    Member {
        user: user.into(),
        session: joined_session(raw),
    }
}
