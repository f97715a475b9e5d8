//! Configuration mistakes from the operations audit (round 2) as the operator meets them:
//! `quiver config check` and `quiver serve`, the built binary, stdout and stderr.

use std::path::Path;

use anyhow::Result;
use quiver_tests::process::quiver_command;

const SECRET: &str = "SUPERSECRETVALUE_abcdefghijklmnopqrstuvwxyz_0123";

/// Exit status, stdout, stderr of `quiver ARGS` in `dir`.
fn run(dir: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = quiver_command(dir)?.args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// S1: a syntax error names file, line and column, never the line's text (a secret), from
/// `config check` and from `serve` alike.
#[test]
fn a_syntax_error_names_the_place_but_not_the_secret() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("q.toml"),
        format!("[tls]\nself_signed = true\n[api]\nkeys = [{{ key = \"{SECRET}\", tenant = \"acme\" }}\n"),
    )?;
    for args in [
        &["config", "check", "q.toml"][..],
        &["serve", "--config", "q.toml", "--log-format", "json"][..],
    ] {
        let (ok, out, err) = run(dir.path(), args)?;
        assert!(!ok, "{args:?}: {out}");
        assert!(
            !err.contains(SECRET) && !out.contains(SECRET),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("q.toml: TOML syntax error at line 4, column"),
            "{args:?}: {err}"
        );
        assert!(err.contains("expected `]`"), "{args:?}: {err}");
    }
    Ok(())
}

/// S5: a password in the NATS URL is never printed by `config check`.
#[test]
fn config_check_never_prints_a_nats_password() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ok, out, err) = run(
        dir.path(),
        &[
            "config",
            "check",
            "--nats",
            "nats://alice:NATSPASSWORDX@127.0.0.1:28422",
        ],
    )?;
    assert!(ok, "{err}");
    assert!(
        !out.contains("NATSPASSWORDX") && !err.contains("NATSPASSWORDX"),
        "{out}{err}"
    );
    assert!(
        out.contains("broker: NATS nats://***@127.0.0.1:28422"),
        "{out}"
    );
    Ok(())
}

/// S6 and S10 through the command line: `https` without cert/key, and `http` = `https`.
#[test]
fn https_mistakes_are_refused_by_config_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("q.toml"),
        "https = \"127.0.0.1:28444\"\n[tls]\nself_signed = true\n",
    )?;
    let (ok, out, err) = run(dir.path(), &["config", "check", "q.toml"])?;
    assert!(!ok, "{out}");
    assert!(
        err.contains("https (127.0.0.1:28444) is set without cert and key"),
        "{err}"
    );
    let (ok, out, err) = run(
        dir.path(),
        &[
            "config",
            "check",
            "q.toml",
            "--http",
            "127.0.0.1:28444",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
        ],
    )?;
    assert!(!ok, "{out}");
    assert!(
        err.contains("http (127.0.0.1:28444) and https (127.0.0.1:28444) both bind tcp port 28444"),
        "{err}"
    );
    Ok(())
}

/// S13: an expired certificate is a warning from `config check` (an error with
/// `--deny-warnings`), and `serve` warns and exports its expiry.
#[test]
fn an_expired_certificate_is_warned_about() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.path().join("old.crt"), cert.pem())?;
    std::fs::write(dir.path().join("old.key"), key.serialize_pem())?;
    // Every origin on purpose, a bound per address: the certificate is the one warning.
    std::fs::write(
        dir.path().join("q.toml"),
        format!("allowed_origins = [\"*\"]\n{PER_ADDRESS}"),
    )?;
    let args = [
        "config",
        "check",
        "q.toml",
        "--cert",
        "old.crt",
        "--key",
        "old.key",
        "--jwt-secret",
        SECRET,
    ];
    let (ok, out, err) = run(dir.path(), &args)?;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("warning: cert old.crt: the certificate expired"),
        "{err}"
    );
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    let mut strict = args.to_vec();
    strict.push("--deny-warnings");
    let (ok, _, err) = run(dir.path(), &strict)?;
    assert!(!ok, "{err}");
    Ok(())
}

