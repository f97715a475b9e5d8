//! HTTP/3 frames that reach the server in pieces, with other events of the connection between
//! the pieces. wtransport's connection driver reads its control streams (the client's SETTINGS
//! stream, the CONNECT stream's capsules) inside a `select!` that it leaves at every other
//! event: a new stream, a datagram. Reads that were not cancel-safe lost the part of a frame
//! read so far, and the rest was parsed as new frames: the connection closed with
//! `H3_FRAME_UNEXPECTED` (0x105) or hung (vendor/wtransport/PATCHES.md 5; seen once in CI as
//! "connection closed by peer: 261" at a session's open).

use std::time::Duration;

use quiver_tests::*;
use wtransport_proto::frame::Frame;

/// Long enough for the server to read what was sent and wait for the rest.
const PAUSE: Duration = Duration::from_millis(150);

/// A bare QUIC connection to `server` with the HTTP/3 ALPN, and its control stream with the
/// first `sent` bytes of the stream's type and SETTINGS written.
async fn connection(
    server: &TestServer,
    sent: usize,
) -> anyhow::Result<(
    wtransport::quinn::Endpoint,
    wtransport::quinn::Connection,
    wtransport::quinn::SendStream,
    Vec<u8>,
)> {
    let endpoint = quic_client(server, |_| {})?;
    let conn = endpoint.connect(server.wt, "localhost")?.await?;
    let mut control = conn.open_uni().await?;
    let bytes = h3::control_stream_bytes()?;
    let sent = sent.min(bytes.len());
    control.write_all(&bytes[..sent]).await?;
    Ok((endpoint, conn, control, bytes[sent..].to_vec()))
}

/// The client's SETTINGS frame in two parts, its CONNECT stream opened between them: the
/// session is served.
#[tokio::test]
async fn a_settings_frame_split_around_the_connect_is_read_whole() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    // The stream's type, the frame's type and length: the server reads them and waits for
    // the payload.
    let (_endpoint, conn, mut control, rest) = connection(&server, 3).await?;
    tokio::time::sleep(PAUSE).await;
    let token = full_token("acme", "split");
    let connecting = h3::connect_request(&conn, server.wt.port(), &token);
    let rest = async {
        tokio::time::sleep(PAUSE).await;
        control.write_all(&rest).await?;
        anyhow::Ok(())
    };
    let ((status, _send, _recv), ()) = tokio::try_join!(connecting, rest)?;
    assert_eq!(status.as_deref(), Some("200"));
    assert_eq!(conn.close_reason(), None);
    Ok(())
}

async fn session(server: &TestServer, user: &str) -> anyhow::Result<h3::RawSession> {
    h3::raw_session(server, &full_token("acme", user)).await
}

/// The application code the server closed the connection with.
async fn close_code(conn: &wtransport::quinn::Connection) -> anyhow::Result<u64> {
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .map_err(|_| anyhow::anyhow!("the connection was not closed"))?;
    match closed {
        wtransport::quinn::ConnectionError::ApplicationClosed(close) => {
            Ok(close.error_code.into_inner())
        }
        other => anyhow::bail!("closed by {other:?}"),
    }
}

/// A DATA frame holding `payload`.
fn data(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut frame = Vec::new();
    Frame::new_data(payload.to_vec().into()).write(&mut frame)?;
    Ok(frame)
}

/// CLOSE_WEBTRANSPORT_SESSION (0x2843, a two-byte varint), length 7: error code 7, "bye".
const CLOSE: [u8; 10] = [0x68, 0x43, 7, 0, 0, 0, 7, b'b', b'y', b'e'];

/// A session closed with a CLOSE_WEBTRANSPORT_SESSION capsule sent in two parts, a stream of
/// the session opened between them: the capsule is read whole, and the connection closes as
/// for any client that closed its session (`H3_NO_ERROR`, PROTOCOL §7), not with an HTTP/3
/// error.
#[tokio::test]
async fn a_close_capsule_split_around_a_new_stream_is_read_whole() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut s = session(&server, "closer").await?;
    let frame = data(&CLOSE)?;
    s.connect.write_all(&frame[..2]).await?;
    tokio::time::sleep(PAUSE).await;
    // A session stream (the session's control stream, with a Hello): another event of the
    // connection between the capsule's two parts.
    let (mut stream_send, _stream_recv) = s.conn.open_bi().await?;
    stream_send
        .write_all(&h3::control_stream_with_hello(0, "split")?)
        .await?;
    tokio::time::sleep(PAUSE).await;
    s.connect.write_all(&frame[2..]).await?;
    assert_eq!(close_code(&s.conn).await?, 0x100);
    Ok(())
}

