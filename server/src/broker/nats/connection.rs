//! How every NATS connection of an instance is made and watched (the broker's, the control
//! plane's in `control.rs`, the calls' in `rpc/nats.rs`): credentials and URLs, pings and the
//! reconnect back-off that set the failover's time, how many messages each subscription may
//! hold, and what a loss or a dropped message counts and logs.

use std::sync::Arc;

use tracing::{debug, info, warn};

use super::unavailable;
use crate::broker::BrokerError;
use crate::config::NatsConfig;
use crate::metrics as m;

/// The configured NATS URLs as a log may show them: user names, passwords and tokens in them
/// replaced by `***`.
pub fn redacted_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            match u.split_once("://") {
                Some((scheme, rest)) => match rest.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://***@{host}"),
                    None => u.to_owned(),
                },
                None => match u.rsplit_once('@') {
                    Some((_, host)) => format!("***@{host}"),
                    None => u.to_owned(),
                },
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How often every NATS connection pings the server. async-nats gives up on a connection with
/// more than two pings unanswered, so a nats-server that stops answering (frozen, a dead path
/// with the socket still open) is noticed within three intervals, instead of three minutes with
/// its 60 s default: until then publishes would be taken and `/readyz` would stay green.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest wait between two attempts to reach NATS again.
const RECONNECT_AT_MOST: std::time::Duration = std::time::Duration::from_secs(1);

/// The wait before reconnect attempt `attempts` (1 first): none, then doubling from 1 ms up to
/// [`RECONNECT_AT_MOST`], each spread over ±25 %. async-nats's own waits up to 4 s, so a
/// cluster came back up to 4 s after NATS did, every instance in the same millisecond (outside
/// audit 30, F2); this is the failover's time, so NATS is asked again within a second.
fn reconnect_delay(attempts: usize) -> std::time::Duration {
    if attempts <= 1 {
        return std::time::Duration::ZERO;
    }
    let doubled = 1u64 << (attempts - 1).min(20);
    let wait = std::time::Duration::from_millis(doubled).min(RECONNECT_AT_MOST);
    wait.mul_f64(rand::random_range(0.75..1.25))
}

/// How many messages each NATS subscription holds before async-nats drops what comes next (a
/// slow consumer, client-side: the connection's reader never waits for a subscriber, so
/// nats-server sees nothing). async-nats's default is 65,536 whatever their size: a tenant's
/// backend publishing large messages on subjects an instance reads made it buffer gigabytes
/// (outside cluster audit 112, F4). The broker's subscriptions (a room's, its events', the
/// history consumers') hold about [`BROKER_SUBSCRIPTION_BYTES`] of publications of
/// `limits.max_payload` (4,369 at the defaults), at least [`MIN_SUBSCRIPTION_CAPACITY`] and
/// at most async-nats's default. What the broker drops is counted
/// (`quiver_nats_slow_consumer_total{connection}`) and logged within a budget ([`watched`]).
pub fn broker_subscription_capacity(max_payload: u32) -> usize {
    (BROKER_SUBSCRIPTION_BYTES / (max_payload as usize).max(1))
        .clamp(MIN_SUBSCRIPTION_CAPACITY, DEFAULT_SUBSCRIPTION_CAPACITY)
}

/// The bytes of publications one broker subscription holds at most (of `limits.max_payload`;
/// a larger message, which only something else than Quiver publishes, is dropped as it is
/// taken out, so until then each may be as large as nats-server's `max_payload`).
pub const BROKER_SUBSCRIPTION_BYTES: usize = 256 << 20;
/// The fewest messages a subscription holds: a history listener's ordered consumer asks for
/// 500 at a time and again at 250 left (`vendor/async-nats`, `ORDERED_BATCH`), a read consumer
/// 256, and those must never be dropped for want of room.
pub const MIN_SUBSCRIPTION_CAPACITY: usize = 1_024;
/// async-nats's own default, the most a subscription holds.
const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 65_536;
/// The control plane's and the calls' connections: what Quiver sends on them is small (a
/// control message is at most a few KiB, a reply at most a call's answer) and read at once
/// (a control message costs one pass over the instance's sessions, a reply a map lookup), so
/// 1,024 messages is a long queue for them, and at most 1,024 × nats-server's `max_payload`
/// (1 GiB at its default of 1 MiB) per subscription from a hostile publisher.
pub const CONTROL_SUBSCRIPTION_CAPACITY: usize = 1_024;

/// WARN lines of messages NATS subscriptions dropped (every connection together): one event
/// per message, thousands a second in a flood (FACTS.md).
static SLOW_CONSUMER_LOGGED: crate::log_budget::LogBudget =
    crate::log_budget::LogBudget::per_second(1);