/// A production server whose `allowed_origins` is empty lets a page of any site open sessions
/// with a user's token: a warning from `config check` (an error with `--deny-warnings`) and at
/// start, as `config init` says; `["*"]` is that on purpose, and development mode has no token
/// to misuse (outside audit 57, F2: no warning came).
#[test]
fn an_empty_origin_list_in_production_is_warned_about() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let production = ["config", "check", "--jwt-secret", SECRET, "--self-signed"];
    let (ok, out, err) = run(dir.path(), &production)?;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("warning: allowed_origins is empty: a page of any site"),
        "{err}"
    );
    let mut strict = production.to_vec();
    strict.push("--deny-warnings");
    let (ok, _, err) = run(dir.path(), &strict)?;
    assert!(!ok, "{err}");
    for (file, text) in [
        ("any.toml", "allowed_origins = [\"*\"]\n"),
        (
            "app.toml",
            "allowed_origins = [\"https://app.example.com\"]\n",
        ),
    ] {
        let text = format!("{text}{PER_ADDRESS}");
        std::fs::write(dir.path().join(file), text)?;
        let mut listed = vec!["config", "check", file];
        listed.extend_from_slice(&production[2..]);
        listed.push("--deny-warnings");
        let (ok, out, err) = run(dir.path(), &listed)?;
        assert!(ok, "{file}: {out}{err}");
    }
    // Development mode: nothing to warn about.
    let (ok, out, err) = run(dir.path(), &["config", "check", "--deny-warnings"])?;
    assert!(ok, "{out}{err}");
    Ok(())
}

/// What a production configuration sets to pass `--deny-warnings`: a bound per address.
const PER_ADDRESS: &str = "[quotas.per_address]\nmax_connections = 64\n";

/// A production server without `quotas.per_address.max_connections` is warned about: one
/// address's idle connections can take every TCP place, health checks' and the backend API's
/// included (outside audit 74: 264 of them locked every tenant out of new sessions).
#[test]
fn no_bound_per_address_in_production_is_warned_about() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("open.toml"), "allowed_origins = [\"*\"]\n")?;
    let production = [
        "config",
        "check",
        "open.toml",
        "--jwt-secret",
        SECRET,
        "--self-signed",
    ];
    let (ok, out, err) = run(dir.path(), &production)?;
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("warning: quotas.per_address.max_connections is 0 (no limit)"),
        "{err}"
    );
    let mut strict = production.to_vec();
    strict.push("--deny-warnings");
    let (ok, _, err) = run(dir.path(), &strict)?;
    assert!(!ok, "{err}");
    std::fs::write(
        dir.path().join("bounded.toml"),
        format!("allowed_origins = [\"*\"]\n{PER_ADDRESS}"),
    )?;
    strict[2] = "bounded.toml";
    let (ok, out, err) = run(dir.path(), &strict)?;
    assert!(ok, "{out}{err}");
    // A TCP port on loopback (behind a proxy on the same machine) is no public port.
    std::fs::write(
        dir.path().join("local.toml"),
        "allowed_origins = [\"*\"]\nlisten = \"127.0.0.1:4433\"\n",
    )?;
    strict[2] = "local.toml";
    let (ok, out, err) = run(dir.path(), &strict)?;
    assert!(ok, "{out}{err}");
    Ok(())
}

