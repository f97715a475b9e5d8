//! Test vectors shared with other implementations (the TypeScript client reads the same file).
//! `QUIVER_UPDATE_VECTORS=1 cargo test -p quiver-proto --test vectors` rewrites the file after a
//! deliberate protocol change; otherwise any drift between code and file fails here.

use bytes::Bytes;
use quiver_proto::*;
use serde_json::{json, Value};

fn cases() -> Vec<(&'static str, Value, Vec<u8>)> {
    let pos = Some(Position {
        epoch: 7,
        offset: 300,
    });
    let cmd = |name, id, command: Command| {
        let frame = ClientFrame { id, command };
        (
            name,
            json!({"direction": "command", "frame": frame_json(&frame)}),
            encode_command(&frame),
        )
    };
    let ev = |name, id, event: Event| {
        let frame = ServerFrame { id, event };
        (
            name,
            json!({"direction": "event", "frame": frame_json(&frame)}),
            encode_event(&frame).to_vec(),
        )
    };
    vec![
        cmd(
            "hello",
            1,
            Command::Hello {
                version: 1,
                client: "quiver-ts/0.1".into(),
            },
        ),
        cmd(
            "subscribe",
            2,
            Command::Subscribe {
                room: "chat.lobby".into(),
                resume: None,
            },
        ),
        cmd(
            "subscribe_resume",
            300,
            Command::Subscribe {
                room: "dash.cpu".into(),
                resume: pos,
            },
        ),
        cmd(
            "unsubscribe",
            4,
            Command::Unsubscribe {
                room: "chat.lobby".into(),
            },
        ),
        cmd(
            "publish_ack",
            5,
            Command::Publish {
                room: "chat.lobby".into(),
                payload: Bytes::from_static(b"hello"),
                ack: true,
            },
        ),
        cmd(
            "publish_noack",
            70000,
            Command::Publish {
                room: "a".into(),
                payload: Bytes::new(),
                ack: false,
            },
        ),
        cmd("ping", 6, Command::Ping),
        cmd(
            "refresh",
            7,
            Command::Refresh {
                token: "eyJ.x.y".into(),
            },
        ),
        cmd(
            "presence",
            8,
            Command::Presence {
                room: "chat.lobby".into(),
            },
        ),
        cmd(
            "history",
            9,
            Command::History {
                room: "chat.log".into(),
                since: pos,
                limit: 50,
            },
        ),
        cmd(
            "history_from_start",
            10,
            Command::History {
                room: "chat.log".into(),
                since: None,
                limit: 1000,
            },
        ),
        ev(
            "welcome",
            1,
            Event::Welcome {
                version: 1,
                session: "s1".into(),
                user: "alice".into(),
                tenant: "acme".into(),
                expires_at: Some(1_800_000_000),
                limits: Limits {
                    max_frame: 65536,
                    max_payload: 65000,
                    max_subscriptions: 256,
                    commands_per_second: 100,
                },
            },
        ),
        ev(
            "welcome_no_expiry",
            1,
            Event::Welcome {
                version: 1,
                session: "s2".into(),
                user: "bob".into(),
                tenant: "t".into(),
                expires_at: None,
                limits: Limits {
                    max_frame: 1,
                    max_payload: 2,
                    max_subscriptions: 3,
                    commands_per_second: 4,
                },
            },
        ),
        ev(
            "subscribed",
            2,
            Event::Subscribed {
                room: "chat.lobby".into(),
                position: None,
                recovery: Recovery::NotRequested,
                subscription: None,
            },
        ),
        ev(
            "subscribed_recovered",
            3,
            Event::Subscribed {
                room: "dash.cpu".into(),
                position: pos,
                recovery: Recovery::Recovered { replayed: 12 },
                subscription: None,
            },
        ),
        ev(
            "subscribed_failed",
            3,
            Event::Subscribed {
                room: "dash.cpu".into(),
                position: pos,
                recovery: Recovery::Failed,
                subscription: None,
            },
        ),
        ev(
            "unsubscribed",
            4,
            Event::Unsubscribed {
                room: "chat.lobby".into(),
                code: 0,
                reason: String::new(),
            },
        ),
        ev(
            "unsubscribed_slow",
            0,
            Event::Unsubscribed {
                room: "chat.lobby".into(),
                code: ErrorCode::SlowConsumer.as_u16(),
                reason: "queue full".into(),
            },
        ),
        ev("published", 5, Event::Published { position: None }),
        ev("published_position", 5, Event::Published { position: pos }),
        ev("pong", 6, Event::Pong),
        ev(
            "refreshed",
            7,
            Event::Refreshed {
                expires_at: Some(1_900_000_000),
            },
        ),
        ev(
            "error",
            8,
            Event::Error {
                code: ErrorCode::PermissionDenied.as_u16(),
                message: "no subscribe permission for room secret".into(),
            },
        ),
        ev(
            "publication",
            0,
            Event::Publication {
                room: "chat.lobby".into(),
                position: None,
                payload: Bytes::from_static(b"hi"),
            },
        ),
        ev(
            "publication_position",
            0,
            Event::Publication {
                room: "dash.cpu".into(),
                position: Some(Position {
                    epoch: u64::MAX,
                    offset: 1,
                }),
                payload: Bytes::from_static(&[0, 255, 128]),
            },
        ),
        ev(
            "subscription_stream",
            2,
            Event::SubscriptionStream {
                room: "chat.lobby".into(),
            },
        ),
        ev(
            "goodbye",
            0,
            Event::Goodbye {
                code: CloseCode::TokenExpired.as_u16(),
                reason: "token expired".into(),
                reconnect: true,
            },
        ),
        ev(
            "presence",
            8,
            Event::Presence {
                room: "chat.lobby".into(),
                members: vec![member("alice", "s1"), member("bob", "s2")],
                truncated: false,
            },
        ),
        ev(
            "presence_truncated",
            10,
            Event::Presence {
                room: "chat.big".into(),
                members: vec![member("alice", "s1")],
                truncated: true,
            },
        ),
        ev(
            "presence_empty",
            9,
            Event::Presence {
                room: "chat.empty".into(),
                members: vec![],
                truncated: false,
            },
        ),
        ev(
            "joined",
            0,
            Event::Joined {
                room: "chat.lobby".into(),
                member: member("carol", "s3"),
            },
        ),
        ev(
            "left",
            0,
            Event::Left {
                room: "chat.lobby".into(),
                member: member("carol", "s3"),
            },
        ),
        ev(
            "history",
            9,
            Event::History {
                room: "chat.log".into(),
                position: Some(Position {
                    epoch: u64::MAX,
                    offset: 302,
                }),
                publications: vec![
                    HistoryItem {
                        position: Position {
                            epoch: u64::MAX,
                            offset: 301,
                        },
                        payload: Bytes::from_static(b"a"),
                    },
                    HistoryItem {
                        position: Position {
                            epoch: u64::MAX,
                            offset: 302,
                        },
                        payload: Bytes::from_static(&[0, 255]),
                    },
                ],
                truncated: true,
            },
        ),
        ev(
            "history_empty",
            10,
            Event::History {
                room: "chat.log".into(),
                position: None,
                publications: vec![],
                truncated: false,
            },
        ),
        ev(
            "subscribed_latest",
            4,
            Event::Subscribed {
                room: "game.arena".into(),
                position: None,
                recovery: Recovery::NotRequested,
                subscription: Some(300),
            },
        ),
        ev(
            "latest",
            0,
            Event::Latest {
                room: "game.arena".into(),
                sequence: 1 << 40,
                payload: Bytes::from_static(b"xy"),
            },
        ),
        cmd(
            "call",
            9,
            Command::Call {
                method: "order.place".into(),
                payload: Bytes::from_static(b"{\"qty\":2}"),
                timeout_ms: 1500,
                idempotency_key: "k-1".into(),
            },
        ),
        ev(
            "reply",
            9,
            Event::Reply {
                payload: Bytes::from_static(b"o-42"),
            },
        ),
        cmd(
            "presence_stats",
            12,
            Command::PresenceStats {
                room: "chat.lobby".into(),
            },
        ),
        ev(
            "presence_stats",
            12,
            Event::PresenceStats {
                room: "chat.lobby".into(),
                sessions: 300,
                users: 2,
            },
        ),
    ]
}

