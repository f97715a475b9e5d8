//! The processes a benchmark run starts: servers (Quiver, the bare peer, nats-server, the
//! Socket.IO peer), placed on loopback or in the head-of-line namespace, pinned with `taskset`,
//! and stopped when dropped; plus bounded waiting on child processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::Ctx;
use crate::target::{Kind, Spec};

/// Which core servers and generators run on (None: no pinning), and whether they run at a
/// raised priority.
#[derive(Clone, Copy)]
pub(super) struct Pinning {
    pub(super) server: Option<usize>,
    pub(super) generator: Option<usize>,
    /// As root, servers and generators run at `nice -10`: on a machine shared with other work
    /// (compilers), the measured processes then get most of their core, whichever target it is.
    pub(super) nice: bool,
}

impl Pinning {
    pub(super) fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        // SAFETY: geteuid has no preconditions.
        let nice = unsafe { libc::geteuid() } == 0;
        if nice {
            // With autogroup scheduling (the default on desktop-ish kernels), CPU is shared
            // between sessions first and `nice` only orders processes inside one session: raise
            // this session's (the benchmark's: orchestrator, servers, generators) weight too.
            let _ = std::fs::write("/proc/self/autogroup", "-10");
        }
        if cores >= 2 && taskset {
            Self {
                server: Some(0),
                generator: Some(1),
                nice,
            }
        } else {
            Self {
                server: None,
                generator: None,
                nice,
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        let pin = match (self.server, self.generator) {
            (Some(s), Some(g)) => format!("server on core {s}, generator on core {g} (taskset)"),
            _ => "not pinned (fewer than 2 cores or no taskset)".into(),
        };
        if self.nice {
            format!("{pin}, both at nice -10 (process and autogroup)")
        } else {
            pin
        }
    }
}

pub(super) const JWT_SECRET: &str = "quiver-bench-secret-not-for-production";
pub(super) const NETNS: &str = "qvbench";
pub(super) const LOSSY_SERVER_IP: &str = "10.201.1.2";
pub(super) const CLEAN_SERVER_IP: &str = "10.201.2.2";

/// Prefixes `program` with `ip netns exec`, `nice` and `taskset` as asked. Each of them execs
/// the next, so the child's pid is the measured program's.
pub(super) fn wrapped(
    netns: Option<&str>,
    pin: Pinning,
    core: Option<usize>,
    program: &Path,
) -> Command {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["ip".into(), "netns".into(), "exec".into(), ns.into()]);
    }
    if pin.nice {
        argv.extend(["nice".into(), "-n".into(), "-10".into()]);
    }
    if let Some(core) = core {
        argv.extend(["taskset".into(), "-c".into(), core.to_string()]);
    }
    argv.push(program.display().to_string());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// A running server; stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct ServerProc {
    pub(super) name: String,
    pub(super) child: Child,
    pub(super) spec: Spec,
    pub(super) version: String,
    /// Lines the server printed after its ready line are drained here so its pipe never fills.
    pub(super) _stdout: Option<std::thread::JoinHandle<()>>,
    /// host:port of Quiver's `/metrics`.
    pub(super) metrics: Option<String>,
}

/// A WebTransport server (Quiver or the bare peer) from its JSON ready line: port and
/// certificate hash.
fn quic_server(
    label: &str,
    kind: Kind,
    place: Placement,
    (child, ready, reader): (Child, String, std::thread::JoinHandle<()>),
    token: Option<String>,
) -> anyhow::Result<ServerProc> {
    let ready: serde_json::Value = serde_json::from_str(&ready)?;
    let port = port_of(ready["webtransport"].as_str().unwrap_or_default())?;
    let (sub_addr, pub_addr) = place.addrs(port);
    Ok(ServerProc {
        name: label.into(),
        child,
        spec: Spec {
            kind,
            sub_addr,
            pub_addr,
            cert_sha256: ready["cert_sha256"].as_str().map(str::to_owned),
            token,
        },
        version: String::new(),
        _stdout: Some(reader),
        // Quiver's HTTP side, where it counts its open sessions (unreachable inside the netns).
        metrics: match place {
            Placement::Local => ready["http"].as_str().map(str::to_owned),
            Placement::Netns => None,
        },
    })
}

