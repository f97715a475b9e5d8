//! The configuration's own tests: layering (file, environment, flags), settings that load and
//! are checked, unknown keys, secrets never shown.
// figment's Jail API returns its own (large) error type.
#![allow(clippy::result_large_err)]

use super::*;

/// The smallest frame a server may be configured with still carries a `Refresh` with the
/// longest token it takes.
#[test]
fn a_refresh_with_the_longest_token_fits_the_smallest_frame() {
    let frame = quiver_proto::encode_command(&quiver_proto::ClientFrame {
        id: u32::MAX,
        command: quiver_proto::Command::Refresh {
            token: "t".repeat(crate::transport::MAX_TOKEN_LEN),
        },
    });
    assert!(frame.len() - quiver_proto::LENGTH_PREFIX <= MIN_MAX_FRAME as usize);
}

#[test]
fn file_then_env_override_defaults() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "q.toml",
            "http = \"127.0.0.1:9999\"\n[limits]\nmax_frame = 100000\n[timeouts]\nidle = \"5s\"\nkeep_alive = \"2s\"\n",
        )?;
        jail.set_env("QUIVER_LIMITS__MAX_FRAME", "200000");
        jail.set_env("QUIVER_JWT_SECRET", "s3cret");
        let c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        assert_eq!(c.http.port(), 9999);
        assert_eq!(c.limits.max_frame, 200_000);
        assert_eq!(c.timeouts.idle, Duration::from_secs(5));
        assert_eq!(
            c.auth.jwt_secret.as_ref().map(Secret::expose),
            Some("s3cret")
        );
        assert!(!c.dev_mode());
        Ok(())
    });
}

#[test]
fn congestion_control_from_file_and_env() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.transport.congestion_control, CongestionControl::Bbr);
        jail.create_file("q.toml", "[transport]\ncongestion_control = \"new_reno\"\n")?;
        let c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        assert_eq!(c.transport.congestion_control, CongestionControl::NewReno);
        jail.set_env("QUIVER_TRANSPORT__CONGESTION_CONTROL", "cubic");
        let c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        assert_eq!(c.transport.congestion_control, CongestionControl::Cubic);
        jail.set_env("QUIVER_TRANSPORT__CONGESTION_CONTROL", "vegas");
        let err = Config::load(None).unwrap_err();
        assert!(err.to_string().contains("vegas"), "{err}");
        Ok(())
    });
}

#[test]
fn nats_table_without_url_takes_the_url_from_the_flag() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("q.toml", "[nats]\nstorage = \"file\"\n")?;
        let mut c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        let err = c.validate().unwrap_err();
        assert!(err.contains("nats.url"), "{err}");
        // What `quiver serve --nats URL` does: the flag fills in the URL, the file's
        // storage stays.
        c.nats.as_mut().expect("[nats] was given").url = "nats://127.0.0.1:4222".into();
        c.validate()?;
        assert_eq!(c.nats.as_ref().map(|n| n.storage.as_str()), Some("file"));
        // Or from the environment.
        jail.set_env("QUIVER_NATS__URL", "nats://127.0.0.1:4223");
        let c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        c.validate()?;
        let nats = c.nats.expect("[nats] was given");
        assert_eq!(
            (nats.url.as_str(), nats.storage.as_str()),
            ("nats://127.0.0.1:4223", "file")
        );
        Ok(())
    });
}

#[test]
fn latest_namespaces_and_priorities_load_and_are_checked() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "q.toml",
            "[[namespaces]]\nname = \"game\"\nmode = \"latest\"\npriority = 50\n",
        )?;
        let c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        let room = quiver_proto::RoomName::parse("game.arena").map_err(|e| e.to_string())?;
        let other = quiver_proto::RoomName::parse("chat.x").map_err(|e| e.to_string())?;
        assert!(c.latest(&room) && !c.latest(&other));
        assert_eq!((c.priority(&room), c.priority(&other)), (50, 0));
        for bad in [
            "mode = \"latest\"\nhistory_size = 10",
            "priority = 101",
            "mode = \"newest\"",
        ] {
            jail.create_file(
                "bad.toml",
                &format!("[[namespaces]]\nname = \"g\"\n{bad}\n"),
            )?;
            assert!(Config::load(Some("bad.toml".as_ref())).is_err(), "{bad}");
        }
        Ok(())
    });
}

