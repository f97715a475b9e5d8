//! What the backend API's tests share: API keys (an admin one, tenant `acme`'s), a
//! configuration that takes them (and a history namespace `h`), the served OpenAPI document,
//! a request for a route of the route table; the endpoint tests' three-tenant configuration
//! ([`with_tenants`]) on one instance or two clustered over NATS.

use crate::TestServer;

/// An admin key: names the tenant per request.
pub const ADMIN: &str = "admin-key-0123456789abcdef0123456789";
/// Tenant `acme`'s key.
pub const ACME: &str = "acme-key-0123456789abcdef0123456789ab";

/// Both keys, and a history namespace `h` (10 publications, 60 s).
pub fn with_keys(c: &mut quiver_server::Config) {
    c.api.keys = vec![
        quiver_server::config::ApiKey {
            key: ADMIN.into(),
            tenant: None,
        },
        quiver_server::config::ApiKey {
            key: ACME.into(),
            tenant: Some("acme".into()),
        },
    ];
    c.namespaces.push(quiver_server::config::NamespaceConfig {
        name: "h".into(),
        history_size: 10,
        history_ttl: std::time::Duration::from_secs(60),
        presence: false,
        ..Default::default()
    });
}

/// The server's OpenAPI document.
pub async fn openapi(server: &TestServer) -> anyhow::Result<serde_json::Value> {
    Ok(
        reqwest::get(format!("http://{}/api/v1/openapi.json", server.http))
            .await?
            .json()
            .await?,
    )
}

/// A request for a route of the table, its path parameter filled in.
pub fn request_for(
    http: &reqwest::Client,
    server: &TestServer,
    route: &quiver_server::api::Route,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let url = format!(
        "http://{}{}",
        server.http,
        route.path.replace("{room}", "h.a")
    );
    Ok(match route.method {
        "get" => http.get(url),
        "post" => http.post(url),
        other => anyhow::bail!("unexpected method {other}"),
    })
}

/// Tenant `other`'s key.
pub const OTHER: &str = "other-key-0123456789abcdef0123456789a";

/// The three keys (admin, `acme`'s, `other`'s), a history namespace `h` (100 publications,
/// 60 s) and a presence namespace `p`: the backend API's endpoint tests.
pub fn with_tenants(c: &mut quiver_server::Config) {
    use quiver_server::config::{ApiKey, NamespaceConfig};
    c.api.keys = [(ADMIN, None), (ACME, Some("acme")), (OTHER, Some("other"))]
        .into_iter()
        .map(|(key, tenant)| ApiKey {
            key: key.into(),
            tenant: tenant.map(Into::into),
        })
        .collect();
    for (name, history_size, presence) in [("h", 100, false), ("p", 0, true)] {
        c.namespaces.push(NamespaceConfig {
            name: name.into(),
            history_size,
            history_ttl: std::time::Duration::from_secs(60),
            presence,
            ..Default::default()
        });
    }
}

/// Two instances of [`with_tenants`]'s configuration clustered over `nats`.
pub async fn two_instances(
    nats: &crate::nats::NatsServer,
) -> anyhow::Result<(TestServer, TestServer)> {
    let clustered = |c: &mut quiver_server::Config| {
        with_tenants(c);
        c.nats = Some(quiver_server::config::NatsConfig::new(nats.url()));
    };
    Ok((
        TestServer::start_with(clustered).await?,
        TestServer::start_with(clustered).await?,
    ))
}

/// Asserts an error answer: its status and its stable code.
pub async fn refused(
    server: &TestServer,
    path: &str,
    key: &str,
    body: serde_json::Value,
    status: u16,
    code: &str,
) -> anyhow::Result<()> {
    let (got, answer) = crate::api_post(server, path, key, body.clone()).await?;
    assert_eq!(got, status, "{path} {body}: {answer}");
    assert_eq!(answer["error"]["code"], code, "{path} {body}: {answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    Ok(())
}
