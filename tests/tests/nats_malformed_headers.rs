//! A NATS message whose header block cannot be read (not `NATS/1.0`, a status that is not a
//! number, a line without a colon) is taken as one without headers. nats-server passes headers
//! through unread, so any publisher allowed on a subject Quiver subscribes to (a tenant's
//! backend with `quiver.<tenant>.>`) can send one. async-nats dropped its whole connection for
//! it: one such message disconnected every tenant's rooms on the instance, or lost every call
//! and hook in flight; and a NATS client that dropped only the message left a gap that a
//! history room's JetStream consumer read again and again (outside audit 35, F1). The patch in
//! `vendor/async-nats`. One file of its own: the reconnect counter is process-wide.

use std::time::Duration;

use anyhow::{bail, Result};
use futures::StreamExt;
use quiver_client::{token_fixed, Client, ErrorCode, SubEvent, Subscription};
use quiver_tests::nats::{clustered, NatsServer, RawNats, MALFORMED_HEADERS as MALFORMED};
use quiver_tests::rpc::call_token;
use quiver_tests::*;

async fn next_payload(sub: &mut Subscription) -> Result<String> {
    match tokio::time::timeout(WAIT, sub.next()).await? {
        Some(SubEvent::Publication { payload, .. }) => {
            Ok(String::from_utf8_lossy(&payload).into_owned())
        }
        other => bail!("expected a publication, got {other:?}"),
    }
}

async fn connect(server: &TestServer, token: String) -> Result<Client> {
    Ok(Client::connect(client_config(server, token_fixed(token))).await?)
}

#[tokio::test]
async fn a_malformed_header_block_disconnects_no_room() -> Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        clustered(&nats)(c);
        add_history_namespace(c, "h", 100);
    })
    .await?;
    wait_ready(&server).await?;
    let alice = connect(&server, full_token("acme", "alice")).await?;
    // Another tenant's subscriber on the same instance: it must not notice.
    let bob = connect(&server, full_token("other", "bob")).await?;
    let mut live = alice.subscribe("chat.lobby").await?;
    let mut kept = alice.subscribe("h.room").await?;
    let mut theirs = bob.subscribe("chat.lobby").await?;
    let mut raw = RawNats::connect(&nats).await?;
    for (i, header) in MALFORMED.iter().enumerate() {
        raw.hpub("quiver.acme.room.chat.lobby", header, "poison")
            .await?;
        raw.hpub("quiver.acme.room.h.room", header, "poison")
            .await?;
        alice.publish_ack("chat.lobby", format!("a{i}")).await?;
        alice.publish_ack("h.room", format!("k{i}")).await?;
        bob.publish_ack("chat.lobby", format!("b{i}")).await?;
    }
    // The other tenant sees its own publications, in order, nothing else.
    for i in 0..MALFORMED.len() {
        assert_eq!(next_payload(&mut theirs).await?, format!("b{i}"));
    }
    // In the sender's tenant each is taken as a message without headers: a publication of its
    // backend, as a plain NATS publish is (a live room's own publications may pass it).
    for (sub, prefix) in [(&mut live, "a"), (&mut kept, "k")] {
        let mut got = Vec::new();
        for _ in 0..2 * MALFORMED.len() {
            got.push(next_payload(sub).await?);
        }
        let own: Vec<&String> = got.iter().filter(|p| *p != "poison").collect();
        let expected: Vec<String> = (0..MALFORMED.len())
            .map(|i| format!("{prefix}{i}"))
            .collect();
        assert_eq!(own, expected.iter().collect::<Vec<_>>(), "{got:?}");
    }
    // The history room reads back whole, the unreadable ones in their places (a NATS client
    // that dropped them made every read fail: "lost a message in transit").
    let page = alice.history("h.room", None, 100).await?;
    let read: Vec<String> = page
        .publications
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..MALFORMED.len())
        .flat_map(|i| ["poison".to_owned(), format!("k{i}")])
        .collect();
    assert_eq!(read, expected);
    // Such a message as the room's newest: the room is still read, and subscribed to, by its
    // last kept message (outside audit 36, N1: every Subscribe and History failed).
    for header in MALFORMED {
        raw.hpub("quiver.acme.room.h.room", header, "last").await?;
        assert_eq!(next_payload(&mut kept).await?, "last");
        let page = alice.history("h.room", None, 100).await?;
        let newest = page.publications.last().map(|p| p.payload.clone());
        assert_eq!(newest.as_deref(), Some(&b"last"[..]));
        let carol = connect(&server, full_token("acme", "carol")).await?;
        let mut again = carol.subscribe("h.room").await?;
        alice.publish_ack("h.room", "next").await?;
        assert_eq!(next_payload(&mut again).await?, "next");
        assert_eq!(next_payload(&mut kept).await?, "next");
        carol.close().await;
    }
    // A disconnect shows up at once (the client reads the message and drops the connection);
    // give it time to be counted before saying there was none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = server.metrics().await?;
    assert_eq!(metric(&page, "quiver_nats_reconnects_total"), 0.0, "{page}");
    assert_eq!(metric(&page, "quiver_nats_connected"), 1.0, "{page}");
    alice.close().await;
    bob.close().await;
    Ok(())
}

