//! A client for webhook receivers (`[[notify]]` endpoints): POST a JSON body with
//! headers inside a timeout, and say what the receiver answered. The one place outside
//! the registry client that speaks outbound HTTP, so that reqwest stays in `upstream/`.

use std::time::Duration;

/// Why a POST got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connect, TLS, or the connection broke; the cause carries no URL.
    #[error("cannot reach the receiver: {0}")]
    Connect(String),
    #[error("cannot build the request: {0}")]
    Build(String),
}

/// One receiver's client (its connections are reused between posts).
pub(crate) struct Webhook {
    http: reqwest::Client,
    timeout: Duration,
}

impl Webhook {
    /// A client whose every POST ends within `timeout` (connect, send, answer).
    pub(crate) fn new(timeout: Duration) -> Result<Self, WebhookError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("wharfie/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Build(e.without_url().to_string()))?;
        Ok(Webhook { http, timeout })
    }

    /// POST `body` as `content_type` with `headers`; the receiver's status (any status:
    /// the caller decides what counts as accepted). The answer's body is read and dropped
    /// so that the connection can be reused.
    pub(crate) async fn post(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<u16, WebhookError> {
        let mut rb = self.http.post(url).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        for (k, v) in headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let resp = rb.send().await.map_err(|e| {
            if e.is_timeout() {
                WebhookError::Timeout(self.timeout)
            } else if e.is_builder() {
                WebhookError::Build(e.without_url().to_string())
            } else {
                WebhookError::Connect(e.without_url().to_string())
            }
        })?;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        Ok(status)
    }
}