/// Whether `client` is connected to NATS now (not pending its first connection, not between
/// a loss and the next connection). Whatever asks NATS for something no client waits for asks
/// this first: async-nats would hold the request in its queue until NATS is back (`Inner`'s
/// `connected`, the presence refresh).
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Messages dropped by chosen subscriptions (by their `sid`, which async-nats's slow-consumer
/// event names): what must be made up for when one of theirs is lost. The control plane's
/// revocations are loaded again from the store when this moves for the revocation
/// subscription; the drops of its other subscriptions (disconnects and unsubscribes, which a
/// tenant's backend can flood) do not (review 113, F1: each of them made every instance load
/// the whole store once a second for as long as the flood lasted).
///
/// A `static`, and the sids of every connection it is given together: an instance holds one
/// control connection, and several instances in one process (tests) each add their own
/// subscription's sid, so a drop on another of theirs with the same sid only costs a load.
pub struct Drops {
    sids: std::sync::Mutex<Vec<u64>>,
    count: std::sync::atomic::AtomicU64,
}

/// The most sids one [`Drops`] follows (one per instance in the process, the same one for
/// most): past it, the oldest is forgotten.
const MOST_WATCHED: usize = 64;

impl Drops {
    pub const fn new() -> Self {
        Self {
            sids: std::sync::Mutex::new(Vec::new()),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts from now on what `subscription` drops. Called as soon as it is made: NATS
    /// delivers nothing to it before the server has its `SUB`, which follows.
    pub fn watch(&self, subscription: &async_nats::Subscriber) {
        let sid = subscription.sid();
        let mut sids = self.sids.lock().unwrap_or_else(|e| e.into_inner());
        if !sids.contains(&sid) {
            if sids.len() >= MOST_WATCHED {
                sids.remove(0);
            }
            sids.push(sid);
        }
    }

    /// The drops counted so far (wrapping): only a change means anything.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn dropped(&self, sid: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let ours = self
            .sids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&sid);
        if ours {
            self.count.fetch_add(1, Relaxed);
        }
    }
}

impl Default for Drops {
    fn default() -> Self {
        Self::new()
    }
}

/// What a message dropped by a full subscription means beyond the connection's count. Given
/// to [`watched`] as an `Option<&'static Drops>` (`None`: [`OnDrop::Counted`]) or as a
/// function of the subscription's sid ([`OnDrop::Each`]).
#[derive(Clone)]
pub enum OnDrop {
    /// Nothing more.
    Counted,
    /// A publication this instance's subscribers never get (the broker's connection): counted
    /// in `quiver_deliveries_dropped_total{reason="broker_slow_consumer"}` too.
    Delivery,
    /// Counted in `drops` if the subscription is one it follows.
    Watched(&'static Drops),
    /// Handed to this function, with the subscription's sid (the calls' connection counts its
    /// reply subscriptions' drops, `rpc/nats.rs`).
    Each(Arc<dyn Fn(u64) + Send + Sync>),
}

impl From<Option<&'static Drops>> for OnDrop {
    fn from(drops: Option<&'static Drops>) -> Self {
        drops.map_or(OnDrop::Counted, OnDrop::Watched)
    }
}

impl<F: Fn(u64) + Send + Sync + 'static> From<F> for OnDrop {
    fn from(each: F) -> Self {
        OnDrop::Each(Arc::new(each))
    }
}

/// One message subscription `sid` of `connection` dropped for want of room: counted
/// (`quiver_nats_slow_consumer_total{connection}`), and what else `on_drop` says, and said
/// within [`SLOW_CONSUMER_LOGGED`]. Only the events async-nats manages to report are counted:
/// it queues at most 128 of them and drops the rest, so a flood is undercounted. Every
/// connection's event callback handles the event here.
pub(super) fn slow_consumer(connection: &'static str, sid: u64, on_drop: OnDrop) {
    metrics::counter!(m::NATS_SLOW_CONSUMER, "connection" => connection).increment(1);
    match on_drop {
        OnDrop::Counted => {}
        OnDrop::Delivery => {
            metrics::counter!(m::DELIVERIES_DROPPED, "reason" => "broker_slow_consumer")
                .increment(1);
        }
        OnDrop::Watched(drops) => drops.dropped(sid),
        OnDrop::Each(dropped) => dropped(sid),
    }
    if let Some(not_logged) = SLOW_CONSUMER_LOGGED.admit() {
        warn!(
            connection,
            not_logged,
            "a NATS subscription dropped a message: it was full (this instance reads slower than NATS delivers)"
        );
    }
}

