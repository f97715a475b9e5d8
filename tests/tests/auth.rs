//! Authentication happens at the CONNECT: every bad token is answered 403 and no session exists.

use quiver_server::auth::{sign_hs256, unix_now, Claims};
use quiver_tests::*;
use wtransport::error::ConnectingError;

fn refused(result: Result<wtransport::Connection, ConnectingError>) -> bool {
    matches!(result, Err(ConnectingError::SessionRejected))
}

#[tokio::test]
async fn bad_tokens_are_refused_before_a_session_exists() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let b64 = |s: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let claims = Claims {
        sub: "mallory".into(),
        tenant: "acme".into(),
        exp: unix_now() + 3600,
        subscribe: vec![">".into()],
        publish: vec![">".into()],
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(serde_json::to_string(&claims)?.as_bytes())
    );
    let wrong_signature = sign_hs256(b"not-the-server-secret", &claims)?;
    let expired = token("acme", "u", &[">"], &[">"], -3600);
    let cases = [
        ("missing", "/v1".to_string()),
        ("empty", "/v1?token=".to_string()),
        ("malformed", "/v1?token=not.a.jwt".to_string()),
        ("expired", format!("/v1?token={expired}")),
        ("wrong signature", format!("/v1?token={wrong_signature}")),
        ("alg none", format!("/v1?token={alg_none}")),
    ];
    for (name, path) in cases {
        assert!(
            refused(open_session(&server, &path).await),
            "{name} was not refused"
        );
    }
    // Another path is refused (404) even with a good token.
    let good = full_token("acme", "alice");
    assert!(refused(
        open_session(&server, &format!("/v2?token={good}")).await
    ));
    // And the good token gets in.
    assert!(open_session(&server, &format!("/v1?token={good}"))
        .await
        .is_ok());

    let page = server.metrics().await?;
    assert!(
        metric_sum(
            &page,
            "quiver_sessions_refused_total",
            &[("reason", "token_invalid")]
        ) >= 3.0
    );
    assert!(
        metric_sum(
            &page,
            "quiver_sessions_refused_total",
            &[("reason", "token_expired")]
        ) >= 1.0
    );
    assert!(
        metric_sum(
            &page,
            "quiver_sessions_refused_total",
            &[("reason", "token_missing")]
        ) >= 2.0
    );
    Ok(())
}

#[tokio::test]
async fn bearer_header_is_accepted() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let endpoint = client_endpoint(server.hash)?;
    let options = wtransport::endpoint::ConnectOptions::builder(server.url())
        .add_header(
            "authorization",
            format!("Bearer {}", full_token("acme", "alice")),
        )
        .build();
    let conn = endpoint.connect(options).await?;
    let mut raw = Raw::on(conn).await?;
    let reply = raw
        .request(quiver_proto::Command::Hello {
            version: 1,
            client: "t".into(),
        })
        .await?;
    assert!(matches!(reply, quiver_proto::Event::Welcome { ref user, .. } if user == "alice"));
    Ok(())
}
