//! Tests of the configurations refused as mistakes.
// figment's Jail API returns its own (large) error type.
#![allow(clippy::result_large_err)]

use super::*;

const KEY_A: &str = "key-a-0123456789abcdef";
const KEY_B: &str = "key-b-0123456789abcdef";

/// Loads `toml` as `quiver config check FILE` would (file, then flags: none here) and
/// returns the refusal, which must name `needle`.
fn refused(jail: &mut figment::Jail, toml: &str, needle: &str) -> figment::error::Result<()> {
    jail.create_file("bad.toml", toml)?;
    let err = match Config::load(Some("bad.toml".as_ref())) {
        Ok(c) => c.validate().expect_err(toml),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(needle), "{toml}\n-> {err}");
    Ok(())
}

fn loads(jail: &mut figment::Jail, toml: &str) -> figment::error::Result<Config> {
    jail.create_file("good.toml", toml)?;
    let c = Config::load(Some("good.toml".as_ref())).map_err(|e| format!("{toml}: {e}"))?;
    c.validate().map_err(|e| format!("{toml}: {e}"))?;
    Ok(c)
}

#[test]
fn repeated_api_keys_are_refused_without_printing_the_key() {
    figment::Jail::expect_with(|jail| {
        // Once as admin, once for acme: the first (admin) would win.
        let toml = format!(
            "[[api.keys]]\nkey = \"{KEY_A}\"\n[[api.keys]]\nkey = \"{KEY_B}\"\n\
             [[api.keys]]\nkey = \"{KEY_A}\"\ntenant = \"acme\"\n"
        );
        refused(jail, &toml, "api.keys[2] repeats the key of api.keys[0]")?;
        jail.create_file("bad.toml", &toml)?;
        let err = Config::load(Some("bad.toml".as_ref())).unwrap_err();
        assert!(!err.to_string().contains(KEY_A), "{err}");
        let c = loads(
            jail,
            &format!(
                "[[api.keys]]\nkey = \"{KEY_A}\"\n[[api.keys]]\nkey = \"{KEY_B}\"\n\
                 tenant = \"acme\"\n"
            ),
        )?;
        assert_eq!(c.api.keys.len(), 2);
        Ok(())
    });
}

#[test]
fn api_keys_no_header_can_carry_are_refused() {
    figment::Jail::expect_with(|jail| {
        for key in [
            "key-0123456789abcdef\\n",
            "key 0123456789abcdef",
            "key-0123456789abcdeé",
        ] {
            refused(
                jail,
                &format!("[[api.keys]]\nkey = \"{key}\"\n"),
                "api.keys[0].key holds a character a request header cannot carry",
            )?;
        }
        Ok(())
    });
}

#[test]
fn short_and_empty_api_keys_are_refused() {
    figment::Jail::expect_with(|jail| {
        let short = "k".repeat(MIN_API_KEY_LEN - 1);
        let toml = format!("[api]\nkeys = [{{ key = \"{short}\" }}]\n");
        refused(jail, &toml, "api.keys[0].key is too short")?;
        refused(jail, &toml, "at least 16 bytes")?;
        jail.create_file("bad.toml", &toml)?;
        let err = Config::load(Some("bad.toml".as_ref())).unwrap_err();
        assert!(!err.to_string().contains(&short), "{err}");
        refused(
            jail,
            &format!("[[api.keys]]\nkey = \"{KEY_A}\"\n[[api.keys]]\nkey = \"\"\n"),
            "api.keys[1].key is empty",
        )?;
        loads(
            jail,
            &format!("[[api.keys]]\nkey = \"{}\"\n", "k".repeat(MIN_API_KEY_LEN)),
        )?;
        Ok(())
    });
}

#[test]
fn api_keys_for_tenants_that_are_no_tenant_ids_are_refused() {
    figment::Jail::expect_with(|jail| {
        let with =
            |tenant: &str| format!("[[api.keys]]\nkey = \"{KEY_A}\"\ntenant = \"{tenant}\"\n");
        refused(jail, &with(""), "api.keys[0].tenant is empty")?;
        for bad in ["a.b", "~other", "acme corp", &"t".repeat(65)] {
            refused(jail, &with(bad), "api.keys[0].tenant is not a tenant id")?;
        }
        // The one offending character, never the value.
        jail.create_file("bad.toml", &with("secret/ish"))?;
        let err = Config::load(Some("bad.toml".as_ref())).unwrap_err();
        assert!(!err.to_string().contains("secret/ish"), "{err}");
        let c = loads(jail, &with("acme-1_X"))?;
        assert_eq!(c.api.keys[0].tenant.as_deref(), Some("acme-1_X"));
        Ok(())
    });
}