/// NATS's CA and credentials files must exist when the configuration is checked, not only when
/// NATS is first connected (outside audit 62: a missing `nats.ca` passed `config check`).
#[test]
fn missing_nats_files_are_refused_at_load() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "n.toml",
            "[nats]\nurl = \"nats://127.0.0.1:4222\"\nca = \"missing-ca.pem\"\ncredentials = \"missing.creds\"\n",
        )?;
        let err = Config::load(Some("n.toml".as_ref()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats.ca: missing-ca.pem"), "{err}");
        assert!(err.contains("nats.credentials: missing.creds"), "{err}");
        jail.create_file("missing-ca.pem", "x")?;
        jail.create_file("missing.creds", "x")?;
        Config::load(Some("n.toml".as_ref())).map_err(|e| e.to_string())?;
        Ok(())
    });
}

/// `nats.presence_ttl` is 3 s to an hour: `"0s"` passed `config check`, then stopped the
/// refresh (a zero period) and gave the presence bucket no age limit, so a killed instance's
/// members stayed listed for good (outside audit 101, F2).
#[test]
fn presence_ttl_is_bounded() {
    figment::Jail::expect_with(|jail| {
        for (ttl, ok) in [
            ("0s", false),
            ("2s", false),
            ("3s", true),
            ("1h", true),
            ("2h", false),
        ] {
            jail.create_file(
                "n.toml",
                &format!("[nats]\nurl = \"nats://127.0.0.1:4222\"\npresence_ttl = \"{ttl}\"\n"),
            )?;
            match Config::load(Some("n.toml".as_ref())) {
                Ok(_) => assert!(ok, "{ttl} taken"),
                Err(e) => {
                    assert!(!ok, "{ttl}: {e}");
                    assert!(
                        e.to_string()
                            .contains("nats.presence_ttl must be 3s to 3600s"),
                        "{e}"
                    );
                }
            }
        }
        Ok(())
    });
}

/// `nats.replicas` is what JetStream takes, 1 to 5, from the file or `QUIVER_NATS__REPLICAS`;
/// anything else is refused at load, naming the setting (outside audit 112, F5).
#[test]
fn nats_replicas_load_and_are_bounded() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("d.toml", "[nats]\nurl = \"nats://127.0.0.1:4222\"\n")?;
        let c = Config::load(Some("d.toml".as_ref())).map_err(|e| e.to_string())?;
        // Unset: new streams get one copy, existing ones keep theirs (review 118, F1).
        assert_eq!(c.nats.map(|n| n.replicas), Some(None), "the default");
        for (replicas, ok) in [(0, false), (1, true), (3, true), (5, true), (6, false)] {
            jail.create_file(
                "n.toml",
                &format!("[nats]\nurl = \"nats://127.0.0.1:4222\"\nreplicas = {replicas}\n"),
            )?;
            match Config::load(Some("n.toml".as_ref())) {
                Ok(c) => {
                    assert!(ok, "{replicas} taken");
                    assert_eq!(c.nats.map(|n| n.replicas), Some(Some(replicas)));
                }
                Err(e) => {
                    assert!(!ok, "{replicas}: {e}");
                    assert!(
                        e.to_string().contains(&format!(
                            "nats.replicas must be 1 to 5 (copies JetStream keeps of each \
                             stream and bucket; 3 on a three-node NATS cluster), not {replicas}"
                        )),
                        "{e}"
                    );
                }
            }
        }
        jail.set_env("QUIVER_NATS__REPLICAS", "3");
        let c = Config::load(Some("d.toml".as_ref())).map_err(|e| e.to_string())?;
        assert_eq!(
            c.nats.map(|n| n.replicas),
            Some(Some(3)),
            "from the environment"
        );
        jail.set_env("QUIVER_NATS__REPLICAS", "0");
        let e = Config::load(Some("d.toml".as_ref()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nats.replicas must be 1 to 5"), "{e}");
        Ok(())
    });
}

