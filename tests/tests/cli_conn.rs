//! The flags `quiver sub`, `pub` and `call` share (cli/src/conn.rs), and `pub --rate`: where the
//! token comes from (`--token`, `--token-file`, `QUIVER_TOKEN`), where the development secret
//! and certificate are found (`--cert-dir`, `QUIVER_CERT_DIR`), and flags refused before
//! connecting. The built binary, against a real server.

use std::path::Path;
use std::process::{Output, Stdio};

use anyhow::{bail, Context, Result};
use quiver_tests::process::quiver_command;
use quiver_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `quiver SUBCOMMAND` run in `dir` against `server` over WebTransport, with no token and no
/// certificate hash: the caller says where they come from.
fn quiver_at(server: &TestServer, dir: &Path, subcommand: &str) -> Result<Command> {
    let mut cmd = Command::from(quiver_command(dir)?);
    cmd.arg(subcommand)
        .args(["--url", &server.url(), "--transport", "webtransport"])
        .kill_on_drop(true);
    Ok(cmd)
}

/// Runs `cmd` to its end within [`WAIT`].
async fn finish(mut cmd: Command) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(tokio::time::timeout(WAIT, child.wait_with_output()).await??)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A started `quiver sub`, once it says it is subscribed, and its stdout's lines.
async fn subscribed(
    mut cmd: Command,
) -> Result<(
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut err = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, err.next_line()).await {
            Ok(Ok(Some(line))) if line.contains("quiver: subscribed to") => break,
            Ok(Ok(Some(line))) => seen.push(line),
            _ => bail!("sub never subscribed; said {seen:#?}"),
        }
    }
    Ok((child, out))
}

async fn next_line(
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Result<String> {
    match tokio::time::timeout(WAIT, out.next_line()).await?? {
        Some(line) => Ok(line),
        None => bail!("quiver sub ended"),
    }
}

/// `--rate` outside what a timer can keep is a flag refused like any other, `quiver: --rate …`
/// and exit 1 before connecting; it was a panic, exit 101 (outside audit 111, F1: `1e-20`
/// overflowed `Duration`, and `1e10` made a zero pause `tokio::time::interval` refuses).
#[test]
fn pub_refuses_a_rate_out_of_range_without_panicking() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for rate in ["1e-20", "1e10", "0", "-1", "NaN", "inf"] {
        let out = quiver_command(dir.path())?
            .args([
                "pub",
                // Nothing listens there: the refusal must come first.
                "--url",
                "https://127.0.0.1:9/v1",
                "--ws-url",
                "ws://127.0.0.1:9/v1/ws",
                "--token",
                "x",
                &format!("--rate={rate}"),
                "r",
                "m",
            ])
            .output()?;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--rate {rate}: {err}");
        assert!(err.starts_with("quiver: --rate"), "--rate {rate}: {err}");
        assert!(!err.contains("panicked"), "--rate {rate}: {err}");
    }
    Ok(())
}

