//! `quiver config` and `quiver token`, run as the operator runs them: the built binary, its exit
//! code, stdout and stderr.

use std::path::Path;
use std::process::Output;

use anyhow::Result;
use quiver_server::auth::{sign_hs256, unix_now, Checks, Claims, Verifier};
use quiver_server::Config;
use quiver_tests::process::quiver_command;

/// Runs `quiver ARGS` in `dir` with the given environment.
fn quiver(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = quiver_command(dir)?;
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit status, stdout, stderr.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String, String)> {
    let out = quiver(dir, args, env)?;
    Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
}

/// Runs `quiver ARGS`, which must fail with every needle on stderr; returns stderr.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> Result<String> {
    let (ok, out, err) = run(dir, args, env)?;
    assert!(!ok, "{args:?} succeeded: {out}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: no {needle:?} in {err}");
    }
    Ok(err)
}

/// `quiver serve ARGS` on loopback, which must refuse to start (exit non-zero within 30 s)
/// with every needle on stderr; returns stderr.
fn serve_refused(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    needles: &[&str],
) -> Result<String> {
    let mut cmd = quiver_command(dir)?;
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--no-demo",
    ])
    .args(args)
    .envs(env.iter().copied());
    let (ok, err) = quiver_tests::process::refusal(cmd, std::time::Duration::from_secs(30))?;
    assert!(!ok, "serve {args:?}: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "serve {args:?}: no {needle:?} in {err}"
        );
    }
    Ok(err)
}

const GOOD_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes";

#[test]
fn config_init_prints_the_defaults_and_passes_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ok, init, _) = run(dir.path(), &["config", "init"], &[])?;
    assert!(ok);
    // Annotated: every section explained.
    assert!(
        init.lines().filter(|l| l.starts_with('#')).count() > 50,
        "{init}"
    );
    let file = dir.path().join("quiver.toml");
    std::fs::write(&file, &init)?;
    let (ok, out, err) = run(dir.path(), &["config", "check", "quiver.toml"], &[])?;
    assert!(ok, "{err}");
    assert!(out.starts_with("configuration OK"), "{out}");
    assert!(out.contains("development mode"), "{out}");
    // Exactly the defaults, value for value.
    let loaded = Config::load(Some(&file)).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        serde_json::to_value(&loaded)?,
        serde_json::to_value(Config::default())?
    );
    Ok(())
}

/// A reader that stops reading (`quiver config init | head -3`) ends `config` and `token`
/// quietly, with success: `println!` panicked on the broken pipe (outside audit 24).
#[test]
fn printing_into_a_closed_pipe_is_not_a_panic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for args in [
        &["config", "init"][..],
        &["config", "check"],
        &[
            "token",
            "--tenant",
            "acme",
            "--user",
            "ada",
            "--subscribe",
            "chat.>",
            "--jwt-secret",
            GOOD_SECRET,
        ],
    ] {
        // The read end is closed before the command starts: its first write fails (EPIPE).
        let (reader, writer) = std::io::pipe()?;
        drop(reader);
        let mut cmd = quiver_command(dir.path())?;
        let out = cmd
            .args(args)
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::piped())
            .output()?;
        let err = text(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    Ok(())
}

#[test]
fn config_check_names_the_key_as_written() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("typo.toml"), "[limits]\nmax_fram = 3\n")?;
    let err = refused(
        d,
        &["config", "check", "typo.toml"],
        &[],
        &["limits.max_fram (in typo.toml)"],
    )?;
    assert!(err.contains("did you mean `max_frame`"), "{err}");
    assert!(!err.contains("default."), "{err}");

    std::fs::write(d.join("top.toml"), "lisen = \"[::]:443\"\n")?;
    let (ok, _, err) = run(d, &["config", "check", "top.toml"], &[])?;
    assert!(!ok);
    assert!(
        err.contains("lisen (in top.toml): unknown key; did you mean `listen`?"),
        "{err}"
    );

    // An environment variable is named as the variable, and its value is not echoed.
    let err = refused(
        d,
        &["config", "check"],
        &[("QUIVER_LIMITS__MAX_FRAME", "sixty-four-k")],
        &["QUIVER_LIMITS__MAX_FRAME: expected u32"],
    )?;
    assert!(!err.contains("sixty-four-k"), "{err}");

    // A missing file is an error, not the defaults.
    refused(
        d,
        &["config", "check", "nowhere.toml"],
        &[],
        &["nowhere.toml"],
    )?;
    Ok(())
}

