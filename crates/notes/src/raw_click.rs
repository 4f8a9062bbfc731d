//! A click as the redirect hands it over: the few header values the pipeline needs, copied
//! as bytes, and the browser's navigation headers it carried. Read from hyper's header
//! map or from the head the redirect lane parsed itself.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, ACCEPT_LANGUAGE};
use shortlinks_core::model::{BrowserEvidence, Click, ClickMethod, EntityRef};
use shortlinks_core::{AccountId, ShortCode, Timestamp};

/// Header values longer than this are cut: they are for classification, not archiving.
const MAX_HEADER_BYTES: usize = 512;

/// A request's headers, as a click reads them: from hyper's `HeaderMap`, or from the
/// head the server parsed itself. Names are given lowercase.
pub trait ClickHeaders {
    /// The first value of `name`.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
    /// The last value of `name` (a proxy appends its own to the right).
    fn last(&self, name: &HeaderName) -> Option<&[u8]>;
}

impl ClickHeaders for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn last(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get_all(name).iter().next_back().map(HeaderValue::as_bytes)
    }
}

/// A click as the hot path sees it. Header values are copied as bytes (a small allocation)
/// rather than kept as `HeaderValue`s: those share the connection's read buffer, and holding
/// one would make hyper allocate a new buffer for the next request. Text is made off the
/// hot path.
#[derive(Clone, Debug)]
pub struct RawClick {
    /// The requested code.
    pub code: ShortCode,
    /// When the request arrived.
    pub at: Timestamp,
    /// GET or HEAD.
    pub method: ClickMethod,
    /// `User-Agent`, at most 512 bytes of it.
    pub user_agent: Option<Box<[u8]>>,
    /// `Referer`, at most 512 bytes of it.
    pub referer: Option<Box<[u8]>>,
    /// Prefetch hints, if the request carried any (rare, so allocating for them is fine).
    pub prefetch: Option<String>,
    /// The client's address (from the trusted proxy header only when one is configured).
    pub client_ip: Option<IpAddr>,
    /// The browser's navigation headers it carried.
    pub evidence: BrowserEvidence,
    /// The link's account and contact, for the address ledger.
    pub contact: Option<(AccountId, EntityRef)>,
}

/// A header value as text: lossy UTF-8, cut at a character boundary.
fn bounded_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut end = text.len().min(MAX_HEADER_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Sent by current Chromium, Firefox and Safari with every request.
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

impl RawClick {
    /// Which of a browser's navigation headers a request carried: three header lookups
    /// and two short scans, no allocation (it runs on the redirect).
    pub fn browser_evidence<H: ClickHeaders + ?Sized>(headers: &H) -> BrowserEvidence {
        let mut bits = 0;
        let html = |v: &[u8]| v.windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html"));
        if headers.first(&ACCEPT).is_some_and(html) {
            bits |= BrowserEvidence::ACCEPTS_HTML;
        }
        if headers.first(&ACCEPT_LANGUAGE).is_some_and(|v| !v.trim_ascii().is_empty()) {
            bits |= BrowserEvidence::ACCEPT_LANGUAGE;
        }
        if headers.first(&SEC_FETCH_MODE).is_some_and(|v| v.eq_ignore_ascii_case(b"navigate")) {
            bits |= BrowserEvidence::NAVIGATE;
        }
        BrowserEvidence(bits)
    }

    /// Copies a header value for a click, cut to the length that is kept anyway.
    pub fn header_bytes(value: Option<&[u8]>) -> Option<Box<[u8]>> {
        value.map(|v| Box::from(&v[..v.len().min(MAX_HEADER_BYTES)]))
    }

    /// The click as the outbox keeps it.
    pub(crate) fn into_click(self, nonce: u64) -> Click {
        // Valid UTF-8 (nearly always) keeps its buffer; anything else is made valid.
        let text = |v: Option<Box<[u8]>>| {
            v.map(|v| String::from_utf8(v.into_vec()).unwrap_or_else(|e| bounded_text(e.as_bytes())))
        };
        Click {
            code: self.code,
            at: self.at,
            method: self.method,
            user_agent: text(self.user_agent),
            referer: text(self.referer),
            prefetch: self.prefetch.map(|p| bounded_text(p.as_bytes())),
            client_ip: self.client_ip,
            nonce,
            evidence: Some(self.evidence),
            visit_key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_is_bounded_at_a_character_boundary() {
        assert_eq!(bounded_text(b"Mozilla/5.0"), "Mozilla/5.0");
        let long = "\u{44f}".repeat(400); // 800 bytes of two-byte characters
        let cut = bounded_text(long.as_bytes());
        assert!(cut.len() <= MAX_HEADER_BYTES && cut.len() >= MAX_HEADER_BYTES - 1);
        assert!(cut.chars().all(|c| c == '\u{44f}'));
        assert_eq!(bounded_text(&[0x66, 0xff, 0x6f]), "f\u{fffd}o", "invalid UTF-8 is replaced, not refused");
    }
}
