//! `GET|HEAD /{code}`: the hot path. One store read, no logging, no waiting on anything else.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use hyper::{Response, StatusCode};
use shortlinks_core::Store;

use crate::app::App;
use crate::problem::{self, Body};

/// Every click must reach the server, so neither browsers nor proxies may keep the redirect.
const NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");

impl<S: Store> App<S> {
    /// 302 to the original URL, or the 404 page.
    ///
    /// The click pipeline hooks in here: once the link is known, a click record is handed
    /// to it without waiting (`head` tells it this was a HEAD, which is never a visit).
    pub(crate) async fn redirect(&self, code: &str, _head: bool) -> Response<Body> {
        let link = match self.engine.resolve(code).await {
            Ok(Some(link)) => link,
            Ok(None) => return problem::not_found_page(),
            Err(e) => {
                tracing::error!(error = %e, "store read failed on redirect");
                return problem::text(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable\n");
            }
        };
        // Stored targets are printable ASCII by construction (and re-checked on decode).
        let Ok(location) = HeaderValue::from_str(link.target.as_str()) else {
            tracing::error!(code = %link.code, "stored target is not a valid header value");
            return problem::text(StatusCode::INTERNAL_SERVER_ERROR, "invalid stored link\n");
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        headers.insert(LOCATION, location);
        headers.insert(CACHE_CONTROL, NO_STORE);
        response
    }
}
