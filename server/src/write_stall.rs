//! The write-stall deadline of a TCP connection (HTTP, SSE, WebSocket): a write that makes no
//! progress for the deadline fails, and the connection ends, so a peer that stops reading
//! cannot hold its connection, its place and its queues for as long as it likes.
//!
//! "Progress" is bytes the peer acknowledged, not the socket becoming writable again. With at
//! most 64 KiB unsent in the kernel (`tcp.rs`, `TCP_NOTSENT_LOWAT`) a write is woken only once
//! the unsent part drains under half of that, and one write may leave up to a WebSocket
//! message more than the mark: a client reading steadily at 5 KB/s took longer than the
//! deadline to drain it, and lost its connection as if it read nothing (outside audit), where it
//! should lose its slow room and keep the session. So when the deadline passes with the write
//! still waiting, the kernel's count of bytes written but not acknowledged (`SIOCOUTQ`) is
//! looked at four times per deadline: each time it went down the peer took some, and the
//! deadline counts from then. A peer that reads nothing acknowledges nothing once its receive
//! buffer is full, and meets the deadline (from its last acknowledgement, give or take a
//! quarter). A peer that reads but frees less than half its receive buffer within the deadline
//! acknowledges nothing either (Linux keeps the window closed until then): with default
//! buffers, readers under about 8 KB/s (PROTOCOL.md §9).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes written to a socket and not yet acknowledged by the peer, read from the kernel.
#[derive(Clone, Copy)]
pub struct Unacked {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fd: std::os::fd::RawFd,
}

impl Unacked {
    /// For the socket of `tcp`, which must outlive every read (the stream wrapping it owns it).
    pub fn of(tcp: &tokio::net::TcpStream) -> Self {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            Self {
                fd: tcp.as_raw_fd(),
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = tcp;
            Self {}
        }
    }

    /// For a socket known by its descriptor (`ReadSide` keeps the connection's, and forgets it
    /// before the socket closes), with the same rule as [`Self::of`]: the socket must outlive
    /// every read.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn of_fd(fd: std::os::fd::RawFd) -> Self {
        Self { fd }
    }

    /// `None` where the kernel does not tell (then only a write that completes is progress).
    pub fn read(&self) -> Option<u64> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let mut unacked: libc::c_int = 0;
            // SAFETY: `fd` is the open socket of the stream this value lives beside (see `of`);
            // SIOCOUTQ (= TIOCOUTQ) writes one int.
            let rc = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut unacked) };
            (rc == 0).then_some(u64::try_from(unacked).unwrap_or(0))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        None
    }
}

/// How often a waiting write looks at the unacknowledged bytes, in parts of the deadline: the
/// deadline then counts from the last acknowledgement seen, give or take a quarter, not from
/// the start of the wait (a peer that stopped reading just after a wait began would otherwise
/// have twice the deadline).
const LOOKS_PER_DEADLINE: u32 = 4;

/// A stream whose writes fail with `TimedOut` after `deadline` without progress. Reads pass
/// through.
pub struct WriteStall<S> {
    inner: S,
    deadline: Duration,
    unacked: Unacked,
    /// One timer for the connection's life, reset when a wait begins: a write that waits is
    /// the common case on a busy socket, and costs no allocation.
    sleep: Pin<Box<Sleep>>,
    /// While a write waits: the last progress seen.
    waiting: Option<Progress>,
}

struct Progress {
    /// The unacknowledged bytes at the last look (`None` when the kernel does not tell).
    unacked: Option<u64>,
    /// When they last went down (or the wait began).
    at: Instant,
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, deadline: Duration, unacked: Unacked) -> Self {
        Self {
            inner,
            deadline,
            unacked,
            sleep: Box::pin(tokio::time::sleep(deadline)),
            waiting: None,
        }
    }

    /// After the inner write returned `Pending`: arms the deadline, or looks for progress when
    /// the timer fires, and fails once `deadline` passed since the last progress.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let look = self.deadline / LOOKS_PER_DEADLINE;
        if self.waiting.is_none() {
            let now = Instant::now();
            self.sleep.as_mut().reset(now + look);
            self.waiting = Some(Progress {
                unacked: self.unacked.read(),
                at: now,
            });
        }
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            let unacked = self.unacked.read();
            let Some(progress) = self.waiting.as_mut() else {
                return Poll::Pending;
            };
            if matches!((progress.unacked, unacked), (Some(before), Some(after)) if after < before)
            {
                progress.at = now;
            }
            progress.unacked = unacked;
            let fails_at = progress.at + self.deadline;
            if now >= fails_at {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a write made no progress for the write-stall deadline",
                ));
            }
            self.sleep.as_mut().reset((now + look).min(fails_at));
        }
    }

    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        match io(Pin::new(&mut self.inner), cx) {
            Poll::Ready(done) => {
                self.waiting = None;
                Poll::Ready(done)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, |s, cx| s.poll_write(cx, data))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_io(cx, |s, cx| s.poll_shutdown(cx))
    }
}
