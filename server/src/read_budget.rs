//! What a WebSocket message may take on the wire: bytes read from a TCP connection (after TLS)
//! are counted below hyper, and a WebSocket session's reader sets how many more may come before
//! its next message completes.
//!
//! Why (outside bounds audit 3, F1): tungstenite assembles a fragmented message out of sight,
//! and a continuation frame with an empty payload adds nothing to the message's size, so a
//! message that never ends never reaches `max_frame` and is never a command that the rate
//! limit sees: two sessions sending 6-byte empty continuations held the server at 1.9 cores
//! for as long as they liked. Counting the wire bytes a message takes bounds its fragments
//! without parsing frames twice: a message still incomplete past [`incomplete`] bytes fails the
//! connection's reads, and a complete one whose frames took more than [`FRAMING`] bytes beyond
//! its payload is a protocol violation (`transport/websocket.rs`). Connections that carry no
//! WebSocket (the API, SSE) are never limited.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tcp::TcpSlot;

/// Bytes a message's frame headers (and what the reader had read ahead of it: at most one
/// read buffer, `READ_BUFFER` in websocket.rs, 4 KiB, either way) may take beyond its payload:
/// at most about 2,000 minimal fragments, far more than any client library makes of one
/// message. Each fragment costs a parse a command's rate does not see: at 16 KiB (about 3,400)
/// a session within its rate kept 9 % of a core busy (regression audit 9, R4).
pub const FRAMING: u64 = 8 * 1024;

/// A client's control frame header: two bytes and a four-byte mask.
const CONTROL_HEADER: u64 = 6;

/// Bytes an incomplete message may take on the wire, for messages of at most `max_message`
/// bytes: the largest message, whole, plus [`FRAMING`].
pub fn incomplete(max_message: usize) -> u64 {
    max_message as u64 + FRAMING
}

/// The reading side of one TCP connection: its count of bytes read and the count past which its
/// reads fail (the framing budget); and its socket, to tell when the peer has stopped sending.
pub struct ReadSide {
    read: AtomicU64,
    /// `u64::MAX` until a WebSocket reader sets one.
    limit: AtomicU64,
    exceeded: AtomicBool,
    /// The TCP socket (-1: none known), valid while the connection's stream owns it.
    fd: AtomicI32,
}

impl Default for ReadSide {
    fn default() -> Self {
        Self {
            read: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            exceeded: AtomicBool::new(false),
            fd: AtomicI32::new(-1),
        }
    }
}

impl ReadSide {
    /// Remembers `tcp`'s socket for [`Self::peer_stopped_sending`]; it must outlive every call
    /// (the connection's stream owns it, and the WebSocket reader holds that stream).
    pub fn watch(&self, tcp: &tokio::net::TcpStream) {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            self.fd.store(tcp.as_raw_fd(), Ordering::Relaxed);
        }
        #[cfg(not(unix))]
        let _ = tcp;
    }

    /// Whether the peer has closed its sending side (a FIN, even with data still unread) or
    /// reset the connection. Asks the kernel without reading anything; `false` where it
    /// cannot tell.
    pub fn peer_stopped_sending(&self) -> bool {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let fd = self.fd.load(Ordering::Relaxed);
            if fd < 0 {
                return false;
            }
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no wait; the descriptor is the connection's own (see
            // `watch`) and polling it reads nothing.
            let ready = unsafe { libc::poll(&mut poll, 1, 0) };
            ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        false
    }

    /// Forgets the socket: it is about to close, and its descriptor's number may then be
    /// given to another file, which this side (it may outlive the stream: an SSE response's
    /// events, a WebSocket's framing budget) must not ask about.
    fn forget_socket(&self) {
        self.fd.store(-1, Ordering::Relaxed);
    }

    /// Bytes written to the connection's socket that the peer has not acknowledged yet
    /// (`write_stall.rs`): `None` where the kernel does not tell or the socket is not known (or
    /// closed). A writer waiting on a slow reader sees it read by this changing (the WebSocket
    /// writer, inside one large message).
    pub(crate) fn unacked(&self) -> Option<u64> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let fd = self.fd.load(Ordering::Relaxed);
            (fd >= 0)
                .then(|| crate::write_stall::Unacked::of_fd(fd).read())
                .flatten()
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        None
    }

    /// Bytes read from the connection so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// From byte `from` of the connection, at most `bytes` more may be read.
    pub fn allow(&self, from: u64, bytes: u64) {
        self.limit
            .store(from.saturating_add(bytes), Ordering::Relaxed);
    }

    /// Whether a read failed for going past the limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    fn count(&self, n: usize) -> io::Result<()> {
        let total = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.limit.load(Ordering::Relaxed) {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a WebSocket message took more bytes on the wire than its budget",
            ));
        }
        Ok(())
    }
}