#[test]
fn an_http_secret_a_header_cannot_carry_is_refused() {
    figment::Jail::expect_with(|jail| {
        for bad in [
            "\\n", "\\r", "\\u0000", "\\t", "\\u007f", "\\u0085", "é", "\\u2028",
        ] {
            refused(
                jail,
                &format!("[rpc]\nurl = \"http://127.0.0.1:9/q\"\nhttp_secret = \"abc{bad}def\"\n"),
                "rpc.http_secret holds a character a request header cannot carry",
            )?;
        }
        // Through the environment (figment trims a trailing newline there, not a CR within).
        jail.set_env("QUIVER_RPC__HTTP_SECRET", "backend\rsecret");
        refused(jail, "", "rpc.http_secret")?;
        // Spaces are printable: a passphrase still loads.
        jail.set_env("QUIVER_RPC__HTTP_SECRET", "backend secret phrase");
        let c = loads(jail, "")?;
        assert!(c.rpc.http_secret.is_some());
        Ok(())
    });
}

#[test]
fn an_empty_http_secret_is_refused() {
    figment::Jail::expect_with(|jail| {
        refused(
            jail,
            "[rpc]\nurl = \"http://127.0.0.1:9/x\"\nhttp_secret = \"\"\n",
            "rpc.http_secret is empty",
        )?;
        Ok(())
    });
}

#[test]
fn repeated_namespaces_are_refused() {
    figment::Jail::expect_with(|jail| {
        refused(
            jail,
            "[[namespaces]]\nname = \"chat\"\n[[namespaces]]\nname = \"game\"\n\
             [[namespaces]]\nname = \"chat\"\nhistory_size = 10\n",
            "namespaces[2]: \"chat\" is already configured by namespaces[0]",
        )?;
        loads(
            jail,
            "[[namespaces]]\nname = \"chat\"\n[[namespaces]]\nname = \"game\"\n",
        )?;
        Ok(())
    });
}

#[test]
fn hooks_that_ask_nothing_or_have_no_backend_are_refused() {
    figment::Jail::expect_with(|jail| {
        let url = "[rpc]\nurl = \"http://127.0.0.1:9/q\"\n";
        refused(
            jail,
            &format!(
                "{url}[[rpc.hooks]]\nnamespace = \"order\"\nsubscribe = true\n\
                      [[rpc.hooks]]\nnamespace = \"game\"\nfail_open = true\n"
            ),
            "rpc.hooks[1] (\"game\") sets neither subscribe nor publish",
        )?;
        // A hook on a namespace [[namespaces]] does not list works (hooks go by the room's
        // first token), and a subscribe hook on a `latest` namespace is asked too.
        loads(
            jail,
            &format!(
                "{url}[[namespaces]]\nname = \"game\"\nmode = \"latest\"\n\
                 [[rpc.hooks]]\nnamespace = \"order\"\npublish = true\n\
                 [[rpc.hooks]]\nnamespace = \"game\"\nsubscribe = true\n"
            ),
        )?;
        // No rpc.url and no NATS: refused once the flags are in (validate), not at load,
        // since `--nats` may still give NATS.
        let hooked = "[[rpc.hooks]]\nnamespace = \"order\"\nsubscribe = true\n";
        refused(jail, hooked, "rpc.hooks need a backend")?;
        jail.create_file("q.toml", hooked)?;
        let mut c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        assert!(c.validate().is_err());
        // What `--nats URL` does.
        c.nats = Some(crate::config::NatsConfig::new("nats://127.0.0.1:4222"));
        c.validate()?;
        // Or the environment.
        jail.set_env("QUIVER_NATS__URL", "nats://127.0.0.1:4222");
        loads(jail, hooked)?;
        Ok(())
    });
}