/// A history namespace keeps each publication at least a second: `history_ttl = "0s"` was taken
/// and kept nothing, every recovery failing (outside audit 58, F3).
#[test]
fn a_history_kept_for_no_time_is_refused() {
    figment::Jail::expect_with(|jail| {
        for (ttl, refused) in [("0s", true), ("500ms", true), ("1s", false), ("10m", false)] {
            jail.create_file(
                "h.toml",
                &format!(
                    "[[namespaces]]\nname = \"h\"\nhistory_size = 100\nhistory_ttl = \"{ttl}\"\n"
                ),
            )?;
            let loaded = Config::load(Some("h.toml".as_ref()));
            match (loaded, refused) {
                (Err(e), true) => assert!(
                    e.to_string().contains("history_ttl must be at least 1s"),
                    "{ttl}: {e}"
                ),
                (Ok(_), false) => {}
                (other, _) => panic!("{ttl}: {:?}", other.map(|_| ())),
            }
        }
        // Live only: its TTL means nothing and is not checked.
        jail.create_file(
            "live.toml",
            "[[namespaces]]\nname = \"l\"\nhistory_ttl = \"0s\"\n",
        )?;
        Config::load(Some("live.toml".as_ref())).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn a_tenant_share_above_the_history_total_is_refused() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert!(c.limits.history_tenant_max_bytes <= c.limits.history_max_bytes);
        jail.create_file(
            "q.toml",
            "[limits]\nhistory_max_bytes = 1000000\nhistory_tenant_max_bytes = 2000000\n",
        )?;
        let err = Config::load(Some("q.toml".as_ref())).unwrap_err();
        assert!(
            err.to_string().contains("history_tenant_max_bytes"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn unknown_keys_are_errors() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("QUIVER_TOKEN", "not configuration");
        assert!(Config::load(None).is_ok());
        jail.create_file("q.toml", "lisen = \"[::]:1\"\n")?;
        assert!(Config::load(Some("q.toml".as_ref())).is_err());
        jail.create_file(
            "small.toml",
            "[limits]\nmax_frame = 9000\nmax_payload = 9000\n",
        )?;
        let err = Config::load(Some("small.toml".as_ref())).unwrap_err();
        assert!(err.to_string().contains("max_payload"), "{err}");
        jail.create_file(
            "tiny.toml",
            "[limits]\nmax_frame = 4096\nmax_payload = 256\n",
        )?;
        let err = Config::load(Some("tiny.toml".as_ref())).unwrap_err();
        assert!(err.to_string().contains("at least 8192"), "{err}");
        Ok(())
    });
}

#[test]
fn client_ack_delay_is_off_or_within_bounds_and_namespace_other_is_reserved() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.transport.client_ack_delay, Duration::from_millis(100));
        assert_eq!(c.transport.client_ack_threshold, 3);
        for (delay, ok) in [
            ("0s", true),
            ("1ms", true),
            ("1s", true),
            ("500us", false),
            ("2s", false),
        ] {
            jail.create_file(
                "a.toml",
                &format!("[transport]\nclient_ack_delay = \"{delay}\"\n"),
            )?;
            let loaded = Config::load(Some("a.toml".as_ref()));
            assert_eq!(loaded.is_ok(), ok, "{delay}: {:?}", loaded.err());
            if let Err(e) = loaded {
                assert!(e.to_string().contains("client_ack_delay"), "{e}");
            }
        }
        jail.create_file("ns.toml", "[[namespaces]]\nname = \"other\"\n")?;
        let err = Config::load(Some("ns.toml".as_ref())).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        Ok(())
    });
}