/// A backend whose every other reply has a header block that cannot be read: such a reply is a
/// bad answer (it may carry a `Quiver-Status` the server cannot see), and the calls after it
/// are answered. Before the patch the first one dropped the server's RPC connection, and every
/// call and hook of every tenant in flight with it.
#[tokio::test]
async fn a_malformed_reply_is_a_bad_answer_and_costs_only_itself() -> Result<()> {
    let nats = NatsServer::start().await?;
    let server = TestServer::start_with(|c| {
        clustered(&nats)(c);
        c.rpc.timeout = Duration::from_secs(3);
    })
    .await?;
    wait_ready(&server).await?;
    let listener = async_nats::connect(nats.url()).await?;
    let mut requests = listener.subscribe("quiver.acme.rpc.>").await?;
    listener.flush().await?;
    let mut raw = RawNats::connect(&nats).await?;
    let backend = tokio::spawn(async move {
        let mut n = 0;
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            if n % 2 == 0 {
                let header = MALFORMED[(n / 2) % MALFORMED.len()];
                raw.hpub(&reply, header, "poison").await?;
            } else {
                raw.publish(&reply, "real").await?;
            }
            n += 1;
        }
        anyhow::Ok(())
    });
    let alice = connect(&server, call_token("acme", "alice", &["order.*"])).await?;
    for _ in 0..MALFORMED.len() {
        match alice.call("order.place", "x").await {
            Err(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::BackendError), "{e}");
                assert!(e.to_string().contains("header block cannot be read"), "{e}");
            }
            Ok(answer) => bail!("expected backend_error, got {answer:?}"),
        }
        assert_eq!(alice.call("order.place", "x").await?, "real");
    }
    alice.close().await;
    backend.abort();
    Ok(())
}

/// A server on `nats` with a history namespace `h` and `max_payload` 1 KiB, `alice` subscribed
/// to `h.room` (`live`), and the position of her first publication there, "one".
struct Stored {
    server: TestServer,
    alice: Client,
    live: Subscription,
    one: quiver_client::Position,
}

async fn one_stored(nats: &NatsServer) -> Result<Stored> {
    let server = TestServer::start_with(|c| {
        clustered(nats)(c);
        add_history_namespace(c, "h", 100);
        c.limits.max_payload = 1024;
    })
    .await?;
    wait_ready(&server).await?;
    let alice = connect(&server, full_token("acme", "alice")).await?;
    let mut live = alice.subscribe("h.room").await?;
    alice.publish_ack("h.room", "one").await?;
    let one = match tokio::time::timeout(WAIT, live.next()).await? {
        Some(SubEvent::Publication {
            position: Some(p), ..
        }) => p,
        other => bail!("expected a publication with a position, got {other:?}"),
    };
    Ok(Stored {
        server,
        alice,
        live,
        one,
    })
}