#[test]
fn tenant_quota_overrides_must_name_a_tenant_once() {
    figment::Jail::expect_with(|jail| {
        refused(
            jail,
            "[[quotas.tenants]]\ntenant = \"a b\"\nmax_sessions = 1\n",
            "quotas.tenants[0].tenant is not a tenant id",
        )?;
        refused(
            jail,
            "[[quotas.tenants]]\ntenant = \"acme\"\nmax_sessions = 1\n\
             [[quotas.tenants]]\ntenant = \"acme\"\nmax_sessions = 9\n",
            "quotas.tenants[1]: tenant \"acme\" is already configured by quotas.tenants[0]",
        )?;
        loads(
            jail,
            "[[quotas.tenants]]\ntenant = \"acme\"\nmax_sessions = 1\n\
             [[quotas.tenants]]\ntenant = \"ACME\"\nmax_sessions = 9\n",
        )?;
        Ok(())
    });
}

#[test]
fn hook_timeouts_are_bounded() {
    figment::Jail::expect_with(|jail| {
        refused(
            jail,
            "[rpc]\nurl = \"http://127.0.0.1:9/x\"\n[[rpc.hooks]]\nnamespace = \"a\"\n\
             publish = true\ntimeout = \"1h\"\n",
            "rpc.hooks[0].timeout (3600s) is over the maximum of 300s",
        )?;
        Ok(())
    });
}

/// Outside audit 105, F6: `rpc.connect_timeout` was the one timeout taken unchecked; "0s"
/// failed every connection to the backend at the next timer tick.
#[test]
fn the_rpc_connect_timeout_is_bounded() {
    figment::Jail::expect_with(|jail| {
        for (value, shown) in [("0s", "0ns"), ("50ms", "50ms"), ("100y", "3155760000s")] {
            refused(
                jail,
                &format!("[rpc]\nconnect_timeout = \"{value}\"\n"),
                &format!("rpc.connect_timeout ({shown}) must be from 100ms to 300s"),
            )?;
        }
        for (value, parsed) in [
            ("100ms", Duration::from_millis(100)),
            ("5m", MAX_RPC_TIMEOUT),
        ] {
            let c = loads(jail, &format!("[rpc]\nconnect_timeout = \"{value}\"\n"))?;
            assert_eq!(c.rpc.connect_timeout, parsed);
        }
        Ok(())
    });
}

#[test]
fn timeouts_are_bounded() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert!(!c.timeouts.drain.is_zero() && c.timeouts.drain <= MAX_DRAIN);
        assert!(c.rpc.max_timeout <= MAX_RPC_TIMEOUT);
        for (toml, needle) in [
            (
                "[timeouts]\ndrain = \"0s\"\n",
                "timeouts.drain must be positive",
            ),
            (
                "[timeouts]\ndrain = \"100000h\"\n",
                "timeouts.drain (360000000s) is over the maximum of 3600s",
            ),
            (
                "[rpc]\nmax_timeout = \"1000d\"\n",
                "rpc.max_timeout (86400000s) is over the maximum of 300s",
            ),
            (
                "[timeouts]\nhandshake = \"1ms\"\n",
                "timeouts.handshake (1ms) is under the minimum of 100ms",
            ),
            (
                "[timeouts]\nidle = \"100000h\"\nkeep_alive = \"10s\"\n",
                "timeouts.idle (360000000s) is over the maximum of 3600s",
            ),
            (
                "[timeouts]\nidle = \"10s\"\nkeep_alive = \"10s\"\n",
                "timeouts.keep_alive (10s) must be less than timeouts.idle (10s)",
            ),
        ] {
            refused(jail, toml, needle)?;
        }
        let c = loads(
            jail,
            "[timeouts]\ndrain = \"1h\"\n[rpc]\ntimeout = \"5m\"\nmax_timeout = \"5m\"\n",
        )?;
        assert_eq!(c.timeouts.drain, MAX_DRAIN);
        assert_eq!(c.rpc.max_timeout, MAX_RPC_TIMEOUT);
        Ok(())
    });
}

