//! `quiver serve`'s signals during a drain (outside audit 116, F5 and F6): the drain's start is
//! logged in every log format, and a second SIGTERM or SIGINT ends the process at once, with
//! status 130, rather than at the drain's deadline. Run against the built binary.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_proto::Command as Cmd;
use quiver_tests::{process, Raw, SECRET};

/// What the documented status after a second signal is (README, "SIGTERM").
const SECOND_SIGNAL_EXIT: i32 = 130;

/// A `quiver serve` with a 60 s drain and calls going to a backend that never answers, its
/// stderr in `dir`, and a session held open by such a call (so the drain lasts to its
/// deadline): the child, the session, and the backend's socket (kept, so calls hang).
struct Draining {
    child: Child,
    _session: Raw,
    _backend: std::net::TcpListener,
    runtime: tokio::runtime::Runtime,
}

fn start(dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Draining> {
    // Never accepted: the kernel completes the connections, the request is never answered.
    let backend = std::net::TcpListener::bind("127.0.0.1:0")?;
    let config = dir.join("quiver.toml");
    std::fs::write(
        &config,
        format!(
            "[timeouts]\ndrain = \"60s\"\n\n[rpc]\nurl = \"http://{}/rpc\"\n",
            backend.local_addr()?
        ),
    )?;
    let mut cmd = process::serve_command(dir)?;
    cmd.args(["--jwt-secret", SECRET, "--self-signed", "--config"])
        .arg(&config)
        .args(extra)
        .env_remove("QUIVER_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("quiver-stderr.log"))?);
    let mut child = cmd.spawn()?;
    let ready = process::read_ready(&mut child)?;
    let port = ready["webtransport"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no webtransport address in {ready}"))?
        .parse::<std::net::SocketAddr>()?
        .port();
    let hash: [u8; 32] = hex::decode(ready["cert_sha256"].as_str().unwrap_or_default())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad certificate hash in {ready}"))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let token = quiver_tests::rpc::call_token("acme", "caller", &["order.*"]);
    let session = runtime.block_on(async {
        let mut raw = Raw::connect_at(port, hash, &token).await?;
        raw.send(Cmd::Call {
            method: "order.slow".into(),
            payload: bytes::Bytes::new(),
            timeout_ms: 30_000,
            idempotency_key: String::new(),
        })
        .await?;
        // The call reaches the backend before the drain begins.
        tokio::time::sleep(Duration::from_millis(300)).await;
        anyhow::Ok(raw)
    })?;
    Ok(Draining {
        child,
        _session: session,
        _backend: backend,
        runtime,
    })
}

fn signal(child: &Child, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} failed: {status}");
    Ok(())
}

/// First `first`, then a second later (the process still draining) `second`: it exits within
/// a few seconds of the second, with [`SECOND_SIGNAL_EXIT`]. Returns its stderr.
fn two_signals(extra: &[&str], first: &str, second: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let mut server = start(dir.path(), extra)?;
    let stderr = || std::fs::read_to_string(dir.path().join("quiver-stderr.log"));
    signal(&server.child, first)?;
    std::thread::sleep(Duration::from_secs(1));
    let early = server.child.try_wait()?;
    anyhow::ensure!(
        early.is_none(),
        "exited ({early:?}) a second after {first}, with a session held open: the premise \
         failed; stderr:\n{}",
        stderr()?
    );
    signal(&server.child, second)?;
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait()? {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(8) {
            let _ = server.child.kill();
            let _ = server.child.wait();
            anyhow::bail!(
                "still running 8 s after a second signal ({second}); stderr:\n{}",
                stderr()?
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let stderr = stderr()?;
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after the second signal; stderr:\n{stderr}"
    );
    assert_eq!(
        status.code(),
        Some(SECOND_SIGNAL_EXIT),
        "{status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("second signal: exiting without waiting for the drain"),
        "{stderr}"
    );
    drop(server.runtime);
    Ok(stderr)
}

/// A JSON log says the drain began (with the sessions open and its deadline) and why the
/// process ended early: one object per line, nothing else.
#[test]
fn a_second_sigterm_ends_the_drain_and_a_json_log_says_so() -> anyhow::Result<()> {
    let stderr = two_signals(&["--log-format", "json"], "TERM", "TERM")?;
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("a line that is no JSON object ({e}):\n{stderr}"))?;
    let draining = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("draining"))
        })
        .ok_or_else(|| anyhow::anyhow!("no drain line:\n{stderr}"))?;
    assert_eq!(draining["level"], "INFO", "{draining}");
    assert_eq!(draining["signal"], "SIGTERM", "{draining}");
    assert_eq!(draining["sessions"], 1, "{draining}");
    assert_eq!(draining["deadline_ms"], 60_000, "{draining}");
    Ok(())
}

/// Ctrl-C twice as well, or a TERM then an INT; the text log says the drain began once.
#[test]
fn a_second_sigint_ends_the_drain_and_a_text_log_says_it_once() -> anyhow::Result<()> {
    let stderr = two_signals(&[], "INT", "INT")?;
    assert_eq!(stderr.matches("draining").count(), 1, "{stderr}");
    assert!(stderr.contains("signal=\"SIGINT\""), "{stderr}");
    let stderr = two_signals(&[], "TERM", "INT")?;
    assert!(
        stderr.contains("second signal: exiting without waiting for the drain signal=\"SIGINT\""),
        "{stderr}"
    );
    Ok(())
}
