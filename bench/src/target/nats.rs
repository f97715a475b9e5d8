//! NATS core over its text protocol on plain TCP (or TLS, for the connection set-up peer that
//! terminates TLS like Quiver does): `SUB`, `PUB`, `MSG`, `PING`/`PONG`.
//! Written here rather than with async-nats so that NATS gets the same thin client as the others.

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::payload::{template, Stamped};
use crate::recorder::Recorder;

/// Largest message we accept from the server (its default max_payload is 1 MiB).
const MAX_MSG: usize = 2 * 1024 * 1024;

const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"lang\":\"quiver-bench\",\"version\":\"0\"}\r\n";

/// One parsed server message.
enum Incoming {
    Msg { sid: usize, payload: bytes::Bytes },
    Ping,
    Pong,
    Err(String),
    Other,
}

type ReadHalf = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type WriteHalf = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

struct Conn {
    read: ReadHalf,
    write: BufWriter<WriteHalf>,
    buf: BytesMut,
}

impl Conn {
    /// Connects over plain TCP, or over TLS pinning the server certificate by `tls` (its
    /// SHA-256) when given.
    async fn open(addr: &str, tls: Option<[u8; 32]>) -> Result<Self> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, write): (ReadHalf, WriteHalf) = match tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(hash) => {
                // NATS sends INFO in the clear, then the client upgrades (`tls_required`).
                read_info(&mut stream).await?;
                let tls = tls_connector(hash)
                    .connect(
                        tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")?,
                        stream,
                    )
                    .await
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        let mut conn = Self {
            read,
            write: BufWriter::with_capacity(64 * 1024, write),
            buf: BytesMut::with_capacity(64 * 1024),
        };
        conn.write.write_all(CONNECT).await?;
        Ok(conn)
    }

    /// Sends PING and waits for PONG: everything sent before it has been processed.
    async fn round_trip(&mut self) -> Result<()> {
        self.write.write_all(b"PING\r\n").await?;
        self.write.flush().await?;
        loop {
            match self.next().await? {
                Incoming::Pong => return Ok(()),
                Incoming::Ping => self.write.write_all(b"PONG\r\n").await?,
                Incoming::Err(e) => bail!("nats: {e}"),
                _ => {}
            }
        }
    }

    async fn next(&mut self) -> Result<Incoming> {
        loop {
            if let Some(msg) = parse(&mut self.buf)? {
                return Ok(msg);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                bail!("nats connection closed");
            }
        }
    }
}