#[test]
fn config_check_merges_file_environment_and_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // The file alone is invalid (the payload does not fit the default frame); the environment
    // raises the frame size, so together they are valid.
    std::fs::write(d.join("q.toml"), "[limits]\nmax_payload = 100000\n")?;
    refused(
        d,
        &["config", "check", "q.toml"],
        &[],
        &["limits.max_payload"],
    )?;
    let (ok, _, err) = run(
        d,
        &["config", "check", "q.toml"],
        &[("QUIVER_LIMITS__MAX_FRAME", "200000")],
    )?;
    assert!(ok, "{err}");

    // [nats] without a URL needs --nats; the flag completes it.
    std::fs::write(d.join("n.toml"), "[nats]\nstorage = \"file\"\n")?;
    refused(d, &["config", "check", "n.toml"], &[], &["nats.url"])?;
    let (ok, out, err) = run(
        d,
        &[
            "config",
            "check",
            "n.toml",
            "--nats",
            "nats://10.0.0.1:4222",
        ],
        &[],
    )?;
    assert!(ok, "{err}");
    assert!(out.contains("broker: NATS nats://10.0.0.1:4222"), "{out}");
    assert!(out.contains("calls and hooks: NATS requests"), "{out}");
    // `rpc.url` is the backend with NATS too (outside audit 58, F1), and check says so.
    std::fs::write(
        d.join("nr.toml"),
        "[nats]\nurl = \"nats://10.0.0.1:4222\"\n[rpc]\nurl = \"http://10.0.0.2:9000/quiver\"\n",
    )?;
    let (ok, out, err) = run(d, &["config", "check", "nr.toml"], &[])?;
    assert!(ok, "{err}");
    assert!(
        out.contains("calls and hooks: HTTP POST to http://10.0.0.2:9000/quiver"),
        "{out}"
    );

    // Production keys are checked as the server would at start: a short secret from a flag,
    // an unreadable secret file, a missing certificate.
    refused(
        d,
        &["config", "check", "--jwt-secret", "short"],
        &[],
        &["auth.jwt_secret", "at least 32"],
    )?;
    refused(
        d,
        &["config", "check", "--jwt-secret-file", "missing-secret"],
        &[],
        &["auth.jwt_secret_file", "missing-secret"],
    )?;
    refused(
        d,
        &["config", "check"],
        &[("QUIVER_JWT_SECRET", GOOD_SECRET)],
        &["no certificate"],
    )?;
    let (ok, out, err) = run(
        d,
        &["config", "check", "--self-signed"],
        &[("QUIVER_JWT_SECRET", GOOD_SECRET)],
    )?;
    assert!(ok, "{err}");
    assert!(
        out.contains("HS256 secret from auth.jwt_secret (QUIVER_JWT_SECRET)"),
        "{out}"
    );
    assert!(!out.contains(GOOD_SECRET) && !err.contains(GOOD_SECRET));
    // Named by where it came from (audit 39: always `auth.jwt_secret`): a flag over the
    // environment, the environment over the file.
    std::fs::write(
        d.join("s.toml"),
        format!("[auth]\njwt_secret = \"{GOOD_SECRET}\"\n"),
    )?;
    for (args, env, origin) in [
        (
            &[
                "config",
                "check",
                "--self-signed",
                "--jwt-secret",
                GOOD_SECRET,
            ][..],
            &[("QUIVER_JWT_SECRET", GOOD_SECRET)][..],
            "--jwt-secret",
        ),
        (
            &["config", "check", "--self-signed", "s.toml"][..],
            &[][..],
            "the configuration file",
        ),
        (
            &["config", "check", "--self-signed", "s.toml"][..],
            &[("quiver_auth__jwt_secret", GOOD_SECRET)][..],
            "quiver_auth__jwt_secret",
        ),
    ] {
        let (ok, out, err) = run(d, args, env)?;
        assert!(ok, "{err}");
        let want = format!("HS256 secret from auth.jwt_secret ({origin})");
        assert!(out.contains(&want), "{args:?} {env:?}: {out}");
    }
    Ok(())
}

#[test]
fn config_check_warns_about_unknown_quiver_variables() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let env = [
        ("QUIVER_LIMTS__MAX_FRAME", "1"),
        ("QUIVER_TOKEN", "not config"),
    ];
    let (ok, _, err) = run(d, &["config", "check"], &env)?;
    assert!(ok, "a warning is not an error: {err}");
    assert!(
        err.contains("QUIVER_LIMTS__MAX_FRAME is not a configuration key and is ignored; did you mean QUIVER_LIMITS__MAX_FRAME?"),
        "{err}"
    );
    assert!(!err.contains("QUIVER_TOKEN"), "{err}");
    refused(
        d,
        &["config", "check", "--deny-warnings"],
        &env,
        &["--deny-warnings"],
    )?;
    // A misspelt key below a known section is an error, with the variable's name.
    let (ok, _, err) = run(d, &["config", "check"], &[("QUIVER_LIMITS__MAX_FRAM", "1")])?;
    assert!(!ok);
    assert!(
        err.contains(
            "QUIVER_LIMITS__MAX_FRAM: unknown key; did you mean QUIVER_LIMITS__MAX_FRAME?"
        ),
        "{err}"
    );
    Ok(())
}

fn verifier(secret: &str) -> Result<Verifier> {
    Ok(Verifier::hs256(secret.as_bytes(), &Checks::default())?)
}