/// A start-up refusal names its reason once: `serve`'s errors carry their cause in their own
/// message, and the binary used to print the cause again after it.
#[test]
fn a_start_up_refusal_states_its_reason_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ok, out, err) = run(
        dir.path(),
        &[
            "serve",
            "--jwt-secret",
            "short",
            "--self-signed",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
    )?;
    assert!(!ok, "{out}");
    assert_eq!(err.matches("at least 32 are required").count(), 1, "{err}");
    let (ok, out, err) = run(
        dir.path(),
        &[
            "serve",
            "--cert",
            "missing.pem",
            "--key",
            "missing.pem",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
    )?;
    assert!(!ok, "{out}");
    assert!(err.contains("missing.pem"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    Ok(())
}

/// Exit status, stdout, stderr of `quiver ARGS` in `dir` with the given variables.
fn run_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String, String)> {
    let out = quiver_command(dir)?
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `serve` on free loopback ports with a certificate that does not exist: the configuration's
/// refusal comes first, and were it missing the server would still stop (naming the file)
/// rather than run and hold the test.
const SERVE: &[&str] = &[
    "serve",
    "--cert",
    "missing.pem",
    "--key",
    "missing.pem",
    "--listen",
    "127.0.0.1:0",
    "--http",
    "127.0.0.1:0",
];

/// Outside audit 116, F12: `QUIVER_CONFIG=FILE quiver serve` ran on the defaults in development
/// mode after one warning; `config check` said "configuration OK". Both refuse now.
#[test]
fn a_configuration_path_in_the_environment_stops_serve_and_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("q.toml"), "demo = false\n")?;
    for name in ["QUIVER_CONFIG", "QUIVER_CONFIG_FILE"] {
        for args in [&["config", "check"][..], SERVE] {
            let (ok, out, err) = run_env(dir.path(), args, &[(name, "q.toml")])?;
            assert!(!ok, "{name} {args:?}: {out}{err}");
            assert!(!out.contains("QUIVER_READY"), "{out}");
            assert!(!err.contains("missing.pem"), "refused first: {err}");
            assert!(
                err.contains(&format!("{name} is set")) && err.contains("use --config FILE"),
                "{name} {args:?}: {err}"
            );
        }
    }
    Ok(())
}

/// Outside audit 116, F4: with `QUIVER_JWT_SECRET` and `QUIVER_AUTH__JWT_SECRET` both set the
/// shorthand was used while `config check` and `token --check` named the other; now `serve`,
/// `config check` and `token` refuse, naming both variables and neither value.
#[test]
fn a_secret_shorthand_beside_its_own_variable_stops_serve_check_and_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let other = "OTHERSECRETVALUE_abcdefghijklmnopqrstuvwxyz_0123";
    std::fs::write(dir.path().join("secret"), SECRET)?;
    std::fs::write(dir.path().join("other"), other)?;
    for (pair, values) in [
        (
            ["QUIVER_JWT_SECRET", "QUIVER_AUTH__JWT_SECRET"],
            [SECRET, other],
        ),
        (
            ["QUIVER_JWT_SECRET_FILE", "QUIVER_AUTH__JWT_SECRET_FILE"],
            ["secret", "other"],
        ),
    ] {
        let env = [(pair[0], values[0]), (pair[1], values[1])];
        for args in [
            &["config", "check", "--self-signed"][..],
            &["token", "--tenant", "a", "--user", "u", "--subscribe", "x"][..],
            SERVE,
        ] {
            let (ok, out, err) = run_env(dir.path(), args, &env)?;
            assert!(!ok, "{pair:?} {args:?}: {out}{err}");
            assert!(!err.contains("missing.pem"), "refused first: {err}");
            assert!(
                err.contains(&format!("{} and {} are both set", pair[0], pair[1]))
                    && err.contains("keep one"),
                "{pair:?} {args:?}: {err}"
            );
            assert!(
                !err.contains(SECRET) && !err.contains(other) && !out.contains(SECRET),
                "{err}"
            );
        }
        // Either one alone is a key.
        for one in env {
            let (ok, out, err) =
                run_env(dir.path(), &["config", "check", "--self-signed"], &[one])?;
            assert!(ok, "{one:?}: {out}{err}");
            assert!(
                out.contains("token key: HS256 secret from"),
                "{one:?}: {out}"
            );
        }
    }
    Ok(())
}
