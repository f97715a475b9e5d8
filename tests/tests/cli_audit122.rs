//! Outside audit 122 of the `quiver` command-line tool, mended: `sub` ends on the first Ctrl-C
//! or SIGTERM even while its stdout is blocked (F1); `pub` stops at the first bad stdin line,
//! sending nothing after it (F2), and reads no more than a line's limit (F3); a reader that
//! went away ends `sub` and `call` quietly (F4); `--format json` escapes C1 controls, DEL and
//! bidirectional overrides (F5); a failed connect names what it tried (F6); text mode escapes
//! a backslash (F8); every argument has a description (F9). F7 (the in-doubt count kept when
//! another error ends the run) needs a server that dies: `pub_says_what_was_in_doubt_...`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use quiver_tests::process::{cli_command as command, pub_while_its_server_dies, quiver_command};
use quiver_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// `quiver sub EXTRA...` with stdout piped, once it says it is subscribed; its stderr, read on
/// in the background, comes back when it ends.
async fn start_sub(
    server: &TestServer,
    token: &str,
    extra: &[&str],
) -> Result<(Child, tokio::task::JoinHandle<String>)> {
    let mut child = command(server, "sub", token)?
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut seen = String::new();
    loop {
        match tokio::time::timeout(WAIT * 3, err.next_line()).await {
            Ok(Ok(Some(line))) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains("quiver: subscribed to") {
                    break;
                }
            }
            _ => bail!("sub never said it subscribed: {seen}"),
        }
    }
    let rest = tokio::spawn(async move {
        while let Ok(Some(line)) = err.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    Ok((child, rest))
}

fn publisher(server: &TestServer, token: &str) -> quiver_client::ClientConfig {
    client_config(server, quiver_client::token_fixed(token.to_owned()))
}

fn kill(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid}");
    Ok(())
}

/// F1: `sub` writing to a pipe nobody reads, blocked in the write, ends on one SIGINT (one
/// SIGTERM) within a few seconds, with status 0. The signal handlers were made anew on every
/// pass of its loop: a signal that came during the write went to no one and was lost.
#[tokio::test]
async fn sub_blocked_on_its_stdout_ends_on_one_signal() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let (mut int, int_err) = start_sub(&server, &token, &["s.flood"]).await?;
    let (mut term, term_err) = start_sub(&server, &token, &["s.flood"]).await?;
    // Held open and never read: a full pipe blocks the write.
    let _int_out = int.stdout.take();
    let _term_out = term.stdout.take();
    let client = quiver_client::Client::connect(publisher(&server, &token)).await?;
    let payload = "x".repeat(2048);
    for _ in 0..200 {
        client.publish_ack("s.flood", payload.clone()).await?;
    }
    client.close().await;
    // Time to fill the 64 KiB pipes and block in the write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (child, signal) in [(&int, "-INT"), (&term, "-TERM")] {
        kill(child.id().context("pid")?, signal)?;
    }
    for (child, err, signal) in [(&mut int, int_err, "INT"), (&mut term, term_err, "TERM")] {
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .with_context(|| format!("sub still runs 5 s after one SIG{signal}"))??;
        let err = err.await?;
        assert_eq!(status.code(), Some(0), "SIG{signal}: {status}; {err}");
    }
    Ok(())
}

/// F2: the first bad stdin line (not UTF-8) stops `pub`: status 1, and nothing after it is
/// published (38 lines after it were).
#[tokio::test]
async fn pub_stops_at_the_first_bad_line_sending_nothing_after_it() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let (mut sub, _err) = start_sub(&server, &token, &["p.bad"]).await?;
    let mut lines = BufReader::new(sub.stdout.take().context("stdout")?).lines();
    let mut input = b"good1\ngood2\n\xff\n".to_vec();
    for n in 3..=40 {
        input.extend_from_slice(format!("after{n}\n").as_bytes());
    }
    let mut child = command(&server, "pub", &token)?
        .arg("p.bad")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(&input).await?;
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 3: not UTF-8"), "{err}");
    // A marker published afterwards: what came before it is all that came.
    let client = quiver_client::Client::connect(publisher(&server, &token)).await?;
    client.publish_ack("p.bad", "end").await?;
    client.close().await;
    let mut got = Vec::new();
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .context("sub ended")?;
        if line == "end" {
            break;
        }
        got.push(line);
    }
    assert_eq!(got, ["good1", "good2"]);
    Ok(())
}

