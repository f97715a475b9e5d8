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
/// What the embedded broker counts for a history room apart from its publications' payloads,
/// at its largest: the room (`ROOM_OVERHEAD`, 384, and the longest tenant and room names) and
/// one kept publication's bookkeeping (`ENTRY_OVERHEAD`: 2 × 64 + 48 + 48 = 224), 800 bytes
/// (`broker/memory.rs`; a unit test checks the sum against the broker's own count).
pub const HISTORY_ROOM_BOOKKEEPING: u64 =
    384 + 224 + (quiver_proto::room::MAX_TENANT_LEN + quiver_proto::room::MAX_ROOM_LEN) as u64;

/// The smallest `limits.history_max_bytes` and `history_tenant_max_bytes` while a namespace
/// keeps history: one room holding one publication of `max_payload` bytes.
pub fn history_floor(max_payload: u32) -> u64 {
    HISTORY_ROOM_BOOKKEEPING + u64::from(max_payload)
}

impl Config {
    /// The checks of this module that the command-line flags cannot change, for
    /// `validate_loaded`: every mistake, a line each, so one `config check` shows them all
    /// (outside audit 48, F2: only the first of each kind was named, one round at a time).
    pub(super) fn mistakes(&self, problems: &mut Vec<String>) {
        self.api_key_mistakes(problems);
        self.namespace_repeats(problems);
        self.timeout_mistakes(problems);
        self.rpc_mistakes(problems);
        self.tenant_override_mistakes(problems);
        self.origin_mistakes(problems);
        self.history_budget_mistakes(problems);
    }

    /// `allowed_origins`: an entry no browser's `Origin` can ever equal (`app.example.com`, a
    /// path) refused every browser session with 403 while native clients, which send no
    /// `Origin`, kept working and hid the cause (outside audit 116, F2).
    fn origin_mistakes(&self, problems: &mut Vec<String>) {
        for (i, entry) in self.allowed_origins.iter().enumerate() {
            if let Err(why) = origin_mistake(entry) {
                problems.push(format!(
                    "allowed_origins[{i}] {why}: an entry is \"*\" or an origin as browsers \
                     send it, scheme://host[:port] (no path), e.g. \
                     \"https://app.example.com\""
                ));
            }
        }
    }

    /// The history budgets, while some namespace keeps history: one too small for a single
    /// room and one full publication kept nothing, so every publication made its room anew
    /// (a fresh epoch at offset 1) and every resume failed, with no word at load (outside
    /// audit 116, F3: 0 passed, read as "unlimited" like the quotas' 0).
    fn history_budget_mistakes(&self, problems: &mut Vec<String>) {
        let Some(ns) = self.namespaces.iter().find(|ns| ns.history_size > 0) else {
            return;
        };
        let l = &self.limits;
        let floor = history_floor(l.max_payload);
        for (name, value) in [
            ("history_max_bytes", l.history_max_bytes),
            ("history_tenant_max_bytes", l.history_tenant_max_bytes),
        ] {
            if value < floor {
                problems.push(format!(
                    "limits.{name} ({value}) must be at least {floor} while a namespace keeps \
                     history (namespace {:?}): one room's bookkeeping ({HISTORY_ROOM_BOOKKEEPING} \
                     bytes) plus one publication of limits.max_payload ({}); below that history \
                     keeps nothing and every resume fails",
                    ns.name, l.max_payload
                ));
            }
        }
    }

    /// `[[quotas.tenants]]`: an entry for a name no token can carry never applies, and a
    /// repeated tenant's later entry never does either.
    fn tenant_override_mistakes(&self, problems: &mut Vec<String>) {
        let tenants = &self.quotas.tenants;
        for (i, entry) in tenants.iter().enumerate() {
            if let Err(e) = quiver_proto::TenantId::parse(&entry.tenant) {
                problems.push(format!(
                    "quotas.tenants[{i}].tenant is not a tenant id: {e}"
                ));
            } else if let Some(first) = tenants[..i].iter().position(|t| t.tenant == entry.tenant) {
                problems.push(format!(
                    "quotas.tenants[{i}]: tenant {:?} is already configured by \
                     quotas.tenants[{first}], which would win: merge the two entries",
                    entry.tenant
                ));
            }
        }
    }

    /// Each entry's key (its first mistake) and tenant.
    fn api_key_mistakes(&self, problems: &mut Vec<String>) {
        let keys = &self.api.keys;
        for (i, entry) in keys.iter().enumerate() {
            if let Err(e) = api_key_mistake(i, &entry.key, &keys[..i]) {
                problems.push(e);
            }
            if let Some(tenant) = &entry.tenant {
                if tenant.is_empty() {
                    problems.push(format!(
                        "api.keys[{i}].tenant is empty: name a tenant, or leave tenant out for a \
                         key that acts on every tenant"
                    ));
                } else if let Err(e) = quiver_proto::TenantId::parse(tenant) {
                    // The rule tokens' `tenant` claims are held to (`auth.rs`). Its refusal
                    // names at most the one offending character, never the value (a key pasted
                    // into the wrong field stays unprinted).
                    problems.push(format!("api.keys[{i}].tenant is not a tenant id: {e}"));
                }
            }
        }
    }

