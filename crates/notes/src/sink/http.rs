//! A small HTTPS client for sinks: hyper + rustls (Mozilla's roots), a timeout on every request.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::SinkError;

/// Answers larger than this are cut: sinks need the status, and a little of the body.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A pooled HTTP(S) client with a per-request timeout.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// What a receiver answered.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status.
    pub status: StatusCode,
    /// `Retry-After` in seconds, if sent.
    pub retry_after: Option<Duration>,
    /// The body (at most 64 KiB).
    pub body: Bytes,
}

impl HttpClient {
    /// The default time a sink request may take, answer included.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A client whose every request, answer included, must finish within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        Self { client: Client::builder(TokioExecutor::new()).build(https), timeout }
    }

    /// POSTs a JSON body. Timeouts and connection errors are [`SinkError::Retry`].
    pub async fn post_json(
        &self,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<HttpAnswer, SinkError> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        request.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.send(uri, headers, request).await
    }

    /// GETs `uri`, with the same limits as [`HttpClient::post_json`].
    pub async fn get(&self, uri: &Uri, headers: &[(HeaderName, HeaderValue)]) -> Result<HttpAnswer, SinkError> {
        self.send(uri, headers, Request::new(Full::new(Bytes::new()))).await
    }

    async fn send(
        &self,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        mut request: Request<Full<Bytes>>,
    ) -> Result<HttpAnswer, SinkError> {
        *request.uri_mut() = uri.clone();
        for (name, value) in headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| retry(format!("request failed: {e}")))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok(HttpAnswer { status, retry_after, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| retry(format!("no answer within {:?}", self.timeout)))?
    }
}

fn retry(reason: String) -> SinkError {
    SinkError::Retry { reason, after: None }
}

/// What a status means for a delivery: 2xx taken; 408, 425, 429, 5xx and 401/403 (fixable
/// by configuration) retried; any other 4xx refused for good.
pub(crate) fn judge(answer: &HttpAnswer) -> Result<(), SinkError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("{status}: {}", String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)]));
    let retryable = status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 408 | 425 | 429);
    if retryable {
        Err(SinkError::Retry { reason, after: answer.retry_after })
    } else {
        Err(SinkError::Permanent(reason))
    }
}
