//! Responses: `application/problem+json` errors in amoCRM's shape, and the small fixed bodies.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::request::ItemErrors;

/// The body type of every response.
pub type Body = Full<Bytes>;

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// A problem response: `{title, type, status, detail, request_id}`.
pub(crate) fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    problem_with(status, json!({}), detail)
}

/// A 400 listing the problems of each item, as amoCRM does.
pub(crate) fn validation_failed(detail: &str, items: &[ItemErrors]) -> Response<Body> {
    problem_with(StatusCode::BAD_REQUEST, json!({ "validation-errors": items }), detail)
}

/// A store's failure, told to the client without its internals (they go to the log):
/// 503 when the store is out of reach for now, else 500. Either way a retry is safe.
pub(crate) fn store_failure(e: &shortlinks_core::Error, doing: &str) -> Response<Body> {
    tracing::error!(error = %e, request_id = crate::request_id::for_log(), "store failure while {doing}");
    let status = match e {
        shortlinks_core::Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    problem(status, "The store failed; retry the same request")
}

/// A 429 for a caller over its rate, with when to come back: `Retry-After` in whole
/// seconds, and `retry_after` in the body as amoCRM sends it.
pub(crate) fn too_many_requests(wait: std::time::Duration) -> Response<Body> {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let detail = format!("Too many requests for this token; retry after {seconds} s");
    let mut response = problem_with(StatusCode::TOO_MANY_REQUESTS, json!({ "retry_after": seconds }), &detail);
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// A 405 with the methods that are allowed.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = problem(StatusCode::METHOD_NOT_ALLOWED, &format!("Allowed methods: {allow}"));
    response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn problem_with(status: StatusCode, mut body: serde_json::Value, detail: &str) -> Response<Body> {
    body["title"] = json!(status.canonical_reason().unwrap_or("Error"));
    body["type"] = json!(format!("https://httpstatus.es/{}", status.as_u16()));
    body["status"] = json!(status.as_u16());
    body["detail"] = json!(detail);
    if let Some(id) = crate::request_id::current() {
        body["request_id"] = json!(id);
    }
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    response
}

/// A JSON body with a content type (`application/hal+json` for API results).
pub(crate) fn json_response(content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The 404 page for unknown short links: tiny, and never cached.
pub(crate) fn not_found_page() -> Response<Body> {
    const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Link not found</title></head>\
<body><h1>Link not found</h1><p>This short link does not exist.</p></body></html>\n";
    page(StatusCode::NOT_FOUND, PAGE)
}

/// The 410 page for erased short links: the link existed and is gone for good.
pub(crate) fn gone_page() -> Response<Body> {
    const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Link removed</title></head>\
<body><h1>Link removed</h1><p>This short link was removed and no longer leads anywhere.</p></body></html>\n";
    page(StatusCode::GONE, PAGE)
}

fn page(status: StatusCode, html: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(html.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A plain-text status answer (health checks).
pub(crate) fn text(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
