//! The `History` command (PROTOCOL.md §5): paging through a history room without subscribing,
//! checked against subscribe permissions, bounded by the limit cap and by `max_frame`; over
//! WebTransport and WebSocket alike.

use std::time::Duration;

use quiver_proto::{encode_event, Command, ErrorCode, Event, HistoryItem, Position, ServerFrame};
use quiver_server::config::NamespaceConfig;
use quiver_tests::*;

fn with_history(size: usize) -> impl FnOnce(&mut quiver_server::Config) {
    move |c| {
        c.namespaces.push(NamespaceConfig {
            name: "h".into(),
            history_size: size,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        })
    }
}

struct Page {
    position: Option<Position>,
    items: Vec<HistoryItem>,
    truncated: bool,
}

async fn history(
    raw: &mut Raw,
    room: &str,
    since: Option<Position>,
    limit: u32,
) -> anyhow::Result<Result<Page, u16>> {
    let reply = raw
        .request(Command::History {
            room: room.into(),
            since,
            limit,
        })
        .await?;
    Ok(match reply {
        Event::History {
            room: r,
            position,
            publications,
            truncated,
        } => {
            assert_eq!(r, room);
            Ok(Page {
                position,
                items: publications,
                truncated,
            })
        }
        Event::Error { code, .. } => Err(code),
        other => anyhow::bail!("unexpected answer {other:?}"),
    })
}

fn offsets(page: &Page) -> Vec<u64> {
    page.items.iter().map(|i| i.position.offset).collect()
}

async fn pages_through_a_history_room(via: Via) -> anyhow::Result<()> {
    let server = TestServer::start_with(with_history(10)).await?;
    let mut publ = Raw::connect_via(via, &server, &full_token("acme", "p")).await?;
    let mut positions = Vec::new();
    for i in 0..15u8 {
        positions.push(publ.published("h.room", &[i]).await?);
    }
    // A reader that may subscribe to h.> only, and publish nowhere.
    let reader = token("acme", "reader", &["h.>"], &[], 60);
    let mut raw = Raw::connect_via(via, &server, &reader).await?;

    // From the oldest kept (10 kept of 15: offsets 6..=15), four at a time.
    let first = history(&mut raw, "h.room", None, 4).await?.expect("a page");
    assert_eq!(offsets(&first), [6, 7, 8, 9]);
    assert!(first.truncated);
    assert_eq!(first.position, Some(positions[14]));
    assert_eq!(first.items[0].payload.as_ref(), &[5u8]);
    // On from the last one seen, to the end.
    let last = first.items[3].position;
    let rest = history(&mut raw, "h.room", Some(last), 100)
        .await?
        .expect("a page");
    assert_eq!(offsets(&rest), (10..=15).collect::<Vec<_>>());
    assert!(!rest.truncated);
    let end = history(&mut raw, "h.room", Some(positions[14]), 100)
        .await?
        .expect("a page");
    assert!(end.items.is_empty() && !end.truncated);
    // Limit 0: the position alone.
    let none = history(&mut raw, "h.room", None, 0).await?.expect("a page");
    assert!(none.items.is_empty() && none.truncated);
    assert_eq!(none.position, Some(positions[14]));

    // Gone from history, or of another epoch: unrecoverable.
    let trimmed = history(&mut raw, "h.room", Some(positions[1]), 10).await?;
    assert_eq!(
        trimmed.err(),
        Some(ErrorCode::UnrecoverablePosition.as_u16())
    );
    let other_epoch = Position {
        epoch: positions[0].epoch ^ 2,
        offset: 8,
    };
    let foreign = history(&mut raw, "h.room", Some(other_epoch), 10).await?;
    assert_eq!(
        foreign.err(),
        Some(ErrorCode::UnrecoverablePosition.as_u16())
    );
    // Permissions are subscribe permissions; rooms without history are refused.
    let denied = history(&mut raw, "x.room", None, 10).await?;
    assert_eq!(denied.err(), Some(ErrorCode::PermissionDenied.as_u16()));
    let mut full = Raw::connect_via(via, &server, &full_token("acme", "f")).await?;
    let live = history(&mut full, "live.room", None, 10).await?;
    assert_eq!(live.err(), Some(ErrorCode::BadRequest.as_u16()));
    let invalid = history(&mut full, "h..room", None, 10).await?;
    assert_eq!(invalid.err(), Some(ErrorCode::InvalidRoom.as_u16()));
    // Another tenant's same room is another room: empty.
    let mut other = Raw::connect_via(via, &server, &full_token("other", "o")).await?;
    let theirs = history(&mut other, "h.room", None, 10)
        .await?
        .expect("a page");
    assert!(theirs.items.is_empty());
    // Not subscribed by asking: the session can still subscribe, and nothing was sent on a stream.
    assert!(matches!(
        raw.request(Command::Unsubscribe {
            room: "h.room".into()
        })
        .await?,
        Event::Error { .. }
    ));
    Ok(())
}