/// `pub` and `sub` without `--token` sign with the development secret `quiver serve` made; where
/// there is none they say so and create nothing. They created a secret of their own, so their
/// tokens were refused as "bad signature" by a server that had another (outside audit 58, F2).
#[test]
fn pub_and_sub_never_create_a_development_secret() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for command in ["pub", "sub"] {
        let mut args = vec![
            command,
            "--transport",
            "websocket",
            "--ws-url",
            "ws://127.0.0.1:9/v1/ws",
            "chat.lobby",
        ];
        if command == "pub" {
            args.push("hello");
        }
        let (ok, out, err) = run(d, &args, &[])?;
        assert!(!ok, "{command}: {out}");
        assert!(
            err.contains("no --token given and no development secret at certs/dev-jwt-secret"),
            "{command}: {err}"
        );
        assert!(!d.join("certs").exists(), "{command} created certs/");
    }
    Ok(())
}

/// Every configuration or certificate error names the file it is about (outside audit 55, I2:
/// "No such file or directory" and "no private key section found" alone).
#[test]
fn errors_name_their_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (ok, _, err) = run(
        d,
        &[
            "token",
            "--config",
            "missing.toml",
            "--tenant",
            "a",
            "--user",
            "b",
        ],
        &[],
    )?;
    assert!(!ok);
    assert!(
        err.contains("configuration (missing.toml, environment)"),
        "{err}"
    );
    // A certificate given as the key: no key in it.
    let (ok, _, err) = run(d, &["cert", "--out", "tls"], &[])?;
    assert!(ok, "{err}");
    std::fs::write(d.join("secret"), GOOD_SECRET)?;
    let (ok, _, err) = run(
        d,
        &[
            "config",
            "check",
            "--cert",
            "tls/dev-cert.pem",
            "--key",
            "tls/dev-cert.pem",
            "--jwt-secret-file",
            "secret",
        ],
        &[],
    )?;
    assert!(!ok);
    assert!(err.contains("tls/dev-cert.pem"), "{err}");
    Ok(())
}

/// A certificate directory made ready by one user and only readable by the server's (a
/// read-only mount, say) is used as it is: the lock the generated files are written under is
/// taken only where it can be (outside audit 62: `writing certs/dev.lock: Permission denied`
/// refused such a directory). Runs `quiver` as `nobody`, so it needs root (which CI has).
#[test]
fn a_read_only_certificate_directory_is_used_as_it_is() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let uid = std::process::Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: running quiver as nobody needs root");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    // A copy nobody may run wherever the build is (a checkout under /root is not).
    let binary = d.join("quiver");
    std::fs::copy(quiver_tests::process::binary()?, &binary)?;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))?;
    let reachable = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "test", "-x"])
        .arg(&binary)
        .status()
        .is_ok_and(|s| s.success());
    if !reachable {
        eprintln!(
            "skipped: nobody cannot reach {} (or no runuser)",
            binary.display()
        );
        return Ok(());
    }
    let (ok, made, err) = run(d, &["cert", "--out", "certs"], &[])?;
    assert!(ok, "{err}");
    let certs = d.join("certs");
    for keep_lock in [true, false] {
        if !keep_lock {
            std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755))?;
            std::fs::remove_file(certs.join("dev.lock"))?;
        }
        for entry in std::fs::read_dir(&certs)? {
            std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o444))?;
        }
        std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o555))?;
        let out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&binary)
            .args(["cert", "--out"])
            .arg(&certs)
            .current_dir(d)
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "lock file kept: {keep_lock}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same certificate, not a new one.
        let hash = |text: &str| {
            text.split_whitespace()
                .find(|w| w.len() == 64)
                .map(str::to_owned)
        };
        assert_eq!(hash(&said), hash(&made), "{said} / {made}");
    }
    Ok(())
}

/// A token signed for more than a year is said to be long-lived, and whether anything but a new
/// key can end it (outside audit 55, I5: 2.7 million years passed without a word); `quiver cert`
/// takes `--cert-dir` as `serve` does (I4).
#[test]
fn long_lived_tokens_are_warned_about_and_cert_takes_cert_dir() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("secret"), GOOD_SECRET)?;
    let sign = |ttl: &str, jti: Option<&str>| {
        let mut args = vec![
            "token",
            "--jwt-secret-file",
            "secret",
            "--tenant",
            "acme",
            "--user",
            "u",
            "--subscribe",
            "chat.>",
            "--ttl",
            ttl,
        ];
        if let Some(jti) = jti {
            args.extend(["--jti", jti]);
        }
        run(d, &args, &[])
    };
    let (ok, _, err) = sign("1h", None)?;
    assert!(ok && !err.contains("warning"), "{err}");
    let (ok, _, err) = sign("400d", None)?;
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: this token is valid for") && err.contains("cannot be revoked"),
        "{err}"
    );
    let (ok, _, err) = sign("1000000000d", Some("j1"))?;
    assert!(ok, "{err}");
    assert!(err.contains("only revoking its jti"), "{err}");
    let (ok, out, err) = run(d, &["cert", "--cert-dir", "tls"], &[])?;
    assert!(ok, "{err}");
    assert!(d.join("tls/dev-cert.pem").exists(), "{out}");
    Ok(())
}

