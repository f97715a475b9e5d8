//! A client's HTTP/3 side spelt out byte by byte, for tests that must send what wtransport's
//! client never would (split frames, streams before the session, ...), on a bare quinn
//! connection ([`crate::quic_client`]).

use anyhow::{anyhow, Result};
use wtransport::quinn::{Connection, RecvStream, SendStream};
use wtransport_proto::frame::Frame;
use wtransport_proto::headers::Headers;
use wtransport_proto::session::SessionRequest;
use wtransport_proto::settings::Settings;
use wtransport_proto::stream_header::StreamHeader;

/// The client's control stream's type, then its SETTINGS frame (as a browser's: CONNECT
/// protocol, WebTransport, HTTP/3 datagrams).
pub fn control_stream_bytes() -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    StreamHeader::new_control().write(&mut bytes)?;
    Settings::builder()
        .enable_connect_protocol()
        .enable_webtransport()
        .enable_h3_datagrams()
        .build()
        .generate_frame()
        .write(&mut bytes)?;
    Ok(bytes)
}

/// Sends a WebTransport CONNECT for `/v1?token=TOKEN` on a new bidirectional stream and reads
/// the answer's `:status` (within [`crate::WAIT`]); returns it with the CONNECT stream.
pub async fn connect_request(
    conn: &Connection,
    port: u16,
    token: &str,
) -> Result<(Option<String>, SendStream, RecvStream)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let url = format!("https://localhost:{port}/v1?token={token}");
    let mut bytes = Vec::new();
    SessionRequest::new(url)?
        .headers()
        .generate_frame()
        .write(&mut bytes)?;
    send.write_all(&bytes).await?;
    let mut answer = Vec::new();
    let status = tokio::time::timeout(crate::WAIT, async {
        loop {
            if let Ok(Some(frame)) = Frame::read(&mut &answer[..]) {
                let headers =
                    Headers::with_frame(&frame).map_err(|e| anyhow!("response headers: {e:?}"))?;
                return anyhow::Ok(headers.get(":status").map(str::to_owned));
            }
            let chunk = recv
                .read_chunk(usize::MAX, true)
                .await?
                .ok_or_else(|| anyhow!("the CONNECT stream ended"))?;
            answer.extend_from_slice(&chunk.bytes);
        }
    })
    .await
    .map_err(|_| anyhow!("the CONNECT was never answered: {:?}", conn.close_reason()))??;
    Ok((status, send, recv))
}

/// The start of a session's control stream for the CONNECT on client bidirectional stream
/// `connect_stream` (0, 4, 8, ...): the WebTransport stream's header, then a `Hello` (id 1).
pub fn control_stream_with_hello(connect_stream: u32, client: &str) -> Result<Vec<u8>> {
    use wtransport_proto::ids::{SessionId, StreamId};
    use wtransport_proto::varint::VarInt;
    let session =
        SessionId::try_from_session_stream(StreamId::new(VarInt::from_u32(connect_stream)))
            .map_err(|_| anyhow!("stream {connect_stream} is not a client bidirectional stream"))?;
    let mut bytes = Vec::new();
    Frame::new_webtransport(session).write(&mut bytes)?;
    bytes.extend_from_slice(&quiver_proto::encode_command(&quiver_proto::ClientFrame {
        id: 1,
        command: quiver_proto::Command::Hello {
            version: quiver_proto::PROTOCOL_VERSION,
            client: client.into(),
        },
    }));
    Ok(bytes)
}

/// A WebTransport session (its CONNECT answered 200) on a bare QUIC connection: the endpoint,
/// the connection, its HTTP/3 control stream (kept open: a finished one closes the connection)
/// and the CONNECT stream's sending side. The CONNECT is the connection's first bidirectional
/// stream (stream 0), so the session id is 0.
pub struct RawSession {
    pub endpoint: wtransport::quinn::Endpoint,
    pub conn: Connection,
    pub control: SendStream,
    pub connect: SendStream,
}

/// Opens a [`RawSession`] to `server` for `token`; fails unless the CONNECT is answered 200.
pub async fn raw_session(server: &crate::TestServer, token: &str) -> Result<RawSession> {
    let endpoint = crate::quic_client(server, |_| {})?;
    let conn = endpoint.connect(server.wt, "localhost")?.await?;
    let mut control = conn.open_uni().await?;
    control.write_all(&control_stream_bytes()?).await?;
    let (status, connect, _connect_recv) = connect_request(&conn, server.wt.port(), token).await?;
    if status.as_deref() != Some("200") {
        return Err(anyhow!("the CONNECT was answered {status:?}"));
    }
    Ok(RawSession {
        endpoint,
        conn,
        control,
        connect,
    })
}