/// F3: a stdin line far longer than limits.max_payload (60 KiB here) is refused without being
/// read whole: `pub` exits while its writer still has most of 64 MB to write (EPIPE). It read
/// the whole line first (a 300 MB line took 557 MB).
#[tokio::test]
async fn pub_refuses_a_long_line_without_reading_it_whole() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let mut child = command(&server, "pub", &token)?
        .arg("p.long")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    const TOTAL: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 << 10];
        let mut written = 0;
        while written < TOTAL {
            if let Err(e) = stdin.write_all(&chunk).await {
                return (written, Some(e.kind()));
            }
            written += chunk.len();
        }
        (written, None)
    });
    let out = tokio::time::timeout(WAIT * 2, child.wait_with_output()).await??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reading stdin, line 1: longer than the server's limits.max_payload"),
        "{err}"
    );
    let (written, error) = tokio::time::timeout(WAIT, writer).await??;
    assert_eq!(
        error,
        Some(std::io::ErrorKind::BrokenPipe),
        "the writer wrote all {written} bytes"
    );
    assert!(written < TOTAL / 4, "{written} bytes were read");
    Ok(())
}

/// F4: `sub ROOM | head -1`: once the reader is gone, `sub` ends with status 0 and says
/// nothing (it printed "Broken pipe" and exited 1).
#[tokio::test]
async fn sub_whose_reader_went_away_ends_quietly() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let (mut sub, err) = start_sub(&server, &token, &["h.one"]).await?;
    let mut lines = BufReader::new(sub.stdout.take().context("stdout")?).lines();
    let client = quiver_client::Client::connect(publisher(&server, &token)).await?;
    client.publish_ack("h.one", "first").await?;
    let first = tokio::time::timeout(WAIT, lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("first"));
    drop(lines);
    for n in 0..3 {
        client.publish_ack("h.one", format!("more {n}")).await?;
    }
    client.close().await;
    let status = tokio::time::timeout(WAIT, sub.wait()).await??;
    let err = err.await?;
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    Ok(())
}

/// A backend whose every answer is `ANSWER`: terminal controls and a backslash.
const ANSWER: &[u8] = b"ok\x1b]0;pwned\x07\x1b[2J\\FAKE";

async fn call_server() -> Result<TestServer> {
    use base64::Engine;
    let app = axum::Router::new().route(
        "/rpc",
        axum::routing::post(|| async {
            axum::Json(serde_json::json!({
                "payload": base64::engine::general_purpose::STANDARD.encode(ANSWER)
            }))
        }),
    );
    let url = quiver_tests::rpc::serve_backend(app).await?;
    TestServer::start_with(move |c| {
        c.rpc.url = Some(url);
        c.rpc.http_secret = Some("a-backend-secret-for-audit-122-tests".into());
    })
    .await
}

