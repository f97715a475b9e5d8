//! An SSE reader that vanishes without a FIN or a reset (a laptop closed, a NAT mapping
//! expired) is found gone within `timeouts.keep_alive` + `timeouts.idle` (PROTOCOL.md §9.3),
//! not when the kernel's retransmissions run out about 15 minutes later (outside audit 105, F1:
//! its session held its places, its tenant's seat and its presence all that time).
//!
//! The server and its reader run in a network namespace of their own (`unshare --net`, the
//! reader and the rest entering it with `nsenter`), where an nftables rule drops every packet
//! on loopback: the reader is gone without a word, and nothing outside the namespace is
//! touched; the namespace goes with its processes. It needs root, util-linux, `ip` (iproute2)
//! and `nft` (nftables), as CI has (`scripts/test` installs the last two): without them the
//! test fails, it does not skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use quiver_tests::{full_token, metric_sum, process, SECRET, WAIT};

const IDLE: Duration = Duration::from_secs(2);
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// The rule that makes every peer in the namespace vanish: packets dropped as they arrive, so
/// their senders see no error, only silence.
const VANISH: &str = "table inet quiver_vanish {\n  chain in {\n    type filter hook prerouting \
                      priority -300;\n    iifname \"lo\" drop;\n  }\n}\n";
/// Connects to 127.0.0.1 on the port given as the argument, writes stdin to it, then copies
/// what comes back to stdout: a client made of bash alone, which enters a namespace as it is.
const CLIENT: &str = "exec 3<>/dev/tcp/127.0.0.1/\"$0\" && cat >&3 && exec cat <&3";

#[test]
fn a_vanished_sse_reader_is_found_gone_within_idle() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("q.toml");
    std::fs::write(
        &config,
        format!(
            "[timeouts]\nidle = \"{}s\"\nkeep_alive = \"{}s\"\n",
            IDLE.as_secs(),
            KEEP_ALIVE.as_secs()
        ),
    )?;
    let stderr_path = dir.path().join("quiver-stderr.log");
    let mut serve = Command::new("unshare");
    serve
        .args(["--net", "--", "sh", "-c"])
        .arg("\"$1\" link set lo up && shift && exec \"$@\"")
        .arg("sh")
        .arg(tool("ip", "iproute2")?)
        .arg(process::binary()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--no-demo",
            "--jwt-secret",
            SECRET,
            "--self-signed",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--cert-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?);
    without_quiver_env(&mut serve);
    let mut server = Killed(serve.spawn().context("running unshare (util-linux)")?);
    let port = ready(&mut server.0).map_err(|e| {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        e.context(format!("quiver in a new network namespace: {stderr}"))
    })?;
    // `unshare` and `sh` exec what follows: the server's process id names the namespace.
    let pid = server.0.id();

    let mut reader = in_namespace(pid, "bash");
    reader
        .args(["-c", CLIENT, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut reader = Killed(reader.spawn().context("running nsenter (util-linux)")?);
    let request = format!(
        "GET /v1/sse?room=quiet&token={} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Accept: text/event-stream\r\n\r\n",
        full_token("acme", "vanishing")
    );
    let mut stdin = reader.0.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    stdin.write_all(request.as_bytes())?;
    drop(stdin);
    let lines = lines_of(reader.0.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l == "event: subscribed") {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => bail!("no subscribed event; the response so far: {seen:#?}"),
        }
    }
    let page = metrics(pid, port)?;
    let open = metric_sum(&page, "quiver_sessions_active", &[("transport", "sse")]);
    assert_eq!(open, 1.0, "{page}");

    // The reader vanishes: nothing it sends arrives, nothing reaches it, and no one says so.
    run(
        in_namespace(pid, &tool("nft", "nftables")?),
        &["-f", "-"],
        VANISH,
    )?;
    // The keep-alive written next goes unacknowledged, and `idle` after it the connection is
    // given up. The kernel's retransmissions alone would have gone on for about 15 minutes.
    std::thread::sleep(KEEP_ALIVE + IDLE + Duration::from_secs(3));
    run(
        in_namespace(pid, &tool("nft", "nftables")?),
        &["delete", "table", "inet", "quiver_vanish"],
        "",
    )?;

    // Had the session outlived the silence, its connection would carry on now that packets
    // pass again: the session must be gone already (looked at for a while, so a busy machine
    // that is slow to count it does not fail the test).
    let deadline = Instant::now() + WAIT;
    loop {
        let page = metrics(pid, port)?;
        let open = metric_sum(&page, "quiver_sessions_active", &[("transport", "sse")]);
        let closed = metric_sum(
            &page,
            "quiver_sessions_closed_total",
            &[("transport", "sse")],
        );
        if (open, closed) == (0.0, 1.0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the vanished reader's session is still open ({open} open, {closed} closed):\n{page}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child killed and reaped when dropped, so a failing test leaves no process behind (and so
/// no namespace: it lives as long as its processes).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program` in the network namespace of process `pid`.
fn in_namespace(pid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg(program);
    cmd
}

/// A tool from the system's directories (root's `PATH` has them; a test runner's may not).
fn tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow!("{name} not found: install {package} (scripts/test does)"))
}

/// The developer's own `QUIVER_*` variables would configure the server under test.
fn without_quiver_env(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("QUIVER_") {
            cmd.env_remove(key);
        }
    }
}

/// The server's HTTP port, from its `QUIVER_READY` line (within twice [`WAIT`]); the rest of
/// its output is drained, so it never blocks on a full pipe.
fn ready(server: &mut Child) -> Result<u16> {
    let lines = lines_of(server.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .map_err(|_| anyhow!("quiver did not say it was ready"))?;
        if let Some(json) = line.strip_prefix("QUIVER_READY ") {
            let ready: serde_json::Value = serde_json::from_str(json)?;
            let http = ready["http"].as_str().ok_or_else(|| anyhow!("no http"))?;
            return Ok(http.parse::<std::net::SocketAddr>()?.port());
        }
    }
}

/// Lines read from `from` by a thread of their own, so waiting for one can be bounded.
fn lines_of(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                // Nobody listens any more: drain the rest.
                continue;
            }
        }
    });
    rx
}

/// The server's `/metrics` page, fetched inside the namespace.
fn metrics(pid: u32, port: u16) -> Result<String> {
    let mut cmd = in_namespace(pid, "bash");
    cmd.args(["-c", CLIENT, &port.to_string()]);
    // HTTP/1.0: the answer is not chunked, and the connection ends with it.
    run(cmd, &[], "GET /metrics HTTP/1.0\r\n\r\n")
}

/// Runs `cmd ARGS` with `input` on its stdin to its end (within [`WAIT`]), which must be a
/// success; its stdout.
fn run(mut cmd: Command, args: &[&str], input: &str) -> Result<String> {
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = Killed(cmd.spawn().with_context(|| shown.clone())?);
    let out = collect(child.0.stdout.take());
    let err = collect(child.0.stderr.take());
    if let Some(mut stdin) = child.0.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("{shown} still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().map_err(|_| anyhow!("reading stdout"))?;
    let err = err.join().map_err(|_| anyhow!("reading stderr"))?;
    if !status.success() {
        bail!("{shown}: {status}: {err}");
    }
    Ok(out)
}

fn collect(from: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut from) = from {
            let _ = from.read_to_string(&mut text);
        }
        text
    })
}