/// A WebSocket message's framing, as the session's reader sees it: where the last complete
/// message ended on the wire.
pub struct MessageBudget {
    slot: TcpSlot,
    mark: u64,
    incomplete: u64,
}

impl MessageBudget {
    /// Starts counting at what the connection has read so far (the upgrade request included:
    /// that only makes the first message's count generous).
    pub fn start(slot: TcpSlot, max_message: usize) -> Self {
        let mark = slot.read_side().read();
        let incomplete = incomplete(max_message);
        slot.read_side().allow(mark, incomplete);
        Self {
            slot,
            mark,
            incomplete,
        }
    }

    /// A message of `payload` bytes came complete: `Err` with the reason when its frames took
    /// more than [`FRAMING`] bytes beyond it; the next message's count starts here.
    pub fn complete(&mut self, payload: usize) -> Result<(), String> {
        let budget = self.slot.read_side();
        let now = budget.read();
        let took = now.saturating_sub(self.mark);
        self.mark = now;
        budget.allow(now, self.incomplete);
        if took > payload as u64 + FRAMING {
            return Err(too_many_fragments());
        }
        Ok(())
    }

    /// A control frame (ping, pong) of `payload` bytes came: only its own bytes come off the
    /// count. RFC 6455 lets one come between a message's fragments, and starting the count
    /// afresh there (as [`Self::complete`] does) let a message that never ends go on for as
    /// long as the peer pinged between its empty continuation frames (outside audit 119, F2:
    /// 975,000 in 5 s, never refused). A client's control frame is masked with a payload of at
    /// most 125 bytes: [`CONTROL_HEADER`] bytes of header (a longer length field than needed
    /// only costs its sender).
    pub fn control(&mut self, payload: usize) {
        let budget = self.slot.read_side();
        self.mark = (self.mark + CONTROL_HEADER + payload as u64).min(budget.read());
        budget.allow(self.mark, self.incomplete);
    }

    /// Whether the connection's reads failed for an incomplete message's bytes.
    pub fn exceeded(&self) -> bool {
        self.slot.read_side().exceeded()
    }

    /// Resolves once the peer has stopped sending (see [`ReadSide::peer_stopped_sending`]),
    /// looking twice a second; never where that cannot be told.
    pub async fn peer_stopped_sending(&self) {
        let mut look = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            look.tick().await;
            if self.slot.read_side().peer_stopped_sending() {
                return;
            }
        }
    }
}

/// The goodbye's reason for a complete message whose frames took too much beyond it.
pub fn too_many_fragments() -> String {
    format!(
        "WebSocket protocol violation (RFC 6455): a message in too many fragments (its frame \
         headers may take at most {FRAMING} bytes beyond its payload)"
    )
}

/// The goodbye's reason for a message still incomplete past [`incomplete`]: too large, or in
/// too many fragments (which one cannot be told before it ends).
pub fn too_large_or_fragmented() -> String {
    format!(
        "WebSocket protocol violation (RFC 6455): a message larger than max_frame allows, or in \
         too many fragments (its frame headers may take at most {FRAMING} bytes beyond its \
         payload)"
    )
}

/// A TCP connection's stream (after TLS) that counts what is read into its [`TcpSlot`]'s
/// [`ReadSide`], and fails a read past its limit.
pub struct Budgeted<S> {
    inner: S,
    slot: TcpSlot,
}

impl<S> Budgeted<S> {
    pub fn new(inner: S, slot: TcpSlot) -> Self {
        Self { inner, slot }
    }
}

impl<S> Drop for Budgeted<S> {
    /// Runs before `inner`, which owns the socket, is dropped: from here on the slot no longer
    /// names the socket's descriptor (review 92, F6).
    fn drop(&mut self) {
        self.slot.read_side().forget_socket();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        Poll::Ready(self.slot.read_side().count(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fail_past_the_limit_only_once_one_is_set() {
        let budget = ReadSide::default();
        assert!(budget.count(1 << 30).is_ok(), "no limit before one is set");
        budget.allow(budget.read(), 10);
        assert!(budget.count(10).is_ok());
        assert!(!budget.exceeded());
        assert!(budget.count(1).is_err());
        assert!(budget.exceeded());
    }
}