#[test]
fn token_signs_what_the_server_accepts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("secret"), format!("{GOOD_SECRET}\n"))?;
    let (ok, out, err) = run(
        d,
        &[
            "token",
            "--tenant",
            "acme",
            "--user",
            "ada",
            "--subscribe",
            "chat.>",
            "--publish",
            "chat.lobby",
            "--call",
            "order.*",
            "--ttl",
            "10m",
            "--jwt-secret-file",
            "secret",
            "--jti",
            "t-1",
        ],
        &[],
    )?;
    assert!(ok, "{err}");
    let token = out.trim();
    let grant = verifier(GOOD_SECRET)?.verify(token)?;
    assert_eq!(
        (grant.user.as_str(), grant.tenant.as_str()),
        ("ada", "acme")
    );
    assert_eq!(grant.jti.as_deref(), Some("t-1"));
    assert!(grant.expires_at > unix_now() + 500 && grant.expires_at <= unix_now() + 600);
    let room = quiver_proto::RoomName::parse("chat.lobby")?;
    assert!(grant.may_subscribe(&room) && grant.may_publish(&room));
    assert!(!grant.may_publish(&quiver_proto::RoomName::parse("chat.other")?));

    // The same secret from the environment, and --check agrees.
    let (ok, out, err) = run(
        d,
        &["token", "--check", token],
        &[("QUIVER_JWT_SECRET_FILE", "secret")],
    )?;
    assert!(ok, "{err}");
    assert!(out.starts_with("valid: user \"ada\", tenant acme"), "{out}");
    // Every claim that decides a command, and the id revocation acts on (outside audit 58, F5:
    // `call` and `jti` were not shown).
    assert!(
        out.contains(
            "\n  subscribe: chat.>\n  publish: chat.lobby\n  call: order.*\n  jti: \"t-1\"\n"
        ),
        "{out}"
    );
    Ok(())
}

#[test]
fn token_refuses_what_the_server_would_refuse() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let sign = |extra: &[&str]| -> Result<(bool, String, String)> {
        let mut args = vec!["token", "--jwt-secret", GOOD_SECRET];
        args.extend_from_slice(extra);
        run(d, &args, &[])
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["--tenant", "ac me", "--user", "u", "--subscribe", "a"],
            "tenant",
        ),
        (
            &["--tenant", "acme", "--user", "u", "--subscribe", "a..b"],
            "subscribe",
        ),
        (
            &["--tenant", "acme", "--user", "u", "--publish", "a.>.b"],
            "publish",
        ),
        (
            &["--tenant", "acme", "--user", "", "--subscribe", "a"],
            "sub",
        ),
        (&["--tenant", "acme", "--user", "u"], "allows nothing"),
        (
            &[
                "--tenant",
                "acme",
                "--user",
                "u",
                "--subscribe",
                "a",
                "--ttl",
                "0s",
            ],
            "--ttl",
        ),
    ];
    for (args, needle) in cases {
        let (ok, out, err) = sign(args)?;
        assert!(!ok, "{args:?} signed: {out}");
        assert!(out.is_empty(), "{args:?} printed a token");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A secret the server would refuse is not used to sign.
    let (ok, out, err) = run(
        d,
        &[
            "token",
            "--jwt-secret",
            "short",
            "--tenant",
            "acme",
            "--user",
            "u",
            "--subscribe",
            "a",
        ],
        &[],
    )?;
    assert!(!ok && out.is_empty());
    assert!(err.contains("at least 32"), "{err}");
    Ok(())
}

#[test]
fn token_never_creates_a_secret() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let args = [
        "token",
        "--tenant",
        "demo",
        "--user",
        "u",
        "--subscribe",
        ">",
    ];
    let (ok, out, err) = run(d, &args, &[])?;
    assert!(!ok && out.is_empty());
    // It says where it looked.
    assert!(err.contains("certs/dev-jwt-secret"), "{err}");
    assert!(err.contains("QUIVER_JWT_SECRET_FILE"), "{err}");
    assert!(err.contains("never creates a secret"), "{err}");
    assert!(!d.join("certs").exists(), "quiver token created files");
    // Once the server made its development secret, tokens are signed with it.
    std::fs::create_dir(d.join("certs"))?;
    std::fs::write(d.join("certs/dev-jwt-secret"), GOOD_SECRET)?;
    let (ok, out, err) = run(d, &args, &[])?;
    assert!(ok, "{err}");
    assert_eq!(verifier(GOOD_SECRET)?.verify(out.trim())?.user, "u");
    Ok(())
}

