//! The WebTransport endpoint's UDP socket, and its receive buffer, which is deep only while a
//! burst of handshakes is in progress (`transport.udp_receive_buffer*`).
//!
//! Why deep during bursts (issue 14, bench/results/2026-11-29-connect.md): every client's
//! handshake packets arrive on this one socket. With the kernel's default buffer (212,992 bytes
//! here, a few dozen full-size datagrams) a burst of connects overflows it while the endpoint
//! task is busy with handshake crypto; the lost Initial and Handshake packets are only resent
//! after QUIC's probe timeout, which starts at about a second (initial RTT 333 ms), so
//! connection set-up is dominated by waiting, not CPU: 1,000 connects 64 at a time dropped
//! about 2,000 datagrams and ran at 250–340/s; with 1 MiB, none dropped and 800–1,150/s.
//!
//! Why shallow otherwise (bench/results/2026-11-30-connect-burst.md): under saturated fan-out
//! the socket holds the subscribers' ACKs. A deep queue of them makes the server send about
//! twice as many, smaller packets for the same deliveries (server CPU per delivery 0.6 -> 1.0
//! µs, deliveries/s down 20-50%); a shallow one sheds ACKs, which are cumulative, so losing
//! some costs nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::TransportSettings;

/// Gauge: the receive buffer the kernel reports for the WebTransport socket now.
pub const RECEIVE_BUFFER: &str = "quiver_udp_receive_buffer_bytes";

/// Counter: bursts of handshakes that grew the receive buffer.
pub const BURSTS: &str = "quiver_udp_receive_buffer_bursts_total";

/// How long a burst must have been over before the buffer shrinks back: short, so traffic
/// that follows a burst of connects (subscribers that then receive) soon gets the shallow
/// queue; a storm that hovers around the threshold costs at most a few setsockopt calls a
/// second.
const SETTLE: Duration = Duration::from_millis(250);

/// Registers [`RECEIVE_BUFFER`] and [`BURSTS`] with their descriptions (at recorder start).
pub fn register_metrics() {
    metrics::counter!(BURSTS).absolute(0);
    metrics::describe_counter!(
        BURSTS,
        "Bursts of handshakes (transport.udp_burst_handshakes in progress at once) that grew the \
         WebTransport socket's receive buffer"
    );
    metrics::describe_gauge!(
        RECEIVE_BUFFER,
        metrics::Unit::Bytes,
        "Receive buffer of the WebTransport UDP socket as the kernel reports it; larger while a \
         burst of handshakes is in progress (transport.udp_receive_buffer_burst)"
    );
}

/// Binds `addr` (dual-stack when it is `[::]`) for the WebTransport endpoint, with the steady
/// receive buffer `settings` asks for; the [`ReceiveBuffer`] resizes it later.
pub fn bind(
    addr: SocketAddr,
    settings: &TransportSettings,
) -> std::io::Result<(std::net::UdpSocket, Arc<ReceiveBuffer>)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            // `[::]` serves IPv4 too, as `Ipv6DualStackConfig::Allow` does.
            socket.set_only_v6(false)?;
        }
    }
    // Linux reports twice the size asked for (its bookkeeping), so asking for half of what it
    // reports restores the kernel's default later.
    let kernel_default = socket.recv_buffer_size()?;
    let steady = match settings.udp_receive_buffer {
        0 => kernel_default / 2,
        asked => asked,
    };
    if settings.udp_receive_buffer > 0 {
        set_size(&socket, steady);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let buffer = Arc::new(ReceiveBuffer {
        // The same socket (a second descriptor): quinn owns the first.
        socket: socket.try_clone()?,
        steady,
        burst: settings.udp_receive_buffer_burst,
        threshold: settings.udp_burst_handshakes.max(1),
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        grown: AtomicBool::new(false),
    });
    Ok((socket.into(), buffer))
}

/// Sets the receive buffer, warning when `net.core.rmem_max` caps it.
fn set_size(socket: &socket2::Socket, asked: usize) {
    if let Err(e) = socket.set_recv_buffer_size(asked) {
        tracing::warn!(error = %e, asked, "cannot set the UDP receive buffer");
        return;
    }
    let got = socket.recv_buffer_size().unwrap_or(0);
    if got < asked {
        tracing::warn!(
            asked,
            got,
            "UDP receive buffer capped by the kernel (raise net.core.rmem_max)"
        );
    }
}

