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

/// A session closed with a CLOSE_WEBTRANSPORT_SESSION capsule sent in two parts, a stream of
/// the session opened between them: the capsule is read whole, and the connection closes as
/// for any client that closed its session (`H3_NO_ERROR`, PROTOCOL §7), not with an HTTP/3
/// error.
#[tokio::test]
async fn a_close_capsule_split_around_a_new_stream_is_read_whole() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let (_endpoint, conn, _control, _) = connection(&server, usize::MAX).await?;
    let token = full_token("acme", "closer");
    let (status, mut connect_send, _connect_recv) =
        h3::connect_request(&conn, server.wt.port(), &token).await?;
    assert_eq!(status.as_deref(), Some("200"));

    // CLOSE_WEBTRANSPORT_SESSION (0x2843, a two-byte varint), length 7: error code 7, "bye".
    let mut capsule = vec![0x68, 0x43, 7, 0, 0, 0, 7];
    capsule.extend_from_slice(b"bye");
    let mut frame = Vec::new();
    Frame::new_data(capsule.into()).write(&mut frame)?;
    connect_send.write_all(&frame[..2]).await?;
    tokio::time::sleep(PAUSE).await;
    // A session stream (the session's control stream, with a Hello): another event of the
    // connection between the capsule's two parts.
    let (mut stream_send, _stream_recv) = conn.open_bi().await?;
    stream_send
        .write_all(&h3::control_stream_with_hello(0, "split")?)
        .await?;
    tokio::time::sleep(PAUSE).await;
    connect_send.write_all(&frame[2..]).await?;
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .map_err(|_| anyhow::anyhow!("the session's close was not taken"))?;
    match closed {
        wtransport::quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code.into_inner(), 0x100, "{close:?}");
        }
        other => anyhow::bail!("closed by {other:?}"),
    }
    Ok(())
}

/// Frames of types the server's HTTP/3 layer does not know are skipped whole on the client's
/// control stream (RFC 9114 §9): `GOAWAY`, `MAX_PUSH_ID`, `PRIORITY_UPDATE` and one of an
/// unassigned type with a payload longer than any frame the server parses, sent after
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
        0x2f, 0x57, 0x70, // type 0x2f, 6,000 bytes (0x1770)
    ];
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