/// A token in argv is in `ps` for as long as `sub` runs: `--token-file` (and `QUIVER_TOKEN`)
/// keep it out, and `--token`'s help says so (outside audit 111, F6: argv and the environment
/// were the only ways, and README's example used argv).
#[tokio::test]
async fn sub_and_pub_take_the_token_from_a_file() -> Result<()> {
    let server = TestServer::start().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let hash = hex::encode(server.hash);
    let token = full_token("acme", "cli");
    // As `echo` writes it: the newline is not part of the token.
    std::fs::write(d.join("token"), format!("{token}\n"))?;

    let mut sub = quiver_at(&server, d, "sub")?;
    sub.args(["--cert-hash", &hash, "--token-file", "token", "f.x"]);
    let (_sub, mut lines) = subscribed(sub).await?;
    let mut publish = quiver_at(&server, d, "pub")?;
    publish.args([
        "--cert-hash",
        &hash,
        "--token-file",
        "token",
        "f.x",
        "from a file",
    ]);
    let out = finish(publish).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(next_line(&mut lines).await?, "from a file");

    // The flag overrides the environment, as flags do; the environment alone still works.
    let mut publish = quiver_at(&server, d, "pub")?;
    publish
        .args([
            "--cert-hash",
            &hash,
            "--token-file",
            "token",
            "f.x",
            "flag wins",
        ])
        .env("QUIVER_TOKEN", "not-a-token");
    let out = finish(publish).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(next_line(&mut lines).await?, "flag wins");
    let mut publish = quiver_at(&server, d, "pub")?;
    publish
        .args(["--cert-hash", &hash, "f.x", "from the environment"])
        .env("QUIVER_TOKEN", &token);
    let out = finish(publish).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(next_line(&mut lines).await?, "from the environment");

    // Both flags at once, an empty file and a missing one are refused, naming what is wrong.
    std::fs::write(d.join("empty"), "\n")?;
    for (args, needle) in [
        (
            &["--token", &token, "--token-file", "token"][..],
            "cannot be used with",
        ),
        (
            &["--token-file", "empty"][..],
            "--token-file empty: the token is empty",
        ),
        (
            &["--token-file", "missing"][..],
            "--token-file: reading missing",
        ),
    ] {
        let mut publish = quiver_at(&server, d, "pub")?;
        publish
            .args(["--cert-hash", &hash])
            .args(args)
            .args(["f.x", "no"]);
        let out = finish(publish).await?;
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // The help warns where the token shows, and names the other ways.
    for subcommand in ["sub", "pub", "call"] {
        let out = quiver_command(d)?.args([subcommand, "--help"]).output()?;
        let help = text(&out.stdout);
        let token_help = help
            .split("\n      --")
            .find(|entry| entry.starts_with("token <"))
            .with_context(|| format!("{subcommand}: no --token in {help}"))?;
        // As one line, however the help is wrapped.
        let token_help = token_help.split_whitespace().collect::<Vec<_>>().join(" ");
        for needle in ["`ps`", "shell history", "QUIVER_TOKEN", "--token-file"] {
            assert!(
                token_help.contains(needle),
                "{subcommand}: {needle} not in {token_help}"
            );
        }
        assert!(help.contains("--token-file <FILE>"), "{subcommand}: {help}");
    }
    Ok(())
}

/// `sub`, `pub` and `cert` read `QUIVER_CERT_DIR` as `serve` and `token` do: the development
/// secret signs and the development certificate is pinned from there, in any working directory
/// (outside audit 111, F9: they looked in `./certs` whatever the variable said, and a stale
/// `./certs` signed with the wrong secret).
#[tokio::test]
async fn sub_and_pub_find_the_development_secret_through_quiver_cert_dir() -> Result<()> {
    let server = TestServer::start().await?;
    let cert_dir = server.dir.path();
    // What `quiver serve` in development mode leaves there: its secret (this server's) and
    // its certificate (the server wrote it).
    std::fs::write(cert_dir.join("dev-jwt-secret"), SECRET)?;
    assert!(cert_dir.join("dev-cert.pem").exists());
    let elsewhere = tempfile::tempdir()?;
    let d = elsewhere.path();

    let mut sub = quiver_at(&server, d, "sub")?;
    sub.arg("chat.lobby").env("QUIVER_CERT_DIR", cert_dir);
    let (_sub, mut lines) = subscribed(sub).await?;
    let mut publish = quiver_at(&server, d, "pub")?;
    publish
        .args(["chat.lobby", "found"])
        .env("QUIVER_CERT_DIR", cert_dir);
    let out = finish(publish).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(next_line(&mut lines).await?, "found");

    // `quiver cert` prints that directory's certificate, and makes nothing where it runs.
    let out = quiver_command(d)?
        .arg("cert")
        .env("QUIVER_CERT_DIR", cert_dir)
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), hex::encode(server.hash));
    assert!(
        !d.join("certs").exists(),
        "a certs/ was made in the working directory"
    );
    Ok(())
}
