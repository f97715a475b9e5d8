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
//! compared with its value when the wait began (or at the last extension): fewer means the
//! peer took some, and the wait gets another deadline. A peer that reads nothing acknowledges
//! nothing once its receive buffer is full, and meets the deadline.

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

    /// `None` where the kernel does not tell (then only a write that completes is progress).
    fn read(&self) -> Option<u64> {
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

/// A stream whose writes fail with `TimedOut` after `deadline` without progress. Reads pass
/// through.
pub struct WriteStall<S> {
    inner: S,
    deadline: Duration,
    unacked: Unacked,
    /// One timer for the connection's life, reset when a wait begins: a write that waits is
    /// the common case on a busy socket, and costs no allocation.
    sleep: Pin<Box<Sleep>>,
    /// While a write waits: the unacknowledged bytes when the wait began (or was last
    /// extended; `None` inside when the kernel does not tell).
    waiting: Option<Option<u64>>,
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

    /// After the inner write returned `Pending`: arms the deadline, or, once it passed, extends
    /// it if the peer acknowledged bytes meanwhile, else fails.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.waiting.is_none() {
            self.sleep.as_mut().reset(Instant::now() + self.deadline);
            self.waiting = Some(self.unacked.read());
        }
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = self.unacked.read();
            let before = self.waiting.flatten();
            let progressed = matches!((before, now), (Some(before), Some(now)) if now < before);
            if !progressed {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a write made no progress for the write-stall deadline",
                ));
            }
            self.waiting = Some(now);
            self.sleep.as_mut().reset(Instant::now() + self.deadline);
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