    fn namespace_repeats(&self, problems: &mut Vec<String>) {
        for (i, ns) in self.namespaces.iter().enumerate() {
            if let Some(first) = self.namespaces[..i].iter().position(|n| n.name == ns.name) {
                problems.push(format!(
                    "namespaces[{i}]: {:?} is already configured by namespaces[{first}], which \
                     would win: merge the two entries",
                    ns.name
                ));
            }
        }
    }

    /// Every timeout mistake, a line each (audit round 2, S12: not only the first).
    fn timeout_mistakes(&self, problems: &mut Vec<String>) {
        let t = &self.timeouts;
        for (name, value) in t.per_session() {
            // Zero has its own message (`validate`).
            if !value.is_zero() && value < MIN_SESSION_TIMEOUT {
                problems.push(format!(
                    "timeouts.{name} ({value:?}) is under the minimum of {MIN_SESSION_TIMEOUT:?}"
                ));
            }
            if value > MAX_SESSION_TIMEOUT {
                problems.push(format!(
                    "timeouts.{name} ({value:?}) is over the maximum of {MAX_SESSION_TIMEOUT:?}"
                ));
            }
        }
        // Keep-alives at or past the idle timeout let every quiet session idle out between
        // two of them (QUIC and WebSocket alike).
        if !t.idle.is_zero() && t.keep_alive >= t.idle {
            problems.push(format!(
                "timeouts.keep_alive ({:?}) must be less than timeouts.idle ({:?}): quiet \
                 sessions would be closed between two keep-alives",
                t.keep_alive, t.idle
            ));
        }
        let drain = self.timeouts.drain;
        if drain.is_zero() {
            problems.push(
                "timeouts.drain must be positive: it is how long a graceful shutdown waits for \
                 sessions to say goodbye"
                    .into(),
            );
        }
        if drain > MAX_DRAIN {
            problems.push(format!(
                "timeouts.drain ({drain:?}) is over the maximum of {MAX_DRAIN:?}"
            ));
        }
        let max_timeout = self.rpc.max_timeout;
        if max_timeout > MAX_RPC_TIMEOUT {
            problems.push(format!(
                "rpc.max_timeout ({max_timeout:?}) is over the maximum of {MAX_RPC_TIMEOUT:?}"
            ));
        }
        // The only other bound on connecting and the TLS handshake to `rpc.url`: "0s" fired at
        // the next timer tick, so every call failed and every hooked command was denied, with
        // no word at load (outside audit 105, F6); "100y" waited for ever.
        let connect = self.rpc.connect_timeout;
        if !(MIN_SESSION_TIMEOUT..=MAX_RPC_TIMEOUT).contains(&connect) {
            problems.push(format!(
                "rpc.connect_timeout ({connect:?}) must be from {MIN_SESSION_TIMEOUT:?} to \
                 {MAX_RPC_TIMEOUT:?}"
            ));
        }
    }