/// Audit round 2, S1: a TOML syntax error names file, line, column and what is wrong,
/// and never quotes the line (which may hold a secret); nor does a secret of the wrong type.
#[test]
fn syntax_and_type_errors_never_echo_a_secret() {
    figment::Jail::expect_with(|jail| {
        let secret = "SUPERSECRETVALUE_abcdefghijklmnopqrstuvwxyz_0123";
        for (toml, position, what) in [
            (
                format!("[tls]\nself_signed = true\n[auth]\njwt_secret = {secret}\n"),
                "line 4, column 14",
                "invalid string",
            ),
            (
                format!("[auth]\njwt_secret = \"{secret}\n"),
                "line 2, column",
                "invalid basic string",
            ),
            (
                format!("[api]\nkeys = [{{ key = \"{secret}\", tenant = \"acme\" }}\n"),
                "line 2, column",
                "expected `]`",
            ),
            (
                format!("[nats]\nurl = \"nats://a:1\"\npassword = \"{secret}\" x\n"),
                "line 3, column",
                "expected newline",
            ),
            (
                format!("[rpc]\nhttp_secret = \"{secret}\" \"x\"\n"),
                "line 2, column",
                "expected newline",
            ),
        ] {
            jail.create_file("bad.toml", &toml)?;
            let err = Config::load_checked(Some("bad.toml".as_ref()))
                .expect_err(&toml)
                .to_string();
            assert!(!err.contains(secret), "{toml}\n-> {err}");
            assert!(!err.contains("SUPERSECRET"), "{toml}\n-> {err}");
            assert!(err.starts_with("bad.toml: TOML syntax error at "), "{err}");
            assert!(err.contains(position), "{toml}\n-> {err}");
            assert!(err.contains(what), "{toml}\n-> {err}");
        }
        // A secret of the wrong type: its type, never its value.
        for toml in [
            "[auth]\njwt_secret = 1234567890123\n",
            "[nats]\nurl = \"nats://a:1\"\npassword = 1234567890123\n",
            "[rpc]\nhttp_secret = 1234567890.123\n",
            "[[api.keys]]\nkey = true\n",
        ] {
            jail.create_file("bad.toml", toml)?;
            let err = Config::load_checked(Some("bad.toml".as_ref()))
                .expect_err(toml)
                .to_string();
            assert!(err.contains("(in bad.toml): expected a string"), "{err}");
            assert!(!err.contains("1234567890"), "{toml}\n-> {err}");
            assert!(!err.contains("true"), "{toml}\n-> {err}");
        }
        Ok(())
    });
}

