//! The client against a hostile WebTransport server: a frame that breaks the protocol on a
//! room's own stream (a length over the client's ceiling, a zero length, a body that does not
//! decode, a stream without its `SubscriptionStream` header) ends the connection, as the same
//! frame does on WebSocket (where every room shares the one socket); so does a frame naming
//! another room. The client reports the loss, reconnects with backoff and subscribes again.
//! Before, it only logged a warning and stopped reading that stream: the room went quiet and the
//! application was never told (or, for another room's frame, it was delivered as that room's).
//!
//! Also (outside audit 103): replies over 64 KiB on the control stream within the session's
//! `max_frame` (F1); a stream whose header announces a huge frame, or never comes (F5); a
//! subscription the server ended while it keeps writing on the room's stream (F4).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use quiver_client::{
    token_fixed, Client, ClientConfig, ConnectionState, Limits, Recovery, SubEvent, Transport,
    Trust,
};
use quiver_proto::{
    decode_command, decode_event, encode_event, ClientFrame, Command, DecodeError, Event,
    FrameDecoder, Member, Position, ServerFrame, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use wtransport::endpoint::IncomingSession;
use wtransport::tls::{Certificate, CertificateChain, PrivateKey};
use wtransport::{Connection, Endpoint, Identity, ServerConfig};

/// Bound on every wait: a client that handles the bad frame reconnects well within it (the
/// first backoff is at most 100 ms).
const WAIT: Duration = Duration::from_secs(8);
const ROOM: &str = "chat.a";

/// The frame that breaks the protocol.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    /// On the room's stream, a length of 2 MiB: over the client's own ceiling (1 MiB by
    /// default), whatever `Welcome` announced (here 4 GiB).
    Oversized,
    /// On the room's stream, a zero length.
    Empty,
    /// On the room's stream, a `Publication` whose room name is cut short.
    Garbage,
    /// A room stream that begins with a `Publication` instead of its `SubscriptionStream`.
    NoHeader,
    /// The garbage body on the control stream instead.
    Control,
    /// On the room's stream, a `Publication` naming another room (outside audit G3: it was
    /// delivered as that room's message, and its position became the room's resume point).
    ForeignPublication,
    /// On the room's stream, a `Joined` naming another room.
    ForeignJoined,
    /// The room's stream, after one good publication, reset with no `Unsubscribed` on the
    /// control stream (outside client audit 14, M2: the room went silently dead).
    ResetSilently,
    /// A room stream whose first frame announces 1,000,000 bytes (under the client's 1 MiB
    /// ceiling, far over any header) instead of its header.
    HugeHeader,
    /// A room stream that sends half a length prefix and stalls, its header never coming.
    StalledHeader,
    /// After one publication ("early"), an unsolicited `Unsubscribed { 112 }` on the control
    /// stream, and then, the room's stream left open, a publication ("late-N") every 100 ms.
    LateAfterUnsubscribed,
    /// After the header, an `Unsubscribed { 103 }` on the control stream, then [`TAIL`]
    /// publications ("tail-N") on the room's stream, which is then finished: a correct server
    /// that ends a room for good and writes its last frames.
    FinishedAfterUnsubscribed,
}

/// How many publications [`Bad::FinishedAfterUnsubscribed`] writes after the end: many more
/// than the test's subscription queue holds.
const TAIL: usize = 50;

