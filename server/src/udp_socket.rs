//! The WebTransport endpoint's UDP socket, when its receive buffer is set
//! (`transport.udp_receive_buffer`).
//!
//! Why it matters (issue 14, bench/results/2026-11-29-connect.md): every client's handshake
//! packets arrive on this one socket. With the kernel's default buffer (212,992 bytes here, a
//! few dozen full-size datagrams) a burst of connects overflows it while the endpoint task is
//! busy with handshake crypto; the lost Initial and Handshake packets are only resent after
//! QUIC's probe timeout, which starts at about a second (initial RTT 333 ms), so connection
//! set-up is dominated by waiting, not CPU: 1,000 connects 64 at a time dropped about 2,000
//! datagrams and ran at 250–340/s; with 1 MiB, none dropped and 800–1,150/s.

use std::net::SocketAddr;

/// Binds `addr` (dual-stack when it is `[::]`) with a receive buffer of `receive_buffer` bytes
/// (Linux caps it at `net.core.rmem_max`; the size obtained is logged).
pub fn bind(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            // `[::]` serves IPv4 too, as `Ipv6DualStackConfig::Allow` does.
            socket.set_only_v6(false)?;
        }
    }
    socket.set_recv_buffer_size(receive_buffer)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let got = socket.recv_buffer_size().unwrap_or(0);
    // Linux reports twice the size asked for (its bookkeeping); less means rmem_max capped it.
    if got < receive_buffer {
        tracing::warn!(
            asked = receive_buffer,
            got,
            "UDP receive buffer capped by the kernel (raise net.core.rmem_max)"
        );
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_the_buffer_asked_for() {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 256 * 1024).unwrap();
        let got = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // Linux doubles the value; other systems may not. Either way at least what was asked,
        // unless rmem_max is below it.
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        assert!(got >= (256 * 1024).min(cap), "got {got}");
        assert!(socket.local_addr().unwrap().port() != 0);
    }
}
