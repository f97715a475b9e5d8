//! The HTTP side: backend publish API, health, and development-only endpoints.

use bytes::Bytes;
use quiver_tests::*;

#[tokio::test]
async fn backends_publish_over_http() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.limits.max_payload = 1000).await?;
    let mut sub = Raw::connect(&server, &full_token("acme", "sub")).await?;
    let mut room = sub.subscribe("orders.new").await?;
    let http = reqwest::Client::new();
    let url = |room: &str| format!("http://{}/api/v1/publish/{room}", server.http);
    let backend = token("acme", "backend", &[], &["orders.>"], 60);

    let ok = http
        .post(url("orders.new"))
        .bearer_auth(&backend)
        .body("order 1")
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(room.payload().await?, Bytes::from_static(b"order 1"));

    let cases = [
        (
            url("orders.new"),
            "not-a-token".to_string(),
            "x".to_string(),
            401,
        ),
        (url("billing"), backend.clone(), "x".to_string(), 403),
        (url("orders..new"), backend.clone(), "x".to_string(), 400),
        (url("orders.new"), backend.clone(), "x".repeat(1001), 413),
        // Another tenant's backend can't reach acme's room, whatever it names.
        (
            url("orders.new"),
            token("other", "b", &[], &[">"], 60),
            "leak".into(),
            200,
        ),
    ];
    for (u, t, body, status) in cases {
        let r = http.post(u).bearer_auth(t).body(body).send().await?;
        assert_eq!(r.status(), status);
    }
    let marker = http
        .post(url("orders.new"))
        .bearer_auth(&backend)
        .body("order 2")
        .send()
        .await?;
    assert_eq!(marker.status(), 200);
    assert_eq!(
        room.payload().await?,
        Bytes::from_static(b"order 2"),
        "nothing else arrived"
    );
    Ok(())
}

#[tokio::test]
async fn health_and_no_dev_endpoints_outside_dev_mode() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let get = |path: &str| reqwest::get(format!("http://{}{path}", server.http));
    assert_eq!(get("/healthz").await?.status(), 200);
    assert_eq!(get("/readyz").await?.status(), 200);
    assert_eq!(get("/dev/bootstrap").await?.status(), 404);
    assert_eq!(get("/").await?.status(), 404);
    let js = get("/quiver.js").await?;
    assert_eq!(js.status(), 200);
    Ok(())
}

#[tokio::test]
async fn dev_mode_bootstrap_hands_out_a_working_token() -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| {
        c.auth.jwt_secret = None;
        c.demo = true;
    })
    .await?;
    let boot: serde_json::Value = reqwest::get(format!("http://{}/dev/bootstrap", server.http))
        .await?
        .json()
        .await?;
    assert_eq!(boot["cert_sha256"], hex::encode(server.hash));
    assert_eq!(boot["tenant"], "demo");
    let token = boot["token"].as_str().unwrap_or_default();
    let mut c = Raw::connect(&server, token).await?;
    // The demo publisher feeds the dashboard tiles.
    let mut tile = c.subscribe("dash.tile.0").await?;
    let payload = tile.payload().await?;
    let value: serde_json::Value = serde_json::from_slice(&payload)?;
    assert!(value["v"].is_number());
    assert_eq!(
        reqwest::get(format!("http://{}/", server.http))
            .await?
            .status(),
        200
    );
    Ok(())
}
