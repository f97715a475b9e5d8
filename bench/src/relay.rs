//! A UDP relay that adds a fixed delay in both directions: the head-of-line test's way to give
//! QUIC a real round-trip time on a kernel without `netem`. QUIC only (it relays datagrams);
//! TCP variants are measured without it.
//!
//! Each client address gets its own upstream socket, so the server sees one peer per client.
//! Each direction is a delay line: packets leave in arrival order, `delay` after they arrived.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Runs the relay for at most `max` (it is started per measurement and killed after it).
pub async fn run(
    listen: SocketAddr,
    upstream: SocketAddr,
    delay: Duration,
    max: Duration,
) -> Result<()> {
    let front = Arc::new(UdpSocket::bind(listen).await?);
    println!("RELAY_READY {{\"addr\":\"{}\"}}", front.local_addr()?);
    let relay = async {
        let mut clients: HashMap<SocketAddr, mpsc::UnboundedSender<(Instant, Vec<u8>)>> =
            HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = front.recv_from(&mut buf).await?;
            let due = Instant::now() + delay;
            let tx = match clients.get(&from) {
                Some(tx) => tx.clone(),
                None => {
                    let up = Arc::new(UdpSocket::bind(("0.0.0.0", 0)).await?);
                    up.connect(upstream).await?;
                    // client -> server line
                    let (to_server, rx) = mpsc::unbounded_channel();
                    tokio::spawn(delay_line(rx, up.clone(), None));
                    // server -> client: read upstream, delay, send back from the front socket
                    let (to_client, back_rx) = mpsc::unbounded_channel();
                    tokio::spawn(delay_line(back_rx, front.clone(), Some(from)));
                    tokio::spawn(read_upstream(up, to_client, delay));
                    clients.insert(from, to_server.clone());
                    to_server
                }
            };
            let _ = tx.send((due, buf[..n].to_vec()));
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    match tokio::time::timeout(max, relay).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

async fn read_upstream(
    up: Arc<UdpSocket>,
    to_client: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    delay: Duration,
) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = up.recv(&mut buf).await?;
        if to_client
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            return Ok(());
        }
    }
}

/// Sends each packet at its due time, in order; `to` for an unconnected socket.
async fn delay_line(
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
) {
    while let Some((due, packet)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        // A full socket buffer drops the packet, as a router would.
        let _ = match to {
            Some(addr) => socket.send_to(&packet, addr).await,
            None => socket.send(&packet).await,
        };
    }
}