/// Audit round 2, S5: credentials in a NATS URL are used (as every NATS client does), never
/// beside nats.user/password/token, and the same in every URL.
#[test]
fn nats_url_credentials_are_used_and_not_given_twice() {
    use crate::config::{NatsConfig, NatsUrlAuth, UrlCredentialsError};
    let urls = |url: &str| NatsConfig::new(url).connect_urls();
    assert_eq!(
        urls("nats://alice:pa%40ss@127.0.0.1:4222, nats://alice:pa%40ss@b:4222/x,tls://c")
            .map_err(|e| e.to_string()),
        Ok((
            vec![
                "nats://127.0.0.1:4222".to_owned(),
                "nats://b:4222/x".to_owned(),
                "tls://c".to_owned()
            ],
            Some(NatsUrlAuth::UserPassword {
                user: "alice".into(),
                password: "pa@ss".into()
            })
        ))
    );
    assert_eq!(
        urls("s3cr3t-token@host:4222").map_err(|e| e.to_string()),
        Ok((
            vec!["host:4222".to_owned()],
            Some(NatsUrlAuth::Token("s3cr3t-token".into()))
        ))
    );
    assert_eq!(
        urls("nats://a:4222").map_err(|e| e.to_string()),
        Ok((vec!["nats://a:4222".to_owned()], None))
    );
    assert_eq!(
        urls("nats://u:p@a,nats://u:q@b"),
        Err(UrlCredentialsError::Different)
    );
    assert_eq!(
        urls("nats://u:%ff@a"),
        Err(UrlCredentialsError::Encoding { index: 0 })
    );
    // What the broker could not connect to is refused here, so `config check` says so too
    // (audit 39), without the credentials.
    for (url, index) in [
        ("nats://u:SECRETPW@[bad", 0),
        ("nats://a:4222,http://b:80", 1),
        ("nats://a,nats://u:SECRETPW@b:notaport", 1),
    ] {
        match urls(url) {
            Err(e @ UrlCredentialsError::Unparsable { index: at, .. }) => {
                assert_eq!(at, index, "{url}: {e}");
                assert!(!e.to_string().contains("SECRETPW"), "{e}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    let mut both = NatsConfig::new("nats://u:p@a:4222");
    both.user = Some("u".into());
    assert_eq!(both.connect_urls(), Err(UrlCredentialsError::Twice));
    // No credential in any of these messages, nor in a Debug print.
    let auth = urls("nats://alice:NATSPASSWORDX@a").map_err(|e| e.to_string());
    assert!(!format!("{auth:?}").contains("NATSPASSWORDX"));

    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "QUIVER_NATS__URL",
            "nats://alice:NATSPASSWORDX@127.0.0.1:4222",
        );
        let c = loads(jail, "")?;
        assert!(c.nats.is_some());
        jail.set_env("QUIVER_NATS__USER", "bob");
        jail.set_env("QUIVER_NATS__PASSWORD", "OTHERPASSWORD");
        jail.create_file("bad.toml", "")?;
        let err = Config::load(Some("bad.toml".as_ref()))
            .map_err(|e| e.to_string())?
            .validate()
            .expect_err("credentials twice");
        assert!(err.contains("nats.url carries credentials"), "{err}");
        assert!(err.contains("nats.user / nats.password"), "{err}");
        assert!(!err.contains("PASSWORD"), "{err}");
        Ok(())
    });
}

/// Audit round 2, S6: `https` is served only with cert/key, so setting it without them is
/// refused (the generated certificate, `tls.self_signed` included, is WebTransport only).
#[test]
fn https_without_cert_and_key_is_refused() {
    figment::Jail::expect_with(|jail| {
        refused(
            jail,
            "https = \"127.0.0.1:28444\"\n[tls]\nself_signed = true\n",
            "https (127.0.0.1:28444) is set without cert and key",
        )?;
        refused(
            jail,
            "https = \"127.0.0.1:28444\"\n",
            "set cert and key (or --cert and --key), or remove https",
        )?;
        // What `--cert/--key` do once the flags are in.
        jail.create_file("q.toml", "https = \"127.0.0.1:28444\"\n")?;
        let mut c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        c.cert = Some("cert.pem".into());
        c.key = Some("key.pem".into());
        c.validate()?;
        loads(
            jail,
            "https = \"127.0.0.1:28444\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        )?;
        Ok(())
    });
}

/// Audit round 2, S9: credentials in `rpc.url` would replace the documented Bearer secret.
#[test]
fn credentials_in_the_rpc_url_are_refused() {
    figment::Jail::expect_with(|jail| {
        for url in [
            "http://rpcuser:RPCURLPASSWORD@127.0.0.1:28490/quiver",
            "https://rpcuser@backend.example/quiver",
            "http://:RPCURLPASSWORD@127.0.0.1:28490/",
        ] {
            refused(
                jail,
                &format!("[rpc]\nurl = \"{url}\"\nhttp_secret = \"RPCHTTPSECRET_abcdef\"\n"),
                "rpc.url carries a user name or password",
            )?;
            jail.create_file("bad.toml", &format!("[rpc]\nurl = \"{url}\"\n"))?;
            let err = Config::load(Some("bad.toml".as_ref())).unwrap_err();
            assert!(err.to_string().contains("Authorization: Bearer"), "{err}");
            assert!(!err.to_string().contains("RPCURLPASSWORD"), "{err}");
            assert!(!err.to_string().contains("rpcuser"), "{err}");
        }
        loads(
            jail,
            "[rpc]\nurl = \"http://127.0.0.1:28490/quiver?a=b@c\"\nhttp_secret = \"x\"\n",
        )?;
        Ok(())
    });
}

/// Audit round 2, S10: `http` and the https listener on one TCP address.
#[test]
fn http_and_https_on_one_address_are_refused() {
    figment::Jail::expect_with(|jail| {
        let tls = "cert = \"c.pem\"\nkey = \"k.pem\"\n";
        for (addrs, needle) in [
            (
                "http = \"127.0.0.1:28447\"\nhttps = \"127.0.0.1:28447\"\n",
                "http (127.0.0.1:28447) and https (127.0.0.1:28447) both bind tcp port 28447",
            ),
            (
                "http = \"127.0.0.1:28447\"\nhttps = \"[::]:28447\"\n",
                "http (127.0.0.1:28447) and https ([::]:28447)",
            ),
            (
                "http = \"0.0.0.0:28447\"\nhttps = \"10.0.0.1:28447\"\n",
                "http (0.0.0.0:28447) and https",
            ),
            // `https` defaults to `listen`'s address.
            (
                "http = \"127.0.0.1:28447\"\nlisten = \"127.0.0.1:28447\"\n",
                "http (127.0.0.1:28447) and listen (127.0.0.1:28447) both bind tcp port 28447",
            ),
        ] {
            refused(jail, &format!("{addrs}{tls}"), needle)?;
        }
        for addrs in [
            "http = \"127.0.0.1:28447\"\nhttps = \"127.0.0.1:28448\"\n",
            "http = \"127.0.0.1:28447\"\nhttps = \"127.0.0.2:28447\"\n",
            "http = \"0.0.0.0:28447\"\nhttps = \"[::1]:28447\"\n",
            "http = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n",
            "http = \"127.0.0.1:28447\"\nlisten = \"127.0.0.1:28448\"\n",
        ] {
            loads(jail, &format!("{addrs}{tls}"))?;
        }
        // Without cert/key no TLS listener is bound on `listen`'s port: UDP and TCP share it.
        loads(
            jail,
            "http = \"127.0.0.1:28447\"\nlisten = \"127.0.0.1:28447\"\n",
        )?;
        Ok(())
    });
}

/// Audit round 2, S12: every broken timeout rule is named at once, not only the first.
#[test]
fn every_timeout_mistake_is_named_at_once() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "bad.toml",
            "[timeouts]\ndrain = \"0s\"\nhello = \"50ms\"\nkeep_alive = \"40s\"\n",
        )?;
        let err = Config::load_checked(Some("bad.toml".as_ref()))
            .expect_err("three mistakes")
            .problems;
        for needle in [
            "timeouts.hello (50ms) is under the minimum",
            "timeouts.keep_alive (40s) must be less than timeouts.idle (30s)",
            "timeouts.drain must be positive",
        ] {
            assert!(err.iter().any(|p| p.contains(needle)), "{needle}: {err:#?}");
        }
        Ok(())
    });
}

