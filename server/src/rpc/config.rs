//! The `[rpc]` configuration section: call deadlines and bounds, the HTTP route, and the hooks
//! of each namespace (`[[rpc.hooks]]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// `Debug` prints `url` without its query (see below).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// Deadline of a `Call` that names none (`timeout_ms` 0).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest deadline a `Call` may ask for; longer ones are cut to it.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Calls one session may have waiting for the backend; more are refused with
    /// `rate_limited` until one is answered.
    pub max_in_flight: usize,
    /// Without NATS: the backend's URL; calls and hooks are POSTed here as JSON. Ignored when
    /// the server has NATS (requests go over NATS then).
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer SECRET` on every HTTP request, so the backend can tell
    /// the server's requests from anyone else's.
    pub http_secret: Option<Secret>,
    /// Time to open a TCP/TLS connection to `url`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle connections kept open to `url` for reuse.
    pub http_idle_connections: usize,
    /// HTTP requests in flight to `url` over the whole server; more wait for a slot within
    /// their own deadline, then fail with `deadline_exceeded`.
    pub http_max_in_flight: usize,
    /// Backend hooks, per room namespace.
    pub hooks: Vec<HookConfig>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(30),
            max_in_flight: 16,
            url: None,
            http_secret: None,
            connect_timeout: Duration::from_secs(2),
            http_idle_connections: 16,
            http_max_in_flight: 256,
            hooks: Vec::new(),
        }
    }
}

// `url` may carry a credential in its query (`?key=…`, for a backend that takes no header): a
// `Debug` print of the configuration shows it without (outside audit 105, F4). Every field is
// named, so a new one must be added here.
impl std::fmt::Debug for RpcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            timeout,
            max_timeout,
            max_in_flight,
            url,
            http_secret,
            connect_timeout,
            http_idle_connections,
            http_max_in_flight,
            hooks,
        } = self;
        f.debug_struct("RpcConfig")
            .field("timeout", timeout)
            .field("max_timeout", max_timeout)
            .field("max_in_flight", max_in_flight)
            .field("url", &url.as_deref().map(crate::config::shown_url))
            .field("http_secret", http_secret)
            .field("connect_timeout", connect_timeout)
            .field("http_idle_connections", http_idle_connections)
            .field("http_max_in_flight", http_max_in_flight)
            .field("hooks", hooks)
            .finish()
    }
}

/// The hooks of one namespace (a room's first token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub namespace: String,
    /// Ask the backend before every `Subscribe` in the namespace (after the token's patterns
    /// allowed it).
    #[serde(default)]
    pub subscribe: bool,
    /// Ask the backend before every `Publish` in the namespace: allow, deny or replace.
    #[serde(default)]
    pub publish: bool,
    /// How long the backend may take to decide.
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Allow when the backend cannot be reached or answers too late. Off by default: a hook
    /// that cannot decide denies (fails closed).
    #[serde(default)]
    pub fail_open: bool,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(2)
}

impl RpcConfig {
    /// Every problem of the section, a line each (`Ok` when there are none).
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        self.problems(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// Pushes every problem of the section onto `problems`.
    pub fn problems(&self, problems: &mut Vec<String>) {
        if self.timeout.is_zero() || self.max_timeout.is_zero() {
            problems.push("rpc.timeout and rpc.max_timeout must be positive".into());
        } else if self.timeout > self.max_timeout {
            problems.push(format!(
                "rpc.timeout ({:?}) must not exceed rpc.max_timeout ({:?})",
                self.timeout, self.max_timeout
            ));
        }
        if self.max_in_flight == 0 || self.http_max_in_flight == 0 {
            problems.push("rpc.max_in_flight and rpc.http_max_in_flight must be positive".into());
        }
        if let Some(url) = &self.url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                // Named without what may be credentials in it (`user:password@`).
                _ => problems.push(format!(
                    "rpc.url {:?} is not an http(s) URL",
                    crate::broker::nats::redacted_urls(url)
                )),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for hook in &self.hooks {
            let ns = &hook.namespace;
            if ns.contains('.') || quiver_proto::RoomName::parse(ns).is_err() {
                problems.push(format!(
                    "rpc.hooks: {ns:?} is not a namespace (one room-name token)"
                ));
            } else if !seen.insert(ns.as_str()) {
                problems.push(format!("rpc.hooks: namespace {ns:?} appears twice"));
            }
            if hook.timeout.is_zero() {
                problems.push(format!("rpc.hooks {ns:?}: timeout must be positive"));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use crate::Config;

    #[test]
    fn rpc_section_from_file_with_checks() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.rpc.hooks.is_empty() && c.rpc.url.is_none());
            jail.create_file(
                "q.toml",
                "[rpc]\ntimeout = \"1s\"\nurl = \"http://127.0.0.1:9/rpc\"\n\
                 [[rpc.hooks]]\nnamespace = \"order\"\nsubscribe = true\nfail_open = true\n",
            )?;
            let c = Config::load(Some("q.toml".as_ref())).map_err(|e| e.to_string())?;
            assert_eq!(c.rpc.timeout, std::time::Duration::from_secs(1));
            let hook = &c.rpc.hooks[0];
            assert!(hook.subscribe && !hook.publish && hook.fail_open);
            assert_eq!(hook.timeout, std::time::Duration::from_secs(2));
            for (bad, needle) in [
                ("[rpc]\ntimeout = \"1m\"\n", "rpc.timeout"),
                ("[rpc]\nurl = \"ftp://x\"\n", "rpc.url"),
                ("[rpc]\nurl = \"ftp://u:SECRETPW@x\"\n", "***@x"),
                ("[[rpc.hooks]]\nnamespace = \"a.b\"\n", "rpc.hooks"),
                (
                    "[[rpc.hooks]]\nnamespace = \"a\"\n[[rpc.hooks]]\nnamespace = \"a\"\n",
                    "twice",
                ),
            ] {
                jail.create_file("bad.toml", bad)?;
                let err = Config::load(Some("bad.toml".as_ref())).unwrap_err();
                assert!(err.to_string().contains(needle), "{bad}: {err}");
                assert!(!err.to_string().contains("SECRETPW"), "{bad}: {err}");
            }
            Ok(())
        });
    }
}
