//! Configurations that would load and then quietly do something other than what the operator
//! meant: a key listed twice (the first silently wins), a hook that asks nothing, a secret that
//! cannot go into an HTTP header, a timeout no one would wait for. "The operator is trusted,
//! but mistakes must fail loudly" (THREAT-MODEL.md): each is refused at load, naming the key as
//! written (`api.keys[1]`, `namespaces[2]`, `rpc.hooks[0]`) and never quoting a secret.

use std::time::Duration;

use super::Config;

/// The shortest API key `[api] keys` takes. JWT HS256 secrets need 32 bytes; an API key is
/// compared whole, never derived from, so half that still leaves guessing hopeless.
pub const MIN_API_KEY_LEN: usize = 16;
/// The longest `timeouts.drain`: a graceful shutdown that waits longer has stopped being one.
pub const MAX_DRAIN: Duration = Duration::from_secs(60 * 60);
/// The longest `rpc.max_timeout`: a session's call (and its slot) waits this long at most.
pub const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The shortest session timeout (`idle`, `keep_alive`, `hello`, `handshake`, `stream_open`,
/// `reply`): below it no real client keeps up (a handshake of "1ms" refuses everyone), so it
/// is a unit mistaken, not a choice.
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest session timeout: past it a peer holds what it holds for longer than anyone
/// waits, and an `idle` past QUIC's largest idle timeout would turn it off altogether.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(60 * 60);

impl Config {
    /// The checks of this module that the command-line flags cannot change, for
    /// `validate_loaded`.
    pub(super) fn refuse_mistakes(&self) -> Result<(), String> {
        // The first mistake of each kind, every kind: one `config check` shows them all.
        let problems = [
            self.refuse_api_key_mistakes(),
            self.refuse_namespace_repeats(),
            self.refuse_timeout_mistakes(),
            self.refuse_rpc_mistakes(),
            self.refuse_tenant_override_mistakes(),
        ];
        super::validate::all_of(problems.into_iter().filter_map(Result::err).collect())
    }

    /// `[[quotas.tenants]]`: an entry for a name no token can carry never applies, and a
    /// repeated tenant's later entry never does either.
    fn refuse_tenant_override_mistakes(&self) -> Result<(), String> {
        let tenants = &self.quotas.tenants;
        for (i, entry) in tenants.iter().enumerate() {
            quiver_proto::TenantId::parse(&entry.tenant)
                .map_err(|e| format!("quotas.tenants[{i}].tenant is not a tenant id: {e}"))?;
            if let Some(first) = tenants[..i].iter().position(|t| t.tenant == entry.tenant) {
                return Err(format!(
                    "quotas.tenants[{i}]: tenant {:?} is already configured by \
                     quotas.tenants[{first}], which would win: merge the two entries",
                    entry.tenant
                ));
            }
        }
        Ok(())
    }

    fn refuse_api_key_mistakes(&self) -> Result<(), String> {
        let keys = &self.api.keys;
        for (i, entry) in keys.iter().enumerate() {
            // Neither the key nor its length is printed: only which entry.
            if entry.key.is_empty() {
                return Err(format!("api.keys[{i}].key is empty"));
            }
            // `Authorization: Bearer KEY` carries visible ASCII, trimmed: any other key could
            // never be sent, so every request with it would be a 401.
            if !entry.key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "api.keys[{i}].key holds a character a request header cannot carry (a \
                     space, a control character or non-ASCII): use visible ASCII only"
                ));
            }
            if entry.key.len() < MIN_API_KEY_LEN {
                return Err(format!(
                    "api.keys[{i}].key is too short: an API key must be at least \
                     {MIN_API_KEY_LEN} bytes (a long random string)"
                ));
            }
            if let Some(first) = keys[..i].iter().position(|k| k.key == entry.key) {
                return Err(format!(
                    "api.keys[{i}] repeats the key of api.keys[{first}]: only the first would \
                     ever match; give each entry its own key"
                ));
            }
            if let Some(tenant) = &entry.tenant {
                if tenant.is_empty() {
                    return Err(format!(
                        "api.keys[{i}].tenant is empty: name a tenant, or leave tenant out for a \
                         key that acts on every tenant"
                    ));
                }
                // The rule tokens' `tenant` claims are held to (`auth.rs`). Its refusal names
                // at most the one offending character, never the value (a key pasted into the
                // wrong field stays unprinted).
                quiver_proto::TenantId::parse(tenant)
                    .map_err(|e| format!("api.keys[{i}].tenant is not a tenant id: {e}"))?;
            }
        }
        Ok(())
    }

    fn refuse_namespace_repeats(&self) -> Result<(), String> {
        for (i, ns) in self.namespaces.iter().enumerate() {
            if let Some(first) = self.namespaces[..i].iter().position(|n| n.name == ns.name) {
                return Err(format!(
                    "namespaces[{i}]: {:?} is already configured by namespaces[{first}], which \
                     would win: merge the two entries",
                    ns.name
                ));
            }
        }
        Ok(())
    }

    fn refuse_timeout_mistakes(&self) -> Result<(), String> {
        let t = &self.timeouts;
        for (name, value) in t.per_session() {
            // Zero has its own message (`validate`).
            if !value.is_zero() && value < MIN_SESSION_TIMEOUT {
                return Err(format!(
                    "timeouts.{name} ({value:?}) is under the minimum of {MIN_SESSION_TIMEOUT:?}"
                ));
            }
            if value > MAX_SESSION_TIMEOUT {
                return Err(format!(
                    "timeouts.{name} ({value:?}) is over the maximum of {MAX_SESSION_TIMEOUT:?}"
                ));
            }
        }
        // Keep-alives at or past the idle timeout let every quiet session idle out between
        // two of them (QUIC and WebSocket alike).
        if !t.idle.is_zero() && t.keep_alive >= t.idle {
            return Err(format!(
                "timeouts.keep_alive ({:?}) must be less than timeouts.idle ({:?}): quiet \
                 sessions would be closed between two keep-alives",
                t.keep_alive, t.idle
            ));
        }
        let drain = self.timeouts.drain;
        if drain.is_zero() {
            return Err(
                "timeouts.drain must be positive: it is how long a graceful shutdown waits for \
                 sessions to say goodbye"
                    .into(),
            );
        }
        if drain > MAX_DRAIN {
            return Err(format!(
                "timeouts.drain ({drain:?}) is over the maximum of {MAX_DRAIN:?}"
            ));
        }
        let max_timeout = self.rpc.max_timeout;
        if max_timeout > MAX_RPC_TIMEOUT {
            return Err(format!(
                "rpc.max_timeout ({max_timeout:?}) is over the maximum of {MAX_RPC_TIMEOUT:?}"
            ));
        }
        Ok(())
    }

    /// After `RpcConfig::validate` (namespaces well formed and not repeated).
    fn refuse_rpc_mistakes(&self) -> Result<(), String> {
        if let Some(secret) = &self.rpc.http_secret {
            // Set but empty: the backend would be told `Bearer ` and could check nothing.
            if secret.expose().trim().is_empty() {
                return Err(
                    "rpc.http_secret is empty: leave it out, or set a long random string the \
                     backend checks"
                        .into(),
                );
            }
            // A header value carries printable ASCII: with anything else (a line break, NUL,
            // tab, or a non-ASCII letter) the request cannot even be built.
            if !secret
                .expose()
                .bytes()
                .all(|b| b == b' ' || b.is_ascii_graphic())
            {
                return Err(
                    "rpc.http_secret holds a character a request header cannot carry (a control \
                     character such as a line break, NUL or tab, or non-ASCII): it is sent in the \
                     Authorization header, so every request to rpc.url would fail; use printable \
                     ASCII only"
                        .into(),
                );
            }
        }
        for (i, hook) in self.rpc.hooks.iter().enumerate() {
            // A session's next command waits for its hook (PROTOCOL.md §11.3): no longer than
            // a call may.
            if hook.timeout > MAX_RPC_TIMEOUT {
                return Err(format!(
                    "rpc.hooks[{i}].timeout ({:?}) is over the maximum of {MAX_RPC_TIMEOUT:?}",
                    hook.timeout
                ));
            }
            if !hook.subscribe && !hook.publish {
                return Err(format!(
                    "rpc.hooks[{i}] ({:?}) sets neither subscribe nor publish: it would ask the \
                     backend nothing; set subscribe = true or publish = true, or remove it",
                    hook.namespace
                ));
            }
        }
        Ok(())
    }

    /// Hooks need a way to the backend: `rpc.url` or NATS, which `--nats` may still give, so
    /// this is for [`Config::validate`], once the flags are applied.
    pub(super) fn refuse_hooks_without_backend(&self) -> Result<(), String> {
        if !self.rpc.hooks.is_empty() && self.nats.is_none() && self.rpc.url.is_none() {
            return Err(
                "rpc.hooks need a backend to ask: set rpc.url, or NATS ([nats] url, \
                 QUIVER_NATS__URL or --nats); without one no hook can be asked"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail API returns its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
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
                    &format!(
                        "[rpc]\nurl = \"http://127.0.0.1:9/q\"\nhttp_secret = \"abc{bad}def\"\n"
                    ),
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
}