/// The endpoint socket's receive buffer: `burst` bytes while at least `threshold` handshakes
/// are in progress, back to `steady` once a whole [`SETTLE`] period stayed below that.
pub struct ReceiveBuffer {
    socket: socket2::Socket,
    /// Bytes to ask for in steady state (what restores the kernel's default, when none is set).
    steady: usize,
    /// Bytes to ask for during a burst; 0: never grow.
    burst: usize,
    threshold: usize,
    in_flight: AtomicUsize,
    /// The most handshakes in progress at once since the last settle tick.
    peak: AtomicUsize,
    grown: AtomicBool,
}

impl ReceiveBuffer {
    /// Counts one handshake in progress until the returned guard is dropped; the one that
    /// makes a burst grows the buffer.
    pub fn handshake(self: &Arc<Self>) -> Handshake {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        if now >= self.threshold && self.burst > 0 && !self.grown.swap(true, Ordering::Relaxed) {
            set_size(&self.socket, self.burst);
            metrics::counter!(BURSTS).increment(1);
            tracing::debug!(
                handshakes = now,
                "handshake burst: UDP receive buffer grown"
            );
            self.report();
        }
        Handshake(self.clone())
    }

    /// Handshakes in progress now.
    pub fn handshakes(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Shrinks the buffer back once a burst is over; runs until `shutdown`.
    pub async fn settle(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SETTLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.settle_once(),
            }
        }
    }

    fn settle_once(&self) {
        let now = self.in_flight.load(Ordering::Relaxed);
        let peak = self.peak.swap(now, Ordering::Relaxed);
        if peak < self.threshold && self.grown.swap(false, Ordering::Relaxed) {
            set_size(&self.socket, self.steady);
            tracing::debug!("handshake burst over: UDP receive buffer back to its steady size");
            self.report();
        }
    }

    /// What the kernel reports now.
    pub fn size(&self) -> usize {
        self.socket.recv_buffer_size().unwrap_or(0)
    }

    /// Sets the gauge to [`Self::size`].
    pub fn report(&self) {
        metrics::gauge!(RECEIVE_BUFFER).set(self.size() as f64);
    }
}

/// One handshake in progress (see [`ReceiveBuffer::handshake`]).
pub struct Handshake(Arc<ReceiveBuffer>);

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(steady: usize, burst: usize, threshold: usize) -> TransportSettings {
        TransportSettings {
            udp_receive_buffer: steady,
            udp_receive_buffer_burst: burst,
            udp_burst_handshakes: threshold,
            ..Default::default()
        }
    }

    fn rmem_max() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn binds_with_the_buffer_asked_for() {
        let (socket, buffer) =
            bind("127.0.0.1:0".parse().unwrap(), &settings(256 * 1024, 0, 16)).unwrap();
        let got = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Linux doubles the value; other systems may not. Either way at least what was asked,
        // unless rmem_max is below it.
        assert!(got >= (256 * 1024).min(rmem_max()), "got {got}");
        assert_eq!(buffer.size(), got, "the clone is the same socket");
        assert!(socket.local_addr().unwrap().port() != 0);
    }

    #[test]
    fn a_burst_of_handshakes_grows_the_buffer_until_it_has_been_over_for_a_tick() {
        let (_socket, buffer) =
            bind("127.0.0.1:0".parse().unwrap(), &settings(0, 1024 * 1024, 3)).unwrap();
        let steady = buffer.size();
        let burst_floor = (1024 * 1024).min(rmem_max());
        assert!(
            burst_floor > steady,
            "this machine's rmem_max ({}) leaves no room to grow past {steady}",
            rmem_max()
        );
        let first: Vec<_> = (0..2).map(|_| buffer.handshake()).collect();
        assert_eq!(buffer.size(), steady, "two handshakes are not a burst");
        let third = buffer.handshake();
        assert!(buffer.size() >= burst_floor, "grown: {}", buffer.size());
        drop(first);
        drop(third);
        // The tick that saw the burst keeps the buffer; the next quiet one shrinks it.
        buffer.settle_once();
        assert!(buffer.size() >= burst_floor, "kept one more tick");
        buffer.settle_once();
        assert_eq!(buffer.size(), steady, "back to the kernel's default");
        // And a new burst grows it again.
        let again: Vec<_> = (0..3).map(|_| buffer.handshake()).collect();
        assert!(buffer.size() >= burst_floor);
        drop(again);
    }

    #[test]
    fn a_zero_burst_size_never_grows() {
        let (_socket, buffer) = bind("127.0.0.1:0".parse().unwrap(), &settings(0, 0, 1)).unwrap();
        let steady = buffer.size();
        let _h: Vec<_> = (0..4).map(|_| buffer.handshake()).collect();
        assert_eq!(buffer.size(), steady);
    }
}
