//! `GET|HEAD /{code}`: the hot path. One store read, the click handed to the pipeline
//! without waiting for it (unless durability is `sync`), no logging. The same work serves
//! hyper's requests and the redirect lane's (`lane`).

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, LOCATION, REFERER, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use shortlinks_core::model::ClickMethod;
use shortlinks_core::{Resolved, Store, TargetUrl, Timestamp};
use shortlinks_notes::{ClickHeaders, NotRecorded, RawClick};

use crate::app::App;
use crate::problem::{self, Body};
use crate::request_id;

/// Every click must reach the server, so neither browsers nor proxies may keep the redirect.
const NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");

/// Headers by which browsers mark speculative loads. Names, not strings: a lookup by
/// string parses the name again on every request.
static PREFETCH_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("sec-purpose"),
    HeaderName::from_static("purpose"),
    HeaderName::from_static("x-purpose"),
    HeaderName::from_static("x-moz"),
];

/// What a redirect answers, whoever writes it: hyper, or the redirect lane.
pub(crate) enum Redirect<T> {
    /// 302 to the link's target, as the caller made it. `at` is the click's time, which
    /// the answer's `Date` may take instead of reading the clock again.
    Found { location: T, at: Timestamp },
    /// Anything else: the 404 or 410 page, or an error.
    Page(Response<Body>),
}

impl<S: Store> App<S> {
    /// 302 to the original URL, or the 404 (410 if erased) page.
    pub(crate) async fn redirect<B>(&self, code: &str, request: &Request<B>, peer: Option<IpAddr>) -> Response<Body> {
        let method = if request.method() == Method::HEAD { ClickMethod::Head } else { ClickMethod::Get };
        let location = |target: &TargetUrl| HeaderValue::from_str(target.as_str()).ok();
        match self.redirect_with(code, method, request.headers(), peer, location).await {
            Redirect::Found { location, .. } => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::FOUND;
                let headers = response.headers_mut();
                headers.insert(LOCATION, location);
                headers.insert(CACHE_CONTROL, NO_STORE);
                response
            }
            Redirect::Page(page) => page,
        }
    }

    /// The redirect's work: the link looked up, the click handed over. `location` makes
    /// the answer's `Location` from the target, or `None` if it cannot.
    pub(crate) async fn redirect_with<H, T>(
        &self,
        code: &str,
        method: ClickMethod,
        headers: &H,
        peer: Option<IpAddr>,
        location: impl FnOnce(&TargetUrl) -> Option<T>,
    ) -> Redirect<T>
    where
        H: ClickHeaders + ?Sized,
    {
        // Only the code, the contact and the target are needed: the link is read where the
        // cache holds it.
        let resolved = self
            .engine
            .resolve_with(code, |link| ((link.code, (link.account, link.entity)), location(&link.target)))
            .await;
        let ((code, contact), location) = match resolved {
            Ok(Resolved::Found((code, Some(location)))) => (code, location),
            Ok(Resolved::Found(((code, _), None))) => {
                // Stored targets are printable ASCII by construction (and re-checked on decode).
                tracing::error!(%code, request_id = request_id::for_log(), "stored target is not a valid header value");
                return Redirect::Page(problem::text(StatusCode::INTERNAL_SERVER_ERROR, "invalid stored link\n"));
            }
            Ok(Resolved::Erased) => return Redirect::Page(problem::gone_page()),
            Ok(Resolved::Unknown) => return Redirect::Page(problem::not_found_page()),
            Err(e) => return Redirect::Page(store_failed(&e)),
        };
        let at = Timestamp::now();
        let click = RawClick {
            code,
            at,
            method,
            user_agent: RawClick::header_bytes(headers.first(&USER_AGENT)),
            referer: RawClick::header_bytes(headers.first(&REFERER)),
            prefetch: prefetch_hints(headers),
            client_ip: self.client_ip(headers, peer),
            evidence: RawClick::browser_evidence(headers),
            contact: Some(contact),
        };
        match self.clicks.record(click).await {
            Ok(()) => {}
            Err(NotRecorded::OutboxUnavailable) => {
                tracing::warn!(request_id = request_id::for_log(), "the click could not be recorded: answered 503");
                return Redirect::Page(problem::text(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable\n"));
            }
            Err(NotRecorded::Stopped) => tracing::debug!("click after the pipeline stopped"),
        }
        Redirect::Found { location, at }
    }

    /// The client's address: from the trusted proxy's header when one is configured (its
    /// right-most address, the one that proxy saw), else the peer.
    fn client_ip<H: ClickHeaders + ?Sized>(&self, headers: &H, peer: Option<IpAddr>) -> Option<IpAddr> {
        let from_proxy = self.client_ip_header.as_ref().and_then(|name| {
            let value = visible_ascii(headers.last(name)?)?;
            value.rsplit(',').next()?.trim().parse().ok()
        });
        from_proxy.or(peer)
    }
}

/// `value` as text if it is what `HeaderValue::to_str` accepts: visible ASCII and tabs.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    let visible = value.iter().all(|&b| (b' '..0x7f).contains(&b) || b == b'\t');
    visible.then(|| std::str::from_utf8(value).ok()).flatten()
}

/// `name: value` of every prefetch header present; `None` (no allocation) when there are none.
fn prefetch_hints<H: ClickHeaders + ?Sized>(headers: &H) -> Option<String> {
    let mut hints: Option<String> = None;
    for name in &PREFETCH_HEADERS {
        if let Some(value) = headers.first(name).and_then(visible_ascii) {
            let hints = hints.get_or_insert_with(String::new);
            if !hints.is_empty() {
                hints.push_str("; ");
            }
            hints.push_str(value);
        }
    }
    hints
}

/// The answer when the store cannot be read.
fn store_failed(e: &shortlinks_core::Error) -> Response<Body> {
    tracing::error!(error = %e, request_id = request_id::for_log(), "store read failed on redirect");
    problem::text(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable\n")
}
