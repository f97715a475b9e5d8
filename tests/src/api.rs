//! What the backend API's tests share: API keys (an admin one, tenant `acme`'s), a
//! configuration that takes them (and a history namespace `h`), the served OpenAPI document,
//! a request for a route of the route table.

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