#[test]
fn token_check_says_why_a_token_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let claims = |exp| Claims {
        sub: "ada".into(),
        tenant: "acme".into(),
        exp,
        subscribe: vec![">".into()],
        publish: vec![],
    };
    let env = [("QUIVER_JWT_SECRET", GOOD_SECRET)];
    let expired = sign_hs256(GOOD_SECRET.as_bytes(), &claims(unix_now() - 3600))?;
    refused(
        d,
        &["token", "--check", &expired],
        &env,
        &["would refuse this token: token expired (1h"],
    )?;
    let other = sign_hs256(
        b"another-secret-of-at-least-32-bytes!",
        &claims(unix_now() + 60),
    )?;
    refused(d, &["token", "--check", &other], &env, &["bad signature"])?;
    refused(d, &["token", "--check", "not.a.jwt"], &env, &["malformed"])?;
    // The configuration's audience is checked, and signing adds it.
    std::fs::write(d.join("aud.toml"), "[auth]\naudience = \"quiver\"\n")?;
    let good = sign_hs256(GOOD_SECRET.as_bytes(), &claims(unix_now() + 60))?;
    refused(
        d,
        &["token", "--config", "aud.toml", "--check", &good],
        &env,
        &["aud"],
    )?;
    let (ok, out, err) = run(
        d,
        &[
            "token",
            "--config",
            "aud.toml",
            "--tenant",
            "acme",
            "--user",
            "u",
            "--subscribe",
            "a",
        ],
        &env,
    )?;
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        d,
        &["token", "--config", "aud.toml", "--check", out.trim()],
        &env,
    )?;
    assert!(ok, "{err}");
    Ok(())
}

/// `--jwt-secret(-file)` replaces the configuration's key and nothing else: the configured
/// `aud`, `iss` (file or `QUIVER_AUTH__*`) still go into a signed token and still decide
/// `--check` (outside audit 111, F4: the whole `[auth]` was reset, so `token` signed what the
/// server refuses and `--check` passed it).
#[test]
fn token_with_a_secret_flag_keeps_the_configured_audience_and_issuer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("secret"), format!("{GOOD_SECRET}\n"))?;
    std::fs::write(
        d.join("c.toml"),
        "[auth]\njwt_secret_file = \"secret\"\naudience = \"aud-x\"\nissuer = \"iss-y\"\n",
    )?;
    let checks = Checks {
        audience: Some("aud-x".into()),
        issuer: Some("iss-y".into()),
        ..Checks::default()
    };
    let sign = ["--tenant", "acme", "--user", "u", "--publish", ">"];
    for key in [
        &["--jwt-secret-file", "secret"][..],
        &["--jwt-secret", GOOD_SECRET],
    ] {
        let (ok, out, err) = run(
            d,
            &[&["token", "--config", "c.toml"][..], key, &sign[..]].concat(),
            &[],
        )?;
        assert!(ok, "{key:?}: {err}");
        // The server running c.toml accepts it.
        Verifier::hs256(GOOD_SECRET.as_bytes(), &checks)?.verify(out.trim())?;
    }
    // A token without them is one that server refuses, and --check says so.
    let bare = sign_hs256(
        GOOD_SECRET.as_bytes(),
        &Claims {
            sub: "u".into(),
            tenant: "acme".into(),
            exp: unix_now() + 600,
            subscribe: vec![">".into()],
            publish: vec![],
        },
    )?;
    // Which missing claim is named first varies (the verifier checks a set of them).
    let err = refused(
        d,
        &[
            "token",
            "--config",
            "c.toml",
            "--jwt-secret-file",
            "secret",
            "--check",
            &bare,
        ],
        &[],
        &["would refuse this token", "required"],
    )?;
    assert!(
        err.contains("claim aud") || err.contains("claim iss"),
        "{err}"
    );
    // From the environment, too.
    let (ok, out, err) = run(
        d,
        &[&["token", "--jwt-secret-file", "secret"][..], &sign[..]].concat(),
        &[("QUIVER_AUTH__AUDIENCE", "aud-env")],
    )?;
    assert!(ok, "{err}");
    let env_checks = Checks {
        audience: Some("aud-env".into()),
        ..Checks::default()
    };
    Verifier::hs256(GOOD_SECRET.as_bytes(), &env_checks)?.verify(out.trim())?;
    Ok(())
}