/// Issue 10, defect 3: the secret stays out of logs and `Debug` prints.
#[test]
fn debug_never_shows_secrets() {
    figment::Jail::expect_with(|jail| {
        let secret = "do-not-print-me-0123456789abcdef-0123";
        jail.set_env("QUIVER_JWT_SECRET", secret);
        jail.set_env("QUIVER_NATS__URL", "nats://127.0.0.1:1");
        jail.set_env("QUIVER_NATS__PASSWORD", "nats-password-do-not-print");
        jail.set_env("QUIVER_NATS__TOKEN", "nats-token-do-not-print");
        jail.set_env("QUIVER_NATS__USER", "u");
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.auth.jwt_secret.as_ref().map(Secret::expose), Some(secret));
        for printed in [format!("{c:?}"), format!("{c:#?}"), format!("{:?}", c.auth)] {
            assert!(!printed.contains(secret), "{printed}");
            assert!(!printed.contains("do-not-print"), "{printed}");
        }
        Ok(())
    });
    // Outside audit 105, F4: credentials in URLs (a NATS URL's user info, a key set URL's user
    // info or query, a backend URL's query) were printed whole.
    figment::Jail::expect_with(|jail| {
        jail.set_env("QUIVER_NATS__URL", "nats://a:do-not-print-1@127.0.0.1:1");
        jail.set_env(
            "QUIVER_AUTH__JWKS_URL",
            "https://u:do-not-print-2@idp.example/jwks.json?k=do-not-print-3",
        );
        jail.set_env(
            "QUIVER_RPC__URL",
            "http://127.0.0.1:9/rpc?key=do-not-print-4",
        );
        let c = Config::load(None).map_err(|e| e.to_string())?;
        for printed in [format!("{c:?}"), format!("{c:#?}")] {
            assert!(!printed.contains("do-not-print"), "{printed}");
            for shown in [
                "nats://***@127.0.0.1:1",
                "https://idp.example/jwks.json",
                "http://127.0.0.1:9/rpc",
            ] {
                assert!(printed.contains(shown), "{shown}: {printed}");
            }
        }
        Ok(())
    });
}

/// Outside audit 105, F5: a `subscriber_queue` past tokio's bound on a channel loaded and
/// `config check` passed it, then every Subscribe panicked (after taking the tenant's quota).
#[test]
fn subscriber_queue_is_bounded() {
    figment::Jail::expect_with(|jail| {
        for (value, ok) in [
            ("4611686018427387904", false),
            ("1048577", false),
            ("1048576", true),
            ("1", true),
        ] {
            jail.create_file("q.toml", &format!("[limits]\nsubscriber_queue = {value}\n"))?;
            let loaded = Config::load(Some("q.toml".as_ref()));
            assert_eq!(loaded.is_ok(), ok, "{value}: {:?}", loaded.err());
            if let Err(e) = loaded {
                let want = format!("limits.subscriber_queue ({value}) must be at most 1048576");
                assert!(e.to_string().contains(&want), "{e}");
            }
        }
        jail.set_env("QUIVER_LIMITS__SUBSCRIBER_QUEUE", "4611686018427387904");
        let err = Config::load(None).unwrap_err();
        assert!(err.to_string().contains("limits.subscriber_queue"), "{err}");
        Ok(())
    });
}