/// Capsules are a byte stream across the DATA frames that carry them (RFC 9297 §3.3): a close
/// capsule split over two DATA frames, or behind another capsule in the same one, closes the
/// session (`H3_NO_ERROR`); one cut short by the stream's end is malformed (0x33). (Before,
/// each DATA frame was read as one capsule: the first two were ignored and the session went
/// on, the third closed as a clean end.)
#[tokio::test]
async fn capsules_are_read_across_data_frames() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut s = session(&server, "split").await?;
    let mut bytes = data(&CLOSE[..5])?;
    bytes.extend(data(&CLOSE[5..])?);
    s.connect.write_all(&bytes).await?;
    assert_eq!(close_code(&s.conn).await?, 0x100, "a close over two frames");

    let mut s = session(&server, "behind").await?;
    // DRAIN_WEBTRANSPORT_SESSION (0x78ae, four-byte varint 0x800078ae), empty, then the close.
    let mut capsules = vec![0x80, 0x00, 0x78, 0xae, 0x00];
    capsules.extend_from_slice(&CLOSE);
    s.connect.write_all(&data(&capsules)?).await?;
    assert_eq!(close_code(&s.conn).await?, 0x100, "a close behind another");

    let mut s = session(&server, "cut").await?;
    s.connect.write_all(&data(&CLOSE[..6])?).await?;
    s.connect.finish()?;
    assert_eq!(close_code(&s.conn).await?, 0x33, "a close cut short");
    Ok(())
}

/// Frames of types the server's HTTP/3 layer does not know are skipped whole on the client's
/// control stream (RFC 9114 §9): `GOAWAY`, `MAX_PUSH_ID`, `PRIORITY_UPDATE`, and one of a
/// reserved and one of an unassigned type with payloads longer than any frame the server
/// parses (a reserved one over 4,096 bytes closed the connection with 0x107), sent after
/// SETTINGS in pieces. The session is served and the connection stays up. (Before, the type
/// alone was dropped and the rest read as frames: 0x105, or later frames misread.)
#[tokio::test]
async fn frames_of_unknown_types_on_the_control_stream_are_skipped() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (_endpoint, conn, mut control, _) = connection(&server, usize::MAX).await?;
    let mut unknown = vec![
        0x07, 0x01, 0x00, // GOAWAY, id 0
        0x0d, 0x01, 0x00, // MAX_PUSH_ID 0
        0x80, 0x0f, 0x07, 0x00, 0x02, 0x00, 0x00, // PRIORITY_UPDATE (0xf0700), 2 bytes
        0x40, 0x40, 0x57, 0x70, // reserved type 0x40 (0x1f + 0x21), 6,000 bytes
    ];
    unknown.extend(std::iter::repeat_n(0x01, 6_000));
    unknown.extend([0x2f, 0x57, 0x70]); // type 0x2f, 6,000 bytes (0x1770)
    unknown.extend(std::iter::repeat_n(0x01, 6_000));
    for piece in unknown.chunks(1_000) {
        control.write_all(piece).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = full_token("acme", "unknown");
    let (status, _send, _recv) = h3::connect_request(&conn, server.wt.port(), &token).await?;
    assert_eq!(status.as_deref(), Some("200"));
    tokio::time::sleep(PAUSE).await;
    assert_eq!(conn.close_reason(), None);
    Ok(())
}

/// HTTP/2's frame types are reserved in HTTP/3, and a client never sends PUSH_PROMISE (RFC 9114
/// §7.2.8, §7.2.5): either on the control stream closes the connection with
/// `H3_FRAME_UNEXPECTED` (they were skipped).
#[tokio::test]
async fn http2_frame_types_on_the_control_stream_close_the_connection() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    for frame in [[0x02u8, 0x00], [0x05, 0x00]] {
        let (_endpoint, conn, mut control, _) = connection(&server, usize::MAX).await?;
        control.write_all(&frame).await?;
        assert_eq!(
            close_code(&conn).await?,
            0x105,
            "frame type {:#x}",
            frame[0]
        );
    }
    Ok(())
}
