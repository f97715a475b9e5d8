//! Waiting for what a server shows from outside: a metric reaching a value, `/readyz` turning
//! 200. Bounded by [`WAIT`] (readiness: twice that, a NATS reconnect can take a while).

use std::time::Duration;

use anyhow::{bail, Result};

use crate::{metric_sum, TestServer, WAIT};

/// The `/metrics` page once the sum of `name`'s series with `labels` satisfies `ok`.
pub async fn wait_metric(
    server: &TestServer,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(f64) -> bool,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let page = server.metrics().await?;
        let value = metric_sum(&page, name, labels);
        if ok(value) {
            return Ok(page);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{name}{labels:?} stayed at {value}:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server's `/readyz` answers 200.
pub async fn wait_ready(server: &TestServer) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let status = reqwest::get(format!("http://{}/readyz", server.http))
            .await?
            .status();
        if status == 200 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("/readyz stayed {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