#[test]
fn auth_and_tls_settings() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.auth.leeway, Duration::ZERO);
        assert!(!c.tls.self_signed);
        assert!(c.dev_mode());
        jail.create_file(
            "q.toml",
            "[auth]\njwks_file = \"keys.json\"\nleeway = \"3s\"\naudience = \"quiver\"\n\
             issuer = \"https://idp\"\n[tls]\nself_signed = true\nreload_interval = \"2s\"\n",
        )?;
        let c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        assert_eq!(c.auth.leeway, Duration::from_secs(3));
        assert_eq!(c.auth.audience.as_deref(), Some("quiver"));
        assert_eq!(c.auth.issuer.as_deref(), Some("https://idp"));
        assert!(c.tls.self_signed);
        assert_eq!(c.tls.reload_interval, Duration::from_secs(2));
        assert!(!c.dev_mode());
        jail.set_env("QUIVER_JWT_SECRET_FILE", "secret.txt");
        let err = Config::load(Some("q.toml".as_ref())).unwrap_err();
        assert!(err.to_string().contains("one token key"), "{err}");
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.auth.jwt_secret_file, Some(PathBuf::from("secret.txt")));
        jail.set_env("QUIVER_AUTH__LEEWAY", "1h");
        let err = Config::load(None).unwrap_err();
        assert!(err.to_string().contains("auth.leeway"), "{err}");
        Ok(())
    });
}

/// A secret from the environment replaces the file's secret in whichever form, as the
/// `--jwt-secret` / `--jwt-secret-file` flags do (outside operations audit 2, S8: it was
/// refused as a second token key).
#[test]
fn an_environment_secret_replaces_the_files_in_either_form() {
    figment::Jail::expect_with(|jail| {
        let secret = "0123456789abcdef0123456789abcdef-env";
        jail.create_file("file.toml", "[auth]\njwt_secret_file = \"from-file\"\n")?;
        jail.create_file(
            "inline.toml",
            "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef-file\"\n",
        )?;
        jail.set_env("QUIVER_JWT_SECRET", secret);
        let c = Config::load(Some("file.toml".as_ref())).map_err(|e| e.to_string())?;
        assert_eq!(c.auth.jwt_secret.as_ref().map(Secret::expose), Some(secret));
        assert_eq!(c.auth.jwt_secret_file, None);
        jail.clear_env();
        jail.set_env("QUIVER_AUTH__JWT_SECRET_FILE", "from-env");
        let c = Config::load(Some("inline.toml".as_ref())).map_err(|e| e.to_string())?;
        assert_eq!(c.auth.jwt_secret_file, Some(PathBuf::from("from-env")));
        assert!(c.auth.jwt_secret.is_none());
        // Both forms in the environment are still two keys.
        jail.set_env("QUIVER_JWT_SECRET", secret);
        let err = Config::load(None).unwrap_err();
        assert!(err.to_string().contains("one token key"), "{err}");
        Ok(())
    });
}