#[test]
fn token_signs_es256_and_eddsa_with_a_private_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for (alg, rcgen_alg) in [
        ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("EdDSA", &rcgen::PKCS_ED25519),
    ] {
        let pair = rcgen::KeyPair::generate_for(rcgen_alg)?;
        std::fs::write(d.join("private.pem"), pair.serialize_pem())?;
        std::fs::write(d.join("public.pem"), pair.public_key_pem())?;
        std::fs::write(
            d.join("pk.toml"),
            format!("[auth]\npublic_key = \"public.pem\"\nalgorithm = \"{alg}\"\n"),
        )?;
        let sign = [
            "token",
            "--config",
            "pk.toml",
            "--private-key",
            "private.pem",
            "--algorithm",
            alg,
            "--tenant",
            "acme",
            "--user",
            "ada",
            "--subscribe",
            "a.>",
        ];
        let (ok, out, err) = run(d, &sign, &[])?;
        assert!(ok, "{alg}: {err}");
        let token = out.trim().to_owned();
        let checks = Checks::default();
        let grant = Verifier::public_key(&d.join("public.pem"), alg, &checks)?.verify(&token)?;
        assert_eq!(grant.user, "ada");
        let (ok, out, err) = run(d, &["token", "--config", "pk.toml", "--check", &token], &[])?;
        assert!(ok, "{alg}: {err}");
        assert!(out.contains("public key from auth.public_key"), "{out}");
        // Without a private key, a public-key configuration cannot sign: it says so.
        let (ok, _, err) = run(
            d,
            &sign[..3]
                .iter()
                .chain(&sign[7..])
                .copied()
                .collect::<Vec<_>>(),
            &[],
        )?;
        assert!(!ok);
        assert!(err.contains("cannot sign"), "{alg}: {err}");
        // A private key the configuration's public key does not match is refused.
        let stranger = rcgen::KeyPair::generate_for(rcgen_alg)?;
        std::fs::write(d.join("private.pem"), stranger.serialize_pem())?;
        let (ok, out, err) = run(d, &sign, &[])?;
        assert!(!ok && out.is_empty(), "{alg}: a mismatched key signed");
        assert!(err.contains("bad signature"), "{alg}: {err}");
    }
    Ok(())
}

/// deploy/compose.yaml configures Quiver through `QUIVER_*` variables only: exactly those, with
/// its file paths pointed at real files here, pass `config check` without a warning.
#[test]
fn the_compose_files_environment_passes_config_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let compose_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose.yaml");
    let compose = std::fs::read_to_string(compose_path)?;
    // A certificate pair and a secret stand in for the mounted ones.
    let (ok, _, err) = run(d, &["cert", "--out", "tls"], &[])?;
    assert!(ok, "{err}");
    std::fs::write(d.join("jwt-secret"), GOOD_SECRET)?;
    let local = |value: &str| -> String {
        match value {
            "/etc/quiver/tls/fullchain.pem" => d.join("tls/dev-cert.pem"),
            "/etc/quiver/tls/privkey.pem" => d.join("tls/dev-key.pem"),
            "/run/secrets/quiver-jwt" => d.join("jwt-secret"),
            other => return other.to_owned(),
        }
        .display()
        .to_string()
    };
    let env: Vec<(String, String)> = compose
        .lines()
        .filter_map(|line| line.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("QUIVER_"))
        .map(|(k, v)| {
            (
                k.to_owned(),
                local(v.trim().trim_matches(|c| c == '"' || c == '\'')),
            )
        })
        .collect();
    assert!(env.len() >= 5, "no QUIVER_ variables found in compose.yaml");
    assert!(
        env.iter()
            .any(|(k, v)| k == "QUIVER_CERT" && v.starts_with(&*d.to_string_lossy())),
        "the certificate path was not replaced: {env:?}"
    );
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (ok, out, err) = run(d, &["config", "check", "--deny-warnings"], &env_refs)?;
    assert!(ok, "{err}");
    assert!(
        out.contains("HS256 secret from auth.jwt_secret_file"),
        "{out}"
    );
    assert!(out.contains("broker: NATS nats://nats:4222"), "{out}");
    assert!(out.contains("WebTransport: udp [::]:4433"), "{out}");
    // The TCP listener a real certificate opens (outside audit 48, F5: not listed).
    assert!(out.contains("tcp [::]:4433"), "{out}");
    Ok(())
}

/// Audit 39: a misspelt secret variable (`QUIVER_JWT_SECRT`) used to leave the server in
/// development mode with only a warning; now `config check` and `serve` refuse, naming the
/// variable meant, unless a key is configured some other way.
#[test]
fn a_misspelt_secret_variable_stops_development_mode() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let typo = [("QUIVER_JWT_SECRT", GOOD_SECRET)];
    let needles = [
        "QUIVER_JWT_SECRT set but configures nothing (did you mean QUIVER_JWT_SECRET?)",
        "development mode",
    ];
    let err = refused(d, &["config", "check"], &typo, &needles)?;
    assert!(!err.contains(GOOD_SECRET), "{err}");
    let err = serve_refused(d, &[], &typo, &needles)?;
    assert!(!err.contains(GOOD_SECRET), "{err}");
    // With a key given by a flag the variable is only ignored, with the same guess.
    let (ok, out, err) = run(
        d,
        &[
            "config",
            "check",
            "--self-signed",
            "--jwt-secret",
            GOOD_SECRET,
        ],
        &typo,
    )?;
    assert!(ok, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        err.contains("QUIVER_JWT_SECRT is not a configuration key and is ignored; did you mean QUIVER_JWT_SECRET?"),
        "{err}"
    );
    Ok(())
}