/// Outside audit 48, F2: several mistakes of one kind (API keys, the `[rpc]` section) were
/// named one at a time, the first of each kind only; every one is named at once now.
#[test]
fn every_api_key_and_rpc_mistake_is_named_at_once() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "bad.toml",
            &format!(
                "[[api.keys]]\nkey = \"short\"\n\
                 [[api.keys]]\nkey = \"{KEY_A}\"\n\
                 [[api.keys]]\nkey = \"{KEY_A}\"\n\
                 [[api.keys]]\nkey = \"has a space 0123456789\"\ntenant = \"bad tenant\"\n\
                 [rpc]\nurl = \"http://user:pw@127.0.0.1:9/rpc\"\nhttp_secret = \"bell\\u0007\"\n\
                 [[rpc.hooks]]\nnamespace = \"a\"\n\
                 [[rpc.hooks]]\nnamespace = \"b\"\n"
            ),
        )?;
        let err = Config::load_checked(Some("bad.toml".as_ref()))
            .expect_err("mistakes")
            .problems;
        for needle in [
            "api.keys[0].key is too short",
            "api.keys[2] repeats the key of api.keys[1]",
            "api.keys[3].key holds a character",
            "api.keys[3].tenant is not a tenant id",
            "rpc.url",
            "rpc.http_secret holds a character",
            "rpc.hooks[0] (\"a\") sets neither",
            "rpc.hooks[1] (\"b\") sets neither",
        ] {
            assert!(err.iter().any(|p| p.contains(needle)), "{needle}: {err:#?}");
        }
        assert!(
            !err.iter().any(|p| p.contains(KEY_A) || p.contains("pw@")),
            "{err:#?}"
        );
        Ok(())
    });
}