/// A payload over `max_payload` published into a history room's subject by something else than
/// Quiver (the stream takes a little more, room for headers): never sent, live or read back.
/// A resume's `replayed` counts what is sent (clients check it), and `History` pages go past it
/// (outside audit 36, N2: replayed, past `max_frame` at its largest, and a page from the
/// publication before it came back empty and `truncated` every time).
#[tokio::test]
async fn a_stored_payload_too_large_to_send_is_passed_over() -> Result<()> {
    use quiver_proto::Recovery;
    let nats = NatsServer::start().await?;
    let Stored {
        server,
        alice,
        mut live,
        one,
    } = one_stored(&nats).await?;
    let oversized = |page: &str| {
        metric_sum(
            page,
            "quiver_nats_messages_dropped_total",
            &[("reason", "oversized")],
        )
    };
    let before = oversized(&server.metrics().await?);
    let mut raw = RawNats::connect(&nats).await?;
    let big = "x".repeat(3_000);
    raw.publish("quiver.acme.room.h.room", &big).await?;
    alice.publish_ack("h.room", "two").await?;
    raw.publish("quiver.acme.room.h.room", &big).await?;
    assert_eq!(next_payload(&mut live).await?, "two", "live: passed over");
    // Counted (outside audit 75, F2); other tests of this process may add theirs.
    let counted = oversized(&server.metrics().await?) - before;
    assert!(counted >= 1.0, "{counted} counted");

    let payloads = |page: &quiver_client::HistoryPage| -> Vec<String> {
        page.publications
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    };
    let page = alice.history("h.room", None, 100).await?;
    assert_eq!(payloads(&page), ["one", "two"]);
    let page = alice.history("h.room", Some(one), 100).await?;
    assert_eq!(payloads(&page), ["two"]);
    assert!(!page.truncated);
    // One at a time: the page after "one" is "two", not an empty page.
    let page = alice.history("h.room", Some(one), 1).await?;
    assert_eq!(payloads(&page), ["two"]);

    // A room that keeps nothing sendable pages as an empty room would (outside audit 37, F-A:
    // 117, a position that cannot be paged from).
    raw.publish("quiver.acme.room.h.big", &big).await?;
    raw.publish("quiver.acme.room.h.big", &big).await?;
    for limit in [1, 100] {
        let page = alice.history("h.big", None, limit).await?;
        assert!(page.publications.is_empty() && !page.truncated, "{page:?}");
        assert!(page.position.is_some(), "{page:?}");
    }

    let bob = connect(&server, full_token("acme", "bob")).await?;
    let mut resumed = bob.subscribe_from("h.room", one).await?;
    match tokio::time::timeout(WAIT, resumed.next()).await? {
        Some(SubEvent::Resubscribed { recovery }) => {
            assert_eq!(recovery, Recovery::Recovered { replayed: 1 })
        }
        other => bail!("expected Resubscribed, got {other:?}"),
    }
    assert_eq!(next_payload(&mut resumed).await?, "two");
    alice.publish_ack("h.room", "three").await?;
    assert_eq!(next_payload(&mut resumed).await?, "three");
    // Nothing else came: no second Resubscribed saying the replay was not as announced.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), resumed.next())
            .await
            .is_err()
    );
    alice.close().await;
    bob.close().await;
    Ok(())
}

/// A publisher's own `Nats-Msg-Size` header does not decide what a resume replays: JetStream
/// adds the stored payload's size to a headers-only read after the message's own headers, and
/// the first value was read. A small payload claiming to be large was left out of the replay
/// (a `Recovered` with a hidden gap; the live subscriber here missed it too), a large one
/// claiming to be small counted in `replayed` and never sent (outside audit 75, F1).
#[tokio::test]
async fn a_forged_size_header_decides_nothing_in_a_replay() -> Result<()> {
    use quiver_proto::Recovery;
    let nats = NatsServer::start().await?;
    let Stored {
        server,
        alice,
        mut live,
        one,
    } = one_stored(&nats).await?;
    let mut raw = RawNats::connect(&nats).await?;
    let subject = "quiver.acme.room.h.room";
    raw.hpub(
        subject,
        "NATS/1.0\r\nNats-Msg-Size: 999999\r\n\r\n",
        "small",
    )
    .await?;
    let big = "x".repeat(3_000);
    raw.hpub(subject, "NATS/1.0\r\nNats-Msg-Size: 1\r\n\r\n", &big)
        .await?;
    alice.publish_ack("h.room", "two").await?;
    assert_eq!(next_payload(&mut live).await?, "small");
    assert_eq!(next_payload(&mut live).await?, "two");

    let bob = connect(&server, full_token("acme", "bob")).await?;
    let mut resumed = bob.subscribe_from("h.room", one).await?;
    match tokio::time::timeout(WAIT, resumed.next()).await? {
        Some(SubEvent::Resubscribed { recovery }) => {
            assert_eq!(recovery, Recovery::Recovered { replayed: 2 })
        }
        other => bail!("expected Resubscribed, got {other:?}"),
    }
    assert_eq!(next_payload(&mut resumed).await?, "small");
    assert_eq!(next_payload(&mut resumed).await?, "two");
    // Nothing else came: no second Resubscribed saying the replay was not as announced.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), resumed.next())
            .await
            .is_err()
    );
    alice.close().await;
    bob.close().await;
    Ok(())
}
