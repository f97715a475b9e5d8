//! `quiver call METHOD PAYLOAD`: one `Call` to the application's backend, its answer on stdout
//! (PROTOCOL.md §11). Also the token helper for the `call` claim, which `Claims` (shared by
//! every token issuer) does not carry.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use quiver_client::CallOptions;
use quiver_server::auth::{sign_hs256, Claims};

use crate::conn::ConnArgs;

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
    let mut stdout = std::io::stdout();
    stdout.write_all(&answer)?;
    if !answer.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

/// Signs `claims`, plus a `call` claim when `call` is not empty.
pub fn sign_with_call(secret: &[u8], claims: &Claims, call: &[String]) -> Result<String> {
    let mut value = serde_json::to_value(claims)?;
    if !call.is_empty() {
        value["call"] = serde_json::json!(call);
    }
    Ok(sign_hs256(secret, &value)?)
}