async fn a_page_never_exceeds_max_frame_nor_the_limit_cap(via: Via) -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        with_history(2000)(c);
        c.limits.max_frame = 8192;
        c.limits.max_payload = 1600;
        c.limits.commands_per_second = 10_000;
    })
    .await?;
    let mut raw = Raw::connect_via(via, &server, &full_token("acme", "p")).await?;
    for i in 0..6u8 {
        raw.published("h.big", &[i; 1600]).await?;
    }
    let page = history(&mut raw, "h.big", None, 100)
        .await?
        .expect("a page");
    assert!(
        !page.items.is_empty() && page.items.len() < 6,
        "{}",
        page.items.len()
    );
    assert!(page.truncated);
    let frame = encode_event(&ServerFrame {
        id: 1,
        event: Event::History {
            room: "h.big".into(),
            position: page.position,
            publications: page.items.clone(),
            truncated: true,
        },
    });
    assert!(frame.len() - quiver_proto::LENGTH_PREFIX <= 8192);
    // Paging on gets the rest, in order.
    let mut seen = page.items.len();
    let mut since = page.items.last().map(|i| i.position);
    while let Ok(next) = history(&mut raw, "h.big", since, 100).await? {
        seen += next.items.len();
        since = next.items.last().map(|i| i.position).or(since);
        if !next.truncated {
            break;
        }
    }
    assert_eq!(seen, 6);

    // The cap: 1,200 small publications, a page of at most 1,000 (with room in the frame).
    let server = TestServer::start_with(|c| {
        with_history(2000)(c);
        c.limits.commands_per_second = 10_000;
    })
    .await?;
    let mut raw = Raw::connect_via(via, &server, &full_token("acme", "p")).await?;
    for i in 0..1200u32 {
        raw.send(Command::Publish {
            room: "h.small".into(),
            payload: bytes::Bytes::copy_from_slice(&i.to_be_bytes()),
            ack: false,
        })
        .await?;
    }
    raw.published("h.small", b"last").await?;
    let capped = history(&mut raw, "h.small", None, u32::MAX)
        .await?
        .expect("a page");
    assert_eq!(capped.items.len(), 1000);
    assert!(capped.truncated);
    Ok(())
}

/// On NATS (JetStream history, offsets not contiguous), from another instance than the one
/// that published.
#[tokio::test]
async fn pages_through_history_on_nats_from_another_instance() -> anyhow::Result<()> {
    let nats = quiver_tests::nats::NatsServer::start().await?;
    let clustered = |c: &mut quiver_server::Config| {
        with_history(3)(c);
        c.nats = Some(quiver_server::config::NatsConfig::new(nats.url()));
    };
    let a = TestServer::start_with(clustered).await?;
    let b = TestServer::start_with(clustered).await?;
    let mut publ = Raw::connect(&a, &full_token("acme", "p")).await?;
    let mut positions = Vec::new();
    for i in 0..5u8 {
        positions.push(publ.published("h.room", &[i]).await?);
        // Another room of the namespace, so offsets of h.room are not contiguous.
        publ.published("h.noise", &[i]).await?;
    }
    let mut reader = Raw::connect(&b, &token("acme", "r", &["h.>"], &[], 60)).await?;
    let empty = history(&mut reader, "h.empty", None, 10)
        .await?
        .expect("a page");
    assert!(empty.items.is_empty() && !empty.truncated);
    // Three kept (history_size 3): the last three, two at a time.
    let first = history(&mut reader, "h.room", None, 2)
        .await?
        .expect("a page");
    let kept: Vec<Position> = positions[2..].to_vec();
    assert_eq!(
        first.items.iter().map(|i| i.position).collect::<Vec<_>>(),
        kept[..2]
    );
    assert!(first.truncated);
    assert_eq!(first.position, Some(positions[4]));
    let rest = history(&mut reader, "h.room", Some(kept[1]), 10)
        .await?
        .expect("a page");
    assert_eq!(
        rest.items.iter().map(|i| i.position).collect::<Vec<_>>(),
        kept[2..]
    );
    assert_eq!(rest.items[0].payload.as_ref(), &[4u8]);
    assert!(!rest.truncated);
    let trimmed = history(&mut reader, "h.room", Some(positions[0]), 10).await?;
    assert_eq!(
        trimmed.err(),
        Some(ErrorCode::UnrecoverablePosition.as_u16())
    );
    Ok(())
}

over_both_transports!(
    pages_through_a_history_room,
    a_page_never_exceeds_max_frame_nor_the_limit_cap
);
