//! Request headers a hostile peer sends over TCP that are there but are not text, and the
//! edges of the rules that judge them (PROTOCOL.md §9.1). Apart from `transports.rs`, whose
//! tests read the process's session counters.

use quiver_tests::*;

/// Headers that are there but are not text are judged, not taken as absent, and the edges of
/// the rules hold (outside audit 97): with an allow-list, an `Origin` with bytes outside ASCII is
/// refused (it passed as a native client's, no `Origin`: F1), and so is one with two trailing
/// `/` (one is tolerated: F5); an `Authorization: Bearer` with nothing after it, or one that is
/// not text, is a missing token whatever the query says (the query's token was used: F2),
/// while another scheme is ignored.
#[tokio::test]
async fn headers_that_are_not_text_are_judged_not_skipped() -> anyhow::Result<()> {
    use reqwest::header::HeaderValue;
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example".into()];
    })
    .await?;
    let token = full_token("acme", "u");
    let url = format!("http://{}/v1/sse?room=chat.a&token={token}", server.http);
    let http = reqwest::Client::new();
    let status =
        |header: &'static str, value: HeaderValue| http.get(&url).header(header, value).send();
    let text = |v: &'static str| HeaderValue::from_static(v);
    let bytes = |v: &'static [u8]| HeaderValue::from_bytes(v).expect("a header value");
    for (origin, want) in [
        (text("https://app.example"), 200),
        (text("https://APP.example/"), 200),
        (text("https://app.example//"), 403),
        (text("https://evil.example"), 403),
        (bytes(b"https://\xc3\xa9vil.example"), 403),
        (bytes(b"https://app.example\xff"), 403),
    ] {
        let got = status("origin", origin.clone()).await?.status();
        assert_eq!(got, want, "Origin {origin:?}");
    }
    for (authorization, want) in [
        (text("Basic dTpw"), 200),
        (text("Bearer"), 401),
        (text("bearer   "), 401),
        (bytes(b"Bearer \xc3\xa9"), 401),
    ] {
        let got = status("authorization", authorization.clone())
            .await?
            .status();
        assert_eq!(got, want, "Authorization {authorization:?}");
    }
    Ok(())
}