    /// The TCP listeners, once the flags are in (`--http`, `--cert`/`--key`), for
    /// [`Config::validate`]: an `https` that would never be served, and two listeners on one
    /// address (the second bind would fail at start, naming neither key).
    pub(super) fn refuse_listener_mistakes(&self) -> Result<(), String> {
        let real_certificate = self.cert.is_some() && self.key.is_some();
        if let Some(https) = self.https {
            if !real_certificate {
                return Err(format!(
                    "https ({https}) is set without cert and key: the https listener (wss, SSE, \
                     the API and health over TLS) is served only with a real certificate, never \
                     the generated one (WebTransport only); set cert and key (or --cert and \
                     --key), or remove https"
                ));
            }
        }
        // Without `https` the TLS listener takes `listen`'s address, on TCP.
        let (key, tls) = match self.https {
            Some(addr) => ("https", addr),
            None => ("listen", self.listen),
        };
        if real_certificate && same_tcp_address(self.http, tls) {
            return Err(format!(
                "http ({}) and {key} ({tls}) both bind tcp port {}: give them different \
                 addresses{}",
                self.http,
                tls.port(),
                if key == "listen" {
                    " (https defaults to listen's address)"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }

    /// After `RpcConfig::problems` (namespaces well formed and not repeated).
    fn rpc_mistakes(&self, problems: &mut Vec<String>) {
        if let Some(url) = &self.rpc.url {
            if let Err(e) = super::url_credentials::refuse_rpc_url_credentials(url) {
                problems.push(e.to_string());
            }
        }
        if let Some(secret) = &self.rpc.http_secret {
            // Set but empty: the backend would be told `Bearer ` and could check nothing.
            if secret.expose().trim().is_empty() {
                problems.push(
                    "rpc.http_secret is empty: leave it out, or set a long random string the \
                     backend checks"
                        .into(),
                );
            }
            // A header value carries printable ASCII: with anything else (a line break, NUL,
            // tab, or a non-ASCII letter) the request cannot even be built.
            else if !secret
                .expose()
                .bytes()
                .all(|b| b == b' ' || b.is_ascii_graphic())
            {
                problems.push(
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
                problems.push(format!(
                    "rpc.hooks[{i}].timeout ({:?}) is over the maximum of {MAX_RPC_TIMEOUT:?}",
                    hook.timeout
                ));
            }
            if !hook.subscribe && !hook.publish {
                problems.push(format!(
                    "rpc.hooks[{i}] ({:?}) sets neither subscribe nor publish: it would ask the \
                     backend nothing; set subscribe = true or publish = true, or remove it",
                    hook.namespace
                ));
            }
        }
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

/// The first mistake of `api.keys[i]`'s key, given the entries before it. Neither the key nor
/// its length is printed: only which entry.
fn api_key_mistake(i: usize, key: &str, before: &[super::ApiKey]) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("api.keys[{i}].key is empty"));
    }
    // `Authorization: Bearer KEY` carries visible ASCII, trimmed: any other key could never be
    // sent, so every request with it would be a 401.
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "api.keys[{i}].key holds a character a request header cannot carry (a space, a \
             control character or non-ASCII): use visible ASCII only"
        ));
    }
    if key.len() < MIN_API_KEY_LEN {
        return Err(format!(
            "api.keys[{i}].key is too short: an API key must be at least {MIN_API_KEY_LEN} bytes \
             (a long random string)"
        ));
    }
    if let Some(first) = before.iter().position(|k| k.key == key) {
        return Err(format!(
            "api.keys[{i}] repeats the key of api.keys[{first}]: only the first would ever \
             match; give each entry its own key"
        ));
    }
    Ok(())
}

/// Why `entry` can never equal a browser's `Origin` (`scheme://host[:port]`, the default port
/// left out, compared ignoring ASCII case and one trailing `/`: `transport::check_origin`), as
/// the words after `allowed_origins[i]`. The value is not quoted: an entry with user info
/// would print a password.
fn origin_mistake(entry: &str) -> Result<(), String> {
    // `null` is what a sandboxed frame or a `file:` page sends: an operator may allow it
    // (every such page then passes; review 118, F6).
    if entry == "*" || entry.eq_ignore_ascii_case("null") {
        return Ok(());
    }
    if entry.is_empty() {
        return Err("is empty".into());
    }
    if !entry.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "holds a space, a control character or non-ASCII (a browser sends an \
             internationalised host name as xn--…)"
                .into(),
        );
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err("has no scheme (http:// or https://)".into());
    };
    // Pages are http(s); an extension's or an app shell's origin has a scheme of its own
    // (`chrome-extension://id`, `moz-extension://id`, `tauri://localhost`), also allowed. A
    // WebSocket URL is no page's origin.
    let valid_scheme = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let default_port: Option<u16> = match scheme.to_ascii_lowercase().as_str() {
        _ if !valid_scheme => return Err("has no valid scheme".into()),
        "https" => Some(443),
        "http" => Some(80),
        "ws" | "wss" => {
            return Err("is a WebSocket URL, not a page's origin (https://… or http://…)".into())
        }
        _ => None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err("has user info (…@ before the host), which an origin never carries".into());
    }
    // One trailing `/` is forgiven, as when matching; anything after the host is not.
    let tail = tail.strip_prefix('/').unwrap_or(tail);
    match tail.chars().next() {
        None => {}
        Some('?') => return Err("has a query (?…)".into()),
        Some('#') => return Err("has a fragment (#…)".into()),
        Some(_) => return Err("has a path".into()),
    }
    // `[::1]:8443`, `app.example.com:8443`, `app.example.com`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let Some((address, after)) = v6.split_once(']') else {
                return Err("has an IPv6 host without its closing ]".into());
            };
            match address.parse::<std::net::Ipv6Addr>() {
                // Browsers write the shortest form, in lower case, compared ignoring case.
                Ok(ip) if ip.to_string().eq_ignore_ascii_case(address) => {}
                Ok(ip) => {
                    return Err(format!(
                        "has an IPv6 host not written as browsers write it ([{ip}])"
                    ))
                }
                Err(_) => return Err("has an IPv6 host that is no IPv6 address".into()),
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    "has something other than :port after its IPv6 host".to_owned()
                })?),
            };
            (address, port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if host.contains('*') {
        return Err(
            "has a wildcard in its host: only the whole entry \"*\" is one; list each origin"
                .into(),
        );
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("has a host holding a character no host name has".into());
    }
    if let Some(port) = port {
        let number = match port.parse::<u16>() {
            Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err("has a port that is not 1 to 65535".into()),
        };
        if Some(number) == default_port {
            return Err(format!(
                "names its scheme's default port ({number}), which browsers leave out of \
                 Origin: drop the port"
            ));
        }
    }
    Ok(())
}

/// Whether two TCP listeners would collide: the same port (not 0, which picks a free one) on
/// the same address, or on the wildcard address and any other (of either family: `[::]` is
/// dual-stack).
fn same_tcp_address(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    // A wildcard covers its own family, and `[::]` IPv4 too.
    let covers = |w: std::net::IpAddr, other: std::net::IpAddr| {
        w.is_unspecified() && (w.is_ipv6() || w.is_ipv4() == other.is_ipv4())
    };
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

#[cfg(test)]
mod tests;
