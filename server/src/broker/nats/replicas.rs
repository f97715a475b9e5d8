//! `nats.replicas`: how many copies JetStream keeps of every stream and key-value bucket Quiver
//! makes (outside audit 112, F5: all were made with one, so losing one node of a three-node
//! NATS cluster stopped the history, presence, revocations and idempotency keys it held).
//!
//! A stream or bucket made earlier with another count is brought to the configured one when an
//! instance opens it (JetStream moves a stream between replica counts in place, keeping its
//! messages and sequences). When JetStream refuses (a single nats-server, which takes only 1;
//! fewer nodes up than the count asks for), the stream is used as it is, with a warning that
//! names the setting: refusing it would stop what works today over a copy count.

use async_nats::jetstream::{self, kv, stream};
use tracing::warn;

/// The configured count (1 without `[nats]`, which makes no stream anyway).
pub(crate) fn configured(config: &crate::Config) -> usize {
    config.nats.as_ref().map_or(1, |n| n.replicas)
}

/// Warns when more than one copy is configured and the NATS server is part of no cluster: a
/// single nats-server refuses every new stream and bucket of more copies, so history, presence,
/// revocations and idempotency keys fail at their first use (existing ones are used as they
/// are). Said once per connection, where an operator looks at start.
pub(crate) fn warn_if_unclustered(config: &crate::Config, server: &async_nats::ServerInfo) {
    let wanted = configured(config);
    if wanted > 1 && server.cluster.is_none() {
        warn!(
            replicas = wanted,
            server = %server.server_name,
            "nats.replicas asks for more than one copy, but this NATS server is part of no \
             cluster: JetStream will refuse new streams and buckets (history, presence, \
             revocations, idempotency keys); set nats.replicas = 1, or connect to a cluster"
        );
    }
}

/// What JetStream reports as 0 is its default, one copy.
pub(crate) fn of(config: &stream::Config) -> usize {
    config.num_replicas.max(1)
}

/// `current` (a stream's configuration as JetStream has it) brought to `wanted` copies; returns
/// the configuration as it is afterwards (unchanged when JetStream refused, with a warning).
pub(crate) async fn bring_stream_to(
    js: &jetstream::Context,
    current: stream::Config,
    wanted: usize,
) -> stream::Config {
    let has = of(&current);
    if has == wanted {
        return current;
    }
    let name = current.name.clone();
    let update = stream::Config {
        num_replicas: wanted,
        ..current.clone()
    };
    match js.update_stream(&update).await {
        Ok(info) => {
            warn!(
                stream = %name,
                from = has,
                to = wanted,
                "replicas of an existing stream changed to nats.replicas"
            );
            info.config
        }
        Err(e) => {
            refused(&name, has, wanted, &e);
            current
        }
    }
}

fn refused(name: &str, has: usize, wanted: usize, e: &dyn std::fmt::Display) {
    warn!(
        stream = %name,
        has,
        configured = wanted,
        error = %e,
        "JetStream refused to change this stream's replicas to nats.replicas: it keeps {has} \
         (a single nats-server takes only 1; a cluster needs that many nodes up); used as it is"
    );
}

/// The bucket `config` describes (its `num_replicas` set from `nats.replicas` by the caller),
/// created or brought to it. One JetStream cannot bring there is used as it is, with a warning,
/// rather than leave what needs it broken: another storage (a stream's storage never changes:
/// outside audit, presence broken until the bucket was deleted by hand) or another replica
/// count it cannot place now. Its other settings (an age limit) are still brought up to date.
pub(crate) async fn key_value(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, jetstream::context::CreateKeyValueError> {
    let e = match js.create_or_update_key_value(config.clone()).await {
        Ok(kv) => return Ok(kv),
        Err(e) => e,
    };
    let stream_name = format!("KV_{}", config.bucket);
    let Ok(mut existing) = js.get_stream(&stream_name).await else {
        return Err(e);
    };
    let Ok(info) = existing.info().await else {
        return Err(e);
    };
    let (storage, replicas) = (info.config.storage, of(&info.config));
    let wanted = config.num_replicas.max(1);
    if storage == config.storage && replicas == wanted {
        return Err(e);
    }
    if storage != config.storage {
        warn!(
            bucket = %config.bucket,
            has = ?storage,
            configured = ?config.storage,
            "this bucket keeps its storage (nats.storage cannot change for an existing bucket: \
             delete {stream_name} to switch it)"
        );
    }
    if replicas != wanted {
        refused(&stream_name, replicas, wanted, &e);
    }
    js.create_or_update_key_value(kv::Config {
        storage,
        num_replicas: replicas,
        ..config
    })
    .await
}
