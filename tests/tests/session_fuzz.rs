//! The session command loop against random input (issue 10, fuzzing): seeded, bounded runs of
//! random command sequences — valid and invalid rooms, odd ids, oversized payloads, unknown
//! types, truncated and garbage frames — over both transports. Whatever a session sends, the
//! server answers it or closes it with a goodbye, and a bystander never notices.
//! (Coverage-guided fuzzing of the decoders lives in `fuzz/`.)

use bytes::Bytes;
use quiver_proto::{encode_command, ClientFrame, Command, Event, Position};
use quiver_tests::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn room(rng: &mut StdRng) -> String {
    const ROOMS: &[&str] = &[
        "a",
        "a.b",
        "chat.lobby",
        "",
        "a..b",
        "a.>",
        "*",
        "ünï",
        "x y",
    ];
    if rng.random_bool(0.1) {
        "r".repeat(rng.random_range(100..200))
    } else {
        ROOMS[rng.random_range(0..ROOMS.len())].to_owned()
    }
}

fn command(rng: &mut StdRng) -> Command {
    match rng.random_range(0..9) {
        0 => Command::Subscribe {
            room: room(rng),
            resume: rng.random_bool(0.3).then(|| Position {
                epoch: rng.random(),
                offset: rng.random(),
            }),
        },
        1 => Command::Unsubscribe { room: room(rng) },
        2 | 3 => Command::Publish {
            room: room(rng),
            payload: Bytes::from(vec![7u8; rng.random_range(0..70_000)]),
            ack: rng.random(),
        },
        4 => Command::Ping,
        5 => Command::Refresh {
            token: if rng.random() {
                full_token("acme", "fuzz")
            } else {
                "x".repeat(rng.random_range(0..6000))
            },
        },
        6 => Command::Presence { room: room(rng) },
        7 => Command::History {
            room: room(rng),
            since: rng.random_bool(0.5).then(|| Position {
                epoch: rng.random(),
                offset: rng.random(),
            }),
            limit: rng.random(),
        },
        _ => Command::Hello {
            version: rng.random(),
            client: "again".into(),
        },
    }
}

/// One frame's bytes: a command, or something no client should send.
fn frame(rng: &mut StdRng) -> Vec<u8> {
    let id = if rng.random_bool(0.1) {
        0
    } else {
        rng.random()
    };
    let mut bytes = encode_command(&ClientFrame {
        id,
        command: command(rng),
    });
    match rng.random_range(0..20) {
        // An unknown command type, a well-formed frame.
        0 => bytes = vec![0, 0, 0, 2, 1, 99],
        // Garbage after a valid prefix.
        1 => {
            let n = bytes.len().min(8);
            bytes.truncate(n);
            bytes.extend((0..rng.random_range(0..16)).map(|_| rng.random::<u8>()));
        }
        // Raw noise.
        2 => bytes = (0..rng.random_range(1..32)).map(|_| rng.random()).collect(),
        _ => {}
    }
    bytes
}

async fn random_sessions(via: Via) -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.limits.max_payload = 60_000;
        // A history namespace, so `History` reaches the broker too.
        c.namespaces.push(quiver_server::config::NamespaceConfig {
            name: "chat".into(),
            history_size: 50,
            history_ttl: std::time::Duration::from_secs(60),
            presence: false,
            ..Default::default()
        });
    })
    .await?;
    let mut bystander = Raw::connect_via(via, &server, &full_token("acme", "bystander")).await?;
    let mut room = bystander.subscribe("watched").await?;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for run in 0..24 {
        let mut fuzz = Raw::connect_via(via, &server, &full_token("acme", "fuzz")).await?;
        for _ in 0..rng.random_range(1..40) {
            if fuzz.send_bytes(&frame(&mut rng)).await.is_err() {
                break; // closed on us: fine, if it said goodbye (checked below)
            }
        }
        // Every session ends in an answer or a goodbye, never in silence.
        let mut answered = false;
        while let Ok(frame) = fuzz.recv().await {
            answered = true;
            if matches!(frame.event, Event::Goodbye { .. }) {
                break;
            }
            if fuzz.send(Command::Ping).await.is_err() {
                break;
            }
            if matches!(frame.event, Event::Pong) {
                break;
            }
        }
        assert!(answered, "run {run}: no answer and no goodbye");
        // And nobody else noticed.
        let mut publ = Raw::connect_via(via, &server, &full_token("acme", "p")).await?;
        publ.publish("watched", format!("{run}").as_bytes()).await?;
        assert_eq!(room.payload().await?, Bytes::from(format!("{run}")));
        assert!(matches!(
            bystander.request(Command::Ping).await?,
            Event::Pong
        ));
    }
    Ok(())
}

over_both_transports!(random_sessions);