/// Outside audit 116, F10: 0 was taken for these, then read as 1 (`abuse_factor`,
/// `udp_burst_handshakes`) or refused every non-empty publication and call
/// (`max_payload`); each is named.
#[test]
fn zero_counts_that_would_be_misread_are_refused() {
    figment::Jail::expect_with(|jail| {
        for (toml, name) in [
            ("[limits]\nabuse_factor = 0\n", "limits.abuse_factor"),
            ("[limits]\nmax_payload = 0\n", "limits.max_payload"),
            (
                "[transport]\nudp_burst_handshakes = 0\n",
                "transport.udp_burst_handshakes",
            ),
        ] {
            jail.create_file("q.toml", toml)?;
            let err = Config::load(Some("q.toml".as_ref()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{name} must be at least 1")), "{err}");
            jail.create_file("q.toml", &toml.replace("= 0", "= 1"))?;
            Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
}

/// Outside audit 116, F4: with a shorthand and the variable it stands for both set, the
/// shorthand won while `config check` and `token --check` named the other. Both are named,
/// neither value printed.
#[test]
fn a_shorthand_beside_its_own_variable_is_refused() {
    figment::Jail::expect_with(|jail| {
        let a = "a-secret-of-at-least-32-bytes-AAAAAAAAAAAAAA";
        let b = "b-secret-of-at-least-32-bytes-BBBBBBBBBBBBBB";
        for (short, canonical, key) in [
            (
                "QUIVER_JWT_SECRET",
                "QUIVER_AUTH__JWT_SECRET",
                "auth.jwt_secret",
            ),
            (
                "QUIVER_JWT_SECRET_FILE",
                "QUIVER_AUTH__JWT_SECRET_FILE",
                "auth.jwt_secret_file",
            ),
        ] {
            jail.clear_env();
            jail.set_env(short, a);
            Config::load(None).map_err(|e| e.to_string())?;
            jail.set_env(canonical, b);
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "{short} and {canonical} are both set and both give {key}: keep one"
                )),
                "{err}"
            );
            assert!(!err.contains(a) && !err.contains(b), "{err}");
            jail.clear_env();
            jail.set_env(canonical, b);
            Config::load(None).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
}

/// Outside audit 116, F12: `QUIVER_CONFIG` is the natural guess for the file's path, and the
/// server, reading nothing from it, ran on the defaults in development mode after a warning.
#[test]
fn a_configuration_path_in_the_environment_is_refused() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("q.toml", "demo = false\n")?;
        for name in ["QUIVER_CONFIG", "QUIVER_CONFIG_FILE", "quiver_config"] {
            jail.clear_env();
            jail.set_env(name, "q.toml");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains(&format!("{name} is set")), "{err}");
            assert!(err.contains("use --config FILE"), "{err}");
            // Given with --config as well: still refused, one of the two is a mistake.
            assert!(Config::load(Some("q.toml".as_ref())).is_err(), "{name}");
        }
        Ok(())
    });
}

/// The floor is what the embedded broker counts for its largest room holding one publication
/// of `max_payload`: at it that publication is kept, a byte under it nothing is.
#[test]
fn the_history_floor_is_one_full_room_in_the_memory_broker() {
    use crate::broker::{memory::MemoryBroker, Broker};
    use futures::FutureExt;
    use quiver_proto::room::{MAX_ROOM_LEN, MAX_TENANT_LEN};

    let max_payload = 61_440u32;
    let key = crate::hub::RoomKey {
        tenant: quiver_proto::TenantId::parse(&"t".repeat(MAX_TENANT_LEN)).expect("tenant"),
        room: quiver_proto::RoomName::parse(&format!("h.{}", "r".repeat(MAX_ROOM_LEN - 2)))
            .expect("room"),
    };
    let kept = |budget: u64| {
        let mut config = Config::default();
        config.limits.max_payload = max_payload;
        config.limits.history_max_bytes = budget;
        config.limits.history_tenant_max_bytes = budget;
        config.namespaces.push(crate::config::NamespaceConfig {
            name: "h".into(),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..Default::default()
        });
        // Outside a runtime: no sweeper task.
        let broker = MemoryBroker::new(Default::default(), std::sync::Arc::new(config));
        let payload = bytes::Bytes::from(vec![7u8; max_payload as usize]);
        let position = broker
            .publish(key.clone(), payload)
            .now_or_never()
            .expect("at once")
            .expect("published")
            .expect("a history room");
        let since = quiver_proto::Position {
            epoch: position.epoch,
            offset: 0,
        };
        let recovered = broker
            .recover(key.clone(), Some(since))
            .now_or_never()
            .expect("at once")
            .expect("recovered");
        // `replayed`: what is in hand and what the broker still holds (a resume reads nothing
        // at `Subscribe`).
        let rest = recovered.rest.as_ref().map_or(0, |r| r.remaining());
        (
            recovered.replay.map_or(0, |r| r.len() + rest),
            broker.history_bytes(),
        )
    };
    let floor = mistakes::history_floor(max_payload);
    assert_eq!(kept(floor), (1, floor));
    assert_eq!(kept(floor - 1).0, 0);
}
