//! A Server-Sent Events reader for tests (PROTOCOL.md §9.3): the events of one response, parsed.

/// One server-sent event.
#[derive(Debug, Default)]
pub struct Sse {
    pub event: String,
    pub data: serde_json::Value,
    pub id: Option<String>,
}

/// Reads events from an SSE response (`GET /v1/sse`).
pub struct SseReader {
    response: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub async fn open(
        server: &crate::TestServer,
        query: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut request =
            reqwest::Client::new().get(format!("http://{}/v1/sse?{query}", server.http));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        anyhow::ensure!(response.status() == 200, "status {}", response.status());
        Ok(Self {
            response,
            buf: String::new(),
        })
    }

    /// The next event (comments skipped); `None` when the response ended.
    pub async fn next(&mut self) -> anyhow::Result<Option<Sse>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Sse::default();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().into());
                    }
                }
                if event.event.is_empty() {
                    continue; // a keep-alive comment
                }
                event.data = serde_json::from_str(&data)?;
                return Ok(Some(event));
            }
            let chunk = tokio::time::timeout(crate::WAIT, self.response.chunk())
                .await
                .map_err(|_| anyhow::anyhow!("timed out waiting for an event"))??;
            match chunk {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }

    pub async fn expect(&mut self, name: &str) -> anyhow::Result<Sse> {
        loop {
            let event = self
                .next()
                .await?
                .ok_or_else(|| anyhow::anyhow!("ended before {name}"))?;
            if event.event == name {
                return Ok(event);
            }
        }
    }
}