/// `config check` refuses a NATS URL the broker could not connect to, as `serve` does
/// (audit 39: `nats://u:p@[bad` passed the check), without printing its credentials.
#[test]
fn config_check_refuses_a_nats_url_serve_would() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for url in ["nats://u:NATSPASSWORD@[bad", "nats://a:4222,http://b"] {
        let err = refused(
            d,
            &["config", "check", "--nats", url],
            &[],
            &["nats.url: URL ", "is not a URL"],
        )?;
        assert!(!err.contains("NATSPASSWORD"), "{err}");
        let err = serve_refused(d, &["--nats", url], &[], &["is not a URL"])?;
        assert!(!err.contains("NATSPASSWORD"), "{err}");
    }
    Ok(())
}

/// `quiver serve` logs the same warning as `config check` for a misspelt variable, and starts.
#[test]
fn serve_warns_about_unknown_quiver_variables() -> Result<()> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir()?;
    let mut child = quiver_tests::process::serve_command(dir.path())?
        .env("QUIVER_TIMEOUTS_IDLE", "5s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let mut warned = false;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if line.contains("QUIVER_TIMEOUTS_IDLE is not a configuration key")
            && line.contains("did you mean QUIVER_TIMEOUTS__IDLE?")
        {
            warned = true;
        }
        // The server is up once it prints its addresses.
        if line.contains("quiver: WebTransport on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning before the server was up");
    Ok(())
}

/// A key set, from a file and from a URL (served here on loopback, as an identity provider
/// would): `--kid` names the key, and a token without one is refused as the server would.
#[tokio::test(flavor = "multi_thread")]
async fn token_signs_and_checks_against_a_key_set() -> Result<()> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_owned();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    std::fs::write(d.join("private.pem"), pair.serialize_pem())?;
    // Uncompressed point: 0x04, x, y.
    let raw = pair.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]),
        "y": b64(&raw[33..65]), "kid": "k1", "use": "sig", "alg": "ES256"}]});
    std::fs::write(d.join("jwks.json"), jwks.to_string())?;
    std::fs::write(d.join("file.toml"), "[auth]\njwks_file = \"jwks.json\"\n")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://127.0.0.1:{}/jwks.json",
        listener.local_addr()?.port()
    );
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    std::fs::write(
        d.join("url.toml"),
        format!("[auth]\njwks_url = \"{url}\"\n"),
    )?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        for config in ["file.toml", "url.toml"] {
            let sign = |extra: &[&str]| {
                let mut args = vec![
                    "token",
                    "--config",
                    config,
                    "--private-key",
                    "private.pem",
                    "--algorithm",
                    "ES256",
                    "--tenant",
                    "acme",
                    "--user",
                    "ada",
                    "--subscribe",
                    "a",
                ];
                args.extend_from_slice(extra);
                run(&d, &args, &[])
            };
            let (ok, out, err) = sign(&["--kid", "k1"])?;
            assert!(ok, "{config}: {err}");
            let (ok, out, err) = run(
                &d,
                &["token", "--config", config, "--check", out.trim()],
                &[],
            )?;
            assert!(ok, "{config}: {err}");
            assert!(out.contains("public key from auth.jwks_"), "{out}");
            let (ok, out, err) = sign(&[])?;
            assert!(!ok && out.is_empty(), "{config}: signed without a kid");
            assert!(err.contains("no kid"), "{config}: {err}");
            let (ok, _, err) = sign(&["--kid", "k2"])?;
            assert!(!ok);
            assert!(err.contains("unknown kid"), "{config}: {err}");
        }
        Ok(())
    })
    .await?
}