/// An ECDSA P-256 certificate for the TLS NATS peer (the key type Quiver's development
/// certificate has), written to `dir`; returns the files and the certificate's SHA-256 (hex).
fn nats_certificate(dir: &Path) -> Result<(PathBuf, PathBuf, String)> {
    use sha2::Digest;
    std::fs::create_dir_all(dir)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    // Pinning by hash (wtransport's verifier, as for the QUIC targets) accepts at most 14 days.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(10);
    let cert = params.self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let hash: String = sha2::Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((cert_path, key_path, hash))
}

/// A TCP peer (NATS, Socket.IO): no certificate, no token, no metrics to poll.
fn tcp_server(
    label: &str,
    kind: Kind,
    child: Child,
    (sub_addr, pub_addr): (String, String),
    version: String,
    stdout: Option<std::thread::JoinHandle<()>>,
) -> ServerProc {
    ServerProc {
        name: label.into(),
        child,
        spec: Spec {
            kind,
            sub_addr,
            pub_addr,
            cert_sha256: None,
            token: None,
        },
        version,
        _stdout: stdout,
        metrics: None,
    }
}

impl ServerProc {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) until Quiver has no sessions left from an earlier measurement. A close
    /// the server never received leaves its session open, and fanned out to, until the idle
    /// timeout; measuring before then would charge Quiver for a dead audience. Returns the
    /// sessions still open when it gave up; 0 for servers that do not say.
    pub(super) fn wait_for_no_sessions(&self, limit: Duration) -> u64 {
        let Some(addr) = &self.metrics else {
            return 0;
        };
        let deadline = Instant::now() + limit;
        loop {
            let open = sessions_active(addr).unwrap_or(0);
            if open == 0 || Instant::now() >= deadline {
                return open;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `quiver_sessions_active` (summed over its `transport` label) from a Quiver server's
/// `/metrics`.
fn sessions_active(addr: &str) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut page = String::new();
    stream.read_to_string(&mut page)?;
    let values: Vec<f64> = page
        .lines()
        .filter(|l| {
            l.starts_with("quiver_sessions_active ") || l.starts_with("quiver_sessions_active{")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse().ok())
        .collect();
    anyhow::ensure!(!values.is_empty(), "no quiver_sessions_active");
    Ok(values.iter().sum::<f64>() as u64)
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: {} did not stop on SIGTERM, killing", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` with stdout piped and stderr to `log`, and waits for a stdout line starting with
/// `ready` (returns the rest of it).
pub(super) fn spawn_until_ready(
    name: &str,
    mut cmd: Command,
    log: &Path,
    ready: &'static str,
) -> Result<(Child, String, std::thread::JoinHandle<()>)> {
    let log_file = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(ready) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(rest) => Ok((child, rest, reader)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{name} did not print {ready} within 30 s (log: {})",
                log.display()
            )
        }
    }
}

/// Where the servers listen and where clients reach them.
#[derive(Clone, Copy)]
pub(super) enum Placement {
    /// Loopback on the host.
    Local,
    /// In the head-of-line namespace: subscribers over the lossy pair, publishers the clean one.
    Netns,
}

impl Placement {
    pub(super) fn netns(self) -> Option<&'static str> {
        match self {
            Placement::Local => None,
            Placement::Netns => Some(NETNS),
        }
    }
    pub(super) fn bind_ip(self) -> &'static str {
        match self {
            Placement::Local => "127.0.0.1",
            Placement::Netns => "0.0.0.0",
        }
    }
    pub(super) fn addrs(self, port: u16) -> (String, String) {
        match self {
            Placement::Local => (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
            Placement::Netns => (
                format!("{LOSSY_SERVER_IP}:{port}"),
                format!("{CLEAN_SERVER_IP}:{port}"),
            ),
        }
    }
}

/// Starts the server for `kind`.
pub(super) fn start(ctx: &Ctx, kind: Kind, place: Placement) -> Result<ServerProc> {
    start_with(ctx, kind, place, &[])
}

/// Starts the server for `kind`, with extra `quiver serve` arguments for Quiver.
pub(super) fn start_with(
    ctx: &Ctx,
    kind: Kind,
    place: Placement,
    extra: &[String],
) -> Result<ServerProc> {
    start_with_env(ctx, kind, place, extra, &[])
}

/// Like [`start_with`], without the environment variables named in `unset` (to run Quiver with
/// a default the benchmarks otherwise lift).
pub(super) fn start_with_env(
    ctx: &Ctx,
    kind: Kind,
    place: Placement,
    extra: &[String],
    unset: &[&str],
) -> Result<ServerProc> {
    let label = kind.label();
    let log = ctx
        .work
        .join(format!("{label}-{}.log", ctx.report.runs_started()));
    let core = ctx.pin.server;
    match kind {
        Kind::Quiver | Kind::QuiverSingleStream | Kind::QuiverCubic | Kind::QuiverWs => {
            if kind == Kind::QuiverWs && matches!(place, Placement::Netns) {
                // Its HTTP listener is on the namespace's loopback, out of the generator's reach.
                bail!("quiver-ws is measured on loopback only");
            }
            let mut cmd = wrapped(place.netns(), ctx.pin, core, &ctx.args.quiver);
            let listen = match place {
                Placement::Local => "127.0.0.1:0",
                Placement::Netns => "0.0.0.0:0",
            };
            cmd.args([
                "serve",
                "--listen",
                listen,
                "--http",
                "127.0.0.1:0",
                "--no-demo",
            ])
            .args(extra)
            .arg("--cert-dir")
            .arg(ctx.work.join("certs"))
            .args(["--jwt-secret", JWT_SECRET, "--self-signed"])
            .env("RUST_LOG", "warn")
            // The generator's publisher is one session sending far more than a person would.
            .env("QUIVER_LIMITS__COMMANDS_PER_SECOND", "100000000")
            // NATS and Socket.IO buffer far more per subscriber than Quiver's default 1,024
            // frames; give Quiver comparable room so nobody is cut off as a slow consumer.
            .env("QUIVER_LIMITS__SUBSCRIBER_QUEUE", "16384")
            // nats-server's own per-client bound (`max_pending`) is 64 MiB.
            .env("QUIVER_LIMITS__SESSION_QUEUE_BYTES", "67108864")
            .env("QUIVER_LIMITS__MAX_SESSIONS", "30000")
            .env(
                "QUIVER_ABLATION__SINGLE_STREAM",
                (kind == Kind::QuiverSingleStream).to_string(),
            )
            .env(
                "QUIVER_TRANSPORT__CONGESTION_CONTROL",
                if kind == Kind::QuiverCubic {
                    "cubic"
                } else {
                    "bbr"
                },
            );
            if ctx.args.browser_like_acks {
                // Ask clients for no ACK reduction: they then acknowledge at QUIC's default
                // rate, as clients without the ACK-frequency extension do (outside audit 123,
                // F1; `RunArgs::browser_like_acks`).
                cmd.env("QUIVER_TRANSPORT__CLIENT_ACK_DELAY", "0s");
            }
            for name in unset {
                cmd.env_remove(name);
            }
            let started = spawn_until_ready(label, cmd, &log, "QUIVER_READY ")?;
            let mut server = quic_server(label, kind, place, started, Some(ctx.token.clone()))?;
            if kind == Kind::QuiverWs {
                // The same server, reached at `ws://HTTP/v1/ws` (development mode: plain HTTP).
                let http = server
                    .metrics
                    .clone()
                    .context("quiver printed no HTTP address")?;
                server.spec.sub_addr = http.clone();
                server.spec.pub_addr = http;
                server.spec.cert_sha256 = None;
            }
            Ok(server)
        }
        Kind::Bare => {
            let mut cmd = wrapped(place.netns(), ctx.pin, core, &ctx.args.bare);
            cmd.args(["--listen", &format!("{}:0", place.bind_ip())]);
            let started = spawn_until_ready(label, cmd, &log, "BARE_READY ")?;
            quic_server(label, kind, place, started, None)
        }
        Kind::Nats | Kind::NatsTls => {
            let bin = ctx.args.nats.as_ref().context("no nats-server")?;
            let ports_dir = ctx.work.join(format!("{label}-ports"));
            let _ = std::fs::remove_dir_all(&ports_dir);
            std::fs::create_dir_all(&ports_dir)?;
            let mut cmd = wrapped(place.netns(), ctx.pin, core, bin);
            cmd.args(["-a", place.bind_ip(), "-p", "-1", "--ports_file_dir"])
                .arg(&ports_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log)?));
            let tls = if kind == Kind::NatsTls {
                let (cert, key, hash) = nats_certificate(&ctx.work.join("nats-tls"))?;
                cmd.arg("--tls")
                    .arg("--tlscert")
                    .arg(&cert)
                    .arg("--tlskey")
                    .arg(&key);
                Some(hash)
            } else {
                None
            };
            let mut child = cmd.spawn().context("starting nats-server")?;
            // `wrapped` execs through to nats-server, so the child's pid is the one it writes.
            let listening =
                crate::nats_ports::wait(&ports_dir, &mut child, Duration::from_secs(10)).and_then(
                    |port| {
                        let addrs = place.addrs(port);
                        wait_tcp(&addrs.1, Duration::from_secs(10)).map(|()| addrs)
                    },
                );
            let addrs = match listening {
                Ok(addrs) => addrs,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            };
            let mut server = tcp_server(label, kind, child, addrs, String::new(), None);
            server.spec.cert_sha256 = tls;
            Ok(server)
        }
        Kind::Socketio => {
            let dir = ctx.args.socketio.as_ref().context("no socket.io peer")?;
            let node = which(&ctx.args.node);
            let mut cmd = wrapped(place.netns(), ctx.pin, core, &node);
            cmd.arg(dir.join("server.js"))
                .env("HOST", place.bind_ip())
                .env("PORT", "0");
            let (child, ready, reader) = spawn_until_ready(label, cmd, &log, "SOCKETIO_READY ")?;
            let ready: serde_json::Value = serde_json::from_str(&ready)?;
            let port = ready["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .context("socket.io port")?;
            let version = ready["version"].as_str().unwrap_or_default().to_owned();
            Ok(tcp_server(
                label,
                kind,
                child,
                place.addrs(port),
                version,
                Some(reader),
            ))
        }
    }
}

/// `node` → its full path, so `ip netns exec` and `taskset` find it.
pub(super) fn which(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(program))
}

pub(super) fn port_of(addr: &str) -> Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {addr:?}"))
}

pub(super) fn wait_tcp(addr: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let sock: std::net::SocketAddr = addr.parse()?;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{addr} did not accept connections within {within:?}")
}

/// `wait_with_output` with a deadline: the child is killed when it overruns.
pub(super) fn wait_output(mut child: Child, limit: Duration) -> Result<std::process::Output> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read = |pipe: Option<std::process::ChildStdout>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = std::io::Read::read_to_end(&mut p, &mut buf);
            }
            buf
        })
    };
    let out_thread = read(stdout);
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = stderr {
            let _ = std::io::Read::read_to_end(&mut p, &mut buf);
        }
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("generator overran its {limit:?} limit and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(std::process::Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}
