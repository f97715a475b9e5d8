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

/// A browser cannot set `Authorization` on a WebSocket, and a token in the URL lands in access
/// logs: the token may be offered as a subprotocol `quiver.token.JWT` beside `quiver`
/// (PROTOCOL.md §9.1, §9.2). The answer names `quiver`, never the token, refusals included (a
/// browser fails an upgrade whose answer names no offered subprotocol, before the refusal's
/// `Goodbye`); it comes after `Authorization` and before the query; two offered tokens are no
/// credential; a token offered without `quiver` cannot be answered: 400.
#[tokio::test]
async fn a_websocket_token_offered_as_a_subprotocol_is_read_and_never_echoed() -> anyhow::Result<()>
{
    use quiver_proto::{CloseCode, Command, Event};
    let server = TestServer::start().await?;
    let good = full_token("acme", "u");
    let bad = "not-a-jwt";
    let offer = |token: &str| format!("quiver, quiver.token.{token}");
    let selected = |answer: &tokio_tungstenite::tungstenite::handshake::client::Response| {
        answer
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
    };
    let bearer = format!("Bearer {good}");
    let bad_bearer = format!("Bearer {bad}");
    let huge = offer(&"a".repeat(5000));
    /// The query, the headers, and whether a Welcome (else Goodbye 3001) follows.
    type Case<'a> = (String, Vec<(&'a str, String)>, bool);
    let cases: Vec<Case> = vec![
        // The subprotocol alone.
        (
            String::new(),
            vec![("sec-websocket-protocol", offer(&good))],
            true,
        ),
        // Before the query: a bad one offered, a good one in the query.
        (
            format!("?token={good}"),
            vec![("sec-websocket-protocol", offer(bad))],
            false,
        ),
        (
            format!("?token={bad}"),
            vec![("sec-websocket-protocol", offer(&good))],
            true,
        ),
        // After Authorization.
        (
            String::new(),
            vec![
                ("sec-websocket-protocol", offer(&good)),
                ("authorization", bad_bearer.clone()),
            ],
            false,
        ),
        (
            String::new(),
            vec![
                ("sec-websocket-protocol", offer(bad)),
                ("authorization", bearer.clone()),
            ],
            true,
        ),
        // Two tokens: none, whatever the query says.
        (
            format!("?token={good}"),
            vec![(
                "sec-websocket-protocol",
                format!("quiver, quiver.token.{good}, quiver.token.{good}x"),
            )],
            false,
        ),
        // An `Authorization` of another scheme is not ours (a site's Basic credentials a
        // browser sends along, a proxy's own): ignored, so the offered token still comes
        // before the query, and two offered tokens are still none (outside audit 119, F1:
        // such a header sent the server to the query, and a valid offered token was refused
        // 3007 for good).
        (
            String::new(),
            vec![
                ("sec-websocket-protocol", offer(&good)),
                ("authorization", "Basic dTpw".into()),
            ],
            true,
        ),
        (
            format!("?token={bad}"),
            vec![
                ("sec-websocket-protocol", offer(&good)),
                ("authorization", "Digest username=\"u\"".into()),
            ],
            true,
        ),
        (
            format!("?token={good}"),
            vec![
                (
                    "sec-websocket-protocol",
                    format!("quiver, quiver.token.{bad}, quiver.token.{bad}x"),
                ),
                ("authorization", "Basic dTpw".into()),
            ],
            false,
        ),
        // `quiver` alone, the token in the query: answered `quiver` too.
        (
            format!("?token={good}"),
            vec![("sec-websocket-protocol", "quiver".into())],
            true,
        ),
        // Over the size limit: refused in-band, still answered `quiver`.
        (String::new(), vec![("sec-websocket-protocol", huge)], false),
    ];
    for (query, headers, welcomed) in cases {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let what = format!("{query} {headers:?}");
        let (mut raw, answer) =
            Raw::websocket_answered(&server, &format!("/v1/ws{query}"), &pairs).await?;
        assert_eq!(selected(&answer), ["quiver"], "{what}");
        let id = raw
            .send(Command::Hello {
                version: quiver_proto::PROTOCOL_VERSION,
                client: "t".into(),
            })
            .await?;
        let event = loop {
            let frame = raw.recv().await?;
            if frame.id == id || frame.id == 0 {
                break frame.event;
            }
        };
        match event {
            Event::Welcome { .. } => assert!(welcomed, "welcomed: {what}"),
            Event::Goodbye { code, .. } => {
                assert!(!welcomed, "refused: {what}");
                assert_eq!(code, CloseCode::InvalidToken.as_u16(), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The entries may come over several header lines (RFC 9110 §5.3; tungstenite's client
    // reads only the first line of its own request, so this one is written by hand).
    let upgrade = |lines: &str| {
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{lines}\r\n",
            server.http
        );
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(server.http).await?;
            tcp.write_all(request.as_bytes()).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                tcp.read_exact(&mut byte).await?;
                head.push(byte[0]);
            }
            anyhow::Ok(String::from_utf8_lossy(&head).to_ascii_lowercase())
        }
    };
    let head = upgrade(&format!(
        "Sec-WebSocket-Protocol: quiver.token.{good}\r\nSec-WebSocket-Protocol: quiver\r\n"
    ))
    .await?;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-protocol: quiver\r\n"),
        "{head}"
    );
    let head = upgrade(&format!("Sec-WebSocket-Protocol: quiver.token.{good}\r\n")).await?;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    // A token offered without `quiver` beside it cannot be answered without echoing it.
    let err = Raw::websocket(
        &server,
        &format!("/v1/ws?token={good}"),
        &[("sec-websocket-protocol", &format!("quiver.token.{good}"))],
    )
    .await
    .err()
    .expect("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status().as_u16(), 400);
            assert!(response.headers().get("sec-websocket-protocol").is_none());
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    Ok(())
}