/// Outside audit 116, F2: an `allowed_origins` entry no browser's `Origin` can equal (no
/// scheme, a path) passed `config check`, and then every browser session got 403.
#[test]
fn origins_no_browser_sends_are_refused() {
    figment::Jail::expect_with(|jail| {
        let list = |entries: &[&str]| {
            let quoted: Vec<String> = entries.iter().map(|e| format!("{e:?}")).collect();
            format!("allowed_origins = [{}]\n", quoted.join(", "))
        };
        for (entry, why) in [
            ("app.example.com", "has no scheme"),
            ("https://ok.example.com/path", "has a path"),
            ("https://ok.example.com//", "has a path"),
            ("https://ok.example.com/?a=1", "has a query"),
            ("https://ok.example.com#top", "has a fragment"),
            ("wss://app.example.com", "is a WebSocket URL"),
            ("1http://app.example.com", "has no valid scheme"),
            ("https://", "has no host"),
            ("https://*.example.com", "has a wildcard in its host"),
            (
                "https://app.example.com:443",
                "names its scheme's default port (443)",
            ),
            (
                "http://app.example.com:80/",
                "names its scheme's default port (80)",
            ),
            (
                "https://app.example.com:0",
                "has a port that is not 1 to 65535",
            ),
            (
                "https://app.example.com:99999",
                "has a port that is not 1 to 65535",
            ),
            (
                "https://app.example.com:",
                "has a port that is not 1 to 65535",
            ),
            ("https://[::1", "has an IPv6 host without its closing ]"),
            (
                "https://[0:0::1]",
                "has an IPv6 host not written as browsers write it ([::1])",
            ),
            (
                "https://app.exämple.com",
                "holds a space, a control character or non-ASCII",
            ),
            (" https://app.example.com", "holds a space"),
            ("", "is empty"),
        ] {
            let toml = list(&["*", "https://fine.example.com", entry]);
            refused(jail, &toml, &format!("allowed_origins[2] {why}"))?;
        }
        // User info is named, its password never printed.
        jail.create_file(
            "bad.toml",
            &list(&["https://user:ORIGINPASSWORD@app.example.com"]),
        )?;
        let err = Config::load(Some("bad.toml".as_ref()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed_origins[0] has user info"), "{err}");
        assert!(!err.contains("ORIGINPASSWORD"), "{err}");
        // Every entry is named at once, by its place.
        refused(
            jail,
            &list(&["a.example", "b.example"]),
            "allowed_origins[1]",
        )?;
        // Through the environment, as deploy/compose.yaml sets it.
        jail.set_env("QUIVER_ALLOWED_ORIGINS", "[\"app.example.com\"]");
        refused(jail, "", "allowed_origins[0] has no scheme")?;
        jail.set_env("QUIVER_ALLOWED_ORIGINS", "[\"https://app.example.com\"]");
        loads(jail, "")?;
        loads(
            jail,
            &list(&["*", "https://app.example.com", "HTTPS://App.Example.com/"]),
        )?;
        loads(
            jail,
            &list(&[
                "http://localhost:8080",
                "http://127.0.0.1:3000",
                "https://[::1]:8443",
                // An extension's and an app shell's origins have schemes of their own.
                "chrome-extension://abcdefghijklmnopabcdefghijklmnop",
                "moz-extension://0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
                "tauri://localhost",
                // What a sandboxed frame or a `file:` page sends.
                "null",
                "https://xn--bcher-kva.example",
                "https://a-b_c.example.com:8443",
            ]),
        )?;
        Ok(())
    });
}

/// Outside audit 116, F3: history budgets too small for one room and one full publication
/// kept nothing (every publication a fresh epoch at offset 1, every resume failed) and passed
/// `config check`; the floor is what the embedded broker counts for exactly that.
#[test]
fn history_budgets_too_small_for_one_publication_are_refused() {
    figment::Jail::expect_with(|jail| {
        let history = "[[namespaces]]\nname = \"h\"\nhistory_size = 10\n";
        let floor = history_floor(61_440);
        for (total, tenant, needle) in [
            (0, 0, "limits.history_tenant_max_bytes (0) must be at least"),
            (0, 0, "limits.history_max_bytes (0) must be at least"),
            (floor, floor - 1, "limits.history_tenant_max_bytes"),
            (floor - 1, floor - 1, "limits.history_max_bytes"),
        ] {
            let toml = format!(
                "[limits]\nhistory_max_bytes = {total}\nhistory_tenant_max_bytes = {tenant}\n\
                 {history}"
            );
            refused(jail, &toml, needle)?;
            refused(jail, &toml, &format!("{floor}"))?;
            refused(jail, &toml, "namespace \"h\"")?;
        }
        let at = |bytes: u64, max_payload: u64, rest: &str| {
            format!(
                "[limits]\nmax_payload = {max_payload}\nhistory_max_bytes = {bytes}\n\
                 history_tenant_max_bytes = {bytes}\n{rest}"
            )
        };
        loads(jail, &at(floor, 61_440, history))?;
        // The floor follows max_payload.
        let small = history_floor(1000);
        loads(jail, &at(small, 1000, history))?;
        refused(jail, &at(small - 1, 1000, history), "must be at least")?;
        // Without a namespace keeping history the budgets are not used.
        loads(jail, &at(0, 61_440, "[[namespaces]]\nname = \"live\"\n"))?;
        Ok(())
    });
}