/// F4 and F5 for `call`: piped, the answer is written exactly (a script's bytes); a reader
/// that went away ends it with status 0, quietly.
#[tokio::test]
async fn call_writes_its_answer_exactly_to_a_pipe_and_ends_quietly_without_a_reader() -> Result<()>
{
    let server = call_server().await?;
    let token = quiver_tests::rpc::call_token("acme", "cli", &[">"]);
    let out = command(&server, "call", &token)?
        .args(["order.place", "{}"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, [ANSWER, b"\n"].concat());

    let mut child = command(&server, "call", &token)?
        .args(["order.place", "{}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The reader goes before the answer comes.
    drop(child.stdout.take());
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    Ok(())
}

/// F5: `--format json` writes C1 controls, DEL and bidirectional overrides as `\uXXXX`: no such
/// character on the line, and the same payload when parsed.
#[tokio::test]
async fn sub_json_escapes_c1_del_and_bidi_controls() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let (mut sub, _err) = start_sub(&server, &token, &["--format", "json", "j.x"]).await?;
    let mut lines = BufReader::new(sub.stdout.take().context("stdout")?).lines();
    let payload = "\u{9b}31mRED\u{7f}\u{202e}evil\u{2066}";
    let client = quiver_client::Client::connect(publisher(&server, &token)).await?;
    client.publish_ack("j.x", payload).await?;
    client.close().await;
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await??
        .context("sub ended")?;
    let raw: Vec<char> = line
        .chars()
        .filter(|&c| {
            c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
        .collect();
    assert!(raw.is_empty(), "raw {raw:?} in {line:?}");
    assert!(
        line.contains(r"\u009b31mRED\u007f\u202eevil\u2066"),
        "{line}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(parsed["payload"], payload);
    Ok(())
}

/// F8: text mode escapes a backslash, so the text `a\nb` and `a`, newline, `b` print apart and
/// each line reads back as its payload; the help says text escapes and JSON is exact.
#[tokio::test]
async fn sub_text_escapes_a_backslash() -> Result<()> {
    let server = TestServer::start().await?;
    let token = full_token("acme", "cli");
    let (mut sub, _err) = start_sub(&server, &token, &["t.x"]).await?;
    let mut lines = BufReader::new(sub.stdout.take().context("stdout")?).lines();
    let client = quiver_client::Client::connect(publisher(&server, &token)).await?;
    client.publish_ack("t.x", r"a\nb").await?;
    client.publish_ack("t.x", "a\nb").await?;
    client.publish_ack("t.x", r"c\xffd").await?;
    client.publish_ack("t.x", b"c\xffd".to_vec()).await?;
    client.close().await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(
            tokio::time::timeout(WAIT, lines.next_line())
                .await??
                .context("sub ended")?,
        );
    }
    assert_eq!(got, [r"a\\nb", r"a\nb", r"c\\xffd", r"c\xffd"]);
    let help = quiver_command(server.dir.path())?
        .args(["sub", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "a backslash as `\\\\`",
        "reads back as the payload",
        "exact payload",
    ] {
        assert!(help.contains(needle), "{needle} not in {help}");
    }
    Ok(())
}

/// F6: a server that cannot be reached: the error names the URLs and transports tried (it
/// said `quiver: timed out`, or named only the WebSocket URL with `auto`).
#[tokio::test]
async fn connect_failure_names_what_was_tried() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hash = hex::encode([7u8; 32]);
    let run = |transport: &'static str| {
        let mut cmd = Command::from(quiver_command(dir.path()).expect("the binary"));
        cmd.args(["pub", "--url", "https://127.0.0.1:1/v1"])
            .args(["--ws-url", "ws://127.0.0.1:1/v1/ws"])
            .args(["--cert-hash", &hash, "--token", "not.a.token"])
            .args(["--transport", transport, "u.x", "hi"])
            .kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(WAIT * 3, cmd.output()).await??;
            anyhow::Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    };
    let (wt, auto) = tokio::join!(run("webtransport"), run("auto"));
    let (code, err) = wt?;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("connecting to https://127.0.0.1:1/v1 over WebTransport: "),
        "{err}"
    );
    let (code, err) = auto?;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "connecting to https://127.0.0.1:1/v1 over WebTransport, then \
             ws://127.0.0.1:1/v1/ws over WebSocket: "
        ),
        "{err}"
    );
    Ok(())
}

/// F9: every argument of `pub`, `serve` and `token` has a description in `--help`.
#[test]
fn every_argument_has_a_description() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (command, arg) in [
        ("pub", "<ROOM>"),
        ("serve", "--key <KEY>"),
        ("token", "--tenant <TENANT>"),
        ("token", "--user <USER>"),
    ] {
        let out = quiver_command(dir.path())?
            .args([command, "--help"])
            .output()?;
        let help = String::from_utf8_lossy(&out.stdout);
        let after = help
            .split_once(&format!("  {arg}"))
            .with_context(|| format!("{command}: no {arg} in {help}"))?
            .1;
        // The description: what follows the name, up to the next argument.
        let description = after
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .split("\n  -")
            .next()
            .unwrap_or_default()
            .trim();
        assert!(
            description.len() > 10,
            "{command} {arg}: no description in {help}"
        );
    }
    Ok(())
}

/// F7: acknowledgements lost with a server that died, then another error ending the run (the
/// publishes waiting for a reconnect to the one `--url` time out): the error still says how
/// many messages were in doubt. It said only `... (after N acknowledged): timed out`.
#[tokio::test]
async fn pub_says_what_was_in_doubt_whatever_ends_the_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = quiver_tests::process::QuiverProcess::start(dir.path(), None, &[])?;
    let token = full_token("acme", "cli");
    let url = a.url();
    let out = pub_while_its_server_dies(
        dir.path(),
        &mut a,
        &url,
        &token,
        &["d.x", "m{seq}", "--count", "100000", "--rate", "50"],
        Duration::from_secs(90),
    )
    .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("may or may not have been published"),
        "the in-doubt count is not in the error: {err}"
    );
    Ok(())
}