/// Reads the server's first line (`INFO {...}`) byte by byte: nothing after it may be consumed,
/// because the TLS handshake follows on the same socket.
async fn read_info(stream: &mut TcpStream) -> Result<()> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!("nats closed before INFO");
        }
        line.push(byte[0]);
        if line.len() > 64 * 1024 {
            bail!("nats: INFO line too long");
        }
    }
    if !line.starts_with(b"INFO ") {
        bail!(
            "nats: expected INFO, got {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    Ok(())
}

/// A TLS client pinning the server certificate by its SHA-256 (as the QUIC targets do), with no
/// session resumption: every connection pays a full handshake, like Quiver's fresh-connect
/// figure.
fn tls_connector(hash: [u8; 32]) -> tokio_rustls::TlsConnector {
    use std::sync::{Arc, OnceLock};
    use tokio_rustls::rustls;
    static CONFIG: OnceLock<(Arc<rustls::ClientConfig>, [u8; 32])> = OnceLock::new();
    let (config, pinned) = CONFIG.get_or_init(|| {
        let mut config = super::quic::pinned_tls(hash);
        config.alpn_protocols.clear();
        config.resumption = rustls::client::Resumption::disabled();
        (Arc::new(config), hash)
    });
    assert_eq!(*pinned, hash, "one NATS TLS peer per generator process");
    tokio_rustls::TlsConnector::from(config.clone())
}

/// Cuts one message out of the buffer if it is complete.
fn parse(buf: &mut BytesMut) -> Result<Option<Incoming>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > 4096 {
            bail!("nats: control line too long");
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    if line.starts_with(b"MSG ") {
        let text = std::str::from_utf8(line)?;
        let parts: Vec<&str> = text.split_ascii_whitespace().collect();
        // MSG <subject> <sid> [reply-to] <#bytes>
        let (sid, len) = match parts.as_slice() {
            [_, _, sid, len] | [_, _, sid, _, len] => {
                (sid.parse::<usize>()?, len.parse::<usize>()?)
            }
            _ => bail!("nats: bad MSG line {text:?}"),
        };
        if len > MAX_MSG {
            bail!("nats: message of {len} bytes");
        }
        let total = eol + 2 + len + 2;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(eol + 2);
        let payload = buf.split_to(len).freeze();
        buf.advance(2);
        return Ok(Some(Incoming::Msg { sid, payload }));
    }
    let msg = if line == b"PING" {
        Incoming::Ping
    } else if line == b"PONG" {
        Incoming::Pong
    } else if line.starts_with(b"-ERR") {
        Incoming::Err(String::from_utf8_lossy(line).into_owned())
    } else {
        Incoming::Other // INFO, +OK
    };
    buf.advance(eol + 2);
    Ok(Some(msg))
}

pub struct NatsSubscriber {
    conn: Conn,
}

impl NatsSubscriber {
    pub async fn connect(addr: &str, rooms: &[String], tls: Option<[u8; 32]>) -> Result<Self> {
        let mut conn = Conn::open(addr, tls).await?;
        for (i, room) in rooms.iter().enumerate() {
            // sid = room index + 1 (sids are positive).
            conn.write
                .write_all(format!("SUB {room} {}\r\n", i + 1).as_bytes())
                .await?;
        }
        conn.round_trip().await?;
        Ok(Self { conn })
    }

    pub async fn run(mut self, rec: &mut Recorder, stop: &CancellationToken) -> Result<()> {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = self.conn.next() => m?,
            };
            match msg {
                Incoming::Msg { sid, payload } => rec.on_payload(sid.saturating_sub(1), &payload),
                Incoming::Ping => {
                    self.conn.write.write_all(b"PONG\r\n").await?;
                    self.conn.write.flush().await?;
                }
                Incoming::Err(e) => return Err(anyhow!("nats: {e}")),
                _ => {}
            }
        }
    }
}

pub struct NatsPublisher {
    conn: Conn,
    frames: Vec<Stamped>,
}

impl NatsPublisher {
    pub async fn connect(
        addr: &str,
        rooms: &[String],
        payload: usize,
        tls: Option<[u8; 32]>,
    ) -> Result<Self> {
        let mut conn = Conn::open(addr, tls).await?;
        conn.round_trip().await?;
        let body = template(payload);
        let mut frames = Vec::new();
        for room in rooms {
            let mut bytes = format!("PUB {room} {}\r\n", body.len()).into_bytes();
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(b"\r\n");
            frames.push(Stamped::new(bytes, &body)?);
        }
        Ok(Self { conn, frames })
    }

    pub fn rooms(&self) -> usize {
        self.frames.len()
    }

    pub async fn publish(&mut self, room: usize) -> Result<()> {
        let bytes = crate::payload::stamped_now(&mut self.frames, room)?;
        self.conn.write.write_all(bytes).await?;
        // Flush every message: latency is measured from the stamp, so no client-side batching.
        self.conn.write.flush().await?;
        Ok(())
    }

    pub async fn finish(&mut self) -> Result<()> {
        self.conn.round_trip().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &mut BytesMut) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = parse(buf).unwrap() {
            out.push(match m {
                Incoming::Msg { sid, payload } => {
                    format!("msg {sid} {}", String::from_utf8_lossy(&payload))
                }
                Incoming::Ping => "ping".into(),
                Incoming::Pong => "pong".into(),
                Incoming::Err(e) => e,
                Incoming::Other => "other".into(),
            });
        }
        out
    }

    #[test]
    fn parses_messages_split_anywhere() {
        let wire = b"INFO {}\r\nMSG a.b 2 5\r\nhello\r\nPING\r\nMSG a 1 r 2\r\nhi\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = all(&mut buf);
            buf.extend_from_slice(&wire[cut..]);
            got.extend(all(&mut buf));
            assert_eq!(
                got,
                ["other", "msg 2 hello", "ping", "msg 1 hi"],
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(&mut BytesMut::from(&b"MSG x\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"MSG x 1 99999999999\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&vec![b'a'; 5000][..])).is_err());
    }
}