fn member(user: &str, session: &str) -> Member {
    Member {
        user: user.into(),
        session: session.into(),
    }
}

fn frame_json<T: serde::Serialize>(frame: &T) -> Value {
    serde_json::to_value(frame).expect("frames serialize to JSON")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn vectors_file_matches_encoder() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/frames.json");
    let expected: Vec<Value> = cases()
        .into_iter()
        .map(|(name, mut v, wire)| {
            v["name"] = json!(name);
            v["hex"] = json!(to_hex(&wire));
            v
        })
        .collect();
    let text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
    if std::env::var_os("QUIVER_UPDATE_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).expect("vectors/frames.json exists");
    assert_eq!(on_disk, text, "vectors/frames.json is stale: rerun with QUIVER_UPDATE_VECTORS=1 after a deliberate change");

    // And every vector decodes back to its frame.
    for (name, v, wire) in cases() {
        let body = &wire[LENGTH_PREFIX..];
        let decoded = if v["direction"] == "command" {
            frame_json(&decode_command(body).unwrap())
        } else {
            frame_json(&decode_event(body).unwrap())
        };
        assert_eq!(decoded, v["frame"], "{name}");
    }
}

/// The `latest` lane's datagrams (PROTOCOL.md §10), in `vectors/datagrams.json`: `hex` is what
/// this protocol defines (LEB128 varints, then the payload), `on_session_0` the whole QUIC
/// datagram payload of the session whose CONNECT is stream 0: the quarter stream id `00` (a
/// QUIC varint, PROTOCOL.md §1) in front.
fn datagram_cases() -> Vec<Value> {
    let latest = |name: &str, subscription: u64, sequence: u64, payload: &[u8]| {
        let wire = datagram::Latest {
            subscription,
            sequence,
            payload,
        }
        .encode();
        json!({
            "name": name,
            "direction": "server",
            "subscription": subscription,
            "sequence": sequence,
            "payload": payload,
            "hex": to_hex(&wire),
            "on_session_0": format!("00{}", to_hex(&wire)),
        })
    };
    let publish = |name: &str, room: &str, payload: &[u8]| {
        let wire = datagram::PublishDatagram { room, payload }.encode();
        json!({
            "name": name,
            "direction": "client",
            "room": room,
            "payload": payload,
            "hex": to_hex(&wire),
            "on_session_0": format!("00{}", to_hex(&wire)),
        })
    };
    vec![
        latest("latest", 2, 1, b"xy"),
        latest("latest_multibyte_varints", 300, 16_384, b"p"),
        latest("latest_empty_payload", 1, 7, b""),
        latest("latest_u64_max", u64::MAX, u64::MAX, b"z"),
        publish("publish", "game.a", b"v1"),
        publish("publish_empty_payload", "game.arena", b""),
    ]
}

#[test]
fn datagram_vectors_file_matches_encoder() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/datagrams.json");
    let cases = datagram_cases();
    let text = serde_json::to_string_pretty(&cases).unwrap() + "\n";
    if std::env::var_os("QUIVER_UPDATE_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).expect("vectors/datagrams.json exists");
    assert_eq!(on_disk, text, "vectors/datagrams.json is stale: rerun with QUIVER_UPDATE_VECTORS=1 after a deliberate change");

    // And every vector decodes back to its fields.
    for case in cases {
        let wire: Vec<u8> = (0..case["hex"].as_str().unwrap().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&case["hex"].as_str().unwrap()[i..i + 2], 16).unwrap())
            .collect();
        let payload: Vec<u8> = serde_json::from_value(case["payload"].clone()).unwrap();
        if case["direction"] == "server" {
            let d = datagram::Latest::decode(&wire).unwrap();
            assert_eq!(d.subscription, case["subscription"].as_u64().unwrap());
            assert_eq!(d.sequence, case["sequence"].as_u64().unwrap());
            assert_eq!(d.payload, payload);
        } else {
            let d = datagram::PublishDatagram::decode(&wire).unwrap();
            assert_eq!(d.room, case["room"].as_str().unwrap());
            assert_eq!(d.payload, payload);
        }
    }
}
