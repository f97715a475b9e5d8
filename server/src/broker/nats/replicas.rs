//! `nats.replicas`: how many copies JetStream keeps of every stream and key-value bucket Quiver
//! makes (outside audit 112, F5: all were made with one, so losing one node of a three-node
//! NATS cluster stopped the history, presence, revocations and idempotency keys it held).
//!
//! Unset, new streams and buckets get one copy and existing ones keep whatever count they have
//! (an operator may have raised it with `nats stream edit`: an upgrade must not lower it,
//! review 118, F1). Set, a stream or bucket made earlier with another count is brought to the
//! configured one when an instance opens it (JetStream moves a stream between replica counts in place, keeping its
//! messages and sequences). When JetStream refuses (a single nats-server, which takes only 1;
//! fewer nodes up than the count asks for), the stream is used as it is, with a warning that
//! names the setting: refusing it would stop what works today over a copy count.

use async_nats::jetstream::{self, kv, stream};
use tracing::warn;

/// The configured count, if `nats.replicas` is set.
pub(crate) fn configured(config: &crate::Config) -> Option<usize> {
    config.nats.as_ref().and_then(|n| n.replicas)
}

/// The copies of a stream or bucket made now: the configured count, else one.
pub(crate) fn for_new(config: &crate::Config) -> usize {
    configured(config).unwrap_or(1)
}

/// Warns when more than one copy is configured and the NATS server is part of no cluster: a
/// single nats-server refuses every new stream and bucket of more copies, so history, presence,
/// revocations and idempotency keys fail at their first use (existing ones are used as they
/// are). Said once per connection, where an operator looks at start.
pub(crate) fn warn_if_unclustered(config: &crate::Config, server: &async_nats::ServerInfo) {
    let wanted = for_new(config);
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

/// `current` (a stream's configuration as JetStream has it) brought to `wanted` copies (unset:
/// left as it is); returns the configuration as it is afterwards (unchanged when JetStream
/// refused, with a warning).
pub(crate) async fn bring_stream_to(
    js: &jetstream::Context,
    current: stream::Config,
    wanted: Option<usize>,
) -> stream::Config {
    let has = of(&current);
    let Some(wanted) = wanted.filter(|wanted| *wanted != has) else {
        return current;
    };
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

/// The bucket `config` describes, with `wanted` copies (`nats.replicas`; unset: one for a new
/// bucket, an existing one keeps its count), created or brought to it. One JetStream cannot bring there is used as it is, with a warning,
/// rather than leave what needs it broken: another storage (a stream's storage never changes:
/// outside audit, presence broken until the bucket was deleted by hand) or another replica
/// count it cannot place now. Its other settings (an age limit) are still brought up to date.
pub(crate) async fn key_value(
    js: &jetstream::Context,
    mut config: kv::Config,
    wanted: Option<usize>,
) -> Result<kv::Store, jetstream::context::CreateKeyValueError> {
    config.num_replicas = match wanted {
        Some(wanted) => wanted,
        // An update names a count whatever it is given: an existing bucket's own is kept (an
        // answer that is not "no such bucket" fails the open rather than guess a count).
        None => match js.get_stream(format!("KV_{}", config.bucket)).await {
            Ok(mut existing) => match existing.info().await {
                Ok(info) => of(&info.config),
                Err(e) => return Err(unreadable(e)),
            },
            Err(e) if not_found(&e) => 1,
            Err(e) => return Err(unreadable(e)),
        },
    };
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

/// Whether the stream asked for does not exist.
fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// An existing bucket whose count could not be read, as an error of its open.
fn unreadable(e: impl std::fmt::Display) -> jetstream::context::CreateKeyValueError {
    jetstream::context::CreateKeyValueError::with_source(
        jetstream::context::CreateKeyValueErrorKind::JetStream,
        e.to_string(),
    )
}
