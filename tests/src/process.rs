//! A `quiver serve` in its own process, for what an in-process server can't do: die by SIGKILL.
//! The binary is the one cargo built next to the test executables (`scripts/test` builds it
//! before running the tests).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::SECRET;

pub struct QuiverProcess {
    child: Child,
    pub wt_port: u16,
    pub http_port: u16,
    /// The TCP port of the TLS listener (wss, SSE, the API), opened with a real certificate.
    pub https_port: Option<u16>,
    pub hash: [u8; 32],
}

/// The `quiver` binary cargo built next to the test executables.
pub fn binary() -> Result<PathBuf> {
    // target/<profile>/deps/<test> → target/<profile>/quiver
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
    let bin = dir.join("quiver");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --bin quiver` first (scripts/test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `quiver serve` on ephemeral loopback ports, without the demo, keeping its files in
/// `cert_dir`; no key configured (add one, or it runs in development mode).
pub fn serve_command(cert_dir: &Path) -> Result<Command> {
    serve_command_on(cert_dir, "127.0.0.1:0")
}

/// [`serve_command`] with its WebTransport (UDP) address given.
pub fn serve_command_on(cert_dir: &Path, listen: &str) -> Result<Command> {
    let mut cmd = Command::new(binary()?);
    cmd.args([
        "serve",
        "--listen",
        listen,
        "--http",
        "127.0.0.1:0",
        "--no-demo",
    ])
    .arg("--cert-dir")
    .arg(cert_dir);
    Ok(cmd)
}

/// Reads a `quiver serve` child's stdout up to its `QUIVER_READY` line and returns that JSON;
/// the rest of stdout is drained in the background so the server never blocks on a full pipe.
pub fn read_ready(child: &mut Child) -> Result<serde_json::Value> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        match lines.next() {
            Some(line) => {
                if let Some(json) = line?.strip_prefix("QUIVER_READY ") {
                    break serde_json::from_str::<serde_json::Value>(json)?;
                }
            }
            None => bail!("quiver exited before it was ready"),
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok(ready)
}

/// Waits up to `wait` for `cmd`, which must refuse to run (a server that starts instead is
/// killed, and that is an error); returns whether it succeeded and its stderr.
pub fn refusal(mut cmd: Command, wait: std::time::Duration) -> Result<(bool, String)> {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let deadline = std::time::Instant::now() + wait;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {wait:?}: it started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    Ok((status.success(), stderr))
}

impl QuiverProcess {
    /// Starts `quiver serve` with the test secret, the given config file and extra flags.
    pub fn start(cert_dir: &Path, config: Option<&Path>, extra: &[&str]) -> Result<Self> {
        Self::start_on(cert_dir, config, extra, "127.0.0.1:0")
    }

    /// [`Self::start`] on a given WebTransport (UDP) address: a restart in the place of a
    /// killed instance.
    pub fn start_on(
        cert_dir: &Path,
        config: Option<&Path>,
        extra: &[&str],
        listen: &str,
    ) -> Result<Self> {
        let mut cmd = serve_command_on(cert_dir, listen)?;
        cmd.args(["--jwt-secret", SECRET, "--self-signed"])
            .args(extra)
            .stdout(Stdio::piped());
        // Kept in a file, so that a server that will not start says why in the test's failure.
        let stderr_path = cert_dir.join("quiver-stderr.log");
        cmd.stderr(std::fs::File::create(&stderr_path)?);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd.spawn().context("starting quiver")?;
        let ready = read_ready(&mut child).map_err(|e| {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            e.context(format!("quiver's stderr ends:\n{}", tail.join("\n")))
        })?;
        let port = |field: &str| -> Result<u16> {
            let addr = ready[field].as_str().ok_or_else(|| anyhow!("no {field}"))?;
            Ok(addr.parse::<std::net::SocketAddr>()?.port())
        };
        let hash = hex::decode(ready["cert_sha256"].as_str().unwrap_or_default())?
            .try_into()
            .map_err(|_| anyhow!("bad hash"))?;
        Ok(Self {
            wt_port: port("webtransport")?,
            http_port: port("http")?,
            https_port: ready["https"].as_str().map(|_| port("https")).transpose()?,
            hash,
            child,
        })
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/v1", self.wt_port)
    }

    /// The WebSocket URL (PROTOCOL.md 9.2) on its HTTP port.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.http_port)
    }

    /// SIGSTOP: the process answers nothing any more while its sockets stay open (the kernel
    /// still accepts TCP connections and buffers datagrams), like a hung server.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// SIGTERM: a graceful drain.
    pub fn terminate(&self) -> Result<()> {
        self.signal("TERM")
    }

    /// Waits up to `wait` for the process to exit by itself.
    pub fn wait_exit(&mut self, wait: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + wait;
        while self.child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                bail!("still running after {wait:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> Result<()> {
        signal(self.child.id(), name)
    }

    /// The server's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no goodbye, no cleanup, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QuiverProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `quiver` command (any subcommand) run in `dir`, with no `QUIVER_*` variable inherited
/// from the test's own environment: each test sets the ones it means.
pub fn quiver_command(dir: &Path) -> Result<Command> {
    let mut cmd = Command::new(binary()?);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("QUIVER_") {
            cmd.env_remove(key);
        }
    }
    Ok(cmd)
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
pub(crate) fn stopped(pid: u32) -> Result<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).context("reading /proc")?;
    for task in tasks {
        let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
        // `pid (comm) S ...`: the state follows the last `)` (comm may hold spaces).
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if state.is_some_and(|s| s != 'T' && s != 't') {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sends signal `name` (`STOP`, `CONT`, …) to process `pid`.
pub(crate) fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

/// Connection flags for `server`: its URL and certificate hash, WebTransport only, a token.
pub fn conn_args(server: &crate::TestServer, token: &str) -> Vec<String> {
    vec![
        "--url".into(),
        server.url(),
        "--cert-hash".into(),
        hex::encode(server.hash),
        "--transport".into(),
        "webtransport".into(),
        "--token".into(),
        token.into(),
    ]
}

/// `quiver SUB` against `server` with [`conn_args`], killed when dropped.
pub fn cli_command(
    server: &crate::TestServer,
    sub: &str,
    token: &str,
) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::from(quiver_command(server.dir.path())?);
    cmd.arg(sub)
        .args(conn_args(server, token))
        .kill_on_drop(true);
    Ok(cmd)
}

/// `quiver pub --url URLS ARGS` over WebTransport (`server`'s certificate hash for every URL),
/// run in `dir`, while `server` dies: it is killed (SIGKILL, no goodbye) a second after `pub`
/// starts. `pub`'s output once it ends, waited for up to `wait`.
pub async fn pub_while_its_server_dies(
    dir: &Path,
    server: &mut QuiverProcess,
    urls: &str,
    token: &str,
    args: &[&str],
    wait: std::time::Duration,
) -> Result<std::process::Output> {
    let mut cmd = tokio::process::Command::from(quiver_command(dir)?);
    cmd.arg("pub")
        .args(["--url", urls, "--cert-hash", &hex::encode(server.hash)])
        .args(["--transport", "webtransport", "--token", token])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    server.kill();
    Ok(tokio::time::timeout(wait, child.wait_with_output()).await??)
}