impl Bad {
    /// The bytes sent after the room stream's header (or, for `NoHeader`, instead of it).
    fn bytes(self) -> Vec<u8> {
        match self {
            Bad::Oversized => {
                let mut b = (2 * 1024 * 1024u32).to_be_bytes().to_vec();
                b.extend_from_slice(&[7; 64]);
                b
            }
            Bad::Empty => 0u32.to_be_bytes().to_vec(),
            Bad::Garbage | Bad::Control => garbage(),
            Bad::NoHeader => publication("bad").to_vec(),
            Bad::ResetSilently => publication("before").to_vec(),
            Bad::HugeHeader => {
                let mut b = 1_000_000u32.to_be_bytes().to_vec();
                b.extend_from_slice(&[7; 1024]);
                b
            }
            Bad::StalledHeader => vec![0, 0],
            Bad::LateAfterUnsubscribed => publication("early").to_vec(),
            Bad::FinishedAfterUnsubscribed => Vec::new(),
            Bad::ForeignPublication => event(
                0,
                Event::Publication {
                    room: OTHER_ROOM.into(),
                    position: Some(Position {
                        epoch: 1,
                        offset: 1000,
                    }),
                    payload: "foreign".into(),
                },
            )
            .to_vec(),
            Bad::ForeignJoined => event(
                0,
                Event::Joined {
                    room: OTHER_ROOM.into(),
                    member: Member {
                        user: "foreign".into(),
                        session: "s".into(),
                    },
                },
            )
            .to_vec(),
        }
    }
}

/// The room a foreign frame names.
const OTHER_ROOM: &str = "chat.other";

/// A frame whose body does not decode: id 0, type 7 (`Publication`), a room name of 5 bytes
/// with only one there.
fn garbage() -> Vec<u8> {
    let body = [0x00, 0x07, 0x05, b'a'];
    assert!(
        matches!(decode_event(&body), Err(e) if !matches!(e, DecodeError::UnknownType { .. })),
        "the garbage body must not decode"
    );
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn event(id: u32, event: Event) -> bytes::Bytes {
    encode_event(&ServerFrame { id, event })
}

fn publication(payload: impl Into<bytes::Bytes>) -> bytes::Bytes {
    event(
        0,
        Event::Publication {
            room: ROOM.into(),
            position: None,
            payload: payload.into(),
        },
    )
}

/// The payload's size of every `Reply` to a `Call`: over the 64 KiB default frame, well within
/// the session's `max_frame`.
const REPLY_BYTES: usize = 100 * 1024;

impl Bad {
    /// Whether the room's stream begins without its `SubscriptionStream` header.
    fn no_header(self) -> bool {
        matches!(self, Bad::NoHeader | Bad::HugeHeader | Bad::StalledHeader)
    }
}

/// What the server saw.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Session `n` (from 1) was accepted.
    Session(u32),
    /// Session `n` got a `Subscribe` for this room.
    Subscribe(u32, String),
}

/// What every session does when the client subscribes.
#[derive(Clone, Copy)]
struct Plan {
    /// `None`: nothing bad (a test that only calls).
    bad: Option<Bad>,
    /// Sessions after the first send a good publication ("after") instead of the bad frame.
    then_publish: bool,
}

/// A self-signed ECDSA P-256 certificate valid for a week (hash pinning accepts at most 14
/// days), and its SHA-256.
fn identity() -> anyhow::Result<(Identity, [u8; 32])> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(7);
    let cert = params.self_signed(&key)?;
    let cert = Certificate::from_der(cert.der().to_vec())?;
    let hash = *cert.hash().as_ref();
    let identity = Identity::new(
        CertificateChain::single(cert),
        PrivateKey::from_der_pkcs8(key.serialize_der()),
    );
    Ok((identity, hash))
}

/// Serves `plan` on a loopback UDP port: the port, the certificate's hash, and what it saw.
async fn hostile(plan: Plan) -> anyhow::Result<(u16, [u8; 32], mpsc::UnboundedReceiver<Seen>)> {
    let (identity, hash) = identity()?;
    let config = ServerConfig::builder()
        .with_bind_address(SocketAddr::from(([127, 0, 0, 1], 0)))
        .with_identity(identity)
        .build();
    let endpoint = Endpoint::server(config)?;
    let port = endpoint.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    let sessions = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        loop {
            let incoming = endpoint.accept().await;
            let (tx, sessions) = (tx.clone(), sessions.clone());
            // A session ends when the client drops it; that is what the tests provoke.
            tokio::spawn(async move {
                let _ = serve(incoming, sessions, plan, tx).await;
            });
        }
    });
    Ok((port, hash, rx))
}

