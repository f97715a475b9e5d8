//! A server whose process may open few descriptors (a default `ulimit -n` of 1,024 against the
//! default 20,000 sessions): TCP connections are capped below what the limit leaves, so the
//! server keeps answering (429) instead of running out and hanging (outside audit 27: with
//! every descriptor held by idle connections, health checks and the API got no answer and the
//! accept loop spun a core).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use quiver_tests::process::{binary, read_ready};
use quiver_tests::SECRET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The descriptor limit the server runs under (soft and hard: it cannot raise it).
const DESCRIPTORS: usize = 400;
/// Idle connections opened against it: more than it has descriptors.
const IDLE: usize = 500;

/// The status line of `GET path` on a new connection, or an error if none comes within 3 s.
async fn status(port: u16, path: &str) -> Result<String> {
    tokio::time::timeout(Duration::from_secs(3), async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        Ok::<_, anyhow::Error>(text)
    })
    .await
    .map_err(|_| anyhow!("no answer to {path} within 3 s"))?
}

fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_short_descriptor_limit_caps_tcp_connections_and_the_server_keeps_answering() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {DESCRIPTORS} && exec \"$0\" \"$@\""))
        .arg(binary()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--no-demo", "--self-signed", "--jwt-secret", SECRET])
        .arg("--cert-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .context("starting quiver")?;
    let ready = read_ready(&mut child);
    let result = async {
        let ready = ready?;
        let http = ready["http"].as_str().context("no http address")?;
        let port = http.parse::<std::net::SocketAddr>()?.port();
        let log = std::fs::read_to_string(&stderr_path)?;
        assert!(
            log.contains("descriptor limit") && log.contains("raise the limit"),
            "{log}"
        );

        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(("127.0.0.1", port)).await?);
        }
        // Connections over the cap that are being refused wait at most 1 s for a request.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // Full, and saying so: not out of descriptors and silent.
        let full = status(port, "/healthz").await?;
        assert!(full.starts_with("HTTP/1.1 429"), "{full}");

        drop(idle);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let healthy = status(port, "/healthz").await?;
        assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");
        let metrics = status(port, "/metrics").await?;
        let refused = counter(
            &metrics,
            "quiver_connections_refused_total",
            &["listener=\"http\"", "reason=\"unavailable\""],
        );
        // 500 idle against at most 400 - 256 taken.
        assert!(
            refused >= (IDLE - (DESCRIPTORS - 256)) as f64,
            "{refused} refused"
        );
        assert_eq!(
            counter(
                &metrics,
                "quiver_connections_refused_total",
                &["reason=\"accept_failed\""]
            ),
            0.0,
            "the process ran out of descriptors"
        );
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
