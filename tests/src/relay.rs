//! A UDP relay for tests of a client whose connection stays up while it acknowledges nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A UDP relay in front of the server whose server-to-client direction can be cut (packets
/// dropped: a client that stops acknowledging while its connection stays up) or held (packets
/// kept and delivered later, in order: a congested path that loses nothing).
pub struct Relay {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// `Some` while held: the server's packets not delivered yet.
    held: Arc<Mutex<Option<Vec<Vec<u8>>>>>,
    front: Arc<tokio::net::UdpSocket>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub async fn to(server_port: u16) -> anyhow::Result<Self> {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(("127.0.0.1", server_port)).await?;
        let client = Arc::new(Mutex::new(None));
        let cut = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Option<Vec<Vec<u8>>>>> = Arc::new(Mutex::new(None));
        let up = {
            let (front, back, client) = (front.clone(), back.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let _ = back.send(&buf[..n]).await;
                }
            })
        };
        let down = {
            let (front, cut, held, client) =
                (front.clone(), cut.clone(), held.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = back.recv(&mut buf).await {
                    if let Some(held) = held.lock().unwrap().as_mut() {
                        held.push(buf[..n].to_vec());
                        continue;
                    }
                    let to = *client.lock().unwrap();
                    if let (Some(to), false) = (to, cut.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        Ok(Self {
            port: front.local_addr()?.port(),
            cut,
            held,
            front,
            client,
            tasks: vec![up, down],
        })
    }

    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Holds the server's packets from now on, until [`Self::release`].
    pub fn hold(&self) {
        self.held.lock().unwrap().get_or_insert_with(Vec::new);
    }

    /// Delivers what was held, in order, and relays as before.
    pub async fn release(&self) -> anyhow::Result<()> {
        let held = self.held.lock().unwrap().take().unwrap_or_default();
        let to = self
            .client
            .lock()
            .unwrap()
            .ok_or_else(|| anyhow::anyhow!("no client yet"))?;
        for packet in held {
            self.front.send_to(&packet, to).await?;
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