/// One session: `Welcome`, `Pong`s (so the client's heartbeat never ends it), a `Reply` of
/// [`REPLY_BYTES`] to a `Call`, and for a `Subscribe`, `Subscribed`, the room's stream with its
/// header, then the plan's frame.
async fn serve(
    incoming: IncomingSession,
    sessions: Arc<AtomicU32>,
    plan: Plan,
    seen: mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<()> {
    let conn: Connection = incoming.await?.accept().await?;
    let session = sessions.fetch_add(1, Ordering::SeqCst) + 1;
    let _ = seen.send(Seen::Session(session));
    let bad = plan.bad.filter(|_| session == 1 || !plan.then_publish);
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buf = vec![0u8; 16 * 1024];
    // The room streams stay open while the session lasts (dropping one would finish it).
    let mut streams = Vec::new();
    loop {
        while let Some(body) = dec.next_frame()? {
            let ClientFrame { id, command } = decode_command(&body)?;
            match command {
                Command::Hello { .. } => {
                    let welcome = Event::Welcome {
                        version: PROTOCOL_VERSION,
                        session: format!("s{session}"),
                        user: "u".into(),
                        tenant: "t".into(),
                        expires_at: None,
                        limits: Limits {
                            max_frame: u32::MAX,
                            max_payload: u32::MAX - 1024,
                            max_subscriptions: 16,
                            commands_per_second: 1000,
                        },
                    };
                    send.write_all(&event(id, welcome)).await?;
                }
                Command::Ping => send.write_all(&event(id, Event::Pong)).await?,
                Command::Call { .. } => {
                    let reply = Event::Reply {
                        payload: vec![5u8; REPLY_BYTES].into(),
                    };
                    send.write_all(&event(id, reply)).await?;
                }
                Command::Subscribe { room, .. } => {
                    let _ = seen.send(Seen::Subscribe(session, room.clone()));
                    let subscribed = Event::Subscribed {
                        room: room.clone(),
                        position: None,
                        recovery: Recovery::NotRequested,
                        subscription: None,
                    };
                    send.write_all(&event(id, subscribed)).await?;
                    if bad == Some(Bad::Control) {
                        send.write_all(&garbage()).await?;
                        continue;
                    }
                    let mut stream = conn.open_uni().await?.await?;
                    if !bad.is_some_and(Bad::no_header) {
                        let header = Event::SubscriptionStream { room: room.clone() };
                        stream.write_all(&event(id, header)).await?;
                    }
                    let tail = match bad {
                        Some(bad) => bad.bytes(),
                        None => publication("after").to_vec(),
                    };
                    stream.write_all(&tail).await?;
                    match bad {
                        Some(Bad::ResetSilently) => {
                            // Let the publication go out first; then no more frames, and no word.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = stream.reset(wtransport::VarInt::from_u32(0));
                        }
                        Some(Bad::LateAfterUnsubscribed) => {
                            // The header and "early" reach the client before the end does.
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            let ended = Event::Unsubscribed {
                                room,
                                code: 112,
                                reason: "slow".into(),
                            };
                            send.write_all(&event(0, ended)).await?;
                            // The stream stays open, and more comes on it, for longer than a
                            // test waits.
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                for i in 0..150 {
                                    let late = publication(format!("late-{i}"));
                                    if stream.write_all(&late).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            });
                        }
                        Some(Bad::FinishedAfterUnsubscribed) => {
                            // The client has the stream (its header) before the end comes.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let ended = Event::Unsubscribed {
                                room,
                                code: 103,
                                reason: "permission lost".into(),
                            };
                            send.write_all(&event(0, ended)).await?;
                            // The client reads the stream only as the application reads.
                            tokio::spawn(async move {
                                for i in 0..TAIL {
                                    let tail = publication(format!("tail-{i}"));
                                    if stream.write_all(&tail).await.is_err() {
                                        return;
                                    }
                                }
                                let _ = stream.finish().await;
                            });
                        }
                        _ => streams.push(stream),
                    }
                }
                _ => {}
            }
        }
        match recv.read(&mut buf).await? {
            Some(n) => dec.push(&buf[..n]),
            None => return Ok(()),
        }
    }
}

