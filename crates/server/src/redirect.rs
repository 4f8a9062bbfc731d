//! `GET|HEAD /{code}`: the hot path. One store read, the click handed to the pipeline
//! without waiting for it (unless durability is `sync`), no logging.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, LOCATION, REFERER, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use shortlinks_core::model::ClickMethod;
use shortlinks_core::{Store, Timestamp};
use shortlinks_notes::{NotRecorded, RawClick};

use crate::app::App;
use crate::problem::{self, Body};

/// Every click must reach the server, so neither browsers nor proxies may keep the redirect.
const NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");

/// Headers by which browsers mark speculative loads. Names, not strings: a lookup by
/// string parses the name again on every request.
const PREFETCH_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("sec-purpose"),
    HeaderName::from_static("purpose"),
    HeaderName::from_static("x-purpose"),
    HeaderName::from_static("x-moz"),
];

impl<S: Store> App<S> {
    /// 302 to the original URL, or the 404 page.
    pub(crate) async fn redirect<B>(&self, code: &str, request: &Request<B>, peer: Option<IpAddr>) -> Response<Body> {
        // Only the code, the contact and the target are needed: the link is read where the
        // cache holds it.
        let resolved = self
            .engine
            .resolve_with(code, |link| {
                ((link.code, (link.account, link.entity)), HeaderValue::from_str(link.target.as_str()))
            })
            .await;
        let ((code, contact), location) = match resolved {
            Ok(Some((code, Ok(location)))) => (code, location),
            Ok(Some(((code, _), Err(_)))) => {
                // Stored targets are printable ASCII by construction (and re-checked on decode).
                tracing::error!(%code, "stored target is not a valid header value");
                return problem::text(StatusCode::INTERNAL_SERVER_ERROR, "invalid stored link\n");
            }
            Ok(None) => return problem::not_found_page(),
            Err(e) => {
                tracing::error!(error = %e, "store read failed on redirect");
                return problem::text(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable\n");
            }
        };
        let headers = request.headers();
        let click = RawClick {
            code,
            at: Timestamp::now(),
            method: if request.method() == Method::HEAD { ClickMethod::Head } else { ClickMethod::Get },
            user_agent: RawClick::header_bytes(headers.get(USER_AGENT)),
            referer: RawClick::header_bytes(headers.get(REFERER)),
            prefetch: prefetch_hints(headers),
            client_ip: self.client_ip(headers, peer),
            evidence: RawClick::browser_evidence(headers),
            contact: Some(contact),
        };
        match self.clicks.record(click).await {
            Ok(()) => {}
            Err(NotRecorded::OutboxUnavailable) => {
                return problem::text(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable\n");
            }
            Err(NotRecorded::Stopped) => tracing::debug!("click after the pipeline stopped"),
        }
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        headers.insert(LOCATION, location);
        headers.insert(CACHE_CONTROL, NO_STORE);
        response
    }

    /// The client's address: from the trusted proxy's header when one is configured (its
    /// right-most address, the one that proxy saw), else the peer.
    fn client_ip(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let from_proxy = self.client_ip_header.as_ref().and_then(|name| {
            let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse().ok()
        });
        from_proxy.or(peer)
    }
}

/// `name: value` of every prefetch header present; `None` (no allocation) when there are none.
fn prefetch_hints(headers: &HeaderMap) -> Option<String> {
    let mut hints: Option<String> = None;
    for name in &PREFETCH_HEADERS {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let hints = hints.get_or_insert_with(String::new);
            if !hints.is_empty() {
                hints.push_str("; ");
            }
            hints.push_str(value);
        }
    }
    hints
}
