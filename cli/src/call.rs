//! `quiver call METHOD PAYLOAD`: one `Call` to the application's backend, its answer on stdout
//! (PROTOCOL.md §11). Also the token helper for the `call` claim, which `Claims` (shared by
//! every token issuer) does not carry.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use quiver_client::CallOptions;
use quiver_server::auth::{sign_hs256, Claims};

use crate::conn::ConnArgs;

/// The answer goes to stdout as the backend wrote it, byte for byte, when stdout is a pipe or
/// a file; on a terminal its control characters are escaped as `quiver sub` escapes a payload
/// (`\u{1b}`, `\xNN`, a backslash as `\\`), each of its lines kept a line.
#[derive(Args)]
pub struct CallArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The method, a dot-separated name (`order.place`); the token's `call` claim must allow it.
    method: String,
    /// The payload; `-` reads it from stdin.
    payload: String,
    /// How long the backend may take (the server caps it); default: the server's.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Passed to the backend so it can recognise a retried call.
    #[arg(long)]
    idempotency_key: Option<String>,
}

pub async fn call(args: CallArgs) -> Result<()> {
    let payload = if args.payload == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the payload from stdin")?;
        bytes
    } else {
        args.payload.into_bytes()
    };
    let client = args.conn.connect().await?;
    let options = CallOptions {
        timeout: args.timeout,
        idempotency_key: args.idempotency_key,
    };
    let result = client.call_with(&args.method, payload, options).await;
    client.close().await;
    let answer = result.with_context(|| format!("call {}", args.method))?;
    let mut stdout = std::io::stdout().lock();
    // On a terminal the backend's answer is text from elsewhere, escaped like any other
    // (outside audit 122, F5: an answer retitled the terminal and cleared the screen); a pipe
    // gets the exact bytes, which are what a script wants (`quiver call m x | jq`).
    let answer = if stdout.is_terminal() {
        for_terminal(&answer).into_bytes()
    } else {
        answer.to_vec()
    };
    let written = stdout
        .write_all(&answer)
        .and_then(|()| {
            if answer.ends_with(b"\n") {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|()| stdout.flush());
    match written {
        // The reader went away (`| head -c 10`): it is done, and so is `call` (outside audit
        // 122, F4: "Broken pipe" and status 1).
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the answer to stdout"),
    }
}

/// An answer for a terminal: each line escaped as `sub` escapes a payload, the lines kept.
fn for_terminal(answer: &[u8]) -> String {
    answer
        .split(|&b| b == b'\n')
        .map(crate::terminal::safe_bytes)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Signs `claims`, plus a `call` claim when `call` is not empty.
pub fn sign_with_call(secret: &[u8], claims: &Claims, call: &[String]) -> Result<String> {
    let mut value = serde_json::to_value(claims)?;
    if !call.is_empty() {
        value["call"] = serde_json::json!(call);
    }
    Ok(sign_hs256(secret, &value)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_answer_for_a_terminal_keeps_its_lines_and_no_control() {
        assert_eq!(
            super::for_terminal(b"ok\x1b]0;pwned\x07\x1b[2J\r\n\xffFAKE\\\n"),
            "ok\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\r\n\\xffFAKE\\\\\n"
        );
    }
}