fn config(port: u16, hash: [u8; 32]) -> ClientConfig {
    ClientConfig::new(format!("https://127.0.0.1:{port}/v1"), token_fixed("t"))
        .with_transport(Transport::WebTransport)
        .with_trust(Trust::CertHashes(vec![hash]))
}

/// Waits for `want` among what the server saw.
async fn server_sees(seen: &mut mpsc::UnboundedReceiver<Seen>, want: Seen) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT, async {
        while let Some(s) = seen.recv().await {
            if s == want {
                return Ok(());
            }
        }
        bail!("the server stopped")
    })
    .await
    .with_context(|| format!("the server never saw {want:?} within {WAIT:?}"))?
}

/// The states the client goes through until it is connected to session `s2`; an error if that
/// does not happen within [`WAIT`].
async fn reconnects(client: &Client) -> anyhow::Result<Vec<ConnectionState>> {
    let mut state = client.state();
    let mut states = Vec::new();
    let done = tokio::time::timeout(WAIT, async {
        loop {
            let now = state.borrow_and_update().clone();
            if states.last() != Some(&now) {
                states.push(now.clone());
            }
            if matches!(&now, ConnectionState::Connected { session } if session == "s2") {
                return true;
            }
            if state.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    match done {
        Ok(true) => Ok(states),
        _ => bail!("not connected to a second session within {WAIT:?}; states seen: {states:?}"),
    }
}

/// Connects, subscribes, and checks the bad frame ends the session: the client reports it
/// (leaves `Connected`), connects again and subscribes again.
async fn bad_frame_reconnects(bad: Bad) -> anyhow::Result<()> {
    let plan = Plan {
        bad: Some(bad),
        then_publish: false,
    };
    let (port, hash, mut seen) = hostile(plan).await?;
    let mut config = config(port, hash);
    if bad == Bad::StalledHeader {
        // Which also bounds the wait for a room stream's header (10 s by default, past
        // `WAIT`); every command here is answered at once.
        config.request_timeout = Duration::from_secs(2);
    }
    let client = Client::connect(config).await?;
    let _sub = client.subscribe(ROOM).await?;
    server_sees(&mut seen, Seen::Subscribe(1, ROOM.into())).await?;
    let states = reconnects(&client)
        .await
        .with_context(|| format!("after {bad:?}"))?;
    assert!(
        states
            .iter()
            .any(|s| !matches!(s, ConnectionState::Connected { .. })),
        "after {bad:?} the client never reported the connection lost: {states:?}"
    );
    server_sees(&mut seen, Seen::Session(2)).await?;
    server_sees(&mut seen, Seen::Subscribe(2, ROOM.into()))
        .await
        .with_context(|| format!("after {bad:?}"))?;
    client.close().await;
    Ok(())
}

/// A room's stream reset without an `Unsubscribed` is a broken protocol: after the grace the
/// `Unsubscribed` may take (5 s) the connection ends and the client subscribes again.
#[tokio::test]
async fn a_room_stream_ended_without_unsubscribed_ends_the_connection() -> anyhow::Result<()> {
    bad_frame_reconnects(Bad::ResetSilently).await
}

/// Each kind of bad frame on a room's stream ends the connection; the client comes back and
/// subscribes again. The kinds run side by side (a server and a client each), so a failing
/// client costs one [`WAIT`], and every kind that fails is named.
#[tokio::test]
async fn a_bad_frame_on_a_room_stream_ends_the_connection_and_the_client_resubscribes(
) -> anyhow::Result<()> {
    let kinds = [
        Bad::Oversized,
        Bad::Empty,
        Bad::Garbage,
        Bad::NoHeader,
        Bad::ForeignPublication,
        Bad::ForeignJoined,
    ];
    let results = futures::future::join_all(kinds.map(bad_frame_reconnects)).await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} kinds failed:\n{}",
            failed.len(),
            kinds.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// The control stream already behaved so; kept beside the room cases so both stay alike.
#[tokio::test]
async fn a_bad_frame_on_the_control_stream_ends_the_connection_too() -> anyhow::Result<()> {
    bad_frame_reconnects(Bad::Control).await
}

/// A bad frame on the first session, a good publication on the second: the subscriber is told
/// it resubscribed and gets the publication; the room is not left quiet.
#[tokio::test]
async fn after_a_bad_frame_the_room_delivers_again() -> anyhow::Result<()> {
    delivers_again(Bad::Oversized).await
}

/// A publication naming another room on a room's stream (PROTOCOL.md §2: a room's stream
/// carries that room's frames only) ends the connection; the client subscribes again and the
/// room delivers, and the foreign publication is never delivered, as on WebSocket (where the
/// reader routes frames by their room). Before, it was delivered as the other room's message,
/// and its position became the room's resume point (outside audit G3).
#[tokio::test]
async fn a_publication_of_another_room_is_never_delivered() -> anyhow::Result<()> {
    delivers_again(Bad::ForeignPublication).await
}

/// `bad` on the first session, a good publication on the second: the subscriber gets
/// `Resubscribed` and the publication, and nothing else.
async fn delivers_again(bad: Bad) -> anyhow::Result<()> {
    let plan = Plan {
        bad: Some(bad),
        then_publish: true,
    };
    let (port, hash, mut seen) = hostile(plan).await?;
    let client = Client::connect(config(port, hash)).await?;
    let mut sub = client.subscribe(ROOM).await?;
    let mut events = Vec::new();
    let delivered = tokio::time::timeout(WAIT, async {
        while let Some(ev) = sub.next().await {
            let done = matches!(&ev, SubEvent::Publication { payload, .. } if payload == "after");
            events.push(ev);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(delivered, Ok(true)) {
        bail!("the room stayed quiet after {bad:?}; events: {events:?}");
    }
    assert!(
        matches!(
            events.first(),
            Some(SubEvent::Resubscribed {
                recovery: Recovery::NotRequested
            })
        ),
        "the subscriber was not told it resubscribed: {events:?}"
    );
    assert_eq!(events.len(), 2, "{events:?}");
    server_sees(&mut seen, Seen::Subscribe(2, ROOM.into())).await?;
    client.close().await;
    Ok(())
}

/// A room stream whose first frame announces 1,000,000 bytes ends the connection at once
/// (well before the header's deadline, 10 s): a header is read under a 4 KiB cap, the
/// session's `max_frame` (here the client's 1 MiB ceiling) only after it (outside audit 103,
/// F5: each such stream could hold about 2 MB). One whose header never comes ends it after
/// `request_timeout` (2 s here): it was held for the connection's life.
#[tokio::test]
async fn a_room_stream_without_a_small_timely_header_ends_the_connection() -> anyhow::Result<()> {
    let kinds = [Bad::HugeHeader, Bad::StalledHeader];
    let results = futures::future::join_all(kinds.map(bad_frame_reconnects)).await;
    for result in results {
        result?;
    }
    Ok(())
}

/// A `Reply` of 100 KiB on the control stream of a session whose `max_frame` allows it (here
/// the client's 1 MiB ceiling) is taken: the control stream's decoder kept the handshake's
/// 64 KiB, and every such reply ended the session (outside audit 103, F1).
#[tokio::test]
async fn a_reply_over_64_kib_within_max_frame_is_taken() -> anyhow::Result<()> {
    let plan = Plan {
        bad: None,
        then_publish: false,
    };
    let (port, hash, _seen) = hostile(plan).await?;
    let client = Client::connect(config(port, hash)).await?;
    let reply = tokio::time::timeout(WAIT, client.call("big", "")).await?;
    match reply {
        Ok(payload) => assert_eq!(payload.len(), REPLY_BYTES),
        Err(e) => bail!("the call failed: {e}; state {:?}", *client.state().borrow()),
    }
    let state = client.state().borrow().clone();
    assert_eq!(
        state,
        ConnectionState::Connected {
            session: "s1".into()
        }
    );
    client.close().await;
    Ok(())
}

/// A subscription the server ended (`Unsubscribed { 112 }`) while it leaves the room's stream
/// open and writes on it ends for the application within `STREAM_END_GRACE` (5 s): what came
/// before the end first, then `Ended`, then nothing. It delivered for as long as the server
/// kept writing, and `Ended` never came (outside audit 103, F4).
#[tokio::test]
async fn a_room_the_server_ended_ends_even_if_its_stream_goes_on() -> anyhow::Result<()> {
    let plan = Plan {
        bad: Some(Bad::LateAfterUnsubscribed),
        then_publish: false,
    };
    let (port, hash, _seen) = hostile(plan).await?;
    let client = Client::connect(config(port, hash)).await?;
    let mut sub = client.subscribe(ROOM).await?;
    let mut events = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(ev) = sub.next().await {
            let end = matches!(ev, SubEvent::Ended { .. });
            events.push(ev);
            if end {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(ended, Ok(true)) {
        bail!(
            "no Ended within {WAIT:?}: {} events, the last {:?}",
            events.len(),
            events.last()
        );
    }
    assert!(
        matches!(events.first(), Some(SubEvent::Publication { payload, .. }) if payload == "early"),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(SubEvent::Ended { code: 112, .. })),
        "{events:?}"
    );
    let after = tokio::time::timeout(Duration::from_secs(1), sub.next()).await;
    assert!(matches!(after, Ok(None)), "after Ended: {after:?}");
    client.close().await;
    Ok(())
}

/// A room the server ended for good (`Unsubscribed { 103 }`), its last publications written
/// and its stream finished, while the application reads nothing for longer than
/// `STREAM_END_GRACE` (5 s) with a queue of 4 events: every publication still comes, then
/// `Ended`. The grace aborted the room's reader whatever it was doing: blocked on the full
/// queue, it lost the publication it held and those still in the stream, and the application
/// saw `Ended` with no sign of them (outside review 107, F1).
#[tokio::test]
async fn a_slow_application_gets_all_a_finished_room_sent_before_ended() -> anyhow::Result<()> {
    let plan = Plan {
        bad: Some(Bad::FinishedAfterUnsubscribed),
        then_publish: false,
    };
    let (port, hash, _seen) = hostile(plan).await?;
    let mut config = config(port, hash);
    config.subscription_buffer = 4;
    let client = Client::connect(config).await?;
    let mut sub = client.subscribe(ROOM).await?;
    // The end comes about 1 s after the subscribe; the grace would be over 2 s before this.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut events = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(ev) = sub.next().await {
            let end = matches!(ev, SubEvent::Ended { .. });
            events.push(ev);
            if end {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(ended, Ok(true)) {
        bail!(
            "no Ended within {WAIT:?}: {} events, the last {:?}",
            events.len(),
            events.last()
        );
    }
    let payloads: Vec<String> = events
        .iter()
        .filter_map(|ev| match ev {
            SubEvent::Publication { payload, .. } => {
                Some(String::from_utf8_lossy(payload).into_owned())
            }
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..TAIL).map(|i| format!("tail-{i}")).collect();
    assert_eq!(payloads, want, "events: {events:?}");
    assert_eq!(events.len(), TAIL + 1, "{events:?}");
    assert!(
        matches!(events.last(), Some(SubEvent::Ended { code: 103, .. })),
        "{events:?}"
    );
    let after = tokio::time::timeout(Duration::from_secs(1), sub.next()).await;
    assert!(matches!(after, Ok(None)), "after Ended: {after:?}");
    client.close().await;
    Ok(())
}