/// `options` with the event callback of the control plane's and the calls' own connections
/// (the broker's has its own, in `NatsBroker::connect`): a loss is counted,
/// `quiver_nats_disconnects_total{connection}`, and is one WARN line until the connection is
/// back. A tenant's backend flooding subjects every instance reads can get these connections
/// dropped by nats-server as slow consumers, and nothing said so (outside audit 69, F1). A
/// message dropped by a full subscription is counted too ([`slow_consumer`]), and what
/// `on_drop` says: in a [`Drops`] if it is one of the subscriptions that follows (the control
/// plane loads the stored revocations again when that moves, since the message lost was a
/// revocation: outside cluster audit 112, F2), or handed to a function of the subscription's
/// sid (the calls' connection counts every reply subscription's drops).
pub fn watched(
    options: async_nats::ConnectOptions,
    connection: &'static str,
    on_drop: impl Into<OnDrop>,
) -> async_nats::ConnectOptions {
    let on_drop = on_drop.into();
    let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    options.event_callback(move |event| {
        let (warned, on_drop) = (warned.clone(), on_drop.clone());
        async move {
            use std::sync::atomic::Ordering::Relaxed;
            match event {
                async_nats::Event::Disconnected => {
                    metrics::counter!(m::NATS_DISCONNECTS, "connection" => connection).increment(1);
                    if !warned.swap(true, Relaxed) {
                        warn!(connection, "nats connection lost; reconnecting");
                    }
                }
                async_nats::Event::Connected => {
                    if warned.swap(false, Relaxed) {
                        info!(connection, "nats connection back");
                    }
                }
                async_nats::Event::SlowConsumer(sid) => slow_consumer(connection, sid, on_drop),
                other => debug!(connection, event = %other, "nats"),
            }
        }
    })
}

/// Connects with `options` plus what the configuration says: credentials, TLS, the URLs. The
/// broker and the control plane (`control.rs`) each hold a connection made here.
pub async fn connect_with(
    nats: &NatsConfig,
    mut options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, BrokerError> {
    options = options
        .ping_interval(PING_INTERVAL)
        .reconnect_delay_callback(reconnect_delay);
    // Credentials in the URLs authenticate, as with every NATS client (async-nats ignores
    // them); validation refuses them beside nats.user/password/token/credentials.
    let (bare_urls, url_auth) = nats
        .connect_urls()
        .map_err(|e| BrokerError::Failed(e.to_string()))?;
    match url_auth {
        Some(crate::config::NatsUrlAuth::UserPassword { user, password }) => {
            options = options.user_and_password(user, password.expose().to_owned());
        }
        Some(crate::config::NatsUrlAuth::Token(token)) => {
            options = options.token(token.expose().to_owned());
        }
        None => {}
    }
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &nats.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(creds) = &nats.credentials {
        options = options.credentials_file(creds).await.map_err(unavailable)?;
    }
    if let Some(ca) = &nats.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> = bare_urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| BrokerError::Failed(format!("nats url: {e}")))?;
    options.connect(urls).await.map_err(unavailable)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nats_is_asked_again_within_a_second_and_a_quarter() {
        use std::time::Duration;
        assert_eq!(super::reconnect_delay(1), Duration::ZERO);
        let mut longest = Duration::ZERO;
        for attempts in 2..200 {
            let wait = super::reconnect_delay(attempts);
            assert!(wait <= Duration::from_millis(1_250), "{attempts}: {wait:?}");
            longest = longest.max(wait);
        }
        // It does back off, and spreads the instances' attempts.
        assert!(longest >= Duration::from_millis(750), "{longest:?}");
        let spread: std::collections::HashSet<_> =
            (0..20).map(|_| super::reconnect_delay(50)).collect();
        assert!(spread.len() > 1);
    }

    /// The sid read from a subscription is the one async-nats gave it (consecutive on one
    /// client), and a [`super::Drops`] counts only the drops of the subscriptions it follows.
    #[tokio::test]
    async fn a_subscriptions_sid_is_read() {
        // Nothing listens there: the client is made at once and takes subscriptions into its
        // queue.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .expect("a client");
        let first = client.subscribe("a").await.expect("a subscription");
        let second = client.subscribe("b").await.expect("a subscription");
        // `Subscriber::sid` is Quiver's patch to async-nats (PATCHES.md): the id its
        // `SlowConsumer` event names.
        let sid = first.sid();
        assert_eq!(second.sid(), sid + 1);
        let drops = super::Drops::new();
        drops.watch(&second);
        drops.dropped(sid);
        assert_eq!(drops.count(), 0, "a drop on a subscription not followed");
        drops.dropped(sid + 1);
        assert_eq!(drops.count(), 1);
    }

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            super::redacted_urls("nats://u:secret@a:4222, tls://tok@b"),
            "nats://***@a:4222,tls://***@b"
        );
        assert_eq!(super::redacted_urls("nats://a:4222"), "nats://a:4222");
        assert_eq!(super::redacted_urls("u:p@a:4222"), "***@a:4222");
    }
}
