//! The accept loop: every CONNECT is checked (path, capacity, token) before a session exists.
//! Refusals are HTTP statuses: 404 for other paths, 429 when draining or full, 403 for any token
//! problem.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, info};
use wtransport::endpoint::{IncomingSession, SessionRequest};
use wtransport::Endpoint;

use crate::metrics as m;
use crate::server::Shared;
use crate::session;

pub async fn accept_loop(
    shared: Arc<Shared>,
    endpoint: Endpoint<wtransport::endpoint::endpoint_side::Server>,
    mut cert_updates: tokio::sync::mpsc::Receiver<crate::tls::CertUpdate>,
) {
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            // A reloaded certificate (SIGHUP or changed files): new handshakes get it.
            Some(update) = cert_updates.recv() => {
                update.apply(&endpoint);
                continue;
            }
            incoming = endpoint.accept() => incoming,
        };
        tokio::spawn(handle(shared.clone(), incoming));
    }
    // Sessions say goodbye on shutdown; give them the drain period to do so. Meanwhile new
    // CONNECTs still get an answer: 429 (the draining flag is set), so clients move on.
    let deadline = tokio::time::Instant::now() + shared.config.timeouts.drain;
    while shared.sessions.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            incoming = endpoint.accept() => {
                tokio::spawn(handle(shared.clone(), incoming));
            }
        }
    }
    endpoint.close(wtransport::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    info!("webtransport endpoint closed");
}

async fn handle(shared: Arc<Shared>, incoming: IncomingSession) {
    let request = match incoming.await {
        Ok(request) => request,
        Err(e) => {
            debug!(error = %e, "handshake failed");
            metrics::counter!(m::SESSIONS_REFUSED, "reason" => "handshake").increment(1);
            return;
        }
    };
    let (path, query) = match request.path().split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.path(), None),
    };
    if path != quiver_proto::CONNECT_PATH {
        refuse(request, "not_found").await;
        return;
    }
    if shared.draining.load(Ordering::Relaxed)
        || shared.sessions.load(Ordering::Relaxed) >= shared.config.limits.max_sessions
    {
        refuse(request, "unavailable").await;
        return;
    }
    let token = bearer(&request)
        .map(str::to_owned)
        .or_else(|| query.and_then(token_param))
        .unwrap_or_default();
    match shared.verifier.verify(&token) {
        Ok(grant) => match request.accept().await {
            Ok(conn) => session::run(shared, conn, grant).await,
            Err(e) => debug!(error = %e, "accept failed"),
        },
        Err(e) => {
            // The reason, never the token.
            info!(remote = %request.remote_address(), reason = %e, "session refused");
            refuse(request, e.label()).await;
        }
    }
}

async fn refuse(request: SessionRequest, reason: &'static str) {
    metrics::counter!(m::SESSIONS_REFUSED, "reason" => reason).increment(1);
    match reason {
        "not_found" => request.not_found().await,
        "unavailable" => request.too_many_requests().await,
        _ => request.forbidden().await,
    }
}

fn bearer(request: &SessionRequest) -> Option<&str> {
    request
        .headers()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn token_param(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_query() {
        assert_eq!(token_param("a=1&token=x%2By").as_deref(), Some("x+y"));
        assert_eq!(token_param("a=1"), None);
    }
}