/// Mistakes that used to load silently (the first of two entries winning, a hook that asks
/// nothing or no one, a secret that cannot be sent, an absurd timeout) fail `config check`
/// naming the key as written, and never print an API key.
#[test]
fn config_check_refuses_mistakes_that_would_load_silently() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    const KEY: &str = "cli-api-key-0123456789abcdef";
    const URL: &str = "[rpc]\nurl = \"http://127.0.0.1:9/quiver\"\n";
    let hook =
        |namespace: &str, on: &str| format!("[[rpc.hooks]]\nnamespace = \"{namespace}\"\n{on}\n");
    let cases: Vec<(String, &str)> =
        vec![
        (
            format!(
                "[[api.keys]]\nkey = \"{KEY}\"\n[[api.keys]]\nkey = \"{KEY}\"\ntenant = \"acme\"\n"
            ),
            "api.keys[1] repeats the key of api.keys[0]",
        ),
        (
            "[limits]\nmax_frame = 16777217\nsession_queue_bytes = 67108864\n".into(),
            "limits.max_frame (16777217) must be at most 16777216 (16 MiB)",
        ),
        (
            "[[api.keys]]\nkey = \"short\"\n".into(),
            "api.keys[0].key is too short: an API key must be at least 16 bytes",
        ),
        ("[[api.keys]]\nkey = \"\"\n".into(), "api.keys[0].key is empty"),
        (
            format!("[[api.keys]]\nkey = \"{KEY}\"\ntenant = \"\"\n"),
            "api.keys[0].tenant is empty",
        ),
        (
            format!("[[api.keys]]\nkey = \"{KEY}\"\ntenant = \"~other\"\n"),
            "api.keys[0].tenant is not a tenant id",
        ),
        (
            format!("{URL}http_secret = \"backend-secret\\r\\n\"\n"),
            "rpc.http_secret holds a character a request header cannot carry",
        ),
        (
            format!("{URL}http_secret = \"backend-sécret-é\"\n"),
            "rpc.http_secret holds a character a request header cannot carry",
        ),
        (
            "[[namespaces]]\nname = \"chat\"\n[[namespaces]]\nname = \"chat\"\npresence = true\n"
                .into(),
            "namespaces[1]: \"chat\" is already configured by namespaces[0]",
        ),
        (
            format!("{URL}{}", hook("order", "fail_open = true")),
            "rpc.hooks[0] (\"order\") sets neither subscribe nor publish",
        ),
        (
            hook("order", "subscribe = true"),
            "rpc.hooks need a backend",
        ),
        (
            "[timeouts]\ndrain = \"0s\"\n".into(),
            "timeouts.drain must be positive",
        ),
        (
            "[timeouts]\ndrain = \"100000h\"\n".into(),
            "timeouts.drain (360000000s) is over the maximum of 3600s",
        ),
        (
            "[rpc]\nmax_timeout = \"1000d\"\n".into(),
            "rpc.max_timeout (86400000s) is over the maximum of 300s",
        ),
        // 0 reads as "off" to a QUIC user; here it closed every session at once (outside
        // audit), and a server of 0 sessions answered /healthz 200 while refusing everyone.
        (
            "[timeouts]\nidle = \"0s\"\n".into(),
            "timeouts.idle must be positive",
        ),
        (
            "[timeouts]\nhello = \"0s\"\nreply = \"0s\"\n".into(),
            "timeouts.hello must be positive",
        ),
        (
            "[limits]\nmax_sessions = 0\n".into(),
            "limits.commands_per_second, max_subscriptions, subscriber_queue and max_sessions must be positive",
        ),
    ];
    for (toml, needle) in &cases {
        std::fs::write(d.join("bad.toml"), toml)?;
        let err = refused(d, &["config", "check", "bad.toml"], &[], &[needle])?;
        assert!(!err.contains(KEY), "the key is printed: {err}");
    }
    // Mistakes of several kinds in one file are all named at once, a line each, so an operator
    // mends them in one go.
    std::fs::write(
        d.join("many.toml"),
        "[limits]\nmax_frame = 100\ncommands_per_second = 0\n[timeouts]\ndrain = \"0s\"\n\
         [[api.keys]]\nkey = \"short\"\n",
    )?;
    let err = refused(
        d,
        &["config", "check", "many.toml"],
        &[],
        &[
            "\n  limits.max_frame (100) must be at least",
            "\n  limits.commands_per_second, max_subscriptions, subscriber_queue and max_sessions must be positive",
            "\n  timeouts.drain must be positive",
            "\n  api.keys[0].key is too short",
        ],
    )?;
    assert!(!err.contains("short\""), "{err}");

    // The same entries, each once and well formed, pass; so does a hook on a namespace that
    // [[namespaces]] does not list, with its backend given by the environment or --nats.
    std::fs::write(
        d.join("good.toml"),
        format!(
            "[[api.keys]]\nkey = \"{KEY}\"\n[[api.keys]]\nkey = \"{KEY}-acme\"\ntenant = \"acme\"\n\
             [[namespaces]]\nname = \"chat\"\n[timeouts]\ndrain = \"1h\"\n\
             {URL}max_timeout = \"5m\"\nhttp_secret = \"backend-secret\"\n{}",
            hook("order", "subscribe = true")
        ),
    )?;
    let (ok, out, err) = run(d, &["config", "check", "good.toml"], &[])?;
    assert!(ok, "{err}");
    assert!(out.starts_with("configuration OK"), "{out}");
    std::fs::write(d.join("hook.toml"), hook("order", "publish = true"))?;
    for (flags, env) in [
        (&["--nats", "nats://127.0.0.1:4222"][..], &[][..]),
        (
            &[][..],
            &[("QUIVER_NATS__URL", "nats://127.0.0.1:4222")][..],
        ),
    ] {
        let args: Vec<&str> = ["config", "check", "hook.toml"]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        let (ok, _, err) = run(d, &args, env)?;
        assert!(ok, "{flags:?} {env:?}: {err}");
    }
    Ok(())
}
