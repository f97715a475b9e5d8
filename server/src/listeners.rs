//! Binding the WebTransport UDP socket and, with a real certificate, the HTTPS listener that
//! by default shares its port number over TCP (`https.rs`).
//!
//! With the listen port left to the kernel (`:0`), the UDP socket gets any free UDP port, but
//! that number may be taken on TCP by an unrelated socket (an outgoing connection's ephemeral
//! port, another listener). "Any port" must not fail on that: the pair is bound again, with a
//! new UDP port, a bounded number of times. A port asked for explicitly is never changed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::udp_socket::ReceiveBuffer;

/// Tries at a UDP port whose number is free on TCP too, when any port will do. A collision is
/// rare (the ephemeral range holds ~28,000 ports), so a few attempts make failure negligible.
const ANY_PORT_ATTEMPTS: usize = 16;

/// The sockets the server listens on for WebTransport and, with a real certificate, HTTPS.
pub struct Bound {
    pub udp: std::net::UdpSocket,
    pub receive_buffer: Arc<ReceiveBuffer>,
    pub https: Option<TcpListener>,
}

/// Which socket could not be bound, and where.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Binds the UDP socket at `config.listen` and, when `https`, the TCP listener at
/// `config.https`, or else on the UDP port's number.
pub async fn bind(config: &Config, https: bool) -> Result<Bound, BindError> {
    let listen = config.listen;
    let udp = || {
        let (socket, buffer) =
            crate::udp_socket::bind(listen, &config.transport).map_err(|source| BindError {
                addr: listen,
                source,
            })?;
        let port = socket
            .local_addr()
            .map_err(|source| BindError {
                addr: listen,
                source,
            })?
            .port();
        Ok(((socket, buffer), port))
    };
    let tcp = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })
    };
    let ((udp, receive_buffer), https) = match (https, config.https) {
        (false, _) => (udp()?.0, None),
        (true, Some(addr)) => (udp()?.0, Some(tcp(addr).await?)),
        (true, None) => {
            let any_port = listen.port() == 0;
            let (pair, listener) = same_port(any_port, udp, |port| {
                tcp(SocketAddr::new(listen.ip(), port))
            })
            .await?;
            (pair, Some(listener))
        }
    };
    Ok(Bound {
        udp,
        receive_buffer,
        https,
    })
}

/// `udp()` then `tcp(its port)`; when `any_port` and TCP finds the number in use, again with a
/// new UDP socket (the failed one is dropped), up to [`ANY_PORT_ATTEMPTS`] times.
async fn same_port<U, T, Tcp, Fut>(
    any_port: bool,
    mut udp: impl FnMut() -> Result<(U, u16), BindError>,
    mut tcp: Tcp,
) -> Result<(U, T), BindError>
where
    Tcp: FnMut(u16) -> Fut,
    Fut: Future<Output = Result<T, BindError>>,
{
    let mut attempt = 1;
    loop {
        let (socket, port) = udp()?;
        match tcp(port).await {
            Ok(listener) => return Ok((socket, listener)),
            Err(e)
                if any_port
                    && e.source.kind() == io::ErrorKind::AddrInUse
                    && attempt < ANY_PORT_ATTEMPTS =>
            {
                tracing::debug!(port, "TCP port taken; binding another UDP port");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn in_use(port: u16) -> BindError {
        BindError {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            source: io::ErrorKind::AddrInUse.into(),
        }
    }

    /// UDP hands out 40000, 40001, …; TCP refuses the ports in `taken`.
    async fn run(any_port: bool, taken: &[u16]) -> (Result<(u16, u16), BindError>, u16) {
        let next = Cell::new(40000u16);
        let result = same_port(
            any_port,
            || {
                let port = next.get();
                next.set(port + 1);
                Ok((port, port))
            },
            |port| {
                let refused = taken.contains(&port);
                async move {
                    if refused {
                        Err(in_use(port))
                    } else {
                        Ok(port)
                    }
                }
            },
        )
        .await;
        (result, next.get() - 40000)
    }

    #[tokio::test]
    async fn any_port_moves_on_when_tcp_has_the_number() {
        let (result, udp_binds) = run(true, &[40000, 40001]).await;
        let (udp, tcp) = result.expect("a free pair");
        assert_eq!((udp, tcp), (40002, 40002), "the same number on both");
        assert_eq!(udp_binds, 3);
    }

    #[tokio::test]
    async fn a_port_asked_for_is_never_changed() {
        let (result, udp_binds) = run(false, &[40000]).await;
        let err = result.expect_err("refused");
        assert_eq!(err.addr.port(), 40000);
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(udp_binds, 1);
    }

    #[tokio::test]
    async fn the_attempts_are_bounded() {
        let taken: Vec<u16> = (40000..40100).collect();
        let (result, udp_binds) = run(true, &taken).await;
        assert!(result.is_err());
        assert_eq!(udp_binds as usize, ANY_PORT_ATTEMPTS);
    }

    #[tokio::test]
    async fn other_tcp_errors_are_not_retried() {
        let result = same_port(
            true,
            || Ok(((), 40000)),
            |port| async move {
                Err::<(), _>(BindError {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    source: io::ErrorKind::PermissionDenied.into(),
                })
            },
        )
        .await;
        let err = result.expect_err("refused");
        assert_eq!(err.source.kind(), io::ErrorKind::PermissionDenied);
    }

    /// The real sockets: with a TCP listener holding the number of a UDP port handed out
    /// before (free again on UDP), binding "any port" keeps giving one number for both.
    #[tokio::test]
    async fn any_port_binds_one_number_on_both() {
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("literal"),
            ..Config::default()
        };
        let first = bind(&config, true).await.expect("first pair");
        let Bound { udp, https, .. } = first;
        drop(udp);
        let _holder = https.expect("https listener");
        for _ in 0..20 {
            let pair = bind(&config, true).await.expect("a pair");
            let udp_port = pair.udp.local_addr().expect("bound").port();
            let tcp = pair.https.as_ref().expect("https listener");
            let tcp_port = tcp.local_addr().expect("bound").port();
            assert_eq!(udp_port, tcp_port);
        }
    }
}
